//! Road users as the simulator models them: their kinds, speeds, the mix of each road kind,
//! and what a column's presence sensor sees of them.

use lamplighter_edge::RoadUser;
use lamplighter_town::RoadKind;

/// Probability that a sensor detects a passing road user.
pub(crate) const DETECTION_P: f64 = 0.95;
/// A presence sensor sees a road user this far from the column.
pub(crate) const SENSOR_RANGE_M: f64 = 20.0;
pub(crate) const USERS: [RoadUser; 3] =
    [RoadUser::Pedestrian, RoadUser::Cyclist, RoadUser::Vehicle];

pub(crate) fn speed_mps(who: RoadUser) -> f64 {
    match who {
        RoadUser::Pedestrian => 1.4,
        RoadUser::Cyclist => 5.0,
        RoadUser::Vehicle => 12.0,
    }
}

/// Index of a road user's kind in [`USERS`].
pub(crate) fn user_index(who: RoadUser) -> usize {
    match who {
        RoadUser::Pedestrian => 0,
        RoadUser::Cyclist => 1,
        RoadUser::Vehicle => 2,
    }
}

pub(crate) fn user_name(who: RoadUser) -> &'static str {
    match who {
        RoadUser::Pedestrian => "pedestrian",
        RoadUser::Cyclist => "cyclist",
        RoadUser::Vehicle => "vehicle",
    }
}

/// Peak-hour flow as a share of the road's capacity, and the mix of (pedestrians,
/// cyclists, vehicles).
pub(crate) fn kind_demand(kind: RoadKind) -> (f64, [f64; 3]) {
    match kind {
        RoadKind::Arterial => (0.45, [0.12, 0.08, 0.80]),
        RoadKind::Major => (0.35, [0.15, 0.10, 0.75]),
        RoadKind::Local => (0.10, [0.40, 0.15, 0.45]),
        RoadKind::Cycleway => (0.06, [0.25, 0.75, 0.0]),
        RoadKind::Footway => (0.05, [0.85, 0.15, 0.0]),
    }
}
