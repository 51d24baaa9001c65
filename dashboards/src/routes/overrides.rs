//! Overrides through the API: an operator holds a lamp, a zone or the whole town at a level
//! for a while, with a reason (audited). The source keeps those in force
//! ([`crate::LiveSource::keep_override`]); the web layer holds none.

use axum::extract::State;
use axum::http::StatusCode;
use lamplighter_protocol::{LampId, TenantId, ZoneId};
use serde::Deserialize;

use super::valid_reason;
use crate::audit::{self, AuditEvent};
use crate::auth::{Auth, Operator, Viewer};
use crate::error::ApiError;
use crate::json::{AppJson, Live};
use crate::state::AppState;
use crate::{ActiveOverride, OverrideTarget, MAX_OVERRIDE_S};

/// The target as a request names it: `scope` is `lamp` (with `lamp`), `zone` (with `zone`,
/// and `tenant` unless the caller has one) or `town`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetRequest {
    scope: String,
    lamp: Option<u32>,
    zone: Option<u32>,
    tenant: Option<TenantId>,
    level_pct: Option<u8>,
    duration_s: Option<u64>,
    #[serde(default)]
    reason: String,
}

impl TargetRequest {
    /// The target named; a zone's tenant defaults to the caller's.
    fn target(&self, auth: &Auth) -> Result<OverrideTarget, ApiError> {
        let target = match (self.scope.as_str(), self.lamp, self.zone) {
            ("lamp", Some(lamp), None) => OverrideTarget::Lamp { lamp: LampId(lamp) },
            ("zone", None, Some(zone)) => {
                let tenant = match (&self.tenant, auth.tenant()) {
                    (Some(t), _) => t.clone(),
                    (None, Some(mine)) => mine.clone(),
                    (None, None) => {
                        return Err(ApiError::bad_request("a zone override needs its tenant"))
                    }
                };
                OverrideTarget::Zone {
                    tenant,
                    zone: ZoneId(zone),
                }
            }
            ("town", None, None) => OverrideTarget::Town,
            _ => {
                return Err(ApiError::bad_request(
                    "scope must be lamp (with lamp), zone (with zone) or town (with neither)",
                ))
            }
        };
        Ok(target)
    }
}

/// A tenant's caller may only name their own tenant's zones; another tenant's zone does
/// not exist for them.
fn check_target(auth: &Auth, target: &OverrideTarget) -> Result<(), ApiError> {
    if let (OverrideTarget::Zone { tenant, .. }, Some(mine)) = (target, auth.tenant()) {
        if tenant != mine {
            return Err(ApiError::not_found("zone not found"));
        }
    }
    Ok(())
}

/// The tenant an audit line belongs to: the zone's, else the caller's.
fn audit_tenant<'a>(auth: &'a Auth, target: &'a OverrideTarget) -> Option<&'a TenantId> {
    match target {
        OverrideTarget::Zone { tenant, .. } => Some(tenant),
        _ => auth.tenant(),
    }
}

pub(crate) async fn set_override(
    State(state): State<AppState>,
    Operator(auth): Operator,
    AppJson(req): AppJson<TargetRequest>,
) -> Result<(StatusCode, Live<ActiveOverride>), ApiError> {
    let target = req.target(&auth)?;
    let (Some(level_pct), Some(duration_s)) = (req.level_pct, req.duration_s) else {
        return Err(ApiError::bad_request(
            "level_pct and duration_s are required",
        ));
    };
    if level_pct > 100 {
        return Err(ApiError::bad_request("level_pct must be 0 to 100"));
    }
    if duration_s == 0 || duration_s > MAX_OVERRIDE_S {
        return Err(ApiError::bad_request(format!(
            "duration_s must be 1 to {MAX_OVERRIDE_S}"
        )));
    }
    let reason = valid_reason(&req.reason)?;
    check_target(&auth, &target)?;
    let from_ms = state.source.now_ms();
    let until_ms = from_ms + duration_s * 1000;
    let lamps = state
        .source
        .set_override(auth.tenant(), &target, Some(level_pct), until_ms)?;
    audit::record(
        &state,
        &auth,
        AuditEvent {
            tenant: audit_tenant(&auth, &target),
            action: "override",
            target: &target.to_string(),
            detail: serde_json::json!({
                "level_pct": level_pct, "duration_s": duration_s,
                "until_ms": until_ms, "lamps": lamps,
            }),
            reason: &reason,
        },
    )?;
    let active = ActiveOverride {
        target,
        tenant: auth.tenant().cloned(),
        level_pct,
        lamps,
        from_ms,
        until_ms,
        username: auth.username().to_string(),
        reason,
    };
    if let Err(e) = state.source.keep_override(&active) {
        return Err(ApiError::internal(
            "the override is in force but could not be saved: a restart would end it",
            "override not saved",
            e,
        ));
    }
    Ok((StatusCode::CREATED, Live(active)))
}

pub(crate) async fn clear_override(
    State(state): State<AppState>,
    Operator(auth): Operator,
    AppJson(req): AppJson<TargetRequest>,
) -> Result<Live<serde_json::Value>, ApiError> {
    let target = req.target(&auth)?;
    let reason = valid_reason(&req.reason)?;
    check_target(&auth, &target)?;
    let now_ms = state.source.now_ms();
    let lamps = state
        .source
        .set_override(auth.tenant(), &target, None, now_ms)?;
    audit::record(
        &state,
        &auth,
        AuditEvent {
            tenant: audit_tenant(&auth, &target),
            action: "override-clear",
            target: &target.to_string(),
            detail: serde_json::json!({ "lamps": lamps }),
            reason: &reason,
        },
    )?;
    if let Err(e) = state.source.forget_override(&target, auth.tenant(), now_ms) {
        return Err(ApiError::internal(
            "the override is cleared but could not be forgotten: a restart would apply it again",
            "cleared override not forgotten",
            e,
        ));
    }
    Ok(Live(serde_json::json!({ "cleared": lamps })))
}

/// Overrides still in force that the caller may see.
pub(crate) async fn list_overrides(
    State(state): State<AppState>,
    auth: Viewer,
) -> Live<serde_json::Value> {
    let now_ms = state.source.now_ms();
    let visible = state.source.overrides(auth.tenant());
    Live(serde_json::json!({ "now_ms": now_ms, "overrides": visible }))
}
