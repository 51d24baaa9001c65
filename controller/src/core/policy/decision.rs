//! The decision: a lamp's situation in, a level and its [`Reason`] out ([`decide`], the
//! rules of the policy module's documentation in order), and the ramp to that level
//! ([`ramp_ms`]).

use lamplighter_protocol::{LightingClass, UnixMs};
use serde::{Deserialize, Serialize};

use super::schedule::profile_level;
use super::PolicyConfig;
use crate::core::classes;

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
        let minute = (cfg.time_zone.seconds_of_day(s.now) / 60) as u16;
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
