//! The controller's configuration (`[controller]`): reporting and refresh intervals, the
//! policy, each zone's road, fault thresholds and the tariff, validated as a whole before a
//! core runs it. Configuration only: the types it gathers live with their own rules
//! ([`super::policy`], [`crate::faults`], [`crate::tariff`]), none in the store.

use lamplighter_protocol::TenantId;
use lamplighter_protocol::ZoneId;
use serde::{Deserialize, Serialize};

use super::demand::{ZoneParams, ZoneRoad};
use super::policy::{PolicyConfig, PolicyError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    pub policy: PolicyConfig,
    /// The interval nodes report at; a lamp is online while it reported within
    /// `offline_after_reports` of these.
    pub report_interval_s: u32,
    pub offline_after_reports: u32,
    /// Resend a lamp's command this often even when nothing changed, so the node does not
    /// fall back to its fail-safe profile for silence.
    pub refresh_s: u32,
    /// Resend when a node reports a target other than the commanded level this long after
    /// the command (it was lost, or the node restarted).
    pub reconcile_after_s: u32,
    /// The road of every zone not listed in `zones`.
    pub zone_default: ZoneRoad,
    /// Each zone's road: design class and capacity (`[[controller.zones]]`).
    pub zones: Vec<ZoneParams>,
    /// Fault detection thresholds (`[controller.faults]`).
    pub faults: crate::faults::FaultConfig,
    /// What a kWh costs in money and carbon, for the energy figures (`[controller.tariff]`).
    pub tariff: crate::tariff::Tariff,
    /// Track every zone's demand (presence per interval, the class it allows, the
    /// forecast), for the dashboard. When false, only the zones whose policy acts on demand
    /// (`adaptive`) track it: a planning run sets it so, since it has no dashboard, and
    /// tracking and forecasting were a sixth of its other policies' time.
    pub demand_every_zone: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            policy: PolicyConfig::default(),
            report_interval_s: 300,
            offline_after_reports: 3,
            refresh_s: 300,
            reconcile_after_s: 15,
            zone_default: ZoneRoad::default(),
            zones: Vec::new(),
            faults: crate::faults::FaultConfig::default(),
            tariff: crate::tariff::Tariff::default(),
            demand_every_zone: true,
        }
    }
}

/// Why a [`ControllerConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("{what}: capacity_per_h must be a positive number, got {got}")]
    Capacity { what: String, got: f64 },
    #[error("zone {zone} is listed twice in zones")]
    DuplicateZone { zone: String },
    #[error("report_interval_s and offline_after_reports must be positive")]
    Reporting,
    #[error("{0}")]
    Faults(#[from] crate::faults::FaultConfigError),
    #[error("{0}")]
    Tariff(#[from] crate::tariff::TariffError),
}

impl ControllerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.policy.validate()?;
        if self.report_interval_s == 0 || self.offline_after_reports == 0 {
            return Err(ConfigError::Reporting);
        }
        self.faults.validate()?;
        self.tariff.validate()?;
        let capacity_ok = |c: f64| c.is_finite() && c > 0.0;
        if !capacity_ok(self.zone_default.capacity_per_h) {
            return Err(ConfigError::Capacity {
                what: "zone_default".into(),
                got: self.zone_default.capacity_per_h,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for z in &self.zones {
            let name = match &z.tenant {
                Some(t) => format!("{t}/{}", z.zone.0),
                None => z.zone.0.to_string(),
            };
            if !capacity_ok(z.capacity_per_h) {
                return Err(ConfigError::Capacity {
                    what: format!("zone {name}"),
                    got: z.capacity_per_h,
                });
            }
            if !seen.insert((z.tenant.clone(), z.zone)) {
                return Err(ConfigError::DuplicateZone { zone: name });
            }
        }
        Ok(())
    }

    /// Whether a zone under `policy` tracks its demand (see
    /// [`ControllerConfig::demand_every_zone`]).
    pub fn tracks_demand(&self, policy: &PolicyConfig) -> bool {
        self.demand_every_zone || policy.adaptive
    }

    /// The road of a tenant's zone: its own entry, else the entry for every tenant, else
    /// the default.
    pub fn zone_road(&self, tenant: &TenantId, zone: ZoneId) -> ZoneRoad {
        let entry = |t: Option<&TenantId>| {
            self.zones
                .iter()
                .find(|z| z.zone == zone && z.tenant.as_ref() == t)
        };
        entry(Some(tenant))
            .or_else(|| entry(None))
            .map_or(self.zone_default, ZoneParams::road)
    }
}
