//! The edge node: the agent that runs on a lamp column.
//!
//! - [`core`]: the sans-IO state machine that decides (ramping, reporting, fail-safe). It
//!   never reads a clock or touches a socket; the simulator drives it in virtual time.
//! - [`hardware`]: the trait between the core's decisions and a real lamp driver and sensors,
//!   with a simulated implementation for the demo, tests and the simulator.
//! - [`agent`]: thin tokio glue that connects one core to an MQTT broker.
//! - [`radio`]: the same glue over a LoRa radio ([`radio::Radio`]), with the simulated air
//!   the demo and the live simulator use.
//! - [`config`]: the node's TOML file.
//!   `lamplighter-edge` (src/main.rs) runs it from a TOML file.

pub mod agent;
pub mod config;
pub mod core;
pub mod hardware;
pub mod radio;

pub use crate::core::{NodeConfig, NodeCore, RoadUser, Sample};
