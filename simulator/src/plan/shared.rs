//! What every policy run of a plan shares, built once and read by all threads: the town,
//! its demand, darkness, road users' rates and classes in force, keys, and fault targets.

use lamplighter_controller::core::policy::PolicyConfig;
use lamplighter_controller::core::ZoneParams;
use lamplighter_controller::ControllerConfig;
use lamplighter_edge::core::NodeConfig;
use lamplighter_protocol::local_time::TimeZone;
use lamplighter_protocol::lorawan::{AesKey, SessionKeys};
use lamplighter_protocol::payload::FailSafeProfile;
use lamplighter_protocol::{sun, DevAddr, DevEui, TenantId, UnixMs};
use lamplighter_town::{distance_m, LedPowerModel, RoadKind, Town};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::faults::{Fault, FaultScenario};
use super::profile::DemandProfile;
use super::radio::RadioConfig;
use super::regions::Region;
use super::road_users::{kind_demand, USERS};
use super::LinkConfig;

pub(crate) const MIN_MS: u64 = 60_000;
/// Zone series sampling step for the charts.
pub(crate) const SAMPLE_MS: u64 = 600_000;
/// Passages in the first and last minutes of darkness are not judged (photocell and command
/// latency at lighting-up and switch-off).
pub(crate) const TWILIGHT_MARGIN_MS: u64 = 120_000;
/// A node's silence timeout before its fail-safe profile takes over.
pub(crate) const SILENCE_TIMEOUT_S: u16 = 900;
pub(crate) const REPORT_INTERVAL_S: u32 = 300;

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
            // The offset in force at the start, for a node given no time zone; the nodes of a
            // run follow the town's (`node_config`).
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

pub(crate) fn dev_addr(i: usize) -> DevAddr {
    DevAddr(0x2600_0000 + i as u32)
}

pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

impl Shared<'_> {
    /// The controller knows each zone's road (design class and capacity), as a council
    /// would configure it.
    pub(crate) fn controller_config(
        &self,
        policy: &PolicyConfig,
        region: &Region,
    ) -> ControllerConfig {
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

    pub(crate) fn node_config(&self, i: usize) -> NodeConfig {
        let l = &self.town.lamps[i];
        let mut c = NodeConfig::new(dev_eui(i), dev_addr(i), self.keys[i], l.lat, l.lon);
        c.report_interval_s = REPORT_INTERVAL_S;
        c.fail_safe = self.fail_safe.clone();
        c.time_zone = Some(self.time_zone);
        c
    }

    /// The node's own clock (skewed by a clock fault).
    pub(crate) fn node_now(&self, i: usize, t: u64) -> UnixMs {
        UnixMs((t as i64 + self.skew_ms[i]).max(0) as u64)
    }

    pub(crate) fn virtual_time_of(&self, i: usize, t: UnixMs) -> u64 {
        (t.0 as i64 - self.skew_ms[i]).max(0) as u64
    }
}
