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

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{topics, TenantId, UnixMs};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::core::{ControllerCore, LampView, Summary, ZoneView};
use crate::store::StoreWriter;

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub mqtt_host: String,
    pub mqtt_port: u16,
    pub mqtt_client_id: String,
    pub mqtt_username: String,
    pub mqtt_password: String,
    /// How often, in real time, every lamp is re-decided.
    pub tick_interval: Duration,
}

/// Counters of the service around the core.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    pub mqtt_messages: AtomicU64,
    pub commands_published: AtomicU64,
    /// Commands that waited because the MQTT client's queue was full.
    pub commands_deferred: AtomicU64,
    pub mqtt_disconnects: AtomicU64,
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

    let net = {
        let handle = handle.clone();
        let client = client.clone();
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
                            if logged_kinds.insert(r.kind()) {
                                tracing::warn!(reason = %r, %topic, "uplink rejected (further rejections of this kind are counted, not logged)");
                            }
                        }
                    }
                    if ticked {
                        core.handle_tick(now);
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
    (handle, vec![net, decide])
}
