//! The week's shape of demand: a normalised 24 x 7 profile per kind of road user.
//!
//! Cyclists follow the Fremont Bridge hourly counts, vehicles the NYC taxi series (30-minute
//! steps summed to hours), pedestrians a built-in evening-heavy shape blended with the
//! vehicles' week (no pedestrian series is in the development data). Each profile is the mean
//! count for (weekday, local hour) divided by the week's largest mean, so the busiest hour of
//! the week is 1.0. A missing or unreadable file falls back to a built-in shape, and the
//! fallback is named in the report's warnings.

use std::path::{Path, PathBuf};

use lamplighter_edge::RoadUser;

/// Built-in daily shapes (local hour 0-23, peak 1.0), used when a series is missing and for
/// pedestrians.
const PEDESTRIAN_DAY: [f64; 24] = [
    0.10, 0.06, 0.03, 0.02, 0.02, 0.04, 0.12, 0.35, 0.60, 0.50, 0.50, 0.60, 0.75, 0.70, 0.65, 0.70,
    0.85, 1.00, 0.90, 0.75, 0.55, 0.40, 0.30, 0.20,
];
const CYCLIST_DAY: [f64; 24] = [
    0.02, 0.01, 0.01, 0.01, 0.02, 0.08, 0.35, 0.90, 1.00, 0.45, 0.30, 0.30, 0.32, 0.32, 0.35, 0.50,
    0.80, 0.95, 0.60, 0.35, 0.20, 0.12, 0.07, 0.04,
];
const VEHICLE_DAY: [f64; 24] = [
    0.12, 0.08, 0.05, 0.04, 0.06, 0.15, 0.45, 0.85, 0.95, 0.75, 0.70, 0.75, 0.80, 0.80, 0.85, 0.95,
    1.00, 0.95, 0.80, 0.60, 0.45, 0.35, 0.25, 0.18,
];

/// The demand series files, relative to the data folder.
pub const FREMONT_FILE: &str = "demand/fremont_bridge_hourly.csv";
pub const TAXI_FILE: &str = "demand/nyc_taxi.csv";

/// `[weekday][hour]`, weekday 0 = Monday; peak 1.0.
pub type Week = [[f64; 24]; 7];

#[derive(Debug, Clone, PartialEq)]
pub struct DemandProfile {
    pub pedestrian: Week,
    pub cyclist: Week,
    pub vehicle: Week,
    /// Where each shape came from ("fremont_bridge_hourly.csv", "built-in", ...).
    pub sources: [String; 3],
}

fn builtin_week(day: &[f64; 24], weekend_factor: f64) -> Week {
    let mut w = [[0.0; 24]; 7];
    for (d, row) in w.iter_mut().enumerate() {
        let f = if d >= 5 { weekend_factor } else { 1.0 };
        for (h, v) in row.iter_mut().enumerate() {
            *v = day[h] * f;
        }
    }
    normalise(w)
}

fn normalise(mut w: Week) -> Week {
    let max = w.iter().flatten().copied().fold(0.0, f64::max);
    if max > 0.0 {
        for v in w.iter_mut().flatten() {
            *v /= max;
        }
    }
    w
}

/// Days since 1970-01-01 for a calendar date, or `None` when there is no such date.
pub fn day_number(y: i32, m: u32, d: u32) -> Option<i64> {
    chrono::NaiveDate::from_ymd_opt(y, m, d).map(lamplighter_protocol::local_time::days_of_date)
}

/// Weekday (0 = Monday) of a day number from [`day_number`].
pub fn weekday(days: i64) -> usize {
    // 1970-01-01 was a Thursday (3).
    (days + 3).rem_euclid(7) as usize
}

struct Acc {
    sum: Week,
    n: [[u32; 24]; 7],
}

impl Acc {
    fn new() -> Self {
        Acc {
            sum: [[0.0; 24]; 7],
            n: [[0; 24]; 7],
        }
    }
    fn add(&mut self, days: i64, hour: usize, v: f64) {
        let d = weekday(days);
        self.sum[d][hour % 24] += v;
        self.n[d][hour % 24] += 1;
    }
    fn finish(self) -> Option<Week> {
        let mut w = [[0.0; 24]; 7];
        for ((row, sums), counts) in w.iter_mut().zip(&self.sum).zip(&self.n) {
            for ((v, s), &n) in row.iter_mut().zip(sums).zip(counts) {
                if n == 0 {
                    return None;
                }
                *v = s / n as f64;
            }
        }
        Some(normalise(w))
    }
}

/// Fremont: `MM/DD/YYYY hh:mm:ss AM,total,west,east`; blanks skipped.
fn parse_fremont(text: &str) -> Option<Week> {
    let mut acc = Acc::new();
    for line in text.lines().skip(1) {
        let mut cols = line.split(',');
        let (Some(ts), Some(total)) = (cols.next(), cols.next()) else {
            continue;
        };
        let Ok(v) = total.trim().parse::<f64>() else {
            continue;
        };
        let mut parts = ts.split_whitespace();
        let (Some(date), Some(time), ampm) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let dmy: Vec<&str> = date.split('/').collect();
        if dmy.len() != 3 {
            continue;
        }
        let (Ok(m), Ok(d), Ok(y)) = (
            dmy[0].parse::<u32>(),
            dmy[1].parse::<u32>(),
            dmy[2].parse::<i32>(),
        ) else {
            continue;
        };
        let Some(Ok(mut h)) = time.split(':').next().map(str::parse::<usize>) else {
            continue;
        };
        match ampm {
            Some("PM") if h < 12 => h += 12,
            Some("AM") if h == 12 => h = 0,
            _ => {}
        }
        let Some(day) = day_number(y, m, d) else {
            continue;
        };
        acc.add(day, h, v);
    }
    acc.finish()
}

/// NYC taxi: `YYYY-MM-DD hh:mm:ss,value`.
fn parse_taxi(text: &str) -> Option<Week> {
    let mut acc = Acc::new();
    for line in text.lines().skip(1) {
        let mut cols = line.split(',');
        let (Some(ts), Some(val)) = (cols.next(), cols.next()) else {
            continue;
        };
        let Ok(v) = val.trim().parse::<f64>() else {
            continue;
        };
        let (Some(y), Some(m), Some(d), Some(h)) = (
            ts.get(0..4).and_then(|s| s.parse::<i32>().ok()),
            ts.get(5..7).and_then(|s| s.parse::<u32>().ok()),
            ts.get(8..10).and_then(|s| s.parse::<u32>().ok()),
            ts.get(11..13).and_then(|s| s.parse::<usize>().ok()),
        ) else {
            continue;
        };
        let Some(day) = day_number(y, m, d) else {
            continue;
        };
        acc.add(day, h, v);
    }
    acc.finish()
}

/// Where to look for `../shared/data`: the given folder, then `../shared/data` from the
/// working directory, then the same relative to this crate's workspace.
pub fn data_dir_candidates(given: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = given {
        out.push(p.to_path_buf());
    }
    out.push(PathBuf::from("../shared/data"));
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    out
}

fn read_first(candidates: &[PathBuf], file: &str) -> Option<String> {
    candidates
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
}

impl DemandProfile {
    /// The built-in shapes only.
    pub fn builtin() -> Self {
        DemandProfile {
            pedestrian: builtin_week(&PEDESTRIAN_DAY, 1.1),
            cyclist: builtin_week(&CYCLIST_DAY, 0.7),
            vehicle: builtin_week(&VEHICLE_DAY, 0.8),
            sources: ["built-in".into(), "built-in".into(), "built-in".into()],
        }
    }

    /// Reads the series from the data folder; each missing one falls back to its built-in
    /// shape with a warning pushed to `warnings`.
    pub fn load(data_dir: Option<&Path>, warnings: &mut Vec<String>) -> Self {
        let candidates = data_dir_candidates(data_dir);
        let mut p = DemandProfile::builtin();
        match read_first(&candidates, FREMONT_FILE).and_then(|t| parse_fremont(&t)) {
            Some(w) => {
                p.cyclist = w;
                p.sources[1] = FREMONT_FILE.into();
            }
            None => warnings.push(format!(
                "{FREMONT_FILE} not found or unreadable under ../shared/data: cyclists use the \
                 built-in daily shape"
            )),
        }
        match read_first(&candidates, TAXI_FILE).and_then(|t| parse_taxi(&t)) {
            Some(w) => {
                p.vehicle = w;
                p.sources[2] = TAXI_FILE.into();
                // Pedestrians: the built-in day shape, scaled per weekday like the vehicles'
                // daily totals (weekends and Fridays out).
                let totals: Vec<f64> = w.iter().map(|d| d.iter().sum::<f64>()).collect();
                let mean = totals.iter().sum::<f64>() / 7.0;
                let mut ped = [[0.0; 24]; 7];
                for (d, row) in ped.iter_mut().enumerate() {
                    for (h, v) in row.iter_mut().enumerate() {
                        *v = PEDESTRIAN_DAY[h] * totals[d] / mean.max(1e-9);
                    }
                }
                p.pedestrian = normalise(ped);
                p.sources[0] = format!("built-in day shape, week from {TAXI_FILE}");
            }
            None => warnings.push(format!(
                "{TAXI_FILE} not found or unreadable under ../shared/data: vehicles and \
                 pedestrians use the built-in daily shapes"
            )),
        }
        p
    }

    fn week(&self, who: RoadUser) -> &Week {
        match who {
            RoadUser::Pedestrian => &self.pedestrian,
            RoadUser::Cyclist => &self.cyclist,
            RoadUser::Vehicle => &self.vehicle,
        }
    }

    /// Relative demand (peak of the week 1.0) at a local time, interpolated between hours.
    pub fn at(&self, who: RoadUser, local_days: i64, local_seconds_of_day: u32) -> f64 {
        let w = self.week(who);
        let h = local_seconds_of_day as f64 / 3600.0;
        let i = (h.floor() as usize).min(23);
        let f = h - i as f64;
        let d = weekday(local_days);
        let (d2, i2) = if i == 23 {
            ((d + 1) % 7, 0)
        } else {
            (d, i + 1)
        };
        w[d][i] * (1.0 - f) + w[d2][i2] * f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_and_weekdays() {
        assert_eq!(day_number(1970, 1, 1), Some(0));
        assert_eq!(day_number(2024, 2, 30), None);
        // 2024-11-04 was a Monday.
        assert_eq!(day_number(2024, 11, 4).map(weekday), Some(0));
        assert_eq!(day_number(2024, 11, 10).map(weekday), Some(6));
    }

    #[test]
    fn parsers_read_the_formats() {
        let f = "Date,Total,West,East\n11/04/2024 01:00:00 PM,10,5,5\n";
        assert!(parse_fremont(f).is_none(), "one row cannot fill a week");
        let mut text = String::from("timestamp,value\n");
        for d in 0..7 {
            for h in 0..24 {
                text.push_str(&format!("2014-07-{:02} {h:02}:00:00,{}\n", 7 + d, h + 1));
            }
        }
        let w = parse_taxi(&text).unwrap();
        assert_eq!(w[0][23], 1.0);
    }
}
