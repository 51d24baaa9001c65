//! From road type to lighting class, lamp wattage and capacity.
//!
//! | road kind | class | why | default LED power | capacity (users/h) |
//! |---|---|---|---|---|
//! | arterial | M3 | through traffic at 30-40 mph, mixed users: CEN/TR 13201-1 weights sum to about 3 | 75 W | 2400 |
//! | major | M4 | distributor roads, moderate traffic and speed: weights sum to about 2 | 45 W | 1500 |
//! | local | P4 | residential streets, pedestrians and low-speed traffic (UK/EN practice for residential) | 20 W | 600 |
//! | cycleway | P5 | shared paths: low speed, few users at night | 12 W | 1500 |
//! | footway | P5 | footpaths and alleys | 12 W | 1800 |
//!
//! Wattages are the LED load a modern (about 130-150 lm/W) luminaire needs for the class at
//! typical column heights and 25-40 m spacing: about 10,000 lm (M3 on 10 m columns),
//! 6,000 lm (M4 on 8 m), 2,500 lm (P4 on 6 m), 1,500 lm (P5 on 5 m).
//!
//! Capacities (road users per hour the road carries at capacity, all directions) are the
//! denominator of the traffic weighting (UNI 11248:2016: drop one class below 50 % of
//! capacity, two below 25 %): an urban single carriageway with two lanes each way about
//! 2,400 veh/h, one lane each way about 1,500 veh/h, a residential street about 600 veh/h
//! (its environment, not its lanes, limits it), a 3 m shared path about 1,500 cyclists/h and a
//! 2 m footway about 1,800 pedestrians/h.

use lamplighter_protocol::LightingClass;

use crate::RoadKind;

/// The EN 13201 class a lamp on this kind of road is designed for at 100 %.
pub fn design_class(kind: RoadKind) -> LightingClass {
    match kind {
        RoadKind::Arterial => LightingClass::M(3),
        RoadKind::Major => LightingClass::M(4),
        RoadKind::Local => LightingClass::P(4),
        RoadKind::Cycleway | RoadKind::Footway => LightingClass::P(5),
    }
}

/// LED load (W at 100 %) of a lamp on this kind of road when the fixture is unknown.
pub fn default_rated_power_w(kind: RoadKind) -> f32 {
    match kind {
        RoadKind::Arterial => 75.0,
        RoadKind::Major => 45.0,
        RoadKind::Local => 20.0,
        RoadKind::Cycleway | RoadKind::Footway => 12.0,
    }
}

/// Road users per hour the road carries at capacity.
pub fn capacity_per_h(kind: RoadKind) -> f64 {
    match kind {
        RoadKind::Arterial => 2400.0,
        RoadKind::Major => 1500.0,
        RoadKind::Local => 600.0,
        RoadKind::Cycleway => 1500.0,
        RoadKind::Footway => 1800.0,
    }
}

/// Cambridge MA LED fixture classes: A1, A2, A3 hold 120, 80 and 40 LEDs. At the
/// 350 mA drive and about 3 V of a 2010s cobra-head, one LED is about 1 W, so the LED load is
/// taken as 1 W per LED. A trailing `F` (A3F, a flood variant) counts as the base class.
/// Returns `None` for codes that are not a fixture class ("`", "?", empty).
pub fn cambridge_fixture_w(code: &str) -> Option<f32> {
    let c = code.trim().to_ascii_uppercase();
    let c = c.strip_suffix('F').unwrap_or(&c);
    match c {
        "A1" => Some(120.0),
        "A2" => Some(80.0),
        "A3" => Some(40.0),
        _ => None,
    }
}
