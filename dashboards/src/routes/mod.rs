//! The handlers, one module per resource; the route table itself is in [`crate::router`].
//! What more than one resource needs is here.

use axum::extract::{FromRequestParts, Path};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use lamplighter_protocol::{TenantId, ZoneId};

use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;
use crate::{SourceError, MAX_REASON_CHARS};

pub(crate) mod audit;
pub(crate) mod energy;
pub(crate) mod faults;
pub(crate) mod history;
pub(crate) mod live;
pub(crate) mod ops;
pub(crate) mod overrides;
pub(crate) mod page;
pub(crate) mod session;
pub(crate) mod users;
pub(crate) mod zones;

/// The reason (or note) an audited action needs, trimmed.
fn valid_reason(reason: &str) -> Result<String, ApiError> {
    let r = reason.trim();
    if r.is_empty() || r.chars().count() > MAX_REASON_CHARS || r.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "a reason is required: 1 to {MAX_REASON_CHARS} characters on one line"
        )));
    }
    Ok(r.to_string())
}

/// The zone `tenant`/`zone` of a path, if the caller may see it: another tenant's zone does
/// not exist for them.
fn zone_in_scope(auth: &Auth, tenant: &str, zone: &str) -> Result<(TenantId, ZoneId), ApiError> {
    let (Ok(tenant), Ok(zone)) = (TenantId::new(tenant), zone.parse::<u32>()) else {
        return Err(ApiError::bad_request("bad tenant or zone"));
    };
    if auth.tenant().is_some_and(|t| t != &tenant) {
        return Err(ApiError::not_found("zone not found"));
    }
    Ok((tenant, ZoneId(zone)))
}

/// The zone of a `/zones/{tenant}/{zone}/...` path, checked by [`zone_in_scope`] before
/// the body is read.
pub(crate) struct ZoneInScope(TenantId, ZoneId);

impl FromRequestParts<AppState> for ZoneInScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let auth = Auth::from_request_parts(parts, state).await?;
        let Path((tenant, zone)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(ApiError::rejection)?;
        let (tenant, zone) = zone_in_scope(&auth, &tenant, &zone)?;
        Ok(ZoneInScope(tenant, zone))
    }
}

/// Runs a source call that may read the store off the async workers.
async fn off_workers<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(SourceError::Internal(e.to_string())))
        .map_err(ApiError::from)
}

/// A CSV file to save as `filename`, not to show.
fn csv_download(filename: &str, csv: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        csv,
    )
        .into_response()
}
