//! Tokio glue: one [`NodeCore`] connected to an MQTT broker.
//!
//! The loop waits for whichever comes first: a packet from the broker, a presence detection,
//! or the instant the core asked to be woken at. After each, it passes the hardware's reading
//! in, drives the lamp at the core's level, and publishes whatever frames the core produced.
//!
//! Every frame stays in a bounded outbox until the **controller** acknowledges it: after it
//! has stored the reading, the controller publishes on `lamplighter/{tenant}/ack/{dev_eui}`
//! the highest FCnt it holds, authenticated with the node's NwkSKey (see
//! [`verify_ack`]). A broker's PUBACK is not enough: the embedded broker keeps nothing on
//! disk, and a controller killed between PUBACK and its store's commit would lose the
//! reading. On every (re)connect, and when the oldest frame has waited [`RESEND_AFTER`]
//! without an ack, the whole outbox is sent again, oldest first; the controller keeps each
//! (node, FCnt) once and answers a resend of a frame it already has with a fresh ack. When
//! the outbox is full the oldest frame is dropped, counted in [`NodeProbe::outbox_dropped`].

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
    /// 1 + the highest FCnt the controller acknowledged (0: none yet).
    pub acked_fcnt_plus1: AtomicU64,
    /// Frames dropped unacknowledged because the outbox was full.
    pub outbox_dropped: AtomicU64,
    /// Frames waiting for an acknowledgement.
    pub outbox_len: AtomicU64,
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
    /// The highest FCnt the controller acknowledged as stored.
    pub fn acked_fcnt(&self) -> Option<u32> {
        match self.acked_fcnt_plus1.load(Ordering::Relaxed) {
            0 => None,
            n => Some((n - 1) as u32),
        }
    }
    pub(crate) fn observe(&self, core: &NodeCore, now: UnixMs) {
        self.level_pct_bits
            .store(core.level_pct(now).to_bits(), Ordering::Relaxed);
        self.target_pct_bits
            .store(core.target_pct().to_bits(), Ordering::Relaxed);
        self.energy_wh_bits
            .store(core.energy_wh().to_bits(), Ordering::Relaxed);
    }
}

/// Frames kept until acknowledged; beyond this the oldest are dropped (and counted). At one
/// report a minute, 1,000 frames are 16 hours of readings.
pub const OUTBOX_CAPACITY: usize = 1_000;

/// Unacknowledged frames are sent again after this long (real time) without an ack.
pub const RESEND_AFTER: Duration = Duration::from_secs(20);

/// Checks an acknowledgement (8 bytes: FCnt u32 LE, then the first four bytes of
/// AES-CMAC(NwkSKey, "lamplighter-ack" | DevEUI u64 BE | FCnt u32 LE)) and returns the FCnt
/// it acknowledges. Anything else is `None`.
pub fn verify_ack(
    nwk_s_key: &lamplighter_protocol::lorawan::AesKey,
    dev_eui: lamplighter_protocol::DevEui,
    payload: &[u8],
) -> Option<u32> {
    use cmac::Mac;
    let (fcnt, tag) = payload.split_first_chunk::<4>()?;
    if tag.len() != 4 {
        return None;
    }
    let fcnt = u32::from_le_bytes(*fcnt);
    let mut mac = <cmac::Cmac<aes::Aes128> as Mac>::new_from_slice(nwk_s_key.as_bytes()).ok()?;
    mac.update(b"lamplighter-ack");
    mac.update(&dev_eui.0.to_be_bytes());
    mac.update(&fcnt.to_le_bytes());
    let expected = mac.finalize().into_bytes();
    // Not secret-dependent timing worth hiding: the tag is public once sent.
    (expected[..4] == *tag).then_some(fcnt)
}

/// A frame waiting for the controller's acknowledgement.
struct Pending {
    fcnt: u32,
    frame: Vec<u8>,
}

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
    let ack_topic = topics::ack(&link.tenant, dev_eui);
    let nwk_s_key = core.config().keys.nwk_s_key;
    let new_link = || {
        let mut options = MqttOptions::new(format!("node-{dev_eui}"), &link.host, link.port);
        options.set_credentials(&link.username, &link.password);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        let (client, mut eventloop): (AsyncClient, EventLoop) = AsyncClient::new(options, 64);
        // A town reconnecting after a broker restart is a storm of CONNECTs; give the broker
        // time to answer, and back off with jitter so retries do not arrive in lockstep.
        eventloop.network_options.set_connection_timeout(30);
        (client, eventloop)
    };
    // A fresh client for every connection: frames the old one still held (queued, or
    // in flight) must not go out ahead of older unacknowledged ones, or the controller
    // would take a newer FCnt first and refuse the older frame as a replay.
    let (mut client, mut eventloop) = new_link();
    let mut connected = false;
    let mut backoff_ms: u64 = 500;
    let jitter = dev_eui.0 % 1000;
    let mut outbox: VecDeque<Pending> = VecDeque::new();
    // Frames from the front of the outbox already handed to the client since the last
    // (re)send, and when the oldest of them was.
    let mut handed: usize = 0;
    let mut handed_at: Option<std::time::Instant> = None;
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
                    connected = true;
                    let _ = client.try_subscribe(&down_topic, QoS::AtLeastOnce);
                    let _ = client.try_subscribe(&ack_topic, QoS::AtMostOnce);
                    // A new session: whatever is unacknowledged goes again, oldest first.
                    handed = 0;
                    handed_at = None;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == ack_topic => {
                    if let Some(acked) = verify_ack(&nwk_s_key, dev_eui, &p.payload) {
                        let before = outbox.len();
                        while outbox.front().is_some_and(|f| f.fcnt <= acked) {
                            outbox.pop_front();
                            handed = handed.saturating_sub(1);
                        }
                        if outbox.len() < before {
                            // Progress: the next frame's wait starts now.
                            handed_at = (handed > 0).then(std::time::Instant::now);
                        }
                        if probe.acked_fcnt().is_none_or(|a| acked > a) {
                            probe.acked_fcnt_plus1.store(acked as u64 + 1, Ordering::Relaxed);
                        }
                    }
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
                    connected = false;
                    handed = 0;
                    handed_at = None;
                    (client, eventloop) = new_link();
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
                handed = handed.saturating_sub(1);
                dropped += 1;
                probe.outbox_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%dev_eui, dropped, "outbox full; dropped the oldest frame");
            }
            // poll_transmit has just advanced the counter past this frame's.
            let fcnt = core.fcnt_up().wrapping_sub(1);
            outbox.push_back(Pending { fcnt, frame });
            probe.uplinks.fetch_add(1, Ordering::Relaxed);
        }
        if handed_at.is_some_and(|t| t.elapsed() >= RESEND_AFTER) {
            // No ack for too long (lost, or the controller restarted): send all again.
            handed = 0;
            handed_at = None;
        }
        while let Some(p) = outbox.get(handed).filter(|_| connected) {
            match client.try_publish(&up_topic, QoS::AtLeastOnce, false, p.frame.clone()) {
                Ok(()) => {
                    handed += 1;
                    handed_at.get_or_insert_with(std::time::Instant::now);
                }
                Err(_) => break,
            }
        }
        probe
            .outbox_len
            .store(outbox.len() as u64, Ordering::Relaxed);
        probe.observe(&core, now);
        probe
            .downlinks_rejected
            .store(core.counters().downlinks_rejected, Ordering::Relaxed);
    }
}
