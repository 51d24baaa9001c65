//! A policy's configuration: [`PolicyConfig`], the named policies ([`POLICY_NAMES`]),
//! `[controller.policy]` as written (every key optional, `name` picks the base) and the
//! checks a policy must pass before a controller runs it.

use lamplighter_protocol::local_time::TimeZone;
use lamplighter_protocol::payload::ProfileStep;
use serde::{Deserialize, Serialize};

use super::presence::ADAPTIVE_HOLD_BY_USER_S;
use super::schedule::{part_night_profile, step};
use crate::core::classes::{self, TrafficStep};

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
    /// The IANA time zone the profile's times of day and the forecasters' days are in
    /// (default `Europe/London`): a step at 22:00 is at 22:00 on the zone's clocks, summer
    /// and winter.
    pub time_zone: TimeZone,
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
            time_zone: TimeZone::default(),
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
    time_zone: Option<TimeZone>,
    /// Replaced by `time_zone`; read only to say so.
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
        if t.utc_offset_min.is_some() {
            return Err(PolicyError::OffsetReplaced);
        }
        let name = t.name.unwrap_or_else(|| "profile-reactive".to_string());
        let b = PolicyConfig::named(&name).ok_or(PolicyError::UnknownName(name))?;
        let c = PolicyConfig {
            name: b.name,
            night_profile: t.night_profile.unwrap_or(b.night_profile),
            time_zone: t.time_zone.unwrap_or(b.time_zone),
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
    #[error(
        "utc_offset_min is replaced by time_zone, an IANA name such as \"Europe/London\" \
         (which follows summer time) or \"Etc/GMT-1\" (a fixed UTC+1)"
    )]
    OffsetReplaced,
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
