//! Operators' overrides: a level held on a lamp, a zone or the whole town until a time, by
//! whom and why.
//!
//! The core holds the level on each lamp ([`crate::ControllerCore::set_override`]); this
//! module keeps the override itself, as an operator set it, so it can be listed, cleared and
//! applied again after a restart. [`Overrides`] is that list, written through to the store's
//! file ([`crate::store::OperatorStore`]) when it has one: the web layer owns none of it.

use lamplighter_protocol::{LampId, TenantId, UnixMs, ZoneId};
use serde::{Deserialize, Serialize};

use crate::core::ControllerCore;
use crate::store::{OperatorStore, OperatorStoreError};

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

impl ActiveOverride {
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
    fn same_as(&self, target: &OverrideTarget, tenant: Option<&TenantId>) -> bool {
        &self.target == target && self.tenant.as_ref() == tenant
    }
}

/// The overrides in force, kept in the store when there is one.
pub struct Overrides {
    list: Vec<ActiveOverride>,
    store: Option<OperatorStore>,
}

impl Default for Overrides {
    fn default() -> Self {
        Overrides::in_memory()
    }
}

impl Overrides {
    /// A list that a restart forgets (tests and tools without a data directory).
    pub fn in_memory() -> Self {
        Overrides {
            list: Vec::new(),
            store: None,
        }
    }

    /// A list written through to `store`, holding nothing yet: [`Overrides::saved`] says what
    /// to apply again, and [`Overrides::record`] each one applied.
    pub fn with_store(store: OperatorStore) -> Self {
        Overrides {
            list: Vec::new(),
            store: Some(store),
        }
    }

    /// The overrides the store kept that are still in force at `now_ms`.
    pub fn saved(&mut self, now_ms: u64) -> Result<Vec<ActiveOverride>, OperatorStoreError> {
        match &mut self.store {
            Some(s) => s.saved_overrides(now_ms),
            None => Ok(Vec::new()),
        }
    }

    /// Records `o`, which replaces an override on the same target for the same tenant.
    /// The list holds it even when the store cannot: the error says a restart would end it.
    pub fn record(&mut self, o: ActiveOverride) -> Result<(), OperatorStoreError> {
        let now_ms = o.from_ms;
        self.list
            .retain(|x| x.until_ms > now_ms && !x.same_as(&o.target, o.tenant.as_ref()));
        let saved = match &mut self.store {
            Some(s) => s.save_override(&o),
            None => Ok(()),
        };
        self.list.push(o);
        saved
    }

    /// Forgets the override on `target` set for `tenant` (cleared at `now_ms`).
    pub fn forget(
        &mut self,
        target: &OverrideTarget,
        tenant: Option<&TenantId>,
        now_ms: u64,
    ) -> Result<(), OperatorStoreError> {
        self.list
            .retain(|x| x.until_ms > now_ms && !x.same_as(target, tenant));
        match &mut self.store {
            Some(s) => s.delete_override(target, tenant),
            None => Ok(()),
        }
    }

    /// The overrides in force at `now_ms` that `viewer` may see, oldest first.
    pub fn in_force(&mut self, now_ms: u64, viewer: Option<&TenantId>) -> Vec<ActiveOverride> {
        self.list.retain(|o| o.until_ms > now_ms);
        self.list
            .iter()
            .filter(|o| o.visible_to(viewer))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(
        target: OverrideTarget,
        tenant: Option<&str>,
        level_pct: u8,
        from_ms: u64,
    ) -> ActiveOverride {
        ActiveOverride {
            target,
            tenant: tenant.map(|t| TenantId::new(t).unwrap()),
            level_pct,
            lamps: 3,
            from_ms,
            until_ms: from_ms + 60_000,
            username: "ops".into(),
            reason: "incident".into(),
        }
    }

    fn zone(t: &str, z: u32) -> OverrideTarget {
        OverrideTarget::Zone {
            tenant: TenantId::new(t).unwrap(),
            zone: ZoneId(z),
        }
    }

    #[test]
    fn the_last_override_on_a_target_wins_and_each_tenant_sees_its_own() {
        let mut o = Overrides::in_memory();
        let bath = TenantId::new("bath").unwrap();
        o.record(set(zone("bath", 1), Some("bath"), 20, 0)).unwrap();
        o.record(set(zone("bath", 1), Some("bath"), 80, 1_000))
            .unwrap();
        o.record(set(OverrideTarget::Town, Some("york"), 50, 1_000))
            .unwrap();
        // An operator of every tenant on bath's zone: visible to bath by its target.
        o.record(set(zone("bath", 2), None, 10, 1_000)).unwrap();
        let all = o.in_force(2_000, None);
        assert_eq!(all.len(), 3);
        let bath_sees: Vec<u8> = o
            .in_force(2_000, Some(&bath))
            .iter()
            .map(|x| x.level_pct)
            .collect();
        assert_eq!(bath_sees, [80, 10]);
        // A cleared one is gone; expired ones too.
        o.forget(
            &OverrideTarget::Town,
            Some(&TenantId::new("york").unwrap()),
            2_000,
        )
        .unwrap();
        assert_eq!(o.in_force(2_000, None).len(), 2);
        assert_eq!(o.in_force(60_999, None).len(), 2);
        assert!(o.in_force(61_000, None).is_empty());
    }

    #[test]
    fn overrides_kept_in_the_store_survive_reopening_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let bath = TenantId::new("bath").unwrap();
        {
            let mut o = Overrides::with_store(OperatorStore::open(dir.path()).unwrap());
            o.record(set(zone("bath", 1), Some("bath"), 20, 0)).unwrap();
            o.record(set(OverrideTarget::Lamp { lamp: LampId(7) }, None, 0, 0))
                .unwrap();
            o.forget(&OverrideTarget::Lamp { lamp: LampId(7) }, None, 10)
                .unwrap();
        }
        let mut o = Overrides::with_store(OperatorStore::open(dir.path()).unwrap());
        let saved = o.saved(30_000).unwrap();
        assert_eq!(saved, vec![set(zone("bath", 1), Some("bath"), 20, 0)]);
        assert!(saved[0].visible_to(Some(&bath)));
        assert!(o.saved(60_000).unwrap().is_empty(), "expired at until_ms");
    }
}
