//! Planning mode: a whole town in virtual time, in process and deterministic, to compare
//! lighting policies before a council changes a street.
//!
//! # What runs
//!
//! For each policy (by name from [`POLICY_NAMES`], or `all`), [`run`] builds the town (a
//! real one from [`lamplighter_town::Town::load`] or a procedural one), one real
//! [`NodeCore`](lamplighter_edge::core::NodeCore) per lamp and one real
//! [`ControllerCore`](lamplighter_controller::ControllerCore), and drives them through the
//! messages they exchange in production: status reports and commands under their frame
//! counters, replays refused. They pass through the cores' `poll_report` / `handle_report`
//! and `handle_command` entry points, which are the frame paths past the LoRaWAN codec
//! (a day of Cambridge is some 18 million frames, and sealing and opening each one took
//! half the run while telling the plan nothing; the codec has its own tests, and live mode
//! sends real frames). Each run is a function of (options, seed) only.
//!
//! A big town can be planned as regions (`--regions N`; `regions.rs`): sets of whole zones,
//! each under its own controller, run on their own and summed. The default is one region:
//! the town under one controller. Each (policy, region) is a run; the runs share the
//! machine's cores half an hour of virtual time at a time, keeping pace with one another.
//!
//! Lamps of the static baselines (`full`, `part-night`) have no presence sensor: they stand
//! for today's photocell and timer schemes, whose levels do not depend on road users, and
//! send only their periodic reports.
//!
//! Time is an event queue (a calendar of (time, sequence, event), in `queue.rs`), not fixed
//! steps: a node is woken when its own `poll_timeout` says (when a ramp ends, for its
//! reports, when a hold or its silence timeout ends, and each minute while it runs its
//! fail-safe profile; the ramp end of a commanded node changes nothing and is skipped,
//! exactly), the controller ticks every `tick_s` (10 s), packets arrive when
//! the link delivers them and road users enter each lamp's sensor range when their speed
//! takes them there. The road users do not depend on the policy: they are made once per run
//! and read by every policy's run in time order, merged with its queue (`traffic.rs`). A
//! passage past a lamp is not an event: it waits with the lamp and is judged when the
//! lamp's state next changes, since until then the node core tells the level at any
//! instant. A day of Cambridge (6,117 lamps, about 10 million passages at night) is about
//! 33 million events for a policy that follows demand and 16 million for a baseline.
//!
//! # Road users
//!
//! Each zone has a peak-hour flow: a share of its road's capacity by road kind (arterial
//! 45 %, major 35 %, local 10 %, cycleway 6 %, footway 5 %) times a per-zone factor
//! (0.4-1.6, from the seed), split into pedestrians, cyclists and vehicles by road kind. The
//! flow at a moment is that peak times the week's profile for the kind and local hour
//! ([`profile`]: cyclists from the Fremont Bridge counts, vehicles from the NYC taxi series,
//! pedestrians a built-in evening shape over the taxi week; a missing file falls back to a
//! built-in shape and says so in `warnings`). Events add crowds: pubs closing at 23:00 on a
//! few streets (twice as many on Friday and Saturday) and a match ending at 21:45 on the
//! first evening on the zones around a busy road.
//!
//! Trips are drawn in 5-minute slots (Poisson counts): a road user starts at a random lamp
//! of a zone and goes to the zone's end (one way streets one way) at 1.4 m/s (pedestrians),
//! 5 m/s (cyclists) or 12 m/s (vehicles), each +/- 20 %. The node at each lamp detects them
//! 20 m before they reach it (probability 0.95). Road users are only generated while it is
//! dark or within 15 minutes of it: in daylight every policy turns lamps off and nothing is
//! judged, so daytime trips would only cost time. The traffic random stream is separate from
//! the link's, so every policy meets the same road users.
//!
//! # The link
//!
//! Nodes and controller talk over a simulated IP link (MQTT over TCP): each packet takes
//! 50-200 ms. A loss (0.5 % by default) on TCP is a retransmission: the packet arrives one
//! retransmission timeout later (1 s, doubling) - [`LossMode::Retransmit`]. With
//! [`LossMode::Drop`], or in a [`Fault::PacketLoss`] spell, packets are lost for good.
//! With `--radio lorawan` the nodes are on an EU868 radio instead ([`radio`]: gateways on a
//! grid, airtime per spreading factor, LoRaSim collisions and capture, duty cycles).
//!
//! # What is measured
//!
//! - **Energy**: each lamp's input power from its LED power model, integrated between the
//!   node's events and across the end of its ramp (levels are piecewise linear: power is
//!   taken as linear along a ramp and flat after it), by hour; cost at the tariff, carbon at the grid factor; savings against
//!   `full` and `part-night` (always run as baselines).
//! - **Under-lighting exposure**: the share of passages (a road user reaching a lamp) while
//!   judged dark at which the lamp was below the level required for the demand at that
//!   moment. *Required* follows CEN/TR 13201-1 adaptive lighting with the UNI 11248
//!   thresholds: with the zone's flow (road users per hour of all kinds, the expected rate
//!   including events) at or above 50 % of its road's capacity the design class is
//!   required (100 %); from 25 % to 50 % one class lower; below 25 % two classes lower. The
//!   level for a lower class is the ratio of the classes' required averages
//!   ([`LightingClass::level_pct_for`](lamplighter_protocol::LightingClass::level_pct_for)):
//!   M3 -> M4 75 %, M3 -> M5 50 %, M4 -> M6 40 %, P4 -> P6 40 %, P5 -> P6 67 % (P6 is the
//!   lowest class). Half a percentage point of tolerance is allowed. Passages within 2
//!   minutes of lighting-up or switch-off at the town centre are not judged (photocell and
//!   command latency; a town spans seconds of sunset). So `full` (100 % while dark) has
//!   exposure 0 unless faults kill lamps.
//! - **Late rises**: passages while judged dark at which the lamp was still ramping up, and
//!   the seconds of ramp left.
//! - **Level changes** per lamp-hour (every change of a node's target), **downlinks** per
//!   lamp, uplinks, packets lost or retransmitted.
//! - **Charts' series**: energy by hour, and for the busiest and the quietest zone (by peak
//!   flow) the demand, passages, mean and required level every 10 minutes.
//!
//! # Faults and invariants
//!
//! A [`FaultScenario`] can kill nodes (for a while or for good), take the controller down
//! (it restarts from its persisted session counters), lose or delay packets for a spell and
//! skew node clocks. Every run checks two invariants and fails with
//! [`PlanError::Invariant`], which prints the seed:
//!
//! 1. **Floor**: while judged dark, no live lamp stays below its floor for longer than
//!    `floor_grace_s` (17 minutes by default). The floor is the lower of the policy's
//!    minimum level and the level the node's fail-safe profile gives at that time of night:
//!    a lamp under a working controller is never commanded below the minimum, and one that
//!    lost its controller falls back to the fail-safe profile after its silence timeout
//!    (15 minutes). The grace is what the design allows a node that missed its lighting-up
//!    command: the controller's refresh (5 minutes) or the node's silence timeout; a node
//!    whose clock is skewed by a fault gets its skew on top (it sees dusk that much late).
//!    Checked at each node wake-up (at least every 5 minutes).
//! 2. **Convergence**: when the last transient fault heals, every live node must have
//!    applied the controller's latest command for it within `converge_within_s` (10
//!    minutes).
//!
//! Determinism: ChaCha8 generators seeded from the seed, `BTreeMap`s in outputs, no wall
//! clock in the report: the same options give byte-identical JSON.

mod bench;
mod checks;
mod engine;
pub mod faults;
mod inject;
mod outcome;
pub mod profile;
mod queue;
pub mod radio;
mod regions;
mod report;
mod road_users;
mod shared;
mod traffic;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Condvar, Mutex};

pub use bench::{bench, BenchOptions};
pub use faults::{Fault, FaultScenario, InvariantReport};
use lamplighter_controller::core::policy::PolicyConfig;
pub use lamplighter_controller::core::policy::POLICY_NAMES;
use lamplighter_protocol::local_time::TimeZone;
use lamplighter_protocol::UnixMs;
use lamplighter_town::{Town, TownError};
pub use outcome::ZoneSeries;
pub use profile::DemandProfile;
pub use report::{
    write_html_report, Exposure, LateRises, Parameters, PlanReport, PolicyReport, TownSummary,
    TrafficEventSummary,
};
use serde::{Deserialize, Serialize};

/// 2024-11-04 12:00 UTC, a Monday in late autumn: long nights, byte-identical reports.
pub const DEFAULT_START: UnixMs = UnixMs(1_730_721_600_000);
/// A UK council tariff, 2023-24.
pub const DEFAULT_TARIFF_GBP_PER_KWH: f64 = 0.294;
/// UK grid carbon factor, 2024.
pub const DEFAULT_CARBON_KG_PER_KWH: f64 = 0.20705;
/// Where a procedural town stands (Cambridge, UK) unless told otherwise.
pub const PROCEDURAL_CENTRE: (f64, f64) = (52.2053, 0.1218);
/// The policies every run includes for the savings figures.
pub const BASELINES: [&str; 2] = ["full", "part-night"];

/// Which town to plan for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TownSource {
    /// A folder or file [`Town::load`] understands (Cambridge GeoJSON, a points CSV).
    Path(PathBuf),
    /// [`Town::procedural`] around [`PROCEDURAL_CENTRE`].
    Procedural { lamps: usize, seed: u64 },
}

/// How the link treats a lost packet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossMode {
    /// TCP resends it after `rto_ms`, doubling on each further loss.
    Retransmit { rto_ms: u64 },
    /// Gone for good (a datagram link, or a broker that dropped it).
    Drop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkConfig {
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    pub loss_pct: f64,
    pub loss_mode: LossMode,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            latency_min_ms: 50,
            latency_max_ms: 200,
            loss_pct: 0.5,
            loss_mode: LossMode::Retransmit { rto_ms: 1_000 },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    pub town: TownSource,
    /// Policy names, or `["all"]` for every one in [`POLICY_NAMES`]. `full` and
    /// `part-night` are added when missing (the savings are measured against them).
    pub policies: Vec<String>,
    pub days: u32,
    pub seed: u64,
    /// Default [`DEFAULT_START`].
    pub start: Option<UnixMs>,
    pub tariff_gbp_per_kwh: f64,
    pub carbon_kg_per_kwh: f64,
    pub faults: FaultScenario,
    pub link: LinkConfig,
    /// Controller tick interval (s).
    pub tick_s: u32,
    /// The town's clocks for schedules, demand and days; default: `Europe/London` for a
    /// town in Britain or Ireland, else the town's longitude / 15 h in whole hours (a fixed
    /// offset, no summer time).
    pub time_zone: Option<TimeZone>,
    /// Multiplies every zone's demand.
    pub demand_scale: f64,
    /// Folder holding `demand/*.csv`; default `../shared/data`.
    pub data_dir: Option<PathBuf>,
    /// Threads for the runs (0: as many as the machine has, at most one per run).
    pub threads: usize,
    /// Regions the town is planned as, each with its own controller (see `regions.rs`; 1
    /// by default: the town under one controller). The figures are the regions' summed.
    pub regions: usize,
    /// Add `full` and `part-night` when missing (true by default; the savings need them).
    pub baselines: bool,
    /// Nodes on a LoRaWAN radio ([`radio`]) instead of the IP `link` (default: IP).
    pub radio: Option<radio::RadioConfig>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            town: TownSource::Procedural {
                lamps: 300,
                seed: 1,
            },
            policies: vec!["all".into()],
            days: 1,
            seed: 1,
            start: None,
            tariff_gbp_per_kwh: DEFAULT_TARIFF_GBP_PER_KWH,
            carbon_kg_per_kwh: DEFAULT_CARBON_KG_PER_KWH,
            faults: FaultScenario::none(),
            link: LinkConfig::default(),
            tick_s: 10,
            time_zone: None,
            demand_scale: 1.0,
            data_dir: None,
            threads: 0,
            regions: 1,
            baselines: true,
            radio: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("town: {0}")]
    Town(#[from] TownError),
    #[error("unknown policy {0:?}; known: {known}", known = POLICY_NAMES.join(", "))]
    UnknownPolicy(String),
    #[error("bad options: {0}")]
    Options(String),
    #[error("invariant broken (policy {policy}, seed {seed}): {detail}")]
    Invariant {
        seed: u64,
        policy: String,
        detail: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("chart: {0}")]
    Chart(String),
}

impl PlanOptions {
    /// The policies to run, in order: the baselines first, then the rest as given.
    pub fn expanded_policies(&self) -> Result<Vec<String>, PlanError> {
        let mut out: Vec<String> = if self.baselines {
            BASELINES.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        };
        let wanted: Vec<String> = if self.policies.iter().any(|p| p == "all") {
            POLICY_NAMES.iter().map(|s| s.to_string()).collect()
        } else {
            self.policies.clone()
        };
        for p in wanted {
            if PolicyConfig::named(&p).is_none() {
                return Err(PlanError::UnknownPolicy(p));
            }
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    fn validate(&self) -> Result<(), PlanError> {
        let bad = |s: &str| Err(PlanError::Options(s.to_string()));
        if self.days == 0 || self.days > 366 {
            return bad("days must be 1 to 366");
        }
        if self.tick_s == 0 {
            return bad("tick_s must be at least 1");
        }
        if !(0.0..=100.0).contains(&self.link.loss_pct) {
            return bad("loss_pct must be 0 to 100");
        }
        if self.link.latency_min_ms > self.link.latency_max_ms {
            return bad("latency_min_ms must not exceed latency_max_ms");
        }
        if !(self.demand_scale.is_finite() && self.demand_scale >= 0.0) {
            return bad("demand_scale must be a non-negative number");
        }
        if self.regions == 0 {
            return bad("regions must be at least 1");
        }
        if let TownSource::Procedural { lamps: 0, .. } = self.town {
            return bad("a procedural town needs at least one lamp");
        }
        Ok(())
    }
}

/// Loads or builds the town of `opts`.
pub fn load_town(source: &TownSource) -> Result<Town, PlanError> {
    Ok(match source {
        TownSource::Path(p) => Town::load(p)?,
        TownSource::Procedural { lamps, seed } => {
            Town::procedural(*lamps, *seed, PROCEDURAL_CENTRE)
        }
    })
}

/// Runs every policy of `opts` over the town and returns the report. `progress` is called
/// with the share done (0 to 1) now and then, on the calling thread.
pub fn run(opts: &PlanOptions, progress: &mut dyn FnMut(f64)) -> Result<PlanReport, PlanError> {
    let town = load_town(&opts.town)?;
    run_town(opts, &town, progress)
}

/// As [`run`], for a town already loaded.
pub fn run_town(
    opts: &PlanOptions,
    town: &Town,
    progress: &mut dyn FnMut(f64),
) -> Result<PlanReport, PlanError> {
    opts.validate()?;
    let policies = opts.expanded_policies()?;
    if town.lamps.is_empty() {
        return Err(PlanError::Options(format!(
            "town {} has no lamps",
            town.name
        )));
    }
    let mut warnings = Vec::new();
    let profile = DemandProfile::load(opts.data_dir.as_deref(), &mut warnings);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let time_zone = opts
        .time_zone
        .unwrap_or_else(|| town_time_zone(town.centre()));
    let start = opts.start.unwrap_or(DEFAULT_START).0;
    let mut shared = shared::Shared::new(
        town,
        &profile,
        start,
        opts.days,
        opts.seed,
        time_zone,
        opts.tick_s as u64 * 1000,
        opts.link.clone(),
        opts.faults.clone(),
        opts.demand_scale,
    );
    shared.radio = opts.radio.clone();
    let configs: Vec<PolicyConfig> = policies
        .iter()
        .map(|p| {
            let mut c =
                PolicyConfig::named(p).ok_or_else(|| PlanError::UnknownPolicy(p.clone()))?;
            c.time_zone = time_zone;
            Ok(c)
        })
        .collect::<Result<_, PlanError>>()?;

    // The radio's gateways hear the whole town: a radio run is one region.
    if opts.radio.is_some() && opts.regions > 1 {
        return Err(PlanError::Options(
            "a LoRaWAN radio is planned over one region (its gateways hear the whole town)".into(),
        ));
    }
    let regions = regions::split(town, opts.regions);
    let outcomes = run_items(opts, &shared, &configs, &regions, progress)?;
    for (p, o) in policies.iter().zip(&outcomes) {
        if let Some(v) = &o.invariants.violation {
            return Err(PlanError::Invariant {
                seed: opts.seed,
                policy: p.clone(),
                detail: v.clone(),
            });
        }
    }
    Ok(report::build(
        opts,
        town,
        &shared,
        &profile,
        warnings,
        time_zone,
        regions.len(),
        &policies,
        outcomes,
    ))
}

/// The clocks of a town at `(lat, lon)` when a run names none: Britain's (and Ireland's,
/// whose rules are the same) inside their bounds, else a fixed offset of the longitude's
/// whole hours.
pub fn town_time_zone((lat, lon): (f64, f64)) -> TimeZone {
    if (49.8..=60.9).contains(&lat) && (-10.7..=1.8).contains(&lon) {
        return lamplighter_protocol::local_time::DEFAULT_TIME_ZONE;
    }
    TimeZone::fixed_hours((lon / 15.0).round() as i32).unwrap_or(TimeZone::UTC)
}

/// Virtual time a run advances by at a time (see [`Board`]).
const WINDOW_MS: u64 = 1_800_000;

/// How far each run is, and which are being run now. A thread takes the least advanced
/// run that is free, one window at a time: the runs keep pace with one another (so the road
/// users' chunks they have all read are freed) without waiting at each window's end.
struct Board {
    windows_done: Vec<usize>,
    busy: Vec<bool>,
}

/// How many windows a run may get ahead of the slowest.
const WINDOW_SLACK: usize = 4;

impl Board {
    /// The next (run, window) for a thread, or None when nothing is left for it (every run
    /// is done or being run by another thread).
    fn claim(board: &Mutex<Board>, moved: &Condvar, windows: usize) -> Option<(usize, usize)> {
        let mut b = board.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let slowest = b
                .windows_done
                .iter()
                .copied()
                .filter(|&d| d < windows)
                .min()?;
            let free = |k: &usize| !b.busy[*k] && b.windows_done[*k] < windows;
            if !(0..b.busy.len()).any(|k| free(&k)) {
                return None;
            }
            let pick = (0..b.busy.len())
                .filter(free)
                .filter(|&k| b.windows_done[k] <= slowest + WINDOW_SLACK)
                .min_by_key(|&k| (b.windows_done[k], k));
            if let Some(k) = pick {
                b.busy[k] = true;
                return Some((k, b.windows_done[k]));
            }
            // Only runs too far ahead are free: wait for the slowest to move.
            b = moved.wait(b).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Run `k` finished a window (or panicked); returns the share of all work done.
    fn release(
        board: &Mutex<Board>,
        moved: &Condvar,
        k: usize,
        panicked: bool,
        windows: usize,
    ) -> f64 {
        let mut b = board.lock().unwrap_or_else(|e| e.into_inner());
        b.busy[k] = false;
        b.windows_done[k] = if panicked {
            windows
        } else {
            b.windows_done[k] + 1
        };
        moved.notify_all();
        let done: usize = b.windows_done.iter().sum();
        done as f64 / (windows * b.windows_done.len()).max(1) as f64
    }
}

/// One policy over one region.
enum Item<'s, 'a> {
    NotStarted,
    Running(Box<(engine::Sim<'s, 'a>, traffic::Reader<'s, 'a>)>),
    Panicked,
}

/// Runs every policy over every region, on the machine's cores, and gives each policy's
/// outcome (its regions' summed).
fn run_items(
    opts: &PlanOptions,
    shared: &shared::Shared,
    configs: &[PolicyConfig],
    regions: &[regions::Region],
    progress: &mut dyn FnMut(f64),
) -> Result<Vec<outcome::Outcome>, PlanError> {
    let cores = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // The demand-following policies come last in the list and take longest: first among
    // equals, they do not leave one thread running alone at the end.
    let order: Vec<(usize, usize)> = (0..configs.len())
        .rev()
        .flat_map(|p| (0..regions.len()).map(move |r| (p, r)))
        .collect();
    let threads = cores.clamp(1, order.len());
    let traffic = traffic::Traffic::new(shared, regions, configs.len());
    let items: Vec<Mutex<Item>> = order.iter().map(|_| Mutex::new(Item::NotStarted)).collect();
    let windows = (shared.end - shared.start).div_ceil(WINDOW_MS) as usize;
    let board = Mutex::new(Board {
        windows_done: vec![0; order.len()],
        busy: vec![false; order.len()],
    });
    let moved = Condvar::new();
    let stop_producing = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<f64>();
    std::thread::scope(|s| {
        if cores > threads {
            // A core to spare: it makes the road users ahead of the runs.
            let (traffic, stop) = (&traffic, &stop_producing);
            s.spawn(move || traffic.produce(stop));
        }
        for _ in 0..threads {
            let tx = tx.clone();
            let (items, order, traffic, board, moved) = (&items, &order, &traffic, &board, &moved);
            s.spawn(move || {
                while let Some((k, w)) = Board::claim(board, moved, windows) {
                    let until = shared.start + (w as u64 + 1) * WINDOW_MS;
                    let (p, r) = order[k];
                    let mut item = items[k].lock().unwrap_or_else(|e| e.into_inner());
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        if let Item::NotStarted = *item {
                            let sim =
                                engine::Sim::new(shared, configs[p].clone(), &regions[r], r as u64);
                            *item = Item::Running(Box::new((sim, traffic.reader(r))));
                        }
                        if let Item::Running(run) = &mut *item {
                            let (sim, reader) = &mut **run;
                            sim.advance(reader, until);
                        }
                    }));
                    if ran.is_err() {
                        *item = Item::Panicked;
                    }
                    drop(item);
                    let share = Board::release(board, moved, k, ran.is_err(), windows);
                    let _ = tx.send(share);
                }
            });
        }
        drop(tx);
        let mut shown = 0.0;
        for f in rx {
            // Shares come from several threads: show only progress forward.
            if f > shown {
                shown = f;
                progress(f);
            }
        }
        stop_producing.store(true, Ordering::Release);
    });
    let mut outcomes: Vec<Option<outcome::Outcome>> = vec![None; configs.len()];
    let mut done: Vec<((usize, usize), Mutex<Item>)> = order.iter().copied().zip(items).collect();
    done.sort_by_key(|(pr, _)| *pr);
    for ((p, _), item) in done {
        let Item::Running(run) = item.into_inner().unwrap_or_else(|e| e.into_inner()) else {
            return Err(PlanError::Options(format!(
                "the run of policy {} panicked",
                configs[p].name
            )));
        };
        let outcome = run.0.finish();
        match &mut outcomes[p] {
            Some(o) => o.absorb(outcome),
            o @ None => *o = Some(outcome),
        }
    }
    outcomes
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| PlanError::Options("a policy run did not finish".into()))
}

/// Where the default data folder is for this checkout (for tests and the CLI's help).
pub fn default_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(runs: usize) -> Mutex<Board> {
        Mutex::new(Board {
            windows_done: vec![0; runs],
            busy: vec![false; runs],
        })
    }

    #[test]
    fn threads_take_the_least_advanced_free_run_and_stop_when_none_is_left() {
        let (b, moved) = (board(3), Condvar::new());
        let windows = 3;
        // Two threads start the first two runs, in order.
        assert_eq!(Board::claim(&b, &moved, windows), Some((0, 0)));
        assert_eq!(Board::claim(&b, &moved, windows), Some((1, 0)));
        // Run 0 done with its window: the least advanced free run is 2, not 0 again.
        assert_eq!(Board::release(&b, &moved, 0, false, windows), 1.0 / 9.0);
        assert_eq!(Board::claim(&b, &moved, windows), Some((2, 0)));
        assert_eq!(Board::claim(&b, &moved, windows), Some((0, 1)));
        // A run that panicked counts as done and is not handed out again.
        Board::release(&b, &moved, 1, true, windows);
        Board::release(&b, &moved, 2, false, windows);
        Board::release(&b, &moved, 0, false, windows);
        let mut order = Vec::new();
        while let Some((k, w)) = Board::claim(&b, &moved, windows) {
            order.push((k, w));
            Board::release(&b, &moved, k, false, windows);
        }
        assert_eq!(order, vec![(2, 1), (0, 2), (2, 2)]);
        let done = b.lock().unwrap().windows_done.clone();
        assert_eq!(done, vec![3, 3, 3]);
    }

    #[test]
    fn a_thread_with_only_busy_runs_left_stops_rather_than_waits() {
        let (b, moved) = (board(2), Condvar::new());
        assert_eq!(Board::claim(&b, &moved, 1), Some((0, 0)));
        assert_eq!(Board::claim(&b, &moved, 1), Some((1, 0)));
        // Both runs are being run by other threads: nothing for a third one.
        assert_eq!(Board::claim(&b, &moved, 1), None);
    }

    #[test]
    fn a_run_far_ahead_waits_for_the_slowest() {
        let (b, moved) = (board(2), Condvar::new());
        let windows = 20;
        // Run 1 is slow: it holds its first window while run 0 goes ahead to the slack.
        assert_eq!(Board::claim(&b, &moved, windows), Some((0, 0)));
        assert_eq!(Board::claim(&b, &moved, windows), Some((1, 0)));
        for w in 0..=WINDOW_SLACK {
            Board::release(&b, &moved, 0, false, windows);
            if w < WINDOW_SLACK {
                assert_eq!(Board::claim(&b, &moved, windows), Some((0, w + 1)));
            }
        }
        // Run 0 is WINDOW_SLACK + 1 windows ahead: a claim now waits until run 1 moves.
        std::thread::scope(|s| {
            let waiter = s.spawn(|| Board::claim(&b, &moved, windows));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished(), "went ahead of the slack");
            Board::release(&b, &moved, 1, false, windows);
            assert_eq!(waiter.join().unwrap(), Some((1, 1)));
        });
    }
}
