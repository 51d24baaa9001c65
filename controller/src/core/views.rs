//! What the dashboard and the API read: the summary, each lamp and each zone as they stand
//! at `now`, all lamps or one tenant's.

use std::collections::BTreeMap;

use lamplighter_protocol::payload::{FaultFlags, NodeMode};
use lamplighter_protocol::{DevEui, LampId, TenantId, UnixMs, ZoneId};
use serde::Serialize;

use super::demand::ZoneDemandView;
use super::policy::Reason;
use super::{ControllerCore, LampState};

/// The figures the demo prints and `GET /api/v1/summary` returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub lamps: usize,
    pub lamps_online: usize,
    pub uplinks: u64,
    pub commands: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    pub energy_wh: f64,
    pub power_w: f64,
    pub mean_level_pct: f64,
    pub lamps_with_faults: usize,
    pub now_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LampView {
    pub lamp: LampId,
    pub tenant: TenantId,
    pub dev_eui: DevEui,
    pub zone: ZoneId,
    pub lat: f64,
    pub lon: f64,
    pub online: bool,
    pub level_pct: Option<u8>,
    pub target_level_pct: Option<u8>,
    pub power_w: Option<f32>,
    pub mode: Option<NodeMode>,
    pub faults: u8,
    pub last_seen_ms: Option<u64>,
    pub commanded_level_pct: Option<u8>,
    pub reason: Option<Reason>,
    pub energy_wh: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneView {
    pub tenant: TenantId,
    pub zone: ZoneId,
    pub lamps: usize,
    pub lamps_online: usize,
    pub mean_level_pct: f64,
    pub power_w: f64,
    pub energy_wh: f64,
    pub presence_total: u64,
    /// Lamps per reason of their current command.
    pub reasons: BTreeMap<&'static str, usize>,
    /// The class in force, demand and forecast (flattened into the zone's JSON).
    #[serde(flatten)]
    pub demand: ZoneDemandView,
}

impl ControllerCore {
    fn online(&self, lamp: &LampState, now: UnixMs) -> bool {
        let window_ms =
            self.config.report_interval_s as u64 * 1000 * self.config.offline_after_reports as u64;
        lamp.last_report
            .is_some_and(|(t, _)| now.since(t) <= window_ms)
    }

    fn visible(lamp: &LampState, tenant: Option<&TenantId>) -> bool {
        lamp.node.tenant.visible_to(tenant)
    }

    /// The summary of all lamps, or of one tenant's.
    pub fn summary(&self, now: UnixMs, tenant: Option<&TenantId>) -> Summary {
        let mut s = Summary {
            lamps: 0,
            lamps_online: 0,
            uplinks: self.counters.uplinks,
            commands: self.counters.commands,
            rejected: self.counters.rejected,
            rejected_by_reason: self.rejected_by_kind.clone(),
            energy_wh: 0.0,
            power_w: 0.0,
            mean_level_pct: 0.0,
            lamps_with_faults: 0,
            now_ms: now.0,
        };
        let mut level_sum = 0.0;
        for l in self.lamps.iter().filter(|l| Self::visible(l, tenant)) {
            s.lamps += 1;
            s.energy_wh += l.energy_wh;
            if self.online(l, now) {
                s.lamps_online += 1;
            }
            if let Some((_, r)) = l.last_report {
                s.power_w += r.power_w() as f64;
                level_sum += r.level_pct as f64;
                if r.faults.0 & !FaultFlags::COMMS_LOST.0 != 0 {
                    s.lamps_with_faults += 1;
                }
            }
        }
        if s.lamps > 0 {
            s.mean_level_pct = level_sum / s.lamps as f64;
        }
        s
    }

    pub fn lamps(&self, now: UnixMs, tenant: Option<&TenantId>) -> Vec<LampView> {
        self.lamps
            .iter()
            .filter(|l| Self::visible(l, tenant))
            .map(|l| {
                let r = l.last_report.map(|(_, r)| r);
                LampView {
                    lamp: l.node.lamp,
                    tenant: l.node.tenant.clone(),
                    dev_eui: l.node.dev_eui,
                    zone: l.node.zone,
                    lat: l.node.lat,
                    lon: l.node.lon,
                    online: self.online(l, now),
                    level_pct: r.map(|r| r.level_pct),
                    target_level_pct: r.map(|r| r.target_level_pct),
                    power_w: r.map(|r| r.power_w()),
                    mode: r.map(|r| r.mode),
                    faults: r.map_or(0, |r| r.faults.0),
                    last_seen_ms: l.last_report.map(|(t, _)| t.0),
                    commanded_level_pct: l.commanded.map(|c| c.level_pct),
                    reason: l.commanded.map(|c| c.reason),
                    energy_wh: l.energy_wh,
                }
            })
            .collect()
    }

    pub fn zones(&self, now: UnixMs, tenant: Option<&TenantId>) -> Vec<ZoneView> {
        let mut zones: BTreeMap<(TenantId, ZoneId), (ZoneView, f64)> = BTreeMap::new();
        for l in self.lamps.iter().filter(|l| Self::visible(l, tenant)) {
            let key = (l.node.tenant.clone(), l.node.zone);
            let (z, level_sum) = zones.entry(key).or_insert_with(|| {
                (
                    ZoneView {
                        tenant: l.node.tenant.clone(),
                        zone: l.node.zone,
                        lamps: 0,
                        lamps_online: 0,
                        mean_level_pct: 0.0,
                        power_w: 0.0,
                        energy_wh: 0.0,
                        presence_total: 0,
                        reasons: BTreeMap::new(),
                        demand: self.zones[l.zone].view(now, &self.config.policy),
                    },
                    0.0,
                )
            });
            z.lamps += 1;
            z.energy_wh += l.energy_wh;
            z.presence_total += l.presence_total;
            if self.online(l, now) {
                z.lamps_online += 1;
            }
            if let Some((_, r)) = l.last_report {
                z.power_w += r.power_w() as f64;
                *level_sum += r.level_pct as f64;
            }
            if let Some(c) = l.commanded {
                *z.reasons.entry(c.reason.as_str()).or_default() += 1;
            }
        }
        zones
            .into_values()
            .map(|(mut z, level_sum)| {
                z.mean_level_pct = level_sum / z.lamps.max(1) as f64;
                z
            })
            .collect()
    }
}
