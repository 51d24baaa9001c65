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
/// next step on the zone's clocks, wrapping at local midnight; `None` for a profile with no
/// steps. Across a DST change the next step is on the new clocks; a step the spring change
/// skips comes as the clocks jump, one the autumn change repeats comes twice, and the change
/// itself is an instant to decide again.
pub fn next_profile_step(cfg: &PolicyConfig, now: UnixMs) -> Option<UnixMs> {
    let tz = cfg.time_zone;
    let today = tz.local_days(now);
    // Today's steps, else tomorrow's: every instant of tomorrow is after every one of today.
    let next_step = (0..=1)
        .flat_map(|d| {
            cfg.night_profile.iter().flat_map(move |s| {
                let (first, second) = tz.instants_at_local(today + d, s.minute_of_day as u32);
                [Some(first), second]
            })
        })
        .flatten()
        .filter(|&t| t > now)
        .min()?;
    // A change of the clocks before it moves the wall time itself (back into an earlier
    // step in autumn): decide again then too.
    Some(tz.clock_change_between(now, next_step).unwrap_or(next_step))
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
