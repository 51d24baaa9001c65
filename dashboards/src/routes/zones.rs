//! A zone's policy settings: anyone may read them, an admin changes them (validated by the
//! controller, audited, and kept by the source so a restart applies them again).

use axum::extract::State;
use lamplighter_protocol::local_time::TimeZone;
use lamplighter_protocol::LightingClass;
use serde::Deserialize;

use super::{valid_reason, ZoneInScope};
use crate::audit::{self, AuditEvent};
use crate::auth::{Admin, Viewer};
use crate::error::ApiError;
use crate::json::{AppJson, Live};
use crate::state::AppState;
use crate::ZoneSettings;

pub(crate) async fn zone_settings(
    State(state): State<AppState>,
    _auth: Viewer,
    ZoneInScope(tenant, zone): ZoneInScope,
) -> Result<Live<ZoneSettings>, ApiError> {
    Ok(Live(state.source.zone_settings(&tenant, zone)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettingsRequest {
    policy: String,
    design_class: LightingClass,
    min_level_pct: u8,
    ramp_up_ms: u32,
    ramp_down_ms: u32,
    /// An IANA name; left out, the zone keeps its time zone.
    #[serde(default)]
    time_zone: Option<TimeZone>,
    reason: String,
}

pub(crate) async fn set_zone_settings(
    State(state): State<AppState>,
    auth: Admin,
    ZoneInScope(tenant, zone): ZoneInScope,
    AppJson(req): AppJson<SettingsRequest>,
) -> Result<Live<ZoneSettings>, ApiError> {
    let reason = valid_reason(&req.reason)?;
    let settings = ZoneSettings {
        policy: req.policy,
        design_class: req.design_class,
        min_level_pct: req.min_level_pct,
        ramp_up_ms: req.ramp_up_ms,
        ramp_down_ms: req.ramp_down_ms,
        time_zone: req.time_zone,
    };
    let before = state.source.zone_settings(&tenant, zone)?;
    let lamps = state.source.set_zone_settings(&tenant, zone, &settings)?;
    audit::record(
        &state,
        &auth,
        AuditEvent {
            tenant: Some(&tenant),
            action: "zone-settings",
            target: &format!("zone {tenant}/{}", zone.0),
            detail: serde_json::json!({ "from": before, "to": settings, "lamps": lamps }),
            reason: &reason,
        },
    )?;
    if let Err(e) = state
        .source
        .keep_zone_settings(&tenant, zone, &settings, auth.username())
    {
        return Err(ApiError::internal(
            "the settings are in force but could not be saved: a restart would undo them",
            "zone settings not saved",
            e,
        ));
    }
    Ok(Live(settings))
}
