//! A zone's own policy, as an engineer sets it on the dashboard: which named policy, the
//! design class, the minimum level and the ramps. The core keeps it (by zone index) and
//! re-decides the zone's lamps at once; lamps of other zones keep the configured policy.

use lamplighter_protocol::local_time::TimeZone;
use lamplighter_protocol::{TenantId, UnixMs, ZoneId};
use serde::{Deserialize, Serialize};

use super::policy::{PolicyConfig, PolicyError};
use super::ControllerCore;

/// A zone's policy settings, as an engineer edits them on the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSettings {
    /// A named policy (`full`, `part-night`, `profile-reactive`, `reactive`, `adaptive`).
    pub policy: String,
    pub design_class: lamplighter_protocol::class::LightingClass,
    pub min_level_pct: u8,
    /// For a full 0-100 % swing, up and down.
    pub ramp_up_ms: u32,
    pub ramp_down_ms: u32,
    /// The zone's IANA time zone; left out, the zone keeps the one it has (the configured
    /// `[controller.policy] time_zone` until one is set).
    #[serde(default)]
    pub time_zone: Option<TimeZone>,
}

/// Why zone settings were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ZoneSettingsError {
    #[error("no such zone")]
    UnknownZone,
    #[error("{0}")]
    Policy(PolicyError),
}

impl ControllerCore {
    /// The policy zone `z` runs: its own if an operator set one, else the configured one.
    pub(super) fn policy_of(&self, z: usize) -> &PolicyConfig {
        if self.zone_policies.is_empty() {
            return &self.config.policy;
        }
        self.zone_policies.get(&z).unwrap_or(&self.config.policy)
    }

    fn zone_index(&self, tenant: &TenantId, zone: ZoneId) -> Option<usize> {
        self.lamps
            .iter()
            .find(|l| &l.node.tenant == tenant && l.node.zone == zone)
            .map(|l| l.zone)
    }

    /// A zone's policy settings (its own, else the configured policy and road); `None` for a
    /// zone with no lamps.
    pub fn zone_settings(&self, tenant: &TenantId, zone: ZoneId) -> Option<ZoneSettings> {
        let z = self.zone_index(tenant, zone)?;
        let p = self.policy_of(z);
        Some(ZoneSettings {
            policy: p.name.clone(),
            design_class: self.zones[z].road.design_class,
            min_level_pct: p.min_level_pct,
            ramp_up_ms: p.ramp_up_ms,
            ramp_down_ms: p.ramp_down_ms,
            time_zone: Some(p.time_zone),
        })
    }

    /// Sets a zone's policy settings and re-decides its lamps at once. The zone's policy is
    /// the named one (the configured policy itself when the name is the same), with the
    /// zone's time zone (or the one given) and these limits; it is validated as a whole.
    /// Returns the lamps in the zone.
    pub fn set_zone_settings(
        &mut self,
        now: UnixMs,
        tenant: &TenantId,
        zone: ZoneId,
        settings: &ZoneSettings,
    ) -> Result<usize, ZoneSettingsError> {
        let z = self
            .zone_index(tenant, zone)
            .ok_or(ZoneSettingsError::UnknownZone)?;
        let time_zone = settings.time_zone.unwrap_or(self.policy_of(z).time_zone);
        let mut p = if settings.policy == self.config.policy.name {
            self.config.policy.clone()
        } else {
            PolicyConfig::named(&settings.policy).ok_or_else(|| {
                ZoneSettingsError::Policy(PolicyError::UnknownName(settings.policy.clone()))
            })?
        };
        p.time_zone = time_zone;
        p.min_level_pct = settings.min_level_pct;
        p.ramp_up_ms = settings.ramp_up_ms;
        p.ramp_down_ms = settings.ramp_down_ms;
        p.validate().map_err(ZoneSettingsError::Policy)?;
        self.zones[z].road.design_class = settings.design_class;
        self.zones[z].tracking = self.config.tracks_demand(&p);
        self.zone_policies.insert(z, p);
        self.decide_zone(now, z);
        Ok(self.zones[z].lamps.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{ControllerConfig, ProvisionedNode};
    use lamplighter_protocol::lorawan::AesKey;
    use lamplighter_protocol::lorawan::SessionKeys;
    use lamplighter_protocol::LightingClass;
    use lamplighter_protocol::{DevAddr, DevEui, LampId};

    // 2024-12-21 22:00 UTC: dark in Bristol; the default profile dims to 50 %.
    const NIGHT: UnixMs = UnixMs(1_734_818_400_000);

    fn tenant() -> TenantId {
        TenantId::new("bristol").unwrap()
    }

    fn node(i: u32) -> ProvisionedNode {
        ProvisionedNode {
            lamp: LampId(i),
            tenant: tenant(),
            dev_eui: DevEui(0x70B3_D500_0000_0000 + i as u64),
            dev_addr: DevAddr(0x2601_0000 + i),
            keys: SessionKeys {
                nwk_s_key: AesKey([i as u8; 16]),
                app_s_key: AesKey([i as u8 + 100; 16]),
            },
            zone: ZoneId(i / 10),
            lat: 51.45 + i as f64 * 0.00025,
            lon: -2.59,
            rated_power_w: 40.0,
            last_fcnt_up: None,
            next_fcnt_down: 0,
            last_energy_dwh: None,
        }
    }

    fn levels(c: &ControllerCore, zone: u32) -> Vec<(u8, &'static str)> {
        c.lamps(NIGHT, None)
            .into_iter()
            .filter(|l| l.zone == ZoneId(zone))
            .map(|l| {
                (
                    l.commanded_level_pct.unwrap(),
                    l.reason.map_or("", |r| r.as_str()),
                )
            })
            .collect()
    }

    #[test]
    fn a_zones_own_policy_applies_at_once_to_its_lamps_only_and_bad_settings_are_refused() {
        let mut c =
            ControllerCore::new(ControllerConfig::default(), (0..20).map(node).collect()).unwrap();
        c.handle_tick(NIGHT);
        let before_0 = levels(&c, 0);
        assert!(
            levels(&c, 1).iter().all(|&(l, _)| l < 100),
            "dimmed at 22:00"
        );
        let mut s = c.zone_settings(&tenant(), ZoneId(1)).unwrap();
        assert_eq!(s.policy, "profile-reactive");
        s.policy = "full".into();
        s.design_class = LightingClass::M(3);
        s.min_level_pct = 40;
        assert_eq!(c.set_zone_settings(NIGHT, &tenant(), ZoneId(1), &s), Ok(10));
        assert!(levels(&c, 1).iter().all(|&l| l == (100, "schedule")));
        assert_eq!(levels(&c, 0), before_0, "other zones keep their policy");
        assert_eq!(c.zone_settings(&tenant(), ZoneId(1)), Some(s.clone()));
        assert_eq!(
            c.zones(NIGHT, None)[1].demand.design_class,
            Some(LightingClass::M(3))
        );

        for bad in [
            ZoneSettings {
                policy: "sometimes".into(),
                ..s.clone()
            },
            ZoneSettings {
                min_level_pct: 101,
                ..s.clone()
            },
            ZoneSettings {
                ramp_down_ms: 700_000,
                ..s.clone()
            },
        ] {
            assert!(matches!(
                c.set_zone_settings(NIGHT, &tenant(), ZoneId(1), &bad),
                Err(ZoneSettingsError::Policy(_))
            ));
        }
        assert_eq!(c.zone_settings(&tenant(), ZoneId(1)), Some(s.clone()));
        assert_eq!(
            c.set_zone_settings(NIGHT, &tenant(), ZoneId(9), &s),
            Err(ZoneSettingsError::UnknownZone)
        );
        let other = TenantId::new("elsewhere").unwrap();
        assert_eq!(c.zone_settings(&other, ZoneId(1)), None);
    }
}
