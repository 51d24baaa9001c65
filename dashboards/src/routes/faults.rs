//! Faults not yet cleared, and operators acknowledging or clearing them (audited).

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use serde::Deserialize;

use super::valid_reason;
use crate::audit::{self, AuditEvent};
use crate::auth::{Operator, Viewer};
use crate::error::ApiError;
use crate::json::{AppJson, Live};
use crate::state::AppState;
use crate::{Fault, FaultId};

pub(crate) async fn faults(
    State(state): State<AppState>,
    auth: Viewer,
) -> Result<Live<serde_json::Value>, ApiError> {
    let (counts, faults) = state.source.faults(auth.tenant())?;
    Ok(Live(
        serde_json::json!({ "counts": counts, "faults": faults }),
    ))
}

/// The fault id of the path, read before the body.
pub(crate) struct FaultIdPath(FaultId);

impl<S: Send + Sync> FromRequestParts<S> for FaultIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(ApiError::rejection)?;
        let id = id
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request("a fault id is a number"))?;
        Ok(FaultIdPath(FaultId(id)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultNote {
    note: String,
}

pub(crate) async fn acknowledge_fault(
    State(state): State<AppState>,
    auth: Operator,
    FaultIdPath(id): FaultIdPath,
    AppJson(req): AppJson<FaultNote>,
) -> Result<Live<Fault>, ApiError> {
    fault_action(&state, &auth, id, &req.note, false)
}

pub(crate) async fn clear_fault(
    State(state): State<AppState>,
    auth: Operator,
    FaultIdPath(id): FaultIdPath,
    AppJson(req): AppJson<FaultNote>,
) -> Result<Live<Fault>, ApiError> {
    fault_action(&state, &auth, id, &req.note, true)
}

fn fault_action(
    state: &AppState,
    auth: &Operator,
    id: FaultId,
    note: &str,
    clear: bool,
) -> Result<Live<Fault>, ApiError> {
    let note = valid_reason(note)?;
    let fault = state
        .source
        .fault_action(auth.tenant(), id, clear, auth.username(), &note)?;
    audit::record(
        state,
        auth,
        AuditEvent {
            tenant: Some(&fault.tenant),
            action: if clear {
                "fault-clear"
            } else {
                "fault-acknowledge"
            },
            target: &format!("fault {} (lamp {})", fault.id, fault.lamp.0),
            detail: serde_json::json!({ "kind": fault.kind, "lamp": fault.lamp }),
            reason: &note,
        },
    )?;
    Ok(Live(fault))
}
