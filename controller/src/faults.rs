//! Faults: what needs a crew, raised with hysteresis so one flicker pages nobody.
//!
//! Sans-IO, like the core: every input carries `now`, nothing reads a clock, and what is
//! worth keeping leaves through [`FaultTracker::poll_event`] for the service to store and log.
//!
//! # Kinds and the evidence for each
//!
//! Each accepted status report is evidence for or against each kind, or no evidence at all
//! (a lamp that is off can not show that it fails to light):
//!
//! | kind | present when | absent when | no evidence when |
//! |---|---|---|---|
//! | [`FaultKind::LampFailure`] | the node's `LAMP_FAILURE` flag, or the lamp reports at least `lit_level_pct` but draws no more than `failed_max_power_w` | it reports lit and draws power | it reports a level below `lit_level_pct` |
//! | [`FaultKind::DriverFault`] | the node's `DRIVER` flag | the flag is clear | - |
//! | [`FaultKind::CommsLoss`] | no report for `comms_loss_after_periods` report intervals (on a tick), or the node's `COMMS_LOST` flag (it heard no command and runs its fail-safe profile) | a report without the flag | - |
//! | [`FaultKind::DayBurning`] | lit (level above 0 or drawing power) while the sun is up at the lamp at the reading's time (the ambient light reading goes in the detail) | unlit by day | night, or an operator override holds the lamp (lit by day on purpose) |
//! | [`FaultKind::Cycling`] | more than `cycling_max_changes` on/off changes of the drawn power (above or below `failed_max_power_w`) within `cycling_window_s` | at most that many | - |
//!
//! "No evidence" matters: a failed lamp reads fine by day (it is off), and must not clear
//! itself every morning and be raised again every evening.
//!
//! Day is the almanac's (`sun::is_dark`, the very test the policy lights lamps by), not the
//! light sensor's, nor the node's own `DAY_BURNING` flag (the sensor read against 200 lx):
//! a sensor still reads a few hundred lux for a quarter of an hour after sunset, when every
//! lamp is rightly lit, and the flag would raise day-burning on the whole town every dusk
//! (the demo showed exactly that).
//!
//! # Hysteresis
//!
//! A kind is raised once `raise_after_reports` consecutive reports present it *and* it has
//! persisted for `raise_after_s` (so neither one bad report nor a burst of event-driven
//! reports within seconds, e.g. a lamp still ramping down at dawn, raises); comms loss by silence is raised when the silence crosses its
//! threshold (the threshold is the hysteresis), cycling when the count in the window exceeds
//! its maximum. A raised fault clears itself once the condition has been absent for
//! `clear_after_s` without coming back (absence needs evidence: a clean report, or for comms
//! loss reports arriving again). An operator can acknowledge a fault (it stays listed, as
//! acknowledged, until it clears) or clear it by hand (if the condition persists it is raised
//! again after `raise_after_reports` more reports, as a new fault).
//!
//! Fault ids are unique over the store's life: the tracker is restored from the store's open
//! faults and next id at start ([`FaultTracker::restore`]).

use std::collections::{BTreeMap, HashMap, VecDeque};

use lamplighter_protocol::payload::{FaultFlags, StatusReport};
use lamplighter_protocol::{DevEui, LampId, TenantId, UnixMs};
use serde::{Deserialize, Serialize};

/// What is wrong with a lamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    LampFailure,
    DriverFault,
    CommsLoss,
    DayBurning,
    Cycling,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::LampFailure,
        FaultKind::DriverFault,
        FaultKind::CommsLoss,
        FaultKind::DayBurning,
        FaultKind::Cycling,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::LampFailure => "lamp-failure",
            FaultKind::DriverFault => "driver-fault",
            FaultKind::CommsLoss => "comms-loss",
            FaultKind::DayBurning => "day-burning",
            FaultKind::Cycling => "cycling",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FaultKind {
    type Err = FaultError;
    fn from_str(s: &str) -> Result<Self, FaultError> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| FaultError::UnknownKind(s.to_string()))
    }
}

/// A fault's number, unique in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FaultId(pub u64);

impl std::fmt::Display for FaultId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a fault stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultState {
    /// Raised, nobody has acknowledged it yet.
    Open,
    /// Somebody has seen it; still there.
    Acknowledged,
    /// Gone (by itself or cleared by hand).
    Cleared,
}

/// Somebody (or the controller itself) did something to a fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// The user; `None` for the controller itself (an automatic clear).
    pub by: Option<String>,
    pub at: UnixMs,
    /// Why, in the user's words (or the controller's reason for an automatic clear).
    pub note: String,
}

/// One fault of one lamp, from raised to cleared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub id: FaultId,
    pub tenant: TenantId,
    pub lamp: LampId,
    pub dev_eui: DevEui,
    pub kind: FaultKind,
    pub raised_at: UnixMs,
    /// What was seen when it was raised, e.g. "level 100 % but 0.5 W".
    pub detail: String,
    pub acknowledged: Option<Action>,
    pub cleared: Option<Action>,
}

impl Fault {
    pub fn state(&self) -> FaultState {
        match (&self.cleared, &self.acknowledged) {
            (Some(_), _) => FaultState::Cleared,
            (None, Some(_)) => FaultState::Acknowledged,
            (None, None) => FaultState::Open,
        }
    }
}

/// What the store and the log are told.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultEvent {
    Raised(Fault),
    Acknowledged { id: FaultId, action: Action },
    Cleared { id: FaultId, action: Action },
}

/// `[controller.faults]`: the thresholds. Every key has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Consecutive reports that must show a condition before it is raised...
    pub raise_after_reports: u32,
    /// ...over at least this long.
    pub raise_after_s: u32,
    /// A raised fault clears itself once its condition has been absent this long.
    pub clear_after_s: u32,
    /// Comms loss: no report for this many report intervals (the controller's
    /// `report_interval_s`).
    pub comms_loss_after_periods: u32,
    /// A lamp reporting at least this level should draw more than `failed_max_power_w`.
    pub lit_level_pct: u8,
    /// Drawing no more than this is drawing nothing: the driver's standby (0.5 W) with
    /// margin.
    pub failed_max_power_w: f32,
    /// Cycling: more on/off changes than this within `cycling_window_s`.
    pub cycling_max_changes: u32,
    pub cycling_window_s: u32,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            raise_after_reports: 3,
            raise_after_s: 300,
            clear_after_s: 900,
            comms_loss_after_periods: 3,
            lit_level_pct: 5,
            failed_max_power_w: 1.0,
            // Dusk and dawn are two changes a day; a lamp flapping every few minutes is
            // well past six an hour.
            cycling_max_changes: 6,
            cycling_window_s: 3600,
        }
    }
}

/// Why a [`FaultConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultConfigError {
    #[error("faults.{0} must be at least 1")]
    Zero(&'static str),
    #[error("faults.lit_level_pct must be 1-100, got {0}")]
    LitLevel(u8),
    #[error("faults.failed_max_power_w must be a non-negative number, got {0}")]
    Power(f32),
}

impl FaultConfig {
    pub fn validate(&self) -> Result<(), FaultConfigError> {
        for (name, v) in [
            ("raise_after_reports", self.raise_after_reports),
            ("clear_after_s", self.clear_after_s),
            ("comms_loss_after_periods", self.comms_loss_after_periods),
            ("cycling_max_changes", self.cycling_max_changes),
            ("cycling_window_s", self.cycling_window_s),
        ] {
            if v == 0 {
                return Err(FaultConfigError::Zero(name));
            }
        }
        if !(1..=100).contains(&self.lit_level_pct) {
            return Err(FaultConfigError::LitLevel(self.lit_level_pct));
        }
        if !(self.failed_max_power_w.is_finite() && self.failed_max_power_w >= 0.0) {
            return Err(FaultConfigError::Power(self.failed_max_power_w));
        }
        Ok(())
    }
}

/// Why an operator's action on a fault was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultError {
    #[error("no open fault {0} (unknown, or already cleared)")]
    NotOpen(FaultId),
    #[error("fault {id} was already acknowledged by {by}")]
    AlreadyAcknowledged { id: FaultId, by: String },
    #[error("a user name is required")]
    NoUser,
    #[error("unknown fault kind {0:?}")]
    UnknownKind(String),
    #[error("invalid fault configuration: {0}")]
    Config(#[from] FaultConfigError),
}

/// A lamp as the tracker knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LampInfo {
    pub lamp: LampId,
    pub tenant: TenantId,
    pub dev_eui: DevEui,
}

/// What the caller knows about a report that the report itself does not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportContext {
    /// The sun is up at the lamp at the reading's time (`!sun::is_dark`).
    pub daylight: bool,
    /// An operator override holds the lamp: lit by day on purpose, not day-burning.
    pub override_active: bool,
}

/// Faults open and acknowledged, for the front page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// Not yet acknowledged.
    pub open: usize,
    pub acknowledged: usize,
    /// Lamps with at least one fault (open or acknowledged).
    pub lamps: usize,
    /// Every kind, zeros included.
    pub by_kind: BTreeMap<FaultKind, KindCounts>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KindCounts {
    pub open: usize,
    pub acknowledged: usize,
}

/// The evidence one report (or tick) gives about one kind.
enum Evidence {
    Present(String),
    Absent,
    Unknown,
}

#[derive(Debug, Clone, Default)]
struct Track {
    /// Consecutive observations of the condition.
    streak: u32,
    /// The first of them.
    first_seen: Option<UnixMs>,
    /// The condition has been absent since (set only while a fault is open).
    clean_since: Option<UnixMs>,
    open: Option<FaultId>,
}

#[derive(Debug, Clone)]
struct LampFaults {
    info: LampInfo,
    /// When the tracker started watching, or an operator cleared its comms loss: silence
    /// is counted from here or the last report, whichever is later.
    since: UnixMs,
    last_report: Option<UnixMs>,
    /// Whether the lamp drew power at its last report.
    drawing: Option<bool>,
    /// Times of on/off changes within the cycling window.
    changes: VecDeque<UnixMs>,
    tracks: [Track; 5],
}

/// Per-lamp fault detection with hysteresis, acknowledgement and clearing.
#[derive(Debug, Clone)]
pub struct FaultTracker {
    config: FaultConfig,
    report_interval_s: u32,
    lamps: Vec<LampFaults>,
    by_lamp: HashMap<LampId, usize>,
    open: BTreeMap<FaultId, Fault>,
    next_id: u64,
    events: VecDeque<FaultEvent>,
}

impl Default for FaultTracker {
    /// The default thresholds, for nodes reporting every 300 s (the controller's default).
    fn default() -> Self {
        FaultTracker {
            config: FaultConfig::default(),
            report_interval_s: 300,
            lamps: Vec::new(),
            by_lamp: HashMap::new(),
            open: BTreeMap::new(),
            next_id: 1,
            events: VecDeque::new(),
        }
    }
}

impl FaultTracker {
    /// A tracker for nodes reporting every `report_interval_s` (the controller's setting).
    pub fn new(config: FaultConfig, report_interval_s: u32) -> Result<Self, FaultError> {
        config.validate()?;
        if report_interval_s == 0 {
            return Err(FaultConfigError::Zero("report_interval_s").into());
        }
        Ok(FaultTracker {
            config,
            report_interval_s,
            ..FaultTracker::default()
        })
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// Starts watching a lamp: if it never reports, comms loss is counted from `now`.
    /// Watching a lamp already watched changes nothing.
    pub fn watch(&mut self, now: UnixMs, lamp: LampInfo) -> usize {
        if let Some(&i) = self.by_lamp.get(&lamp.lamp) {
            return i;
        }
        self.by_lamp.insert(lamp.lamp, self.lamps.len());
        self.lamps.push(LampFaults {
            info: lamp,
            since: now,
            last_report: None,
            drawing: None,
            changes: VecDeque::new(),
            tracks: Default::default(),
        });
        self.lamps.len() - 1
    }

    /// Takes back the faults the store holds open (after a restart) and the store's next
    /// id, so ids stay unique and open faults can still be acknowledged and clear
    /// themselves. Cleared faults in `faults` are ignored.
    pub fn restore(&mut self, now: UnixMs, faults: Vec<Fault>, next_id: u64) {
        self.next_id = self.next_id.max(next_id);
        for f in faults.into_iter().filter(|f| f.cleared.is_none()) {
            let i = self.watch(
                now,
                LampInfo {
                    lamp: f.lamp,
                    tenant: f.tenant.clone(),
                    dev_eui: f.dev_eui,
                },
            );
            let t = &mut self.lamps[i].tracks[f.kind.index()];
            // One open fault per lamp and kind: a duplicate (should never be) stays listed
            // so it can still be cleared by hand.
            if t.open.is_none() {
                t.open = Some(f.id);
                t.streak = self.config.raise_after_reports;
            }
            self.next_id = self.next_id.max(f.id.0 + 1);
            self.open.insert(f.id, f);
        }
    }

    /// An accepted status report from `lamp`, received at `now`.
    pub fn handle_report(
        &mut self,
        now: UnixMs,
        lamp: &LampInfo,
        report: &StatusReport,
        context: ReportContext,
    ) {
        let i = match self.by_lamp.get(&lamp.lamp) {
            Some(&i) => i,
            None => self.watch(now, lamp.clone()),
        };
        let cfg = &self.config;
        let flags = report.faults;
        let power_w = report.power_w();
        let drawing = power_w > cfg.failed_max_power_w;

        let lamp_failure = if flags.contains(FaultFlags::LAMP_FAILURE) {
            Evidence::Present(format!(
                "node reports no current while lit (level {} %, {power_w:.1} W)",
                report.level_pct
            ))
        } else if report.level_pct >= cfg.lit_level_pct {
            if drawing {
                Evidence::Absent
            } else {
                Evidence::Present(format!(
                    "level {} % but {power_w:.1} W drawn",
                    report.level_pct
                ))
            }
        } else {
            Evidence::Unknown
        };
        let driver = if flags.contains(FaultFlags::DRIVER) {
            Evidence::Present("driver reports an error".to_string())
        } else {
            Evidence::Absent
        };
        let comms = if flags.contains(FaultFlags::COMMS_LOST) {
            Evidence::Present("node hears no commands and runs its fail-safe profile".to_string())
        } else {
            Evidence::Absent
        };
        let lit = report.level_pct > 0 || drawing;
        let day_burning = if !context.daylight || context.override_active {
            Evidence::Unknown
        } else if lit {
            Evidence::Present(format!(
                "lit at {} % ({power_w:.1} W) by day ({} lx)",
                report.level_pct, report.ambient_lux
            ))
        } else {
            Evidence::Absent
        };

        let window_ms = cfg.cycling_window_s as u64 * 1000;
        let max_changes = cfg.cycling_max_changes as usize;
        let raise_after = (cfg.raise_after_reports, cfg.raise_after_s as u64 * 1000);
        let l = &mut self.lamps[i];
        l.last_report = Some(now);
        if l.drawing.is_some_and(|d| d != drawing) {
            l.changes.push_back(now);
        }
        l.drawing = Some(drawing);
        while l.changes.front().is_some_and(|&t| now.since(t) > window_ms) {
            l.changes.pop_front();
        }
        let cycling = if l.changes.len() > max_changes {
            Evidence::Present(format!(
                "{} on/off changes within {} s",
                l.changes.len(),
                window_ms / 1000
            ))
        } else {
            Evidence::Absent
        };

        self.observe(now, i, FaultKind::LampFailure, lamp_failure, raise_after);
        self.observe(now, i, FaultKind::DriverFault, driver, raise_after);
        self.observe(now, i, FaultKind::CommsLoss, comms, raise_after);
        self.observe(now, i, FaultKind::DayBurning, day_burning, raise_after);
        // The count in the window is this kind's hysteresis.
        self.observe(now, i, FaultKind::Cycling, cycling, (1, 0));
    }

    /// Time passed: raise comms loss for lamps silent too long, let cycling counts age, and
    /// clear faults whose condition has been gone long enough.
    pub fn handle_tick(&mut self, now: UnixMs) {
        let silence_ms =
            self.config.comms_loss_after_periods as u64 * self.report_interval_s as u64 * 1000;
        let window_ms = self.config.cycling_window_s as u64 * 1000;
        let max_changes = self.config.cycling_max_changes as usize;
        for i in 0..self.lamps.len() {
            let l = &mut self.lamps[i];
            let heard = l.last_report.map_or(l.since, |r| r.max(l.since));
            let silent_ms = now.since(heard);
            if silent_ms > silence_ms {
                let detail = match l.last_report {
                    Some(_) => format!(
                        "no report for {} s ({} report intervals of {} s)",
                        silent_ms / 1000,
                        self.config.comms_loss_after_periods,
                        self.report_interval_s
                    ),
                    None => format!("never reported in {} s", silent_ms / 1000),
                };
                // Silence past the threshold raises at once: the threshold is the
                // hysteresis.
                self.observe(
                    now,
                    i,
                    FaultKind::CommsLoss,
                    Evidence::Present(detail),
                    (1, 0),
                );
            }
            let l = &mut self.lamps[i];
            while l.changes.front().is_some_and(|&t| now.since(t) > window_ms) {
                l.changes.pop_front();
            }
            if l.changes.len() <= max_changes {
                self.observe(now, i, FaultKind::Cycling, Evidence::Absent, (1, 0));
            }
            for kind in FaultKind::ALL {
                self.maybe_clear(now, i, kind);
            }
        }
    }

    /// Takes one observation of `kind`; raises once `reports` consecutive observations
    /// span at least `min_ms`.
    fn observe(
        &mut self,
        now: UnixMs,
        i: usize,
        kind: FaultKind,
        e: Evidence,
        (reports, min_ms): (u32, u64),
    ) {
        let t = &mut self.lamps[i].tracks[kind.index()];
        match e {
            Evidence::Present(detail) => {
                t.streak = t.streak.saturating_add(1);
                let first = *t.first_seen.get_or_insert(now);
                t.clean_since = None;
                if t.open.is_none() && t.streak >= reports && now.since(first) >= min_ms {
                    self.raise(now, i, kind, detail);
                }
            }
            Evidence::Absent => {
                t.streak = 0;
                t.first_seen = None;
                if t.open.is_some() {
                    t.clean_since.get_or_insert(now);
                    self.maybe_clear(now, i, kind);
                }
            }
            Evidence::Unknown => {}
        }
    }

    fn raise(&mut self, now: UnixMs, i: usize, kind: FaultKind, detail: String) {
        let id = FaultId(self.next_id);
        self.next_id += 1;
        let l = &mut self.lamps[i];
        l.tracks[kind.index()].open = Some(id);
        let fault = Fault {
            id,
            tenant: l.info.tenant.clone(),
            lamp: l.info.lamp,
            dev_eui: l.info.dev_eui,
            kind,
            raised_at: now,
            detail,
            acknowledged: None,
            cleared: None,
        };
        self.open.insert(id, fault.clone());
        self.events.push_back(FaultEvent::Raised(fault));
    }

    fn maybe_clear(&mut self, now: UnixMs, i: usize, kind: FaultKind) {
        let clear_ms = self.config.clear_after_s as u64 * 1000;
        let t = &mut self.lamps[i].tracks[kind.index()];
        let (Some(id), Some(since)) = (t.open, t.clean_since) else {
            return;
        };
        if now.since(since) < clear_ms {
            return;
        }
        *t = Track::default();
        let action = Action {
            by: None,
            at: now,
            note: format!("condition absent for {} s", now.since(since) / 1000),
        };
        self.open.remove(&id);
        self.events.push_back(FaultEvent::Cleared { id, action });
    }

    /// `user` has seen fault `id`. It stays listed, as acknowledged, until it clears.
    pub fn acknowledge(
        &mut self,
        id: FaultId,
        user: &str,
        note: &str,
        now: UnixMs,
    ) -> Result<Fault, FaultError> {
        let user = user.trim();
        if user.is_empty() {
            return Err(FaultError::NoUser);
        }
        let f = self.open.get_mut(&id).ok_or(FaultError::NotOpen(id))?;
        if let Some(a) = &f.acknowledged {
            return Err(FaultError::AlreadyAcknowledged {
                id,
                by: a.by.clone().unwrap_or_default(),
            });
        }
        let action = Action {
            by: Some(user.to_string()),
            at: now,
            note: note.to_string(),
        };
        f.acknowledged = Some(action.clone());
        let f = f.clone();
        self.events
            .push_back(FaultEvent::Acknowledged { id, action });
        Ok(f)
    }

    /// `user` clears fault `id` by hand (the crew fixed it). Should the condition persist,
    /// it is raised again, as a new fault, after `raise_after_reports` more reports (comms
    /// loss: after the whole silence threshold again, counted from the clear).
    pub fn clear(
        &mut self,
        id: FaultId,
        user: &str,
        note: &str,
        now: UnixMs,
    ) -> Result<Fault, FaultError> {
        let user = user.trim();
        if user.is_empty() {
            return Err(FaultError::NoUser);
        }
        let mut f = self.open.remove(&id).ok_or(FaultError::NotOpen(id))?;
        if let Some(&i) = self.by_lamp.get(&f.lamp) {
            let t = &mut self.lamps[i].tracks[f.kind.index()];
            if t.open == Some(id) {
                *t = Track::default();
            }
            match f.kind {
                FaultKind::Cycling => self.lamps[i].changes.clear(),
                // Still silent: lost again only after a whole threshold of silence more.
                FaultKind::CommsLoss => self.lamps[i].since = now,
                _ => {}
            }
        }
        let action = Action {
            by: Some(user.to_string()),
            at: now,
            note: note.to_string(),
        };
        f.cleared = Some(action.clone());
        self.events.push_back(FaultEvent::Cleared { id, action });
        Ok(f)
    }

    /// The faults not yet cleared (open and acknowledged), of every tenant or one, newest
    /// first.
    pub fn faults(&self, tenant: Option<&TenantId>) -> Vec<Fault> {
        let mut out: Vec<Fault> = self
            .open
            .values()
            .filter(|f| f.tenant.visible_to(tenant))
            .cloned()
            .collect();
        out.sort_by(|a, b| b.raised_at.cmp(&a.raised_at).then(b.id.cmp(&a.id)));
        out
    }

    /// One fault not yet cleared.
    pub fn fault(&self, id: FaultId) -> Option<&Fault> {
        self.open.get(&id)
    }

    /// Counts by kind and state, of every tenant or one.
    pub fn counts(&self, tenant: Option<&TenantId>) -> FaultCounts {
        let mut c = FaultCounts {
            by_kind: FaultKind::ALL
                .into_iter()
                .map(|k| (k, KindCounts::default()))
                .collect(),
            ..Default::default()
        };
        let mut lamps = std::collections::HashSet::new();
        for f in self.open.values().filter(|f| f.tenant.visible_to(tenant)) {
            lamps.insert(f.lamp);
            let k = c.by_kind.entry(f.kind).or_default();
            if f.acknowledged.is_some() {
                c.acknowledged += 1;
                k.acknowledged += 1;
            } else {
                c.open += 1;
                k.open += 1;
            }
        }
        c.lamps = lamps.len();
        c
    }

    /// The next event for the store and the log.
    pub fn poll_event(&mut self) -> Option<FaultEvent> {
        self.events.pop_front()
    }
}
