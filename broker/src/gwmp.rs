//! The Semtech packet-forwarder protocol (GWMP, "Semtech UDP"), versions 1 and 2: parsing
//! and building datagrams. Pure functions of bytes; the socket lives in [`crate::bridge`].
//!
//! ```text
//! byte 0     protocol version (2; 1 accepted)
//! bytes 1-2  random token (echoed in the acknowledgement)
//! byte 3     type: PUSH_DATA 0x00 (+ gateway EUI + JSON {"rxpk":[..],"stat":{..}})
//!                  PUSH_ACK  0x01
//!                  PULL_DATA 0x02 (+ gateway EUI)       PULL_RESP 0x03 (+ JSON {"txpk":{..}})
//!                  PULL_ACK  0x04                       TX_ACK    0x05 (+ EUI + optional JSON)
//! ```
//!
//! Every parse returns a typed [`GwmpError`]; nothing here panics on any input (see the
//! proptest in `tests/fuzz_gwmp.rs`).

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use lamplighter_protocol::lorawan::radio::DataRate;
use serde::{Deserialize, Serialize};

pub const PUSH_DATA: u8 = 0x00;
pub const PUSH_ACK: u8 = 0x01;
pub const PULL_DATA: u8 = 0x02;
pub const PULL_RESP: u8 = 0x03;
pub const PULL_ACK: u8 = 0x04;
pub const TX_ACK: u8 = 0x05;

/// The largest datagram the bridge reads; a packet forwarder's are well under this.
pub const MAX_DATAGRAM: usize = 65_507;

/// A gateway's EUI-64, shown as 16 upper-case hex digits (most significant byte first, as on
/// the gateway's label and in `global_conf.json`). GWMP sends it in that order too.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct GatewayEui(pub u64);

impl fmt::Display for GatewayEui {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}
impl fmt::Debug for GatewayEui {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GatewayEui({self})")
    }
}
impl FromStr for GatewayEui {
    type Err = GwmpError;
    fn from_str(s: &str) -> Result<Self, GwmpError> {
        let bad = || GwmpError::BadEui(s.chars().take(32).collect());
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u64::from_str_radix(s, 16)
            .map(GatewayEui)
            .map_err(|_| bad())
    }
}
impl From<GatewayEui> for String {
    fn from(e: GatewayEui) -> String {
        e.to_string()
    }
}
impl TryFrom<String> for GatewayEui {
    type Error = GwmpError;
    fn try_from(s: String) -> Result<Self, GwmpError> {
        s.parse()
    }
}

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GwmpError {
    #[error("datagram of {0} bytes is too short")]
    TooShort(usize),
    #[error("unknown protocol version {0}")]
    Version(u8),
    #[error("unknown packet type 0x{0:02x}")]
    Type(u8),
    #[error("bad JSON: {0}")]
    Json(String),
    #[error("not a gateway EUI (16 hex digits): {0:?}")]
    BadEui(String),
    #[error("rxpk {index}: {reason}")]
    Rxpk { index: usize, reason: String },
}

impl GwmpError {
    /// A short label for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            GwmpError::TooShort(_) => "too-short",
            GwmpError::Version(_) => "version",
            GwmpError::Type(_) => "type",
            GwmpError::Json(_) => "json",
            GwmpError::BadEui(_) => "eui",
            GwmpError::Rxpk { .. } => "rxpk",
        }
    }
}

/// One received LoRa frame as the packet forwarder reports it (`rxpk`). Unknown fields are
/// ignored (forwarders add their own); the ones needed are checked in [`Rxpk::frame`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Rxpk {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Concentrator counter, microseconds, at the end of the frame's reception.
    pub tmst: u32,
    /// MHz.
    pub freq: f64,
    pub chan: u32,
    pub rfch: u32,
    /// CRC status: 1 ok, -1 bad, 0 no CRC.
    pub stat: i32,
    pub modu: String,
    /// "SF7BW125" for LoRa, a number (bit/s) for FSK.
    pub datr: serde_json::Value,
    pub codr: String,
    pub rssi: i32,
    pub lsnr: f64,
    pub size: u32,
    /// The PHYPayload, base64.
    pub data: String,
}

/// What the network server needs from an `rxpk`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RxFrame {
    pub phy: Vec<u8>,
    pub tmst: u32,
    pub freq_hz: u32,
    pub datr: DataRate,
    pub rssi_dbm: i32,
    pub snr_db: f32,
}

impl Rxpk {
    /// The checked frame: CRC ok, LoRa modulation, a known data rate, base64 data of the
    /// stated size, at most 255 bytes.
    pub fn frame(&self) -> Result<RxFrame, String> {
        if self.stat != 1 {
            return Err(format!(
                "CRC status {} (only 1, CRC ok, is taken)",
                self.stat
            ));
        }
        if self.modu != "LORA" {
            return Err(format!("modulation {:?} (only LORA)", self.modu));
        }
        let datr: DataRate = self
            .datr
            .as_str()
            .ok_or_else(|| "datr is not a LoRa data-rate string".to_string())?
            .parse()
            .map_err(|e: lamplighter_protocol::lorawan::radio::DataRateError| e.to_string())?;
        let phy = base64::engine::general_purpose::STANDARD
            .decode(self.data.as_bytes())
            .map_err(|e| format!("data is not base64: {e}"))?;
        if phy.len() > 255 {
            return Err(format!("{} bytes is longer than a LoRa frame", phy.len()));
        }
        if self.size != 0 && self.size as usize != phy.len() {
            return Err(format!(
                "size {} but {} bytes of data",
                self.size,
                phy.len()
            ));
        }
        if !(self.freq.is_finite() && self.freq > 100.0 && self.freq < 3000.0) {
            return Err(format!("frequency {} MHz", self.freq));
        }
        let snr = if self.lsnr.is_finite() {
            self.lsnr.clamp(-50.0, 50.0) as f32
        } else {
            -50.0
        };
        Ok(RxFrame {
            phy,
            tmst: self.tmst,
            freq_hz: (self.freq * 1e6).round() as u32,
            datr,
            rssi_dbm: self.rssi.clamp(-200, 50),
            snr_db: snr,
        })
    }

    /// An `rxpk` for a frame (simulated gateways and tests).
    pub fn for_frame(
        phy: &[u8],
        tmst: u32,
        freq_hz: u32,
        datr: DataRate,
        rssi: i32,
        lsnr: f64,
    ) -> Rxpk {
        Rxpk {
            time: None,
            tmst,
            freq: f64::from(freq_hz) / 1e6,
            chan: 0,
            rfch: 0,
            stat: 1,
            modu: "LORA".into(),
            datr: serde_json::Value::String(datr.to_string()),
            codr: "4/5".into(),
            rssi,
            lsnr,
            size: phy.len() as u32,
            data: base64::engine::general_purpose::STANDARD.encode(phy),
        }
    }
}

/// One frame to transmit (`txpk` in PULL_RESP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Txpk {
    /// Send at once (Class C) rather than at `tmst`.
    #[serde(default)]
    pub imme: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmst: Option<u32>,
    pub freq: f64,
    pub rfch: u32,
    /// dBm.
    pub powe: i32,
    pub modu: String,
    pub datr: String,
    pub codr: String,
    /// Inverted polarity: true for downlinks to end devices.
    pub ipol: bool,
    pub size: u32,
    pub data: String,
    /// No CRC: downlinks carry none.
    #[serde(default)]
    pub ncrc: bool,
}

impl Txpk {
    pub fn new(phy: &[u8], timing: TxTiming, freq_hz: u32, datr: DataRate, powe: i32) -> Txpk {
        let (imme, tmst) = match timing {
            TxTiming::Immediately => (true, None),
            TxTiming::AtTmst(t) => (false, Some(t)),
        };
        Txpk {
            imme,
            tmst,
            freq: f64::from(freq_hz) / 1e6,
            rfch: 0,
            powe,
            modu: "LORA".into(),
            datr: datr.to_string(),
            codr: "4/5".into(),
            ipol: true,
            size: phy.len() as u32,
            data: base64::engine::general_purpose::STANDARD.encode(phy),
            ncrc: true,
        }
    }

    /// The PHYPayload, decoded (simulated gateways).
    pub fn phy(&self) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(self.data.as_bytes())
            .map_err(|e| format!("txpk data is not base64: {e}"))
    }
}

/// When a downlink goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxTiming {
    Immediately,
    /// At this value of the gateway's concentrator counter (µs).
    AtTmst(u32),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
struct PushBody {
    #[serde(default)]
    rxpk: Vec<serde_json::Value>,
    #[serde(default)]
    stat: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PullRespBody {
    txpk: Txpk,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
struct TxAckBody {
    #[serde(default)]
    txpk_ack: Option<TxAckInner>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
struct TxAckInner {
    #[serde(default)]
    error: Option<String>,
}

/// A parsed datagram. `rxpk` entries are kept one by one: a bad one is reported with its
/// reason and the good ones of the same datagram still count.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    PushData {
        version: u8,
        token: u16,
        gateway: GatewayEui,
        rxpk: Vec<Result<RxFrame, String>>,
        has_stat: bool,
    },
    PushAck {
        version: u8,
        token: u16,
    },
    PullData {
        version: u8,
        token: u16,
        gateway: GatewayEui,
    },
    PullResp {
        version: u8,
        token: u16,
        txpk: Box<Txpk>,
    },
    PullAck {
        version: u8,
        token: u16,
    },
    TxAck {
        version: u8,
        token: u16,
        gateway: GatewayEui,
        /// `None` or `Some("NONE")`: sent.
        error: Option<String>,
    },
}

impl Packet {
    /// The gateway a datagram names (uplink types only).
    pub fn gateway(&self) -> Option<GatewayEui> {
        match self {
            Packet::PushData { gateway, .. }
            | Packet::PullData { gateway, .. }
            | Packet::TxAck { gateway, .. } => Some(*gateway),
            _ => None,
        }
    }
}

fn eui_at(b: &[u8]) -> Result<GatewayEui, GwmpError> {
    let eui: [u8; 8] = b
        .get(4..12)
        .and_then(|s| s.try_into().ok())
        .ok_or(GwmpError::TooShort(b.len()))?;
    Ok(GatewayEui(u64::from_be_bytes(eui)))
}

fn json<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, GwmpError> {
    serde_json::from_slice(b).map_err(|e| GwmpError::Json(e.to_string()))
}

/// Parses one datagram, either direction.
pub fn parse(b: &[u8]) -> Result<Packet, GwmpError> {
    if b.len() < 4 {
        return Err(GwmpError::TooShort(b.len()));
    }
    let version = b[0];
    if version != 1 && version != 2 {
        return Err(GwmpError::Version(version));
    }
    let token = u16::from_be_bytes([b[1], b[2]]);
    match b[3] {
        PUSH_DATA => {
            let gateway = eui_at(b)?;
            let body: PushBody = json(&b[12..])?;
            let rxpk = body
                .rxpk
                .into_iter()
                .map(|v| {
                    serde_json::from_value::<Rxpk>(v)
                        .map_err(|e| format!("rxpk of the wrong shape: {e}"))
                        .and_then(|r| r.frame())
                })
                .collect();
            Ok(Packet::PushData {
                version,
                token,
                gateway,
                rxpk,
                has_stat: body.stat.is_some(),
            })
        }
        PUSH_ACK => Ok(Packet::PushAck { version, token }),
        PULL_DATA => Ok(Packet::PullData {
            version,
            token,
            gateway: eui_at(b)?,
        }),
        PULL_RESP => {
            let body: PullRespBody = json(&b[4..])?;
            Ok(Packet::PullResp {
                version,
                token,
                txpk: Box::new(body.txpk),
            })
        }
        PULL_ACK => Ok(Packet::PullAck { version, token }),
        TX_ACK => {
            let gateway = eui_at(b)?;
            let rest = &b[12..];
            // v1 forwarders and v2 ones without error send no JSON (some send a NUL).
            let trimmed: &[u8] = match rest.iter().position(|&c| c != 0 && c != b' ') {
                None => &[],
                Some(_) => rest,
            };
            let error = if trimmed.is_empty() {
                None
            } else {
                json::<TxAckBody>(trimmed)?.txpk_ack.and_then(|a| a.error)
            };
            Ok(Packet::TxAck {
                version,
                token,
                gateway,
                error,
            })
        }
        t => Err(GwmpError::Type(t)),
    }
}

fn header(version: u8, token: u16, kind: u8) -> Vec<u8> {
    let t = token.to_be_bytes();
    vec![version, t[0], t[1], kind]
}

/// PUSH_ACK or PULL_ACK for a datagram.
pub fn ack(version: u8, token: u16, kind: u8) -> Vec<u8> {
    header(version, token, kind)
}

pub fn pull_resp(version: u8, token: u16, txpk: &Txpk) -> Vec<u8> {
    let mut b = header(version, token, PULL_RESP);
    // Serializing a struct of plain fields cannot fail.
    b.extend(serde_json::to_vec(&PullRespBody { txpk: txpk.clone() }).unwrap_or_default());
    b
}

pub fn push_data(token: u16, gateway: GatewayEui, rxpk: &[Rxpk]) -> Vec<u8> {
    let mut b = header(2, token, PUSH_DATA);
    b.extend_from_slice(&gateway.0.to_be_bytes());
    b.extend(serde_json::to_vec(&serde_json::json!({ "rxpk": rxpk })).unwrap_or_default());
    b
}

pub fn pull_data(token: u16, gateway: GatewayEui) -> Vec<u8> {
    let mut b = header(2, token, PULL_DATA);
    b.extend_from_slice(&gateway.0.to_be_bytes());
    b
}

pub fn tx_ack(token: u16, gateway: GatewayEui, error: Option<&str>) -> Vec<u8> {
    let mut b = header(2, token, TX_ACK);
    b.extend_from_slice(&gateway.0.to_be_bytes());
    if let Some(e) = error {
        b.extend(
            serde_json::to_vec(&serde_json::json!({ "txpk_ack": { "error": e } }))
                .unwrap_or_default(),
        );
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: GatewayEui = GatewayEui(0xAA55_5A00_0000_0101);

    #[test]
    fn push_data_from_a_real_forwarder_shape() {
        let json = r#"{"rxpk":[{"time":"2013-03-31T16:21:17.528002Z","tmst":3512348611,"chan":2,"rfch":0,"freq":866.349812,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/6","rssi":-35,"lsnr":5.1,"size":17,"data":"QPF9vkkAAgABlUN4disR/w0="},
            {"tmst":1,"freq":868.1,"stat":-1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-35,"lsnr":5.1,"size":1,"data":"AA=="}],
            "stat":{"time":"2014-01-12 08:59:28 GMT","rxnb":2}}"#;
        let mut d = vec![2, 0x12, 0x34, PUSH_DATA];
        d.extend_from_slice(&GW.0.to_be_bytes());
        d.extend_from_slice(json.as_bytes());
        let Packet::PushData {
            token,
            gateway,
            rxpk,
            has_stat,
            ..
        } = parse(&d).unwrap()
        else {
            panic!()
        };
        assert_eq!((token, gateway, has_stat), (0x1234, GW, true));
        let f = rxpk[0].as_ref().unwrap();
        assert_eq!(hex::encode(&f.phy), "40f17dbe4900020001954378762b11ff0d");
        assert_eq!(f.freq_hz, 866_349_812);
        assert_eq!(f.datr, "SF7BW125".parse().unwrap());
        assert!(rxpk[1].as_ref().unwrap_err().contains("CRC"));
    }

    #[test]
    fn round_trips_and_refusals() {
        let rx = Rxpk::for_frame(
            &[1, 2, 3],
            7,
            868_100_000,
            "SF9BW125".parse().unwrap(),
            -80,
            7.5,
        );
        let d = push_data(9, GW, std::slice::from_ref(&rx));
        let Packet::PushData { rxpk, .. } = parse(&d).unwrap() else {
            panic!()
        };
        assert_eq!(rxpk[0].as_ref().unwrap().phy, vec![1, 2, 3]);
        assert_eq!(
            parse(&pull_data(5, GW)).unwrap(),
            Packet::PullData {
                version: 2,
                token: 5,
                gateway: GW
            }
        );
        let tx = Txpk::new(
            &[9; 20],
            TxTiming::AtTmst(1_000_000),
            868_100_000,
            "SF7BW125".parse().unwrap(),
            14,
        );
        let Packet::PullResp { txpk, .. } = parse(&pull_resp(2, 3, &tx)).unwrap() else {
            panic!()
        };
        assert_eq!(*txpk, tx);
        assert_eq!(txpk.phy().unwrap(), vec![9; 20]);
        let Packet::TxAck { error, .. } = parse(&tx_ack(1, GW, Some("TOO_LATE"))).unwrap() else {
            panic!()
        };
        assert_eq!(error.as_deref(), Some("TOO_LATE"));
        let Packet::TxAck { error, .. } = parse(&tx_ack(1, GW, None)).unwrap() else {
            panic!()
        };
        assert_eq!(error, None);
        // v1 is accepted.
        let mut v1 = pull_data(5, GW);
        v1[0] = 1;
        assert!(parse(&v1).is_ok());

        for (bad, kind) in [
            (vec![], "too-short"),
            (vec![2, 0, 0], "too-short"),
            (vec![3, 0, 0, 0], "version"),
            (vec![2, 0, 0, 9], "type"),
            (vec![2, 0, 0, PUSH_DATA, 1, 2], "too-short"),
            (
                [&[2, 0, 0, PUSH_DATA][..], &[0; 8], b"{nope"].concat(),
                "json",
            ),
            (
                [&[2, 0, 0, PUSH_DATA][..], &[0; 8], b"[1]"].concat(),
                "json",
            ),
        ] {
            assert_eq!(parse(&bad).unwrap_err().kind(), kind, "{bad:?}");
        }
    }

    #[test]
    fn gateway_eui_text() {
        let e: GatewayEui = "aa555a0000000101".parse().unwrap();
        assert_eq!(e, GW);
        assert_eq!(e.to_string(), "AA555A0000000101");
        assert!("aa555a00000001".parse::<GatewayEui>().is_err());
        assert!("aa555a000000010g".parse::<GatewayEui>().is_err());
    }
}
