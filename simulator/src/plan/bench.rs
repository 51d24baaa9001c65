//! `lamplighter sim bench`: whole-system figures for planning mode.
//!
//! Two cases: (a) Cambridge MA, the four policies the benchmark was specified with (`full`,
//! `part-night`, `reactive`, `adaptive`), one day, under one controller; (b) a
//! procedural town of 72,000 lamps (Glasgow's count), one policy, one day, as ward-sized
//! regions of up to [`BENCH_LAMPS_PER_REGION`] lamps with a controller each. Each reports wall time and simulated
//! lamp-seconds per wall second (lamps x simulated seconds x policies / wall seconds), as
//! medians of `runs` runs (3 by default).
//! The figures are for people; no test asserts on them.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use super::{load_town, run_town, PlanOptions, TownSource};

/// Case (a)'s policies besides the baselines (`full`, `part-night`), which always run: the
/// four the benchmark was specified with. `profile-reactive` came later; `sim run --policy
/// all` runs it too.
pub const BENCH_CAMBRIDGE_POLICIES: [&str; 2] = ["reactive", "adaptive"];

/// The big town is planned as ward-sized regions of up to this many lamps, each with its
/// own controller (Glasgow: 72,000 lamps, 23 wards); see `regions.rs`.
pub const BENCH_LAMPS_PER_REGION: usize = 3_000;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Cambridge's folder; the case is skipped (and says why) when it is missing.
    pub cambridge_dir: PathBuf,
    pub procedural_lamps: usize,
    pub procedural_policy: String,
    /// Regions the procedural town is planned as (None: one per [`BENCH_LAMPS_PER_REGION`]).
    pub procedural_regions: Option<usize>,
    pub days: u32,
    pub seed: u64,
    /// Runs of each case; the figures are their medians.
    pub runs: usize,
    /// `Some("cambridge")` or `Some("big")`: only that case.
    pub only: Option<String>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            cambridge_dir: super::default_data_dir().join("town/cambridge_ma"),
            procedural_lamps: 72_000,
            procedural_policy: "adaptive".into(),
            procedural_regions: None,
            days: 1,
            seed: 1,
            runs: 3,
            only: None,
        }
    }
}

/// The median of some wall times (the mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn case(name: &str, opts: &PlanOptions, runs: usize) -> serde_json::Value {
    let t0 = Instant::now();
    let town = match load_town(&opts.town) {
        Ok(t) => t,
        Err(e) => return json!({ "case": name, "skipped": e.to_string() }),
    };
    let load_s = t0.elapsed().as_secs_f64();
    let mut walls = Vec::new();
    let mut last = None;
    for _ in 0..runs.max(1) {
        let t1 = Instant::now();
        let result = run_town(opts, &town, &mut |_| {});
        walls.push(t1.elapsed().as_secs_f64());
        match result {
            Ok(r) => last = Some(r),
            Err(e) => return json!({ "case": name, "error": e.to_string() }),
        }
    }
    let Some(r) = last else {
        return json!({ "case": name, "error": "no run" });
    };
    let run_s = median(&walls);
    let policies = r.policy_order.len();
    let lamp_s = town.lamps.len() as f64 * opts.days as f64 * 86_400.0 * policies as f64;
    let events: u64 = r.policies.values().map(|p| p.events).sum();
    json!({
        "case": name,
        "lamps": town.lamps.len(),
        "policies": r.policy_order,
        "regions": r.parameters.regions,
        "days": opts.days,
        "load_wall_s": load_s,
        "runs": walls.len(),
        "run_wall_s_each": walls,
        "run_wall_s_median": run_s,
        "simulated_lamp_seconds": lamp_s,
        "lamp_seconds_per_wall_second_median": lamp_s / run_s.max(1e-9),
        "events": events,
        "events_per_wall_second_median": events as f64 / run_s.max(1e-9),
    })
}

/// Runs both cases and returns their figures.
pub fn bench(opts: &BenchOptions) -> serde_json::Value {
    let cambridge = PlanOptions {
        town: TownSource::Path(opts.cambridge_dir.clone()),
        policies: BENCH_CAMBRIDGE_POLICIES.map(String::from).to_vec(),
        days: opts.days,
        seed: opts.seed,
        ..PlanOptions::default()
    };
    let big = PlanOptions {
        town: TownSource::Procedural {
            lamps: opts.procedural_lamps,
            seed: opts.seed,
        },
        policies: vec![opts.procedural_policy.clone()],
        days: opts.days,
        seed: opts.seed,
        regions: opts
            .procedural_regions
            .unwrap_or(opts.procedural_lamps.div_ceil(BENCH_LAMPS_PER_REGION)),
        ..PlanOptions::default()
    };
    let wanted = |c: &str| opts.only.as_deref().is_none_or(|o| o == c);
    let mut cases = Vec::new();
    if wanted("cambridge") {
        cases.push(case("cambridge_ma, four policies", &cambridge, opts.runs));
    }
    if wanted("big") {
        // One policy for the big town: the baselines are not added here.
        let mut v = case_single(&big, opts.runs);
        v["case"] = json!(format!(
            "procedural {} lamps, {}",
            opts.procedural_lamps, opts.procedural_policy
        ));
        cases.push(v);
    }
    json!({
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cases": cases,
    })
}

/// One policy only (no baselines): runs the engine directly.
fn case_single(opts: &PlanOptions, runs: usize) -> serde_json::Value {
    let mut o = opts.clone();
    o.baselines = false;
    case("procedural", &o, runs)
}
