//! Accounts through the API: admins list, add, change and remove users and add API tokens,
//! each audited. A tenant's admin reaches only that tenant's accounts; the rest do not
//! exist for them, so they cannot probe other tenants' names.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use lamplighter_protocol::TenantId;
use serde::Deserialize;

use crate::accounts::{Role, UserInfo};
use crate::audit::{self, AuditEvent};
use crate::auth::{Admin, Auth};
use crate::error::ApiError;
use crate::json::{AppJson, Live};
use crate::state::AppState;
use crate::wall_ms;

pub(crate) async fn users(
    State(state): State<AppState>,
    auth: Admin,
) -> Result<Live<Vec<UserInfo>>, ApiError> {
    Ok(Live(state.accounts().users(auth.tenant())?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUserRequest {
    username: String,
    password: String,
    role: Role,
    tenant: Option<TenantId>,
}

/// The tenant a new account gets: a tenant's admin can only make accounts of their tenant.
fn new_account_tenant(auth: &Auth, asked: Option<TenantId>) -> Result<Option<TenantId>, ApiError> {
    match (auth.tenant(), asked) {
        (None, asked) => Ok(asked),
        (Some(mine), None) => Ok(Some(mine.clone())),
        (Some(mine), Some(asked)) if &asked == mine => Ok(Some(asked)),
        (Some(_), Some(_)) => Err(ApiError::forbidden(
            "you may only create accounts in your own tenant",
        )),
    }
}

pub(crate) async fn add_user(
    State(state): State<AppState>,
    auth: Admin,
    AppJson(req): AppJson<NewUserRequest>,
) -> Result<(StatusCode, Live<serde_json::Value>), ApiError> {
    let tenant = new_account_tenant(&auth, req.tenant)?;
    let (username, password, role, t) = (req.username, req.password, req.role, tenant.clone());
    let (id, username) = state
        .accounts_blocking(move |a| {
            a.add_user(&username, &password, role, t.as_ref(), wall_ms())
                .map(|id| (id, username))
        })
        .await?;
    audit::record(
        &state,
        &auth,
        AuditEvent {
            tenant: tenant.as_ref(),
            action: "user-add",
            target: &format!("user {username}"),
            detail: serde_json::json!({ "role": role, "tenant": tenant }),
            reason: "",
        },
    )?;
    Ok((
        StatusCode::CREATED,
        Live(serde_json::json!({ "id": id, "username": username, "role": role, "tenant": tenant })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateUserRequest {
    role: Option<Role>,
    /// A new password: the user's sessions end.
    password: Option<String>,
}

fn no_user(username: &str) -> ApiError {
    ApiError::not_found(format!("no user {username:?}"))
}

/// The user `username` if the calling admin may manage them.
fn managed_user(state: &AppState, auth: &Auth, username: &str) -> Result<UserInfo, ApiError> {
    match state.accounts().user(username)? {
        Some(u) if auth.tenant().is_none() || u.tenant.as_ref() == auth.tenant() => Ok(u),
        _ => Err(no_user(username)),
    }
}

/// An admin changes a user's role or resets their password (or both).
pub(crate) async fn update_user(
    State(state): State<AppState>,
    auth: Admin,
    Path(username): Path<String>,
    AppJson(req): AppJson<UpdateUserRequest>,
) -> Result<Live<serde_json::Value>, ApiError> {
    if req.role.is_none() && req.password.is_none() {
        return Err(ApiError::bad_request("give a role or a password"));
    }
    let user = managed_user(&state, &auth, &username)?;
    if username == auth.username() && req.role.is_some_and(|r| r != user.role) {
        // The last admin demoting themselves would leave nobody to undo it.
        return Err(ApiError::conflict(
            "you cannot change your own role; ask another admin",
        ));
    }
    let (name, role, password) = (username.clone(), req.role, req.password.clone());
    let found = state
        .accounts_blocking(move |a| a.update_user(&name, role, password.as_deref()))
        .await?;
    if !found {
        return Err(no_user(&username));
    }
    let role = req.role.unwrap_or(user.role);
    audit::record(
        &state,
        &auth,
        AuditEvent {
            tenant: user.tenant.as_ref(),
            action: "user-update",
            target: &format!("user {username}"),
            detail: serde_json::json!({
                "role": role,
                "password_reset": req.password.is_some(),
            }),
            reason: "",
        },
    )?;
    Ok(Live(serde_json::json!({
        "username": username,
        "role": role,
        "tenant": user.tenant,
    })))
}

/// An admin removes a user; their sessions end with them.
pub(crate) async fn remove_user(
    State(state): State<AppState>,
    auth: Admin,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = managed_user(&state, &auth, &username)?;
    if username == auth.username() {
        return Err(ApiError::conflict(
            "you cannot remove yourself; ask another admin",
        ));
    }
    if !state.accounts().remove_user(&username)? {
        return Err(no_user(&username));
    }
    audit::record(
        &state,
        &auth,
        AuditEvent {
            tenant: user.tenant.as_ref(),
            action: "user-remove",
            target: &format!("user {username}"),
            detail: serde_json::json!({ "role": user.role }),
            reason: "",
        },
    )?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTokenRequest {
    role: Role,
    tenant: Option<TenantId>,
    #[serde(default)]
    label: String,
}

/// The token is in this answer only; the accounts file keeps its hash.
pub(crate) async fn add_token(
    State(state): State<AppState>,
    auth: Admin,
    AppJson(req): AppJson<NewTokenRequest>,
) -> Result<(StatusCode, Live<serde_json::Value>), ApiError> {
    let tenant = new_account_tenant(&auth, req.tenant)?;
    let token = state
        .accounts()
        .add_token(req.role, tenant.as_ref(), &req.label, wall_ms())?;
    audit::record(
        &state,
        &auth,
        AuditEvent {
            tenant: tenant.as_ref(),
            action: "token-add",
            target: "token",
            detail: serde_json::json!({ "role": req.role, "tenant": tenant, "label": req.label }),
            reason: "",
        },
    )?;
    Ok((
        StatusCode::CREATED,
        Live(serde_json::json!({ "token": token, "role": req.role, "tenant": tenant })),
    ))
}
