//! Tokio glue: one [`NodeCore`] connected to an MQTT broker.
//!
//! The loop waits for whichever comes first: a packet from the broker, a presence detection,
//! or the instant the core asked to be woken at. After each, it passes the hardware's reading
//! in, drives the lamp at the core's level, and publishes whatever frames the core produced.
//! Frames that cannot be handed to the client at once wait in a bounded outbox, oldest first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{topics, TenantId, UnixMs};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::core::{NodeCore, RoadUser};
use crate::hardware::Hardware;

/// Where and as whom the node connects.
#[derive(Debug, Clone)]
pub struct MqttLink {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub tenant: TenantId,
}

/// What a running node shows the outside (the demo's summary, tests, the live simulator).
/// Atomics, so reading them never blocks the node.
#[derive(Debug, Default)]
pub struct NodeProbe {
    level_pct_bits: AtomicU32,
    target_pct_bits: AtomicU32,
    pub uplinks: AtomicU64,
    pub commands_applied: AtomicU64,
    pub downlinks_rejected: AtomicU64,
    /// Clock time (Unix ms) of the last command applied.
    pub last_command_ms: AtomicU64,
    pub connected: std::sync::atomic::AtomicBool,
    energy_wh_bits: AtomicU64,
}

impl NodeProbe {
    pub fn level_pct(&self) -> f32 {
        f32::from_bits(self.level_pct_bits.load(Ordering::Relaxed))
    }
    pub fn target_pct(&self) -> f32 {
        f32::from_bits(self.target_pct_bits.load(Ordering::Relaxed))
    }
    pub fn energy_wh(&self) -> f64 {
        f64::from_bits(self.energy_wh_bits.load(Ordering::Relaxed))
    }
    fn observe(&self, core: &NodeCore, now: UnixMs) {
        self.level_pct_bits
            .store(core.level_pct(now).to_bits(), Ordering::Relaxed);
        self.target_pct_bits
            .store(core.target_pct().to_bits(), Ordering::Relaxed);
        self.energy_wh_bits
            .store(core.energy_wh().to_bits(), Ordering::Relaxed);
    }
}

/// Frames kept while the link is down; beyond this the oldest are dropped (and counted).
pub const OUTBOX_CAPACITY: usize = 1_000;

/// Runs one node until the task is aborted. Connection errors are logged once per outage and
/// retried; nothing from the network can end the loop.
pub async fn run_node<H: Hardware>(
    mut core: NodeCore,
    mut hardware: H,
    link: MqttLink,
    clock: ScaledClock,
    mut presence: mpsc::Receiver<RoadUser>,
    probe: Arc<NodeProbe>,
) {
    let dev_eui = core.config().dev_eui;
    let up_topic = topics::uplink(&link.tenant, dev_eui);
    let down_topic = topics::downlink(&link.tenant, dev_eui);
    let mut options = MqttOptions::new(format!("node-{dev_eui}"), &link.host, link.port);
    options.set_credentials(&link.username, &link.password);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    let (client, mut eventloop): (AsyncClient, EventLoop) = AsyncClient::new(options, 64);
    // A town reconnecting after a broker restart is a storm of CONNECTs; give the broker time
    // to answer, and back off with jitter so retries do not arrive in lockstep.
    eventloop.network_options.set_connection_timeout(30);
    let mut backoff_ms: u64 = 500;
    let jitter = dev_eui.0 % 1000;
    let mut outbox: VecDeque<Vec<u8>> = VecDeque::new();
    let mut dropped: u64 = 0;
    let mut outage_logged = false;
    let mut presence_open = true;

    loop {
        let now = clock.now();
        let wake_in = clock.wall_until(core.poll_timeout(now));
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    outage_logged = false;
                    backoff_ms = 500;
                    probe.connected.store(true, Ordering::Relaxed);
                    let _ = client.try_subscribe(&down_topic, QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == down_topic => {
                    let now = clock.now();
                    match core.handle_downlink(now, &p.payload) {
                        Ok(_) => {
                            probe.commands_applied.fetch_add(1, Ordering::Relaxed);
                            probe.last_command_ms.store(now.0, Ordering::Relaxed);
                        }
                        Err(e) => {
                            probe.downlinks_rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%dev_eui, error = %e, "downlink rejected");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    probe.connected.store(false, Ordering::Relaxed);
                    if !outage_logged {
                        tracing::warn!(%dev_eui, error = %e, "MQTT link down; retrying");
                        outage_logged = true;
                    }
                    tokio::time::sleep(Duration::from_millis(backoff_ms + jitter * backoff_ms / 1000)).await;
                    backoff_ms = (backoff_ms * 2).min(30_000);
                }
            },
            who = presence.recv(), if presence_open => match who {
                Some(who) => core.handle_presence(clock.now(), who),
                None => presence_open = false,
            },
            _ = tokio::time::sleep(wake_in) => core.handle_timeout(clock.now()),
        }

        let now = clock.now();
        hardware.set_level_pct(core.level_pct(now));
        core.handle_sample(now, hardware.sample(now));
        while let Some(frame) = core.poll_transmit(now) {
            if outbox.len() == OUTBOX_CAPACITY {
                outbox.pop_front();
                dropped += 1;
                tracing::warn!(%dev_eui, dropped, "outbox full; dropped the oldest frame");
            }
            outbox.push_back(frame);
            probe.uplinks.fetch_add(1, Ordering::Relaxed);
        }
        while let Some(frame) = outbox.front() {
            match client.try_publish(&up_topic, QoS::AtLeastOnce, false, frame.clone()) {
                Ok(()) => {
                    outbox.pop_front();
                }
                Err(_) => break,
            }
        }
        probe.observe(&core, now);
        probe
            .downlinks_rejected
            .store(core.counters().downlinks_rejected, Ordering::Relaxed);
    }
}
