//! The lighting class a zone's demand calls for, period by period.
//!
//! # CEN/TR 13201-1 weighting
//!
//! CEN/TR 13201-1:2014 picks a class from weighted parameters: class number = 6 - (sum of
//! weighting values). Every parameter but traffic volume (speed, composition, separation,
//! junctions, parking, ambient luminance, navigation) is fixed for a road, and the TR allows
//! traffic volume to be re-evaluated per time period (its Annex A takes a P4 street to P6 after
//! midnight). So for a lamp designed for class `D` at its design (peak) traffic,
//!
//! `class number(period) = 6 - (W_fixed + W_traffic(period)) = D + (W_traffic(design) - W_traffic(period))`
//!
//! and only the traffic-volume weighting, measured against the road's capacity, moves the class.
//!
//! # The traffic-volume table
//!
//! We use the thresholds of UNI 11248:2016, the national application that states them as a
//! share of the road's capacity (and the figures `../shared/data/README.md` gives):
//!
//! | demand / capacity | W_traffic(design) - W_traffic | class in force (design M3, P4) |
//! |---|---|---|
//! | >= 50 % | 0 (design traffic) | M3, P4 |
//! | 25 % to < 50 % | 1 | M4, P5 |
//! | < 25 % | 2 | M5, P6 |
//!
//! The TR's own M-class traffic weighting (very high +1, high +0.5, moderate 0, low -0.5, very
//! low -1) has half points and no capacity thresholds of its own, so a council that reads it
//! differently configures its own steps ([`TrafficStep`], `traffic_steps` in the policy).
//! A class brighter than the design class is never chosen: the lamp cannot exceed 100 %, and
//! the design class already assumes the design traffic. Classes are clamped to their series
//! (M6, P6, C5 at the dim end).
//!
//! # UNI 11248 steps over time
//!
//! Light rises at once when demand (measured, or the forecast's upper quantile within the lead
//! time) calls for a brighter class; it drops only when `confirm_intervals` consecutive
//! intervals (two 10-minute intervals by default) each call for a dimmer class, and then to the
//! brighter of the classes they called for. An interval without data confirms nothing.
//! [`ClassSelector`] is that state machine; it is a value in, a value out, and holds no clock.

use lamplighter_protocol::LightingClass;
use serde::{Deserialize, Serialize};

/// One row of the traffic-volume table: below `below_capacity_pct` % of the road's capacity
/// the class in force is `classes_down` classes below the design class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficStep {
    pub below_capacity_pct: f64,
    pub classes_down: u8,
}

/// UNI 11248:2016: one class down below 50 % of capacity, two below 25 %.
pub fn uni_11248_steps() -> Vec<TrafficStep> {
    vec![
        TrafficStep {
            below_capacity_pct: 50.0,
            classes_down: 1,
        },
        TrafficStep {
            below_capacity_pct: 25.0,
            classes_down: 2,
        },
    ]
}

/// How many classes below the design class a demand of `ratio` (demand / capacity) allows.
/// Anything not a finite non-negative number allows none (the design class is the safe side).
pub fn classes_down(steps: &[TrafficStep], ratio: f64) -> u8 {
    if !ratio.is_finite() || ratio < 0.0 {
        return 0;
    }
    steps
        .iter()
        .filter(|s| ratio * 100.0 < s.below_capacity_pct)
        .map(|s| s.classes_down)
        .max()
        .unwrap_or(0)
}

/// The class `down` classes below `design` (a higher number), clamped to the series.
pub fn class_below(design: LightingClass, down: u8) -> LightingClass {
    design.with_number(design.number() as i32 + down as i32)
}

/// The level at which a lamp designed for `design` at 100 % meets `class`, rounded up to a
/// whole percent so that rounding never under-lights.
pub fn level_pct(design: LightingClass, class: LightingClass) -> u8 {
    // The ratio of two f32 averages can land a hair above a whole number (40.000004).
    (design.level_pct_for(class) - 1e-3)
        .ceil()
        .clamp(0.0, 100.0) as u8
}

/// The class in force for one zone: the UNI 11248 state machine over intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassSelector {
    down: u8,
    /// Consecutive intervals that called for a dimmer class.
    streak: u8,
    /// The brightest (fewest classes down) of the classes the streak called for.
    pending: u8,
    by_forecast: bool,
}

impl ClassSelector {
    /// Classes below the design class now in force (0 until demand has shown otherwise).
    pub fn down(&self) -> u8 {
        self.down
    }

    /// Whether the class in force is brighter than the measured demand asks for because the
    /// forecast's upper quantile asks for it.
    pub fn by_forecast(&self) -> bool {
        self.by_forecast
    }

    /// Intervals so far confirming a drop.
    pub fn streak(&self) -> u8 {
        self.streak
    }

    /// An interval ended. `measured`: classes down the interval's measured demand allows
    /// (`None`: no lamp of the zone reported). `forecast`: classes down the forecast's upper
    /// quantile allows over the lead time (`None`: no forecast yet). Returns whether the class
    /// in force changed.
    pub fn end_interval(
        &mut self,
        measured: Option<u8>,
        forecast: Option<u8>,
        confirm_intervals: u8,
    ) -> bool {
        let before = self.down;
        let candidate = match (measured, forecast) {
            (Some(m), Some(f)) => Some(m.min(f)),
            (Some(m), None) => Some(m),
            (None, Some(f)) if f < self.down => Some(f),
            _ => None,
        };
        match candidate {
            // Nothing measured: nothing confirmed.
            None => self.streak = 0,
            // Rise at once.
            Some(c) if c < self.down => {
                self.down = c;
                self.streak = 0;
            }
            Some(c) if c > self.down && measured.is_some() => {
                self.pending = if self.streak == 0 {
                    c
                } else {
                    self.pending.min(c)
                };
                self.streak = self.streak.saturating_add(1);
                if self.streak >= confirm_intervals.max(1) {
                    self.down = self.pending;
                    self.streak = 0;
                }
            }
            Some(_) => self.streak = 0,
        }
        self.by_forecast = match measured {
            Some(m) => self.down < m && forecast.is_some_and(|f| f <= self.down),
            None if self.down < before => true,
            None => self.by_forecast,
        };
        self.down != before
    }

    /// Demand within an interval already calls for `down` classes down at most: rise at once
    /// if that is brighter than the class in force. Returns whether the class changed.
    pub fn rise_to(&mut self, down: u8) -> bool {
        if down < self.down {
            self.down = down;
            self.streak = 0;
            self.by_forecast = false;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_weighting_table() {
        let steps = uni_11248_steps();
        // (demand / capacity, classes down)
        let cases = [
            (1.2, 0),
            (1.0, 0),
            (0.65, 0),
            (0.50, 0),
            (0.4999, 1),
            (0.30, 1),
            (0.25, 1),
            (0.2499, 2),
            (0.05, 2),
            (0.0, 2),
            (-1.0, 0),
            (f64::NAN, 0),
            (f64::INFINITY, 0),
        ];
        for (ratio, down) in cases {
            assert_eq!(classes_down(&steps, ratio), down, "ratio {ratio}");
        }
        assert_eq!(classes_down(&[], 0.0), 0, "no table: the design class");
    }

    #[test]
    fn class_number_is_design_plus_weighting_difference_clamped_to_the_series() {
        use LightingClass::*;
        // (design, classes down, class in force, level %)
        let cases = [
            (M(3), 0, M(3), 100),
            (M(3), 1, M(4), 75),
            (M(3), 2, M(5), 50),
            (M(4), 2, M(6), 40),
            (M(5), 2, M(6), 60),
            (M(6), 2, M(6), 100),
            (P(4), 1, P(5), 60),
            (P(4), 2, P(6), 40),
            (P(5), 2, P(6), 67),
            (C(4), 2, C(5), 75),
        ];
        for (design, down, class, level) in cases {
            assert_eq!(class_below(design, down), class, "{design} -{down}");
            assert_eq!(level_pct(design, class), level, "{design} -> {class}");
        }
    }

    /// (measured, forecast, classes down in force after the interval, by forecast)
    type Step = (Option<u8>, Option<u8>, u8, bool);

    fn run(steps: &[Step]) {
        let mut s = ClassSelector::default();
        for (i, &(m, f, down, by_forecast)) in steps.iter().enumerate() {
            s.end_interval(m, f, 2);
            assert_eq!(
                (s.down(), s.by_forecast()),
                (down, by_forecast),
                "interval {i}: {m:?} {f:?}"
            );
        }
    }

    #[test]
    fn a_drop_needs_two_consecutive_intervals_confirming_it() {
        run(&[
            (Some(2), None, 0, false),
            (Some(2), None, 2, false),
            (Some(2), None, 2, false),
        ]);
        // Interrupted by an interval at design traffic: start again.
        run(&[
            (Some(1), None, 0, false),
            (Some(0), None, 0, false),
            (Some(1), None, 0, false),
            (Some(1), None, 1, false),
        ]);
        // Two intervals calling for 1 and 2 classes down: drop to the brighter, 1.
        run(&[(Some(2), None, 0, false), (Some(1), None, 1, false)]);
        // A missing interval confirms nothing.
        run(&[
            (Some(2), None, 0, false),
            (None, None, 0, false),
            (Some(2), None, 0, false),
            (Some(2), None, 2, false),
        ]);
    }

    #[test]
    fn light_rises_at_once() {
        run(&[
            (Some(2), None, 0, false),
            (Some(2), None, 2, false),
            (Some(0), None, 0, false),
        ]);
        run(&[
            (Some(2), None, 0, false),
            (Some(2), None, 2, false),
            (Some(1), None, 1, false),
        ]);
        let mut s = ClassSelector::default();
        s.end_interval(Some(2), None, 2);
        s.end_interval(Some(2), None, 2);
        assert!(s.rise_to(1));
        assert_eq!(s.down(), 1);
        assert!(!s.rise_to(2), "rise_to never dims");
    }

    #[test]
    fn the_forecast_upper_quantile_raises_ahead_and_holds_off_drops() {
        run(&[
            (Some(2), Some(2), 0, false),
            (Some(2), Some(2), 2, false),
            // Quiet now, but the upper quantile within the lead time reaches design traffic.
            (Some(2), Some(0), 0, true),
            // Still quiet, forecast still high: held by the forecast.
            (Some(2), Some(0), 0, true),
            // The forecast eases: the drop needs two intervals again.
            (Some(2), Some(2), 0, false),
            (Some(2), Some(1), 1, true),
        ]);
        // With nothing measured the forecast may raise, never lower.
        run(&[
            (Some(2), None, 0, false),
            (Some(2), None, 2, false),
            (None, Some(1), 1, true),
            (None, Some(2), 1, true),
        ]);
        // Demand itself at design level: not the forecast's doing.
        run(&[(Some(0), Some(0), 0, false)]);
    }

    #[test]
    fn one_confirming_interval_when_so_configured() {
        let mut s = ClassSelector::default();
        s.end_interval(Some(2), None, 1);
        assert_eq!(s.down(), 2);
        let mut s = ClassSelector::default();
        s.end_interval(Some(2), None, 0);
        assert_eq!(s.down(), 2, "0 is read as 1");
    }
}
