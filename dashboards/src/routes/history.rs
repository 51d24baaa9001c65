//! A lamp's readings and commands, and a zone's 15-minute history, over a span of time.

use axum::extract::{Path, Query, State};
use lamplighter_protocol::LampId;
use serde::Deserialize;

use super::{off_workers, zone_in_scope};
use crate::auth::Viewer;
use crate::error::ApiError;
use crate::json::Live;
use crate::state::AppState;
use crate::{HistoryPoint, LampHistory};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Span {
    /// Unix seconds; default: 24 hours before `to_s`.
    from_s: Option<i64>,
    /// Unix seconds; default: now on the controller's clock.
    to_s: Option<i64>,
}

impl Span {
    fn resolve(&self, now_ms: u64) -> Result<(i64, i64), ApiError> {
        let to_s = self.to_s.unwrap_or((now_ms / 1000) as i64 + 1);
        let from_s = self.from_s.unwrap_or(to_s - 86_400);
        if from_s >= to_s || to_s - from_s > 400 * 86_400 {
            return Err(ApiError::bad_request(
                "from_s must be before to_s, at most 400 days apart",
            ));
        }
        Ok((from_s, to_s))
    }
}

pub(crate) async fn lamp_history(
    State(state): State<AppState>,
    auth: Viewer,
    Path(lamp): Path<String>,
    Query(span): Query<Span>,
) -> Result<Live<LampHistory>, ApiError> {
    let lamp = lamp
        .parse::<u32>()
        .map_err(|_| ApiError::bad_request("a lamp id is a number"))?;
    let (from_s, to_s) = span.resolve(state.source.now_ms())?;
    let source = state.source.clone();
    let tenant = auth.tenant().cloned();
    off_workers(move || source.lamp_history(tenant.as_ref(), LampId(lamp), from_s, to_s))
        .await
        .map(Live)
}

pub(crate) async fn zone_history(
    State(state): State<AppState>,
    auth: Viewer,
    Path((tenant, zone)): Path<(String, String)>,
    Query(span): Query<Span>,
) -> Result<Live<Vec<HistoryPoint>>, ApiError> {
    let (tenant, zone) = zone_in_scope(&auth, &tenant, &zone)?;
    let (from_s, to_s) = span.resolve(state.source.now_ms())?;
    let source = state.source.clone();
    off_workers(move || source.zone_history(&tenant, zone, from_s, to_s))
        .await
        .map(Live)
}
