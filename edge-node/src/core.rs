//! The edge node's deciding logic, sans-IO.
//!
//! Inputs arrive through `handle_*` (a downlink frame, a presence detection, a hardware
//! sample, the passing of time), outputs leave through `poll_*` (an uplink frame to send, the
//! next instant something is due) and [`NodeCore::level_pct`] (what the lamp driver should
//! output now). `now` is always an argument: the agent passes the wall clock, the demo a
//! scaled clock, the simulator virtual time, and all three run this same code.
//!
//! What the node decides by itself:
//! - **Ramping**: a new target is reached linearly over the commanded ramp time.
//! - **Reporting**: a status report every `report_interval_s` (phase spread by DevEUI so a
//!   town does not report in one burst), and at once when its sensor detects a road user (at
//!   most one every `min_report_gap_ms`).
//! - **Fail-safe**: until the first command, when a command's hold time expires, and when it
//!   has heard nothing from the controller for the profile's `silence_timeout_s`, it runs its
//!   fail-safe profile: the profile's level while it is dark at its position (dusk and dawn
//!   from [`lamplighter_protocol::sun`]), off while it is light.
//!
//! LoRaWAN (1.0.x) is the node's only frame format, whatever carries it (MQTT or radio):
//! - **Activation**: ABP nodes start with their session; OTAA nodes ([`NodeConfig::otaa`])
//!   send a JoinRequest with a fresh DevNonce until a JoinAccept opens a session, then
//!   report as ABP nodes do. DevNonces only ever count up ([`NodeCore::next_dev_nonce`] is
//!   what the agent persists), because a network server refuses a nonce it has seen.
//! - **Class**: a Class C node listens all the time; a Class A node takes a unicast downlink
//!   only in the receive windows after its own uplink ([`CLASS_A_WINDOW_MS`]).
//! - **Multicast**: frames for one of the node's groups ([`NodeConfig::multicast`]) are
//!   opened with the group's keys and checked against the group's own frame counter, so
//!   one downlink can dim a whole zone.

use lamplighter_protocol::local_time::TimeZone;
use lamplighter_protocol::lorawan::{
    self, AesKey, DataFrame, FCtrl, FrameError, JoinRequest, MType, SessionKeys,
};
use lamplighter_protocol::payload::{
    Command, FailSafeProfile, FaultFlags, NodeMode, PayloadError, Presence, ReportTrigger,
    StatusReport, FPORT_COMMAND, FPORT_STATUS,
};
use lamplighter_protocol::{sun, DevAddr, DevEui, UnixMs};
use serde::{Deserialize, Serialize};

/// A node's identity, keys, place and habits: what an installer loads into it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeConfig {
    pub dev_eui: DevEui,
    pub dev_addr: DevAddr,
    pub keys: SessionKeys,
    pub lat: f64,
    pub lon: f64,
    /// Seconds between periodic status reports.
    pub report_interval_s: u32,
    /// Presence reports are sent at once, but no closer together than this.
    pub min_report_gap_ms: u64,
    /// Ramp used when the node changes level on its own (fail-safe steps, dusk, dawn).
    pub local_ramp_ms: u32,
    pub fail_safe: FailSafeProfile,
    /// The clocks the fail-safe profile's minutes are read on, following their changes
    /// (`Europe/London`: GMT in winter, BST in summer). `None`: the profile's own fixed
    /// `utc_offset_min`.
    #[serde(default)]
    pub time_zone: Option<TimeZone>,
    /// LoRaWAN device class: when the node listens for downlinks.
    #[serde(default)]
    pub class: LorawanClass,
    /// Set for an over-the-air-activated node: `dev_addr` and `keys` are then only the
    /// session of the last join, replaced by the next JoinAccept.
    #[serde(default)]
    pub otaa: Option<OtaaKeys>,
    /// Multicast groups the node belongs to (at most a few: a zone, the town).
    #[serde(default)]
    pub multicast: Vec<MulticastSession>,
}

/// When a node listens (LoRaWAN 1.0.x Classes A and C; B is not used for lighting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LorawanClass {
    /// Listens only in RX1/RX2 after each uplink: least power, slowest to command.
    A,
    /// Listens whenever it does not transmit: mains-powered lamp nodes are Class C.
    #[default]
    C,
}

/// The root keys of an OTAA node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtaaKeys {
    pub join_eui: DevEui,
    pub app_key: AesKey,
}

/// A multicast group as a member holds it: McAddr and the group's session keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MulticastSession {
    pub mc_addr: DevAddr,
    pub keys: SessionKeys,
}

/// How long after its uplink a Class A node accepts a unicast downlink: RX1 opens 1 s
/// after the uplink, RX2 2 s after; a gateway may schedule into either, and 1 s more
/// covers the frame's own airtime at SF12.
pub const CLASS_A_WINDOW_MS: u64 = 3_000;

/// The first JoinRequest goes at once; unanswered ones are repeated at this gap, doubling
/// up to [`JOIN_RETRY_MAX_MS`] (LoRaWAN asks joining devices to back off).
pub const JOIN_RETRY_MS: u64 = 10_000;
pub const JOIN_RETRY_MAX_MS: u64 = 600_000;

impl NodeConfig {
    pub fn new(dev_eui: DevEui, dev_addr: DevAddr, keys: SessionKeys, lat: f64, lon: f64) -> Self {
        NodeConfig {
            dev_eui,
            dev_addr,
            keys,
            lat,
            lon,
            report_interval_s: 300,
            min_report_gap_ms: 1_000,
            local_ramp_ms: 5_000,
            fail_safe: FailSafeProfile::part_night(0, 900),
            time_zone: None,
            class: LorawanClass::C,
            otaa: None,
            multicast: Vec::new(),
        }
    }
}

/// What the lamp driver and the sensors measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub power_w: f32,
    pub ambient_lux: f32,
    /// Faults the hardware itself detects (lamp failure, driver fault).
    pub faults: FaultFlags,
}

/// The kinds of road user a presence sensor tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoadUser {
    Pedestrian,
    Cyclist,
    Vehicle,
}

/// Why a downlink was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownlinkError {
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("frame is for DevAddr {0}, not this node")]
    NotForMe(DevAddr),
    #[error("frame is not a downlink ({0:?})")]
    NotDownlink(MType),
    #[error("FPort {0:?} is not the command port")]
    WrongPort(Option<u8>),
    #[error("command: {0}")]
    Payload(#[from] PayloadError),
    #[error("Class A node heard a unicast downlink outside its receive windows")]
    OutsideReceiveWindow,
    #[error("join-accept while not joining (ABP node, or already joined)")]
    UnexpectedJoinAccept,
    #[error("data frame before the node has joined")]
    NotJoined,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Ramp {
    from_pct: f32,
    to_pct: f32,
    start: UnixMs,
    duration_ms: u64,
}

impl Ramp {
    fn level_at(&self, now: UnixMs) -> f32 {
        let elapsed = now.since(self.start);
        if self.duration_ms == 0 || elapsed >= self.duration_ms {
            self.to_pct
        } else {
            let f = elapsed as f32 / self.duration_ms as f32;
            self.from_pct + (self.to_pct - self.from_pct) * f
        }
    }
    fn end(&self) -> UnixMs {
        self.start.plus_ms(self.duration_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Commanded {
    level_pct: u8,
    /// When the hold ends and the fail-safe profile takes over again; None: no end.
    hold_until: Option<UnixMs>,
}

/// A status report as it leaves the node, before it is sealed in a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Uplink {
    /// The frame counter it is sent under.
    pub fcnt_up: u32,
    pub report: StatusReport,
}

/// Counters the agent exposes; nothing here is lost silently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NodeCounters {
    pub uplinks: u64,
    pub join_requests: u64,
    pub joins: u64,
    pub multicast_applied: u64,
    pub downlinks_applied: u64,
    pub downlinks_rejected: u64,
}

pub struct NodeCore {
    config: NodeConfig,
    /// FCnt of the next uplink.
    fcnt_up: u32,
    last_fcnt_down: Option<u32>,
    /// Per multicast group (same order as the config), the last group FCnt applied.
    last_mc_fcnt: Vec<Option<u32>>,
    /// False for an OTAA node until its JoinAccept arrives.
    joined: bool,
    /// The DevNonce of the next JoinRequest.
    next_dev_nonce: u16,
    /// When the next JoinRequest may go, and the gap after it.
    next_join: UnixMs,
    join_gap_ms: u64,
    /// The DevNonce of the JoinRequest in flight (the JoinAccept's keys depend on it).
    join_dev_nonce: Option<u16>,
    last_uplink: Option<UnixMs>,
    commanded: Option<Commanded>,
    last_heard: UnixMs,
    ramp: Ramp,
    presence: Presence,
    energy_wh: f64,
    last_sample: Option<(UnixMs, Sample)>,
    next_periodic: UnixMs,
    /// Periodic reports fall on `periodic_origin + k * interval`.
    periodic_origin: UnixMs,
    pending: Option<ReportTrigger>,
    last_report: Option<UnixMs>,
    counters: NodeCounters,
    /// Dusk and dawn at this column.
    dark: sun::DarkSpell,
}

impl NodeCore {
    /// `fcnt_up` is the next uplink counter (persisted by the agent, 0 for a new session) and
    /// `energy_wh` the node's meter reading kept across restarts.
    pub fn new(config: NodeConfig, now: UnixMs, fcnt_up: u32, energy_wh: f64) -> Self {
        let interval_ms = config.report_interval_s.max(1) as u64 * 1000;
        let hash = config.dev_eui.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // A first report soon after start (within 10 s), so the controller sees a restarted
        // town at once; after it, reports spread over the whole interval.
        let first_ms = hash % interval_ms.min(10_000);
        let mut node = NodeCore {
            fcnt_up,
            last_fcnt_down: None,
            last_mc_fcnt: vec![None; config.multicast.len()],
            joined: config.otaa.is_none(),
            next_dev_nonce: 0,
            next_join: now,
            join_gap_ms: JOIN_RETRY_MS,
            join_dev_nonce: None,
            last_uplink: None,
            commanded: None,
            last_heard: now,
            ramp: Ramp {
                from_pct: 0.0,
                to_pct: 0.0,
                start: now,
                duration_ms: 0,
            },
            presence: Presence::default(),
            energy_wh,
            last_sample: None,
            next_periodic: now.plus_ms(first_ms),
            periodic_origin: now.plus_ms(hash % interval_ms),
            pending: None,
            last_report: None,
            counters: NodeCounters::default(),
            dark: sun::DarkSpell::default(),
            config,
        };
        // Not commanded yet: the fail-safe profile, at once.
        let target = node.fail_safe_level_pct(now);
        node.retarget(now, target, 0);
        node
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }
    pub fn fcnt_up(&self) -> u32 {
        self.fcnt_up
    }
    pub fn energy_wh(&self) -> f64 {
        self.energy_wh
    }
    pub fn counters(&self) -> NodeCounters {
        self.counters
    }
    /// False only for an OTAA node that has no session yet.
    pub fn is_joined(&self) -> bool {
        self.joined
    }
    /// The DevNonce the next JoinRequest will carry: the agent persists it, so a node that
    /// restarts never repeats one (the network server would refuse the join).
    pub fn next_dev_nonce(&self) -> u16 {
        self.next_dev_nonce
    }
    /// Restores the persisted DevNonce counter (call right after [`NodeCore::new`]).
    pub fn set_next_dev_nonce(&mut self, dev_nonce: u16) {
        self.next_dev_nonce = dev_nonce;
    }

    /// The level the driver should output now, percent.
    pub fn level_pct(&self, now: UnixMs) -> f32 {
        self.ramp.level_at(now)
    }

    /// The level the node is heading for.
    pub fn target_pct(&self) -> f32 {
        self.ramp.to_pct
    }

    /// When the level reaches [`NodeCore::target_pct`] (in the past once it has). Until
    /// the next input the level is a straight line to it and flat after.
    pub fn ramp_end(&self) -> UnixMs {
        self.ramp.end()
    }

    pub fn mode(&self, now: UnixMs) -> NodeMode {
        match self.commanded {
            Some(c) if !self.silent(now) && c.hold_until.is_none_or(|t| now < t) => {
                NodeMode::Commanded
            }
            _ => NodeMode::FailSafe,
        }
    }

    fn silent(&self, now: UnixMs) -> bool {
        now.since(self.last_heard) >= self.config.fail_safe.silence_timeout_s as u64 * 1000
    }

    /// The fail-safe profile's level now: its step while dark, off while light.
    fn fail_safe_level_pct(&self, now: UnixMs) -> u8 {
        if self.dark.is_dark(self.config.lat, self.config.lon, now) {
            let p = &self.config.fail_safe;
            let offset_min = match self.config.time_zone {
                Some(tz) => tz.offset_min_at(now),
                None => p.utc_offset_min as i32,
            };
            let minute = now.local_seconds_of_day(offset_min) / 60;
            p.level_at_minute(minute as u16)
        } else {
            0
        }
    }

    fn retarget(&mut self, now: UnixMs, to_pct: u8, ramp_ms: u64) {
        let to = to_pct as f32;
        if self.ramp.to_pct == to {
            return;
        }
        self.ramp = Ramp {
            from_pct: self.ramp.level_at(now),
            to_pct: to,
            start: now,
            duration_ms: ramp_ms,
        };
    }

    /// A downlink frame arrived (over MQTT or radio). Only a frame for this node, with a valid
    /// MIC and a counter that advances, is applied.
    pub fn handle_downlink(&mut self, now: UnixMs, phy: &[u8]) -> Result<Command, DownlinkError> {
        let result = self.apply_downlink(now, phy);
        match &result {
            Ok(_) => self.counters.downlinks_applied += 1,
            Err(_) => self.counters.downlinks_rejected += 1,
        }
        result
    }

    fn apply_downlink(&mut self, now: UnixMs, phy: &[u8]) -> Result<Command, DownlinkError> {
        let header = match lorawan::peek_header(phy) {
            Ok(h) => h,
            // A join-accept is encrypted whole, so it has no readable header.
            Err(FrameError::NotDataFrame(MType::JoinAccept)) => {
                return self.apply_join_accept(now, phy)
            }
            Err(e) => return Err(e.into()),
        };
        if header.mtype.is_uplink() {
            return Err(DownlinkError::NotDownlink(header.mtype));
        }
        if let Some(g) = self
            .config
            .multicast
            .iter()
            .position(|m| m.mc_addr == header.dev_addr)
        {
            let keys = self.config.multicast[g].keys;
            let fcnt = lorawan::rebuild_fcnt(self.last_mc_fcnt[g], header.fcnt16)?;
            let command = self.open_command(now, phy, &keys, fcnt)?;
            self.last_mc_fcnt[g] = Some(fcnt);
            self.counters.multicast_applied += 1;
            return Ok(command);
        }
        if !self.joined {
            return Err(DownlinkError::NotJoined);
        }
        if header.dev_addr != self.config.dev_addr {
            return Err(DownlinkError::NotForMe(header.dev_addr));
        }
        if self.config.class == LorawanClass::A
            && self
                .last_uplink
                .is_none_or(|t| now < t || now.since(t) > CLASS_A_WINDOW_MS)
        {
            return Err(DownlinkError::OutsideReceiveWindow);
        }
        let fcnt = lorawan::rebuild_fcnt(self.last_fcnt_down, header.fcnt16)?;
        let keys = self.config.keys;
        let command = self.open_command(now, phy, &keys, fcnt)?;
        self.last_fcnt_down = Some(fcnt);
        Ok(command)
    }

    /// Checks the MIC, decrypts and applies a command frame; the caller records the FCnt.
    fn open_command(
        &mut self,
        now: UnixMs,
        phy: &[u8],
        keys: &SessionKeys,
        fcnt: u32,
    ) -> Result<Command, DownlinkError> {
        let frame = lorawan::decode_data_frame(phy, keys, fcnt)?;
        if frame.fport != Some(FPORT_COMMAND) {
            return Err(DownlinkError::WrongPort(frame.fport));
        }
        let command = Command::decode(&frame.frm_payload)?;
        self.apply_command(now, &command);
        Ok(command)
    }

    /// A unicast command that reached the node already opened: its frame's MIC checked and
    /// payload decrypted. This is [`NodeCore::handle_downlink`] past the codec, with the same
    /// counter rule (a `fcnt_down` that does not advance is a replay); the planning
    /// simulator drives nodes through it, since a day of a town is millions of frames whose
    /// sealing and opening would tell it nothing the codec's own tests do not.
    pub fn handle_command(
        &mut self,
        now: UnixMs,
        fcnt_down: u32,
        command: &Command,
    ) -> Result<(), DownlinkError> {
        if !self.joined {
            self.counters.downlinks_rejected += 1;
            return Err(DownlinkError::NotJoined);
        }
        if let Some(last) = self.last_fcnt_down.filter(|&last| fcnt_down <= last) {
            self.counters.downlinks_rejected += 1;
            return Err(DownlinkError::Frame(FrameError::Replay {
                last,
                got: fcnt_down,
            }));
        }
        self.last_fcnt_down = Some(fcnt_down);
        self.apply_command(now, command);
        self.counters.downlinks_applied += 1;
        Ok(())
    }

    fn apply_command(&mut self, now: UnixMs, command: &Command) {
        self.last_heard = now;
        match command {
            Command::SetLevel {
                level_pct,
                ramp_ms,
                hold_s,
            } => {
                self.commanded = Some(Commanded {
                    level_pct: *level_pct,
                    hold_until: (*hold_s > 0).then(|| now.plus_ms(*hold_s as u64 * 1000)),
                });
                self.retarget(now, *level_pct, *ramp_ms as u64);
            }
            Command::FailSafeProfile(p) => {
                self.config.fail_safe = p.clone();
            }
        }
        self.on_time(now);
    }

    /// A JoinAccept: the session keys follow from it and the DevNonce of our request.
    fn apply_join_accept(&mut self, now: UnixMs, phy: &[u8]) -> Result<Command, DownlinkError> {
        let (Some(otaa), Some(dev_nonce), false) =
            (self.config.otaa, self.join_dev_nonce, self.joined)
        else {
            return Err(DownlinkError::UnexpectedJoinAccept);
        };
        let accept = lorawan::decrypt_join_accept(phy, &otaa.app_key)?;
        self.config.keys = lorawan::derive_session_keys(
            &otaa.app_key,
            accept.join_nonce,
            accept.net_id,
            dev_nonce.to_le_bytes(),
        );
        self.config.dev_addr = accept.dev_addr;
        self.joined = true;
        self.join_dev_nonce = None;
        // A new session starts both counters again (LoRaWAN 1.0.x).
        self.fcnt_up = 0;
        self.last_fcnt_down = None;
        self.last_heard = now;
        self.counters.joins += 1;
        // Report at once, so the network learns the new session's path.
        self.pending = Some(ReportTrigger::Periodic);
        Ok(Command::SetLevel {
            level_pct: self.target_pct().round() as u8,
            ramp_ms: 0,
            hold_s: 0,
        })
    }

    /// The presence sensor saw a road user.
    pub fn handle_presence(&mut self, now: UnixMs, who: RoadUser) {
        let slot = match who {
            RoadUser::Pedestrian => &mut self.presence.pedestrians,
            RoadUser::Cyclist => &mut self.presence.cyclists,
            RoadUser::Vehicle => &mut self.presence.vehicles,
        };
        *slot = slot.saturating_add(1);
        self.pending = Some(ReportTrigger::Presence);
        self.on_time(now);
    }

    /// The hardware measured power and light. Energy is integrated from the previous sample's
    /// power over the time since, so the meter is right however often samples come.
    pub fn handle_sample(&mut self, now: UnixMs, sample: Sample) {
        if let Some((t, prev)) = self.last_sample {
            self.energy_wh += prev.power_w as f64 * now.since(t) as f64 / 3_600_000.0;
        }
        let new_faults = sample.faults.0 & !self.last_sample.map_or(0, |(_, s)| s.faults.0);
        if new_faults != 0 {
            self.pending = Some(ReportTrigger::Fault);
        }
        self.last_sample = Some((now, sample));
        self.on_time(now);
    }

    /// Time passed: apply hold expiry, silence and the fail-safe schedule.
    pub fn handle_timeout(&mut self, now: UnixMs) {
        self.on_time(now);
    }

    fn on_time(&mut self, now: UnixMs) {
        // The mode once: every input and every poll comes through here.
        let (target, ramp_ms) = match (self.mode(now), self.commanded) {
            (NodeMode::Commanded, Some(c)) => (c.level_pct, self.ramp.duration_ms),
            _ => (
                self.fail_safe_level_pct(now),
                self.config.local_ramp_ms as u64,
            ),
        };
        self.retarget(now, target, ramp_ms);
    }

    /// The next uplink frame to send, if one is due: a JoinRequest while an OTAA node has
    /// no session, else the status report of [`NodeCore::poll_report`] sealed in a data frame.
    pub fn poll_transmit(&mut self, now: UnixMs) -> Option<Vec<u8>> {
        if !self.joined {
            self.on_time(now);
            return self.poll_join_request(now);
        }
        let uplink = self.poll_report(now)?;
        // A 22-byte payload always fits; an error here would be a bug in our own codec, and
        // the node keeps running rather than panicking on a lamp column.
        self.seal(&uplink).ok()
    }

    /// The next status report due and the uplink counter it goes under, for a node with a
    /// session (`None` while an OTAA node is joining: its JoinRequest goes through
    /// [`NodeCore::poll_transmit`]). Once returned, the report counts as sent, and no other
    /// is due at the same instant: the next periodic one is a period on, a presence one a
    /// report gap on. A driver polls once per instant.
    pub fn poll_report(&mut self, now: UnixMs) -> Option<Uplink> {
        self.on_time(now);
        if !self.joined {
            return None;
        }
        let gap_ok = self
            .last_report
            .is_none_or(|t| now.since(t) >= self.config.min_report_gap_ms);
        let trigger = match self.pending {
            Some(t) if gap_ok => t,
            _ if now >= self.next_periodic => ReportTrigger::Periodic,
            _ => return None,
        };
        let uplink = Uplink {
            fcnt_up: self.fcnt_up,
            report: self.status_report(now, trigger),
        };
        self.fcnt_up = self.fcnt_up.wrapping_add(1);
        self.presence = Presence::default();
        self.pending = None;
        self.last_report = Some(now);
        let interval_ms = self.config.report_interval_s.max(1) as u64 * 1000;
        let periods_passed = now.since(self.periodic_origin) / interval_ms + 1;
        self.next_periodic = self
            .periodic_origin
            .plus_ms(periods_passed * interval_ms)
            .max(self.periodic_origin);
        if self.next_periodic <= now {
            self.next_periodic = self.next_periodic.plus_ms(interval_ms);
        }
        self.counters.uplinks += 1;
        self.last_uplink = Some(now);
        Some(uplink)
    }

    /// The LoRaWAN data frame carrying `uplink` in this node's session.
    pub fn seal(&self, uplink: &Uplink) -> Result<Vec<u8>, FrameError> {
        let frame = DataFrame {
            mtype: MType::UnconfirmedDataUp,
            dev_addr: self.config.dev_addr,
            fctrl: FCtrl::default(),
            fcnt: uplink.fcnt_up,
            fopts: Vec::new(),
            fport: Some(FPORT_STATUS),
            frm_payload: uplink.report.encode(),
        };
        lorawan::encode_data_frame(&frame, &self.config.keys)
    }

    fn poll_join_request(&mut self, now: UnixMs) -> Option<Vec<u8>> {
        let otaa = self.config.otaa?;
        if now < self.next_join {
            return None;
        }
        let dev_nonce = self.next_dev_nonce;
        // Nonces never repeat within a key's life: the counter does not wrap.
        self.next_dev_nonce = self.next_dev_nonce.checked_add(1)?;
        self.join_dev_nonce = Some(dev_nonce);
        self.next_join = now.plus_ms(self.join_gap_ms);
        self.join_gap_ms = (self.join_gap_ms * 2).min(JOIN_RETRY_MAX_MS);
        self.counters.join_requests += 1;
        self.last_uplink = Some(now);
        Some(lorawan::encode_join_request(
            &JoinRequest {
                join_eui: otaa.join_eui,
                dev_eui: self.config.dev_eui,
                dev_nonce: dev_nonce.to_le_bytes(),
            },
            &otaa.app_key,
        ))
    }

    /// The report the node would send now.
    pub fn status_report(&self, now: UnixMs, trigger: ReportTrigger) -> StatusReport {
        let sample = self.last_sample.map(|(_, s)| s).unwrap_or_default();
        let level = self.level_pct(now);
        let mut faults = sample.faults;
        if self.commanded.is_some() && self.silent(now) {
            faults = faults | FaultFlags::COMMS_LOST;
        }
        if level > 0.0 && sample.ambient_lux > 200.0 {
            faults = faults | FaultFlags::DAY_BURNING;
        }
        StatusReport {
            level_pct: level.round().clamp(0.0, 100.0) as u8,
            target_level_pct: self.ramp.to_pct as u8,
            power_dw: (sample.power_w * 10.0).round().clamp(0.0, u16::MAX as f32) as u16,
            energy_dwh: (self.energy_wh * 10.0) as u64 as u32,
            ambient_lux: sample.ambient_lux.round().clamp(0.0, u16::MAX as f32) as u16,
            presence: self.presence,
            faults,
            mode: self.mode(now),
            trigger,
            reading_time_s: now.as_secs() as u32,
            applied_fcnt_down: self.last_fcnt_down.unwrap_or(0) as u16,
        }
    }

    /// The next instant the node has something to do (a report, the end of a ramp, a hold
    /// or silence expiring, the next fail-safe step). The agent sleeps until then unless an
    /// input arrives first.
    pub fn poll_timeout(&self, now: UnixMs) -> UnixMs {
        let mut next = if self.joined {
            self.next_periodic
        } else {
            self.next_join.max(now)
        };
        if self.pending.is_some() {
            let gap_end = self
                .last_report
                .map_or(now, |t| t.plus_ms(self.config.min_report_gap_ms));
            next = next.min(gap_end.max(now));
        }
        if self.ramp.end() > now {
            next = next.min(self.ramp.end());
        }
        if let Some(Commanded {
            hold_until: Some(t),
            ..
        }) = self.commanded
        {
            if t > now {
                next = next.min(t);
            }
        }
        let silence_end = self
            .last_heard
            .plus_ms(self.config.fail_safe.silence_timeout_s as u64 * 1000);
        if silence_end > now {
            next = next.min(silence_end);
        }
        // A commanded node holds its command until the hold or the silence ends (both
        // above); the fail-safe profile and the sun change on minute boundaries at the
        // finest.
        if self.mode(now) == NodeMode::Commanded {
            return next;
        }
        next.min(UnixMs((now.0 / 60_000 + 1) * 60_000))
    }
}

#[cfg(test)]
mod tests;
