//! Logging in and out, who the caller is, and changing one's own password.
//!
//! Failed logins are throttled per username and per client address ([`crate::throttle`]);
//! a password change counts against the same username, so a stolen session cannot guess
//! the password there instead.

use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lamplighter_protocol::TenantId;
use serde::{Deserialize, Serialize};

use crate::accounts::{Principal, Role};
use crate::audit::{self, AuditEvent};
use crate::auth::{cookie, Auth, ClientIp, SessionOnly, Viewer};
use crate::error::ApiError;
use crate::json::{AppJson, Live};
use crate::state::AppState;
use crate::throttle;
use crate::{wall_ms, SESSION_COOKIE};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    username: String,
    password: String,
}

#[derive(Serialize)]
pub(crate) struct Me<'a> {
    username: &'a str,
    role: Role,
    tenant: Option<&'a TenantId>,
    csrf_token: Option<&'a str>,
}

fn me_json(p: &Principal) -> Live<serde_json::Value> {
    Live(
        serde_json::to_value(Me {
            username: &p.username,
            role: p.role,
            tenant: p.tenant.as_ref(),
            csrf_token: p.csrf_token.as_deref(),
        })
        .unwrap_or_default(),
    )
}

/// The session cookie's `Set-Cookie` line; `value` empty and `max_age_s` 0 end it.
fn set_session_cookie(res: &mut Response, state: &AppState, value: &str, max_age_s: u64) {
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
        if state.options.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
}

pub(crate) async fn login(
    State(state): State<AppState>,
    ClientIp(client_ip): ClientIp,
    AppJson(req): AppJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let user_key = format!("user:{}", req.username.to_lowercase());
    let ip_key = format!(
        "ip:{}",
        client_ip.map_or_else(|| "unknown".to_string(), |ip| ip.to_string())
    );
    let now = Instant::now();
    for key in [&user_key, &ip_key] {
        state
            .throttle
            .check(key, now)
            .map_err(ApiError::TooManyLogins)?;
    }
    let accounts = state.accounts.clone();
    let (username, password) = (req.username, req.password);
    // argon2 is deliberately slow: off the async workers.
    let checked = tokio::task::spawn_blocking(move || {
        let a = accounts.lock().unwrap_or_else(|p| p.into_inner());
        a.check_password(&username, &password)
    })
    .await;
    let checked = match checked {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(ApiError::internal(
                "cannot check login",
                "cannot check a login",
                e,
            ))
        }
        Err(e) => {
            return Err(ApiError::internal(
                "cannot check login",
                "login check panicked",
                e,
            ))
        }
    };
    let Some((user_id, mut principal)) = checked else {
        let now = Instant::now();
        state
            .throttle
            .fail(&user_key, throttle::FREE_FAILURES_PER_USER, now);
        state
            .throttle
            .fail(&ip_key, throttle::FREE_FAILURES_PER_IP, now);
        return Err(ApiError::LoginFailed);
    };
    state.throttle.succeed(&user_key);
    let ttl = state.options.session_ttl;
    let (session, csrf) = state
        .accounts()
        .create_session(user_id, wall_ms(), ttl)
        .map_err(|e| ApiError::internal("cannot log in", "cannot create a session", e))?;
    principal.csrf_token = Some(csrf);
    let mut res = me_json(&principal).into_response();
    set_session_cookie(&mut res, &state, &session, ttl.as_secs());
    Ok(res)
}

/// Ends the session in the cookie, if any; a token caller may call it too, to no effect.
pub(crate) async fn logout(
    State(state): State<AppState>,
    _auth: Auth,
    headers: HeaderMap,
) -> Response {
    if let Some(session) = cookie(&headers, SESSION_COOKIE) {
        if let Err(e) = state.accounts().delete_session(session) {
            tracing::error!(error = %e, "cannot delete a session");
        }
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    set_session_cookie(&mut res, &state, "", 0);
    res
}

pub(crate) async fn me(auth: Viewer) -> Live<serde_json::Value> {
    me_json(auth.principal())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// A logged-in user changes their own password, giving the current one. Every session of
/// theirs ends, this one too: they log in again with the new password.
pub(crate) async fn change_own_password(
    State(state): State<AppState>,
    SessionOnly(auth): SessionOnly,
    AppJson(req): AppJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let user_key = format!("user:{}", auth.username().to_lowercase());
    state
        .throttle
        .check(&user_key, Instant::now())
        .map_err(ApiError::TooManyLogins)?;
    let username = auth.username().to_string();
    let changed = state
        .accounts_blocking(
            move |a| match a.check_password(&username, &req.current_password)? {
                None => Ok(false),
                Some(_) => a.update_user(&username, None, Some(&req.new_password)),
            },
        )
        .await?;
    if !changed {
        state
            .throttle
            .fail(&user_key, throttle::FREE_FAILURES_PER_USER, Instant::now());
        return Err(ApiError::forbidden("the current password is wrong"));
    }
    audit::record(
        &state,
        &auth,
        AuditEvent {
            tenant: auth.tenant(),
            action: "password-change",
            target: &format!("user {}", auth.username()),
            detail: serde_json::json!({}),
            reason: "",
        },
    )?;
    Ok(StatusCode::NO_CONTENT)
}
