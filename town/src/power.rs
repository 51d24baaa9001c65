//! LED luminaire input power as a function of the dimming level.
//!
//! The model (documented figures from the data README, "Facts for the models"):
//!
//! * `rated_power_w` is the LED load at 100 % light output, i.e. what the driver delivers to
//!   the LED board (the nameplate "LED power" of a luminaire).
//! * Light output is not linear in LED power: LED efficacy rises as the drive current falls
//!   (less droop, cooler junction), so the electrical power the board draws for a fraction `l`
//!   of full light is `l^1.1` of rated (50 % light needs about 47 % of the LED power).
//! * The driver loses power in three parts: a fixed part while the output is on (control
//!   electronics, 5 % of rated), a part proportional to the output (switching, 10-11 %) and a
//!   part proportional to the square of the output (conduction, 5 %). They are calibrated so
//!   that the efficiency at full load is exactly [`FULL_LOAD_EFFICIENCY`] (82 %), and it falls
//!   as the lamp is dimmed (about 79 % at 50 %, about 55 % at 10 %), as real drivers do.
//! * The standby power (the driver and its DALI/radio interface with the light off) is paid at
//!   every level, 0.5 W by default, the upper figure for modern drivers.
//!
//! So `input_power_w(0) == standby_w`, `input_power_w(100) == rated / 0.82` (plus nothing:
//! the standby is part of the 18 % loss at full load), and the curve is strictly increasing.

use serde::{Deserialize, Serialize};

/// Driver efficiency at full load.
pub const FULL_LOAD_EFFICIENCY: f32 = 0.82;
/// Standby power of a driver with the light off (W).
pub const DEFAULT_STANDBY_W: f32 = 0.5;
/// Exponent of LED electrical power against light output (efficacy droop).
pub const LIGHT_TO_POWER_EXPONENT: f32 = 1.1;

/// Input power of one LED luminaire (driver plus LEDs) against its dimming level.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedPowerModel {
    /// LED load at 100 % light output (W).
    pub rated_power_w: f32,
    /// Paid at every level, and all that is paid at 0 % (W).
    pub standby_w: f32,
    /// Driver losses while the output is on, independent of the load (W).
    pub fixed_loss_w: f32,
    /// Driver losses proportional to the LED power (fraction of it).
    pub linear_loss: f32,
    /// Driver losses proportional to the square of the LED power, as a fraction of
    /// rated power at full load.
    pub quadratic_loss: f32,
    /// Exponent `e` in LED power = rated * level^e.
    pub light_exponent: f32,
}

impl LedPowerModel {
    /// The model for a luminaire of `rated_power_w` LED load, calibrated to 82 % driver
    /// efficiency at full load and 0.5 W standby.
    pub fn for_rated(rated_power_w: f32) -> Self {
        let rated = rated_power_w.max(0.0);
        let standby_w = if rated > 0.0 { DEFAULT_STANDBY_W } else { 0.0 };
        let total_loss_frac = 1.0 / FULL_LOAD_EFFICIENCY - 1.0; // ~0.2195 of rated
        let fixed_frac = 0.05;
        let quadratic_loss = 0.05;
        let standby_frac = if rated > 0.0 { standby_w / rated } else { 0.0 };
        // Whatever is left of the full-load loss is linear; very small lamps (where the
        // standby alone is a large share) keep a non-negative linear term.
        let linear_loss = (total_loss_frac - fixed_frac - quadratic_loss - standby_frac).max(0.0);
        LedPowerModel {
            rated_power_w: rated,
            standby_w,
            fixed_loss_w: fixed_frac * rated,
            linear_loss,
            quadratic_loss,
            light_exponent: LIGHT_TO_POWER_EXPONENT,
        }
    }

    /// Electrical power of the LED board at `level_pct` of full light (W).
    pub fn led_power_w(&self, level_pct: f32) -> f32 {
        let l = sanitize(level_pct) / 100.0;
        if l <= 0.0 {
            return 0.0;
        }
        self.rated_power_w * l.powf(self.light_exponent)
    }

    /// Power drawn from the mains at `level_pct` (0..=100; out-of-range and NaN are clamped,
    /// NaN reads as 0). 0 % is standby only.
    pub fn input_power_w(&self, level_pct: f32) -> f32 {
        let out = self.led_power_w(level_pct);
        if out <= 0.0 {
            return self.standby_w;
        }
        let rated = self.rated_power_w.max(f32::MIN_POSITIVE);
        let losses = self.standby_w
            + self.fixed_loss_w
            + self.linear_loss * out
            + self.quadratic_loss * out * out / rated;
        out + losses
    }

    /// Driver efficiency (LED power / input power) at `level_pct`; 0 at 0 %.
    pub fn efficiency(&self, level_pct: f32) -> f32 {
        let input = self.input_power_w(level_pct);
        if input <= 0.0 {
            0.0
        } else {
            self.led_power_w(level_pct) / input
        }
    }

    /// Energy drawn over `duration_s` seconds at a constant level (Wh).
    pub fn energy_wh(&self, level_pct: f32, duration_s: f64) -> f64 {
        self.input_power_w(level_pct) as f64 * duration_s / 3600.0
    }
}

fn sanitize(level_pct: f32) -> f32 {
    if level_pct.is_nan() {
        0.0
    } else {
        level_pct.clamp(0.0, 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_load_is_rated_over_efficiency() {
        for rated in [12.0f32, 20.0, 40.0, 75.0, 120.0] {
            let m = LedPowerModel::for_rated(rated);
            let full = m.input_power_w(100.0);
            assert!(
                (full - rated / 0.82).abs() < 1e-3 * rated,
                "{rated}: {full}"
            );
            assert!((m.efficiency(100.0) - 0.82).abs() < 1e-4);
        }
    }

    #[test]
    fn zero_is_standby_and_curve_is_monotone_and_not_linear() {
        let m = LedPowerModel::for_rated(40.0);
        assert_eq!(m.input_power_w(0.0), 0.5);
        assert_eq!(m.input_power_w(f32::NAN), 0.5);
        assert_eq!(m.input_power_w(-5.0), 0.5);
        assert_eq!(m.input_power_w(150.0), m.input_power_w(100.0));
        let mut last = m.input_power_w(0.0);
        for i in 1..=1000 {
            let p = m.input_power_w(i as f32 / 10.0);
            assert!(p > last, "not increasing at {}", i as f32 / 10.0);
            last = p;
        }
        // Efficiency falls when dimmed.
        assert!(m.efficiency(50.0) < m.efficiency(100.0));
        assert!(m.efficiency(10.0) < m.efficiency(50.0));
        // Not linear in the level.
        let half = m.input_power_w(50.0);
        let full = m.input_power_w(100.0);
        let ratio = half / full;
        assert!(ratio > 0.4 && ratio < 0.65, "{half} vs {full}");
        assert!((ratio - 0.5).abs() > 0.005, "{ratio}");
    }
}
