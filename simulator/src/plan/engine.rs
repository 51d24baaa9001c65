//! The event-driven run of one policy: nodes, controller, link and road users in virtual time.
//!
//! Beside it: what every run shares ([`super::shared`]), road users ([`super::road_users`]),
//! the invariants checked as the run goes ([`super::checks`]), how faults act on it
//! ([`super::inject`]) and what it yields ([`super::outcome`]).

use lamplighter_controller::core::policy::PolicyConfig;
use lamplighter_controller::{ControllerCore, ProvisionedNode};
use lamplighter_edge::core::{NodeCore, Sample, Uplink};
use lamplighter_edge::RoadUser;
use lamplighter_protocol::hint::{prefetch, prefetch_lines};
use lamplighter_protocol::lorawan;
use lamplighter_protocol::payload::{Command, NodeMode, StatusReport};
use lamplighter_protocol::{LampId, UnixMs};
use rand::distributions::Bernoulli;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::faults::Fault;
use super::outcome::{Outcome, ZoneSeries};
use super::queue::{EventQueue, Parked};
use super::radio::Radio;
use super::regions::Region;
use super::road_users::{user_name, USERS};
use super::shared::{dev_addr, dev_eui, round, Shared, SAMPLE_MS};
use super::traffic::{Reader, SensorRec};
use super::LossMode;

/// A passage past a lamp, judged once the lamp's state up to it is known (see
/// [`Sim::judge_passages`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Passage {
    pub(super) t: u64,
    /// The level its class required then (only passages that count towards exposure wait
    /// to be judged; see [`SensorRec::judged`]).
    pub(super) required_pct: f32,
    pub(super) who: RoadUser,
}

/// `repr(u32)`: a 4-byte tag before 4-byte fields, 16 bytes in all. Left to itself the
/// compiler gave it a 2-byte tag and copied it around the queue with overlapping unaligned
/// moves, which the CPU could not forward from store to load (a stall on every event).
#[derive(Clone, Copy)]
#[repr(u32)]
pub(super) enum Ev {
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
pub(super) struct Node {
    /// Passages not yet judged: they are judged when the lamp's state next changes (or the
    /// run ends), since until then it is known from the node core alone. A passage is not
    /// an event of its own, which halves the events of road users.
    pub(super) passages: Vec<Passage>,
    pub(super) last_ms: u64,
    pub(super) last_power_w: f32,
    pub(super) settled_power_w: f32,
    /// When the core's ramp ends (virtual time) and the power from then on
    /// (`settled_power_w`): energy is counted across a ramp's end without a wake-up there.
    pub(super) ramp_end_ms: u64,
    pub(super) next_wake: u64,
    /// The earliest time among `passages` (`u64::MAX`: none): until then none is due.
    pub(super) first_passage_ms: u64,
    pub(super) alive: bool,
    pub(super) converged: bool,
    pub(super) below_since: Option<u64>,
    pub(super) core: NodeCore,
}

pub(crate) struct Sim<'s, 'a> {
    pub(super) sh: &'s Shared<'a>,
    /// The lamps and zones this run's controller has: node `i` of the run is the town's lamp
    /// `region.lamps[i]`.
    pub(super) region: &'s Region,
    pub(super) policy: PolicyConfig,
    /// Whether the lamps have presence sensors: only for policies that use presence. The
    /// static baselines stand for today's photocell and timer schemes, whose lamps have no
    /// sensor and send no presence reports (their levels would be the same either way).
    pub(super) sensing: bool,
    pub(super) queue: EventQueue<Ev>,
    pub(super) nodes: Vec<Node>,
    pub(super) ctrl: Option<ControllerCore>,
    pub(super) provisioned: Vec<ProvisionedNode>,
    pub(super) last_cmd: Vec<Option<u8>>,
    pub(super) link_rng: ChaCha8Rng,
    /// The link's loss, drawn as `gen_bool` would draw it, made once rather than per packet.
    pub(super) link_loss: Bernoulli,
    /// Active transient faults: their count, and the loss and delay they add.
    pub(super) active: u32,
    pub(super) fault_loss_pct: f64,
    pub(super) fault_delay_ms: u64,
    pub(super) pending_heal: Option<u64>,
    /// Heals so far: a convergence check is for the latest only.
    pub(super) heals: u32,
    /// Messages in flight, parked here so that events stay small.
    pub(super) uplinks: Parked<Uplink>,
    pub(super) commands: Parked<(u32, Command)>,
    pub(super) floor_by_minute: Vec<u8>,
    /// Passages past the busy and the quiet zone's lamps, by sample (index k: those
    /// before the k-th sample and at or after the one before).
    pub(super) zone_passages: [Vec<u64>; 2],
    /// Judged and under-lit passages by road user (index: [`user_index`]), counted here and
    /// put into the outcome's maps at the end.
    pub(super) judged_by_user: [u64; 3],
    pub(super) underlit_by_user: [u64; 3],
    /// Under-lit passages by cause, in the order of [`UNDERLIT_CAUSES`].
    pub(super) underlit_by_cause: [u64; 4],
    /// The LoRa radio, when the run models one (IP nodes otherwise).
    pub(super) radio: Option<Radio>,
    pub(super) out: Outcome,
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
    pub(super) fn lamp(&self, i: usize) -> usize {
        self.region.lamps[i] as usize
    }

    // Inlined for the same reason as `EventQueue::push`: an event handed over in memory
    // is read back before its fields are stored.
    #[inline(always)]
    pub(super) fn push(&mut self, t: u64, ev: Ev) {
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
    pub(super) fn account(&mut self, i: usize, now: u64) {
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
