//! A tenant's existing LoRaWAN network (ChirpStack v4, The Things Stack v3) as the carrier
//! of its lamps' frames, through that network's MQTT integration.
//!
//! ```text
//!  their broker                    ExternalAdapter (sans-IO)             embedded broker
//!  .../device/{eui}/event/up  -->  parse, find the node, re-seal   -->  lamplighter/{t}/up/{eui}
//!  .../device/{eui}/command/down <-- open with the node's keys, JSON <-- lamplighter/{t}/down/{eui}
//! ```
//!
//! The controller never knows the difference: it sees frames sealed in each node's
//! application session, as from our own bridge or an MQTT node, and checks them the same
//! way. [`ExternalAdapter`] is the deciding part, pure and table-tested; [`start`] is two
//! MQTT clients around it. Every message that cannot be used is counted by reason
//! ([`LinkReport`], in `/metrics` and the summary) and logged once per reason; nothing from
//! either broker ends the loop.
//!
//! Field realities it handles:
//!
//! - **Re-joins**: a join event starts a new counter session for the device (see
//!   [`crate::external_state`]); replays inside one session are refused.
//! - **Restarts**: device IDs and counter sessions live in `external.sqlite`; the session on
//!   the network's broker is persistent under a stable client ID, so uplinks published
//!   while serve was away arrive when it is back.
//! - **Outages**: commands wait in the adapter, latest per lamp and command kind, and go out
//!   when the broker is back (ChirpStack's with `expiresAt`, The Things Stack's as
//!   `down/replace`); a TTS device whose ID is not known yet keeps its latest commands
//!   until an uplink or join names it.
//!
//! One job a file: `config` what a link is told, `adapter` the deciding part (sans-IO: a
//! message in, a decision out, the time passed in), `queue` the commands waiting (latest per
//! lamp, expiry), `refusal` the typed reasons a message is not passed on, `report` the
//! counters and their Prometheus text, and `mqtt` the tokio/rumqttc glue around the adapter.

mod adapter;
mod config;
mod mqtt;
mod queue;
mod refusal;
mod report;

pub use adapter::{ExternalAdapter, Publish};
pub use config::{ExternalDevice, ExternalNetwork};
pub use mqtt::{start, ExternalLink, LinkHandle, LinkOptions};
pub use queue::{AdapterOptions, DEFAULT_COMMAND_EXPIRY_MS};
pub use refusal::{summary_reason, LinkError};
pub use report::{prometheus, LinkReport};
