//! The controller's deciding logic, sans-IO.
//!
//! Follow the data: an uplink frame arrives in [`ControllerCore::handle_uplink`] with the
//! topic it came on; it is checked (topic, DevAddr, FCnt, MIC, payload) and either rejected
//! with a typed reason or taken into the lamp's state. A presence count starts a bubble at
//! that lamp and its neighbours, which is decided at once. [`ControllerCore::handle_tick`]
//! re-decides the lamps whose decision time may have changed (the schedule, dusk and dawn,
//! bubbles and overrides ending, a zone's class) and keeps nodes from falling silent: each
//! decision notes when the next one could differ, so a tick passes over the rest. Commands leave through [`ControllerCore::poll_command`] as
//! ready-to-publish frames, and everything worth keeping through
//! [`ControllerCore::poll_event`] for the store.
//!
//! Demand: every accepted report's presence counts go to its zone ([`demand`]), which counts
//! them into fixed intervals, feeds one forecaster per road-user mode and keeps the lighting
//! class the demand calls for ([`classes`]); the policy ([`policy`]) turns that class, the
//! presence bubbles, overrides and the time of night into each lamp's level and the reason
//! for it. [`ControllerCore::zones`] shows each zone's class, demand and forecast.
//!
//! Zones' roads (design class and capacity) come from [`ControllerConfig::zones`], with
//! [`ControllerConfig::zone_default`] for zones not listed; they live in the configuration
//! rather than in the store because they describe roads, which a council edits as a table,
//! not nodes.
//!
//! Nothing here reads a clock or touches a socket, so the simulator drives this same code in
//! virtual time.

pub mod classes;
pub mod demand;
pub mod policy;
mod spatial;

use std::collections::{BTreeMap, HashMap, VecDeque};

use lamplighter_protocol::lorawan::{self, DataFrame, FCtrl, FrameError, MType, SessionKeys};
use lamplighter_protocol::payload::{
    Command, FaultFlags, NodeMode, PayloadError, StatusReport, FPORT_COMMAND, FPORT_STATUS,
};
use lamplighter_protocol::topics::{self, Topic, TopicError};
use lamplighter_protocol::{sun, DevAddr, DevEui, LampId, TenantId, UnixMs, ZoneId};
use serde::{Deserialize, Serialize};

use demand::ZoneState;
pub use demand::{ZoneDemandView, ZoneParams, ZoneRoad};
use policy::{Decision, LampSituation, Override, PolicyConfig, PolicyError, Reason};

/// A node as provisioned in the store: identity, keys, place, and the counters that protect
/// its session from replays across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionedNode {
    pub lamp: LampId,
    pub tenant: TenantId,
    pub dev_eui: DevEui,
    pub dev_addr: DevAddr,
    pub keys: SessionKeys,
    pub zone: ZoneId,
    pub lat: f64,
    pub lon: f64,
    pub rated_power_w: f32,
    /// Highest uplink FCnt accepted so far.
    pub last_fcnt_up: Option<u32>,
    /// FCnt of the next downlink.
    pub next_fcnt_down: u32,
    /// The node's energy meter (dWh) at its last accepted report.
    pub last_energy_dwh: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    pub policy: PolicyConfig,
    /// The interval nodes report at; a lamp is online while it reported within
    /// `offline_after_reports` of these.
    pub report_interval_s: u32,
    pub offline_after_reports: u32,
    /// Resend a lamp's command this often even when nothing changed, so the node does not
    /// fall back to its fail-safe profile for silence.
    pub refresh_s: u32,
    /// Resend when a node reports a target other than the commanded level this long after
    /// the command (it was lost, or the node restarted).
    pub reconcile_after_s: u32,
    /// The road of every zone not listed in `zones`.
    pub zone_default: ZoneRoad,
    /// Each zone's road: design class and capacity (`[[controller.zones]]`).
    pub zones: Vec<ZoneParams>,
    /// Fault detection thresholds (`[controller.faults]`).
    pub faults: crate::faults::FaultConfig,
    /// What a kWh costs in money and carbon, for the energy figures (`[controller.tariff]`).
    pub tariff: crate::store::Tariff,
    /// Track every zone's demand (presence per interval, the class it allows, the
    /// forecast), for the dashboard. When false, only the zones whose policy acts on demand
    /// (`adaptive`) track it: a planning run sets it so, since it has no dashboard, and
    /// tracking and forecasting were a sixth of its other policies' time.
    pub demand_every_zone: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            policy: PolicyConfig::default(),
            report_interval_s: 300,
            offline_after_reports: 3,
            refresh_s: 300,
            reconcile_after_s: 15,
            zone_default: ZoneRoad::default(),
            zones: Vec::new(),
            faults: crate::faults::FaultConfig::default(),
            tariff: crate::store::Tariff::default(),
            demand_every_zone: true,
        }
    }
}

/// Why a [`ControllerConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("{what}: capacity_per_h must be a positive number, got {got}")]
    Capacity { what: String, got: f64 },
    #[error("zone {zone} is listed twice in zones")]
    DuplicateZone { zone: String },
    #[error("report_interval_s and offline_after_reports must be positive")]
    Reporting,
    #[error("{0}")]
    Faults(#[from] crate::faults::FaultConfigError),
    #[error("{0}")]
    Tariff(#[from] crate::store::TariffError),
}

impl ControllerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.policy.validate()?;
        if self.report_interval_s == 0 || self.offline_after_reports == 0 {
            return Err(ConfigError::Reporting);
        }
        self.faults.validate()?;
        self.tariff.validate()?;
        let capacity_ok = |c: f64| c.is_finite() && c > 0.0;
        if !capacity_ok(self.zone_default.capacity_per_h) {
            return Err(ConfigError::Capacity {
                what: "zone_default".into(),
                got: self.zone_default.capacity_per_h,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for z in &self.zones {
            let name = match &z.tenant {
                Some(t) => format!("{t}/{}", z.zone.0),
                None => z.zone.0.to_string(),
            };
            if !capacity_ok(z.capacity_per_h) {
                return Err(ConfigError::Capacity {
                    what: format!("zone {name}"),
                    got: z.capacity_per_h,
                });
            }
            if !seen.insert((z.tenant.clone(), z.zone)) {
                return Err(ConfigError::DuplicateZone { zone: name });
            }
        }
        Ok(())
    }

    /// Whether a zone under `policy` tracks its demand (see
    /// [`ControllerConfig::demand_every_zone`]).
    pub fn tracks_demand(&self, policy: &PolicyConfig) -> bool {
        self.demand_every_zone || policy.adaptive
    }

    /// The road of a tenant's zone: its own entry, else the entry for every tenant, else
    /// the default.
    pub fn zone_road(&self, tenant: &TenantId, zone: ZoneId) -> ZoneRoad {
        let entry = |t: Option<&TenantId>| {
            self.zones
                .iter()
                .find(|z| z.zone == zone && z.tenant.as_ref() == t)
        };
        entry(Some(tenant))
            .or_else(|| entry(None))
            .map_or(self.zone_default, ZoneParams::road)
    }
}

/// Why an uplink was refused. Each is counted under [`Rejection::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("topic: {0}")]
    Topic(#[from] TopicError),
    #[error("published on a downlink topic")]
    DownlinkTopic,
    #[error("frame: {0}")]
    Frame(FrameError),
    #[error("replayed frame: FCnt {got} after {last}")]
    Replay { last: u32, got: u32 },
    #[error("bad MIC for DevAddr {0}")]
    BadMic(DevAddr),
    #[error("unknown DevAddr {0}")]
    UnknownDevAddr(DevAddr),
    #[error("unknown lamp {0}")]
    UnknownLamp(LampId),
    #[error(
        "DevAddr {dev_addr} belongs to {owner}, not to the topic's {topic_tenant}/{topic_dev_eui}"
    )]
    TopicMismatch {
        dev_addr: DevAddr,
        owner: DevEui,
        topic_tenant: TenantId,
        topic_dev_eui: DevEui,
    },
    #[error("not an uplink data frame ({0:?})")]
    NotUplink(MType),
    #[error("FPort {0:?} is not the status port")]
    WrongPort(Option<u8>),
    #[error("payload: {0}")]
    Payload(#[from] PayloadError),
}

/// Why a command could not be sealed for the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("unknown lamp {0}")]
    UnknownLamp(LampId),
    #[error("command: {0}")]
    Payload(#[from] PayloadError),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
}

impl Rejection {
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Topic(_) | Rejection::DownlinkTopic => "topic",
            Rejection::Frame(_) => "malformed",
            Rejection::Replay { .. } => "replay",
            Rejection::BadMic(_) => "bad-mic",
            Rejection::UnknownDevAddr(_) => "unknown-devaddr",
            Rejection::UnknownLamp(_) => "unknown-lamp",
            Rejection::TopicMismatch { .. } => "topic-mismatch",
            Rejection::NotUplink(_) => "not-uplink",
            Rejection::WrongPort(_) => "wrong-port",
            Rejection::Payload(_) => "payload",
        }
    }
}

/// A command ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub lamp: LampId,
    /// What the node is told; [`ControllerCore::downlink`] seals it for the wire.
    pub command: Command,
    pub level_pct: u8,
    pub ramp_ms: u32,
    pub reason: Reason,
    pub fcnt_down: u32,
}

/// What the store keeps.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Reading {
        lamp: LampId,
        received: UnixMs,
        fcnt: u32,
        report: StatusReport,
        /// Energy used since the previous report, from the node's meter, dWh.
        energy_delta_dwh: u32,
    },
    CommandSent {
        lamp: LampId,
        at: UnixMs,
        level_pct: u8,
        ramp_ms: u32,
        reason: Reason,
        fcnt_down: u32,
    },
    Rejected {
        at: UnixMs,
        kind: &'static str,
        detail: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Commanded {
    level_pct: u8,
    reason: Reason,
    at: UnixMs,
}

#[derive(Debug, Clone)]
struct LampState {
    node: ProvisionedNode,
    last_report: Option<(UnixMs, StatusReport)>,
    override_: Option<Override>,
    commanded: Option<Commanded>,
    /// Index of the lamp's zone in the core.
    zone: usize,
    /// The demand interval this lamp last reported in.
    counted_interval: Option<u64>,
    /// Energy counted since this controller started.
    energy_wh: f64,
    presence_total: u64,
    /// Dusk and dawn at the lamp.
    dark: sun::DarkSpell,
}

/// What every tick and every presence report reads of each lamp, kept apart from the rest
/// of [`LampState`] in a dense array: a tick scans every lamp's `recheck_at`, and a bubble
/// reads its lamps' `bubble_until`, without pulling whole lamp states through the cache.
#[derive(Debug, Clone, Copy)]
struct LampHot {
    /// Until then, a tick would decide this lamp as last time (nothing it was decided on
    /// changes with time before it); see [`ControllerCore::recheck_at`].
    recheck_at: UnixMs,
    bubble_until: Option<UnixMs>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub uplinks: u64,
    pub commands: u64,
    pub rejected: u64,
}

/// The figures the demo prints and `GET /api/v1/summary` returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub lamps: usize,
    pub lamps_online: usize,
    pub uplinks: u64,
    pub commands: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    pub energy_wh: f64,
    pub power_w: f64,
    pub mean_level_pct: f64,
    pub lamps_with_faults: usize,
    pub now_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LampView {
    pub lamp: LampId,
    pub tenant: TenantId,
    pub dev_eui: DevEui,
    pub zone: ZoneId,
    pub lat: f64,
    pub lon: f64,
    pub online: bool,
    pub level_pct: Option<u8>,
    pub target_level_pct: Option<u8>,
    pub power_w: Option<f32>,
    pub mode: Option<NodeMode>,
    pub faults: u8,
    pub last_seen_ms: Option<u64>,
    pub commanded_level_pct: Option<u8>,
    pub reason: Option<Reason>,
    pub energy_wh: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneView {
    pub tenant: TenantId,
    pub zone: ZoneId,
    pub lamps: usize,
    pub lamps_online: usize,
    pub mean_level_pct: f64,
    pub power_w: f64,
    pub energy_wh: f64,
    pub presence_total: u64,
    /// Lamps per reason of their current command.
    pub reasons: BTreeMap<&'static str, usize>,
    /// The class in force, demand and forecast (flattened into the zone's JSON).
    #[serde(flatten)]
    pub demand: ZoneDemandView,
}

pub struct ControllerCore {
    config: ControllerConfig,
    lamps: Vec<LampState>,
    /// Index: as `lamps`.
    hot: Vec<LampHot>,
    by_addr: HashMap<DevAddr, usize>,
    by_lamp: HashMap<LampId, usize>,
    neighbours: spatial::Adjacency,
    zones: Vec<ZoneState>,
    outbox: VecDeque<Outgoing>,
    events: VecDeque<Event>,
    counters: Counters,
    rejected_by_kind: BTreeMap<&'static str, u64>,
    /// Zones whose engineers chose their own policy (index: the core's zone index).
    zone_policies: HashMap<usize, PolicyConfig>,
    /// The demand interval every zone was last advanced to by a tick: until the next one
    /// begins, a tick finds no interval to end (a zone's reports advance it within the same
    /// interval at most).
    ticked_interval: Option<u64>,
}

/// A zone's policy settings, as an engineer edits them on the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSettings {
    /// A named policy (`full`, `part-night`, `profile-reactive`, `reactive`, `adaptive`).
    pub policy: String,
    pub design_class: lamplighter_protocol::class::LightingClass,
    pub min_level_pct: u8,
    /// For a full 0-100 % swing, up and down.
    pub ramp_up_ms: u32,
    pub ramp_down_ms: u32,
}

/// Why zone settings were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ZoneSettingsError {
    #[error("no such zone")]
    UnknownZone,
    #[error("{0}")]
    Policy(PolicyError),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProvisionError {
    #[error("DevAddr {0} is provisioned twice")]
    DuplicateDevAddr(DevAddr),
    #[error("lamp {0} is provisioned twice")]
    DuplicateLamp(LampId),
    #[error("invalid controller config: {0}")]
    Config(#[from] ConfigError),
}

impl ControllerCore {
    pub fn new(
        config: ControllerConfig,
        nodes: Vec<ProvisionedNode>,
    ) -> Result<Self, ProvisionError> {
        config.validate()?;
        let mut by_addr = HashMap::with_capacity(nodes.len());
        let mut by_lamp = HashMap::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            if by_lamp.insert(n.lamp, i).is_some() {
                return Err(ProvisionError::DuplicateLamp(n.lamp));
            }
            if by_addr.insert(n.dev_addr, i).is_some() {
                return Err(ProvisionError::DuplicateDevAddr(n.dev_addr));
            }
        }
        let neighbours = spatial::Adjacency::new(spatial::neighbours(
            &nodes
                .iter()
                .map(|n| (n.tenant.clone(), n.lat, n.lon))
                .collect::<Vec<_>>(),
            config.policy.bubble_radius_m,
            config.policy.bubble_neighbours,
        ));
        let mut zones: Vec<ZoneState> = Vec::new();
        let mut zone_index: BTreeMap<(TenantId, ZoneId), usize> = BTreeMap::new();
        let hot = vec![
            LampHot {
                recheck_at: UnixMs(0),
                bubble_until: None,
            };
            nodes.len()
        ];
        let lamps = nodes
            .into_iter()
            .enumerate()
            .map(|(i, node)| {
                let key = (node.tenant.clone(), node.zone);
                let zone = *zone_index.entry(key).or_insert_with(|| {
                    let road = config.zone_road(&node.tenant, node.zone);
                    let tracking = config.tracks_demand(&config.policy);
                    zones.push(ZoneState::new(road, &config.policy, tracking));
                    zones.len() - 1
                });
                zones[zone].lamps.push(i);
                LampState {
                    node,
                    last_report: None,
                    override_: None,
                    commanded: None,
                    zone,
                    counted_interval: None,
                    energy_wh: 0.0,
                    presence_total: 0,
                    dark: sun::DarkSpell::default(),
                }
            })
            .collect();
        Ok(ControllerCore {
            config,
            lamps,
            hot,
            by_addr,
            by_lamp,
            neighbours,
            zones,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            rejected_by_kind: BTreeMap::new(),
            zone_policies: HashMap::new(),
            ticked_interval: None,
        })
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }
    pub fn counters(&self) -> Counters {
        self.counters
    }
    pub fn lamp_count(&self) -> usize {
        self.lamps.len()
    }
    pub fn neighbours_of(&self, lamp: LampId) -> Vec<LampId> {
        self.lamp_index(lamp)
            .map(|i| {
                self.neighbours
                    .of(i)
                    .iter()
                    .map(|&j| self.lamps[j as usize].node.lamp)
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn node(&self, lamp: LampId) -> Option<&ProvisionedNode> {
        self.lamp_index(lamp).map(|i| &self.lamps[i].node)
    }
    /// Whether an operator override holds the lamp at `now` (a lamp lit by day on purpose
    /// is not day-burning).
    pub fn override_active(&self, lamp: LampId, now: UnixMs) -> bool {
        self.lamp_index(lamp)
            .and_then(|i| self.lamps[i].override_)
            .is_some_and(|o| now < o.until)
    }

    /// An MQTT message arrived on `topic`. Accepted or rejected, never a panic.
    pub fn handle_uplink(
        &mut self,
        now: UnixMs,
        topic: &str,
        phy: &[u8],
    ) -> Result<LampId, Rejection> {
        let result = self.accept_uplink(now, topic, phy);
        self.count_outcome(now, &result);
        result
    }

    /// Counts an uplink accepted or rejected (by reason, with an event for the store).
    fn count_outcome(&mut self, now: UnixMs, result: &Result<LampId, Rejection>) {
        match result {
            Ok(_) => self.counters.uplinks += 1,
            Err(r) => {
                self.counters.rejected += 1;
                *self.rejected_by_kind.entry(r.kind()).or_default() += 1;
                self.events.push_back(Event::Rejected {
                    at: now,
                    kind: r.kind(),
                    detail: r.to_string(),
                });
            }
        }
    }

    fn accept_uplink(&mut self, now: UnixMs, topic: &str, phy: &[u8]) -> Result<LampId, Rejection> {
        let (topic_tenant, topic_dev_eui) = match topics::parse(topic)? {
            Topic::Uplink { tenant, dev_eui } => (tenant, dev_eui),
            Topic::Downlink { .. } => return Err(Rejection::DownlinkTopic),
        };
        let header = lorawan::peek_header(phy).map_err(Rejection::Frame)?;
        if !header.mtype.is_uplink() || !header.mtype.is_data() {
            return Err(Rejection::NotUplink(header.mtype));
        }
        let &i = self
            .by_addr
            .get(&header.dev_addr)
            .ok_or(Rejection::UnknownDevAddr(header.dev_addr))?;
        let node = &self.lamps[i].node;
        if node.tenant != topic_tenant || node.dev_eui != topic_dev_eui {
            return Err(Rejection::TopicMismatch {
                dev_addr: header.dev_addr,
                owner: node.dev_eui,
                topic_tenant,
                topic_dev_eui,
            });
        }
        let fcnt = match lorawan::rebuild_fcnt(node.last_fcnt_up, header.fcnt16) {
            Ok(f) => f,
            Err(FrameError::Replay { last, got }) => return Err(Rejection::Replay { last, got }),
            Err(e) => return Err(Rejection::Frame(e)),
        };
        let frame = match lorawan::decode_data_frame(phy, &node.keys, fcnt) {
            Ok(f) => f,
            Err(FrameError::BadMic) => return Err(Rejection::BadMic(header.dev_addr)),
            Err(e) => return Err(Rejection::Frame(e)),
        };
        if frame.fport != Some(FPORT_STATUS) {
            return Err(Rejection::WrongPort(frame.fport));
        }
        let report = StatusReport::decode(&frame.frm_payload)?;
        Ok(self.accept_report(now, i, fcnt, &report))
    }

    /// A status report that arrived already opened: its frame's topic, MIC and payload
    /// checked. This is [`ControllerCore::handle_uplink`] past the codec, with the same
    /// counter rule (an `fcnt_up` that does not advance is a replay); the planning simulator
    /// drives the controller through it, since sealing and opening millions of frames a
    /// simulated day would tell it nothing the codec's own tests do not. The report is
    /// borrowed, so that a simulator passes it from where it waited rather than copying
    /// it just before the call (a copy the CPU stalled on, a tenth of a handled event).
    pub fn handle_report(
        &mut self,
        now: UnixMs,
        lamp: LampId,
        fcnt_up: u32,
        report: &StatusReport,
    ) -> Result<LampId, Rejection> {
        let result = match self.lamp_index(lamp) {
            None => Err(Rejection::UnknownLamp(lamp)),
            Some(i) => match self.lamps[i].node.last_fcnt_up {
                Some(last) if fcnt_up <= last => Err(Rejection::Replay { last, got: fcnt_up }),
                _ => Ok(self.accept_report(now, i, fcnt_up, report)),
            },
        };
        self.count_outcome(now, &result);
        result
    }

    /// Asks the CPU to fetch what [`ControllerCore::handle_report`] reads first of `lamp`'s
    /// state (a hint: no effect on state). A simulator driving thousands of lamps calls it
    /// a few events ahead of a report; otherwise every report waits on memory.
    pub fn prefetch_report(&self, lamp: LampId) {
        // The number as the index, as `lamp_index` tries first; a wrong guess only wastes
        // the hint.
        let i = lamp.0 as usize;
        if let Some(l) = self.lamps.get(i) {
            lamplighter_protocol::hint::prefetch_lines(l);
            // A presence report then reads its neighbours' list and their bubbles.
            lamplighter_protocol::hint::prefetch(self.hot.as_ptr().wrapping_add(i));
            self.neighbours.prefetch_of(i);
        }
    }

    /// The second half of [`ControllerCore::prefetch_report`], for once its lines have
    /// arrived (an event or so later): what `report` reaches through them, its zone's
    /// demand and, with presence, its neighbours' bubbles and what deciding them reads.
    pub fn prefetch_report_then(&self, lamp: LampId, report: &StatusReport) {
        use lamplighter_protocol::hint::{prefetch, prefetch_lines};
        let i = lamp.0 as usize;
        let Some(l) = self.lamps.get(i) else {
            return;
        };
        if let Some(z) = self.zones.get(l.zone) {
            prefetch_lines(z);
        }
        if report.presence.total() == 0 {
            return;
        }
        if let Some(ids) = self.neighbours.get(i) {
            for &j in ids {
                prefetch(self.hot.as_ptr().wrapping_add(j as usize));
                if let Some(n) = self.lamps.get(j as usize) {
                    prefetch(&n.node.lat);
                    prefetch(&n.dark);
                }
            }
        }
    }

    /// The lamp's index in the core. Lamps are usually numbered from 0 in the order they
    /// were provisioned, so the number is tried as the index before the map.
    fn lamp_index(&self, lamp: LampId) -> Option<usize> {
        match self.lamps.get(lamp.0 as usize) {
            Some(l) if l.node.lamp == lamp => Some(lamp.0 as usize),
            _ => self.by_lamp.get(&lamp).copied(),
        }
    }

    /// From here on the report counts: energy, presence, demand, and the decisions they call.
    fn accept_report(&mut self, now: UnixMs, i: usize, fcnt: u32, report: &StatusReport) -> LampId {
        let lamp = &mut self.lamps[i];
        lamp.node.last_fcnt_up = Some(fcnt);
        let energy_delta_dwh = lamp.node.last_energy_dwh.map_or(report.energy_dwh, |prev| {
            report.energy_dwh.wrapping_sub(prev)
        });
        lamp.node.last_energy_dwh = Some(report.energy_dwh);
        lamp.energy_wh += energy_delta_dwh as f64 / 10.0;
        lamp.presence_total += report.presence.total() as u64;
        lamp.last_report = Some((now, *report));
        let id = lamp.node.lamp;
        let class_changed = self.count_demand(now, i, report);
        self.events.push_back(Event::Reading {
            lamp: id,
            received: now,
            fcnt,
            report: *report,
            energy_delta_dwh,
        });

        if report.presence.total() > 0 {
            let zone = self.lamps[i].zone;
            let until = now.plus_ms(policy::bubble_hold_ms(&self.config.policy, report.presence));
            for k in 0..=self.neighbours.of(i).len() {
                let j = if k == 0 {
                    i
                } else {
                    self.neighbours.of(i)[k - 1] as usize
                };
                let h = &mut self.hot[j];
                // A lamp already in a bubble was decided in it, and nothing else it was
                // decided on has changed before its recheck time (unless its zone's class
                // just did): a longer bubble alone would decide it the same.
                let in_bubble = h.bubble_until.is_some_and(|t| now < t);
                h.bubble_until = Some(h.bubble_until.map_or(until, |t| t.max(until)));
                if !in_bubble
                    || h.recheck_at <= now
                    || (class_changed && self.lamps[j].zone == zone)
                {
                    self.decide_lamp(now, j);
                }
            }
        } else {
            self.reconcile(now, i, report);
        }
        if class_changed {
            self.decide_zone(now, self.lamps[i].zone);
        }
        id
    }

    /// Counts a report's presence into its zone's interval. Returns whether the class the
    /// zone's lamps are lit for changed (it rose, or the zone's demand became known).
    fn count_demand(&mut self, now: UnixMs, i: usize, report: &StatusReport) -> bool {
        let policy = &self.config.policy;
        let z = self.lamps[i].zone;
        let zone = &mut self.zones[z];
        if !zone.tracking {
            return false;
        }
        let was_known = zone.demand_known(now, policy);
        let mut changed = zone.advance(now, policy);
        let interval = zone.interval();
        let first = self.lamps[i].counted_interval != interval;
        self.lamps[i].counted_interval = interval;
        changed |= zone.count(now, report.presence, first, policy);
        changed || !was_known
    }

    fn decide_zone(&mut self, now: UnixMs, z: usize) {
        for k in 0..self.zones[z].lamps.len() {
            let j = self.zones[z].lamps[k];
            self.decide_lamp(now, j);
        }
    }

    /// A node that reports a target other than what we commanded, long enough after the
    /// command, missed it (lost, or the node restarted): send it again.
    fn reconcile(&mut self, now: UnixMs, i: usize, report: &StatusReport) {
        let Some(c) = self.lamps[i].commanded else {
            self.decide_lamp(now, i);
            return;
        };
        let stale = now.since(c.at) >= self.config.reconcile_after_s as u64 * 1000;
        let off_target =
            report.target_level_pct != c.level_pct || report.mode == NodeMode::FailSafe;
        if stale && off_target {
            self.lamps[i].commanded = None;
            self.decide_lamp(now, i);
        }
    }

    /// Time passed: end the demand intervals that are over, then re-decide the lamps of
    /// zones whose class changed and those whose recheck time has come. Any other lamp would
    /// be decided as before, so passing over it changes nothing.
    pub fn handle_tick(&mut self, now: UnixMs) {
        let interval = ZoneState::interval_of(now, &self.config.policy);
        let mut class_changed = Vec::new();
        if self.ticked_interval != Some(interval) {
            class_changed = self
                .zones
                .iter_mut()
                .map(|zone| zone.tracking && zone.advance(now, &self.config.policy))
                .collect();
            self.ticked_interval = Some(interval);
        }
        let any_changed = class_changed.contains(&true);
        for i in 0..self.lamps.len() {
            if self.hot[i].recheck_at <= now || (any_changed && class_changed[self.lamps[i].zone]) {
                self.decide_lamp(now, i);
            }
        }
    }

    /// Set or clear (level None) an operator override on one lamp.
    pub fn set_override(
        &mut self,
        now: UnixMs,
        lamp: LampId,
        level_pct: Option<u8>,
        until: UnixMs,
    ) {
        if let Some(i) = self.lamp_index(lamp) {
            self.lamps[i].override_ = level_pct.map(|level_pct| Override {
                level_pct: level_pct.min(100),
                until,
            });
            self.decide_lamp(now, i);
        }
    }

    /// The policy zone `z` runs: its own if an operator set one, else the configured one.
    fn policy_of(&self, z: usize) -> &PolicyConfig {
        if self.zone_policies.is_empty() {
            return &self.config.policy;
        }
        self.zone_policies.get(&z).unwrap_or(&self.config.policy)
    }

    fn zone_index(&self, tenant: &TenantId, zone: ZoneId) -> Option<usize> {
        self.lamps
            .iter()
            .find(|l| &l.node.tenant == tenant && l.node.zone == zone)
            .map(|l| l.zone)
    }

    /// A zone's policy settings (its own, else the configured policy and road); `None` for a
    /// zone with no lamps.
    pub fn zone_settings(&self, tenant: &TenantId, zone: ZoneId) -> Option<ZoneSettings> {
        let z = self.zone_index(tenant, zone)?;
        let p = self.policy_of(z);
        Some(ZoneSettings {
            policy: p.name.clone(),
            design_class: self.zones[z].road.design_class,
            min_level_pct: p.min_level_pct,
            ramp_up_ms: p.ramp_up_ms,
            ramp_down_ms: p.ramp_down_ms,
        })
    }

    /// Sets a zone's policy settings and re-decides its lamps at once. The zone's policy is
    /// the named one (the configured policy itself when the name is the same), with the
    /// configured UTC offset and these limits; it is validated as a whole. Returns the lamps
    /// in the zone.
    pub fn set_zone_settings(
        &mut self,
        now: UnixMs,
        tenant: &TenantId,
        zone: ZoneId,
        settings: &ZoneSettings,
    ) -> Result<usize, ZoneSettingsError> {
        let z = self
            .zone_index(tenant, zone)
            .ok_or(ZoneSettingsError::UnknownZone)?;
        let mut p = if settings.policy == self.config.policy.name {
            self.config.policy.clone()
        } else {
            let mut p = PolicyConfig::named(&settings.policy).ok_or_else(|| {
                ZoneSettingsError::Policy(PolicyError::UnknownName(settings.policy.clone()))
            })?;
            p.utc_offset_min = self.config.policy.utc_offset_min;
            p
        };
        p.min_level_pct = settings.min_level_pct;
        p.ramp_up_ms = settings.ramp_up_ms;
        p.ramp_down_ms = settings.ramp_down_ms;
        p.validate().map_err(ZoneSettingsError::Policy)?;
        self.zones[z].road.design_class = settings.design_class;
        self.zones[z].tracking = self.config.tracks_demand(&p);
        self.zone_policies.insert(z, p);
        self.decide_zone(now, z);
        Ok(self.zones[z].lamps.len())
    }

    fn decide_lamp(&mut self, now: UnixMs, i: usize) {
        let cfg = &self.config;
        let lamp = &self.lamps[i];
        let zone_policy = self.policy_of(lamp.zone);
        let situation = LampSituation {
            now,
            dark: lamp.dark.is_dark(lamp.node.lat, lamp.node.lon, now),
            bubble_until: self.hot[i].bubble_until,
            override_: lamp.override_,
            class: self.zones[lamp.zone].class_in_force(now, zone_policy),
        };
        let Decision { level_pct, reason } = policy::decide(zone_policy, &situation);
        // A presence command carries a hold (below) after which the node falls back to its
        // fail-safe profile; while the bubble lasts, send it again before that hold ends.
        let refresh_due = lamp.commanded.is_none_or(|c| {
            now.since(c.at) >= cfg.refresh_s as u64 * 1000
                || (reason == Reason::Presence
                    && c.reason == Reason::Presence
                    && now.since(c.at) >= zone_policy.bubble_hold_s as u64 * 1000)
        });
        let changed = lamp.commanded.is_none_or(|c| c.level_pct != level_pct);
        // Where the policy falls back on the night profile, its next step may change the level.
        let by_profile = situation.dark && !(zone_policy.adaptive && situation.class.is_some());
        if changed || refresh_due {
            self.command(now, i, level_pct, reason);
        }
        self.hot[i].recheck_at = self.recheck_at(now, i, by_profile);
    }

    /// The first instant at which deciding lamp `i` again may give another answer than now
    /// (or send again): dusk or dawn, a bubble or override ending, a refresh falling due, the
    /// zone's demand going stale, and the night profile's next step when it is in play.
    /// Early is harmless; late would miss a change.
    fn recheck_at(&self, now: UnixMs, i: usize, by_profile: bool) -> UnixMs {
        let lamp = &self.lamps[i];
        let zone_policy = self.policy_of(lamp.zone);
        let mut at = lamp.dark.spell_end(lamp.node.lat, lamp.node.lon, now);
        let mut upto = |t: UnixMs| {
            if t > now {
                at = at.min(t);
            }
        };
        if let Some(t) = self.hot[i].bubble_until {
            upto(t);
        }
        if let Some(o) = lamp.override_ {
            upto(o.until);
        }
        if let Some(c) = lamp.commanded {
            upto(c.at.plus_ms(self.config.refresh_s as u64 * 1000));
            if c.reason == Reason::Presence {
                upto(c.at.plus_ms(zone_policy.bubble_hold_s as u64 * 1000));
            }
        }
        if let Some(t) = self.zones[lamp.zone].demand_known_until(now, zone_policy) {
            upto(t);
        }
        if let Some(t) = by_profile
            .then(|| policy::next_profile_step(zone_policy, now))
            .flatten()
        {
            upto(t);
        }
        at
    }

    /// Sends lamp `i` the command for `level_pct`, with the ramp and hold that go with it.
    fn command(&mut self, now: UnixMs, i: usize, level_pct: u8, reason: Reason) {
        let lamp = &self.lamps[i];
        let zone_policy = self.policy_of(lamp.zone);
        let from = lamp
            .commanded
            .map(|c| c.level_pct)
            .or(lamp.last_report.map(|(_, r)| r.level_pct))
            .unwrap_or(0);
        // As the wire carries it, so what is recorded is what the node does.
        let ramp_ms = Command::wire_ramp_ms(policy::ramp_ms(zone_policy, from, level_pct));
        // A presence level carries its own hold, so a node drops back by itself should the
        // controller go away while the bubble is up.
        let hold_s = match reason {
            Reason::Presence => (zone_policy.bubble_hold_s + 60).min(u16::MAX as u32) as u16,
            _ => 0,
        };
        let command = Command::SetLevel {
            level_pct,
            ramp_ms,
            hold_s,
        };
        self.send(now, i, command, level_pct, ramp_ms, reason);
    }

    fn send(
        &mut self,
        now: UnixMs,
        i: usize,
        command: Command,
        level_pct: u8,
        ramp_ms: u32,
        reason: Reason,
    ) {
        let lamp = &mut self.lamps[i];
        let fcnt_down = lamp.node.next_fcnt_down;
        lamp.node.next_fcnt_down = fcnt_down.wrapping_add(1);
        lamp.commanded = Some(Commanded {
            level_pct,
            reason,
            at: now,
        });
        let id = lamp.node.lamp;
        self.outbox.push_back(Outgoing {
            lamp: id,
            command,
            level_pct,
            ramp_ms,
            reason,
            fcnt_down,
        });
        self.events.push_back(Event::CommandSent {
            lamp: id,
            at: now,
            level_pct,
            ramp_ms,
            reason,
            fcnt_down,
        });
        self.counters.commands += 1;
    }

    /// The topic and LoRaWAN frame that carry a command to its node (sealed in the node's
    /// session under the command's `fcnt_down`).
    pub fn downlink(&self, o: &Outgoing) -> Result<(String, Vec<u8>), SealError> {
        let node = self.node(o.lamp).ok_or(SealError::UnknownLamp(o.lamp))?;
        let frame = DataFrame {
            mtype: MType::UnconfirmedDataDown,
            dev_addr: node.dev_addr,
            fctrl: FCtrl::default(),
            fcnt: o.fcnt_down,
            fopts: Vec::new(),
            fport: Some(FPORT_COMMAND),
            frm_payload: o.command.encode()?,
        };
        let phy = lorawan::encode_data_frame(&frame, &node.keys)?;
        Ok((topics::downlink(&node.tenant, node.dev_eui), phy))
    }

    pub fn poll_command(&mut self) -> Option<Outgoing> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn online(&self, lamp: &LampState, now: UnixMs) -> bool {
        let window_ms =
            self.config.report_interval_s as u64 * 1000 * self.config.offline_after_reports as u64;
        lamp.last_report
            .is_some_and(|(t, _)| now.since(t) <= window_ms)
    }

    fn visible(lamp: &LampState, tenant: Option<&TenantId>) -> bool {
        tenant.is_none_or(|t| &lamp.node.tenant == t)
    }

    /// The summary of all lamps, or of one tenant's.
    pub fn summary(&self, now: UnixMs, tenant: Option<&TenantId>) -> Summary {
        let mut s = Summary {
            lamps: 0,
            lamps_online: 0,
            uplinks: self.counters.uplinks,
            commands: self.counters.commands,
            rejected: self.counters.rejected,
            rejected_by_reason: self.rejected_by_kind.clone(),
            energy_wh: 0.0,
            power_w: 0.0,
            mean_level_pct: 0.0,
            lamps_with_faults: 0,
            now_ms: now.0,
        };
        let mut level_sum = 0.0;
        for l in self.lamps.iter().filter(|l| Self::visible(l, tenant)) {
            s.lamps += 1;
            s.energy_wh += l.energy_wh;
            if self.online(l, now) {
                s.lamps_online += 1;
            }
            if let Some((_, r)) = l.last_report {
                s.power_w += r.power_w() as f64;
                level_sum += r.level_pct as f64;
                if r.faults.0 & !FaultFlags::COMMS_LOST.0 != 0 {
                    s.lamps_with_faults += 1;
                }
            }
        }
        if s.lamps > 0 {
            s.mean_level_pct = level_sum / s.lamps as f64;
        }
        s
    }

    pub fn lamps(&self, now: UnixMs, tenant: Option<&TenantId>) -> Vec<LampView> {
        self.lamps
            .iter()
            .filter(|l| Self::visible(l, tenant))
            .map(|l| {
                let r = l.last_report.map(|(_, r)| r);
                LampView {
                    lamp: l.node.lamp,
                    tenant: l.node.tenant.clone(),
                    dev_eui: l.node.dev_eui,
                    zone: l.node.zone,
                    lat: l.node.lat,
                    lon: l.node.lon,
                    online: self.online(l, now),
                    level_pct: r.map(|r| r.level_pct),
                    target_level_pct: r.map(|r| r.target_level_pct),
                    power_w: r.map(|r| r.power_w()),
                    mode: r.map(|r| r.mode),
                    faults: r.map_or(0, |r| r.faults.0),
                    last_seen_ms: l.last_report.map(|(t, _)| t.0),
                    commanded_level_pct: l.commanded.map(|c| c.level_pct),
                    reason: l.commanded.map(|c| c.reason),
                    energy_wh: l.energy_wh,
                }
            })
            .collect()
    }

    pub fn zones(&self, now: UnixMs, tenant: Option<&TenantId>) -> Vec<ZoneView> {
        let mut zones: BTreeMap<(TenantId, ZoneId), (ZoneView, f64)> = BTreeMap::new();
        for l in self.lamps.iter().filter(|l| Self::visible(l, tenant)) {
            let key = (l.node.tenant.clone(), l.node.zone);
            let (z, level_sum) = zones.entry(key).or_insert_with(|| {
                (
                    ZoneView {
                        tenant: l.node.tenant.clone(),
                        zone: l.node.zone,
                        lamps: 0,
                        lamps_online: 0,
                        mean_level_pct: 0.0,
                        power_w: 0.0,
                        energy_wh: 0.0,
                        presence_total: 0,
                        reasons: BTreeMap::new(),
                        demand: self.zones[l.zone].view(now, &self.config.policy),
                    },
                    0.0,
                )
            });
            z.lamps += 1;
            z.energy_wh += l.energy_wh;
            z.presence_total += l.presence_total;
            if self.online(l, now) {
                z.lamps_online += 1;
            }
            if let Some((_, r)) = l.last_report {
                z.power_w += r.power_w() as f64;
                *level_sum += r.level_pct as f64;
            }
            if let Some(c) = l.commanded {
                *z.reasons.entry(c.reason.as_str()).or_default() += 1;
            }
        }
        zones
            .into_values()
            .map(|(mut z, level_sum)| {
                z.mean_level_pct = level_sum / z.lamps.max(1) as f64;
                z
            })
            .collect()
    }

    /// The session counters to persist (so a restart keeps replay protection).
    pub fn session_counters(
        &self,
    ) -> impl Iterator<Item = (LampId, Option<u32>, u32, Option<u32>)> + '_ {
        self.lamps.iter().map(|l| {
            (
                l.node.lamp,
                l.node.last_fcnt_up,
                l.node.next_fcnt_down,
                l.node.last_energy_dwh,
            )
        })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod zone_settings_tests {
    use super::*;
    use lamplighter_protocol::lorawan::AesKey;
    use lamplighter_protocol::LightingClass;

    // 2024-12-21 22:00 UTC: dark in Bristol; the default profile dims to 50 %.
    const NIGHT: UnixMs = UnixMs(1_734_818_400_000);

    fn tenant() -> TenantId {
        TenantId::new("bristol").unwrap()
    }

    fn node(i: u32) -> ProvisionedNode {
        ProvisionedNode {
            lamp: LampId(i),
            tenant: tenant(),
            dev_eui: DevEui(0x70B3_D500_0000_0000 + i as u64),
            dev_addr: DevAddr(0x2601_0000 + i),
            keys: SessionKeys {
                nwk_s_key: AesKey([i as u8; 16]),
                app_s_key: AesKey([i as u8 + 100; 16]),
            },
            zone: ZoneId(i / 10),
            lat: 51.45 + i as f64 * 0.00025,
            lon: -2.59,
            rated_power_w: 40.0,
            last_fcnt_up: None,
            next_fcnt_down: 0,
            last_energy_dwh: None,
        }
    }

    fn levels(c: &ControllerCore, zone: u32) -> Vec<(u8, &'static str)> {
        c.lamps(NIGHT, None)
            .into_iter()
            .filter(|l| l.zone == ZoneId(zone))
            .map(|l| {
                (
                    l.commanded_level_pct.unwrap(),
                    l.reason.map_or("", |r| r.as_str()),
                )
            })
            .collect()
    }

    #[test]
    fn a_zones_own_policy_applies_at_once_to_its_lamps_only_and_bad_settings_are_refused() {
        let mut c =
            ControllerCore::new(ControllerConfig::default(), (0..20).map(node).collect()).unwrap();
        c.handle_tick(NIGHT);
        let before_0 = levels(&c, 0);
        assert!(
            levels(&c, 1).iter().all(|&(l, _)| l < 100),
            "dimmed at 22:00"
        );
        let mut s = c.zone_settings(&tenant(), ZoneId(1)).unwrap();
        assert_eq!(s.policy, "profile-reactive");
        s.policy = "full".into();
        s.design_class = LightingClass::M(3);
        s.min_level_pct = 40;
        assert_eq!(c.set_zone_settings(NIGHT, &tenant(), ZoneId(1), &s), Ok(10));
        assert!(levels(&c, 1).iter().all(|&l| l == (100, "schedule")));
        assert_eq!(levels(&c, 0), before_0, "other zones keep their policy");
        assert_eq!(c.zone_settings(&tenant(), ZoneId(1)), Some(s.clone()));
        assert_eq!(
            c.zones(NIGHT, None)[1].demand.design_class,
            Some(LightingClass::M(3))
        );

        for bad in [
            ZoneSettings {
                policy: "sometimes".into(),
                ..s.clone()
            },
            ZoneSettings {
                min_level_pct: 101,
                ..s.clone()
            },
            ZoneSettings {
                ramp_down_ms: 700_000,
                ..s.clone()
            },
        ] {
            assert!(matches!(
                c.set_zone_settings(NIGHT, &tenant(), ZoneId(1), &bad),
                Err(ZoneSettingsError::Policy(_))
            ));
        }
        assert_eq!(c.zone_settings(&tenant(), ZoneId(1)), Some(s.clone()));
        assert_eq!(
            c.set_zone_settings(NIGHT, &tenant(), ZoneId(9), &s),
            Err(ZoneSettingsError::UnknownZone)
        );
        let other = TenantId::new("elsewhere").unwrap();
        assert_eq!(c.zone_settings(&other, ZoneId(1)), None);
    }
}
