//! Every error answer of the API: [`ApiError`] says what went wrong, and
//! [`render_error_bodies`] turns it into the JSON body `{"error": ..., "path": ...}` with
//! `Cache-Control: no-store`, so API clients never have to parse an HTML error page.
//!
//! The body names the request path, which a handler's error does not know. Rather than
//! pass the URI to every handler only for this, [`ApiError`] leaves its message in a
//! response extension and the layer, which sees the request, writes the body.

use std::fmt::Display;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::accounts::AccountsError;
use crate::SourceError;

/// Why a request failed, as the caller is told.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 401 with a `WWW-Authenticate` challenge: no credentials, or ones that do not hold.
    Unauthenticated(&'static str),
    /// 401 without a challenge: the login form's wrong username or password.
    LoginFailed,
    Forbidden(String),
    BadRequest(String),
    NotFound(String),
    MethodNotAllowed,
    Conflict(String),
    UnsupportedMediaType(&'static str),
    /// 429 with `Retry-After` (whole seconds, at least one).
    TooManyLogins(Duration),
    NotImplemented(String),
    /// 500; the message is what the caller reads, the cause was logged where it happened.
    Internal(String),
    /// An answer axum's own extractors gave (a body over the size limit, say), passed on
    /// unchanged. Boxed: a response is large and this is the rare case.
    Rejection(Box<Response>),
}

impl ApiError {
    pub(crate) fn forbidden(msg: impl Into<String>) -> Self {
        ApiError::Forbidden(msg.into())
    }
    pub(crate) fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }
    pub(crate) fn not_found(msg: impl Into<String>) -> Self {
        ApiError::NotFound(msg.into())
    }
    pub(crate) fn conflict(msg: impl Into<String>) -> Self {
        ApiError::Conflict(msg.into())
    }
    /// A 500 that tells the caller `public`; `log` and the cause go to the log only.
    pub(crate) fn internal(public: &str, log: &str, cause: impl Display) -> Self {
        tracing::error!(error = %cause, "{log}");
        ApiError::Internal(public.to_string())
    }
    pub(crate) fn rejection(r: impl IntoResponse) -> Self {
        ApiError::Rejection(Box::new(r.into_response()))
    }
}

impl From<SourceError> for ApiError {
    fn from(e: SourceError) -> Self {
        let msg = e.to_string();
        match e {
            SourceError::NotFound(_) => ApiError::NotFound(msg),
            SourceError::Invalid(_) => ApiError::BadRequest(msg),
            SourceError::Unsupported(_) => ApiError::NotImplemented(msg),
            SourceError::Internal(_) => {
                tracing::error!(error = %e, "dashboard source failed");
                ApiError::Internal(msg)
            }
        }
    }
}

impl From<AccountsError> for ApiError {
    fn from(e: AccountsError) -> Self {
        match e {
            AccountsError::BadUsername(_)
            | AccountsError::BadPassword
            | AccountsError::BadRole(_)
            | AccountsError::BadLabel => ApiError::BadRequest(e.to_string()),
            AccountsError::UserExists(_) => ApiError::Conflict(e.to_string()),
            e => ApiError::internal("accounts database error", "accounts", e),
        }
    }
}

/// The message of an error answer, waiting for [`render_error_bodies`] to write it.
#[derive(Clone)]
struct ErrorMessage(String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::Rejection(res) => return *res,
            ApiError::Unauthenticated(m) => {
                let mut res = ErrorMessage(m.into()).with_status(StatusCode::UNAUTHORIZED);
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"lamplighter\""),
                );
                return res;
            }
            ApiError::TooManyLogins(wait) => {
                let mut res = ErrorMessage("too many failed logins; wait and try again".into())
                    .with_status(StatusCode::TOO_MANY_REQUESTS);
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                    res.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return res;
            }
            ApiError::LoginFailed => (
                StatusCode::UNAUTHORIZED,
                "wrong username or password".into(),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
            }
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::UnsupportedMediaType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, m.into()),
            ApiError::NotImplemented(m) => (StatusCode::NOT_IMPLEMENTED, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        ErrorMessage(message).with_status(status)
    }
}

impl ErrorMessage {
    /// A bodiless answer with this status, carrying the message for the layer.
    fn with_status(self, status: StatusCode) -> Response {
        let mut res = status.into_response();
        res.extensions_mut().insert(self);
        res
    }
}

/// Writes the JSON body of every [`ApiError`] answer, with the path it was asked on.
pub(crate) async fn render_error_bodies(uri: Uri, mut res: Response) -> Response {
    let Some(ErrorMessage(error)) = res.extensions_mut().remove::<ErrorMessage>() else {
        return res;
    };
    let (parts, _) = res.into_parts();
    let body = serde_json::json!({ "error": error, "path": uri.path() });
    let mut out = Json(body).into_response();
    out.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The error's own headers (a challenge, `Retry-After`, axum's `Allow`) follow, as
    // they did when each handler wrote its body itself.
    out.headers_mut().extend(parts.headers);
    *out.status_mut() = parts.status;
    *out.extensions_mut() = parts.extensions;
    out
}

/// Any path the router does not know.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("not found")
}

/// A known path asked with a method it does not answer.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
