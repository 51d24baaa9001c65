//! Energy: today, this week and this month per tenant, and the half-hourly CSV export.

use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::{csv_download, off_workers};
use crate::auth::Viewer;
use crate::error::ApiError;
use crate::json::Live;
use crate::state::AppState;
use crate::EnergySummary;

/// The longest span of one half-hourly export: 31 days.
pub const MAX_HALF_HOURLY_S: i64 = 31 * 86_400;

pub(crate) async fn energy(
    State(state): State<AppState>,
    auth: Viewer,
) -> Result<Live<Vec<EnergySummary>>, ApiError> {
    let source = state.source.clone();
    let tenant = auth.tenant().cloned();
    off_workers(move || source.energy(tenant.as_ref()))
        .await
        .map(Live)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CsvSpan {
    from_s: i64,
    to_s: i64,
}

pub(crate) async fn half_hourly(
    State(state): State<AppState>,
    auth: Viewer,
    Query(span): Query<CsvSpan>,
) -> Result<Response, ApiError> {
    if span.from_s >= span.to_s || span.to_s - span.from_s > MAX_HALF_HOURLY_S {
        return Err(ApiError::bad_request(
            "from_s must be before to_s, at most 31 days apart",
        ));
    }
    let source = state.source.clone();
    let tenant = auth.tenant().cloned();
    let csv = off_workers(move || source.half_hourly_csv(tenant.as_ref(), span.from_s, span.to_s))
        .await?;
    Ok(csv_download("lamplighter-half-hourly.csv", csv))
}
