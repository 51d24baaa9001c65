//! How many road users pass a lamp, by time of day, for the live demo.
//!
//! The shape is hourly and by kind of road user: pedestrians peak in the evening and at
//! pub closing, cyclists at the commuting hours (the Fremont Bridge counts' shape), vehicles
//! through the day. At night, when the lamps matter, a quiet residential lamp sees a few
//! passes an hour; a busy one tens. Planning mode reads the real series instead.

use lamplighter_edge::RoadUser;

/// Relative activity by local hour (0-23), peak 1.0.
const PEDESTRIAN: [f64; 24] = [
    0.10, 0.06, 0.03, 0.02, 0.02, 0.04, 0.12, 0.35, 0.60, 0.50, 0.50, 0.60, 0.75, 0.70, 0.65, 0.70,
    0.85, 1.00, 0.90, 0.75, 0.55, 0.40, 0.30, 0.20,
];
const CYCLIST: [f64; 24] = [
    0.02, 0.01, 0.01, 0.01, 0.02, 0.08, 0.35, 0.90, 1.00, 0.45, 0.30, 0.30, 0.32, 0.32, 0.35, 0.50,
    0.80, 0.95, 0.60, 0.35, 0.20, 0.12, 0.07, 0.04,
];
const VEHICLE: [f64; 24] = [
    0.12, 0.08, 0.05, 0.04, 0.06, 0.15, 0.45, 0.85, 0.95, 0.75, 0.70, 0.75, 0.80, 0.80, 0.85, 0.95,
    1.00, 0.95, 0.80, 0.60, 0.45, 0.35, 0.25, 0.18,
];

/// Passes per hour at a lamp at peak, by road user.
#[derive(Debug, Clone, Copy)]
pub struct PeakRates {
    pub pedestrians_per_h: f64,
    pub cyclists_per_h: f64,
    pub vehicles_per_h: f64,
}

impl Default for PeakRates {
    fn default() -> Self {
        PeakRates {
            pedestrians_per_h: 30.0,
            cyclists_per_h: 10.0,
            vehicles_per_h: 40.0,
        }
    }
}

/// Expected passes per second at a lamp, for each kind, at a local time of day, with the
/// hours interpolated so rates do not jump on the hour.
pub fn rates_per_s(peak: PeakRates, local_seconds_of_day: u32) -> [(RoadUser, f64); 3] {
    let h = local_seconds_of_day as f64 / 3600.0;
    let i = h.floor() as usize % 24;
    let f = h - h.floor();
    let at = |shape: &[f64; 24]| shape[i] * (1.0 - f) + shape[(i + 1) % 24] * f;
    [
        (
            RoadUser::Pedestrian,
            peak.pedestrians_per_h * at(&PEDESTRIAN) / 3600.0,
        ),
        (
            RoadUser::Cyclist,
            peak.cyclists_per_h * at(&CYCLIST) / 3600.0,
        ),
        (
            RoadUser::Vehicle,
            peak.vehicles_per_h * at(&VEHICLE) / 3600.0,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nights_are_quieter_than_evenings() {
        let total = |s| {
            rates_per_s(PeakRates::default(), s)
                .iter()
                .map(|r| r.1)
                .sum::<f64>()
        };
        assert!(total(3 * 3600) < total(18 * 3600) / 5.0);
        let at_1730 = rates_per_s(PeakRates::default(), 17 * 3600 + 1800)[0].1;
        let (a, b) = (PEDESTRIAN[17], PEDESTRIAN[18]);
        assert!((at_1730 * 3600.0 / 30.0 - (a + b) / 2.0).abs() < 1e-9);
    }
}
