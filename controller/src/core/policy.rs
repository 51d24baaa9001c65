//! The lighting policy: a lamp's situation in, a level and the reason for it out.
//!
//! One function, [`decide`], serves every policy; a [`PolicyConfig`] says which rules apply.
//! In order, the first that applies wins:
//!
//! 1. **Override**: an operator's level until it expires (even by day).
//! 2. **Daylight**: lamps off.
//! 3. **Presence** (when `reactive`): a road user detected at this lamp or a neighbour raises
//!    the lamp to the bubble level at once, held for `bubble_hold_s`, then released. Never
//!    below the class in force or the minimum.
//! 4. **Class** (when `adaptive`): the level at which the lamp, designed for its zone's design
//!    class at 100 %, meets the class the zone's demand calls for now ([`ClassInForce`], chosen
//!    by [`super::classes`] from measured demand and the forecast), reason `schedule` (the class
//!    for this period) or `forecast` (raised ahead of demand the forecast's upper quantile
//!    expects within the lead time). With presence sensing (`reactive`) that level is what
//!    road users near the lamp get (the bubble, reason `presence`: the class their demand
//!    calls for, not the design class), and a lamp with nobody near waits at
//!    `min_level_pct`; a bubble lasts as long as the slowest kind of road user detected needs
//!    to pass the next lamp ([`bubble_hold_ms`]). Without presence sensing every lamp holds
//!    the class's level. When the zone's demand is unknown (no report from its
//!    lamps for `demand_stale_s`), the fail-safe floor: the night profile, which for
//!    `adaptive` is the part-night profile the nodes themselves fall back to, reason
//!    `fail-safe`.
//! 5. **Schedule** (otherwise): the time-of-night profile.
//!
//! While dark nothing but an override goes below `min_level_pct`. Ramps are bounded rates:
//! a full 0-100 % rise takes `ramp_up_ms`, a full fall `ramp_down_ms`, and smaller changes
//! proportionally less ([`ramp_ms`]), so light rises fast and falls slowly and a road user never
//! walks into a lamp that is still dimming down.
//!
//! # Named policies
//!
//! [`POLICY_NAMES`], selectable by `name` in `[controller.policy]` (other keys there override
//! the named policy's values) and by the simulator's planning mode:
//!
//! | name | while dark |
//! |---|---|
//! | `profile-reactive` (default) | a dimmed night profile (70/50/30 %) with presence bubbles |
//! | `full` | 100 % dusk to dawn |
//! | `part-night` | 100 % to 22:00, 75 % to 00:00, 50 % to 05:30, 100 % to dawn |
//! | `reactive` | the minimum level, presence bubbles |
//! | `adaptive` | road users get the class their demand calls for (CEN/TR 13201-1, UNI 11248), raised ahead of forecast demand; empty streets wait at the minimum; bubbles held by road-user kind; part-night when demand is unknown |
//!
//! `profile-reactive` stays the default so that a deployment without zone parameters
//! (`[[controller.zones]]`: design class and capacity) keeps its behaviour; `adaptive` needs
//! them to be right.

use lamplighter_protocol::payload::{Presence, ProfileStep};
use lamplighter_protocol::{LightingClass, UnixMs};
use serde::{Deserialize, Serialize};

use super::classes::{self, TrafficStep};

/// A policy. Deserialised from `[controller.policy]`: `name` picks a named policy (default
/// `profile-reactive`) and every other key overrides that policy's value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "PolicyToml")]
pub struct PolicyConfig {
    /// The named policy this one starts from (see [`POLICY_NAMES`]).
    pub name: String,
    /// Levels while dark, by local time of day (wrapping at midnight). For `adaptive` the
    /// fail-safe floor used while a zone's demand is unknown.
    pub night_profile: Vec<ProfileStep>,
    /// Local time offset from UTC for the profile and the forecasters, minutes.
    pub utc_offset_min: i32,
    /// No lamp is commanded below this while it is dark (overrides aside).
    pub min_level_pct: u8,
    /// Level of the presence bubble.
    pub bubble_level_pct: u8,
    /// How long the bubble holds after the last detection.
    pub bubble_hold_s: u32,
    /// The hold by the kind of road user detected (pedestrians, cyclists, vehicles), when
    /// set: a bubble need only last until the slowest of them has passed the next lamp
    /// (see [`bubble_hold_ms`]); `bubble_hold_s` otherwise. Never longer than `bubble_hold_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bubble_hold_by_user_s: Option<[u32; 3]>,
    /// Neighbours within this distance join the bubble.
    pub bubble_neighbours: usize,
    pub bubble_radius_m: f64,
    /// Duration of a full 0-100 % rise; smaller rises take proportionally less.
    pub ramp_up_ms: u32,
    /// Duration of a full 100-0 % fall; smaller falls take proportionally less.
    pub ramp_down_ms: u32,
    /// Whether presence detections raise a bubble (off for the static baselines).
    pub reactive: bool,
    /// Whether the dark level follows the class the zone's demand calls for.
    pub adaptive: bool,
    /// Length of a demand interval (presence counted, forecasters fed, class re-evaluated).
    pub interval_s: u32,
    /// Consecutive intervals that must call for a dimmer class before it is taken.
    pub confirm_intervals: u8,
    /// Brighten now when the forecast's upper quantile calls for a brighter class within
    /// this time (0: measured demand only).
    pub forecast_lead_s: u32,
    /// The traffic-volume weighting: classes below the design class by share of capacity.
    pub traffic_steps: Vec<TrafficStep>,
    /// A zone none of whose lamps reported for this long has unknown demand.
    pub demand_stale_s: u32,
}

fn step(h: u16, m: u16, level_pct: u8) -> ProfileStep {
    ProfileStep {
        minute_of_day: h * 60 + m,
        level_pct,
    }
}

fn part_night_profile() -> Vec<ProfileStep> {
    vec![
        step(0, 0, 50),
        step(5, 30, 100),
        step(12, 0, 100),
        step(22, 0, 75),
    ]
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            name: "profile-reactive".to_string(),
            night_profile: vec![
                step(0, 0, 30),
                step(5, 30, 70),
                step(12, 0, 70),
                step(22, 0, 50),
            ],
            utc_offset_min: 0,
            min_level_pct: 20,
            bubble_level_pct: 100,
            bubble_hold_s: 90,
            bubble_hold_by_user_s: None,
            bubble_radius_m: 60.0,
            bubble_neighbours: 4,
            ramp_up_ms: 1_000,
            ramp_down_ms: 20_000,
            reactive: true,
            adaptive: false,
            interval_s: 600,
            confirm_intervals: 2,
            forecast_lead_s: 1_200,
            traffic_steps: classes::uni_11248_steps(),
            demand_stale_s: 1_800,
        }
    }
}

/// `adaptive`'s bubble holds (pedestrians, cyclists, vehicles), seconds: at least the time
/// the slowest of each (0.8 times 1.4, 5 and 12 m/s) takes from its detection, the sensor's
/// 20 m before a lamp, to the next lamp up to [`HOLD_COVERS_GAP_M`] further on (street lights
/// stand 25-40 m apart), so that a road user whose detection at the next lamp is missed still
/// finds it lit by the bubble of the lamp before.
pub const ADAPTIVE_HOLD_BY_USER_S: [u32; 3] = [60, 25, 12];

/// The lamp spacing [`ADAPTIVE_HOLD_BY_USER_S`] covers.
pub const HOLD_COVERS_GAP_M: f64 = 45.0;

/// How long a bubble started by a report with these presence counts holds: the longest hold
/// of the kinds of road user it counts (a report with no counts: `bubble_hold_s`).
pub fn bubble_hold_ms(cfg: &PolicyConfig, presence: Presence) -> u64 {
    let Some(by_user) = cfg.bubble_hold_by_user_s else {
        return cfg.bubble_hold_s as u64 * 1000;
    };
    let counts = [presence.pedestrians, presence.cyclists, presence.vehicles];
    // A plain loop: every presence report comes here, and the zip of two arrays built
    // on the stack cost a stalled load each time (a store read back misaligned).
    let mut hold_s: Option<u32> = None;
    for (k, &n) in counts.iter().enumerate() {
        if n > 0 {
            let h = by_user[k];
            hold_s = Some(hold_s.map_or(h, |m| m.max(h)));
        }
    }
    hold_s.unwrap_or(cfg.bubble_hold_s).min(cfg.bubble_hold_s) as u64 * 1000
}

/// The policies a deployment or a simulation run can choose by name.
pub const POLICY_NAMES: &[&str] = &[
    "profile-reactive",
    "full",
    "part-night",
    "reactive",
    "adaptive",
];

impl PolicyConfig {
    /// A named policy (see the module documentation), or `None` for an unknown name.
    pub fn named(name: &str) -> Option<PolicyConfig> {
        let base = PolicyConfig {
            name: name.to_string(),
            ..PolicyConfig::default()
        };
        Some(match name {
            "profile-reactive" => base,
            "full" => PolicyConfig {
                night_profile: vec![step(0, 0, 100)],
                reactive: false,
                ..base
            },
            "part-night" => PolicyConfig {
                night_profile: part_night_profile(),
                reactive: false,
                ..base
            },
            "reactive" => PolicyConfig {
                night_profile: vec![step(0, 0, base.min_level_pct)],
                ..base
            },
            "adaptive" => PolicyConfig {
                night_profile: part_night_profile(),
                adaptive: true,
                bubble_hold_s: ADAPTIVE_HOLD_BY_USER_S[0],
                bubble_hold_by_user_s: Some(ADAPTIVE_HOLD_BY_USER_S),
                ..base
            },
            _ => return None,
        })
    }
}

/// `[controller.policy]` as written: every key optional, `name` picks the base.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyToml {
    name: Option<String>,
    night_profile: Option<Vec<ProfileStep>>,
    utc_offset_min: Option<i32>,
    min_level_pct: Option<u8>,
    bubble_level_pct: Option<u8>,
    bubble_hold_s: Option<u32>,
    bubble_hold_by_user_s: Option<[u32; 3]>,
    bubble_neighbours: Option<usize>,
    bubble_radius_m: Option<f64>,
    ramp_up_ms: Option<u32>,
    ramp_down_ms: Option<u32>,
    reactive: Option<bool>,
    adaptive: Option<bool>,
    interval_s: Option<u32>,
    confirm_intervals: Option<u8>,
    forecast_lead_s: Option<u32>,
    traffic_steps: Option<Vec<TrafficStep>>,
    demand_stale_s: Option<u32>,
}

impl TryFrom<PolicyToml> for PolicyConfig {
    type Error = PolicyError;
    fn try_from(t: PolicyToml) -> Result<Self, PolicyError> {
        let name = t.name.unwrap_or_else(|| "profile-reactive".to_string());
        let b = PolicyConfig::named(&name).ok_or(PolicyError::UnknownName(name))?;
        let c = PolicyConfig {
            name: b.name,
            night_profile: t.night_profile.unwrap_or(b.night_profile),
            utc_offset_min: t.utc_offset_min.unwrap_or(b.utc_offset_min),
            min_level_pct: t.min_level_pct.unwrap_or(b.min_level_pct),
            bubble_level_pct: t.bubble_level_pct.unwrap_or(b.bubble_level_pct),
            bubble_hold_s: t.bubble_hold_s.unwrap_or(b.bubble_hold_s),
            bubble_hold_by_user_s: t.bubble_hold_by_user_s.or(b.bubble_hold_by_user_s),
            bubble_neighbours: t.bubble_neighbours.unwrap_or(b.bubble_neighbours),
            bubble_radius_m: t.bubble_radius_m.unwrap_or(b.bubble_radius_m),
            ramp_up_ms: t.ramp_up_ms.unwrap_or(b.ramp_up_ms),
            ramp_down_ms: t.ramp_down_ms.unwrap_or(b.ramp_down_ms),
            reactive: t.reactive.unwrap_or(b.reactive),
            adaptive: t.adaptive.unwrap_or(b.adaptive),
            interval_s: t.interval_s.unwrap_or(b.interval_s),
            confirm_intervals: t.confirm_intervals.unwrap_or(b.confirm_intervals),
            forecast_lead_s: t.forecast_lead_s.unwrap_or(b.forecast_lead_s),
            traffic_steps: t.traffic_steps.unwrap_or(b.traffic_steps),
            demand_stale_s: t.demand_stale_s.unwrap_or(b.demand_stale_s),
        };
        c.validate()?;
        Ok(c)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("unknown policy {0:?}; known: {known}", known = POLICY_NAMES.join(", "))]
    UnknownName(String),
    #[error("night_profile needs 1 to 8 steps with minute_of_day < 1440 and level_pct <= 100")]
    Profile,
    #[error("{field} must be at most 100, got {value}")]
    Level { field: &'static str, value: u8 },
    #[error("min_level_pct ({min}) must not exceed bubble_level_pct ({bubble})")]
    MinAboveBubble { min: u8, bubble: u8 },
    #[error("utc_offset_min must be within +/-14 h, got {0}")]
    Offset(i32),
    #[error("interval_s must divide a day and be 60 to 3600, got {0}")]
    Interval(u32),
    #[error("confirm_intervals must be 1 to 6, got {0}")]
    Confirm(u8),
    #[error("forecast_lead_s must be at most 3600 (the forecasters' longest horizon), got {0}")]
    Lead(u32),
    #[error("demand_stale_s must be at least interval_s ({interval_s}), got {got}")]
    Stale { interval_s: u32, got: u32 },
    #[error(
        "traffic_steps needs at most 8 steps, each with 0 < below_capacity_pct <= 100 and \
         1 <= classes_down <= 5"
    )]
    TrafficSteps,
    #[error("ramp_up_ms and ramp_down_ms must be at most 600000 (10 min)")]
    Ramp,
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if PolicyConfig::named(&self.name).is_none() {
            return Err(PolicyError::UnknownName(self.name.clone()));
        }
        let steps_ok = (1..=8).contains(&self.night_profile.len())
            && self
                .night_profile
                .iter()
                .all(|s| s.minute_of_day < 1440 && s.level_pct <= 100);
        if !steps_ok {
            return Err(PolicyError::Profile);
        }
        for (field, value) in [
            ("min_level_pct", self.min_level_pct),
            ("bubble_level_pct", self.bubble_level_pct),
        ] {
            if value > 100 {
                return Err(PolicyError::Level { field, value });
            }
        }
        if self.min_level_pct > self.bubble_level_pct {
            return Err(PolicyError::MinAboveBubble {
                min: self.min_level_pct,
                bubble: self.bubble_level_pct,
            });
        }
        if self.utc_offset_min.abs() > 14 * 60 {
            return Err(PolicyError::Offset(self.utc_offset_min));
        }
        if !(60..=3600).contains(&self.interval_s) || 86_400 % self.interval_s != 0 {
            return Err(PolicyError::Interval(self.interval_s));
        }
        if !(1..=6).contains(&self.confirm_intervals) {
            return Err(PolicyError::Confirm(self.confirm_intervals));
        }
        if self.forecast_lead_s > 3600 {
            return Err(PolicyError::Lead(self.forecast_lead_s));
        }
        if self.demand_stale_s < self.interval_s {
            return Err(PolicyError::Stale {
                interval_s: self.interval_s,
                got: self.demand_stale_s,
            });
        }
        let traffic_ok = self.traffic_steps.len() <= 8
            && self.traffic_steps.iter().all(|s| {
                s.below_capacity_pct.is_finite()
                    && s.below_capacity_pct > 0.0
                    && s.below_capacity_pct <= 100.0
                    && (1..=5).contains(&s.classes_down)
            });
        if !traffic_ok {
            return Err(PolicyError::TrafficSteps);
        }
        if self.ramp_up_ms > 600_000 || self.ramp_down_ms > 600_000 {
            return Err(PolicyError::Ramp);
        }
        Ok(())
    }
}

/// Why a lamp is at its level. Every command records one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The time-of-night profile, or the class the demand calls for in this period.
    Schedule,
    /// A road user detected at this lamp or a neighbour.
    Presence,
    /// An operator's override.
    Override,
    /// Daylight: lamps off.
    Daylight,
    /// Raised ahead of the demand the forecast expects.
    Forecast,
    /// The fail-safe floor: the node's own fail-safe profile (reported by nodes), or the
    /// profile the controller falls back to while a zone's demand is unknown.
    FailSafe,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Schedule => "schedule",
            Reason::Presence => "presence",
            Reason::Override => "override",
            Reason::Daylight => "daylight",
            Reason::Forecast => "forecast",
            Reason::FailSafe => "fail-safe",
        }
    }
}

/// An operator's override of one lamp (zones and towns expand to lamps).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Override {
    pub level_pct: u8,
    pub until: UnixMs,
}

/// The class a lamp's zone is lit for now, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassInForce {
    /// The class the lamp meets at 100 %.
    pub design: LightingClass,
    /// The class the demand calls for.
    pub class: LightingClass,
    /// [`Reason::Forecast`] when the forecast holds the class above what the measured demand
    /// calls for, [`Reason::Schedule`] otherwise.
    pub reason: Reason,
}

impl ClassInForce {
    /// The level at which the lamp meets the class.
    pub fn level_pct(&self) -> u8 {
        classes::level_pct(self.design, self.class)
    }
}

/// What the policy knows about one lamp at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LampSituation {
    pub now: UnixMs,
    pub dark: bool,
    /// The presence bubble covering this lamp ends then.
    pub bubble_until: Option<UnixMs>,
    pub override_: Option<Override>,
    /// The class the lamp's zone is lit for (`None`: demand unknown).
    pub class: Option<ClassInForce>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub level_pct: u8,
    pub reason: Reason,
}

pub fn decide(cfg: &PolicyConfig, s: &LampSituation) -> Decision {
    if let Some(o) = s.override_.filter(|o| s.now < o.until) {
        return Decision {
            level_pct: o.level_pct.min(100),
            reason: Reason::Override,
        };
    }
    if !s.dark {
        return Decision {
            level_pct: 0,
            reason: Reason::Daylight,
        };
    }
    let class = s.class.filter(|_| cfg.adaptive);
    let floor = cfg
        .min_level_pct
        .max(class.map_or(0, |c| c.level_pct()))
        .min(100);
    let bubble = cfg.reactive && s.bubble_until.is_some_and(|t| s.now < t);
    if let (true, Some(c)) = (cfg.adaptive && cfg.reactive, class) {
        // Adaptive with presence: road users near the lamp get the class their demand calls
        // for now, no more; with nobody near, the lamp waits at the minimum, ready to rise.
        return if bubble {
            Decision {
                level_pct: floor,
                reason: Reason::Presence,
            }
        } else {
            Decision {
                level_pct: cfg.min_level_pct.min(floor),
                reason: c.reason,
            }
        };
    }
    if bubble {
        return Decision {
            level_pct: cfg.bubble_level_pct.max(floor),
            reason: Reason::Presence,
        };
    }
    let profile = || {
        let minute = (s.now.local_seconds_of_day(cfg.utc_offset_min) / 60) as u16;
        profile_level(&cfg.night_profile, minute).max(floor)
    };
    match (cfg.adaptive, class) {
        (true, Some(c)) => Decision {
            level_pct: floor,
            reason: c.reason,
        },
        (true, None) => Decision {
            level_pct: profile(),
            reason: Reason::FailSafe,
        },
        (false, _) => Decision {
            level_pct: profile(),
            reason: Reason::Schedule,
        },
    }
}

/// The first instant after `now` at which the night profile may give another level: its
/// next step (local time, wrapping at midnight); `None` for a profile with no steps.
pub fn next_profile_step(cfg: &PolicyConfig, now: UnixMs) -> Option<UnixMs> {
    let day_s = now.local_seconds_of_day(cfg.utc_offset_min) as u64;
    let minute = day_s / 60;
    let next_minute = cfg
        .night_profile
        .iter()
        .map(|s| s.minute_of_day as u64)
        .map(|m| if m > minute { m } else { m + 1440 })
        .min()?;
    let local_midnight_ms = (now.0 / 1000).saturating_sub(day_s) * 1000;
    Some(UnixMs(local_midnight_ms + next_minute * 60_000))
}

fn profile_level(steps: &[ProfileStep], minute: u16) -> u8 {
    // The latest step at or before `minute`, else (before the first step) the day's last;
    // of steps at the same minute, the last listed.
    let mut latest_before: Option<&ProfileStep> = None;
    let mut last_of_day: Option<&ProfileStep> = None;
    for s in steps {
        if last_of_day.is_none_or(|l| s.minute_of_day >= l.minute_of_day) {
            last_of_day = Some(s);
        }
        if s.minute_of_day <= minute
            && latest_before.is_none_or(|l| s.minute_of_day >= l.minute_of_day)
        {
            latest_before = Some(s);
        }
    }
    latest_before
        .or(last_of_day)
        .map_or(100, |s| s.level_pct.min(100))
}

/// Ramp time for a change: a bounded rate, fast up and slow down. A full swing takes
/// `ramp_up_ms` or `ramp_down_ms`, a smaller one proportionally less (rounded up, so the rate
/// never exceeds the bound); no change takes no time.
pub fn ramp_ms(cfg: &PolicyConfig, from_pct: u8, to_pct: u8) -> u32 {
    let (full_ms, delta) = if to_pct >= from_pct {
        (cfg.ramp_up_ms, to_pct - from_pct)
    } else {
        (cfg.ramp_down_ms, from_pct - to_pct)
    };
    (full_ms as u64 * delta.min(100) as u64).div_ceil(100) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // 2024-12-21 00:00 UTC.
    const MIDNIGHT: UnixMs = UnixMs(1_734_739_200_000);

    fn at(h: u64, m: u64) -> UnixMs {
        MIDNIGHT.plus_ms((h * 60 + m) * 60_000)
    }

    fn situation(now: UnixMs) -> LampSituation {
        LampSituation {
            now,
            dark: true,
            bubble_until: None,
            override_: None,
            class: None,
        }
    }

    fn class(design: LightingClass, class: LightingClass, reason: Reason) -> Option<ClassInForce> {
        Some(ClassInForce {
            design,
            class,
            reason,
        })
    }

    fn check(cfg: &PolicyConfig, cases: &[(LampSituation, u8, Reason)]) {
        for (i, (s, level, reason)) in cases.iter().enumerate() {
            assert_eq!(
                decide(cfg, s),
                Decision {
                    level_pct: *level,
                    reason: *reason
                },
                "case {i}: {s:?}"
            );
        }
    }

    proptest! {
        /// The level is the latest step's at or before the minute, else the day's last (of
        /// steps at the same minute, the last listed): as `Iterator::max_by_key` finds them.
        #[test]
        fn the_profile_level_is_the_latest_step_before_else_the_days_last(
            // Half-hour steps, so that some share a minute.
            raw in proptest::collection::vec((0u16..48, 0u8..=120), 0..8),
            minute in 0u16..1440,
        ) {
            let steps: Vec<ProfileStep> = raw
                .iter()
                .map(|&(half_hour, level_pct)| ProfileStep {
                    minute_of_day: half_hour * 30,
                    level_pct,
                })
                .collect();
            let latest_before = steps
                .iter()
                .filter(|s| s.minute_of_day <= minute)
                .max_by_key(|s| s.minute_of_day);
            let last_of_day = steps.iter().max_by_key(|s| s.minute_of_day);
            let expected = latest_before
                .or(last_of_day)
                .map_or(100, |s| s.level_pct.min(100));
            prop_assert_eq!(profile_level(&steps, minute), expected);
        }
    }

    #[test]
    fn the_next_profile_step_is_the_next_change_of_the_profile_level() {
        // Steps at 00:00, 05:30, 12:00 and 22:00 local.
        let mut cfg = PolicyConfig::default();
        let level = |cfg: &PolicyConfig, t: UnixMs| decide(cfg, &situation(t)).level_pct;
        // (now, next step)
        let cases = [
            (at(23, 0), at(24, 0)),
            (at(0, 0), at(5, 30)),
            (at(5, 29).plus_ms(59_999), at(5, 30)),
            (at(5, 30), at(12, 0)),
            (at(21, 59), at(22, 0)),
            (at(22, 0), at(24, 0)),
        ];
        for utc_offset_min in [0, 60, -300] {
            cfg.utc_offset_min = utc_offset_min;
            let local = |t: UnixMs| UnixMs((t.0 as i64 - utc_offset_min as i64 * 60_000) as u64);
            for (i, (now, next)) in cases.iter().enumerate() {
                let (now, next) = (local(*now), local(*next));
                assert_eq!(
                    next_profile_step(&cfg, now),
                    Some(next),
                    "case {i}, offset {utc_offset_min}"
                );
                // Every minute up to the step gives the level of now: none is missed.
                let mut t = UnixMs((now.0 / 60_000 + 1) * 60_000);
                while t < next {
                    assert_eq!(level(&cfg, t), level(&cfg, now), "case {i} at {t:?}");
                    t = t.plus_ms(60_000);
                }
            }
        }
        cfg.night_profile.clear();
        assert_eq!(next_profile_step(&cfg, at(1, 0)), None);
    }

    #[test]
    fn decisions_follow_the_rules_in_order() {
        let cfg = PolicyConfig::default();
        let o = Some(Override {
            level_pct: 5,
            until: at(3, 0),
        });
        let bubble = Some(at(2, 1));
        // (situation, expected level, expected reason)
        let cases = [
            (situation(at(23, 0)), 50, Reason::Schedule),
            (situation(at(2, 0)), 30, Reason::Schedule),
            (situation(at(6, 0)), 70, Reason::Schedule),
            (situation(at(21, 59)), 70, Reason::Schedule),
            (
                LampSituation {
                    dark: false,
                    ..situation(at(12, 0))
                },
                0,
                Reason::Daylight,
            ),
            (
                LampSituation {
                    bubble_until: bubble,
                    ..situation(at(2, 0))
                },
                100,
                Reason::Presence,
            ),
            (
                LampSituation {
                    bubble_until: bubble,
                    ..situation(at(2, 1))
                },
                30,
                Reason::Schedule,
            ),
            (
                LampSituation {
                    override_: o,
                    bubble_until: bubble,
                    ..situation(at(2, 0))
                },
                5,
                Reason::Override,
            ),
            (
                LampSituation {
                    override_: o,
                    dark: false,
                    ..situation(at(2, 0))
                },
                5,
                Reason::Override,
            ),
            (
                LampSituation {
                    override_: o,
                    ..situation(at(3, 0))
                },
                30,
                Reason::Schedule,
            ),
            // A class in force means nothing to a policy that is not adaptive.
            (
                LampSituation {
                    class: class(LightingClass::P(4), LightingClass::P(4), Reason::Forecast),
                    ..situation(at(2, 0))
                },
                30,
                Reason::Schedule,
            ),
        ];
        check(&cfg, &cases);
    }

    #[test]
    fn adaptive_lights_road_users_for_the_class_in_force() {
        use LightingClass::{M, P};
        let cfg = PolicyConfig::named("adaptive").unwrap();
        let near = Some(at(2, 1));
        // A road user near the lamp (a bubble) at 02:00, in a zone whose demand calls for
        // `c`.
        let with = |c: Option<ClassInForce>| LampSituation {
            class: c,
            bubble_until: near,
            ..situation(at(2, 0))
        };
        let empty = |c: Option<ClassInForce>| LampSituation {
            bubble_until: None,
            ..with(c)
        };
        let o = Some(Override {
            level_pct: 10,
            until: at(3, 0),
        });
        let cases = [
            // Road users get the level at which the lamp, designed for its class at 100 %,
            // meets the class their demand calls for now: no more.
            (
                with(class(P(4), P(4), Reason::Schedule)),
                100,
                Reason::Presence,
            ),
            (
                with(class(P(4), P(5), Reason::Schedule)),
                60,
                Reason::Presence,
            ),
            (
                with(class(P(4), P(6), Reason::Schedule)),
                40,
                Reason::Presence,
            ),
            (
                with(class(M(3), M(4), Reason::Schedule)),
                75,
                Reason::Presence,
            ),
            (
                with(class(M(3), M(5), Reason::Schedule)),
                50,
                Reason::Presence,
            ),
            // Nobody near: the lamp waits at the minimum, ready to rise, whatever the class;
            // the reason is the class's (schedule, or forecast when raised ahead of demand).
            (
                empty(class(P(4), P(6), Reason::Schedule)),
                20,
                Reason::Schedule,
            ),
            (
                empty(class(M(3), M(3), Reason::Forecast)),
                20,
                Reason::Forecast,
            ),
            // Raised ahead of demand, with road users near: the forecast's class.
            (
                with(class(M(3), M(3), Reason::Forecast)),
                100,
                Reason::Presence,
            ),
            // Demand unknown: the fail-safe floor, part-night (50 % at 02:00, 75 % at 23:00),
            // and a bubble at the bubble level (the class is not known).
            (empty(None), 50, Reason::FailSafe),
            (
                LampSituation {
                    now: at(23, 0),
                    ..empty(None)
                },
                75,
                Reason::FailSafe,
            ),
            (with(None), 100, Reason::Presence),
            // The override wins, even below the class in force.
            (
                LampSituation {
                    override_: o,
                    ..with(class(M(3), M(3), Reason::Schedule))
                },
                10,
                Reason::Override,
            ),
            // Daylight: off whatever the class.
            (
                LampSituation {
                    dark: false,
                    ..with(class(M(3), M(3), Reason::Forecast))
                },
                0,
                Reason::Daylight,
            ),
        ];
        check(&cfg, &cases);

        // The minimum level is a floor under the class, with or without road users.
        let cfg = PolicyConfig {
            min_level_pct: 55,
            ..cfg
        };
        check(
            &cfg,
            &[
                (
                    with(class(P(4), P(6), Reason::Schedule)),
                    55,
                    Reason::Presence,
                ),
                (
                    empty(class(P(4), P(6), Reason::Schedule)),
                    55,
                    Reason::Schedule,
                ),
            ],
        );
        // Without presence sensing (`reactive = false`) the lamps hold the class in force.
        let cfg = PolicyConfig {
            reactive: false,
            min_level_pct: 20,
            ..cfg
        };
        check(
            &cfg,
            &[
                (
                    empty(class(M(3), M(4), Reason::Schedule)),
                    75,
                    Reason::Schedule,
                ),
                (
                    with(class(P(4), P(6), Reason::Forecast)),
                    40,
                    Reason::Forecast,
                ),
            ],
        );
    }

    #[test]
    fn bubbles_hold_as_long_as_the_slowest_road_user_detected_needs() {
        let adaptive = PolicyConfig::named("adaptive").unwrap();
        let p = |pedestrians, cyclists, vehicles| Presence {
            pedestrians,
            cyclists,
            vehicles,
        };
        let [walk, cycle, drive] = ADAPTIVE_HOLD_BY_USER_S.map(|s| s as u64 * 1000);
        // (presence counts, hold)
        let cases = [
            (p(0, 0, 1), drive),
            (p(0, 0, 9), drive),
            (p(0, 2, 0), cycle),
            (p(1, 0, 0), walk),
            (p(0, 1, 3), cycle),
            (p(1, 1, 1), walk),
            // A report with nothing counted: the policy's bubble hold.
            (p(0, 0, 0), adaptive.bubble_hold_s as u64 * 1000),
        ];
        for (presence, want) in cases {
            assert_eq!(bubble_hold_ms(&adaptive, presence), want, "{presence:?}");
        }
        assert!(drive < cycle && cycle < walk);
        // Each hold covers the sensor range and the next lamp at the slowest speed.
        for (hold_ms, slowest_mps) in [(walk, 0.8 * 1.4), (cycle, 0.8 * 5.0), (drive, 0.8 * 12.0)] {
            let need_s = (20.0 + HOLD_COVERS_GAP_M) / slowest_mps;
            assert!(
                hold_ms as f64 / 1000.0 >= need_s,
                "{hold_ms} ms < {need_s} s"
            );
        }
        // Policies without holds by road user: the one hold for all.
        let reactive = PolicyConfig::named("reactive").unwrap();
        assert_eq!(bubble_hold_ms(&reactive, p(0, 0, 1)), 90_000);
        // Never longer than `bubble_hold_s`.
        let short = PolicyConfig {
            bubble_hold_s: 10,
            ..adaptive
        };
        assert_eq!(bubble_hold_ms(&short, p(1, 0, 0)), 10_000);
    }

    #[test]
    fn minimum_level_is_a_floor_while_dark() {
        let cfg = PolicyConfig {
            min_level_pct: 40,
            ..PolicyConfig::default()
        };
        assert_eq!(decide(&cfg, &situation(at(2, 0))).level_pct, 40);
    }

    #[test]
    fn named_policies_differ_as_their_names_say() {
        let night = situation(at(2, 0));
        let bubble = LampSituation {
            bubble_until: Some(at(2, 1)),
            ..night
        };
        let level = |name: &str, s: &LampSituation| {
            decide(&PolicyConfig::named(name).unwrap(), s).level_pct
        };
        assert_eq!(level("full", &night), 100);
        assert_eq!(level("full", &bubble), 100);
        assert_eq!(level("part-night", &night), 50);
        assert_eq!(
            level("part-night", &bubble),
            50,
            "part-night ignores presence"
        );
        // Part-night through the night: 100 to 22:00, 75 to 00:00, 50 to 05:30, 100 to dawn.
        for ((h, m), want) in [
            ((18, 0), 100),
            ((21, 59), 100),
            ((22, 0), 75),
            ((23, 59), 75),
            ((0, 0), 50),
            ((5, 29), 50),
            ((5, 30), 100),
            ((7, 0), 100),
        ] {
            assert_eq!(level("part-night", &situation(at(h, m))), want, "{h}:{m}");
        }
        assert_eq!(level("reactive", &night), 20);
        assert_eq!(level("reactive", &bubble), 100);
        assert_eq!(level("adaptive", &bubble), 100);
        assert!(PolicyConfig::named("nonsense").is_none());
        for name in POLICY_NAMES {
            let p = PolicyConfig::named(name).unwrap();
            assert_eq!(p.name, *name);
            assert!(p.validate().is_ok(), "{name}");
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut cfg = PolicyConfig::default();
        assert!(cfg.validate().is_ok());
        cfg.min_level_pct = 101;
        assert!(cfg.validate().is_err());
        cfg.min_level_pct = 20;
        cfg.night_profile.clear();
        assert_eq!(cfg.validate(), Err(PolicyError::Profile));
        let ok = PolicyConfig::named("adaptive").unwrap();
        let cases = [
            PolicyConfig {
                interval_s: 700,
                ..ok.clone()
            },
            PolicyConfig {
                interval_s: 30,
                ..ok.clone()
            },
            PolicyConfig {
                confirm_intervals: 0,
                ..ok.clone()
            },
            PolicyConfig {
                forecast_lead_s: 7200,
                ..ok.clone()
            },
            PolicyConfig {
                demand_stale_s: 60,
                ..ok.clone()
            },
            PolicyConfig {
                traffic_steps: vec![TrafficStep {
                    below_capacity_pct: 150.0,
                    classes_down: 1,
                }],
                ..ok.clone()
            },
            PolicyConfig {
                name: "mystery".into(),
                ..ok.clone()
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(c.validate().is_err(), "case {i}");
        }
    }

    #[test]
    fn policies_are_chosen_by_name_in_toml_with_overrides() {
        #[derive(Deserialize)]
        struct Section {
            policy: PolicyConfig,
        }
        let parse = |s: &str| toml::from_str::<Section>(s).map(|s| s.policy);
        let p = parse("[policy]\nname = \"adaptive\"\n").unwrap();
        assert_eq!(p, PolicyConfig::named("adaptive").unwrap());
        let p = parse("[policy]\nname = \"part-night\"\nmin_level_pct = 30\n").unwrap();
        assert_eq!(
            p,
            PolicyConfig {
                min_level_pct: 30,
                ..PolicyConfig::named("part-night").unwrap()
            }
        );
        let p = parse("[policy]\nbubble_hold_s = 30\n").unwrap();
        assert_eq!((p.name.as_str(), p.bubble_hold_s), ("profile-reactive", 30));
        let p = parse(
            "[policy]\nname = \"adaptive\"\ntraffic_steps = [{ below_capacity_pct = 40.0, classes_down = 1 }]\n",
        )
        .unwrap();
        assert_eq!(p.traffic_steps.len(), 1);

        let e = parse("[policy]\nname = \"dim-everything\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown policy \"dim-everything\""), "{e}");
        assert!(
            e.contains("adaptive"),
            "the error lists the known names: {e}"
        );
        let e = parse("[policy]\nname = \"adaptive\"\nconfirm_intervals = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("confirm_intervals"), "{e}");
        let e = parse("[policy]\nnmae = \"adaptive\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nmae"), "{e}");

        // What is written can be read back.
        for name in POLICY_NAMES {
            let p = PolicyConfig::named(name).unwrap();
            let text = toml::to_string(&Section2 { policy: p.clone() }).unwrap();
            assert_eq!(parse(&text).unwrap(), p, "{name}");
        }
        #[derive(Serialize)]
        struct Section2 {
            policy: PolicyConfig,
        }
    }

    #[test]
    fn ramps_are_bounded_rates() {
        let cfg = PolicyConfig::default();
        assert_eq!(ramp_ms(&cfg, 0, 100), 1_000);
        assert_eq!(ramp_ms(&cfg, 50, 100), 500);
        assert_eq!(ramp_ms(&cfg, 100, 0), 20_000);
        assert_eq!(ramp_ms(&cfg, 100, 75), 5_000);
        assert_eq!(ramp_ms(&cfg, 40, 40), 0);
    }

    fn any_class() -> impl Strategy<Value = (LightingClass, LightingClass)> {
        (0u8..3, 1i32..=6, 0i32..=5).prop_map(|(series, n, down)| {
            let design = match series {
                0 => LightingClass::M(n as u8),
                1 => LightingClass::P(n as u8),
                _ => LightingClass::C((n - 1) as u8),
            };
            (design, design.with_number(design.number() as i32 + down))
        })
    }

    fn any_situation() -> impl Strategy<Value = LampSituation> {
        (
            0u64..(7 * 86_400_000),
            any::<bool>(),
            proptest::option::of(0u64..600_000),
            proptest::option::of((0u8..=100, 0u64..7_200_000)),
            proptest::option::of((any_class(), any::<bool>())),
        )
            .prop_map(|(t, dark, bubble, o, class)| {
                let now = MIDNIGHT.plus_ms(t);
                LampSituation {
                    now,
                    dark,
                    bubble_until: bubble.map(|b| UnixMs((now.0 + b).saturating_sub(300_000))),
                    override_: o.map(|(level_pct, d)| Override {
                        level_pct,
                        until: UnixMs((now.0 + d).saturating_sub(3_600_000)),
                    }),
                    class: class.map(|((design, class), forecast)| ClassInForce {
                        design,
                        class,
                        reason: if forecast {
                            Reason::Forecast
                        } else {
                            Reason::Schedule
                        },
                    }),
                }
            })
    }

    fn any_policy() -> impl Strategy<Value = PolicyConfig> {
        (proptest::sample::select(POLICY_NAMES), 0u8..=100, 0u8..=100).prop_map(|(name, a, b)| {
            PolicyConfig {
                min_level_pct: a.min(b),
                bubble_level_pct: a.max(b),
                ..PolicyConfig::named(name).unwrap()
            }
        })
    }

    proptest! {
        #[test]
        fn never_below_the_floor_or_the_class_in_force_while_dark(
            cfg in any_policy(),
            s in any_situation(),
        ) {
            let d = decide(&cfg, &s);
            prop_assert!(d.level_pct <= 100);
            let overridden = s.override_.is_some_and(|o| s.now < o.until);
            if s.dark && !overridden {
                prop_assert!(d.level_pct >= cfg.min_level_pct, "{d:?}");
                // Road users near a lamp (a bubble) always get the class in force; so does
                // every lamp when presence is not sensed.
                let bubble = cfg.reactive && s.bubble_until.is_some_and(|t| s.now < t);
                if cfg.adaptive && (bubble || !cfg.reactive) {
                    if let Some(c) = s.class {
                        prop_assert!(d.level_pct >= c.level_pct(), "{d:?} {c:?}");
                    }
                }
            }
            if !s.dark && !overridden {
                prop_assert_eq!(d, Decision { level_pct: 0, reason: Reason::Daylight });
            }
        }

        #[test]
        fn the_override_wins_until_it_expires(
            cfg in any_policy(),
            s in any_situation(),
            level in 0u8..=100,
            left_ms in 1u64..3_600_000,
        ) {
            let o = Override { level_pct: level, until: s.now.plus_ms(left_ms) };
            let d = decide(&cfg, &LampSituation { override_: Some(o), ..s });
            prop_assert_eq!(d, Decision { level_pct: level, reason: Reason::Override });
            let expired = LampSituation { override_: Some(o), now: o.until, ..s };
            let d = decide(&cfg, &expired);
            prop_assert_ne!(d.reason, Reason::Override);
            prop_assert_eq!(d, decide(&cfg, &LampSituation { override_: None, ..expired }));
        }

        #[test]
        fn ramp_rates_are_bounded(
            up in 1u32..600_000,
            down in 1u32..600_000,
            from in 0u8..=100,
            to in 0u8..=100,
        ) {
            let cfg = PolicyConfig { ramp_up_ms: up, ramp_down_ms: down, ..PolicyConfig::default() };
            let ms = ramp_ms(&cfg, from, to) as u64;
            let delta = from.abs_diff(to) as u64;
            let full = if to >= from { up } else { down } as u64;
            // delta / ms <= 100 / full, i.e. the rate never exceeds a full swing's.
            prop_assert!(delta * full <= 100 * ms, "{from}->{to} in {ms} ms (full {full})");
            prop_assert!(ms <= full);
        }
    }
}
