//! Planning mode under faults: many seeds, invariants checked in every run.

use std::time::Instant;

use lamplighter_simulator::plan::{
    self, Fault, FaultScenario, PlanError, PlanOptions, TownSource, POLICY_NAMES,
};

fn faulty(seed: u64) -> PlanOptions {
    PlanOptions {
        town: TownSource::Procedural {
            lamps: 200,
            seed: seed % 3,
        },
        policies: vec![POLICY_NAMES[seed as usize % POLICY_NAMES.len()].to_string()],
        baselines: false,
        days: 1,
        seed,
        faults: FaultScenario::random(seed, 1),
        // Fewer road users and a slower tick keep 20 debug-build runs within CI's patience;
        // neither changes what the invariants are about.
        demand_scale: 0.1,
        tick_s: 60,
        ..PlanOptions::default()
    }
}

#[test]
fn twenty_seeds_with_faults_keep_the_invariants() {
    let t = Instant::now();
    for seed in 1..=20 {
        let opts = faulty(seed);
        match plan::run(&opts, &mut |_| {}) {
            Ok(r) => {
                let p = &r.policies[&opts.policies[0]];
                assert!(
                    p.invariants.floor_checks > 0,
                    "seed {seed}: nothing checked"
                );
                assert!(
                    p.invariants.heals_checked > 0,
                    "seed {seed}: no heal checked"
                );
            }
            Err(e) => panic!("seed {seed} ({:?}): {e}", opts.faults),
        }
    }
    eprintln!("20 faulty runs: {:?}", t.elapsed());
}

#[test]
fn a_broken_invariant_fails_the_run_and_names_the_seed() {
    // The controller goes at 16:20 UTC, just before dusk (about 16:27 in Cambridge, UK), and
    // the floor grace is shorter than the nodes' silence timeout: lamps commanded off in
    // daylight stay off until the silence timeout lights them, too long.
    let mut faults = FaultScenario::none();
    faults.faults.push(Fault::ControllerDown {
        from_s: 4 * 3600 + 1200,
        until_s: 5 * 3600,
    });
    faults.floor_grace_s = 60;
    let opts = PlanOptions {
        town: TownSource::Procedural { lamps: 40, seed: 1 },
        policies: vec!["full".into()],
        baselines: false,
        seed: 4242,
        faults,
        demand_scale: 0.1,
        ..PlanOptions::default()
    };
    let err = plan::run(&opts, &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, PlanError::Invariant { seed: 4242, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("seed 4242"), "{err}");
    assert!(err.to_string().contains("below its floor"), "{err}");
}

#[test]
fn the_same_faults_heal_within_the_defaults() {
    let mut faults = FaultScenario::none();
    faults.faults.push(Fault::ControllerDown {
        from_s: 4 * 3600 + 1200,
        until_s: 5 * 3600,
    });
    faults.faults.push(Fault::NodesDown {
        share: 0.2,
        from_s: 6 * 3600,
        until_s: Some(7 * 3600),
    });
    let opts = PlanOptions {
        town: TownSource::Procedural { lamps: 40, seed: 1 },
        policies: vec!["full".into()],
        baselines: false,
        seed: 4242,
        faults,
        demand_scale: 0.1,
        ..PlanOptions::default()
    };
    let r = plan::run(&opts, &mut |_| {}).unwrap();
    let inv = &r.policies["full"].invariants;
    assert_eq!(inv.heals_checked, 2);
    assert!(inv.longest_below_floor_s > 60, "{inv:?}");
    assert!(inv.longest_below_floor_s <= 900 + 120, "{inv:?}");
    assert!(inv.slowest_convergence_s <= 600, "{inv:?}");
}
