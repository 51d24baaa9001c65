//! What the dashboard shows and acts on, as the controller provides it: the [`LiveSource`]
//! trait and the types that cross it.

use lamplighter_controller::core::{LampView, Summary, ZoneSettings, ZoneView};
use lamplighter_controller::faults::{Fault, FaultCounts, FaultId};
pub use lamplighter_controller::overrides::{ActiveOverride, OverrideTarget};
use lamplighter_controller::store::{EnergySummary, HistoryPoint};
use lamplighter_protocol::{LampId, TenantId, ZoneId};
use serde::Serialize;

use crate::wall_ms;

/// A lamp's history as the page shows it: readings (or rollups) and the commands sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LampHistory {
    pub lamp: LampId,
    pub points: Vec<HistoryPoint>,
    pub commands: Vec<CommandRecord>,
}

/// One command sent to a lamp, as the store keeps it.
pub use lamplighter_controller::store::CommandSent as CommandRecord;

/// A road's centre line, for drawing under the lamps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Road {
    /// Design lighting class (e.g. "M3"), if known.
    pub class: Option<String>,
    /// `[lat, lon]` pairs.
    pub points: Vec<[f64; 2]>,
}

/// Why a [`LiveSource`] refused a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("not available here: {0}")]
    Unsupported(&'static str),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Where the dashboard reads live state and sends operators' actions; the controller
/// service implements it. `tenant` limits every answer to that tenant's lamps and zones
/// (`None`: all tenants).
pub trait LiveSource: Send + Sync + 'static {
    fn summary(&self, tenant: Option<&TenantId>) -> Summary;
    fn lamps(&self, tenant: Option<&TenantId>) -> Vec<LampView>;
    fn zones(&self, tenant: Option<&TenantId>) -> Vec<ZoneView>;
    /// Prometheus text exposition of the system's counters.
    fn metrics(&self) -> String;
    /// The controller's clock (Unix ms), which a demo may run faster than real time;
    /// overrides expire by it.
    fn now_ms(&self) -> u64 {
        wall_ms() as u64
    }
    /// Sets (`level_pct` Some) or clears an override on the target's lamps that `tenant`
    /// may see, until `until_ms` on [`LiveSource::now_ms`]'s clock. Returns the lamps set.
    fn set_override(
        &self,
        _tenant: Option<&TenantId>,
        _target: &OverrideTarget,
        _level_pct: Option<u8>,
        _until_ms: u64,
    ) -> Result<usize, SourceError> {
        Err(SourceError::Unsupported("overrides"))
    }
    /// Keeps an override applied with [`LiveSource::set_override`], replacing the one on
    /// the same target set for the same tenant: it is listed, and applied again after a
    /// restart.
    fn keep_override(&self, _override: &ActiveOverride) -> Result<(), SourceError> {
        Err(SourceError::Unsupported("overrides"))
    }
    /// Forgets the override on `target` set for `tenant`, cleared at `now_ms`.
    fn forget_override(
        &self,
        _target: &OverrideTarget,
        _tenant: Option<&TenantId>,
        _now_ms: u64,
    ) -> Result<(), SourceError> {
        Err(SourceError::Unsupported("overrides"))
    }
    /// The overrides in force that `tenant` may see, oldest first.
    fn overrides(&self, _tenant: Option<&TenantId>) -> Vec<ActiveOverride> {
        Vec::new()
    }
    /// A lamp's history over `[from_s, to_s)` (Unix seconds).
    fn lamp_history(
        &self,
        _tenant: Option<&TenantId>,
        _lamp: LampId,
        _from_s: i64,
        _to_s: i64,
    ) -> Result<LampHistory, SourceError> {
        Err(SourceError::Unsupported("history"))
    }
    /// A zone's history over `[from_s, to_s)` (Unix seconds), 15-minute buckets.
    fn zone_history(
        &self,
        _tenant: &TenantId,
        _zone: ZoneId,
        _from_s: i64,
        _to_s: i64,
    ) -> Result<Vec<HistoryPoint>, SourceError> {
        Err(SourceError::Unsupported("history"))
    }
    /// A zone's policy settings.
    fn zone_settings(
        &self,
        _tenant: &TenantId,
        _zone: ZoneId,
    ) -> Result<ZoneSettings, SourceError> {
        Err(SourceError::Unsupported("zone settings"))
    }
    /// Sets a zone's policy settings (validated by the controller); returns its lamps.
    fn set_zone_settings(
        &self,
        _tenant: &TenantId,
        _zone: ZoneId,
        _settings: &ZoneSettings,
    ) -> Result<usize, SourceError> {
        Err(SourceError::Unsupported("zone settings"))
    }
    /// Keeps a zone's settings, set by `username` with [`LiveSource::set_zone_settings`],
    /// so a restart applies them again.
    fn keep_zone_settings(
        &self,
        _tenant: &TenantId,
        _zone: ZoneId,
        _settings: &ZoneSettings,
        _username: &str,
    ) -> Result<(), SourceError> {
        Err(SourceError::Unsupported("zone settings"))
    }
    /// Faults not yet cleared, newest first, and their counts.
    fn faults(&self, _tenant: Option<&TenantId>) -> Result<(FaultCounts, Vec<Fault>), SourceError> {
        Err(SourceError::Unsupported("faults"))
    }
    /// Acknowledges (`clear` false) or clears a fault `tenant` may see, as `user`.
    fn fault_action(
        &self,
        _tenant: Option<&TenantId>,
        _id: FaultId,
        _clear: bool,
        _user: &str,
        _note: &str,
    ) -> Result<Fault, SourceError> {
        Err(SourceError::Unsupported("faults"))
    }
    /// Today, this week and this month, per tenant `tenant` may see.
    fn energy(&self, _tenant: Option<&TenantId>) -> Result<Vec<EnergySummary>, SourceError> {
        Err(SourceError::Unsupported("energy"))
    }
    /// Half-hourly consumption per lamp over `[from_s, to_s)` as CSV.
    fn half_hourly_csv(
        &self,
        _tenant: Option<&TenantId>,
        _from_s: i64,
        _to_s: i64,
    ) -> Result<String, SourceError> {
        Err(SourceError::Unsupported("energy"))
    }
    /// The roads to draw under the lamps of `tenant`.
    fn roads(&self, _tenant: Option<&TenantId>) -> Vec<Road> {
        Vec::new()
    }
}
