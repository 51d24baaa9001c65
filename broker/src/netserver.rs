//! Network-server functions, sans-IO: de-duplication, MIC and FCnt checks, OTAA joins,
//! Class A and Class C downlink scheduling, multicast, per-gateway duty cycle.
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
//! [`DutyCycle`] keeps each gateway within each sub-band's hourly share. A priority may use
//! part of the budget: `Low` up to 50 %, `Normal` up to 90 %, `High` all of it, so a
//! high-priority command always finds headroom that routine refreshes cannot take. Beyond
//! its share a `Low` downlink is dropped; `Normal` and `High` wait (queued, at most
//! [`NsConfig::max_queue_per_device`] per device, the oldest of the lowest priority dropped
//! first) until the budget frees or [`NsConfig::downlink_ttl_ms`] passes. Every outcome is
//! counted in [`NsCounters`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use lamplighter_protocol::lorawan::radio::{DataRate, RX2_FREQ_HZ};
use lamplighter_protocol::lorawan::{
    self, AesKey, DataFrame, FCtrl, FrameError, JoinAccept, MType, SessionKeys,
};
use lamplighter_protocol::{DevAddr, DevEui, TenantId, UnixMs};
use serde::Serialize;

use crate::dutycycle::{BandReport, DutyCycle, Refusal};
use crate::gwmp::{GatewayEui, RxFrame, TxTiming, Txpk};

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
    /// [`NetworkServer`]'s zone coalescing). 0: never coalesce.
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

#[derive(Debug, Clone)]
struct RadioSession {
    keys: SessionKeys,
    last_fcnt_up: Option<u32>,
}

#[derive(Debug, Clone)]
struct QueuedDownlink {
    /// In the application session.
    frame: DataFrame,
    priority: Priority,
    enqueued: UnixMs,
}

#[derive(Debug)]
struct Device {
    profile: DeviceProfile,
    session: Option<RadioSession>,
    dev_nonces: HashSet<[u8; 2]>,
    /// Gateways that heard the last uplink, best SNR first.
    path: Vec<RxMeta>,
    path_at: UnixMs,
    last_app_fcnt_down: Option<u32>,
    queue: VecDeque<QueuedDownlink>,
    /// Class C: not before this instant (waiting for budget or a busy gateway).
    not_before: UnixMs,
}

#[derive(Debug)]
struct Gateway {
    duty: DutyCycle,
    /// The end of its last scheduled transmission (one radio, one frame at a time).
    busy_until: UnixMs,
    /// Multicast frames waiting for this gateway.
    mcast: VecDeque<(Vec<u8>, DevAddr, u32, Priority, UnixMs)>,
}

#[derive(Debug)]
struct Group {
    group: McGroup,
    last_fcnt: Option<u32>,
}

struct Gathering {
    metas: Vec<RxMeta>,
    done: bool,
}

/// How long a processed frame is remembered, so a copy arriving after the window is counted
/// as a late duplicate rather than reported as a replay.
const REMEMBER_MS: u64 = 10_000;

pub struct NetworkServer {
    config: NsConfig,
    devices: Vec<Device>,
    by_addr: HashMap<DevAddr, usize>,
    by_eui: HashMap<DevEui, usize>,
    groups: HashMap<DevAddr, Group>,
    gateways: HashMap<GatewayEui, Gateway>,
    gathering: HashMap<Vec<u8>, Gathering>,
    /// (first seen, frame), oldest first: the frames whose window is open.
    open: VecDeque<(UnixMs, Vec<u8>)>,
    /// (first seen, frame) of processed frames still remembered.
    remembered: VecDeque<(UnixMs, Vec<u8>)>,
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
            gathering: HashMap::new(),
            open: VecDeque::new(),
            remembered: VecDeque::new(),
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
        let session = match profile.activation {
            Activation::Abp => Some(RadioSession {
                keys: profile.app_keys,
                last_fcnt_up: profile.last_fcnt_up,
            }),
            Activation::Otaa { .. } => None,
        };
        let device = Device {
            session,
            dev_nonces: HashSet::new(),
            path: Vec::new(),
            path_at: UnixMs(0),
            last_app_fcnt_down: None,
            queue: VecDeque::new(),
            not_before: UnixMs(0),
            profile,
        };
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

    fn reject(&mut self, r: &UplinkRejection) {
        *self.counters.rejected.entry(r.kind()).or_default() += 1;
    }

    /// A gateway reported a frame. Copies of one frame are gathered for the
    /// de-duplication window; [`Self::handle_timeout`] processes them.
    pub fn handle_rx(&mut self, now: UnixMs, gateway: GatewayEui, rx: RxFrame) {
        self.counters.rx_frames += 1;
        self.forget(now);
        let meta = RxMeta {
            gateway,
            tmst: rx.tmst,
            freq_hz: rx.freq_hz,
            datr: rx.datr,
            rssi_dbm: rx.rssi_dbm,
            snr_db: rx.snr_db,
        };
        match self.gathering.get_mut(&rx.phy) {
            Some(g) if g.done => self.counters.late_duplicates += 1,
            Some(g) => {
                self.counters.duplicates += 1;
                // The same gateway reporting twice counts once.
                if !g.metas.iter().any(|m| m.gateway == gateway) {
                    g.metas.push(meta);
                }
            }
            None => {
                self.counters.unique_frames += 1;
                self.open.push_back((now, rx.phy.clone()));
                self.gathering.insert(
                    rx.phy,
                    Gathering {
                        metas: vec![meta],
                        done: false,
                    },
                );
            }
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
        let mut next = self
            .open
            .front()
            .map(|(t, _)| t.plus_ms(self.config.dedup_window_ms));
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
        while let Some((first, _)) = self.open.front() {
            if now.since(*first) < self.config.dedup_window_ms {
                break;
            }
            let Some((first, phy)) = self.open.pop_front() else {
                break;
            };
            let metas = match self.gathering.get_mut(&phy) {
                Some(g) => {
                    g.done = true;
                    std::mem::take(&mut g.metas)
                }
                None => continue,
            };
            self.process(now, &phy, metas);
            self.remembered.push_back((first, phy));
        }
        self.forget(now);
        self.service(now);
    }

    fn forget(&mut self, now: UnixMs) {
        while let Some((first, _)) = self.remembered.front() {
            if now.since(*first) < REMEMBER_MS {
                break;
            }
            if let Some((_, phy)) = self.remembered.pop_front() {
                self.gathering.remove(&phy);
            }
        }
    }

    pub fn poll_uplink(&mut self) -> Option<Uplink> {
        self.uplinks.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmission> {
        self.transmissions.pop_front()
    }

    fn process(&mut self, now: UnixMs, phy: &[u8], mut metas: Vec<RxMeta>) {
        metas.sort_by(|a, b| b.snr_db.total_cmp(&a.snr_db));
        let result = match phy.first().map(|&m| MType::from_mhdr(m)) {
            None => Err(UplinkRejection::Frame(FrameError::TooShort { len: 0 })),
            Some(MType::JoinRequest) => self.join(now, phy, &metas),
            Some(t) if t.is_data() && t.is_uplink() => self.data_up(now, phy, metas),
            Some(t) => Err(UplinkRejection::NotUplink(t)),
        };
        if let Err(r) = result {
            tracing::debug!(reason = %r, "uplink rejected at the network layer");
            self.reject(&r);
        }
    }

    fn data_up(
        &mut self,
        now: UnixMs,
        phy: &[u8],
        metas: Vec<RxMeta>,
    ) -> Result<(), UplinkRejection> {
        let header = lorawan::peek_header(phy).map_err(UplinkRejection::Frame)?;
        let &i = self
            .by_addr
            .get(&header.dev_addr)
            .ok_or(UplinkRejection::UnknownDevAddr(header.dev_addr))?;
        let device = &mut self.devices[i];
        let session = device
            .session
            .as_mut()
            .ok_or(UplinkRejection::UnknownDevAddr(header.dev_addr))?;
        let fcnt = match lorawan::rebuild_fcnt(session.last_fcnt_up, header.fcnt16) {
            Ok(f) => f,
            Err(FrameError::Replay { last, got }) => {
                return Err(UplinkRejection::Replay { last, got })
            }
            Err(e) => return Err(UplinkRejection::Frame(e)),
        };
        let same_keys = session.keys == device.profile.app_keys;
        let app_phy = if same_keys {
            // ABP: the MIC alone is the network server's business; the payload stays sealed.
            let frame =
                lorawan::decode_data_frame(phy, &session.keys, fcnt).map_err(|e| match e {
                    FrameError::BadMic => UplinkRejection::BadMic,
                    e => UplinkRejection::Frame(e),
                })?;
            drop(frame);
            phy.to_vec()
        } else {
            let frame =
                lorawan::decode_data_frame(phy, &session.keys, fcnt).map_err(|e| match e {
                    FrameError::BadMic => UplinkRejection::BadMic,
                    e => UplinkRejection::Frame(e),
                })?;
            lorawan::encode_data_frame(&frame, &device.profile.app_keys)
                .map_err(UplinkRejection::Frame)?
        };
        session.last_fcnt_up = Some(fcnt);
        device.path = metas;
        device.path_at = now;
        let best = device.path[0];
        self.counters.uplinks_accepted += 1;
        self.uplinks.push_back(Uplink {
            tenant: device.profile.tenant.clone(),
            dev_eui: device.profile.dev_eui,
            phy: app_phy,
            fcnt,
            gateways: device.path.len(),
            best,
            received: now,
        });
        if device.profile.class == DeviceClass::A {
            self.class_a_window(now, i, 1_000_000, 2_000_000);
        } else if !device.queue.is_empty() {
            // A Class C device that was waiting for a path now has one.
            self.class_c.push_back(i);
        }
        Ok(())
    }

    fn join(&mut self, now: UnixMs, phy: &[u8], metas: &[RxMeta]) -> Result<(), UplinkRejection> {
        let req = lorawan::peek_join_request(phy).map_err(UplinkRejection::Frame)?;
        let &i = self
            .by_eui
            .get(&req.dev_eui)
            .ok_or(UplinkRejection::UnknownDevEui(req.dev_eui))?;
        let device = &mut self.devices[i];
        let Activation::Otaa { join_eui, app_key } = device.profile.activation else {
            return Err(UplinkRejection::UnknownDevEui(req.dev_eui));
        };
        if join_eui != req.join_eui {
            return Err(UplinkRejection::UnknownDevEui(req.dev_eui));
        }
        lorawan::decode_join_request(phy, &app_key).map_err(|e| match e {
            FrameError::BadMic => UplinkRejection::BadMic,
            e => UplinkRejection::Frame(e),
        })?;
        if !device.dev_nonces.insert(req.dev_nonce) {
            return Err(UplinkRejection::DevNonceReused(req.dev_nonce, req.dev_eui));
        }
        self.used_dev_nonces.push_back((req.dev_eui, req.dev_nonce));
        let n = self.join_nonce.to_le_bytes();
        self.join_nonce = (self.join_nonce + 1) & 0x00FF_FFFF;
        let join_nonce = [n[0], n[1], n[2]];
        let keys =
            lorawan::derive_session_keys(&app_key, join_nonce, self.config.net_id, req.dev_nonce);
        // The counter carries over from the previous session (see the module docs).
        let last_fcnt_up = device
            .session
            .as_ref()
            .and_then(|s| s.last_fcnt_up)
            .or(device.profile.last_fcnt_up);
        device.session = Some(RadioSession { keys, last_fcnt_up });
        device.path = metas.to_vec();
        device.path_at = now;
        let rx2_dr = self.config.rx2_dr.eu868_index().unwrap_or(0);
        let accept = JoinAccept {
            join_nonce,
            net_id: self.config.net_id,
            dev_addr: device.profile.dev_addr,
            dl_settings: rx2_dr & 0x0f,
            rx_delay: 1,
            cf_list: None,
        };
        let phy = lorawan::encode_join_accept(&accept, &app_key);
        let dev_eui = device.profile.dev_eui;
        self.counters.joins_accepted += 1;
        tracing::info!(%dev_eui, dev_addr = %accept.dev_addr, "OTAA join accepted");
        if !self.send_in_rx_windows(
            now,
            i,
            &phy,
            5_000_000,
            6_000_000,
            Priority::High,
            TxKind::JoinAccept { dev_eui },
        ) {
            *self
                .counters
                .downlinks_refused
                .entry("join-accept-no-budget")
                .or_default() += 1;
        }
        Ok(())
    }

    /// Tries RX1 then RX2 after the device's last uplink, on the gateways that heard it.
    #[allow(clippy::too_many_arguments)]
    fn send_in_rx_windows(
        &mut self,
        now: UnixMs,
        i: usize,
        phy: &[u8],
        rx1_us: u32,
        rx2_us: u32,
        priority: Priority,
        what: TxKind,
    ) -> bool {
        let path = self.devices[i].path.clone();
        for meta in &path {
            let windows = [
                (
                    meta.tmst.wrapping_add(rx1_us),
                    meta.freq_hz,
                    meta.datr,
                    rx1_us,
                ),
                (
                    meta.tmst.wrapping_add(rx2_us),
                    self.config.rx2_freq_hz,
                    self.config.rx2_dr,
                    rx2_us,
                ),
            ];
            for (tmst, freq, dr, delay_us) in windows {
                let air = dr.time_on_air_us(phy.len(), false);
                let gw = self.gateways.entry(meta.gateway).or_default();
                if !gw.duty_fits(now, freq, air, priority) {
                    continue;
                }
                gw.duty.record(now, freq, air);
                let start = now.plus_ms(u64::from(delay_us) / 1000);
                gw.busy_until = gw.busy_until.max(start.plus_ms(air / 1000 + 1));
                let txpk = Txpk::new(
                    phy,
                    TxTiming::AtTmst(tmst),
                    freq,
                    dr,
                    self.config.tx_power_dbm,
                );
                self.push_tx(meta.gateway, txpk, air, what.clone());
                return true;
            }
        }
        false
    }

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

    /// Class A: the uplink just accepted opens RX1/RX2; send the head of the queue.
    fn class_a_window(&mut self, now: UnixMs, i: usize, rx1_us: u32, rx2_us: u32) {
        self.expire(now, i);
        let Some(head) = self.devices[i].queue.front().cloned() else {
            return;
        };
        let Some(phy) = self.radio_frame(i, &head.frame) else {
            self.devices[i].queue.pop_front();
            return;
        };
        let what = TxKind::Unicast {
            dev_eui: self.devices[i].profile.dev_eui,
            fcnt: head.frame.fcnt,
        };
        if self.send_in_rx_windows(now, i, &phy, rx1_us, rx2_us, head.priority, what) {
            self.devices[i].queue.pop_front();
        } else if head.priority == Priority::Low {
            self.devices[i].queue.pop_front();
            self.counters.duty_dropped += 1;
        } else {
            // Waits for the next uplink.
            self.counters.duty_queued += 1;
        }
    }

    /// The application frame re-framed into the device's radio session.
    fn radio_frame(&mut self, i: usize, frame: &DataFrame) -> Option<Vec<u8>> {
        let device = &self.devices[i];
        let keys = device.session.as_ref()?.keys;
        match lorawan::encode_data_frame(frame, &keys) {
            Ok(phy) => Some(phy),
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-frame a downlink");
                *self
                    .counters
                    .downlinks_refused
                    .entry("reframe")
                    .or_default() += 1;
                None
            }
        }
    }

    fn expire(&mut self, now: UnixMs, i: usize) {
        let ttl = self.config.downlink_ttl_ms;
        let q = &mut self.devices[i].queue;
        let before = q.len();
        q.retain(|d| now.since(d.enqueued) < ttl);
        self.counters.expired += (before - q.len()) as u64;
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

    fn accept_downlink(
        &mut self,
        now: UnixMs,
        tenant: &TenantId,
        dev_eui: DevEui,
        phy: &[u8],
        priority: Priority,
    ) -> Result<(), DownlinkRejection> {
        let &i = self
            .by_eui
            .get(&dev_eui)
            .filter(|&&i| self.devices[i].profile.tenant == *tenant)
            .ok_or_else(|| DownlinkRejection::UnknownDevice(dev_eui, tenant.clone()))?;
        let header = lorawan::peek_header(phy).map_err(DownlinkRejection::Frame)?;
        if header.mtype.is_uplink() {
            return Err(DownlinkRejection::NotDownlink(header.mtype));
        }
        let device = &mut self.devices[i];
        if header.dev_addr != device.profile.dev_addr {
            return Err(DownlinkRejection::WrongDevAddr {
                got: header.dev_addr,
                want: device.profile.dev_addr,
            });
        }
        let fcnt = match lorawan::rebuild_fcnt(device.last_app_fcnt_down, header.fcnt16) {
            Ok(f) => f,
            Err(FrameError::Replay { last, got }) => {
                return Err(DownlinkRejection::Replay { last, got })
            }
            Err(e) => return Err(DownlinkRejection::Frame(e)),
        };
        // Only frames the controller sealed may spend airtime: anyone on the broker can publish.
        let frame = lorawan::decode_data_frame(phy, &device.profile.app_keys, fcnt).map_err(
            |e| match e {
                FrameError::BadMic => DownlinkRejection::BadMic,
                e => DownlinkRejection::Frame(e),
            },
        )?;
        device.last_app_fcnt_down = Some(fcnt);
        if device.queue.len() >= self.config.max_queue_per_device {
            // Drop the oldest of the lowest priority.
            let lowest = device
                .queue
                .iter()
                .map(|d| d.priority)
                .min()
                .unwrap_or(priority);
            if lowest > priority {
                self.counters.queue_overflow += 1;
                return Ok(());
            }
            if let Some(pos) = device.queue.iter().position(|d| d.priority == lowest) {
                device.queue.remove(pos);
                self.counters.queue_overflow += 1;
            }
        }
        device.queue.push_back(QueuedDownlink {
            frame,
            priority,
            enqueued: now,
        });
        if device.profile.class == DeviceClass::C {
            let gather = self.config.multicast_gather_ms;
            let first_in_queue = device.queue.len() == 1;
            if gather > 0 && first_in_queue && self.in_a_group(dev_eui) {
                let device = &mut self.devices[i];
                device.not_before = device.not_before.max(now.plus_ms(gather));
            }
            self.class_c.push_back(i);
            self.service(now);
        }
        Ok(())
    }

    fn in_a_group(&self, dev_eui: DevEui) -> bool {
        self.groups
            .values()
            .any(|g| g.group.members.contains(&dev_eui))
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

    /// Zone coalescing: when every member of a group has the same command at the head of
    /// its Class C queue, the heads leave as one multicast frame, sealed with the group's
    /// keys and counter. One frame on the air per gateway instead of one per lamp is what
    /// lets a gateway's downlink budget command a whole town at dusk.
    fn coalesce(&mut self, now: UnixMs) {
        let mut frames = Vec::new();
        for (&mc_addr, group) in self.groups.iter_mut() {
            let members: Vec<usize> = group
                .group
                .members
                .iter()
                .filter_map(|eui| self.by_eui.get(eui).copied())
                .collect();
            if members.len() < 2 {
                continue;
            }
            let heads: Option<Vec<&QueuedDownlink>> = members
                .iter()
                .map(|&i| {
                    let d = &self.devices[i];
                    (d.profile.class == DeviceClass::C && !d.path.is_empty())
                        .then(|| d.queue.front())
                        .flatten()
                })
                .collect();
            let Some(heads) = heads else { continue };
            let first = &heads[0].frame;
            let alike = heads
                .iter()
                .all(|h| h.frame.fport == first.fport && h.frame.frm_payload == first.frm_payload);
            if !alike {
                continue;
            }
            let fcnt = group.last_fcnt.map_or(0, |f| f.wrapping_add(1));
            let frame = DataFrame {
                mtype: MType::UnconfirmedDataDown,
                dev_addr: mc_addr,
                fctrl: FCtrl::default(),
                fcnt,
                fopts: Vec::new(),
                fport: first.fport,
                frm_payload: first.frm_payload.clone(),
            };
            let priority = heads
                .iter()
                .map(|h| h.priority)
                .max()
                .unwrap_or(Priority::Normal);
            let Ok(phy) = lorawan::encode_data_frame(&frame, &group.group.keys) else {
                continue;
            };
            group.last_fcnt = Some(fcnt);
            frames.push((mc_addr, fcnt, phy, priority, members));
        }
        for (mc_addr, fcnt, phy, priority, members) in frames {
            let mut targets: Vec<GatewayEui> = Vec::new();
            for &i in &members {
                self.devices[i].queue.pop_front();
                self.devices[i].not_before = now;
                if let Some(m) = self.devices[i].path.first() {
                    targets.push(m.gateway);
                }
            }
            self.counters.coalesced_downlinks += members.len() as u64;
            targets.sort();
            targets.dedup();
            for gw in targets {
                self.gateways.entry(gw).or_default().mcast.push_back((
                    phy.clone(),
                    mc_addr,
                    fcnt,
                    priority,
                    now,
                ));
            }
        }
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
        match &result {
            Ok(_) => self.counters.downlinks_accepted += 1,
            Err(r) => *self.counters.downlinks_refused.entry(r.kind()).or_default() += 1,
        }
        result
    }

    fn accept_multicast(
        &mut self,
        now: UnixMs,
        tenant: &TenantId,
        phy: &[u8],
        priority: Priority,
    ) -> Result<usize, DownlinkRejection> {
        let header = lorawan::peek_header(phy).map_err(DownlinkRejection::Frame)?;
        match header.mtype {
            MType::UnconfirmedDataDown => {}
            MType::ConfirmedDataDown => return Err(DownlinkRejection::ConfirmedMulticast),
            t => return Err(DownlinkRejection::NotDownlink(t)),
        }
        let group = self
            .groups
            .get_mut(&header.dev_addr)
            .filter(|g| g.group.tenant == *tenant)
            .ok_or_else(|| DownlinkRejection::UnknownGroup(header.dev_addr, tenant.clone()))?;
        let fcnt = match lorawan::rebuild_fcnt(group.last_fcnt, header.fcnt16) {
            Ok(f) => f,
            Err(FrameError::Replay { last, got }) => {
                return Err(DownlinkRejection::Replay { last, got })
            }
            Err(e) => return Err(DownlinkRejection::Frame(e)),
        };
        lorawan::decode_data_frame(phy, &group.group.keys, fcnt).map_err(|e| match e {
            FrameError::BadMic => DownlinkRejection::BadMic,
            e => DownlinkRejection::Frame(e),
        })?;
        group.last_fcnt = Some(fcnt);
        // One transmission per gateway that is the best path of at least one member.
        let mut targets: Vec<GatewayEui> = group
            .group
            .members
            .iter()
            .filter_map(|eui| self.by_eui.get(eui))
            .filter_map(|&i| self.devices[i].path.first().map(|m| m.gateway))
            .collect();
        targets.sort();
        targets.dedup();
        let mc_addr = header.dev_addr;
        for gw in &targets {
            self.gateways.entry(*gw).or_default().mcast.push_back((
                phy.to_vec(),
                mc_addr,
                fcnt,
                priority,
                now,
            ));
        }
        self.service(now);
        Ok(targets.len())
    }

    /// Sends the Class C and multicast downlinks that are due, within budget.
    fn service(&mut self, now: UnixMs) {
        if self.config.multicast_gather_ms > 0 {
            self.coalesce(now);
        }
        let rx2_freq = self.config.rx2_freq_hz;
        let rx2_dr = self.config.rx2_dr;
        let power = self.config.tx_power_dbm;
        let ttl = self.config.downlink_ttl_ms;
        // Multicast first: one frame serves a whole group.
        let euis: Vec<GatewayEui> = self
            .gateways
            .iter()
            .filter(|(_, g)| !g.mcast.is_empty())
            .map(|(e, _)| *e)
            .collect();
        for eui in euis {
            while let Some(gw) = self.gateways.get_mut(&eui) {
                let Some((phy, mc_addr, fcnt, priority, enqueued)) = gw.mcast.front().cloned()
                else {
                    break;
                };
                if now.since(enqueued) >= ttl {
                    gw.mcast.pop_front();
                    self.counters.expired += 1;
                    continue;
                }
                if gw.busy_until > now {
                    break;
                }
                let air = rx2_dr.time_on_air_us(phy.len(), false);
                if !gw.duty_fits(now, rx2_freq, air, priority) {
                    if priority == Priority::Low {
                        gw.mcast.pop_front();
                        self.counters.duty_dropped += 1;
                        continue;
                    }
                    self.counters.duty_queued += 1;
                    gw.busy_until = gw.duty_retry_at(now, rx2_freq, air, priority);
                    break;
                }
                gw.duty.record(now, rx2_freq, air);
                gw.busy_until = now.plus_ms(air / 1000 + 1);
                gw.mcast.pop_front();
                let txpk = Txpk::new(&phy, TxTiming::Immediately, rx2_freq, rx2_dr, power);
                self.push_tx(eui, txpk, air, TxKind::Multicast { mc_addr, fcnt });
            }
        }

        let mut again = Vec::new();
        let pending: Vec<usize> = self.class_c.drain(..).collect();
        let mut seen = HashSet::new();
        for i in pending {
            if !seen.insert(i) {
                continue;
            }
            if self.devices[i].not_before > now {
                again.push(i);
                continue;
            }
            self.expire(now, i);
            if self.service_device(now, i) {
                again.push(i);
            }
        }
        self.class_c.extend(again);
    }

    /// Sends as much of one Class C device's queue as the gateways allow. True if some
    /// remains and should be retried (at `not_before`).
    fn service_device(&mut self, now: UnixMs, i: usize) -> bool {
        let rx2_freq = self.config.rx2_freq_hz;
        let rx2_dr = self.config.rx2_dr;
        let power = self.config.tx_power_dbm;
        loop {
            let Some(head) = self.devices[i].queue.front().cloned() else {
                return false;
            };
            if self.devices[i].path.is_empty() {
                // Never heard: no gateway to send through until its first uplink.
                return false;
            }
            let Some(phy) = self.radio_frame(i, &head.frame) else {
                self.devices[i].queue.pop_front();
                continue;
            };
            let air = rx2_dr.time_on_air_us(phy.len(), false);
            let mut wait_until: Option<UnixMs> = None;
            let mut sent = false;
            let mut any_busy = false;
            let path: Vec<GatewayEui> = self.devices[i].path.iter().map(|m| m.gateway).collect();
            for eui in path {
                let gw = self.gateways.entry(eui).or_default();
                let ready_at = if gw.busy_until > now {
                    any_busy = true;
                    gw.busy_until
                } else if !gw.duty_fits(now, rx2_freq, air, head.priority) {
                    gw.duty_retry_at(now, rx2_freq, air, head.priority)
                } else {
                    gw.duty.record(now, rx2_freq, air);
                    gw.busy_until = now.plus_ms(air / 1000 + 1);
                    let txpk = Txpk::new(&phy, TxTiming::Immediately, rx2_freq, rx2_dr, power);
                    let what = TxKind::Unicast {
                        dev_eui: self.devices[i].profile.dev_eui,
                        fcnt: head.frame.fcnt,
                    };
                    self.push_tx(eui, txpk, air, what);
                    sent = true;
                    break;
                };
                wait_until = Some(wait_until.map_or(ready_at, |w: UnixMs| w.min(ready_at)));
            }
            if sent {
                self.devices[i].queue.pop_front();
                continue;
            }
            let wait_until = wait_until.unwrap_or(now.plus_ms(1_000));
            if !any_busy {
                // Every gateway on the path is over this priority's share of its budget.
                if head.priority == Priority::Low {
                    self.devices[i].queue.pop_front();
                    self.counters.duty_dropped += 1;
                    continue;
                }
                self.counters.duty_queued += 1;
            }
            self.devices[i].not_before = wait_until;
            return true;
        }
    }
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            duty: DutyCycle::default(),
            busy_until: UnixMs(0),
            mcast: VecDeque::new(),
        }
    }
}

impl Gateway {
    fn duty_fits(&mut self, now: UnixMs, freq_hz: u32, air_us: u64, priority: Priority) -> bool {
        self.duty
            .fits_share(now, freq_hz, air_us, priority.budget_share_permille())
    }
    fn duty_retry_at(
        &mut self,
        now: UnixMs,
        freq_hz: u32,
        air_us: u64,
        priority: Priority,
    ) -> UnixMs {
        match self
            .duty
            .retry_at(now, freq_hz, air_us, priority.budget_share_permille())
        {
            Ok(t) => t,
            Err(Refusal::NoSubBand) => now.plus_ms(crate::dutycycle::WINDOW_MS),
            Err(Refusal::OverBudget { retry_at, .. }) => retry_at,
        }
    }
}
