//! The time-of-night profile: the level it gives at a local minute of the day, and when its
//! next step comes (so the core knows when to decide a lamp again).

use lamplighter_protocol::payload::ProfileStep;
use lamplighter_protocol::UnixMs;

use super::PolicyConfig;

pub(super) fn step(h: u16, m: u16, level_pct: u8) -> ProfileStep {
    ProfileStep {
        minute_of_day: h * 60 + m,
        level_pct,
    }
}

pub(super) fn part_night_profile() -> Vec<ProfileStep> {
    vec![
        step(0, 0, 50),
        step(5, 30, 100),
        step(12, 0, 100),
        step(22, 0, 75),
    ]
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

pub(super) fn profile_level(steps: &[ProfileStep], minute: u16) -> u8 {
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
