//! For the people running the system rather than the lights: Prometheus metrics and the
//! liveness probe.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::auth::Viewer;
use crate::error::ApiError;
use crate::state::AppState;
use crate::METRICS_CONTENT_TYPE;

/// Town-wide counters: any account or token without a tenant; 403 for a tenant's.
pub(crate) async fn metrics(
    State(state): State<AppState>,
    auth: Viewer,
) -> Result<impl IntoResponse, ApiError> {
    if auth.tenant().is_some() {
        return Err(ApiError::forbidden(
            "metrics cover every tenant; use an account or token without a tenant",
        ));
    }
    Ok((
        [
            (header::CONTENT_TYPE, METRICS_CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        state.source.metrics(),
    ))
}

/// Liveness only: it reads nothing, so it needs no login and tells nothing.
pub(crate) async fn healthz() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        "ok\n",
    )
}
