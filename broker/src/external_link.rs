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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lamplighter_protocol::lorawan::{self, SessionKeys};
use lamplighter_protocol::payload::Command;
use lamplighter_protocol::{topics, DevAddr, DevEui, TenantId, UnixMs};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::bridge::MqttTarget;
use crate::external::{self, NetworkKind};
use crate::external_state::{DeviceState, ExternalState, StateError};

/// One tenant's external network, as configured (`[[external_networks]]` in the TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalNetwork {
    pub tenant: TenantId,
    pub kind: NetworkKind,
    /// The network's MQTT broker.
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// ChirpStack: the application ID (a UUID). The Things Stack: `{application}@{tenant}`
    /// as its MQTT topics spell it (`{application}` alone on a single-tenant deployment).
    pub application: String,
}

fn default_port() -> u16 {
    1883
}

impl ExternalNetwork {
    pub fn validate(&self) -> Result<(), String> {
        if self.host.trim().is_empty() {
            return Err(format!("external network of {}: empty host", self.tenant));
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || "-_.@".contains(c);
        if self.application.is_empty() || !self.application.chars().all(ok) {
            return Err(format!(
                "external network of {}: application {:?} must be letters, digits, '-', '_', '.' or '@'",
                self.tenant, self.application
            ));
        }
        Ok(())
    }
}

/// A node the external network carries: its identity and application session in our store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalDevice {
    pub dev_eui: DevEui,
    pub dev_addr: DevAddr,
    pub keys: SessionKeys,
}

/// Why a message was not passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("uplink event: {0}")]
    External(#[from] external::ExternalError),
    #[error("topic {0:?} is not one this link subscribed to")]
    Topic(String),
    #[error("DevEUI {0} is not a node of this tenant")]
    UnknownDevice(DevEui),
    #[error("the event's DevEUI {event} differs from its topic's {topic:?}")]
    TopicMismatch { event: DevEui, topic: String },
    #[error("downlink frame: {0}")]
    Frame(#[from] lorawan::FrameError),
    #[error("downlink frame for {0}, a DevAddr not of the node it was addressed to")]
    WrongDevAddr(DevAddr),
    #[error("downlink frame without FPort")]
    NoPort,
    #[error("FCnt {got} in this session is not after {last}: a replay")]
    Replay { last: u32, got: u32 },
    #[error("the session counter of {0} would pass 2^32")]
    CounterExhausted(DevEui),
}

impl LinkError {
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::External(e) => e.kind(),
            LinkError::Topic(_) => "topic",
            LinkError::UnknownDevice(_) => "unknown-device",
            LinkError::TopicMismatch { .. } => "topic-mismatch",
            LinkError::Frame(lorawan::FrameError::BadMic) => "bad-mic",
            LinkError::Frame(lorawan::FrameError::Replay { .. }) => "replay",
            LinkError::Frame(_) => "frame",
            LinkError::WrongDevAddr(_) => "wrong-devaddr",
            LinkError::NoPort => "no-port",
            LinkError::Replay { .. } => "replay",
            LinkError::CounterExhausted(_) => "counter-exhausted",
        }
    }
}

/// The reason as the controller's summary spells refusals at an external link
/// (`external-{kind}`), so they sit beside its own rejections by reason.
pub fn summary_reason(kind: &str) -> &'static str {
    match kind {
        "shape" => "external-shape",
        "deveui" => "external-deveui",
        "base64" => "external-base64",
        "no-port" => "external-no-port",
        "too-long" => "external-too-long",
        "topic" => "external-topic",
        "unknown-device" => "external-unknown-device",
        "topic-mismatch" => "external-topic-mismatch",
        "replay" => "external-replay",
        "counter-exhausted" => "external-counter-exhausted",
        _ => "external-other",
    }
}

/// An MQTT message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What the link counted. Every uplink event and every command frame heard ends in exactly
/// one count: `uplinks_passed + joins + sum(uplinks_refused)` events;
/// `downlinks_published + downlinks_superseded + downlinks_waiting + sum(downlinks_refused)`
/// frames.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkReport {
    pub tenant: String,
    pub uplinks_passed: u64,
    pub uplinks_refused: BTreeMap<&'static str, u64>,
    /// Join events: each started a new counter session for its device.
    pub joins: u64,
    /// Command frames from the controller accepted for the network.
    pub downlinks_passed: u64,
    pub downlinks_refused: BTreeMap<&'static str, u64>,
    /// Accepted command frames published to the network.
    pub downlinks_published: u64,
    /// Accepted command frames never published because a later one for the same lamp (and
    /// command kind) replaced them while they waited.
    pub downlinks_superseded: u64,
    /// Accepted command frames waiting: the network's broker is down, or (The Things Stack)
    /// the device's ID is not known yet.
    pub downlinks_waiting: u64,
    /// Connections made to the network's broker (1 while it never dropped).
    pub connections: u64,
    pub connected: bool,
}

/// Tunables of the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterOptions {
    /// ChirpStack's `expiresAt`: this long after the command is published.
    pub command_expiry_ms: u64,
}

/// A command outlives the controller's 5-minute refresh by a little: the next refresh
/// replaces it anyway, and a network never plays back a level older than this.
pub const DEFAULT_COMMAND_EXPIRY_MS: u64 = 6 * 60 * 1000;

impl Default for AdapterOptions {
    fn default() -> Self {
        AdapterOptions {
            command_expiry_ms: DEFAULT_COMMAND_EXPIRY_MS,
        }
    }
}

/// The deciding part of the link, sans-IO.
///
/// Uplinks: [`Self::handle_uplink`] returns the frame for the controller. Joins move the
/// device's counter window (see [`crate::external_state`]). Downlinks:
/// [`Self::handle_downlink`] checks the controller's frame and keeps it as the device's
/// latest command of its kind; [`Self::poll_downlink`] hands out what to publish while the
/// network's broker is up. State to store leaves through [`Self::poll_state`], to be written
/// before the frames that depend on it are passed on.
pub struct ExternalAdapter {
    network: ExternalNetwork,
    options: AdapterOptions,
    devices: HashMap<DevEui, ExternalDevice>,
    states: HashMap<DevEui, DeviceState>,
    /// Devices whose state changed since the last [`Self::poll_state`].
    dirty: BTreeSet<DevEui>,
    /// The latest command per device and command kind, not yet published.
    pending: BTreeMap<DevEui, BTreeMap<u8, external::Downlink>>,
    report: LinkReport,
}

/// Which commands supersede each other: the same kind for the same lamp.
fn command_kind(payload: &[u8]) -> u8 {
    match Command::decode(payload) {
        Ok(Command::SetLevel { .. }) => 1,
        Ok(Command::FailSafeProfile(_)) => 2,
        Err(_) => 0,
    }
}

impl ExternalAdapter {
    pub fn new(
        network: ExternalNetwork,
        devices: impl IntoIterator<Item = ExternalDevice>,
    ) -> Self {
        let report = LinkReport {
            tenant: network.tenant.to_string(),
            ..Default::default()
        };
        ExternalAdapter {
            devices: devices.into_iter().map(|d| (d.dev_eui, d)).collect(),
            options: AdapterOptions::default(),
            states: HashMap::new(),
            dirty: BTreeSet::new(),
            pending: BTreeMap::new(),
            network,
            report,
        }
    }

    /// Starts from stored state (device IDs, counter sessions).
    pub fn with_state(mut self, states: HashMap<DevEui, DeviceState>) -> Self {
        self.states = states;
        self
    }

    pub fn with_options(mut self, options: AdapterOptions) -> Self {
        self.options = options;
        self
    }

    pub fn tenant(&self) -> &TenantId {
        &self.network.tenant
    }

    /// The filters to subscribe to on the network's broker: uplinks and joins.
    pub fn uplink_filters(&self) -> [String; 2] {
        external::uplink_filters(self.network.kind, &self.network.application)
    }

    /// The filter to subscribe to on the embedded broker: this tenant's downlinks.
    pub fn downlink_filter(&self) -> String {
        format!("{}/{}/down/+", topics::ROOT, self.network.tenant)
    }

    pub fn report(&self) -> &LinkReport {
        &self.report
    }

    /// The broker connection came up (`true`) or dropped.
    pub fn handle_connection(&mut self, up: bool) {
        if up && !self.report.connected {
            self.report.connections += 1;
        }
        self.report.connected = up;
    }

    /// A device's state to store, once per change.
    pub fn poll_state(&mut self) -> Option<(DevEui, DeviceState)> {
        let dev_eui = self.dirty.pop_first()?;
        Some((
            dev_eui,
            self.states.get(&dev_eui).cloned().unwrap_or_default(),
        ))
    }

    /// An event from the network: the frame to publish for the controller (an uplink), or
    /// nothing (a join).
    pub fn handle_uplink(
        &mut self,
        topic: &str,
        json: &[u8],
    ) -> Result<Option<Publish>, LinkError> {
        let result = self.event(topic, json);
        match &result {
            Ok(Some(_)) => self.report.uplinks_passed += 1,
            Ok(None) => self.report.joins += 1,
            Err(e) => *self.report.uplinks_refused.entry(e.kind()).or_default() += 1,
        }
        result
    }

    fn event(&mut self, topic: &str, json: &[u8]) -> Result<Option<Publish>, LinkError> {
        let (device_id, event) =
            external::parse_event_topic(self.network.kind, &self.network.application, topic)
                .ok_or_else(|| LinkError::Topic(topic.chars().take(128).collect()))?;
        let dev_eui = match event {
            external::Event::Up => {
                let up = external::parse_uplink(self.network.kind, json)?;
                self.check_device(up.dev_eui, device_id, topic)?;
                let device = self.devices[&up.dev_eui];
                let state = self.states.entry(up.dev_eui).or_default();
                let fcnt = state
                    .fcnt_base
                    .checked_add(up.fcnt)
                    .ok_or(LinkError::CounterExhausted(up.dev_eui))?;
                if let Some(last) = state.last_fcnt_up.filter(|last| fcnt <= *last) {
                    return Err(LinkError::Replay { last, got: fcnt });
                }
                let phy = external::seal_uplink(&up, fcnt, device.dev_addr, &device.keys)?;
                state.last_fcnt_up = Some(fcnt);
                self.dirty.insert(up.dev_eui);
                self.learn_device_id(up.dev_eui, device_id);
                return Ok(Some(Publish {
                    topic: topics::uplink(&self.network.tenant, up.dev_eui),
                    payload: phy,
                }));
            }
            external::Event::Join => {
                let dev_eui = external::parse_join(self.network.kind, json)?;
                self.check_device(dev_eui, device_id, topic)?;
                dev_eui
            }
        };
        // A new session: the network counts from 0 again, so the window starts after the
        // last counter sealed. (A join without uplinks since the last one moves nothing.)
        let state = self.states.entry(dev_eui).or_default();
        if let Some(last) = state.last_fcnt_up {
            if last >= state.fcnt_base {
                state.fcnt_base = last
                    .checked_add(1)
                    .ok_or(LinkError::CounterExhausted(dev_eui))?;
            }
        }
        self.dirty.insert(dev_eui);
        self.learn_device_id(dev_eui, device_id);
        Ok(None)
    }

    fn check_device(&self, dev_eui: DevEui, device_id: &str, topic: &str) -> Result<(), LinkError> {
        if !self.devices.contains_key(&dev_eui) {
            return Err(LinkError::UnknownDevice(dev_eui));
        }
        if self.network.kind == NetworkKind::Chirpstack
            && !device_id.eq_ignore_ascii_case(&dev_eui.to_string())
        {
            return Err(LinkError::TopicMismatch {
                event: dev_eui,
                topic: topic.chars().take(128).collect(),
            });
        }
        Ok(())
    }

    fn learn_device_id(&mut self, dev_eui: DevEui, device_id: &str) {
        if self.network.kind != NetworkKind::Tts {
            return;
        }
        let state = self.states.entry(dev_eui).or_default();
        if state.device_id.as_deref() != Some(device_id) {
            state.device_id = Some(device_id.to_string());
            self.dirty.insert(dev_eui);
        }
    }

    /// The network's name for a device, if it can be addressed.
    fn network_device_id(&self, dev_eui: DevEui) -> Option<String> {
        match self.network.kind {
            NetworkKind::Chirpstack => Some(dev_eui.to_string().to_ascii_lowercase()),
            NetworkKind::Tts => self.states.get(&dev_eui)?.device_id.clone(),
        }
    }

    /// A command frame from the controller: checked, then kept as the device's latest
    /// command of its kind until [`Self::poll_downlink`] hands it out.
    pub fn handle_downlink(&mut self, topic: &str, phy: &[u8]) -> Result<(), LinkError> {
        let result = self.downlink(topic, phy);
        match &result {
            Ok(()) => self.report.downlinks_passed += 1,
            Err(e) => *self.report.downlinks_refused.entry(e.kind()).or_default() += 1,
        }
        result
    }

    fn downlink(&mut self, topic: &str, phy: &[u8]) -> Result<(), LinkError> {
        let bad_topic = || LinkError::Topic(topic.chars().take(128).collect());
        let prefix = format!("{}/{}/down/", topics::ROOT, self.network.tenant);
        let dev_eui: DevEui = topic
            .strip_prefix(&prefix)
            .and_then(|e| e.parse().ok())
            .ok_or_else(bad_topic)?;
        let device = *self
            .devices
            .get(&dev_eui)
            .ok_or(LinkError::UnknownDevice(dev_eui))?;
        let header = lorawan::peek_header(phy)?;
        if header.dev_addr != device.dev_addr {
            return Err(LinkError::WrongDevAddr(header.dev_addr));
        }
        let last = self.states.get(&dev_eui).and_then(|s| s.last_fcnt_down);
        let fcnt = lorawan::rebuild_fcnt(last, header.fcnt16)?;
        // Anyone on the embedded broker may publish; only the controller's sealed frames
        // leave for the network.
        let frame = lorawan::decode_data_frame(phy, &device.keys, fcnt)?;
        let fport = frame.fport.ok_or(LinkError::NoPort)?;
        self.states.entry(dev_eui).or_default().last_fcnt_down = Some(fcnt);
        self.dirty.insert(dev_eui);
        let kind = command_kind(&frame.frm_payload);
        let down = external::Downlink {
            fport,
            payload: frame.frm_payload,
        };
        if self
            .pending
            .entry(dev_eui)
            .or_default()
            .insert(kind, down)
            .is_some()
        {
            self.report.downlinks_superseded += 1;
        } else {
            self.report.downlinks_waiting += 1;
        }
        Ok(())
    }

    /// The next message to publish on the network's broker, if any device with waiting
    /// commands can be addressed. ChirpStack: one command, expiring
    /// [`AdapterOptions::command_expiry_ms`] after `now`. The Things Stack: every waiting
    /// command of the device in one `down/replace`.
    pub fn poll_downlink(&mut self, now: UnixMs) -> Option<Publish> {
        let (dev_eui, device_id) = self
            .pending
            .keys()
            .find_map(|&e| Some((e, self.network_device_id(e)?)))?;
        let kinds = self.pending.get_mut(&dev_eui)?;
        let (payload, published) = match self.network.kind {
            NetworkKind::Chirpstack => {
                let (_, down) = kinds.pop_first()?;
                let expires = external::rfc3339(now.plus_ms(self.options.command_expiry_ms));
                (
                    external::chirpstack_downlink_json(dev_eui, &down, &expires),
                    1,
                )
            }
            NetworkKind::Tts => {
                let downs: Vec<external::Downlink> = std::mem::take(kinds).into_values().collect();
                (external::tts_downlink_json(&downs), downs.len() as u64)
            }
        };
        if self.pending.get(&dev_eui).is_some_and(|k| k.is_empty()) {
            self.pending.remove(&dev_eui);
        }
        self.report.downlinks_published += published;
        self.report.downlinks_waiting -= published;
        Some(Publish {
            topic: external::downlink_topic(
                self.network.kind,
                &self.network.application,
                &device_id,
            ),
            payload: payload.into_bytes(),
        })
    }
}

/// What the link's tasks share.
struct Shared {
    tenant: TenantId,
    adapter: Mutex<ExternalAdapter>,
    state: Mutex<ExternalState>,
    /// Wakes the sender: a command is waiting, the broker is back, or a device ID is known.
    wake: tokio::sync::Notify,
}

impl Shared {
    fn adapter(&self) -> std::sync::MutexGuard<'_, ExternalAdapter> {
        self.adapter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes every changed device state; called before the frames that depend on it leave.
    fn store_state(&self) {
        while let Some((dev_eui, state)) = self.adapter().poll_state() {
            let store = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = store.save(&self.tenant, dev_eui, &state) {
                tracing::error!(tenant = %self.tenant, %dev_eui, error = %e, "cannot store an external device's state");
            }
        }
    }
}

/// A cheap handle on a running link's counters (for `/metrics` and the summary).
#[derive(Clone)]
pub struct LinkHandle(Arc<Shared>);

impl LinkHandle {
    pub fn report(&self) -> LinkReport {
        self.0.adapter().report().clone()
    }
}

/// A running link; [`ExternalLink::report`] reads its counters.
pub struct ExternalLink {
    handle: LinkHandle,
    /// The MQTT client ID on the network's broker.
    pub client_id: String,
    /// Set once the link listens for this tenant's downlinks on the embedded broker.
    downlinks_subscribed: Arc<AtomicBool>,
    /// Set once the link is subscribed to uplinks and joins on the network's broker.
    uplinks_subscribed: Arc<AtomicBool>,
    pub tasks: Vec<JoinHandle<()>>,
}

async fn wait_for(flag: &AtomicBool, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while !flag.load(Ordering::Acquire) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

impl ExternalLink {
    /// Waits (up to `timeout`) until the link hears the controller's downlinks: the system
    /// starts the controller after this, so its first commands are not published to no one.
    pub async fn wait_subscribed(&self, timeout: Duration) -> bool {
        wait_for(&self.downlinks_subscribed, timeout).await
    }

    /// Waits (up to `timeout`) until the link is subscribed on the network's broker.
    pub async fn wait_uplinks_subscribed(&self, timeout: Duration) -> bool {
        wait_for(&self.uplinks_subscribed, timeout).await
    }

    pub fn report(&self) -> LinkReport {
        self.handle.report()
    }

    pub fn handle(&self) -> LinkHandle {
        self.handle.clone()
    }
}

/// How a link runs beside the rest of the system.
pub struct LinkOptions {
    /// `external.sqlite` of the data directory.
    pub state: ExternalState,
    /// Set once the controller listens for uplinks on the embedded broker. The link reads
    /// the network's broker only then: its persistent session delivers what was published
    /// while we were away at once, and none of it may be published to no one.
    pub controller_listening: Arc<AtomicBool>,
    pub adapter: AdapterOptions,
}

/// Connects to the network's broker and to ours, and passes frames both ways until the
/// tasks are aborted. Lost connections are retried every second and logged once each.
///
/// On the network's broker the link keeps a persistent session (clean session off, QoS 1
/// both ways, acknowledged only once passed on) under a client ID that is the same after a
/// restart and different for each data directory: `lamplighter-{tenant}-{instance}`.
pub fn start(
    network: ExternalNetwork,
    devices: Vec<ExternalDevice>,
    ours: MqttTarget,
    options: LinkOptions,
) -> Result<ExternalLink, StateError> {
    let tenant = network.tenant.clone();
    let states = options.state.devices(&tenant)?;
    let client_id = format!("lamplighter-{tenant}-{}", options.state.instance_id()?);
    let mut theirs_options = MqttOptions::new(&client_id, network.host.clone(), network.port);
    if let Some(user) = &network.username {
        theirs_options.set_credentials(user, network.password.clone().unwrap_or_default());
    }
    theirs_options.set_keep_alive(Duration::from_secs(30));
    theirs_options.set_clean_session(false);
    theirs_options.set_manual_acks(true);
    let mut ours_options = MqttOptions::new(&ours.client_id, &ours.host, ours.port);
    ours_options.set_credentials(&ours.username, &ours.password);
    ours_options.set_keep_alive(Duration::from_secs(30));

    let adapter = ExternalAdapter::new(network, devices)
        .with_state(states)
        .with_options(options.adapter);
    let (up_filters, down_filter) = (adapter.uplink_filters(), adapter.downlink_filter());
    let shared = Arc::new(Shared {
        tenant: tenant.clone(),
        adapter: Mutex::new(adapter),
        state: Mutex::new(options.state),
        wake: tokio::sync::Notify::new(),
    });
    let (theirs, theirs_loop) = AsyncClient::new(theirs_options, 10_000);
    let (ours_client, ours_loop) = AsyncClient::new(ours_options, 10_000);
    let downlinks_subscribed = Arc::new(AtomicBool::new(false));
    let uplinks_subscribed = Arc::new(AtomicBool::new(false));
    let uplinks = tokio::spawn(uplink_pump(
        format!("{tenant}: network broker"),
        theirs_loop,
        theirs.clone(),
        up_filters,
        ours_client.clone(),
        shared.clone(),
        options.controller_listening,
        uplinks_subscribed.clone(),
    ));
    let downlinks = tokio::spawn(downlink_pump(
        format!("{tenant}: embedded broker"),
        ours_loop,
        ours_client,
        down_filter,
        shared.clone(),
        downlinks_subscribed.clone(),
    ));
    let sender = tokio::spawn(send_commands(
        format!("{tenant}: network broker"),
        theirs,
        shared.clone(),
    ));
    Ok(ExternalLink {
        handle: LinkHandle(shared),
        client_id,
        downlinks_subscribed,
        uplinks_subscribed,
        tasks: vec![uplinks, downlinks, sender],
    })
}

fn wall_clock() -> UnixMs {
    UnixMs(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// Reads the network's broker: uplinks and joins through the adapter to the embedded broker.
#[allow(clippy::too_many_arguments)]
async fn uplink_pump(
    name: String,
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    filters: [String; 2],
    to: AsyncClient,
    shared: Arc<Shared>,
    controller_listening: Arc<AtomicBool>,
    subscribed: Arc<AtomicBool>,
) {
    while !controller_listening.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut link_down_logged = false;
    let mut logged: HashSet<&'static str> = HashSet::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if link_down_logged {
                    tracing::info!(link = %name, session_present = ack.session_present, "external network link up again");
                }
                link_down_logged = false;
                shared.adapter().handle_connection(true);
                let filters = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(filters) {
                    tracing::error!(link = %name, error = %e, "cannot subscribe");
                }
                shared.wake.notify_one();
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                subscribed.store(true, Ordering::Release);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let result = shared.adapter().handle_uplink(&p.topic, &p.payload);
                // The counters this frame moved are stored before it leaves.
                shared.store_state();
                match result {
                    Ok(Some(out)) => {
                        if let Err(e) = to
                            .publish(out.topic, QoS::AtLeastOnce, false, out.payload)
                            .await
                        {
                            tracing::warn!(link = %name, error = %e, "cannot pass a message on");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if logged.insert(e.kind()) {
                            tracing::warn!(link = %name, error = %e, "message refused (further ones of this kind are counted, not logged)");
                        }
                    }
                }
                // Passed on (or refused for good): only now may the broker forget it.
                if let Err(e) = client.ack(&p).await {
                    tracing::warn!(link = %name, error = %e, "cannot acknowledge a message");
                }
                // A device ID learnt may let waiting commands go.
                shared.wake.notify_one();
            }
            Ok(_) => {}
            Err(e) => {
                shared.adapter().handle_connection(false);
                if !link_down_logged {
                    tracing::warn!(link = %name, error = %e, "external network link down; retrying");
                    link_down_logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Reads the embedded broker: the controller's command frames into the adapter.
async fn downlink_pump(
    name: String,
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    filter: String,
    shared: Arc<Shared>,
    subscribed: Arc<AtomicBool>,
) {
    let mut link_down_logged = false;
    let mut logged: HashSet<&'static str> = HashSet::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if link_down_logged {
                    tracing::info!(link = %name, "external network link up again");
                }
                link_down_logged = false;
                if let Err(e) = client.try_subscribe(&filter, QoS::AtLeastOnce) {
                    tracing::error!(link = %name, error = %e, "cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                subscribed.store(true, Ordering::Release);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let result = shared.adapter().handle_downlink(&p.topic, &p.payload);
                shared.store_state();
                match result {
                    Ok(()) => shared.wake.notify_one(),
                    Err(e) => {
                        if logged.insert(e.kind()) {
                            tracing::warn!(link = %name, error = %e, "message refused (further ones of this kind are counted, not logged)");
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                if !link_down_logged {
                    tracing::warn!(link = %name, error = %e, "external network link down; retrying");
                    link_down_logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Publishes waiting commands on the network's broker while it is connected: only the latest
/// per lamp, because commands wait in the adapter, not in the MQTT client's queue.
async fn send_commands(name: String, theirs: AsyncClient, shared: Arc<Shared>) {
    loop {
        shared.wake.notified().await;
        loop {
            let next = {
                let mut a = shared.adapter();
                if !a.report().connected {
                    break;
                }
                a.poll_downlink(wall_clock())
            };
            let Some(out) = next else { break };
            if let Err(e) = theirs
                .publish(out.topic, QoS::AtLeastOnce, false, out.payload)
                .await
            {
                tracing::warn!(link = %name, error = %e, "cannot publish a command");
            }
        }
    }
}

/// The links' counters in Prometheus text.
pub fn prometheus(reports: &[LinkReport]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in rows {
            out.push_str(&format!("{name}{{{labels}}} {v}\n"));
        }
    };
    let per_tenant = |f: &dyn Fn(&LinkReport) -> u64| -> Vec<(String, u64)> {
        reports
            .iter()
            .map(|r| (format!("tenant=\"{}\"", r.tenant), f(r)))
            .collect()
    };
    family(
        "lamplighter_external_refused_total",
        "counter",
        "Messages refused at an external network link, by tenant, direction and reason.",
        reports
            .iter()
            .flat_map(|r| {
                let up = r.uplinks_refused.iter().map(move |(k, n)| {
                    (
                        format!("tenant=\"{}\",direction=\"up\",reason=\"{k}\"", r.tenant),
                        *n,
                    )
                });
                let down = r.downlinks_refused.iter().map(move |(k, n)| {
                    (
                        format!("tenant=\"{}\",direction=\"down\",reason=\"{k}\"", r.tenant),
                        *n,
                    )
                });
                up.chain(down)
            })
            .collect(),
    );
    family(
        "lamplighter_external_uplinks_total",
        "counter",
        "Uplink events passed to the controller from an external network.",
        per_tenant(&|r| r.uplinks_passed),
    );
    family(
        "lamplighter_external_joins_total",
        "counter",
        "Join events from an external network (each starts a new counter session).",
        per_tenant(&|r| r.joins),
    );
    family(
        "lamplighter_external_commands_published_total",
        "counter",
        "Commands published to an external network.",
        per_tenant(&|r| r.downlinks_published),
    );
    family(
        "lamplighter_external_commands_superseded_total",
        "counter",
        "Commands replaced by a later one for the same lamp before they were published.",
        per_tenant(&|r| r.downlinks_superseded),
    );
    family(
        "lamplighter_external_commands_waiting",
        "gauge",
        "Commands waiting for the network's broker or for the device's ID on the network.",
        per_tenant(&|r| r.downlinks_waiting),
    );
    family(
        "lamplighter_external_connected",
        "gauge",
        "1 while the link is connected to the network's broker.",
        per_tenant(&|r| u64::from(r.connected)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use lamplighter_protocol::lorawan::{AesKey, DataFrame, FCtrl, MType};

    fn device() -> ExternalDevice {
        ExternalDevice {
            dev_eui: DevEui(0x0011_2233_4455_6677),
            dev_addr: DevAddr(0x0123_4567),
            keys: SessionKeys {
                nwk_s_key: AesKey([1; 16]),
                app_s_key: AesKey([2; 16]),
            },
        }
    }

    fn adapter(kind: NetworkKind, application: &str) -> ExternalAdapter {
        ExternalAdapter::new(
            ExternalNetwork {
                tenant: TenantId::new("town").unwrap(),
                kind,
                host: "localhost".into(),
                port: 1883,
                username: None,
                password: None,
                application: application.into(),
            },
            [device()],
        )
    }

    fn command_frame(fcnt: u32, keys: &SessionKeys) -> Vec<u8> {
        lorawan::encode_data_frame(
            &DataFrame {
                mtype: MType::UnconfirmedDataDown,
                dev_addr: device().dev_addr,
                fctrl: FCtrl::default(),
                fcnt,
                fopts: vec![],
                fport: Some(11),
                frm_payload: vec![9, 8, 7],
            },
            keys,
        )
        .unwrap()
    }

    #[test]
    fn chirpstack_both_ways() {
        let mut a = adapter(NetworkKind::Chirpstack, "app-1");
        let json =
            br#"{"deviceInfo":{"devEui":"0011223344556677"},"fCnt":5,"fPort":10,"data":"AQID"}"#;
        let out = a
            .handle_uplink("application/app-1/device/0011223344556677/event/up", json)
            .unwrap()
            .unwrap();
        assert_eq!(out.topic, "lamplighter/town/up/0011223344556677");
        let frame = lorawan::decode_data_frame(&out.payload, &device().keys, 5).unwrap();
        assert_eq!((frame.fport, frame.frm_payload), (Some(10), vec![1, 2, 3]));

        let down_topic = "lamplighter/town/down/0011223344556677";
        a.handle_downlink(down_topic, &command_frame(3, &device().keys))
            .unwrap();
        // Nothing leaves while the broker is down... (the runtime asks only when connected;
        // the adapter hands out whatever waits)
        let down = a.poll_downlink(UnixMs(1_734_818_400_000)).unwrap();
        assert!(a.poll_downlink(UnixMs(1_734_818_400_000)).is_none());
        assert_eq!(
            down.topic,
            "application/app-1/device/0011223344556677/command/down"
        );
        let v: serde_json::Value = serde_json::from_slice(&down.payload).unwrap();
        assert_eq!(v["fPort"], 11);
        // 2024-12-21 22:00 UTC plus the default expiry of 6 minutes.
        assert_eq!(v["expiresAt"], "2024-12-21T22:06:00Z");
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, vec![9, 8, 7]);
        // The same frame again is a replay; a forged one has a bad MIC.
        let again = a.handle_downlink(down_topic, &command_frame(3, &device().keys));
        assert_eq!(again.unwrap_err().kind(), "replay");
        let forged = SessionKeys {
            nwk_s_key: AesKey([7; 16]),
            app_s_key: AesKey([7; 16]),
        };
        let bad = a.handle_downlink(down_topic, &command_frame(4, &forged));
        assert_eq!(bad.unwrap_err().kind(), "bad-mic");
        let r = a.report();
        assert_eq!((r.downlinks_passed, r.downlinks_published), (1, 1));
        assert_eq!(r.uplinks_passed, 1);
    }

    #[test]
    fn only_the_latest_command_per_lamp_is_published() {
        let mut a = adapter(NetworkKind::Chirpstack, "app-1");
        let down_topic = "lamplighter/town/down/0011223344556677";
        for (fcnt, level) in [(1, 10u8), (2, 20), (3, 30)] {
            let frame = lorawan::encode_data_frame(
                &DataFrame {
                    mtype: MType::UnconfirmedDataDown,
                    dev_addr: device().dev_addr,
                    fctrl: FCtrl::default(),
                    fcnt,
                    fopts: vec![],
                    fport: Some(11),
                    frm_payload: Command::SetLevel {
                        level_pct: level,
                        ramp_ms: 0,
                        hold_s: 0,
                    }
                    .encode()
                    .unwrap(),
                },
                &device().keys,
            )
            .unwrap();
            a.handle_downlink(down_topic, &frame).unwrap();
        }
        let out = a.poll_downlink(UnixMs(0)).unwrap();
        assert!(a.poll_downlink(UnixMs(0)).is_none());
        let v: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().unwrap())
            .unwrap();
        assert!(matches!(
            Command::decode(&data).unwrap(),
            Command::SetLevel { level_pct: 30, .. }
        ));
        let r = a.report();
        assert_eq!(
            (
                r.downlinks_passed,
                r.downlinks_superseded,
                r.downlinks_published,
                r.downlinks_waiting
            ),
            (3, 2, 1, 0)
        );
    }

    #[test]
    fn a_join_starts_a_new_counter_session_and_replays_stay_refused() {
        let mut a = adapter(NetworkKind::Chirpstack, "app-1");
        let up = "application/app-1/device/0011223344556677/event/up";
        let join = "application/app-1/device/0011223344556677/event/join";
        let uplink = |fcnt: u32| {
            format!(
                r#"{{"deviceInfo":{{"devEui":"0011223344556677"}},"fCnt":{fcnt},"fPort":10,"data":"AQID"}}"#
            )
        };
        let sealed = |out: Publish| lorawan::peek_header(&out.payload).unwrap().fcnt16;
        for fcnt in 0..=10 {
            a.handle_uplink(up, uplink(fcnt).as_bytes()).unwrap();
        }
        // Inside the session, a lower or equal counter is a replay.
        let replay = a.handle_uplink(up, uplink(10).as_bytes()).unwrap_err();
        assert_eq!(replay.kind(), "replay");
        let join_json = br#"{"deviceInfo":{"devEui":"0011223344556677"},"devAddr":"01020304"}"#;
        assert_eq!(a.handle_uplink(join, join_json).unwrap(), None);
        // A second join before any uplink moves nothing.
        assert_eq!(a.handle_uplink(join, join_json).unwrap(), None);
        // The network counts from 0 again; the controller sees 11, 12, ...
        let out = a.handle_uplink(up, uplink(0).as_bytes()).unwrap().unwrap();
        assert_eq!(sealed(out.clone()), 11);
        lorawan::decode_data_frame(&out.payload, &device().keys, 11).unwrap();
        assert_eq!(
            sealed(a.handle_uplink(up, uplink(1).as_bytes()).unwrap().unwrap()),
            12
        );
        assert_eq!(
            a.handle_uplink(up, uplink(0).as_bytes())
                .unwrap_err()
                .kind(),
            "replay"
        );
        // The state to store: base 11, last 12.
        let (eui, state) = a.poll_state().unwrap();
        assert_eq!(eui, device().dev_eui);
        assert_eq!((state.fcnt_base, state.last_fcnt_up), (11, Some(12)));
        assert!(a.poll_state().is_none());
        // A restart from that state goes on where it was.
        let mut b =
            adapter(NetworkKind::Chirpstack, "app-1").with_state(HashMap::from([(eui, state)]));
        assert_eq!(
            b.handle_uplink(up, uplink(1).as_bytes())
                .unwrap_err()
                .kind(),
            "replay"
        );
        assert_eq!(
            sealed(b.handle_uplink(up, uplink(2).as_bytes()).unwrap().unwrap()),
            13
        );
        let r = a.report();
        assert_eq!((r.uplinks_passed, r.joins), (13, 2));
        assert_eq!(r.uplinks_refused.get("replay"), Some(&2));
    }

    #[test]
    fn tts_keeps_commands_until_the_device_id_is_known() {
        let mut a = adapter(NetworkKind::Tts, "lights@council");
        let down_topic = "lamplighter/town/down/0011223344556677";
        a.handle_downlink(down_topic, &command_frame(1, &device().keys))
            .unwrap();
        a.handle_downlink(down_topic, &command_frame(2, &device().keys))
            .unwrap();
        assert!(a.poll_downlink(UnixMs(0)).is_none());
        assert_eq!(a.report().downlinks_waiting, 1);
        let json = br#"{"end_device_ids":{"device_id":"lamp-17","dev_eui":"0011223344556677"},
            "uplink_message":{"f_port":10,"f_cnt":2,"frm_payload":"AQID"}}"#;
        a.handle_uplink("v3/lights@council/devices/lamp-17/up", json)
            .unwrap();
        let down = a.poll_downlink(UnixMs(0)).unwrap();
        assert_eq!(down.topic, "v3/lights@council/devices/lamp-17/down/replace");
        let v: serde_json::Value = serde_json::from_slice(&down.payload).unwrap();
        assert_eq!(v["downlinks"].as_array().unwrap().len(), 1);
        // The device ID is state to store.
        let (_, state) = a.poll_state().unwrap();
        assert_eq!(state.device_id.as_deref(), Some("lamp-17"));
        // Set at provisioning (stored), it addresses commands before any uplink.
        let mut b = adapter(NetworkKind::Tts, "lights@council").with_state(HashMap::from([(
            device().dev_eui,
            DeviceState {
                device_id: Some("lamp-17".into()),
                ..Default::default()
            },
        )]));
        b.handle_downlink(down_topic, &command_frame(1, &device().keys))
            .unwrap();
        assert!(b.poll_downlink(UnixMs(0)).is_some());
    }

    #[test]
    fn refusals_are_typed_and_counted() {
        let mut a = adapter(NetworkKind::Chirpstack, "app-1");
        let up = "application/app-1/device/0011223344556677/event/up";
        for (topic, json, kind) in [
            ("application/other/device/x/event/up", &b"{}"[..], "topic"),
            (up, b"not json", "shape"),
            (
                up,
                br#"{"deviceInfo":{"devEui":"8899aabbccddeeff"},"fPort":10,"data":"AQ=="}"#,
                "unknown-device",
            ),
            (
                "application/app-1/device/8899aabbccddeeff/event/up",
                br#"{"deviceInfo":{"devEui":"0011223344556677"},"fPort":10,"data":"AQ=="}"#,
                "topic-mismatch",
            ),
            (
                "application/app-1/device/0011223344556677/event/join",
                br#"{"deviceInfo":{}}"#,
                "shape",
            ),
        ] {
            assert_eq!(a.handle_uplink(topic, json).unwrap_err().kind(), kind);
        }
        assert_eq!(
            a.handle_downlink("lamplighter/town/down/zz", &[0x60])
                .unwrap_err()
                .kind(),
            "topic"
        );
        assert_eq!(
            a.handle_downlink("lamplighter/town/down/0011223344556677", &[0x60, 1])
                .unwrap_err()
                .kind(),
            "frame"
        );
        assert_eq!(a.report().uplinks_refused.values().sum::<u64>(), 5);
        assert_eq!(a.report().downlinks_refused.values().sum::<u64>(), 2);
        let text = prometheus(&[a.report().clone()]);
        assert!(text.contains(
            "lamplighter_external_refused_total{tenant=\"town\",direction=\"up\",reason=\"shape\"} 2"
        ));
        assert_eq!(summary_reason("unknown-device"), "external-unknown-device");
    }
}
