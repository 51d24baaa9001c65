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
//!
//! # The contract (as quinn-proto's `Connection`)
//!
//! The core is a state machine with no I/O of its own. Its owner (the service, or the
//! simulator in virtual time) keeps this loop:
//!
//! 1. **Handle** every input as it arrives, with the time it arrived: an uplink frame with its
//!    topic ([`ControllerCore::handle_uplink`]), an already opened report
//!    ([`ControllerCore::handle_report`]), an operator's override
//!    ([`ControllerCore::set_override`]) or zone settings
//!    ([`ControllerCore::set_zone_settings`]). A `handle_*` never blocks, never panics on
//!    input (a bad uplink is a typed [`Rejection`]) and only queues its outputs.
//! 2. **Tick** with the current time ([`ControllerCore::handle_tick`]) often enough for the
//!    schedule (the service ticks every second); a tick ends demand intervals and re-decides
//!    the lamps whose decision may have changed with time.
//! 3. **Poll** after every handle and tick until `None`: [`ControllerCore::poll_command`]
//!    gives commands to publish (seal each with [`ControllerCore::downlink`]),
//!    [`ControllerCore::poll_event`] the readings, commands and rejections to store.
//!    Outputs come out in the order they were made; nothing is lost if polling waits, but
//!    a command is only as fresh as the poll that takes it.
//! 4. **Read** views at any time ([`ControllerCore::summary`], [`ControllerCore::lamps`],
//!    [`ControllerCore::zones`]); reading changes nothing.
//!
//! `now` only moves forward between calls; the core never reads a clock, so the same inputs
//! at the same times give the same outputs.
//!
//! # Files
//!
//! - [`config`]: [`ControllerConfig`] and its validation (configuration only; the tariff is
//!   [`crate::tariff`]'s, not the store's).
//! - [`ingest`]: uplinks in: the topic, DevAddr, FCnt, MIC and payload checks, accepted
//!   reports.
//! - [`commands`]: deciding lamps, when to decide them again, commands and their frames.
//! - [`zone_settings`]: a zone's own policy, set from the dashboard.
//! - [`views`]: the summary, lamp and zone views.
//! - [`policy`], [`demand`], [`classes`]: the rules the decisions follow.

pub mod classes;
mod commands;
mod config;
pub mod demand;
mod ingest;
pub mod policy;
mod spatial;
mod views;
mod zone_settings;

use std::collections::{BTreeMap, HashMap, VecDeque};

use lamplighter_protocol::lorawan::SessionKeys;
use lamplighter_protocol::payload::StatusReport;
use lamplighter_protocol::{sun, DevAddr, DevEui, LampId, TenantId, UnixMs, ZoneId};
use serde::{Deserialize, Serialize};

pub use commands::{Outgoing, SealError};
pub use config::{ConfigError, ControllerConfig};
use demand::ZoneState;
pub use demand::{ZoneDemandView, ZoneParams, ZoneRoad};
pub use ingest::Rejection;
use policy::{Override, PolicyConfig, Reason};
pub use views::{LampView, Summary, ZoneView};
pub use zone_settings::{ZoneSettings, ZoneSettingsError};

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

    /// The lamp's index in the core. Lamps are usually numbered from 0 in the order they
    /// were provisioned, so the number is tried as the index before the map.
    pub(super) fn lamp_index(&self, lamp: LampId) -> Option<usize> {
        match self.lamps.get(lamp.0 as usize) {
            Some(l) if l.node.lamp == lamp => Some(lamp.0 as usize),
            _ => self.by_lamp.get(&lamp).copied(),
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

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
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
