//! One policy on one town, no baselines: energy, exposure and work done, for trying a
//! policy change quickly. `cargo run --release -p lamplighter-simulator --example plan_one --
//! TOWN POLICY [DAYS] [SEED]` (TOWN: a folder or `procedural:N`).

use std::time::Instant;

use lamplighter_simulator::plan::{self, PlanOptions, TownSource};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let town = args.first().map_or("procedural:300", |s| s.as_str());
    let policy = args.get(1).map_or("adaptive", |s| s.as_str());
    let days = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let town = match town.strip_prefix("procedural:") {
        Some(n) => TownSource::Procedural {
            lamps: n.parse().expect("procedural:N"),
            seed,
        },
        None => TownSource::Path(town.into()),
    };
    let opts = PlanOptions {
        town,
        policies: vec![policy.to_string()],
        baselines: false,
        days,
        seed,
        ..PlanOptions::default()
    };
    let t = Instant::now();
    let r = match plan::run(&opts, &mut |_| {}) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let p = &r.policies[policy];
    println!(
        "{policy}: {:.1} kWh, exposure {:.4} % ({} of {}), by user {:?}, causes {:?}, late rises {}, \
         changes/lamp-h {:.2}, uplinks {}, downlinks {}, events {}, wall {:.1} s",
        p.energy_kwh,
        p.exposure.share * 100.0,
        p.exposure.underlit_passages,
        p.exposure.judged_passages,
        p.exposure
            .by_road_user
            .iter()
            .map(|(k, v)| (k.as_str(), v.underlit, v.judged))
            .collect::<Vec<_>>(),
        p.exposure.underlit_by_cause,
        p.late_rises.passages,
        p.level_changes_per_lamp_hour,
        p.uplinks,
        p.downlinks,
        p.events,
        t.elapsed().as_secs_f64()
    );
}
