//! Councils' existing LoRaWAN networks: ChirpStack v4 and The Things Stack v3 over their
//! MQTT integrations.
//!
//! Their network server already checked MIC and counters and decrypted the payload. The
//! adapter re-seals each uplink as a frame in the node's application session (DevAddr and
//! keys from our store, the network's FCnt), so the controller checks and accepts it exactly
//! like a frame from our own bridge or an MQTT node; downlinks from the controller are opened
//! with the same keys and sent as the network's JSON command. This module is the pure part:
//! parsing the networks' JSON (every shape error is a typed [`ExternalError`]) and building
//! their downlink JSON.
//!
//! Joins matter because the network restarts a device's FCnt at 0 in each new session; the
//! adapter ([`crate::external_link`]) moves its counter window on at each join event.
//! Downlinks are latest-only: ChirpStack's carry `expiresAt`, so a network never plays back a
//! stale level after an outage, and The Things Stack's go to `down/replace`, which replaces
//! the device's whole queue.

use base64::Engine;
use lamplighter_protocol::lorawan::{self, DataFrame, FCtrl, MType, SessionKeys};
use lamplighter_protocol::{DevAddr, DevEui};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    Chirpstack,
    Tts,
}

/// An uplink event of an external network, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalUplink {
    pub dev_eui: DevEui,
    pub fcnt: u32,
    pub fport: u8,
    /// Decrypted FRMPayload.
    pub payload: Vec<u8>,
    /// (gateway id, RSSI dBm, SNR dB) per gateway that heard it.
    pub rx: Vec<(String, i32, f32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalError {
    #[error("not JSON of the expected shape: {0}")]
    Shape(String),
    #[error("bad DevEUI {0:?}")]
    DevEui(String),
    #[error("payload is not base64")]
    Base64,
    #[error("no FPort (a MAC-only uplink): nothing for the controller")]
    NoPort,
    #[error("payload of {0} bytes is too long")]
    TooLong(usize),
}

impl ExternalError {
    pub fn kind(&self) -> &'static str {
        match self {
            ExternalError::Shape(_) => "shape",
            ExternalError::DevEui(_) => "deveui",
            ExternalError::Base64 => "base64",
            ExternalError::NoPort => "no-port",
            ExternalError::TooLong(_) => "too-long",
        }
    }
}

fn b64(s: &str) -> Result<Vec<u8>, ExternalError> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(|_| ExternalError::Base64)
}

fn eui(s: &str) -> Result<DevEui, ExternalError> {
    s.to_ascii_uppercase()
        .parse()
        .map_err(|_| ExternalError::DevEui(s.chars().take(32).collect()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CsUp {
    device_info: CsDeviceInfo,
    #[serde(default)]
    f_cnt: u32,
    #[serde(default)]
    f_port: Option<u8>,
    #[serde(default)]
    data: String,
    #[serde(default)]
    rx_info: Vec<CsRx>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CsDeviceInfo {
    dev_eui: String,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CsRx {
    #[serde(default)]
    gateway_id: String,
    #[serde(default)]
    rssi: i32,
    #[serde(default)]
    snr: f32,
}

#[derive(Deserialize)]
struct TtsUp {
    end_device_ids: TtsIds,
    uplink_message: TtsMsg,
}
#[derive(Deserialize)]
struct TtsIds {
    dev_eui: String,
}
#[derive(Deserialize)]
struct TtsMsg {
    // Zero-valued fields are omitted by The Things Stack.
    #[serde(default)]
    f_port: Option<u8>,
    #[serde(default)]
    f_cnt: u32,
    #[serde(default)]
    frm_payload: String,
    #[serde(default)]
    rx_metadata: Vec<TtsRx>,
}
#[derive(Deserialize)]
struct TtsRx {
    #[serde(default)]
    gateway_ids: Option<TtsGw>,
    #[serde(default)]
    rssi: i32,
    #[serde(default)]
    snr: f32,
}
#[derive(Deserialize)]
struct TtsGw {
    #[serde(default)]
    gateway_id: String,
}

/// Parses an uplink event of either network.
pub fn parse_uplink(kind: NetworkKind, json: &[u8]) -> Result<ExternalUplink, ExternalError> {
    let shape = |e: serde_json::Error| ExternalError::Shape(e.to_string());
    let up = match kind {
        NetworkKind::Chirpstack => {
            let m: CsUp = serde_json::from_slice(json).map_err(shape)?;
            ExternalUplink {
                dev_eui: eui(&m.device_info.dev_eui)?,
                fcnt: m.f_cnt,
                // ChirpStack omits fPort 0.
                fport: m.f_port.unwrap_or(0),
                payload: b64(&m.data)?,
                rx: m
                    .rx_info
                    .into_iter()
                    .map(|r| (r.gateway_id, r.rssi, r.snr))
                    .collect(),
            }
        }
        NetworkKind::Tts => {
            let m: TtsUp = serde_json::from_slice(json).map_err(shape)?;
            ExternalUplink {
                dev_eui: eui(&m.end_device_ids.dev_eui)?,
                fcnt: m.uplink_message.f_cnt,
                fport: m.uplink_message.f_port.unwrap_or(0),
                payload: b64(&m.uplink_message.frm_payload)?,
                rx: m
                    .uplink_message
                    .rx_metadata
                    .into_iter()
                    .map(|r| {
                        (
                            r.gateway_ids.map(|g| g.gateway_id).unwrap_or_default(),
                            r.rssi,
                            r.snr,
                        )
                    })
                    .collect(),
            }
        }
    };
    if up.fport == 0 {
        return Err(ExternalError::NoPort);
    }
    if up.payload.len() > 242 {
        return Err(ExternalError::TooLong(up.payload.len()));
    }
    Ok(up)
}

/// Parses a join event of either network (ChirpStack `event/join`, The Things Stack `join`):
/// the device that started a new session.
pub fn parse_join(kind: NetworkKind, json: &[u8]) -> Result<DevEui, ExternalError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct CsJoin {
        device_info: CsDeviceInfo,
    }
    #[derive(Deserialize)]
    struct TtsJoin {
        end_device_ids: TtsIds,
        // Only its presence tells a join message from other shapes.
        #[allow(dead_code)]
        join_accept: serde_json::Value,
    }
    let shape = |e: serde_json::Error| ExternalError::Shape(e.to_string());
    match kind {
        NetworkKind::Chirpstack => {
            let m: CsJoin = serde_json::from_slice(json).map_err(shape)?;
            eui(&m.device_info.dev_eui)
        }
        NetworkKind::Tts => {
            let m: TtsJoin = serde_json::from_slice(json).map_err(shape)?;
            eui(&m.end_device_ids.dev_eui)
        }
    }
}

/// Re-seals an external uplink as a frame of the node's application session.
///
/// `fcnt` is the counter in the application session: the network's FCnt plus the device's
/// session base (see [`crate::external_link`]).
pub fn seal_uplink(
    up: &ExternalUplink,
    fcnt: u32,
    dev_addr: DevAddr,
    keys: &SessionKeys,
) -> Result<Vec<u8>, lorawan::FrameError> {
    lorawan::encode_data_frame(
        &DataFrame {
            mtype: MType::UnconfirmedDataUp,
            dev_addr,
            fctrl: FCtrl::default(),
            fcnt,
            fopts: Vec::new(),
            fport: Some(up.fport),
            frm_payload: up.payload.clone(),
        },
        keys,
    )
}

/// One downlink for the network: a decrypted payload on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downlink {
    pub fport: u8,
    pub payload: Vec<u8>,
}

/// ChirpStack's command JSON for one downlink; `expires_at` is RFC 3339 (ChirpStack drops
/// the item from the device's queue after it).
pub fn chirpstack_downlink_json(dev_eui: DevEui, down: &Downlink, expires_at: &str) -> String {
    serde_json::json!({
        "devEui": dev_eui.to_string().to_ascii_lowercase(),
        "confirmed": false,
        "fPort": down.fport,
        "data": base64::engine::general_purpose::STANDARD.encode(&down.payload),
        "expiresAt": expires_at,
    })
    .to_string()
}

/// The Things Stack's `down/replace` JSON: these downlinks become the device's whole queue.
pub fn tts_downlink_json(downs: &[Downlink]) -> String {
    let downlinks: Vec<serde_json::Value> = downs
        .iter()
        .map(|d| {
            serde_json::json!({
                "f_port": d.fport,
                "frm_payload": base64::engine::general_purpose::STANDARD.encode(&d.payload),
                "priority": "NORMAL",
            })
        })
        .collect();
    serde_json::json!({ "downlinks": downlinks }).to_string()
}

/// A time as RFC 3339 in UTC to the second, as the networks' JSON spells times:
/// `2024-12-21T22:15:00Z`.
pub fn rfc3339(t: lamplighter_protocol::UnixMs) -> String {
    chrono::DateTime::from_timestamp_millis(t.0 as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What an event topic of the network carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Up,
    Join,
}

/// The filters to subscribe to on the network's broker: uplinks and joins.
pub fn uplink_filters(kind: NetworkKind, application: &str) -> [String; 2] {
    match kind {
        NetworkKind::Chirpstack => [
            format!("application/{application}/device/+/event/up"),
            format!("application/{application}/device/+/event/join"),
        ],
        // application is "{app}@{tenant}" for The Things Stack.
        NetworkKind::Tts => [
            format!("v3/{application}/devices/+/up"),
            format!("v3/{application}/devices/+/join"),
        ],
    }
}

/// The device ID and the event in one of the topics of [`uplink_filters`].
pub fn parse_event_topic<'t>(
    kind: NetworkKind,
    application: &str,
    topic: &'t str,
) -> Option<(&'t str, Event)> {
    let parts: Vec<&str> = topic.split('/').collect();
    let event = |e: &str| match e {
        "up" => Some(Event::Up),
        "join" => Some(Event::Join),
        _ => None,
    };
    match (kind, parts.as_slice()) {
        (NetworkKind::Chirpstack, ["application", a, "device", id, "event", e])
            if *a == application =>
        {
            Some((id, event(e)?))
        }
        (NetworkKind::Tts, ["v3", a, "devices", id, e]) if *a == application => {
            Some((id, event(e)?))
        }
        _ => None,
    }
}

/// The topic a downlink for `device` goes to: ChirpStack's command topic (which enqueues),
/// The Things Stack's `down/replace` (which replaces the queue).
pub fn downlink_topic(kind: NetworkKind, application: &str, device: &str) -> String {
    match kind {
        NetworkKind::Chirpstack => {
            format!("application/{application}/device/{device}/command/down")
        }
        NetworkKind::Tts => format!("v3/{application}/devices/{device}/down/replace"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chirpstack_v4_uplink() {
        let json = br#"{"deduplicationId":"x","time":"2024-01-01T00:00:00Z",
            "deviceInfo":{"tenantId":"t","applicationId":"a","devEui":"0011223344556677","deviceName":"lamp"},
            "devAddr":"01020304","adr":true,"dr":5,"fCnt":42,"fPort":10,"confirmed":false,"data":"AQID",
            "rxInfo":[{"gatewayId":"aa555a0000000101","uplinkId":1,"rssi":-57,"snr":10.5,"context":"x"}],
            "txInfo":{"frequency":868100000,"modulation":{"lora":{"bandwidth":125000,"spreadingFactor":7,"codeRate":"CR_4_5"}}}}"#;
        let up = parse_uplink(NetworkKind::Chirpstack, json).unwrap();
        assert_eq!(up.dev_eui, DevEui(0x0011_2233_4455_6677));
        assert_eq!(
            (up.fcnt, up.fport, up.payload.clone()),
            (42, 10, vec![1, 2, 3])
        );
        assert_eq!(up.rx, vec![("aa555a0000000101".into(), -57, 10.5)]);
    }

    #[test]
    fn tts_v3_uplink_with_omitted_zero_fields() {
        let json = br#"{"end_device_ids":{"device_id":"lamp-1","application_ids":{"application_id":"app"},"dev_eui":"0011223344556677"},
            "uplink_message":{"f_port":10,"frm_payload":"AQID","rx_metadata":[{"gateway_ids":{"gateway_id":"gw-1"},"rssi":-70,"snr":7.25}]}}"#;
        let up = parse_uplink(NetworkKind::Tts, json).unwrap();
        assert_eq!(up.fcnt, 0);
        assert_eq!(up.rx[0].0, "gw-1");
    }

    #[test]
    fn wrong_shapes_are_typed_errors() {
        for (kind, json, want) in [
            (NetworkKind::Chirpstack, &b"{}"[..], "shape"),
            (NetworkKind::Chirpstack, b"[1,2]", "shape"),
            (NetworkKind::Chirpstack, b"not json", "shape"),
            (NetworkKind::Chirpstack, br#"{"deviceInfo":{"devEui":"zz"},"fPort":10}"#, "deveui"),
            (NetworkKind::Chirpstack, br#"{"deviceInfo":{"devEui":"0011223344556677"},"fPort":10,"data":"!!"}"#, "base64"),
            (NetworkKind::Chirpstack, br#"{"deviceInfo":{"devEui":"0011223344556677"},"fCnt":1}"#, "no-port"),
            (NetworkKind::Tts, br#"{"end_device_ids":{},"uplink_message":{}}"#, "shape"),
            (NetworkKind::Tts, br#"{"end_device_ids":{"dev_eui":"0011223344556677"},"uplink_message":{"f_port":300}}"#, "shape"),
        ] {
            assert_eq!(parse_uplink(kind, json).unwrap_err().kind(), want, "{}", String::from_utf8_lossy(json));
        }
    }

    #[test]
    fn downlink_json_shapes() {
        let down = Downlink {
            fport: 11,
            payload: vec![1, 2],
        };
        let cs = chirpstack_downlink_json(DevEui(1), &down, "2024-12-21T22:15:00Z");
        let v: serde_json::Value = serde_json::from_str(&cs).unwrap();
        assert_eq!(v["devEui"], "0000000000000001");
        assert_eq!(v["fPort"], 11);
        assert_eq!(v["expiresAt"], "2024-12-21T22:15:00Z");
        let tts = tts_downlink_json(&[down.clone(), down]);
        let v: serde_json::Value = serde_json::from_str(&tts).unwrap();
        assert_eq!(v["downlinks"][0]["frm_payload"], "AQI=");
        assert_eq!(v["downlinks"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn joins_of_both_networks() {
        let cs = br#"{"deduplicationId":"x","time":"2024-01-01T00:00:00Z",
            "deviceInfo":{"tenantId":"t","applicationId":"a","devEui":"0011223344556677"},
            "devAddr":"01020304"}"#;
        assert_eq!(
            parse_join(NetworkKind::Chirpstack, cs).unwrap(),
            DevEui(0x0011_2233_4455_6677)
        );
        let tts = br#"{"end_device_ids":{"device_id":"lamp-1","dev_eui":"0011223344556677"},
            "join_accept":{"session_key_id":"AYk=","received_at":"2024-01-01T00:00:00Z"}}"#;
        assert!(parse_join(NetworkKind::Tts, tts).is_ok());
        // An uplink on a join topic is not a join.
        let up = br#"{"end_device_ids":{"dev_eui":"0011223344556677"},"uplink_message":{}}"#;
        assert_eq!(
            parse_join(NetworkKind::Tts, up).unwrap_err().kind(),
            "shape"
        );
        assert_eq!(
            parse_event_topic(NetworkKind::Tts, "app@t", "v3/app@t/devices/lamp-1/join"),
            Some(("lamp-1", Event::Join))
        );
        assert_eq!(
            parse_event_topic(
                NetworkKind::Chirpstack,
                "a",
                "application/a/device/0011223344556677/event/status"
            ),
            None
        );
    }
}
