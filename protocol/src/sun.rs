//! Where the sun is, from a position and a time: the NOAA low-precision solar position
//! (declination and equation of time from the fractional year). Accurate to a fraction of a
//! degree, which is a minute or two at dusk: plenty for switching street lights, and it lets a
//! node work out dusk and dawn with no network and no table.

use crate::UnixMs;

/// The sun's elevation above the horizon in degrees (negative below it).
pub fn elevation_deg(lat_deg: f64, lon_deg: f64, now: UnixMs) -> f64 {
    use std::f64::consts::PI;
    let days = now.0 as f64 / 86_400_000.0;
    let utc_hours = (now.0 % 86_400_000) as f64 / 3_600_000.0;
    // Fractional year in radians, NOAA's (day_of_year - 1 + (hour - 12) / 24). Days since
    // 1970-01-01 modulo the tropical year keep the January origin without a calendar.
    let gamma = 2.0 * PI / 365.2422 * (days.rem_euclid(365.2422) - 0.5);
    let eqtime_min = 229.18
        * (0.000075 + 0.001868 * gamma.cos()
            - 0.032077 * gamma.sin()
            - 0.014615 * (2.0 * gamma).cos()
            - 0.040849 * (2.0 * gamma).sin());
    let decl = 0.006918 - 0.399912 * gamma.cos() + 0.070257 * gamma.sin()
        - 0.006758 * (2.0 * gamma).cos()
        + 0.000907 * (2.0 * gamma).sin()
        - 0.002697 * (3.0 * gamma).cos()
        + 0.00148 * (3.0 * gamma).sin();
    let true_solar_min = utc_hours * 60.0 + eqtime_min + 4.0 * lon_deg;
    let hour_angle = (true_solar_min / 4.0 - 180.0).to_radians();
    let lat = lat_deg.to_radians();
    let cos_zenith = lat.sin() * decl.sin() + lat.cos() * decl.cos() * hour_angle.cos();
    90.0 - cos_zenith.clamp(-1.0, 1.0).acos().to_degrees()
}

/// Street lights switch on around sunset, before civil twilight ends; this is the elevation
/// photocells in the UK typically trip at (about 35 lx).
pub const LIGHTS_ON_ELEVATION_DEG: f64 = -0.833;

/// Whether it is dark enough at this position for street lights to be on.
///
/// Same answer as comparing [`elevation_deg`] with [`LIGHTS_ON_ELEVATION_DEG`], but a
/// controller asks this for every lamp on every tick and a simulator for a whole town in
/// virtual time, so the answer is remembered per position for the whole light or dark spell
/// holding `now` (see [`DarkMemo`]); repeated calls cost a hash look-up instead of a dozen
/// trigonometric functions.
pub fn is_dark(lat_deg: f64, lon_deg: f64, now: UnixMs) -> bool {
    DARK_MEMO.with(|m| m.borrow_mut().is_dark(lat_deg, lon_deg, now))
}

/// The elevation test itself, with no memo.
pub fn is_dark_uncached(lat_deg: f64, lon_deg: f64, now: UnixMs) -> bool {
    elevation_deg(lat_deg, lon_deg, now) < LIGHTS_ON_ELEVATION_DEG
}

/// One position's light or dark spell, kept by whoever asks about the same position again
/// and again: a node about its own column, a controller about each of its lamps. Same
/// answers as [`is_dark`], without its shared memo's hash look-up (which was a tenth of a
/// planning run) while the spell lasts. Asked about another position, it starts over for
/// that one. A spell it does not hold comes from the shared memo, so that a lamp's node and
/// its controller, and a planning run's policies, search each spell once per thread rather
/// than each on its own (the search was a fifteenth of a planning run).
#[derive(Debug, Clone, Default)]
pub struct DarkSpell(std::cell::Cell<Option<(u64, u64, Spell)>>);

impl DarkSpell {
    pub fn is_dark(&self, lat_deg: f64, lon_deg: f64, now: UnixMs) -> bool {
        let key = (lat_deg.to_bits(), lon_deg.to_bits());
        if let Some((lat, lon, s)) = self.0.get() {
            if (lat, lon) == key && (s.from_ms..s.until_ms).contains(&now.0) {
                return s.dark;
            }
        }
        let spell = DARK_MEMO.with(|m| m.borrow_mut().spell(lat_deg, lon_deg, now));
        self.0.set(Some((key.0, key.1, spell)));
        spell.dark
    }

    /// The first instant after `now` at which [`DarkSpell::is_dark`] may answer otherwise:
    /// the end of the spell holding `now` (dusk, dawn, or where a polar spell's search was
    /// cut).
    pub fn spell_end(&self, lat_deg: f64, lon_deg: f64, now: UnixMs) -> UnixMs {
        self.is_dark(lat_deg, lon_deg, now);
        match self.0.get() {
            Some((_, _, s)) => UnixMs(s.until_ms.max(now.0 + 1)),
            None => UnixMs(now.0 + 1),
        }
    }
}

/// The sun's elevation never changes faster than the Earth turns, 15 degrees an hour
/// (0.25 degrees a minute); a margin on top for the slow drift of declination and the
/// equation of time.
const MAX_ELEVATION_RATE_DEG_PER_MS: f64 = 0.3 / 60_000.0;
/// Spells are searched this far either side of `now` (the polar day and night are longer:
/// their spell is simply cut there and searched again when `now` leaves it).
const SPELL_SEARCH_MS: u64 = 36 * 3_600_000;
/// A memo bigger than this (positions) is cleared rather than grown.
const MEMO_MAX_POSITIONS: usize = 1 << 20;

/// One position's current light or dark spell: `is_dark` is `dark` for every instant in
/// `[from_ms, until_ms)`.
#[derive(Debug, Clone, Copy)]
struct Spell {
    from_ms: u64,
    until_ms: u64,
    dark: bool,
}

/// Per-thread memo of each position's current spell. A pure cache: it holds nothing that
/// [`is_dark_uncached`] would not give, so callers stay functions of their inputs.
#[derive(Default)]
struct DarkMemo {
    spells: std::collections::HashMap<(u64, u64), Spell, PosHash>,
}

thread_local! {
    static DARK_MEMO: std::cell::RefCell<DarkMemo> = std::cell::RefCell::new(DarkMemo::default());
}

impl DarkMemo {
    fn is_dark(&mut self, lat_deg: f64, lon_deg: f64, now: UnixMs) -> bool {
        self.spell(lat_deg, lon_deg, now).dark
    }

    /// The spell holding `now` at this position.
    fn spell(&mut self, lat_deg: f64, lon_deg: f64, now: UnixMs) -> Spell {
        let key = (lat_deg.to_bits(), lon_deg.to_bits());
        if let Some(s) = self.spells.get(&key) {
            if (s.from_ms..s.until_ms).contains(&now.0) {
                return *s;
            }
        }
        let spell = spell_at(lat_deg, lon_deg, now.0);
        if self.spells.len() >= MEMO_MAX_POSITIONS {
            self.spells.clear();
        }
        self.spells.insert(key, spell);
        spell
    }
}

/// How far the sun sits from the lights-on elevation at `t` (negative: dark).
fn margin_deg(lat_deg: f64, lon_deg: f64, t: u64) -> f64 {
    elevation_deg(lat_deg, lon_deg, UnixMs(t)) - LIGHTS_ON_ELEVATION_DEG
}

/// The spell holding `t0`: step outwards as far as the elevation's rate bound proves the
/// answer cannot change, then bisect the last step to the millisecond.
fn spell_at(lat_deg: f64, lon_deg: f64, t0: u64) -> Spell {
    let margin = |t: u64| margin_deg(lat_deg, lon_deg, t);
    let margin_t0 = margin(t0);
    let dark = margin_t0 < 0.0;
    let same = |t: u64| (margin(t) < 0.0) == dark;
    // Each step's margin is the next step's start: worked out once (it is a dozen
    // trigonometric functions, and spells are searched for every lamp).
    let step_ms = |m: f64| ((m.abs() / MAX_ELEVATION_RATE_DEG_PER_MS) as u64).max(1_000);
    // Forwards: the first instant after t0 that differs.
    let limit = t0.saturating_add(SPELL_SEARCH_MS);
    let (mut lo, mut margin_lo) = (t0, margin_t0);
    let until_ms = loop {
        let hi = lo.saturating_add(step_ms(margin_lo));
        if hi >= limit {
            break limit;
        }
        let margin_hi = margin(hi);
        if (margin_hi < 0.0) != dark {
            break first_change(lo, hi, &same);
        }
        (lo, margin_lo) = (hi, margin_hi);
    };
    // Backwards: the first instant of the spell.
    let limit = t0.saturating_sub(SPELL_SEARCH_MS);
    let (mut hi, mut margin_hi) = (t0, margin_t0);
    let from_ms = loop {
        let lo = hi.saturating_sub(step_ms(margin_hi));
        if lo <= limit {
            break limit;
        }
        let margin_lo = margin(lo);
        if (margin_lo < 0.0) != dark {
            // The last instant that differs, plus one.
            break last_change(lo, hi, &same) + 1;
        }
        (hi, margin_hi) = (lo, margin_lo);
    };
    Spell {
        from_ms,
        until_ms,
        dark,
    }
}

/// With `same(lo)` and not `same(hi)`: the first instant in (lo, hi] that is not the same.
fn first_change(mut lo: u64, mut hi: u64, same: &impl Fn(u64) -> bool) -> u64 {
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if same(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// With not `same(lo)` and `same(hi)`: the last instant in [lo, hi) that is not the same.
fn last_change(mut lo: u64, mut hi: u64, same: &impl Fn(u64) -> bool) -> u64 {
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if same(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    lo
}

/// A cheap hash for a pair of f64 bit patterns (SplitMix64's finaliser); the memo's keys are
/// our own positions, not attacker-chosen, so SipHash's protection buys nothing here.
#[derive(Default, Clone, Copy)]
struct PosHash;

impl std::hash::BuildHasher for PosHash {
    type Hasher = PosHasher;
    fn build_hasher(&self) -> PosHasher {
        PosHasher(0)
    }
}

struct PosHasher(u64);

impl std::hash::Hasher for PosHasher {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(29) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The next time, after `now` and within 48 h, at which `is_dark` changes; found by stepping
/// a minute at a time, which is cheap enough for the rare calls that need it.
pub fn next_transition(lat_deg: f64, lon_deg: f64, now: UnixMs) -> Option<UnixMs> {
    let dark_now = is_dark(lat_deg, lon_deg, now);
    (1..=48 * 60)
        .map(|m| now.plus_ms(m * 60_000))
        .find(|&t| is_dark(lat_deg, lon_deg, t) != dark_now)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2024-06-21 12:00 UTC and 2024-12-21 12:00 UTC.
    const JUNE_NOON: UnixMs = UnixMs(1_718_971_200_000);
    const DEC_NOON: UnixMs = UnixMs(1_734_782_400_000);

    #[test]
    fn greenwich_noon_elevation_matches_the_seasons() {
        // At 51.48 N the noon sun stands at 90 - 51.48 +/- 23.44 degrees.
        let june = elevation_deg(51.48, 0.0, JUNE_NOON);
        let dec = elevation_deg(51.48, 0.0, DEC_NOON);
        assert!((june - 61.96).abs() < 0.5, "june {june}");
        assert!((dec - 15.08).abs() < 0.5, "dec {dec}");
    }

    #[test]
    fn london_is_dark_at_midnight_and_light_at_noon() {
        assert!(is_dark(51.5, -0.12, UnixMs(DEC_NOON.0 + 12 * 3_600_000)));
        assert!(!is_dark(51.5, -0.12, DEC_NOON));
    }

    #[test]
    fn the_memo_agrees_with_the_elevation_test() {
        // Every minute for two days at a few places, and every second around sunset:
        // the memo's answer is the uncached one.
        // A DarkSpell asked about two places in turn must not mix them up.
        let spell = DarkSpell::default();
        for (lat, lon) in [(51.5, -0.12), (42.37, -71.11), (-33.9, 151.2), (69.6, 18.9)] {
            for m in 0..(2 * 24 * 60) {
                let t = UnixMs(DEC_NOON.0 + m * 60_000);
                let truth = is_dark_uncached(lat, lon, t);
                assert_eq!(is_dark(lat, lon, t), truth, "{lat} {m}");
                assert_eq!(spell.is_dark(lat, lon, t), truth, "{lat} {m}");
                let south = lat - 10.0;
                assert_eq!(
                    spell.is_dark(south, lon, t),
                    is_dark_uncached(south, lon, t)
                );
            }
            let sunset = next_transition(lat, lon, DEC_NOON).unwrap_or(DEC_NOON);
            for s in 0..240 {
                // Backwards in time too: the memo's spell is searched both ways.
                let t = UnixMs(sunset.0 + 120_000 - s * 1_000);
                assert_eq!(
                    is_dark(lat, lon, t),
                    is_dark_uncached(lat, lon, t),
                    "{lat} {s}"
                );
                assert_eq!(spell.is_dark(lat, lon, t), is_dark_uncached(lat, lon, t));
            }
        }
    }

    #[test]
    fn london_winter_sunset_is_near_1553_utc() {
        let start = UnixMs(DEC_NOON.0);
        let sunset = next_transition(51.5, -0.12, start).unwrap();
        let minutes_after_noon = (sunset.0 - start.0) / 60_000;
        // Published sunset for London on 21 December 2024: 15:53 GMT.
        assert!(
            (228..=238).contains(&minutes_after_noon),
            "{minutes_after_noon}"
        );
    }
}
