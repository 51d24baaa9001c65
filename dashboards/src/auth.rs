//! Who is calling, and what they may do.
//!
//! [`Auth`] authenticates a request by bearer token or session cookie; a session request
//! that changes state must also echo the session's CSRF token in `X-CSRF-Token`, since a
//! browser sends the cookie by itself. [`Viewer`], [`Operator`] and [`Admin`] add the least
//! role a route needs, and [`SessionOnly`] the routes no token may use. Each rejects with
//! the [`ApiError`] the caller reads, so a handler that takes one starts with a caller it
//! may serve, limited to that caller's tenant (`Auth::tenant`).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use lamplighter_protocol::TenantId;

use crate::accounts::{AccountsError, Principal, Role};
use crate::error::ApiError;
use crate::state::AppState;
use crate::{wall_ms, CSRF_HEADER, SESSION_COOKIE};

/// The caller, authenticated by session cookie or bearer token.
#[derive(Clone)]
pub(crate) struct Auth {
    principal: Principal,
    credential: Credential,
}

/// What the caller authenticated with, so that a long request (an event stream) can check
/// that it still holds.
#[derive(Clone)]
pub(crate) enum Credential {
    Session(String),
    Token(String),
}

impl Credential {
    /// Whether the session or token still authenticates (a logout or expiry ends a session;
    /// an unreadable accounts file counts as not).
    pub(crate) fn still_valid(&self, state: &AppState) -> bool {
        let accounts = state.accounts();
        match self {
            Credential::Session(s) => accounts.session_principal(s, wall_ms()),
            Credential::Token(t) => accounts.token_principal(t),
        }
        .is_ok_and(|p| p.is_some())
    }
}

impl Auth {
    pub(crate) fn principal(&self) -> &Principal {
        &self.principal
    }
    pub(crate) fn username(&self) -> &str {
        &self.principal.username
    }
    /// The tenant the caller is limited to; `None`: every tenant.
    pub(crate) fn tenant(&self) -> Option<&TenantId> {
        self.principal.tenant.as_ref()
    }
    pub(crate) fn credential(&self) -> &Credential {
        &self.credential
    }

    /// 403 unless the caller has at least `role`.
    fn require(self, role: Role) -> Result<Self, ApiError> {
        if self.principal.role >= role {
            Ok(self)
        } else {
            Err(ApiError::forbidden(format!(
                "needs the {role} role; you are {}",
                self.principal.role
            )))
        }
    }

    async fn authenticate(parts: &Parts, state: &AppState) -> Result<Auth, ApiError> {
        let unreadable = |e: AccountsError| {
            ApiError::internal("cannot read accounts", "cannot read accounts", e)
        };
        if let Some(token) = bearer(&parts.headers) {
            return match state
                .accounts()
                .token_principal(token)
                .map_err(unreadable)?
            {
                Some(principal) => Ok(Auth {
                    principal,
                    credential: Credential::Token(token.to_string()),
                }),
                None => Err(ApiError::Unauthenticated("invalid token")),
            };
        }
        let Some(session) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(ApiError::Unauthenticated("login required"));
        };
        let found = state
            .accounts()
            .session_principal(session, wall_ms())
            .map_err(unreadable)?;
        let Some(principal) = found else {
            return Err(ApiError::Unauthenticated("session expired; log in again"));
        };
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let expected = principal.csrf_token.as_deref().unwrap_or("");
            if expected.is_empty() || !ct_eq(sent, expected) {
                return Err(ApiError::forbidden("missing or wrong CSRF token"));
            }
        }
        Ok(Auth {
            principal,
            credential: Credential::Session(session.to_string()),
        })
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    /// Authenticates once per request: a later extractor that needs the caller (a zone in
    /// the path, say) gets the same answer without asking the accounts file again.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(auth) = parts.extensions.get::<Auth>() {
            return Ok(auth.clone());
        }
        let auth = Auth::authenticate(parts, state).await?;
        parts.extensions.insert(auth.clone());
        Ok(auth)
    }
}

macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        pub(crate) struct $name(pub Auth);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, ApiError> {
                Auth::from_request_parts(parts, state)
                    .await?
                    .require($role)
                    .map($name)
            }
        }

        impl std::ops::Deref for $name {
            type Target = Auth;
            fn deref(&self) -> &Auth {
                &self.0
            }
        }
    };
}

role_extractor!(
    /// Any authenticated caller: every role may read.
    Viewer,
    Role::Viewer
);
role_extractor!(
    /// A caller who may set overrides and act on faults.
    Operator,
    Role::Operator
);
role_extractor!(
    /// A caller who may manage accounts and zone settings.
    Admin,
    Role::Admin
);

/// A caller logged in with a password: an API token has none to change.
pub(crate) struct SessionOnly(pub Auth);

impl FromRequestParts<AppState> for SessionOnly {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let auth = Auth::from_request_parts(parts, state).await?;
        match auth.credential {
            Credential::Session(_) => Ok(SessionOnly(auth)),
            Credential::Token(_) => Err(ApiError::forbidden(
                "an API token has no password; log in to change yours",
            )),
        }
    }
}

/// The client's address, when the server was started with connect info.
pub(crate) struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}
