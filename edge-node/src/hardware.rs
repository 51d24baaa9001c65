//! Between the core's decisions and the column's electronics.
//!
//! A real node implements [`Hardware`] over its DALI or 0-10 V driver and its light and
//! presence sensors. [`SimulatedLamp`] stands in for them in the demo, the tests and the
//! simulator: power follows the LED power model of `lamplighter-town`, ambient light follows
//! the sun at the node's position.

use lamplighter_protocol::payload::FaultFlags;
use lamplighter_protocol::{sun, UnixMs};
use lamplighter_town::LedPowerModel;

use crate::core::Sample;

pub trait Hardware: Send {
    /// Drive the lamp at this level (percent of design output).
    fn set_level_pct(&mut self, level_pct: f32);
    /// Read the driver's power and the light sensor.
    fn sample(&mut self, now: UnixMs) -> Sample;
}

pub struct SimulatedLamp {
    pub lat: f64,
    pub lon: f64,
    pub power: LedPowerModel,
    level_pct: f32,
    /// Faults to report, for tests and fault scenarios.
    pub faults: FaultFlags,
}

impl SimulatedLamp {
    pub fn new(lat: f64, lon: f64, rated_power_w: f32) -> Self {
        SimulatedLamp {
            lat,
            lon,
            power: LedPowerModel::for_rated(rated_power_w),
            level_pct: 0.0,
            faults: FaultFlags::default(),
        }
    }

    pub fn level_pct(&self) -> f32 {
        self.level_pct
    }
}

/// Horizontal illuminance from the sun, roughly: 0 at night, tens of lux at sunset, about
/// 10,000 lx with the sun 10 degrees up. Enough to tell day from night and catch day-burning.
pub fn ambient_lux(lat: f64, lon: f64, now: UnixMs) -> f32 {
    let elevation = sun::elevation_deg(lat, lon, now);
    if elevation < -6.0 {
        0.5
    } else {
        (400.0 * 10f64.powf((elevation + 0.833) / 7.0)).min(100_000.0) as f32
    }
}

impl Hardware for SimulatedLamp {
    fn set_level_pct(&mut self, level_pct: f32) {
        self.level_pct = level_pct.clamp(0.0, 100.0);
    }

    fn sample(&mut self, now: UnixMs) -> Sample {
        let failed = self.faults.contains(FaultFlags::LAMP_FAILURE);
        Sample {
            power_w: if failed {
                self.power.input_power_w(0.0)
            } else {
                self.power.input_power_w(self.level_pct)
            },
            ambient_lux: ambient_lux(self.lat, self.lon, now),
            faults: self.faults,
        }
    }
}
