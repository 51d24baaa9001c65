//! What the server is told about its world: its own settings, the devices and groups it
//! serves, and the priorities a downlink may carry.

use lamplighter_protocol::lorawan::radio::{DataRate, RX2_FREQ_HZ};
use lamplighter_protocol::lorawan::{AesKey, SessionKeys};
use lamplighter_protocol::{DevAddr, DevEui, TenantId};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct NsConfig {
    /// How long copies of one frame from several gateways are gathered.
    pub dedup_window_ms: u64,
    /// NetID sent in join-accepts (wire order).
    pub net_id: [u8; 3],
    /// RX2 and Class C data rate (EU868 DR0 by default).
    pub rx2_dr: DataRate,
    pub rx2_freq_hz: u32,
    pub tx_power_dbm: i32,
    pub max_queue_per_device: usize,
    /// A queued downlink older than this is dropped as expired.
    pub downlink_ttl_ms: u64,
    /// Class C downlinks for multicast-group members wait this long before they go, so that
    /// when the controller commands every member of a group alike in one tick, the
    /// commands leave as one multicast frame instead of one frame per lamp (see
    /// [`NetworkServer`](super::NetworkServer)'s zone coalescing). 0: never coalesce.
    pub multicast_gather_ms: u64,
}

impl Default for NsConfig {
    fn default() -> Self {
        NsConfig {
            dedup_window_ms: 200,
            net_id: [0x13, 0x00, 0x00],
            rx2_dr: DataRate {
                sf: 12,
                bw_khz: 125,
            },
            rx2_freq_hz: RX2_FREQ_HZ,
            tx_power_dbm: 14,
            max_queue_per_device: 8,
            downlink_ttl_ms: 600_000,
            multicast_gather_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum DeviceClass {
    A,
    C,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    Abp,
    Otaa { join_eui: DevEui, app_key: AesKey },
}

/// A device the network server serves.
#[derive(Debug, Clone)]
pub struct DeviceProfile {
    pub tenant: TenantId,
    pub dev_eui: DevEui,
    pub class: DeviceClass,
    /// The application session: the DevAddr and keys the controller's store holds.
    pub dev_addr: DevAddr,
    pub app_keys: SessionKeys,
    pub activation: Activation,
    /// The highest uplink counter known (from the store): seeds the counter check.
    pub last_fcnt_up: Option<u32>,
}

/// A multicast group: McAddr, keys, group FCnt, members.
#[derive(Debug, Clone)]
pub struct McGroup {
    pub tenant: TenantId,
    pub mc_addr: DevAddr,
    pub keys: SessionKeys,
    pub members: Vec<DevEui>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Priority {
    Low,
    Normal,
    High,
}

impl Priority {
    /// The share of a sub-band's budget this priority may fill, per mille.
    pub fn budget_share_permille(self) -> u64 {
        match self {
            Priority::Low => 500,
            Priority::Normal => 900,
            Priority::High => 1000,
        }
    }
}
