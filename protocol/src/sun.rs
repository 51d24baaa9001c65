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
pub fn is_dark(lat_deg: f64, lon_deg: f64, now: UnixMs) -> bool {
    elevation_deg(lat_deg, lon_deg, now) < LIGHTS_ON_ELEVATION_DEG
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
