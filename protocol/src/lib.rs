//! Lamplighter's wire formats. No I/O, no tokio: everything here is a pure function of bytes.
//!
//! - [`ids`]: identifiers as newtypes (`DevAddr`, `DevEui`, `LampId`, `ZoneId`, `TenantId`).
//! - [`payload`]: the lamp status uplink and the command downlinks, a compact versioned binary
//!   codec that fits LoRaWAN EU868 DR0 (51 bytes) with room to spare.
//! - [`lorawan`]: LoRaWAN 1.0.x data frames built and opened with per-node session keys (MIC,
//!   payload encryption, 32-bit FCnt rebuilt from the 16 bits on air). Every node sends these
//!   frames, over a radio or as an MQTT message payload, so integrity, confidentiality and replay
//!   protection never depend on the MQTT broker.
//! - [`topics`]: the MQTT topic layout, with a tenant segment.
//! - [`time`]: `UnixMs`, the one time type the sans-IO cores take as `now`.
//! - [`local_time`]: `TimeZone`, an IANA zone: local wall-clock time across DST changes.
//! - [`sun`]: solar elevation, so nodes and controller agree on dusk and dawn from a position.
//! - [`hint`]: cache prefetch hints for the simulator's hot loops (no effect on state).

pub mod class;
pub mod hint;
pub mod ids;
pub mod local_time;
pub mod lorawan;
pub mod payload;
pub mod sun;
pub mod time;
pub mod topics;

pub use class::LightingClass;
pub use ids::{DevAddr, DevEui, IdError, LampId, TenantId, ZoneId};
pub use time::UnixMs;
