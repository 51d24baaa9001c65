//! The values the server hands out through its `poll_*` calls, and where a gateway heard a
//! frame (part of an uplink, and each device's path for its downlinks).

use lamplighter_protocol::lorawan::radio::DataRate;
use lamplighter_protocol::{DevAddr, DevEui, TenantId, UnixMs};

use crate::gwmp::{GatewayEui, Txpk};

/// Where and how a gateway heard a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RxMeta {
    pub gateway: GatewayEui,
    pub tmst: u32,
    pub freq_hz: u32,
    pub datr: DataRate,
    pub rssi_dbm: i32,
    pub snr_db: f32,
}

/// An accepted uplink, ready for the controller.
#[derive(Debug, Clone, PartialEq)]
pub struct Uplink {
    pub tenant: TenantId,
    pub dev_eui: DevEui,
    /// The frame in the application session (the radio frame itself for ABP).
    pub phy: Vec<u8>,
    pub fcnt: u32,
    pub gateways: usize,
    pub best: RxMeta,
    pub received: UnixMs,
}

/// A downlink for the bridge to send as PULL_RESP.
#[derive(Debug, Clone, PartialEq)]
pub struct Transmission {
    pub gateway: GatewayEui,
    pub txpk: Txpk,
    pub airtime_us: u64,
    pub what: TxKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TxKind {
    Unicast { dev_eui: DevEui, fcnt: u32 },
    JoinAccept { dev_eui: DevEui },
    Multicast { mc_addr: DevAddr, fcnt: u32 },
}
