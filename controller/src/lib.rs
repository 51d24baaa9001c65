//! The controller: it hears every lamp, decides every level, and keeps the record.
//!
//! - [`core`]: sans-IO. Lamp and zone state, uplink checks (topic, DevAddr, FCnt, MIC,
//!   payload), the policy, commands as ready-made frames. Time is an argument.
//! - [`faults`]: sans-IO. Lamp failure, driver fault, comms loss, day-burning and cycling,
//!   raised with hysteresis, acknowledged and cleared.
//! - [`store`]: SQLite (rusqlite, bundled, WAL): provisioned nodes and their credentials,
//!   readings, commands, rejections. Writes are batched on their own thread.
//! - [`tariff`]: configuration. What a kWh costs in money and carbon; read by the core's
//!   configuration and by the store's energy reports, owned by neither.
//! - [`overrides`]: what an operator's override is and which lamps it reaches; the list in
//!   force (who, why, until when) is `store::Overrides`, kept in the store so a restart
//!   applies them again; the core holds the levels they set.
//! - [`influx`]: the InfluxDB sink: points spooled in SQLite with the readings, written in
//!   batches with retries, each exactly once.
//! - [`service`]: tokio glue. Subscribes to every tenant's uplinks over MQTT, feeds the core,
//!   publishes its commands, hands events to the store and a shared handle to the API.

pub mod core;
pub mod csv_export;
pub mod faults;
pub mod influx;
pub mod overrides;
pub mod service;
pub mod store;
pub mod tariff;

pub use crate::core::{ControllerConfig, ControllerCore, ProvisionedNode};
