//! What the server counts, and the typed reasons it refuses a frame: every refusal ends in
//! exactly one count by its [`kind`](UplinkRejection::kind), so nothing is dropped silently.

use std::collections::BTreeMap;

use lamplighter_protocol::lorawan::{FrameError, MType};
use lamplighter_protocol::{DevAddr, DevEui, TenantId};
use serde::Serialize;

/// Everything counted. Rejections by reason; nothing is dropped silently.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NsCounters {
    pub rx_frames: u64,
    pub unique_frames: u64,
    pub duplicates: u64,
    pub late_duplicates: u64,
    /// Unicast downlinks replaced by a group's multicast frame (zone coalescing).
    pub coalesced_downlinks: u64,
    pub uplinks_accepted: u64,
    pub joins_accepted: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub downlinks_accepted: u64,
    pub downlinks_refused: BTreeMap<&'static str, u64>,
    pub transmissions: u64,
    pub multicast_transmissions: u64,
    pub duty_queued: u64,
    pub duty_dropped: u64,
    pub expired: u64,
    pub queue_overflow: u64,
    pub tx_ack_errors: BTreeMap<String, u64>,
}

/// Why a frame from a gateway was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UplinkRejection {
    #[error("frame: {0}")]
    Frame(FrameError),
    #[error("unknown DevAddr {0}")]
    UnknownDevAddr(DevAddr),
    #[error("unknown DevEUI {0} in a join-request (or not an OTAA device of that JoinEUI)")]
    UnknownDevEui(DevEui),
    #[error("replayed frame: FCnt {got} after {last}")]
    Replay { last: u32, got: u32 },
    #[error("bad MIC")]
    BadMic,
    #[error("DevNonce {0:02x?} was used before by {1}")]
    DevNonceReused([u8; 2], DevEui),
    #[error("{0:?} is not an uplink")]
    NotUplink(MType),
}

impl UplinkRejection {
    pub fn kind(&self) -> &'static str {
        match self {
            UplinkRejection::Frame(_) => "malformed",
            UplinkRejection::UnknownDevAddr(_) => "unknown-devaddr",
            UplinkRejection::UnknownDevEui(_) => "unknown-deveui",
            UplinkRejection::Replay { .. } => "replay",
            UplinkRejection::BadMic => "bad-mic",
            UplinkRejection::DevNonceReused(..) => "devnonce-reused",
            UplinkRejection::NotUplink(_) => "not-uplink",
        }
    }
}

/// Why a downlink from the controller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownlinkRejection {
    #[error("no device {0} in tenant {1}")]
    UnknownDevice(DevEui, TenantId),
    #[error("no multicast group {0} in tenant {1}")]
    UnknownGroup(DevAddr, TenantId),
    #[error("frame: {0}")]
    Frame(FrameError),
    #[error("frame is for DevAddr {got}, the device's is {want}")]
    WrongDevAddr { got: DevAddr, want: DevAddr },
    #[error("{0:?} is not a downlink data frame")]
    NotDownlink(MType),
    #[error("multicast frames are unconfirmed only")]
    ConfirmedMulticast,
    #[error("replayed downlink: FCnt {got} after {last}")]
    Replay { last: u32, got: u32 },
    #[error("bad MIC")]
    BadMic,
}

impl DownlinkRejection {
    pub fn kind(&self) -> &'static str {
        match self {
            DownlinkRejection::UnknownDevice(..) => "unknown-device",
            DownlinkRejection::UnknownGroup(..) => "unknown-group",
            DownlinkRejection::Frame(_) => "malformed",
            DownlinkRejection::WrongDevAddr { .. } => "wrong-devaddr",
            DownlinkRejection::NotDownlink(_) => "not-downlink",
            DownlinkRejection::ConfirmedMulticast => "confirmed-multicast",
            DownlinkRejection::Replay { .. } => "replay",
            DownlinkRejection::BadMic => "bad-mic",
        }
    }
}
