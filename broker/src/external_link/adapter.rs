//! The deciding part of a link, sans-IO: a message in, a decision out, the time passed in.
//! Uplink events become frames sealed in the node's application session, with the counter
//! window moved on at each join; the controller's command frames are checked and kept in
//! the [`CommandQueue`] until the network can be told.

use std::collections::{BTreeSet, HashMap};

use lamplighter_protocol::lorawan;
use lamplighter_protocol::topics::{self, Topic};
use lamplighter_protocol::{DevEui, TenantId, UnixMs};

use super::config::{ExternalDevice, ExternalNetwork};
use super::queue::{AdapterOptions, CommandQueue};
use super::refusal::LinkError;
use super::report::LinkReport;
use crate::external::{self, NetworkKind};
use crate::external_state::DeviceState;

/// An MQTT message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
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
    queue: CommandQueue,
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
            options: AdapterOptions::default(),
            states: HashMap::new(),
            dirty: BTreeSet::new(),
            queue: CommandQueue::default(),
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
        topics::downlinks_of(&self.network.tenant)
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
        let dev_eui = match topics::parse(topic) {
            Ok(Topic::Downlink { tenant, dev_eui }) if tenant == self.network.tenant => dev_eui,
            _ => return Err(bad_topic()),
        };
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
        let down = external::Downlink {
            fport,
            payload: frame.frm_payload,
        };
        if self.queue.keep(dev_eui, down) {
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
            .queue
            .devices()
            .find_map(|e| Some((e, self.network_device_id(e)?)))?;
        let (payload, published) = match self.network.kind {
            NetworkKind::Chirpstack => {
                let down = self.queue.take_one(dev_eui)?;
                let expires = external::rfc3339(now.plus_ms(self.options.command_expiry_ms));
                (
                    external::chirpstack_downlink_json(dev_eui, &down, &expires),
                    1,
                )
            }
            NetworkKind::Tts => {
                let downs = self.queue.take_all(dev_eui);
                (external::tts_downlink_json(&downs), downs.len() as u64)
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use lamplighter_protocol::lorawan::{AesKey, DataFrame, FCtrl, MType, SessionKeys};
    use lamplighter_protocol::payload::Command;
    use lamplighter_protocol::DevAddr;

    use crate::external_link::{prometheus, summary_reason};

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
