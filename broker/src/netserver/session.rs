//! What the server keeps per device: the radio session (the keys frames on the air use and
//! the uplink counter), the DevNonces its joins spent, the gateways that heard it last, and
//! its downlink queue (frames kept in the application session until they leave).

use std::collections::{HashSet, VecDeque};

use lamplighter_protocol::lorawan::{DataFrame, SessionKeys};
use lamplighter_protocol::UnixMs;

use super::config::{Activation, DeviceProfile, Priority};
use super::events::RxMeta;

#[derive(Debug, Clone)]
pub(super) struct RadioSession {
    pub(super) keys: SessionKeys,
    pub(super) last_fcnt_up: Option<u32>,
}

#[derive(Debug, Clone)]
pub(super) struct QueuedDownlink {
    /// In the application session.
    pub(super) frame: DataFrame,
    pub(super) priority: Priority,
    pub(super) enqueued: UnixMs,
}

#[derive(Debug)]
pub(super) struct Device {
    pub(super) profile: DeviceProfile,
    pub(super) session: Option<RadioSession>,
    pub(super) dev_nonces: HashSet<[u8; 2]>,
    /// Gateways that heard the last uplink, best SNR first.
    pub(super) path: Vec<RxMeta>,
    pub(super) path_at: UnixMs,
    pub(super) last_app_fcnt_down: Option<u32>,
    pub(super) queue: VecDeque<QueuedDownlink>,
    /// Class C: not before this instant (waiting for budget or a busy gateway).
    pub(super) not_before: UnixMs,
}

impl Device {
    /// A device as provisioned: an ABP device's radio session is its application session,
    /// an OTAA device has none until it joins.
    pub(super) fn new(profile: DeviceProfile) -> Self {
        let session = match profile.activation {
            Activation::Abp => Some(RadioSession {
                keys: profile.app_keys,
                last_fcnt_up: profile.last_fcnt_up,
            }),
            Activation::Otaa { .. } => None,
        };
        Device {
            session,
            dev_nonces: HashSet::new(),
            path: Vec::new(),
            path_at: UnixMs(0),
            last_app_fcnt_down: None,
            queue: VecDeque::new(),
            not_before: UnixMs(0),
            profile,
        }
    }
}
