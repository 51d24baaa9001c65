//! Reading the audit log: as JSON for the page, as CSV for a spreadsheet. Each caller sees
//! their tenant's lines only.

use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::csv_download;
use crate::accounts::{self, AuditEntry};
use crate::auth::{Auth, Viewer};
use crate::error::ApiError;
use crate::json::Live;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    limit: Option<u32>,
}

fn entries(
    state: &AppState,
    auth: &Auth,
    q: &AuditQuery,
    default_limit: u32,
) -> Result<Vec<AuditEntry>, ApiError> {
    let limit = q.limit.unwrap_or(default_limit).clamp(1, 100_000);
    state
        .accounts()
        .audit_entries(
            auth.tenant(),
            q.from_ms.unwrap_or(0),
            q.to_ms.unwrap_or(i64::MAX),
            limit,
        )
        .map_err(|e| {
            ApiError::internal("cannot read the audit log", "cannot read the audit log", e)
        })
}

pub(crate) async fn audit(
    State(state): State<AppState>,
    auth: Viewer,
    Query(q): Query<AuditQuery>,
) -> Result<Live<Vec<AuditEntry>>, ApiError> {
    entries(&state, &auth, &q, 200).map(Live)
}

/// The page shows the latest lines; an export takes all of them up to the cap.
pub(crate) async fn audit_csv(
    State(state): State<AppState>,
    auth: Viewer,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let entries = entries(&state, &auth, &q, 100_000)?;
    let csv = accounts::audit_csv(&entries)
        .map_err(|e| ApiError::internal("cannot write the audit log as CSV", "audit CSV", e))?;
    Ok(csv_download("lamplighter-audit.csv", csv))
}
