//! Time as the cores see it: milliseconds since the Unix epoch, passed in as `now`.
//!
//! The cores never read a clock. Services read one (the wall clock, or the demo's scaled
//! clock) and pass its value down; the simulator passes virtual time.

use std::fmt;
use std::ops::{Add, Sub};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixMs(pub u64);

impl UnixMs {
    pub fn from_secs(s: u64) -> Self {
        UnixMs(s * 1000)
    }
    pub fn as_secs(self) -> u64 {
        self.0 / 1000
    }
    pub fn plus_ms(self, ms: u64) -> Self {
        UnixMs(self.0.saturating_add(ms))
    }
    pub fn plus_s(self, s: f64) -> Self {
        UnixMs(self.0.saturating_add((s.max(0.0) * 1000.0) as u64))
    }
    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: UnixMs) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
    /// Seconds since local midnight for a fixed UTC offset. Cores use this for schedules so
    /// that they need no time-zone database; the offset is configuration.
    pub fn local_seconds_of_day(self, utc_offset_min: i32) -> u32 {
        let local_s = self.0 as i64 / 1000 + utc_offset_min as i64 * 60;
        local_s.rem_euclid(86_400) as u32
    }
}

impl Add<u64> for UnixMs {
    type Output = UnixMs;
    fn add(self, ms: u64) -> UnixMs {
        self.plus_ms(ms)
    }
}

impl Sub for UnixMs {
    type Output = u64;
    fn sub(self, rhs: UnixMs) -> u64 {
        self.since(rhs)
    }
}

impl fmt::Display for UnixMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// The clock services read and pass down as `now`: the wall clock, or the demo's clock that
/// runs `speed` times faster from a chosen start. This is the only place outside binaries that
/// reads real time; the cores only ever see its value.
#[derive(Debug, Clone, Copy)]
pub struct ScaledClock {
    origin_instant: std::time::Instant,
    origin: UnixMs,
    speed: f64,
}

impl ScaledClock {
    /// Real time.
    pub fn system() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self::starting_at(UnixMs(now), 1.0)
    }

    /// A clock that reads `start` now and runs `speed` times real time.
    pub fn starting_at(start: UnixMs, speed: f64) -> Self {
        ScaledClock {
            origin_instant: std::time::Instant::now(),
            origin: start,
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
        }
    }

    pub fn now(&self) -> UnixMs {
        let wall_ms = self.origin_instant.elapsed().as_secs_f64() * 1000.0;
        self.origin.plus_ms((wall_ms * self.speed) as u64)
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// How long to sleep in real time until the clock reads `t`.
    pub fn wall_until(&self, t: UnixMs) -> std::time::Duration {
        let ms = t.since(self.now()) as f64 / self.speed;
        std::time::Duration::from_secs_f64(ms / 1000.0)
    }

    /// A span of this clock's time as real time.
    pub fn to_wall(&self, clock_ms: u64) -> std::time::Duration {
        std::time::Duration::from_secs_f64(clock_ms as f64 / self.speed / 1000.0)
    }
}
