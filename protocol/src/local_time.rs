//! Local time: what the clock on a zone's wall reads at a UTC instant, and back.
//!
//! A night profile says "dim to 50 % at 22:00"; a council means 22:00 on its own clocks, in
//! winter and in summer. Every schedule, the forecasters' time of day, the simulator's days
//! and the energy figures' days go through [`TimeZone`], an IANA time zone (`Europe/London`,
//! `Europe/Dublin`, `Etc/GMT-1` for a fixed UTC+1, ...). The tz database is compiled in
//! (chrono-tz), so this stays sans-IO: nothing here reads a clock or a file, and the same
//! instant always gives the same local time.
//!
//! Two days a year do not have 24 local hours. On the spring change a stretch of wall-clock
//! time never happens; [`TimeZone::instants_at_local`] gives the instant the clocks jump past
//! it, so a step written inside the gap takes effect as the gap ends. On the autumn change a
//! stretch happens twice; both instants are given, so a schedule can act on each.
//!
//! ```
//! use lamplighter_protocol::local_time::TimeZone;
//! use lamplighter_protocol::UnixMs;
//!
//! let london = TimeZone::named("Europe/London").unwrap();
//! // 2025-07-01 21:00 UTC is 22:00 in London (BST, UTC+1) ...
//! let summer = UnixMs(1_751_403_600_000);
//! assert_eq!(london.offset_min_at(summer), 60);
//! assert_eq!(london.seconds_of_day(summer), 22 * 3600);
//! // ... and 22:00 on that local day is that instant again.
//! assert_eq!(london.instants_at_local(london.local_days(summer), 22 * 60).0, summer);
//! ```

use std::fmt;

use chrono::{LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone as _};
use serde::{Deserialize, Serialize};

use crate::time::UnixMs;

/// The time zone a deployment's zones are in unless they say otherwise.
pub const DEFAULT_TIME_ZONE: TimeZone = TimeZone(chrono_tz::Tz::Europe__London);

const DAY_S: i64 = 86_400;

/// An IANA time zone, written and read as its name (`"Europe/London"`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeZone(chrono_tz::Tz);

/// A name that is not in the tz database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown time zone {0:?}: give an IANA name such as \"Europe/London\", \"Europe/Dublin\" \
     or \"Etc/GMT-1\" (a fixed UTC+1)"
)]
pub struct UnknownTimeZone(pub String);

impl TimeZone {
    pub const UTC: TimeZone = TimeZone(chrono_tz::Tz::UTC);

    /// The zone of an IANA name, exactly as the tz database spells it.
    pub fn named(name: &str) -> Result<TimeZone, UnknownTimeZone> {
        name.parse::<chrono_tz::Tz>()
            .map(TimeZone)
            .map_err(|_| UnknownTimeZone(name.to_string()))
    }

    /// A fixed offset of whole hours east of UTC (`Etc/GMT-h`: the tz database's signs are
    /// the POSIX ones, the other way round); `None` beyond -12..=14.
    pub fn fixed_hours(hours_east: i32) -> Option<TimeZone> {
        let name = match hours_east {
            0 => "Etc/GMT".to_string(),
            h if h > 0 => format!("Etc/GMT-{h}"),
            h => format!("Etc/GMT+{}", -h),
        };
        TimeZone::named(&name).ok()
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// Minutes the local clock is ahead of UTC at `t`.
    pub fn offset_min_at(self, t: UnixMs) -> i32 {
        let utc = utc_naive(t.0 as i64 / 1000);
        self.0
            .offset_from_utc_datetime(&utc)
            .fix()
            .local_minus_utc()
            / 60
    }

    /// The local wall clock at `t` as seconds since 1970-01-01 00:00 local time: the days
    /// and time of day of this count are local ones.
    pub fn local_epoch_s(self, t: UnixMs) -> i64 {
        t.0 as i64 / 1000 + self.offset_min_at(t) as i64 * 60
    }

    /// Seconds since local midnight at `t`.
    pub fn seconds_of_day(self, t: UnixMs) -> u32 {
        self.local_epoch_s(t).rem_euclid(DAY_S) as u32
    }

    /// The local day holding `t`, counted from 1970-01-01.
    pub fn local_days(self, t: UnixMs) -> i64 {
        self.local_epoch_s(t).div_euclid(DAY_S)
    }

    /// The local date holding `t`.
    pub fn local_date(self, t: UnixMs) -> NaiveDate {
        date_of_days(self.local_days(t))
    }

    /// When the local clock reads `minute_of_day` on local day `day`: the instant, and a
    /// second one where the autumn change makes that wall time happen twice. A wall time the
    /// spring change skips gives the instant the clocks jump past it. Before 1970 is not a
    /// time this system works in: such instants are clamped to the epoch.
    pub fn instants_at_local(self, day: i64, minute_of_day: u32) -> (UnixMs, Option<UnixMs>) {
        let wall_s = day * DAY_S + minute_of_day as i64 * 60;
        let naive = utc_naive(wall_s);
        let ms = |t: chrono::DateTime<chrono_tz::Tz>| UnixMs(t.timestamp_millis().max(0) as u64);
        match self.0.from_local_datetime(&naive) {
            LocalResult::Single(t) => (ms(t), None),
            LocalResult::Ambiguous(a, b) => {
                let (a, b) = (ms(a), ms(b));
                (a.min(b), Some(a.max(b)))
            }
            LocalResult::None => (self.gap_end(wall_s), None),
        }
    }

    /// The first instant after `from`, up to `to`, at which the clocks change (the offset
    /// differs from the one at `from`); `None` when they keep one offset throughout. Found by
    /// bisection to the second, so it assumes at most one change between the two (true of
    /// any span shorter than a month in every zone in use).
    pub fn clock_change_between(self, from: UnixMs, to: UnixMs) -> Option<UnixMs> {
        let before = self.offset_min_at(from);
        if to <= from || self.offset_min_at(to) == before {
            return None;
        }
        let (mut lo, mut hi) = (from.0 / 1000, to.0.div_ceil(1000));
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.offset_min_at(UnixMs(mid * 1000)) == before {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(UnixMs(hi * 1000).max(from.plus_ms(1)).min(to))
    }

    /// The first instant whose local wall clock reads at least `wall_s` (which a spring
    /// change skips): found by bisection between the two offsets either side of it.
    fn gap_end(self, wall_s: i64) -> UnixMs {
        let offset_s =
            |utc_s: i64| self.local_epoch_s(UnixMs((utc_s.max(0) * 1000) as u64)) - utc_s;
        // Offsets are within a day of UTC: the answer lies in this window.
        let (mut lo, mut hi) = (wall_s - DAY_S, wall_s + DAY_S);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if mid + offset_s(mid) >= wall_s {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        UnixMs((hi.max(0) * 1000) as u64)
    }
}

/// The date of a day count from 1970-01-01.
pub fn date_of_days(days: i64) -> NaiveDate {
    NaiveDate::default()
        .checked_add_signed(chrono::TimeDelta::days(days))
        .unwrap_or(NaiveDate::MAX)
}

/// The day count from 1970-01-01 of a date.
pub fn days_of_date(date: NaiveDate) -> i64 {
    date.signed_duration_since(NaiveDate::default()).num_days()
}

fn utc_naive(s: i64) -> NaiveDateTime {
    chrono::DateTime::from_timestamp(s, 0)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        .naive_utc()
}

impl Default for TimeZone {
    fn default() -> Self {
        DEFAULT_TIME_ZONE
    }
}

impl fmt::Debug for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimeZone({})", self.name())
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TimeZone {
    type Err = UnknownTimeZone;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TimeZone::named(s)
    }
}

impl TryFrom<String> for TimeZone {
    type Error = UnknownTimeZone;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        TimeZone::named(&s)
    }
}

impl From<TimeZone> for String {
    fn from(z: TimeZone) -> String {
        z.name().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;
    /// 2025-03-30 01:00 UTC: London's clocks go from 01:00 GMT to 02:00 BST.
    const SPRING_2025: UnixMs = UnixMs(1_743_296_400_000);
    /// 2025-10-26 01:00 UTC: London's clocks go from 02:00 BST back to 01:00 GMT.
    const AUTUMN_2025: UnixMs = UnixMs(1_761_440_400_000);

    fn before(t: UnixMs, ms: u64) -> UnixMs {
        UnixMs(t.0 - ms)
    }

    fn london() -> TimeZone {
        TimeZone::named("Europe/London").unwrap()
    }

    fn wall(t: UnixMs) -> (i64, u32) {
        let z = london();
        (z.local_days(t), z.seconds_of_day(t) / 60)
    }

    #[test]
    fn london_offsets_either_side_of_both_2025_changes() {
        let z = london();
        for (t, offset_min) in [
            (before(SPRING_2025, 1), 0),
            (SPRING_2025, 60),
            (before(AUTUMN_2025, 1), 60),
            (AUTUMN_2025, 0),
        ] {
            assert_eq!(z.offset_min_at(t), offset_min, "at {t}");
        }
        assert_eq!(z.seconds_of_day(before(SPRING_2025, 1000)), 3600 - 1);
        assert_eq!(z.seconds_of_day(SPRING_2025), 2 * 3600);
        assert_eq!(z.seconds_of_day(before(AUTUMN_2025, 1000)), 2 * 3600 - 1);
        assert_eq!(z.seconds_of_day(AUTUMN_2025), 3600);
        assert_eq!(
            z.local_date(SPRING_2025),
            NaiveDate::from_ymd_opt(2025, 3, 30).unwrap()
        );
    }

    #[test]
    fn wall_times_map_back_to_instants_on_ordinary_gap_and_repeated_days() {
        let z = london();
        let spring_day = z.local_days(SPRING_2025);
        let autumn_day = z.local_days(AUTUMN_2025);
        // 05:30 local: 04:30 UTC in summer time, 05:30 UTC in winter time.
        assert_eq!(
            z.instants_at_local(spring_day, 5 * 60 + 30),
            (SPRING_2025 + 3 * H + H / 2, None)
        );
        assert_eq!(
            z.instants_at_local(autumn_day, 5 * 60 + 30),
            (AUTUMN_2025 + 4 * H + H / 2, None)
        );
        // 01:30 on the spring day never happens: it takes effect at the jump, 01:00 UTC.
        assert_eq!(z.instants_at_local(spring_day, 90), (SPRING_2025, None));
        // 01:30 on the autumn day happens at 00:30 UTC (BST) and 01:30 UTC (GMT).
        assert_eq!(
            z.instants_at_local(autumn_day, 90),
            (before(AUTUMN_2025, H / 2), Some(AUTUMN_2025 + H / 2))
        );
        for t in [
            SPRING_2025 + 7 * H,
            AUTUMN_2025 + 9 * H,
            UnixMs(1_734_818_400_000),
        ] {
            let (day, minute) = wall(t);
            assert_eq!(z.instants_at_local(day, minute).0, t);
        }
    }

    #[test]
    fn the_clock_change_between_two_instants_is_found_to_the_second() {
        let z = london();
        assert_eq!(
            z.clock_change_between(before(SPRING_2025, 5 * H), SPRING_2025 + 3 * H),
            Some(SPRING_2025)
        );
        assert_eq!(
            z.clock_change_between(before(AUTUMN_2025, 1), AUTUMN_2025 + 1),
            Some(AUTUMN_2025)
        );
        assert_eq!(
            z.clock_change_between(SPRING_2025, SPRING_2025 + 20 * H),
            None
        );
        assert_eq!(
            TimeZone::UTC.clock_change_between(before(SPRING_2025, H), SPRING_2025 + H),
            None
        );
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        let z: TimeZone = serde_json::from_str("\"Europe/Dublin\"").unwrap();
        assert_eq!(serde_json::to_string(&z).unwrap(), "\"Europe/Dublin\"");
        let err = serde_json::from_str::<TimeZone>("\"Europe/Atlantis\"").unwrap_err();
        assert!(err.to_string().contains("unknown time zone"), "{err}");
        assert_eq!(TimeZone::fixed_hours(1).unwrap().name(), "Etc/GMT-1");
        assert_eq!(
            TimeZone::fixed_hours(-5)
                .unwrap()
                .offset_min_at(SPRING_2025),
            -300
        );
        assert_eq!(
            TimeZone::fixed_hours(0).unwrap().offset_min_at(AUTUMN_2025),
            0
        );
        assert_eq!(TimeZone::fixed_hours(15), None);
    }

    #[test]
    fn days_and_dates_agree() {
        for days in [0, 1, 59, 365, 10_957, 20_177, 20_387] {
            assert_eq!(days_of_date(date_of_days(days)), days);
        }
        assert_eq!(
            date_of_days(20_177),
            NaiveDate::from_ymd_opt(2025, 3, 30).unwrap()
        );
    }
}
