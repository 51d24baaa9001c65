//! The lighting policy: a lamp's situation in, a level and the reason for it out.
//!
//! This first policy is what councils call a part-night profile made reactive: while it is
//! dark each lamp follows a time-of-night profile, and when a node detects a road user that
//! lamp and its neighbours rise to the bubble level at once, hold it, then fall back. An
//! operator override wins over both until it expires. Rises are fast and falls slow, so a
//! road user never walks into a lamp that is still dimming down.

use lamplighter_protocol::payload::ProfileStep;
use lamplighter_protocol::UnixMs;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Levels while dark, by local time of day (wrapping at midnight).
    pub night_profile: Vec<ProfileStep>,
    /// Local time offset from UTC for the profile, minutes.
    pub utc_offset_min: i32,
    /// No lamp is commanded below this while it is dark.
    pub min_level_pct: u8,
    /// Level of the presence bubble.
    pub bubble_level_pct: u8,
    /// How long the bubble holds after the last detection.
    pub bubble_hold_s: u32,
    /// Neighbours within this distance join the bubble.
    pub bubble_radius_m: f64,
    /// At most this many neighbours, nearest first.
    pub bubble_neighbours: usize,
    pub ramp_up_ms: u32,
    pub ramp_down_ms: u32,
    /// Whether presence detections raise a bubble (off for the static baselines).
    pub reactive: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        let step = |h: u16, m: u16, level_pct| ProfileStep {
            minute_of_day: h * 60 + m,
            level_pct,
        };
        PolicyConfig {
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
            bubble_radius_m: 60.0,
            bubble_neighbours: 4,
            ramp_up_ms: 1_000,
            ramp_down_ms: 20_000,
            reactive: true,
        }
    }
}

/// The policies a deployment or a simulation run can choose by name.
pub const POLICY_NAMES: &[&str] = &["profile-reactive", "full", "part-night", "reactive"];

impl PolicyConfig {
    /// A named policy: `profile-reactive` (the default: a dimmed night profile with presence
    /// bubbles), `full` (100 % dusk to dawn), `part-night` (UK practice: 100 % to 22:00, 75 %
    /// to midnight, 50 % to 05:30, 100 % to dawn), `reactive` (the minimum level until
    /// presence).
    pub fn named(name: &str) -> Option<PolicyConfig> {
        let step = |h: u16, m: u16, level_pct| ProfileStep {
            minute_of_day: h * 60 + m,
            level_pct,
        };
        let base = PolicyConfig::default();
        Some(match name {
            "profile-reactive" => base,
            "full" => PolicyConfig {
                night_profile: vec![step(0, 0, 100)],
                reactive: false,
                ..base
            },
            "part-night" => PolicyConfig {
                night_profile: vec![
                    step(0, 0, 50),
                    step(5, 30, 100),
                    step(12, 0, 100),
                    step(22, 0, 75),
                ],
                reactive: false,
                ..base
            },
            "reactive" => PolicyConfig {
                night_profile: vec![step(0, 0, base.min_level_pct)],
                ..base
            },
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("night_profile needs 1 to 8 steps with minute_of_day < 1440 and level_pct <= 100")]
    Profile,
    #[error("{field} must be at most 100, got {value}")]
    Level { field: &'static str, value: u8 },
    #[error("min_level_pct ({min}) must not exceed bubble_level_pct ({bubble})")]
    MinAboveBubble { min: u8, bubble: u8 },
    #[error("utc_offset_min must be within +/-14 h, got {0}")]
    Offset(i32),
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), PolicyError> {
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
        Ok(())
    }
}

/// Why a lamp is at its level. Every command records one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The time-of-night profile.
    Schedule,
    /// A road user detected at this lamp or a neighbour.
    Presence,
    /// An operator's override.
    Override,
    /// Daylight: lamps off.
    Daylight,
    /// Demand forecast ahead of arrival.
    Forecast,
    /// The node's own fail-safe profile (reported by nodes, never commanded).
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

/// What the policy knows about one lamp at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LampSituation {
    pub now: UnixMs,
    pub dark: bool,
    /// The presence bubble covering this lamp ends then.
    pub bubble_until: Option<UnixMs>,
    pub override_: Option<Override>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub level_pct: u8,
    pub reason: Reason,
}

pub fn decide(cfg: &PolicyConfig, s: &LampSituation) -> Decision {
    if let Some(o) = s.override_.filter(|o| s.now < o.until) {
        return Decision {
            level_pct: o.level_pct,
            reason: Reason::Override,
        };
    }
    if !s.dark {
        return Decision {
            level_pct: 0,
            reason: Reason::Daylight,
        };
    }
    if cfg.reactive && s.bubble_until.is_some_and(|t| s.now < t) {
        return Decision {
            level_pct: cfg.bubble_level_pct.max(cfg.min_level_pct),
            reason: Reason::Presence,
        };
    }
    let minute = (s.now.local_seconds_of_day(cfg.utc_offset_min) / 60) as u16;
    let level = profile_level(&cfg.night_profile, minute);
    Decision {
        level_pct: level.max(cfg.min_level_pct),
        reason: Reason::Schedule,
    }
}

fn profile_level(steps: &[ProfileStep], minute: u16) -> u8 {
    let latest_before = steps
        .iter()
        .filter(|s| s.minute_of_day <= minute)
        .max_by_key(|s| s.minute_of_day);
    let last_of_day = steps.iter().max_by_key(|s| s.minute_of_day);
    latest_before.or(last_of_day).map_or(100, |s| s.level_pct)
}

/// Ramp time for a change: up fast, down slow.
pub fn ramp_ms(cfg: &PolicyConfig, from_pct: u8, to_pct: u8) -> u32 {
    if to_pct >= from_pct {
        cfg.ramp_up_ms
    } else {
        cfg.ramp_down_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
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
        ];
        for (i, (s, level, reason)) in cases.iter().enumerate() {
            assert_eq!(
                decide(&cfg, s),
                Decision {
                    level_pct: *level,
                    reason: *reason
                },
                "case {i}"
            );
        }
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
        assert_eq!(level("part-night", &night), 50);
        assert_eq!(
            level("part-night", &bubble),
            50,
            "part-night ignores presence"
        );
        assert_eq!(level("reactive", &night), 20);
        assert_eq!(level("reactive", &bubble), 100);
        assert!(PolicyConfig::named("nonsense").is_none());
        for name in POLICY_NAMES {
            assert!(
                PolicyConfig::named(name).unwrap().validate().is_ok(),
                "{name}"
            );
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
    }
}
