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
//! ([`LinkReport`]) and logged once per reason; nothing from either broker ends the loop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lamplighter_protocol::lorawan::{self, SessionKeys};
use lamplighter_protocol::{topics, DevAddr, DevEui, TenantId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::bridge::MqttTarget;
use crate::external::{self, NetworkKind};

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
    #[error("no uplink seen yet from {0}: its device ID on the network is unknown")]
    NoDeviceId(DevEui),
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
            LinkError::NoDeviceId(_) => "no-device-id",
        }
    }
}

/// An MQTT message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What the link counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkReport {
    pub tenant: String,
    pub uplinks_passed: u64,
    pub uplinks_refused: BTreeMap<&'static str, u64>,
    pub downlinks_passed: u64,
    pub downlinks_refused: BTreeMap<&'static str, u64>,
}

/// The deciding part of the link, sans-IO.
pub struct ExternalAdapter {
    network: ExternalNetwork,
    devices: HashMap<DevEui, ExternalDevice>,
    /// The network's own device IDs, learnt from uplink topics (The Things Stack names
    /// devices freely; ChirpStack by DevEUI).
    device_ids: HashMap<DevEui, String>,
    last_fcnt_down: HashMap<DevEui, u32>,
    report: LinkReport,
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
            device_ids: HashMap::new(),
            last_fcnt_down: HashMap::new(),
            network,
            report,
        }
    }

    /// The filter to subscribe to on the network's broker.
    pub fn uplink_filter(&self) -> String {
        external::uplink_filter(self.network.kind, &self.network.application)
    }

    /// The filter to subscribe to on the embedded broker: this tenant's downlinks.
    pub fn downlink_filter(&self) -> String {
        format!("{}/{}/down/+", topics::ROOT, self.network.tenant)
    }

    pub fn report(&self) -> &LinkReport {
        &self.report
    }

    /// An uplink event from the network: the frame to publish for the controller.
    pub fn handle_uplink(&mut self, topic: &str, json: &[u8]) -> Result<Publish, LinkError> {
        let result = self.uplink(topic, json);
        match &result {
            Ok(_) => self.report.uplinks_passed += 1,
            Err(e) => *self.report.uplinks_refused.entry(e.kind()).or_default() += 1,
        }
        result
    }

    fn uplink(&mut self, topic: &str, json: &[u8]) -> Result<Publish, LinkError> {
        let device_id = self.device_id_in(topic)?;
        let up = external::parse_uplink(self.network.kind, json)?;
        let device = *self
            .devices
            .get(&up.dev_eui)
            .ok_or(LinkError::UnknownDevice(up.dev_eui))?;
        if self.network.kind == NetworkKind::Chirpstack
            && !device_id.eq_ignore_ascii_case(&up.dev_eui.to_string())
        {
            return Err(LinkError::TopicMismatch {
                event: up.dev_eui,
                topic: topic.chars().take(128).collect(),
            });
        }
        let phy = external::seal_uplink(&up, device.dev_addr, &device.keys)?;
        self.device_ids.insert(up.dev_eui, device_id.to_string());
        Ok(Publish {
            topic: topics::uplink(&self.network.tenant, up.dev_eui),
            payload: phy,
        })
    }

    /// `application/{app}/device/{id}/event/up` or `v3/{app}/devices/{id}/up`: the `{id}`.
    fn device_id_in<'t>(&self, topic: &'t str) -> Result<&'t str, LinkError> {
        let parts: Vec<&str> = topic.split('/').collect();
        let app = self.network.application.as_str();
        let id = match (self.network.kind, parts.as_slice()) {
            (NetworkKind::Chirpstack, ["application", a, "device", id, "event", "up"])
                if *a == app =>
            {
                id
            }
            (NetworkKind::Tts, ["v3", a, "devices", id, "up"]) if *a == app => id,
            _ => return Err(LinkError::Topic(topic.chars().take(128).collect())),
        };
        Ok(id)
    }

    /// A command frame from the controller: the network's downlink message.
    pub fn handle_downlink(&mut self, topic: &str, phy: &[u8]) -> Result<Publish, LinkError> {
        let result = self.downlink(topic, phy);
        match &result {
            Ok(_) => self.report.downlinks_passed += 1,
            Err(e) => *self.report.downlinks_refused.entry(e.kind()).or_default() += 1,
        }
        result
    }

    fn downlink(&mut self, topic: &str, phy: &[u8]) -> Result<Publish, LinkError> {
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
        let fcnt =
            lorawan::rebuild_fcnt(self.last_fcnt_down.get(&dev_eui).copied(), header.fcnt16)?;
        // Anyone on the embedded broker may publish; only the controller's sealed frames
        // leave for the network.
        let frame = lorawan::decode_data_frame(phy, &device.keys, fcnt)?;
        let fport = frame.fport.ok_or(LinkError::NoPort)?;
        let device_id = match self.network.kind {
            NetworkKind::Chirpstack => dev_eui.to_string().to_ascii_lowercase(),
            NetworkKind::Tts => self
                .device_ids
                .get(&dev_eui)
                .cloned()
                .ok_or(LinkError::NoDeviceId(dev_eui))?,
        };
        self.last_fcnt_down.insert(dev_eui, fcnt);
        Ok(Publish {
            topic: external::downlink_topic(
                self.network.kind,
                &self.network.application,
                &device_id,
            ),
            payload: external::downlink_json(self.network.kind, dev_eui, fport, &frame.frm_payload)
                .into_bytes(),
        })
    }
}

/// A running link; [`ExternalLink::report`] reads its counters.
pub struct ExternalLink {
    adapter: Arc<Mutex<ExternalAdapter>>,
    /// Set once the link listens for this tenant's downlinks on the embedded broker.
    downlinks_subscribed: Arc<std::sync::atomic::AtomicBool>,
    pub tasks: Vec<JoinHandle<()>>,
}

impl ExternalLink {
    /// Waits (up to `timeout`) until the link hears the controller's downlinks: the system
    /// starts the controller after this, so its first commands are not published to no one.
    pub async fn wait_subscribed(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self
            .downlinks_subscribed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    pub fn report(&self) -> LinkReport {
        self.adapter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report()
            .clone()
    }
}

/// Connects to the network's broker and to ours, and passes frames both ways until the
/// tasks are aborted. Lost connections are retried every second and logged once each.
pub fn start(
    network: ExternalNetwork,
    devices: Vec<ExternalDevice>,
    ours: MqttTarget,
) -> ExternalLink {
    let tenant = network.tenant.clone();
    let mut theirs_options = MqttOptions::new(
        format!("lamplighter-{tenant}"),
        network.host.clone(),
        network.port,
    );
    if let Some(user) = &network.username {
        theirs_options.set_credentials(user, network.password.clone().unwrap_or_default());
    }
    theirs_options.set_keep_alive(Duration::from_secs(30));
    let mut ours_options = MqttOptions::new(&ours.client_id, &ours.host, ours.port);
    ours_options.set_credentials(&ours.username, &ours.password);
    ours_options.set_keep_alive(Duration::from_secs(30));

    let adapter = Arc::new(Mutex::new(ExternalAdapter::new(network, devices)));
    let (theirs, theirs_loop) = AsyncClient::new(theirs_options, 10_000);
    let (ours_client, ours_loop) = AsyncClient::new(ours_options, 10_000);
    let (up_filter, down_filter) = {
        let a = adapter.lock().unwrap_or_else(|p| p.into_inner());
        (a.uplink_filter(), a.downlink_filter())
    };
    let downlinks_subscribed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let uplinks = tokio::spawn(pump(
        format!("{tenant}: network broker"),
        theirs_loop,
        theirs.clone(),
        up_filter,
        ours_client.clone(),
        adapter.clone(),
        Direction::Up,
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    ));
    let downlinks = tokio::spawn(pump(
        format!("{tenant}: embedded broker"),
        ours_loop,
        ours_client,
        down_filter,
        theirs,
        adapter.clone(),
        Direction::Down,
        downlinks_subscribed.clone(),
    ));
    ExternalLink {
        adapter,
        downlinks_subscribed,
        tasks: vec![uplinks, downlinks],
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// Reads one broker, passes what it hears through the adapter, publishes on the other.
#[allow(clippy::too_many_arguments)]
async fn pump(
    name: String,
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    filter: String,
    to: AsyncClient,
    adapter: Arc<Mutex<ExternalAdapter>>,
    direction: Direction,
    subscribed: Arc<std::sync::atomic::AtomicBool>,
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
                subscribed.store(true, std::sync::atomic::Ordering::Release);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let result = {
                    let mut a = adapter.lock().unwrap_or_else(|p| p.into_inner());
                    match direction {
                        Direction::Up => a.handle_uplink(&p.topic, &p.payload),
                        Direction::Down => a.handle_downlink(&p.topic, &p.payload),
                    }
                };
                match result {
                    Ok(out) => {
                        if let Err(e) = to
                            .publish(out.topic, QoS::AtLeastOnce, false, out.payload)
                            .await
                        {
                            tracing::warn!(link = %name, error = %e, "cannot pass a message on");
                        }
                    }
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
            .unwrap();
        assert_eq!(out.topic, "lamplighter/town/up/0011223344556677");
        let frame = lorawan::decode_data_frame(&out.payload, &device().keys, 5).unwrap();
        assert_eq!((frame.fport, frame.frm_payload), (Some(10), vec![1, 2, 3]));

        let down = a
            .handle_downlink(
                "lamplighter/town/down/0011223344556677",
                &command_frame(3, &device().keys),
            )
            .unwrap();
        assert_eq!(
            down.topic,
            "application/app-1/device/0011223344556677/command/down"
        );
        let v: serde_json::Value = serde_json::from_slice(&down.payload).unwrap();
        assert_eq!(v["fPort"], 11);
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, vec![9, 8, 7]);
        // The same frame again is a replay; a forged one has a bad MIC.
        let again = a.handle_downlink(
            "lamplighter/town/down/0011223344556677",
            &command_frame(3, &device().keys),
        );
        assert_eq!(again.unwrap_err().kind(), "replay");
        let forged = SessionKeys {
            nwk_s_key: AesKey([7; 16]),
            app_s_key: AesKey([7; 16]),
        };
        let bad = a.handle_downlink(
            "lamplighter/town/down/0011223344556677",
            &command_frame(4, &forged),
        );
        assert_eq!(bad.unwrap_err().kind(), "bad-mic");
        assert_eq!(a.report().downlinks_passed, 1);
        assert_eq!(a.report().uplinks_passed, 1);
    }

    #[test]
    fn tts_learns_device_ids_from_uplinks() {
        let mut a = adapter(NetworkKind::Tts, "lights@council");
        let down = a.handle_downlink(
            "lamplighter/town/down/0011223344556677",
            &command_frame(1, &device().keys),
        );
        assert_eq!(down.unwrap_err().kind(), "no-device-id");
        let json = br#"{"end_device_ids":{"device_id":"lamp-17","dev_eui":"0011223344556677"},
            "uplink_message":{"f_port":10,"f_cnt":2,"frm_payload":"AQID"}}"#;
        a.handle_uplink("v3/lights@council/devices/lamp-17/up", json)
            .unwrap();
        let down = a
            .handle_downlink(
                "lamplighter/town/down/0011223344556677",
                &command_frame(1, &device().keys),
            )
            .unwrap();
        assert_eq!(down.topic, "v3/lights@council/devices/lamp-17/down/push");
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
        assert_eq!(a.report().uplinks_refused.values().sum::<u64>(), 4);
        assert_eq!(a.report().downlinks_refused.values().sum::<u64>(), 2);
    }
}
