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
//!
//! Faults: every accepted reading and every tick also go to the [`FaultTracker`] (its own
//! mutex, never held together with the core's), restored at start from the faults the store
//! held open. Its events, and operators' acknowledgements and clears, are logged and
//! written through the store's writer (sent while the tracker's lock is held, so the store
//! sees them in the order they happened).

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

use crate::core::{ControllerCore, Event, LampView, Summary, ZoneView};
use crate::faults::{
    Fault, FaultCounts, FaultError, FaultEvent, FaultId, FaultTracker, LampInfo, ReportContext,
};
use crate::store::{Committed, StoreWriter};

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
    faults: Mutex<FaultTracker>,
    /// For operators' fault actions. Taken out when the deciding task ends, so that the
    /// store's writer thread can finish ([`crate::store::StoreThread::join`]) while handles
    /// are still around.
    store: Mutex<Option<StoreWriter>>,
}

/// Takes the store's writer out of [`Shared`] when dropped (with the deciding task).
struct ReleaseStore(Arc<Shared>);

impl Drop for ReleaseStore {
    fn drop(&mut self) {
        self.0
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
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
    fn fault_tracker(&self) -> MutexGuard<'_, FaultTracker> {
        self.shared.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Faults not yet cleared (open and acknowledged), of one tenant or all, newest first.
    /// Cleared ones are in the store: [`crate::store::Store::recent_faults`].
    pub fn faults(&self, tenant: Option<&TenantId>) -> Vec<Fault> {
        self.fault_tracker().faults(tenant)
    }
    /// Faults open and acknowledged, by kind, for the front page.
    pub fn fault_counts(&self, tenant: Option<&TenantId>) -> FaultCounts {
        self.fault_tracker().counts(tenant)
    }
    /// `user` has seen fault `id` (`note`: why, or what happens next). With `tenant`, a
    /// fault of another tenant is [`FaultError::NotOpen`], as if it did not exist. Logged
    /// and stored (the audit export lists it).
    pub fn acknowledge_fault(
        &self,
        tenant: Option<&TenantId>,
        id: FaultId,
        user: &str,
        note: &str,
        now: UnixMs,
    ) -> Result<Fault, FaultError> {
        self.fault_action(tenant, id, |t| t.acknowledge(id, user, note, now))
    }
    /// `user` clears fault `id` by hand (`note`: why). Same rules as
    /// [`ControllerHandle::acknowledge_fault`].
    pub fn clear_fault(
        &self,
        tenant: Option<&TenantId>,
        id: FaultId,
        user: &str,
        note: &str,
        now: UnixMs,
    ) -> Result<Fault, FaultError> {
        self.fault_action(tenant, id, |t| t.clear(id, user, note, now))
    }
    fn fault_action(
        &self,
        tenant: Option<&TenantId>,
        id: FaultId,
        act: impl FnOnce(&mut FaultTracker) -> Result<Fault, FaultError>,
    ) -> Result<Fault, FaultError> {
        let mut tracker = self.fault_tracker();
        let visible = tracker
            .fault(id)
            .is_some_and(|f| f.tenant.visible_to(tenant));
        if !visible {
            return Err(FaultError::NotOpen(id));
        }
        let fault = act(&mut tracker)?;
        let store = self
            .shared
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match store {
            Some(store) => drain_faults(&mut tracker, &store),
            None => tracing::error!(
                id = id.0,
                "the controller has stopped; fault action not stored"
            ),
        }
        Ok(fault)
    }
    /// The deployment's time zone (`[controller.policy] time_zone`): where its days start,
    /// for the energy figures and the half-hourly export.
    pub fn time_zone(&self) -> lamplighter_protocol::local_time::TimeZone {
        self.core().config().policy.time_zone
    }
    /// What a kWh costs (`[controller.tariff]`).
    pub fn tariff(&self) -> crate::tariff::Tariff {
        self.core().config().tariff
    }
    /// Today, this week and this month of `tenant`, now, in the deployment's days and
    /// tariff, read from `store` (the caller's own connection, e.g.
    /// [`crate::store::Store::open_read_only`]; readers never block the writer).
    pub fn energy_summary(
        &self,
        store: &crate::store::Store,
        tenant: &TenantId,
    ) -> Result<crate::store::EnergySummary, crate::store::EnergyError> {
        let (time_zone, tariff) = {
            let core = self.core();
            (core.config().policy.time_zone, core.config().tariff)
        };
        store.energy_summary(tenant, self.now(), time_zone, &tariff)
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
        let faults = self.fault_counts(None);
        out.push_str("# HELP lamplighter_faults Faults not cleared, by kind and state.\n# TYPE lamplighter_faults gauge\n");
        for (kind, c) in &faults.by_kind {
            for (state, n) in [("open", c.open), ("acknowledged", c.acknowledged)] {
                out.push_str(&format!(
                    "lamplighter_faults{{kind=\"{kind}\",state=\"{state}\"}} {n}\n"
                ));
            }
        }
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
    let faults = fault_tracker(&core, &store, clock.now());
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        clock,
        metrics: ServiceMetrics::default(),
        faults: Mutex::new(faults),
        store: Mutex::new(Some(store.clone())),
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
        // Moved into the task, so dropped with it even if it never ran.
        let release = ReleaseStore(handle.shared.clone());
        tokio::spawn(async move {
            let _release = release;
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
                let mut observed = Vec::new();
                let now = handle.now();
                {
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
                        match core.downlink(&c) {
                            Ok(wire) => pending.push_back(wire),
                            // Only a command the core itself could not encode: a bug, said
                            // once per kind rather than per lamp.
                            Err(e) => {
                                if logged_kinds.insert("seal") {
                                    tracing::error!(lamp = %c.lamp, error = %e, "command not sealed");
                                }
                            }
                        }
                    }
                    while let Some(e) = core.poll_event() {
                        if let Event::Reading {
                            lamp,
                            received,
                            report,
                            ..
                        } = &e
                        {
                            if let Some(o) = observation(&core, *lamp, *received, report) {
                                observed.push(o);
                            }
                        }
                        events.push(e);
                    }
                }
                {
                    let mut tracker = handle.fault_tracker();
                    for (info, at, report, context) in &observed {
                        tracker.handle_report(*at, info, report, *context);
                    }
                    if ticked {
                        tracker.handle_tick(now);
                    }
                    drain_faults(&mut tracker, &store);
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

/// How often the zones' forecaster state is saved with the store (and once more when the
/// system shuts down): a crash loses at most this much of what they learnt.
pub const FORECASTS_SAVED_EVERY: Duration = Duration::from_secs(300);

/// Saves the zones' forecasters now.
pub fn save_forecasters(handle: &ControllerHandle, store: &Mutex<crate::store::ForecastStore>) {
    let (states, now) = handle.with_core(|core, now| (core.forecaster_states(), now));
    let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = store.save(&states, now) {
        tracing::error!(error = %e, "cannot save the forecasters' state");
    }
}

/// Saves the zones' forecasters every `every` until aborted.
pub fn spawn_forecast_saver(
    handle: ControllerHandle,
    store: Arc<Mutex<crate::store::ForecastStore>>,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let (h, s) = (handle.clone(), store.clone());
            let _ = tokio::task::spawn_blocking(move || save_forecasters(&h, &s)).await;
        }
    })
}

/// The fault tracker for this core, restored from what the store held open.
fn fault_tracker(core: &ControllerCore, store: &StoreWriter, now: UnixMs) -> FaultTracker {
    let config = core.config();
    // The core validated its config, faults included; the fallback is for the impossible.
    let mut tracker = FaultTracker::new(config.faults.clone(), config.report_interval_s)
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "fault configuration refused; using the defaults");
            FaultTracker::default()
        });
    for l in core.lamps(now, None) {
        tracker.watch(
            now,
            LampInfo {
                lamp: l.lamp,
                tenant: l.tenant,
                dev_eui: l.dev_eui,
            },
        );
    }
    let at_start = store.faults_at_start();
    tracker.restore(now, at_start.open.clone(), at_start.next_id);
    tracker
}

/// What the fault tracker needs to know about an accepted reading: the lamp, when the
/// reading arrived, the report, and whether it was day at the lamp when the reading was
/// taken (the node's clock, unless it is implausible: buffered readings arrive late, and
/// day-burning must be judged at the time they describe) and whether an override held it.
fn observation(
    core: &ControllerCore,
    lamp: LampId,
    received: UnixMs,
    report: &lamplighter_protocol::payload::StatusReport,
) -> Option<(
    LampInfo,
    UnixMs,
    lamplighter_protocol::payload::StatusReport,
    ReportContext,
)> {
    let node = core.node(lamp)?;
    let taken = UnixMs::from_secs(report.reading_time_s as u64);
    let plausible = taken <= received.plus_ms(300_000) && received.since(taken) <= 2 * 86_400_000;
    let at = if plausible { taken } else { received };
    let context = ReportContext {
        daylight: !lamplighter_protocol::sun::is_dark(node.lat, node.lon, at),
        override_active: core.override_active(lamp, at),
    };
    let info = LampInfo {
        lamp,
        tenant: node.tenant.clone(),
        dev_eui: node.dev_eui,
    };
    Some((info, received, *report, context))
}

/// Logs the tracker's events and sends them to the store (call with the tracker locked).
fn drain_faults(tracker: &mut FaultTracker, store: &StoreWriter) {
    let mut out = Vec::new();
    while let Some(e) = tracker.poll_event() {
        match &e {
            FaultEvent::Raised(f) => tracing::warn!(
                id = f.id.0, tenant = %f.tenant, lamp = f.lamp.0, dev_eui = %f.dev_eui,
                kind = %f.kind, detail = %f.detail, "fault raised"
            ),
            FaultEvent::Acknowledged { id, action } => tracing::info!(
                id = id.0, by = action.by.as_deref().unwrap_or("controller"),
                at_ms = action.at.0, note = %action.note, "fault acknowledged"
            ),
            FaultEvent::Cleared { id, action } => tracing::info!(
                id = id.0, by = action.by.as_deref().unwrap_or("controller"),
                at_ms = action.at.0, note = %action.note, "fault cleared"
            ),
        }
        out.push(e);
    }
    store.write_faults(out);
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
                        topic: topics::ack(&n.tenant, n.dev_eui),
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
