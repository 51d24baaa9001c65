//! The controller as a tokio service: MQTT in, the core in the middle, MQTT and SQLite out.
//!
//! Two tasks. One polls the MQTT connection and forwards every message on the uplink
//! topics into a bounded channel; it is the only one that waits on the network. The other
//! owns the core's clock: it feeds messages to the core, ticks the core, publishes the
//! commands it produces with `try_publish` (never waiting on the client, so the two tasks
//! cannot block each other) and hands events to the store's writer thread.
//!
//! The API reads the core through [`ControllerHandle`], under a mutex held only to copy a
//! view out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lamplighter_protocol::lorawan::AesKey;
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{topics, DevEui, LampId, TenantId, UnixMs};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::core::{ControllerCore, LampView, Summary, ZoneView};
use crate::store::{Committed, StoreWriter};

/// The topic on which the controller acknowledges a node's readings once they are stored:
/// `lamplighter/{tenant}/ack/{dev_eui}`.
pub fn ack_topic(tenant: &TenantId, dev_eui: DevEui) -> String {
    format!("{}/{tenant}/ack/{dev_eui}", topics::ROOT)
}

/// An acknowledgement: "every reading up to FCnt `fcnt` that reached me is on disk". Eight
/// bytes: the FCnt (u32 little-endian) and the first four bytes of
/// AES-CMAC(NwkSKey, "lamplighter-ack" | DevEUI (u64 big-endian) | FCnt (u32 LE)), so that
/// no one but the controller can make a node drop what it holds (the broker has no ACLs).
pub fn ack_payload(nwk_s_key: &AesKey, dev_eui: DevEui, fcnt: u32) -> [u8; 8] {
    use cmac::Mac;
    let mut mac = <cmac::Cmac<aes::Aes128> as Mac>::new_from_slice(nwk_s_key.as_bytes())
        .expect("AES-128 takes a 16-byte key");
    mac.update(b"lamplighter-ack");
    mac.update(&dev_eui.0.to_be_bytes());
    mac.update(&fcnt.to_le_bytes());
    let tag = mac.finalize().into_bytes();
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&fcnt.to_le_bytes());
    out[4..].copy_from_slice(&tag[..4]);
    out
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub mqtt_host: String,
    pub mqtt_port: u16,
    pub mqtt_client_id: String,
    pub mqtt_username: String,
    pub mqtt_password: String,
    /// How often, in real time, every lamp is re-decided.
    pub tick_interval: Duration,
    /// Set while the controller's uplink subscription stands. The broker should let nodes
    /// in only then: a frame published with no subscriber is gone, and a later frame's ack
    /// would tell its node to forget it.
    pub uplinks_subscribed: Arc<std::sync::atomic::AtomicBool>,
}

/// Counters of the service around the core.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    pub mqtt_messages: AtomicU64,
    pub commands_published: AtomicU64,
    /// Commands that waited because the MQTT client's queue was full.
    pub commands_deferred: AtomicU64,
    pub mqtt_disconnects: AtomicU64,
    /// Acknowledgements published to nodes (after their readings were stored).
    pub acks_published: AtomicU64,
}

struct Shared {
    core: Mutex<ControllerCore>,
    clock: ScaledClock,
    metrics: ServiceMetrics,
}

/// A cheap, cloneable view of the running controller.
#[derive(Clone)]
pub struct ControllerHandle {
    shared: Arc<Shared>,
}

impl ControllerHandle {
    fn core(&self) -> MutexGuard<'_, ControllerCore> {
        // A panic while holding the lock would be a bug in the core; the state is still the
        // best we have, so keep serving it.
        self.shared.core.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn now(&self) -> UnixMs {
        self.shared.clock.now()
    }
    pub fn clock(&self) -> ScaledClock {
        self.shared.clock
    }
    pub fn summary(&self, tenant: Option<&TenantId>) -> Summary {
        self.core().summary(self.now(), tenant)
    }
    pub fn lamps(&self, tenant: Option<&TenantId>) -> Vec<LampView> {
        self.core().lamps(self.now(), tenant)
    }
    pub fn zones(&self, tenant: Option<&TenantId>) -> Vec<ZoneView> {
        self.core().zones(self.now(), tenant)
    }
    pub fn metrics(&self) -> &ServiceMetrics {
        &self.shared.metrics
    }
    /// Runs `f` on the core (for overrides and tests), under the lock.
    pub fn with_core<T>(&self, f: impl FnOnce(&mut ControllerCore, UnixMs) -> T) -> T {
        let now = self.now();
        f(&mut self.core(), now)
    }

    /// Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        let s = self.summary(None);
        let m = &self.shared.metrics;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "lamplighter_lamps",
            "gauge",
            "Provisioned lamps.",
            s.lamps.to_string(),
        );
        metric(
            "lamplighter_lamps_online",
            "gauge",
            "Lamps that reported recently.",
            s.lamps_online.to_string(),
        );
        metric(
            "lamplighter_uplinks_total",
            "counter",
            "Uplinks accepted.",
            s.uplinks.to_string(),
        );
        metric(
            "lamplighter_commands_total",
            "counter",
            "Commands sent.",
            s.commands.to_string(),
        );
        metric(
            "lamplighter_energy_wh_total",
            "counter",
            "Energy metered since start, Wh.",
            format!("{:.1}", s.energy_wh),
        );
        metric(
            "lamplighter_power_w",
            "gauge",
            "Power of all lamps at their last report, W.",
            format!("{:.1}", s.power_w),
        );
        metric(
            "lamplighter_mqtt_messages_total",
            "counter",
            "MQTT messages received.",
            m.mqtt_messages.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "lamplighter_commands_deferred_total",
            "counter",
            "Commands that waited for the MQTT queue.",
            m.commands_deferred.load(Ordering::Relaxed).to_string(),
        );
        out.push_str("# HELP lamplighter_rejected_total Uplinks rejected, by reason.\n# TYPE lamplighter_rejected_total counter\n");
        for (kind, n) in &s.rejected_by_reason {
            out.push_str(&format!(
                "lamplighter_rejected_total{{reason=\"{kind}\"}} {n}\n"
            ));
        }
        out
    }
}

/// Starts the service. Returns at once; the tasks run until aborted.
pub fn start(
    core: ControllerCore,
    store: StoreWriter,
    clock: ScaledClock,
    config: ServiceConfig,
) -> (ControllerHandle, Vec<JoinHandle<()>>) {
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        clock,
        metrics: ServiceMetrics::default(),
    });
    let handle = ControllerHandle { shared };

    let mut options = MqttOptions::new(&config.mqtt_client_id, &config.mqtt_host, config.mqtt_port);
    options.set_credentials(&config.mqtt_username, &config.mqtt_password);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    let (tx, mut rx) = mpsc::channel::<(String, Vec<u8>)>(65_536);
    let (replay_tx, replay_rx) = mpsc::unbounded_channel::<DevEui>();
    let acker = spawn_acker(
        handle.clone(),
        client.clone(),
        store.subscribe_commits(),
        replay_rx,
    );

    let net = {
        let handle = handle.clone();
        let client = client.clone();
        let subscribed = config.uplinks_subscribed.clone();
        tokio::spawn(async move {
            let mut down_logged = false;
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        down_logged = false;
                        tracing::info!("controller connected to MQTT; subscribing to uplinks");
                        // The request queue may be full of commands; wait for room in a task
                        // of its own, since this one must keep polling to make that room.
                        let client = client.clone();
                        tokio::spawn(async move {
                            if let Err(e) = client
                                .subscribe(topics::ALL_UPLINKS, QoS::AtLeastOnce)
                                .await
                            {
                                tracing::error!(error = %e, "cannot subscribe to uplinks");
                            }
                        });
                    }
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        subscribed.store(true, Ordering::SeqCst);
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        handle
                            .shared
                            .metrics
                            .mqtt_messages
                            .fetch_add(1, Ordering::Relaxed);
                        if tx.send((p.topic, p.payload.to_vec())).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        subscribed.store(false, Ordering::SeqCst);
                        handle
                            .shared
                            .metrics
                            .mqtt_disconnects
                            .fetch_add(1, Ordering::Relaxed);
                        if !down_logged {
                            tracing::warn!(error = %e, "controller's MQTT link down; retrying");
                            down_logged = true;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
    };

    let decide = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(config.tick_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pending: VecDeque<(String, Vec<u8>)> = VecDeque::new();
            let mut logged_kinds: HashSet<&'static str> = HashSet::new();
            let mut batch = Vec::with_capacity(1024);
            let mut next_zone_points = handle.now();
            loop {
                let mut ticked = false;
                tokio::select! {
                    msg = rx.recv() => {
                        let Some(first) = msg else { return };
                        batch.push(first);
                        while batch.len() < 1024 {
                            match rx.try_recv() {
                                Ok(m) => batch.push(m),
                                Err(_) => break,
                            }
                        }
                    }
                    _ = tick.tick() => ticked = true,
                }
                let mut events = Vec::new();
                {
                    let now = handle.now();
                    let mut core = handle.core();
                    for (topic, payload) in batch.drain(..) {
                        if let Err(r) = core.handle_uplink(now, &topic, &payload) {
                            // A frame the controller already has: the node did not hear
                            // (or not yet) that it is stored; say so again.
                            if r.kind() == "replay" {
                                if let Ok(topics::Topic::Uplink { dev_eui, .. }) =
                                    topics::parse(&topic)
                                {
                                    let _ = replay_tx.send(dev_eui);
                                }
                            }
                            if logged_kinds.insert(r.kind()) {
                                tracing::warn!(reason = %r, %topic, "uplink rejected (further rejections of this kind are counted, not logged)");
                            }
                        }
                    }
                    if ticked {
                        core.handle_tick(now);
                        if store.influx_enabled() && now >= next_zone_points {
                            next_zone_points = now.plus_ms(60_000);
                            store.spool_lines(crate::influx::zone_lines(
                                &core.zones(now, None),
                                now,
                            ));
                        }
                    }
                    while let Some(c) = core.poll_command() {
                        pending.push_back((c.topic, c.frame));
                    }
                    while let Some(e) = core.poll_event() {
                        events.push(e);
                    }
                }
                store.write(events);
                while let Some((topic, frame)) = pending.pop_front() {
                    match client.try_publish(topic.as_str(), QoS::AtLeastOnce, false, frame.clone())
                    {
                        Ok(()) => {
                            handle
                                .shared
                                .metrics
                                .commands_published
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            handle
                                .shared
                                .metrics
                                .commands_deferred
                                .fetch_add(1, Ordering::Relaxed);
                            pending.push_front((topic, frame));
                            break;
                        }
                    }
                }
            }
        })
    };
    (handle, vec![net, decide, acker])
}

struct AckTarget {
    topic: String,
    key: AesKey,
    dev_eui: DevEui,
    /// The highest FCnt of this node's readings known to be on disk.
    durable: Option<u32>,
}

/// Acknowledges readings to their nodes once the store has committed them, and again when
/// a node resends one the controller already has. Acks are QoS 0 and best effort: a lost
/// ack only means the node resends, which the core rejects as a replay and this task
/// answers with a fresh ack.
fn spawn_acker(
    handle: ControllerHandle,
    client: AsyncClient,
    mut commits: tokio::sync::mpsc::UnboundedReceiver<Committed>,
    mut replays: mpsc::UnboundedReceiver<DevEui>,
) -> JoinHandle<()> {
    // At start the core's counters are the store's: durable.
    let mut by_lamp: HashMap<LampId, AckTarget> = HashMap::new();
    let mut by_eui: HashMap<DevEui, LampId> = HashMap::new();
    handle.with_core(|core, _| {
        let lamps: Vec<_> = core.session_counters().map(|c| (c.0, c.1)).collect();
        for (lamp, last_up) in lamps {
            if let Some(n) = core.node(lamp) {
                by_eui.insert(n.dev_eui, lamp);
                by_lamp.insert(
                    lamp,
                    AckTarget {
                        topic: ack_topic(&n.tenant, n.dev_eui),
                        key: n.keys.nwk_s_key,
                        dev_eui: n.dev_eui,
                        durable: last_up,
                    },
                );
            }
        }
    });
    tokio::spawn(async move {
        let publish = |t: &AckTarget| {
            let Some(fcnt) = t.durable else { return };
            let payload = ack_payload(&t.key, t.dev_eui, fcnt);
            if client
                .try_publish(t.topic.as_str(), QoS::AtMostOnce, false, payload.to_vec())
                .is_ok()
            {
                handle
                    .shared
                    .metrics
                    .acks_published
                    .fetch_add(1, Ordering::Relaxed);
            }
        };
        loop {
            tokio::select! {
                c = commits.recv() => {
                    let Some(stored) = c else { return };
                    let mut touched = Vec::new();
                    for (lamp, fcnt) in stored {
                        if let Some(t) = by_lamp.get_mut(&lamp) {
                            if t.durable.is_none_or(|d| fcnt > d) {
                                t.durable = Some(fcnt);
                            }
                            touched.push(lamp);
                        }
                    }
                    touched.sort_unstable();
                    touched.dedup();
                    for lamp in touched {
                        publish(&by_lamp[&lamp]);
                    }
                }
                r = replays.recv() => {
                    let Some(eui) = r else { return };
                    if let Some(t) = by_eui.get(&eui).and_then(|l| by_lamp.get(l)) {
                        publish(t);
                    }
                }
            }
        }
    })
}
