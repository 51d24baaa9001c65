//! Operators' overrides: a level held on a lamp, a zone or the whole town until a time, by
//! whom and why.
//!
//! The core holds the level on each lamp ([`crate::ControllerCore::set_override`]); this
//! module says what an override is and whom it reaches ([`apply`]). The list of those in
//! force, as operators set them, is [`crate::store::Overrides`], written through to the
//! store's file so a restart applies them again: the web layer owns none of it.

use lamplighter_protocol::{LampId, TenantId, UnixMs, ZoneId};
use serde::{Deserialize, Serialize};

use crate::core::ControllerCore;

/// Sets (`level_pct` Some) or clears the override on the lamps of `target` that a caller
/// limited to `viewer` may see, until `until_ms`. Returns how many lamps, or `None` when
/// the caller sees no lamp there (an unknown lamp or zone, or another tenant's).
pub fn apply(
    core: &mut ControllerCore,
    now: UnixMs,
    viewer: Option<&TenantId>,
    target: &OverrideTarget,
    level_pct: Option<u8>,
    until_ms: u64,
) -> Option<usize> {
    let lamps: Vec<LampId> = match target {
        OverrideTarget::Lamp { lamp } => core
            .node(*lamp)
            .filter(|n| n.tenant.visible_to(viewer))
            .map(|n| n.lamp)
            .into_iter()
            .collect(),
        OverrideTarget::Zone { tenant, zone } => core
            .lamps(now, viewer)
            .into_iter()
            .filter(|l| &l.tenant == tenant && l.zone == *zone)
            .map(|l| l.lamp)
            .collect(),
        OverrideTarget::Town => core
            .lamps(now, viewer)
            .into_iter()
            .map(|l| l.lamp)
            .collect(),
    };
    if lamps.is_empty() {
        return None;
    }
    for &lamp in &lamps {
        core.set_override(now, lamp, level_pct, UnixMs(until_ms));
    }
    Some(lamps.len())
}

/// What an override applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "lowercase")]
pub enum OverrideTarget {
    Lamp {
        lamp: LampId,
    },
    Zone {
        tenant: TenantId,
        zone: ZoneId,
    },
    /// Every lamp the caller may see.
    Town,
}

impl std::fmt::Display for OverrideTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverrideTarget::Lamp { lamp } => write!(f, "lamp {}", lamp.0),
            OverrideTarget::Zone { tenant, zone } => write!(f, "zone {tenant}/{}", zone.0),
            OverrideTarget::Town => f.write_str("town"),
        }
    }
}

/// An override in force.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveOverride {
    pub target: OverrideTarget,
    /// The tenant the caller was limited to (`None`: every tenant).
    pub tenant: Option<TenantId>,
    pub level_pct: u8,
    pub lamps: usize,
    pub from_ms: u64,
    pub until_ms: u64,
    pub username: String,
    pub reason: String,
}

/// An override as the stores that keep one hold it: (target as JSON, tenant or '' for
/// every tenant, level_pct, lamps, from_ms, until_ms, username, reason).
pub type OverrideRow = (String, String, u8, i64, i64, i64, String, String);

impl ActiveOverride {
    /// Reads a kept row; refuses one whose target or tenant no longer parses (a row edited
    /// by hand), saying why.
    pub fn from_row(row: OverrideRow) -> Result<ActiveOverride, String> {
        let (target, tenant, level_pct, lamps, from_ms, until_ms, username, reason) = row;
        let target =
            serde_json::from_str(&target).map_err(|e| format!("target {target:?}: {e}"))?;
        let tenant = match tenant.as_str() {
            "" => None,
            t => Some(TenantId::new(t).map_err(|e| format!("tenant {t:?}: {e}"))?),
        };
        Ok(ActiveOverride {
            target,
            tenant,
            level_pct: level_pct.min(100),
            lamps: lamps.max(0) as usize,
            from_ms: from_ms.max(0) as u64,
            until_ms: until_ms.max(0) as u64,
            username,
            reason,
        })
    }

    /// Whether a caller limited to `viewer` (`None`: every tenant) may see it: their own
    /// tenant's overrides and those on their tenant's zones.
    pub fn visible_to(&self, viewer: Option<&TenantId>) -> bool {
        let by_target = match &self.target {
            OverrideTarget::Zone { tenant, .. } => Some(tenant),
            _ => None,
        };
        viewer.is_none()
            || [self.tenant.as_ref(), by_target]
                .into_iter()
                .flatten()
                .any(|t| t.visible_to(viewer))
    }

    /// Whether `self` and `other` are the same override: one target, set for one tenant.
    pub(crate) fn same_as(&self, target: &OverrideTarget, tenant: Option<&TenantId>) -> bool {
        &self.target == target && self.tenant.as_ref() == tenant
    }
}
