//! Network-server functions, sans-IO: de-duplication, MIC and FCnt checks, OTAA joins,
//! Class A and Class C downlink scheduling, multicast, per-gateway duty cycle.
//!
//! # The contract: `handle_*` in, `poll_*` out, `now` passed in
//!
//! [`NetworkServer`] does no IO and reads no clock (in the manner of quinn-proto): the
//! [`bridge`](crate::bridge) owns the UDP socket, the MQTT client and the clock, which is what
//! lets the tests drive the server in virtual time.
//!
//! - **In**, each with the caller's `now`: [`NetworkServer::handle_rx`] (a gateway heard a
//!   frame), [`NetworkServer::handle_downlink`] and [`NetworkServer::handle_multicast`] (a
//!   frame from the controller, refused at once with a typed reason or accepted),
//!   [`NetworkServer::handle_tx_ack_error`], and [`NetworkServer::handle_timeout`] once the
//!   instant [`NetworkServer::poll_timeout`] names has come (calling it earlier is harmless:
//!   it does only what is due).
//! - **Out**, each drained until `None`: [`NetworkServer::poll_uplink`] (accepted uplinks
//!   for the controller), [`NetworkServer::poll_dev_nonce`] (the DevNonces of accepted
//!   joins, stored before their join-accepts leave) and then
//!   [`NetworkServer::poll_transmit`] (downlinks for the gateways).
//!
//! Every public entry point is here; each part behind them has one job, in its own file:
//! `config` what the server is told, `dedup` the copies of one frame, `uplink` the checks
//! on the way up and joins, `downlink` the unicast queues and RX1/RX2/Class C scheduling,
//! `multicast` the groups and zone coalescing, `session` and `gateway` the state kept per
//! device and per gateway, `events` what comes out, `counters` every outcome counted.
//!
//! # Where it sits
//!
//! ```text
//! gateway --UDP/GWMP--> bridge (socket) --RxFrame--> NetworkServer --Uplink--> MQTT up topic --> controller
//! gateway <--PULL_RESP-- bridge <--Transmission-- NetworkServer <--app frame-- MQTT down topic <-- controller
//! ```
//!
//! The controller stays the one place that decides and the one that checks every frame
//! end to end (topic, DevAddr, FCnt, MIC, payload). The network server checks again at the
//! network layer, because it must: it may only spend a gateway's scarce airtime on frames it
//! has authenticated, it must drop the copies other gateways heard, and it must refuse a
//! replay before it reaches anyone. The controller's code does not change between MQTT nodes
//! and LoRaWAN nodes: both arrive as the same frame on the same topic.
//!
//! # Two sessions, one counter
//!
//! Every node has an *application session*: the DevAddr and keys in the controller's store,
//! with which the controller and the node's core build and check frames. Over the radio a
//! node runs a *radio session*:
//!
//! - **ABP**: the radio session is the application session. Frames pass through unchanged.
//! - **OTAA**: a join derives new NwkSKey/AppSKey from the AppKey and the nonces; the node
//!   keeps its provisioned DevAddr (the network server assigns the same address, so
//!   addresses never collide). Radio frames use the joined keys; the network server re-frames
//!   accepted uplinks into the application session before publishing, and re-frames the
//!   controller's downlinks into the radio session before sending. The counter is **the same**
//!   in both sessions (the node's transport does the mirror image), so a replay in one is a
//!   replay in the other and the controller's FCnt checks keep their meaning. A new radio
//!   session starts from the previous session's counter, not from 0.
//!
//! # Downlinks
//!
//! - **Class C** (lamps are mains-powered: the default): sent at once (`imme`) on RX2
//!   (869.525 MHz, DR0 unless configured) through the gateway with the best SNR at the last
//!   uplink that has budget and is not transmitting; else the next best.
//! - **Class A**: held until the next uplink, then RX1 (1 s after, same channel and DR) or, if
//!   RX1 has no budget, RX2 (2 s after). Join-accepts at 5 s / 6 s.
//! - **Multicast**: a frame built with a group's McAddr, keys and group FCnt (by whoever holds
//!   the group keys, like unicast frames) is checked and sent once per gateway that is the
//!   best gateway of at least one member: one transmission dims a zone.
//!
//! # Duty cycle and priority
//!
//! [`DutyCycle`](crate::dutycycle::DutyCycle) keeps each gateway within each sub-band's hourly share. A priority may use
//! part of the budget: `Low` up to 50 %, `Normal` up to 90 %, `High` all of it, so a
//! high-priority command always finds headroom that routine refreshes cannot take. Beyond
//! its share a `Low` downlink is dropped; `Normal` and `High` wait (queued, at most
//! [`NsConfig::max_queue_per_device`] per device, the oldest of the lowest priority dropped
//! first) until the budget frees or [`NsConfig::downlink_ttl_ms`] passes. Every outcome is
//! counted in [`NsCounters`].

mod config;
mod counters;
mod dedup;
mod downlink;
mod events;
mod gateway;
mod multicast;
mod session;
mod uplink;

use std::collections::{BTreeMap, HashMap, VecDeque};

use lamplighter_protocol::{DevAddr, DevEui, TenantId, UnixMs};

pub use config::{Activation, DeviceClass, DeviceProfile, McGroup, NsConfig, Priority};
pub use counters::{DownlinkRejection, NsCounters, UplinkRejection};
pub use events::{RxMeta, Transmission, TxKind, Uplink};

use crate::dutycycle::BandReport;
use crate::gwmp::{GatewayEui, RxFrame, Txpk};
use dedup::{Dedup, Heard};
use gateway::Gateway;
use multicast::Group;
use session::Device;

/// The network server of every gateway the bridge serves; see the module docs for how it
/// is driven.
pub struct NetworkServer {
    config: NsConfig,
    devices: Vec<Device>,
    by_addr: HashMap<DevAddr, usize>,
    by_eui: HashMap<DevEui, usize>,
    groups: HashMap<DevAddr, Group>,
    gateways: HashMap<GatewayEui, Gateway>,
    dedup: Dedup,
    /// Devices with Class C downlinks waiting.
    class_c: VecDeque<usize>,
    join_nonce: u32,
    uplinks: VecDeque<Uplink>,
    transmissions: VecDeque<Transmission>,
    /// DevNonces of accepted joins, for the caller to persist ([`Self::poll_dev_nonce`]).
    used_dev_nonces: VecDeque<(DevEui, [u8; 2])>,
    counters: NsCounters,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NsProvisionError {
    #[error("DevAddr {0} is used twice")]
    DuplicateDevAddr(DevAddr),
    #[error("DevEUI {0} is used twice")]
    DuplicateDevEui(DevEui),
}

impl NetworkServer {
    pub fn new(config: NsConfig, devices: Vec<DeviceProfile>) -> Result<Self, NsProvisionError> {
        let mut ns = NetworkServer {
            config,
            devices: Vec::new(),
            by_addr: HashMap::new(),
            by_eui: HashMap::new(),
            groups: HashMap::new(),
            gateways: HashMap::new(),
            dedup: Dedup::default(),
            class_c: VecDeque::new(),
            join_nonce: 1,
            uplinks: VecDeque::new(),
            transmissions: VecDeque::new(),
            used_dev_nonces: VecDeque::new(),
            counters: NsCounters::default(),
        };
        for d in devices {
            ns.add_device(d)?;
        }
        Ok(ns)
    }

    /// Adds a device (or replaces one with the same DevEUI).
    pub fn add_device(&mut self, profile: DeviceProfile) -> Result<(), NsProvisionError> {
        if let Some(&i) = self.by_addr.get(&profile.dev_addr) {
            if self.devices[i].profile.dev_eui != profile.dev_eui {
                return Err(NsProvisionError::DuplicateDevAddr(profile.dev_addr));
            }
        }
        if self.groups.contains_key(&profile.dev_addr) {
            return Err(NsProvisionError::DuplicateDevAddr(profile.dev_addr));
        }
        let device = Device::new(profile);
        match self.by_eui.get(&device.profile.dev_eui) {
            Some(&i) => {
                self.by_addr.remove(&self.devices[i].profile.dev_addr);
                self.by_addr.insert(device.profile.dev_addr, i);
                self.devices[i] = device;
            }
            None => {
                let i = self.devices.len();
                self.by_eui.insert(device.profile.dev_eui, i);
                self.by_addr.insert(device.profile.dev_addr, i);
                self.devices.push(device);
            }
        }
        Ok(())
    }

    pub fn add_group(&mut self, group: McGroup) -> Result<(), NsProvisionError> {
        if self.by_addr.contains_key(&group.mc_addr) {
            return Err(NsProvisionError::DuplicateDevAddr(group.mc_addr));
        }
        self.groups.insert(
            group.mc_addr,
            Group {
                group,
                last_fcnt: None,
            },
        );
        Ok(())
    }

    pub fn counters(&self) -> &NsCounters {
        &self.counters
    }

    /// DevNonces the device used before (read back from storage at start), which its joins
    /// may not use again: without them a restart would let a recorded JoinRequest replay.
    pub fn restore_dev_nonces(
        &mut self,
        dev_eui: DevEui,
        nonces: impl IntoIterator<Item = [u8; 2]>,
    ) -> bool {
        match self.by_eui.get(&dev_eui) {
            Some(&i) => {
                self.devices[i].dev_nonces.extend(nonces);
                true
            }
            None => false,
        }
    }

    /// The DevNonce of a join just accepted. The caller stores it before it sends the
    /// JoinAccept (drain this before [`Self::poll_transmit`]).
    pub fn poll_dev_nonce(&mut self) -> Option<(DevEui, [u8; 2])> {
        self.used_dev_nonces.pop_front()
    }

    /// The duty-cycle figures of every gateway that transmitted.
    pub fn duty_report(&mut self, now: UnixMs) -> BTreeMap<String, Vec<BandReport>> {
        self.gateways
            .iter_mut()
            .map(|(eui, g)| (eui.to_string(), g.duty.report(now)))
            .collect()
    }

    /// Whether the device has an active radio session (ABP, or OTAA after a join).
    pub fn is_joined(&self, dev_eui: DevEui) -> bool {
        self.by_eui
            .get(&dev_eui)
            .is_some_and(|&i| self.devices[i].session.is_some())
    }

    /// A gateway reported a frame. Copies of one frame are gathered for the
    /// de-duplication window; [`Self::handle_timeout`] processes them.
    pub fn handle_rx(&mut self, now: UnixMs, gateway: GatewayEui, rx: RxFrame) {
        self.counters.rx_frames += 1;
        self.dedup.forget(now);
        let meta = RxMeta {
            gateway,
            tmst: rx.tmst,
            freq_hz: rx.freq_hz,
            datr: rx.datr,
            rssi_dbm: rx.rssi_dbm,
            snr_db: rx.snr_db,
        };
        match self.dedup.gather(now, rx.phy, meta) {
            Heard::Late => self.counters.late_duplicates += 1,
            Heard::Again => self.counters.duplicates += 1,
            Heard::First => self.counters.unique_frames += 1,
        }
        self.gateways.entry(gateway).or_default();
    }

    /// A gateway reported a TX_ACK error.
    pub fn handle_tx_ack_error(&mut self, gateway: GatewayEui, error: &str) {
        let key: String = error.chars().take(32).collect();
        *self.counters.tx_ack_errors.entry(key).or_default() += 1;
        tracing::debug!(%gateway, error, "gateway could not send a downlink");
    }

    /// The next instant [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<UnixMs> {
        let mut next = self.dedup.next_close(self.config.dedup_window_ms);
        for &i in &self.class_c {
            let t = self.devices[i].not_before;
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        for g in self.gateways.values() {
            if !g.mcast.is_empty() {
                next = Some(next.map_or(g.busy_until, |n| n.min(g.busy_until)));
            }
        }
        next
    }

    /// Time passed: close de-duplication windows, send what is due.
    pub fn handle_timeout(&mut self, now: UnixMs) {
        while let Some((phy, metas)) = self.dedup.close_due(now, self.config.dedup_window_ms) {
            self.process(now, &phy, metas);
        }
        self.dedup.forget(now);
        self.service(now);
    }

    pub fn poll_uplink(&mut self) -> Option<Uplink> {
        self.uplinks.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmission> {
        self.transmissions.pop_front()
    }

    /// Every transmission leaves through here, counted, for [`Self::poll_transmit`].
    fn push_tx(&mut self, gateway: GatewayEui, txpk: Txpk, airtime_us: u64, what: TxKind) {
        self.counters.transmissions += 1;
        if matches!(what, TxKind::Multicast { .. }) {
            self.counters.multicast_transmissions += 1;
        }
        self.transmissions.push_back(Transmission {
            gateway,
            txpk,
            airtime_us,
            what,
        });
    }

    /// A downlink frame from the controller (application session) for one device.
    pub fn handle_downlink(
        &mut self,
        now: UnixMs,
        tenant: &TenantId,
        dev_eui: DevEui,
        phy: &[u8],
        priority: Priority,
    ) -> Result<(), DownlinkRejection> {
        let result = self.accept_downlink(now, tenant, dev_eui, phy, priority);
        match &result {
            Ok(()) => self.counters.downlinks_accepted += 1,
            Err(r) => *self.counters.downlinks_refused.entry(r.kind()).or_default() += 1,
        }
        result
    }

    /// A multicast frame (built with the group's keys and group FCnt) for a group.
    pub fn handle_multicast(
        &mut self,
        now: UnixMs,
        tenant: &TenantId,
        phy: &[u8],
        priority: Priority,
    ) -> Result<usize, DownlinkRejection> {
        let result = self.accept_multicast(now, tenant, phy, priority);
        if result.is_ok() {
            self.service(now);
        }
        match &result {
            Ok(_) => self.counters.downlinks_accepted += 1,
            Err(r) => *self.counters.downlinks_refused.entry(r.kind()).or_default() += 1,
        }
        result
    }

    /// Restores a group's frame counter (stored by the caller from [`TxKind::Multicast`]),
    /// so members do not refuse the next group frame as a replay after a restart.
    pub fn restore_group_fcnt(&mut self, mc_addr: DevAddr, last_fcnt: u32) -> bool {
        match self.groups.get_mut(&mc_addr) {
            Some(g) => {
                g.last_fcnt = Some(last_fcnt);
                true
            }
            None => false,
        }
    }
}
