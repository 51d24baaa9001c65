//! The simulator: a town's lamps, sensors and road users, driving the real cores.
//!
//! - [`live`]: the demo's town. Every lamp is an edge-node core behind simulated hardware,
//!   connected to the broker over real MQTT; road users appear at the rate the demand shape
//!   gives for the (scaled) time of day.
//! - [`plan`]: planning mode. The same edge-node and controller cores in virtual time, in
//!   process and deterministic for (scenario, seed), to compare policies over days.
//! - [`demand`]: how many road users to expect at a lamp at a time of day.

pub mod demand;
pub mod live;
pub mod plan;
