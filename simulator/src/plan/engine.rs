//! The event-driven run of one policy: nodes, controller, link and road users in virtual time.

use std::collections::BTreeMap;

use lamplighter_controller::core::policy::PolicyConfig;
use lamplighter_controller::core::ZoneParams;
use lamplighter_controller::{ControllerConfig, ControllerCore, ProvisionedNode};
use lamplighter_edge::core::{NodeConfig, NodeCore, Sample, Uplink};
use lamplighter_edge::RoadUser;
use lamplighter_protocol::hint::{prefetch, prefetch_lines};
use lamplighter_protocol::local_time::TimeZone;
use lamplighter_protocol::lorawan::{self, AesKey, SessionKeys};
use lamplighter_protocol::payload::{Command, FailSafeProfile, NodeMode, StatusReport};
use lamplighter_protocol::{sun, DevAddr, DevEui, LampId, TenantId, UnixMs};
use lamplighter_town::{distance_m, LedPowerModel, RoadKind, Town};
use rand::distributions::Bernoulli;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::faults::{Fault, FaultScenario, InvariantReport};
use super::profile::DemandProfile;
use super::queue::EventQueue;
use super::radio::{Radio, RadioConfig, RadioReport};
use super::regions::Region;
use super::traffic::{Reader, SensorRec};
use super::{LinkConfig, LossMode};

pub(crate) const MIN_MS: u64 = 60_000;
/// Zone series sampling step for the charts.
pub(crate) const SAMPLE_MS: u64 = 600_000;
/// Passages in the first and last minutes of darkness are not judged (photocell and command
/// latency at lighting-up and switch-off).
pub(crate) const TWILIGHT_MARGIN_MS: u64 = 120_000;
/// A presence sensor sees a road user this far from the column.
pub(crate) const SENSOR_RANGE_M: f64 = 20.0;
/// Probability that a sensor detects a passing road user.
pub(crate) const DETECTION_P: f64 = 0.95;
/// A node's silence timeout before its fail-safe profile takes over.
pub(crate) const SILENCE_TIMEOUT_S: u16 = 900;
pub(crate) const REPORT_INTERVAL_S: u32 = 300;

pub(crate) const USERS: [RoadUser; 3] =
    [RoadUser::Pedestrian, RoadUser::Cyclist, RoadUser::Vehicle];

pub(crate) fn speed_mps(who: RoadUser) -> f64 {
    match who {
        RoadUser::Pedestrian => 1.4,
        RoadUser::Cyclist => 5.0,
        RoadUser::Vehicle => 12.0,
    }
}

/// Index of a road user's kind in [`USERS`].
fn user_index(who: RoadUser) -> usize {
    match who {
        RoadUser::Pedestrian => 0,
        RoadUser::Cyclist => 1,
        RoadUser::Vehicle => 2,
    }
}

pub(crate) fn user_name(who: RoadUser) -> &'static str {
    match who {
        RoadUser::Pedestrian => "pedestrian",
        RoadUser::Cyclist => "cyclist",
        RoadUser::Vehicle => "vehicle",
    }
}

/// Peak-hour flow as a share of the road's capacity, and the mix of (pedestrians,
/// cyclists, vehicles).
fn kind_demand(kind: RoadKind) -> (f64, [f64; 3]) {
    match kind {
        RoadKind::Arterial => (0.45, [0.12, 0.08, 0.80]),
        RoadKind::Major => (0.35, [0.15, 0.10, 0.75]),
        RoadKind::Local => (0.10, [0.40, 0.15, 0.45]),
        RoadKind::Cycleway => (0.06, [0.25, 0.75, 0.0]),
        RoadKind::Footway => (0.05, [0.85, 0.15, 0.0]),
    }
}

/// A crowd: extra road users per hour on some zones for a while.
#[derive(Debug, Clone)]
pub(crate) struct TrafficEvent {
    pub name: String,
    pub zones: Vec<u32>,
    pub from: u64,
    pub until: u64,
    /// Extra (pedestrians, cyclists, vehicles) per hour on each zone.
    pub extra_per_h: [f64; 3],
}

pub(crate) struct ZoneInfo {
    pub peak_per_h: f64,
    pub mix: [f64; 3],
    pub capacity_per_h: f64,
    /// Metres between lamp k and k+1 of the zone.
    pub gaps_m: Vec<f32>,
    pub one_way: bool,
    /// Required level (%) at 0, 1 and 2 classes below the design class.
    pub required_pct: [f32; 3],
    /// Events touching this zone (indices into `Shared::events`).
    pub events: Vec<u16>,
}

/// Everything the policy runs share (built once, read by all threads).
pub(crate) struct Shared<'a> {
    pub town: &'a Town,
    pub profile: &'a DemandProfile,
    pub start: u64,
    pub end: u64,
    /// The town's clocks: its days, its demand's time of day and its policies' schedules.
    pub time_zone: TimeZone,
    pub tick_ms: u64,
    pub link: LinkConfig,
    /// The LoRa radio nodes use (`None`: IP nodes over `link`).
    pub radio: Option<RadioConfig>,
    pub faults: FaultScenario,
    pub seed: u64,
    pub zones: Vec<ZoneInfo>,
    pub events: Vec<TrafficEvent>,
    /// Darkness at the town centre per minute, from `start - 10 min`.
    dark: Vec<bool>,
    /// [`Shared::judged`] per minute, on the same grid.
    judged: Vec<bool>,
    pub keys: Vec<SessionKeys>,
    pub power: Vec<LedPowerModel>,
    pub tenant: TenantId,
    pub busy_zone: u32,
    pub quiet_zone: u32,
    /// Each lamp's zone (index into `town.zones`).
    pub lamp_zone: Vec<u32>,
    /// For each fault, the nodes it touches (NodesDown, ClockSkew).
    pub fault_nodes: Vec<Vec<u32>>,
    pub skew_ms: Vec<i64>,
    pub fail_safe: FailSafeProfile,
}

impl<'a> Shared<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        town: &'a Town,
        profile: &'a DemandProfile,
        start: u64,
        days: u32,
        seed: u64,
        time_zone: TimeZone,
        tick_ms: u64,
        link: LinkConfig,
        faults: FaultScenario,
        demand_scale: f64,
    ) -> Self {
        let end = start + days as u64 * 86_400_000;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5CE7_A210);
        let centre = town.centre();
        let zones: Vec<ZoneInfo> = town
            .zones
            .iter()
            .map(|z| {
                let (share, mix) = kind_demand(z.road_kind);
                let peak = z.capacity_per_h * share * rng.gen_range(0.4..1.6) * demand_scale;
                let gaps_m = z
                    .lamps
                    .windows(2)
                    .map(|w| {
                        distance_m(
                            town.lamps[w[0].0 as usize].position(),
                            town.lamps[w[1].0 as usize].position(),
                        )
                        .clamp(1.0, 500.0) as f32
                    })
                    .collect();
                let one_way = town.road_of(z.lamps[0]).is_some_and(|r| r.one_way);
                let n = z.design_class.number() as i32;
                let required_pct = [0, 1, 2].map(|k| {
                    if k == 0 {
                        100.0
                    } else {
                        z.design_class
                            .level_pct_for(z.design_class.with_number(n + k))
                    }
                });
                ZoneInfo {
                    peak_per_h: peak,
                    mix,
                    capacity_per_h: z.capacity_per_h.max(1.0),
                    gaps_m,
                    one_way,
                    required_pct,
                    events: Vec::new(),
                }
            })
            .collect();
        // Darkness per minute at the centre, with margins either side of the run.
        let first = start.saturating_sub(10 * MIN_MS);
        let minutes = (end + 10 * MIN_MS - first) / MIN_MS + 1;
        let dark: Vec<bool> = (0..minutes)
            .map(|m| sun::is_dark(centre.0, centre.1, UnixMs(first + m * MIN_MS)))
            .collect();
        let margin = (TWILIGHT_MARGIN_MS / MIN_MS) as usize;
        let judged = (0..dark.len())
            .map(|m| {
                dark[m]
                    && m >= margin
                    && dark[m - margin]
                    && dark.get(m + margin).copied().unwrap_or(false)
            })
            .collect();
        let keys = (0..town.lamps.len())
            .map(|_| {
                let mut a = [0u8; 16];
                let mut b = [0u8; 16];
                rng.fill(&mut a);
                rng.fill(&mut b);
                SessionKeys {
                    nwk_s_key: AesKey(a),
                    app_s_key: AesKey(b),
                }
            })
            .collect();
        let power = town.lamps.iter().map(|l| l.power_model()).collect();
        let tenant = TenantId::new("plan").expect("a valid tenant id");
        let mut shared = Shared {
            town,
            profile,
            start,
            end,
            time_zone,
            tick_ms,
            link,
            radio: None,
            faults,
            seed,
            zones,
            events: Vec::new(),
            dark,
            judged,
            keys,
            power,
            tenant,
            busy_zone: 0,
            quiet_zone: 0,
            lamp_zone: {
                let mut v = vec![0; town.lamps.len()];
                for (z, zone) in town.zones.iter().enumerate() {
                    for l in &zone.lamps {
                        v[l.0 as usize] = z as u32;
                    }
                }
                v
            },
            fault_nodes: Vec::new(),
            skew_ms: vec![0; town.lamps.len()],
            // A node keeps a fixed offset: the one in force when the run starts.
            fail_safe: FailSafeProfile::part_night(
                time_zone.offset_min_at(UnixMs(start)) as i16,
                SILENCE_TIMEOUT_S,
            ),
        };
        shared.pick_chart_zones();
        shared.make_events(&mut rng, days);
        shared.pick_fault_nodes(&mut rng);
        shared
    }

    fn pick_chart_zones(&mut self) {
        let mut best: Option<(f64, u32)> = None;
        let mut least: Option<(f64, u32)> = None;
        for (i, z) in self.zones.iter().enumerate() {
            if self.town.zones[i].lamps.len() < 4 {
                continue;
            }
            let r = z.peak_per_h;
            if best.is_none_or(|(b, _)| r > b) {
                best = Some((r, i as u32));
            }
            if least.is_none_or(|(b, _)| r < b) {
                least = Some((r, i as u32));
            }
        }
        self.busy_zone = best.map_or(0, |b| b.1);
        self.quiet_zone = least.map_or(0, |b| b.1);
    }

    /// When the town's clocks read `minute_of_day` on local day `day` (UTC ms).
    fn at_local(&self, day: i64, minute_of_day: u32) -> u64 {
        self.time_zone.instants_at_local(day, minute_of_day).0 .0
    }

    fn local_days(&self, t: u64) -> i64 {
        self.time_zone.local_days(UnixMs(t))
    }

    fn make_events(&mut self, rng: &mut ChaCha8Rng, days: u32) {
        let n = self.zones.len();
        if n == 0 {
            return;
        }
        // Pubs: a few local and major streets empty at 23:00 local every night, twice as
        // busy on Friday and Saturday.
        let pub_zones: Vec<u32> = (0..n as u32)
            .filter(|&z| {
                matches!(
                    self.town.zones[z as usize].road_kind,
                    RoadKind::Local | RoadKind::Major
                )
            })
            .filter(|_| rng.gen_bool(0.04))
            .collect();
        let mut day = self.local_days(self.start);
        while self.at_local(day, 0) < self.end {
            let wd = super::profile::weekday(day);
            let f = if wd == 4 || wd == 5 { 2.0 } else { 1.0 };
            if !pub_zones.is_empty() {
                let from = self.at_local(day, 23 * 60);
                self.events.push(TrafficEvent {
                    name: "pub closing time".into(),
                    zones: pub_zones.clone(),
                    from,
                    until: from + 45 * MIN_MS,
                    extra_per_h: [120.0 * f, 10.0 * f, 20.0 * f],
                });
            }
            day += 1;
        }
        // A match: the crowd leaves a ground near a busy road at 21:45 local on the first day.
        let big: Vec<u32> = (0..n as u32)
            .filter(|&z| {
                matches!(
                    self.town.zones[z as usize].road_kind,
                    RoadKind::Arterial | RoadKind::Major
                )
            })
            .collect();
        if !big.is_empty() && days >= 1 {
            let centre_zone = big[rng.gen_range(0..big.len())];
            let at = self.town.lamps[self.town.zones[centre_zone as usize].lamps[0].0 as usize]
                .position();
            let mut near: Vec<(u64, u32)> = (0..n as u32)
                .map(|z| {
                    let p =
                        self.town.lamps[self.town.zones[z as usize].lamps[0].0 as usize].position();
                    ((distance_m(at, p) * 10.0) as u64, z)
                })
                .filter(|&(d, _)| d <= 6_000)
                .collect();
            near.sort();
            near.truncate(8);
            let from = self.at_local(self.local_days(self.start + 12 * 3_600_000), 21 * 60 + 45);
            self.events.push(TrafficEvent {
                name: "match ends".into(),
                zones: near.into_iter().map(|(_, z)| z).collect(),
                from,
                until: from + 60 * MIN_MS,
                extra_per_h: [700.0, 60.0, 250.0],
            });
        }
        for (i, e) in self.events.iter().enumerate() {
            for &z in &e.zones {
                self.zones[z as usize].events.push(i as u16);
            }
        }
    }

    fn pick_fault_nodes(&mut self, rng: &mut ChaCha8Rng) {
        let n = self.town.lamps.len() as u32;
        for f in &self.faults.faults {
            let chosen: Vec<u32> = match f {
                Fault::NodesDown { share, .. } | Fault::ClockSkew { share, .. } => (0..n)
                    .filter(|_| rng.gen_bool(share.clamp(0.0, 1.0)))
                    .collect(),
                _ => Vec::new(),
            };
            if let Fault::ClockSkew { max_skew_s, .. } = f {
                let max = *max_skew_s as i64 * 1000;
                for &i in &chosen {
                    self.skew_ms[i as usize] = rng.gen_range(-max..=max);
                }
            }
            self.fault_nodes.push(chosen);
        }
    }

    pub fn dark_at(&self, t: u64) -> bool {
        let first = self.start.saturating_sub(10 * MIN_MS);
        let m = (t.saturating_sub(first) / MIN_MS) as usize;
        self.dark.get(m).copied().unwrap_or(false)
    }

    /// Whether a lamp must meet its required level now: dark, and not within the twilight
    /// margin of lighting-up or switch-off.
    pub fn judged(&self, t: u64) -> bool {
        // The margin is whole minutes, so the answer is one per minute: looked up, not
        // worked out three times per passage.
        let first = self.start.saturating_sub(10 * MIN_MS);
        let m = (t.saturating_sub(first) / MIN_MS) as usize;
        match self.judged.get(m) {
            Some(&j) if t >= first + TWILIGHT_MARGIN_MS => j,
            _ => {
                self.dark_at(t)
                    && self.dark_at(t.saturating_sub(TWILIGHT_MARGIN_MS))
                    && self.dark_at(t + TWILIGHT_MARGIN_MS)
            }
        }
    }

    /// Expected road users per hour of each kind passing a point of zone `z` at `t`.
    pub fn rates_per_h(&self, z: usize, t: u64) -> [f64; 3] {
        let info = &self.zones[z];
        let local_s = self.time_zone.seconds_of_day(UnixMs(t));
        let days = self.local_days(t);
        let mut out = [0.0; 3];
        for (k, who) in USERS.iter().enumerate() {
            out[k] = info.peak_per_h * info.mix[k] * self.profile.at(*who, days, local_s);
        }
        for &e in &info.events {
            let e = &self.events[e as usize];
            if (e.from..e.until).contains(&t) {
                for (o, x) in out.iter_mut().zip(e.extra_per_h) {
                    *o += x;
                }
            }
        }
        out
    }

    /// Classes below the design class the demand allows (UNI 11248 thresholds).
    pub fn class_drop(&self, z: usize, t: u64) -> usize {
        let flow: f64 = self.rates_per_h(z, t).iter().sum();
        let ratio = flow / self.zones[z].capacity_per_h;
        if ratio >= 0.5 {
            0
        } else if ratio >= 0.25 {
            1
        } else {
            2
        }
    }

    pub fn required_pct(&self, z: usize, t: u64) -> f32 {
        if !self.judged(t) {
            return 0.0;
        }
        self.zones[z].required_pct[self.class_drop(z, t)]
    }
}

pub(crate) fn dev_eui(i: usize) -> DevEui {
    DevEui(0x70B3_D57E_D000_0000 + i as u64)
}

fn dev_addr(i: usize) -> DevAddr {
    DevAddr(0x2600_0000 + i as u32)
}

/// A passage past a lamp, judged once the lamp's state up to it is known (see
/// [`Sim::judge_passages`]).
#[derive(Debug, Clone, Copy)]
struct Passage {
    t: u64,
    /// The level its class required then (only passages that count towards exposure wait
    /// to be judged; see [`SensorRec::judged`]).
    required_pct: f32,
    who: RoadUser,
}

/// `repr(u32)`: a 4-byte tag before 4-byte fields, 16 bytes in all. Left to itself the
/// compiler gave it a 2-byte tag and copied it around the queue with overlapping unaligned
/// moves, which the CPU could not forward from store to load (a stall on every event).
#[derive(Clone, Copy)]
#[repr(u32)]
enum Ev {
    Tick,
    Wake(u32),
    /// A lamp's uplink, parked in [`Sim::uplinks`].
    Up(u32, u32),
    /// An uplink over the LoRa radio, with its slot in [`Radio`] (lost or not) and its place
    /// in [`Sim::uplinks`].
    UpRadio(u32, u32, u32),
    /// A command for a lamp, parked in [`Sim::commands`].
    Down(u32, u32),
    Sample,
    FaultOn(u16),
    FaultOff(u16),
    /// Whether every node converged after the heal of this ordinal (see `Sim::heals`).
    ConvergeCheck(u32),
}

/// A lamp's node in the run. What a road user that the node does not detect needs (its
/// passages) is in the first cache line, the node core after the run's own fields: a
/// passage the sensor misses, and every passage of a run without sensors, fetches one line
/// rather than the whole node (`Sim::prefetch_for`).
#[repr(C, align(64))]
struct Node {
    /// Passages not yet judged: they are judged when the lamp's state next changes (or the
    /// run ends), since until then it is known from the node core alone. A passage is not
    /// an event of its own, which halves the events of road users.
    passages: Vec<Passage>,
    last_ms: u64,
    last_power_w: f32,
    settled_power_w: f32,
    /// When the core's ramp ends (virtual time) and the power from then on
    /// (`settled_power_w`): energy is counted across a ramp's end without a wake-up there.
    ramp_end_ms: u64,
    next_wake: u64,
    /// The earliest time among `passages` (`u64::MAX`: none): until then none is due.
    first_passage_ms: u64,
    alive: bool,
    converged: bool,
    below_since: Option<u64>,
    core: NodeCore,
}

/// A zone's figures over time, for the charts.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ZoneSeries {
    pub zone: u32,
    pub name: String,
    pub road_kind: String,
    pub design_class: String,
    pub lamps: usize,
    /// Hours since the start of the run, one point per sample.
    pub t_h: Vec<f64>,
    /// Expected road users per hour past a point of the zone.
    pub demand_per_h: Vec<f64>,
    /// Passages past the zone's lamps in the sample interval.
    pub passages: Vec<u64>,
    pub mean_level_pct: Vec<f64>,
    pub required_level_pct: Vec<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Outcome {
    pub energy_wh: f64,
    pub energy_by_hour_wh: Vec<f64>,
    pub passages: u64,
    pub judged: BTreeMap<&'static str, u64>,
    pub underlit: BTreeMap<&'static str, u64>,
    pub underlit_by_cause: BTreeMap<&'static str, u64>,
    pub radio: Option<RadioReport>,
    pub late_rise_passages: u64,
    pub late_rise_s: f64,
    pub level_changes: u64,
    pub uplinks_sent: u64,
    pub downlinks_sent: u64,
    pub packets_lost: u64,
    pub packets_retransmitted: u64,
    pub uplinks_accepted: u64,
    pub uplinks_rejected: u64,
    pub uplinks_unheard: u64,
    pub downlinks_applied: u64,
    pub events_processed: u64,
    pub busy: ZoneSeries,
    pub quiet: ZoneSeries,
    pub invariants: InvariantReport,
}

impl Outcome {
    /// Adds another region's outcome of the same policy to this one.
    pub fn absorb(&mut self, o: Outcome) {
        for (a, b) in self.energy_by_hour_wh.iter_mut().zip(&o.energy_by_hour_wh) {
            *a += b;
        }
        self.energy_wh = self.energy_by_hour_wh.iter().sum();
        for (mine, theirs) in [
            (&mut self.judged, o.judged),
            (&mut self.underlit, o.underlit),
            (&mut self.underlit_by_cause, o.underlit_by_cause),
        ] {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
        // The radio is modelled over one region only.
        self.radio = self.radio.take().or(o.radio);
        self.passages += o.passages;
        self.late_rise_passages += o.late_rise_passages;
        self.late_rise_s += o.late_rise_s;
        self.level_changes += o.level_changes;
        self.uplinks_sent += o.uplinks_sent;
        self.downlinks_sent += o.downlinks_sent;
        self.packets_lost += o.packets_lost;
        self.packets_retransmitted += o.packets_retransmitted;
        self.uplinks_accepted += o.uplinks_accepted;
        self.uplinks_rejected += o.uplinks_rejected;
        self.uplinks_unheard += o.uplinks_unheard;
        self.downlinks_applied += o.downlinks_applied;
        self.events_processed += o.events_processed;
        // A zone is charted by the region that has it.
        if self.busy.t_h.is_empty() {
            self.busy = o.busy;
        }
        if self.quiet.t_h.is_empty() {
            self.quiet = o.quiet;
        }
        let (a, b) = (&mut self.invariants, o.invariants);
        a.floor_checks += b.floor_checks;
        a.below_floor_lamp_minutes += b.below_floor_lamp_minutes;
        a.longest_below_floor_s = a.longest_below_floor_s.max(b.longest_below_floor_s);
        // Every region sees the same heals.
        a.heals_checked = a.heals_checked.max(b.heals_checked);
        a.slowest_convergence_s = a.slowest_convergence_s.max(b.slowest_convergence_s);
        if a.violation.is_none() {
            a.violation = b.violation;
        }
    }
}

pub(crate) struct Sim<'s, 'a> {
    sh: &'s Shared<'a>,
    /// The lamps and zones this run's controller has: node `i` of the run is the town's lamp
    /// `region.lamps[i]`.
    region: &'s Region,
    policy: PolicyConfig,
    /// Whether the lamps have presence sensors: only for policies that use presence. The
    /// static baselines stand for today's photocell and timer schemes, whose lamps have no
    /// sensor and send no presence reports (their levels would be the same either way).
    sensing: bool,
    queue: EventQueue<Ev>,
    nodes: Vec<Node>,
    ctrl: Option<ControllerCore>,
    provisioned: Vec<ProvisionedNode>,
    last_cmd: Vec<Option<u8>>,
    link_rng: ChaCha8Rng,
    /// The link's loss, drawn as `gen_bool` would draw it, made once rather than per packet.
    link_loss: Bernoulli,
    /// Active transient faults: their count, and the loss and delay they add.
    active: u32,
    fault_loss_pct: f64,
    fault_delay_ms: u64,
    pending_heal: Option<u64>,
    /// Heals so far: a convergence check is for the latest only.
    heals: u32,
    /// Messages in flight, parked here so that events stay small.
    uplinks: Parked<Uplink>,
    commands: Parked<(u32, Command)>,
    floor_by_minute: Vec<u8>,
    /// Passages past the busy and the quiet zone's lamps, by sample (index k: those
    /// before the k-th sample and at or after the one before).
    zone_passages: [Vec<u64>; 2],
    /// Judged and under-lit passages by road user (index: [`user_index`]), counted here and
    /// put into the outcome's maps at the end.
    judged_by_user: [u64; 3],
    underlit_by_user: [u64; 3],
    /// Under-lit passages by cause, in the order of [`UNDERLIT_CAUSES`].
    underlit_by_cause: [u64; 4],
    /// The LoRa radio, when the run models one (IP nodes otherwise).
    radio: Option<Radio>,
    out: Outcome,
}

/// Why a passage was under-lit: the node was dead, ran its fail-safe profile, was still
/// rising to a level that would have been enough, or was commanded below the requirement.
pub(crate) const UNDERLIT_CAUSES: [&str; 4] = [
    "node-dead",
    "node-fail-safe",
    "still-rising",
    "commanded-below",
];

impl<'s, 'a> Sim<'s, 'a> {
    /// The run of `policy` over `region` (the `nth` of the town's regions).
    pub fn new(sh: &'s Shared<'a>, policy: PolicyConfig, region: &'s Region, nth: u64) -> Self {
        let provisioned: Vec<ProvisionedNode> = region
            .lamps
            .iter()
            .enumerate()
            .map(|(i, &g)| (i, g as usize, &sh.town.lamps[g as usize]))
            .map(|(i, g, l)| ProvisionedNode {
                // Numbered in the region, so the controller's index is the lamp's.
                lamp: LampId(i as u32),
                tenant: sh.tenant.clone(),
                dev_eui: dev_eui(g),
                dev_addr: dev_addr(g),
                keys: sh.keys[g],
                zone: l.zone,
                lat: l.lat,
                lon: l.lon,
                rated_power_w: l.rated_power_w,
                last_fcnt_up: None,
                next_fcnt_down: 0,
                last_energy_dwh: None,
            })
            .collect();
        let nodes = region
            .lamps
            .iter()
            .map(|&g| {
                let i = g as usize;
                let core = NodeCore::new(sh.node_config(i), sh.node_now(i, sh.start), 0, 0.0);
                let level = core.level_pct(sh.node_now(i, sh.start));
                Node {
                    core,
                    alive: true,
                    last_ms: sh.start,
                    last_power_w: sh.power[i].input_power_w(level),
                    ramp_end_ms: sh.start,
                    settled_power_w: sh.power[i].input_power_w(level),
                    passages: Vec::new(),
                    first_passage_ms: u64::MAX,
                    next_wake: u64::MAX,
                    below_since: None,
                    converged: true,
                }
            })
            .collect();
        let ctrl =
            ControllerCore::new(sh.controller_config(&policy, region), provisioned.clone()).ok();
        let floor_by_minute = (0..1440u16)
            .map(|m| policy.min_level_pct.min(sh.fail_safe.level_at_minute(m)))
            .collect();
        let hours = ((sh.end - sh.start) / 3_600_000) as usize;
        let series = |z: u32| {
            let zone = &sh.town.zones[z as usize];
            ZoneSeries {
                zone: z,
                name: zone.name.clone(),
                road_kind: zone.road_kind.to_string(),
                design_class: zone.design_class.to_string(),
                lamps: zone.lamps.len(),
                ..ZoneSeries::default()
            }
        };
        let mut sim = Sim {
            sh,
            region,
            queue: EventQueue::new(sh.start),
            nodes,
            ctrl,
            provisioned,
            last_cmd: vec![None; region.lamps.len()],
            link_rng: ChaCha8Rng::seed_from_u64(sh.seed ^ 0x11_4C_1E ^ (nth << 40)),
            link_loss: Bernoulli::new((sh.link.loss_pct / 100.0).clamp(0.0, 1.0))
                .expect("a share from 0 to 1"),
            active: 0,
            fault_loss_pct: 0.0,
            fault_delay_ms: 0,
            pending_heal: None,
            heals: 0,
            uplinks: Parked::default(),
            commands: Parked::default(),
            floor_by_minute,
            zone_passages: {
                let samples = ((sh.end - sh.start) / SAMPLE_MS + 2) as usize;
                [vec![0; samples], vec![0; samples]]
            },
            judged_by_user: [0; 3],
            underlit_by_user: [0; 3],
            underlit_by_cause: [0; 4],
            // The radio is the whole town's (one region when there is one).
            radio: sh.radio.as_ref().map(|c| Radio::new(c, sh.town)),
            out: Outcome {
                energy_by_hour_wh: vec![0.0; hours.max(1)],
                busy: series(sh.busy_zone),
                quiet: series(sh.quiet_zone),
                ..Outcome::default()
            },
            sensing: policy.reactive || policy.adaptive,
            policy,
        };
        sim.push(sh.start, Ev::Tick);
        sim.push(sh.start, Ev::Sample);
        for i in 0..sim.nodes.len() {
            sim.push(sh.start, Ev::Wake(i as u32));
            sim.nodes[i].next_wake = sh.start;
        }
        for (k, f) in sh.faults.faults.iter().enumerate() {
            let (from, until) = match f {
                Fault::NodesDown {
                    from_s, until_s, ..
                } => (Some(*from_s), *until_s),
                Fault::ControllerDown { from_s, until_s }
                | Fault::PacketLoss {
                    from_s, until_s, ..
                }
                | Fault::PacketDelay {
                    from_s, until_s, ..
                } => (Some(*from_s), Some(*until_s)),
                Fault::ClockSkew { .. } => (None, None),
            };
            if let Some(from) = from {
                sim.push(sh.start + from * 1000, Ev::FaultOn(k as u16));
            }
            if let Some(until) = until {
                sim.push(sh.start + until * 1000, Ev::FaultOff(k as u16));
            }
        }
        sim
    }

    /// The town's index of the run's lamp `i`.
    fn lamp(&self, i: usize) -> usize {
        self.region.lamps[i] as usize
    }

    // Inlined for the same reason as `EventQueue::push`: an event handed over in memory
    // is read back before its fields are stored.
    #[inline(always)]
    fn push(&mut self, t: u64, ev: Ev) {
        self.queue.push(t, ev);
    }

    /// Runs to the end; `progress` gets the share of virtual time done now and then.
    /// Runs the events before `until` (virtual time), taking the road users from
    /// `road_users` (this run's region's stream).
    pub fn advance(&mut self, road_users: &mut Reader, until: u64) {
        let until = until.min(self.sh.end);
        loop {
            // The road users' stream and the queue, merged in time order.
            let (t_road, t_queue) = (road_users.peek_t(), self.queue.peek_t());
            let from_road = match (t_road, t_queue) {
                (Some(r), Some(q)) => r < q,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let t = if from_road { t_road } else { t_queue }.unwrap_or(u64::MAX);
            if t >= until {
                break;
            }
            self.out.events_processed += 1;
            if from_road {
                self.prefetch_for(road_users);
                if let Some(rec) = road_users.next_rec() {
                    self.sensor(rec);
                }
            } else if let Some((t, ev)) = self.queue.pop() {
                self.prefetch_queued();
                self.handle(t, ev);
            }
        }
    }

    /// Asks the cache for the lamps of the road users a few records ahead, so that their
    /// state is there when their turn comes: a run spends most of its time waiting on
    /// memory, and the stream says which lamps come next.
    fn prefetch_for(&self, road_users: &Reader) {
        if let Some(r) = road_users.ahead(PREFETCH_NODE_AHEAD) {
            if let Some(i) = self.region.local_of(r.lamp) {
                if self.sensing && r.detected() {
                    prefetch_lines(&self.nodes[i]);
                } else {
                    // Only its passages will be read: they are in the node's first line.
                    prefetch(&self.nodes[i]);
                }
            }
        }
        if let Some(i) = road_users
            .ahead(PREFETCH_NODE_AHEAD / 2)
            .and_then(|r| self.region.local_of(r.lamp))
        {
            // The node itself arrived in the meantime; its passages' end comes next and,
            // with sensors, their start (a detection judges them from there; prefetching it
            // for detections alone was 2 % slower in paired runs).
            let passages = &self.nodes[i].passages;
            prefetch(passages.as_ptr().wrapping_add(passages.len()));
            if self.sensing && !passages.is_empty() {
                prefetch(passages.as_ptr());
            }
        }
    }

    /// The same for the events queued next: their lamps, and their parked packets. Most
    /// packets arrive within the bucket being served, in the queue's late heap: the two
    /// that may come out of it after the next one are fetched too.
    fn prefetch_queued(&self) {
        if let Some(ev) = self.queue.ahead(PREFETCH_NODE_AHEAD / 2) {
            self.prefetch_event(ev);
        }
        // The event after this one: what is reached through the lines fetched for it
        // an event or two ago.
        match self.queue.peek_item() {
            Some(Ev::Wake(i) | Ev::Down(i, _)) => {
                // It changes its lamp's state, judging the passages waiting there.
                let n = &self.nodes[*i as usize];
                if n.first_passage_ms != u64::MAX {
                    prefetch(n.passages.as_ptr());
                }
            }
            Some(Ev::Up(i, parked) | Ev::UpRadio(i, _, parked)) => {
                if let (Some(c), Some(up)) = (&self.ctrl, self.uplinks.get(*parked)) {
                    c.prefetch_report_then(LampId(*i), &up.report);
                }
            }
            _ => {}
        }
        for ev in self.queue.late_after_next() {
            self.prefetch_event(ev);
        }
    }

    #[inline(always)]
    fn prefetch_event(&self, ev: &Ev) {
        match ev {
            Ev::Wake(i) => prefetch_lines(&self.nodes[*i as usize]),
            Ev::Down(i, parked) => {
                prefetch_lines(&self.nodes[*i as usize]);
                prefetch(self.commands.slots.as_ptr().wrapping_add(*parked as usize));
            }
            Ev::Up(i, parked) | Ev::UpRadio(i, _, parked) => {
                prefetch(self.uplinks.slots.as_ptr().wrapping_add(*parked as usize));
                if let Some(c) = &self.ctrl {
                    c.prefetch_report(LampId(*i));
                }
            }
            _ => {}
        }
    }

    /// Closes the books at the end of the run (after [`Sim::advance`] to the end).
    pub fn finish(mut self) -> Outcome {
        let end = self.sh.end;
        for i in 0..self.nodes.len() {
            self.account(i, end);
        }
        for (k, who) in USERS.iter().enumerate() {
            if self.judged_by_user[k] > 0 {
                self.out
                    .judged
                    .insert(user_name(*who), self.judged_by_user[k]);
            }
            if self.underlit_by_user[k] > 0 {
                self.out
                    .underlit
                    .insert(user_name(*who), self.underlit_by_user[k]);
            }
        }
        for (k, cause) in UNDERLIT_CAUSES.iter().enumerate() {
            self.out
                .underlit_by_cause
                .insert(cause, self.underlit_by_cause[k]);
        }
        self.out.radio = self.radio.take().map(Radio::finish);
        self.out.energy_wh = self.out.energy_by_hour_wh.iter().sum();
        self.out
    }

    fn handle(&mut self, now: u64, ev: Ev) {
        match ev {
            Ev::Tick => {
                if let Some(c) = self.ctrl.as_mut() {
                    c.handle_tick(UnixMs(now));
                    self.drain_controller(now);
                }
                self.push(now + self.sh.tick_ms, Ev::Tick);
            }
            Ev::Wake(i) => {
                let n = &mut self.nodes[i as usize];
                if n.next_wake != now {
                    return;
                }
                n.next_wake = u64::MAX;
                let i = i as usize;
                let power_w = self.power_now(i, now);
                let lux = if self.sh.dark_at(now) { 0.5 } else { 10_000.0 };
                self.touch(i, now, |core, nn| {
                    core.handle_sample(
                        nn,
                        Sample {
                            power_w,
                            ambient_lux: lux,
                            faults: Default::default(),
                        },
                    );
                    core.handle_timeout(nn);
                });
                self.check_floor(i, now);
            }
            Ev::UpRadio(i, slot, parked) => {
                if self.radio.as_ref().is_some_and(|r| r.uplink_lost(slot)) {
                    self.uplinks.release(parked);
                    self.out.packets_lost += 1;
                    return;
                }
                self.handle(now, Ev::Up(i, parked));
            }
            Ev::Up(i, parked) => {
                let Some(c) = self.ctrl.as_mut() else {
                    self.uplinks.release(parked);
                    self.out.uplinks_unheard += 1;
                    return;
                };
                // Read where it waited: moved out first, it was copied in pieces and read
                // back whole for the call, a stall on every uplink.
                let uplink = self
                    .uplinks
                    .get(parked)
                    .expect("an uplink is handled before it is released");
                match c.handle_report(UnixMs(now), LampId(i), uplink.fcnt_up, &uplink.report) {
                    Ok(_) => self.out.uplinks_accepted += 1,
                    Err(_) => self.out.uplinks_rejected += 1,
                }
                self.uplinks.release(parked);
                self.drain_controller(now);
            }
            Ev::Down(i, parked) => {
                let (fcnt_down, command) = self.commands.take(parked);
                let mut applied = false;
                self.touch(i as usize, now, |core, nn| {
                    applied = core.handle_command(nn, fcnt_down, &command).is_ok();
                });
                if applied {
                    self.out.downlinks_applied += 1;
                }
            }
            Ev::Sample => {
                self.sample(now);
                self.push(now + SAMPLE_MS, Ev::Sample);
            }
            Ev::FaultOn(k) => self.fault_on(now, k as usize),
            Ev::FaultOff(k) => self.fault_off(now, k as usize),
            Ev::ConvergeCheck(heal) => {
                if heal == self.heals {
                    self.converge_check();
                }
            }
        }
    }

    fn drain_controller(&mut self, now: u64) {
        // Polled through `self.ctrl` one at a time rather than taken out of `self` for the
        // loop: the core is a large struct, and moving it out and back cost two copies of it
        // per uplink.
        let Some(c) = self.ctrl.as_mut() else {
            return;
        };
        while c.poll_event().is_some() {}
        while let Some(o) = self.ctrl.as_mut().and_then(ControllerCore::poll_command) {
            let i = o.lamp.0 as usize;
            self.last_cmd[i] = Some(o.level_pct);
            self.out.downlinks_sent += 1;
            let arrives = match self.radio.as_mut() {
                Some(r) => {
                    let payload_len = o.command.encode().map_or(0, |p| p.len());
                    r.send_downlink(self.region.lamps[i] as usize, now, frame_len(payload_len))
                }
                None => self.link_delay(now),
            };
            match arrives {
                Some(t) => {
                    let parked = self.commands.put((o.fcnt_down, o.command));
                    self.push(t, Ev::Down(i as u32, parked));
                }
                None if self.radio.is_some() => self.out.packets_lost += 1,
                None => {}
            }
        }
    }

    /// When a packet sent now arrives, or None if it is lost.
    fn link_delay(&mut self, now: u64) -> Option<u64> {
        let l = &self.sh.link;
        let rng = &mut self.link_rng;
        if self.fault_loss_pct > 0.0 && rng.gen_bool((self.fault_loss_pct / 100.0).min(1.0)) {
            self.out.packets_lost += 1;
            return None;
        }
        let mut delay = rng.gen_range(l.latency_min_ms..=l.latency_max_ms.max(l.latency_min_ms))
            + self.fault_delay_ms;
        let loss = self.link_loss;
        match l.loss_mode {
            LossMode::Drop => {
                if rng.sample(loss) {
                    self.out.packets_lost += 1;
                    return None;
                }
            }
            LossMode::Retransmit { rto_ms } => {
                let mut rto = rto_ms;
                while rng.sample(loss) {
                    self.out.packets_retransmitted += 1;
                    delay += rto;
                    rto = rto.saturating_mul(2);
                }
            }
        }
        Some(now + delay)
    }

    /// Brings lamp `i`'s books up to `now` before its state changes: its passages so far
    /// are judged and its energy counted.
    fn account(&mut self, i: usize, now: u64) {
        self.judge_passages(i, now);
        let n = &mut self.nodes[i];
        if now <= n.last_ms {
            return;
        }
        let (ramp_end, settled) = (n.ramp_end_ms, n.settled_power_w);
        let p_now = self.power_now(i, now);
        let n = &mut self.nodes[i];
        let (mut t0, mut p0) = (n.last_ms, n.last_power_w);
        // Power is linear along a ramp and flat after it; split at its end.
        n.last_ms = now;
        n.last_power_w = p_now;
        if n.alive && t0 < ramp_end && ramp_end < now {
            self.add_energy(t0, p0, ramp_end, settled);
            (t0, p0) = (ramp_end, settled);
        }
        self.add_energy(t0, p0, now, p_now);
    }

    /// Lamp `i`'s input power at `now` (its state unchanged since its last input).
    fn power_now(&self, i: usize, now: u64) -> f32 {
        let n = &self.nodes[i];
        match n.alive {
            false => 0.0,
            // Most of the time the ramp is over: no need to work the power out again.
            true if now >= n.ramp_end_ms => n.settled_power_w,
            true => {
                let g = self.lamp(i);
                self.sh.power[g].input_power_w(n.core.level_pct(self.sh.node_now(g, now)))
            }
        }
    }

    /// Energy of a power that goes linearly from `p0` at `t0` to `p1` at `t1`, counted into
    /// the hours it falls in.
    fn add_energy(&mut self, t0: u64, p0: f32, t1: u64, p1: f32) {
        let (p0, p1) = (p0 as f64, p1 as f64);
        let last = self.out.energy_by_hour_wh.len() - 1;
        // Times as i64 for the conversions to f64: one instruction each, where u64's take a
        // dozen (the values are far below 2^63, so they convert the same).
        let ms = |d: u64| d as i64 as f64;
        let mut a = t0;
        while a < t1 {
            let h = ((a - self.sh.start) / 3_600_000) as usize;
            let b = t1.min(self.sh.start + (h as u64 + 1) * 3_600_000);
            // Flat nearly always (a ramp is seconds): the mean power is then p0, the same
            // sum the slope's would give, without its division.
            let mean_w = if p1 == p0 {
                p0
            } else {
                let slope = (p1 - p0) / ms(t1 - t0);
                let pa = p0 + slope * ms(a - t0);
                let pb = p0 + slope * ms(b - t0);
                (pa + pb) / 2.0
            };
            self.out.energy_by_hour_wh[h.min(last)] += mean_w * ms(b - a) / 3_600_000.0;
            a = b;
        }
    }

    /// Runs one input through a node: energy up to now, the input, then its uplinks, and
    /// its next wake-up.
    fn touch(&mut self, i: usize, now: u64, f: impl FnOnce(&mut NodeCore, UnixMs)) {
        if !self.nodes[i].alive {
            return;
        }
        self.account(i, now);
        let g = self.lamp(i);
        let nn = self.sh.node_now(g, now);
        let n = &mut self.nodes[i];
        let before = n.core.target_pct();
        f(&mut n.core, nn);
        if n.core.target_pct() != before {
            self.out.level_changes += 1;
            n.settled_power_w = self.sh.power[g].input_power_w(n.core.target_pct());
        }
        // One poll: a node has one report at most due at an instant (`NodeCore::poll_report`).
        let uplink = n.core.poll_report(nn);
        if self.pending_heal.is_some()
            && !n.converged
            && n.core.mode(nn) == NodeMode::Commanded
            && self.last_cmd[i] == Some(n.core.target_pct() as u8)
        {
            n.converged = true;
            let heal = self.pending_heal.unwrap_or(now);
            let inv = &mut self.out.invariants;
            inv.slowest_convergence_s = inv.slowest_convergence_s.max((now - heal) / 1000);
        }
        // The end of a commanded node's ramp changes nothing (its target is the command,
        // and a hold or silence ending is a deadline of its own): skip it, exactly. Energy
        // is counted across the ramp's end (`account`).
        let ramp_end = n.core.ramp_end();
        let mut due = n.core.poll_timeout(nn);
        if due == ramp_end && n.core.mode(due) == NodeMode::Commanded {
            due = n.core.poll_timeout(due);
        }
        let wake = self.sh.virtual_time_of(g, due).max(now);
        n.ramp_end_ms = self.sh.virtual_time_of(g, ramp_end);
        let n = &mut self.nodes[i];
        if wake < n.next_wake {
            n.next_wake = wake;
            self.push(wake, Ev::Wake(i as u32));
        }
        if let Some(uplink) = uplink {
            self.out.uplinks_sent += 1;
            if let Some(r) = self.radio.as_mut() {
                let channel = self.link_rng.gen_range(0..3);
                let on_air = r.send_uplink(g, now, frame_len(StatusReport::LEN), channel);
                let parked = self.uplinks.put(uplink);
                self.push(
                    on_air.arrives_ms,
                    Ev::UpRadio(i as u32, on_air.slot, parked),
                );
            } else if let Some(t) = self.link_delay(now) {
                let parked = self.uplinks.put(uplink);
                self.push(t, Ev::Up(i as u32, parked));
            }
        }
    }

    fn check_floor(&mut self, i: usize, now: u64) {
        if !self.nodes[i].alive || !self.sh.judged(now) {
            self.nodes[i].below_since = None;
            return;
        }
        let g = self.lamp(i);
        let nn = self.sh.node_now(g, now);
        let minute = (self.sh.time_zone.seconds_of_day(UnixMs(now)) / 60) as usize;
        let floor = self.floor_by_minute[minute.min(1439)] as f32;
        let n = &mut self.nodes[i];
        let level = n.core.level_pct(nn);
        let inv = &mut self.out.invariants;
        inv.floor_checks += 1;
        if level + 0.5 >= floor {
            n.below_since = None;
            return;
        }
        inv.below_floor_lamp_minutes += 1;
        let since = *n.below_since.get_or_insert(now);
        let for_s = (now - since) / 1000;
        inv.longest_below_floor_s = inv.longest_below_floor_s.max(for_s);
        // A node whose clock is off sees dusk that much late.
        let grace_s = self.sh.faults.floor_grace_s + self.sh.skew_ms[g].unsigned_abs() / 1000;
        if for_s > grace_s && inv.violation.is_none() {
            inv.violation = Some(format!(
                "lamp {g} stayed below its floor ({floor:.0} %) at {level:.1} % for {for_s} s \
                 while dark, at {} s into the run (allowed: {} s)",
                (now - self.sh.start) / 1000,
                grace_s
            ));
        }
    }

    fn fault_on(&mut self, now: u64, k: usize) {
        let f = self.sh.faults.faults[k].clone();
        if f.heals_at_s().is_some() {
            self.active += 1;
            self.pending_heal = None;
        }
        match f {
            Fault::NodesDown { .. } => {
                let region = self.region;
                for j in self.sh.fault_nodes[k]
                    .iter()
                    .filter_map(|&g| region.local_of(g))
                {
                    self.account(j, now);
                    let n = &mut self.nodes[j];
                    n.alive = false;
                    n.next_wake = u64::MAX;
                    n.below_since = None;
                }
            }
            Fault::ControllerDown { .. } => {
                if let Some(c) = self.ctrl.take() {
                    // What a real controller persists: the session counters.
                    for (p, (_, up, down, energy)) in
                        self.provisioned.iter_mut().zip(c.session_counters())
                    {
                        p.last_fcnt_up = up;
                        p.next_fcnt_down = down;
                        p.last_energy_dwh = energy;
                    }
                }
            }
            Fault::PacketLoss { loss_pct, .. } => self.fault_loss_pct += loss_pct,
            Fault::PacketDelay { extra_ms, .. } => self.fault_delay_ms += extra_ms,
            Fault::ClockSkew { .. } => {}
        }
    }

    fn fault_off(&mut self, now: u64, k: usize) {
        match self.sh.faults.faults[k].clone() {
            Fault::NodesDown { .. } => {
                let region = self.region;
                for j in self.sh.fault_nodes[k]
                    .iter()
                    .filter_map(|&g| region.local_of(g))
                {
                    // Passages while it was down met a dark lamp.
                    self.judge_passages(j, now);
                    let g = self.lamp(j);
                    let nn = self.sh.node_now(g, now);
                    let old = &self.nodes[j].core;
                    let (fcnt, energy) = (old.fcnt_up(), old.energy_wh());
                    let core = NodeCore::new(self.sh.node_config(g), nn, fcnt, energy);
                    let n = &mut self.nodes[j];
                    n.core = core;
                    n.alive = true;
                    n.last_ms = now;
                    n.last_power_w = 0.0;
                    n.ramp_end_ms = now;
                    n.settled_power_w = self.sh.power[g].input_power_w(n.core.target_pct());
                    n.next_wake = now;
                    self.push(now, Ev::Wake(j as u32));
                }
            }
            Fault::ControllerDown { .. } => {
                self.ctrl = ControllerCore::new(
                    self.sh.controller_config(&self.policy, self.region),
                    self.provisioned.clone(),
                )
                .ok();
                self.last_cmd.iter_mut().for_each(|c| *c = None);
            }
            Fault::PacketLoss { loss_pct, .. } => {
                self.fault_loss_pct = (self.fault_loss_pct - loss_pct).max(0.0)
            }
            Fault::PacketDelay { extra_ms, .. } => {
                self.fault_delay_ms = self.fault_delay_ms.saturating_sub(extra_ms)
            }
            Fault::ClockSkew { .. } => {}
        }
        self.active = self.active.saturating_sub(1);
        if self.active == 0 {
            self.pending_heal = Some(now);
            for n in &mut self.nodes {
                n.converged = !n.alive;
            }
            self.out.invariants.heals_checked += 1;
            self.heals += 1;
            self.push(
                now + self.sh.faults.converge_within_s * 1000,
                Ev::ConvergeCheck(self.heals),
            );
        }
    }

    fn converge_check(&mut self) {
        let Some(heal) = self.pending_heal.take() else {
            return;
        };
        let stragglers: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive && !self.nodes[i].converged)
            .collect();
        if let (Some(&i), None) = (stragglers.first(), &self.out.invariants.violation) {
            self.out.invariants.violation = Some(format!(
                "{} live lamps had not applied the controller's latest command {} s after \
                 the faults healed at {} s into the run (e.g. lamp {}: node target {:.0} %, \
                 commanded {:?})",
                stragglers.len(),
                self.sh.faults.converge_within_s,
                (heal - self.sh.start) / 1000,
                self.lamp(i),
                self.nodes[i].core.target_pct(),
                self.last_cmd[i],
            ));
        }
    }

    /// A road user enters the range of a lamp's sensor: the sensor may see it (if the lamp
    /// has one), and its passage waits to be judged.
    fn sensor(&mut self, rec: SensorRec) {
        let Some(i) = self.region.local_of(rec.lamp) else {
            return;
        };
        let now = rec.t;
        if rec.detected() && self.sensing {
            let who = rec.who();
            self.touch(i, now, |core, nn| core.handle_presence(nn, who));
        }
        let t_pass = now + rec.pass_in_ms as u64;
        if t_pass < self.sh.end {
            let zone = self.sh.lamp_zone[rec.lamp as usize];
            self.out.passages += 1;
            let sample = ((t_pass - self.sh.start) / SAMPLE_MS + 1) as usize;
            if zone == self.sh.busy_zone {
                self.zone_passages[0][sample] += 1;
            }
            if zone == self.sh.quiet_zone {
                self.zone_passages[1][sample] += 1;
            }
            // Only a judged passage waits: the others count towards nothing more.
            if rec.judged() {
                let n = &mut self.nodes[i];
                n.first_passage_ms = n.first_passage_ms.min(t_pass);
                n.passages.push(Passage {
                    t: t_pass,
                    required_pct: self.sh.zones[zone as usize].required_pct[rec.class_drop()],
                    who: rec.who(),
                });
            }
        }
    }

    /// Judges lamp `i`'s passages up to `upto` (inclusive) against its state now, which has
    /// been its state since its last change: call before the lamp's state changes.
    fn judge_passages(&mut self, i: usize, upto: u64) {
        // Most calls find passages waiting but none due yet (the one a presence just
        // added, say): no need to go through them.
        if upto < self.nodes[i].first_passage_ms {
            return;
        }
        let mut pending = std::mem::take(&mut self.nodes[i].passages);
        let mut first_left = u64::MAX;
        pending.retain(|p| {
            let due = p.t <= upto;
            if due {
                self.judge(i, p);
            } else {
                first_left = first_left.min(p.t);
            }
            !due
        });
        let n = &mut self.nodes[i];
        n.passages = pending;
        n.first_passage_ms = first_left;
    }

    fn judge(&mut self, i: usize, p: &Passage) {
        let now = p.t;
        let required = p.required_pct;
        let who = user_index(p.who);
        self.judged_by_user[who] += 1;
        let nn = self.sh.node_now(self.lamp(i), now);
        let n = &self.nodes[i];
        let (level, target) = if n.alive {
            (n.core.level_pct(nn), n.core.target_pct())
        } else {
            (0.0, 0.0)
        };
        if level + 0.5 < required {
            self.underlit_by_user[who] += 1;
            // Why, so that a policy's exposure can be traced to its cause.
            let cause = if !n.alive {
                0
            } else if n.core.mode(nn) == NodeMode::FailSafe {
                1
            } else if target + 0.5 >= required {
                2
            } else {
                3
            };
            self.underlit_by_cause[cause] += 1;
        }
        if level + 0.01 < target {
            let later = n.core.level_pct(nn.plus_ms(100));
            let slope_per_s = (later - level) * 10.0;
            if slope_per_s > 0.0 {
                self.out.late_rise_passages += 1;
                self.out.late_rise_s += ((target - level) / slope_per_s) as f64;
            }
        }
    }

    fn sample(&mut self, now: u64) {
        let t_h = (now - self.sh.start) as f64 / 3_600_000.0;
        for (k, z) in [self.sh.busy_zone, self.sh.quiet_zone]
            .into_iter()
            .enumerate()
        {
            // The zone is charted by the region that has it.
            if self.region.zones.binary_search(&z).is_err() {
                continue;
            }
            let lamps = &self.sh.town.zones[z as usize].lamps;
            let mut sum = 0.0;
            for l in lamps {
                let Some(i) = self.region.local_of(l.0) else {
                    continue;
                };
                let n = &self.nodes[i];
                if n.alive {
                    sum += n.core.level_pct(self.sh.node_now(l.0 as usize, now)) as f64;
                }
            }
            let demand: f64 = self.sh.rates_per_h(z as usize, now).iter().sum();
            let required = self.sh.required_pct(z as usize, now) as f64;
            let s = if k == 0 {
                &mut self.out.busy
            } else {
                &mut self.out.quiet
            };
            s.t_h.push(t_h);
            s.demand_per_h.push(round(demand, 2));
            let sample = ((now - self.sh.start) / SAMPLE_MS) as usize;
            s.passages
                .push(self.zone_passages[k].get(sample).copied().unwrap_or(0));
            s.mean_level_pct
                .push(round(sum / lamps.len().max(1) as f64, 2));
            s.required_level_pct.push(round(required, 2));
        }
    }
}

/// How many records ahead a road user's lamp is fetched into the cache.
const PREFETCH_NODE_AHEAD: usize = 4;

/// Bytes on air of a data frame with an FPort and `frm_payload_len` bytes of payload.
fn frame_len(frm_payload_len: usize) -> usize {
    lorawan::MIN_DATA_FRAME_LEN + 1 + frm_payload_len
}

/// Values parked while the events that carry them wait in the queue: an event holds a
/// `u32` key instead of the value, which keeps every event small.
struct Parked<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Parked<T> {
    fn default() -> Self {
        Parked {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Parked<T> {
    fn put(&mut self, value: T) -> u32 {
        match self.free.pop() {
            Some(k) => {
                self.slots[k as usize] = Some(value);
                k
            }
            None => {
                self.slots.push(Some(value));
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// The value parked under `k`; each key is taken (or released) once.
    fn take(&mut self, k: u32) -> T {
        let value = self.slots[k as usize]
            .take()
            .expect("a parked value is taken once");
        self.free.push(k);
        value
    }

    /// The value parked under `k`, left in place (`None`: none is).
    fn get(&self, k: u32) -> Option<&T> {
        self.slots.get(k as usize)?.as_ref()
    }

    /// Drops the value parked under `k`.
    fn release(&mut self, k: u32) {
        self.take(k);
    }
}

pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

impl Shared<'_> {
    /// The controller knows each zone's road (design class and capacity), as a council
    /// would configure it.
    fn controller_config(&self, policy: &PolicyConfig, region: &Region) -> ControllerConfig {
        ControllerConfig {
            policy: policy.clone(),
            report_interval_s: REPORT_INTERVAL_S,
            zones: region
                .zones
                .iter()
                .map(|&z| &self.town.zones[z as usize])
                .map(|z| ZoneParams {
                    tenant: None,
                    zone: z.id,
                    design_class: z.design_class,
                    capacity_per_h: z.capacity_per_h,
                })
                .collect(),
            // No dashboard reads a run's demand: only a policy that acts on it needs it.
            demand_every_zone: false,
            ..ControllerConfig::default()
        }
    }

    fn node_config(&self, i: usize) -> NodeConfig {
        let l = &self.town.lamps[i];
        let mut c = NodeConfig::new(dev_eui(i), dev_addr(i), self.keys[i], l.lat, l.lon);
        c.report_interval_s = REPORT_INTERVAL_S;
        c.fail_safe = self.fail_safe.clone();
        c
    }

    /// The node's own clock (skewed by a clock fault).
    fn node_now(&self, i: usize, t: u64) -> UnixMs {
        UnixMs((t as i64 + self.skew_ms[i]).max(0) as u64)
    }

    fn virtual_time_of(&self, i: usize, t: UnixMs) -> u64 {
        (t.0 as i64 - self.skew_ms[i]).max(0) as u64
    }
}
