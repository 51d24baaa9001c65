//! Planning mode: determinism, the baselines' figures, the report files.

use std::time::Instant;

use lamplighter_simulator::plan::{self, PlanOptions, TownSource, POLICY_NAMES};

fn small(seed: u64, lamps: usize) -> PlanOptions {
    PlanOptions {
        town: TownSource::Procedural { lamps, seed: 7 },
        policies: vec!["all".into()],
        days: 1,
        seed,
        // A lighter evening than the default keeps the debug-build tests quick.
        demand_scale: 0.3,
        ..PlanOptions::default()
    }
}

#[test]
fn same_seed_same_json_and_another_seed_differs() {
    let t = Instant::now();
    let opts = PlanOptions {
        policies: vec!["reactive".into()],
        ..small(11, 80)
    };
    let a = plan::run(&opts, &mut |_| {}).unwrap().to_json();
    let b = plan::run(&opts, &mut |_| {}).unwrap().to_json();
    assert_eq!(a, b, "same options, same seed: byte-identical JSON");
    let c = plan::run(&PlanOptions { seed: 12, ..opts }, &mut |_| {})
        .unwrap()
        .to_json();
    assert_ne!(a, c, "another seed gives another run");
    eprintln!("determinism: {:?}", t.elapsed());
}

#[test]
fn full_never_underlights_and_uses_the_most_energy() {
    let t = Instant::now();
    let mut last = 0.0;
    let r = plan::run(&small(3, 120), &mut |f| {
        assert!((0.0..=1.0).contains(&f) && f >= last - 1e-9);
        last = f;
    })
    .unwrap();
    eprintln!("all policies, 120 lamps: {:?}", t.elapsed());
    assert_eq!(last, 1.0);
    for name in POLICY_NAMES {
        assert!(r.policies.contains_key(*name), "{name} missing");
    }
    let full = &r.policies["full"];
    assert!(
        full.exposure.judged_passages > 0,
        "road users were out at night"
    );
    assert_eq!(
        full.exposure.underlit_passages, 0,
        "full never under-lights"
    );
    assert_eq!(full.exposure.share, 0.0);
    for (name, p) in &r.policies {
        assert!(
            p.energy_kwh <= full.energy_kwh,
            "{name} uses more than full: {} > {}",
            p.energy_kwh,
            full.energy_kwh
        );
        eprintln!(
            "{name}: {} kWh, exposure {:.4}, late rises {}, downlinks/lamp {}",
            p.energy_kwh, p.exposure.share, p.late_rises.passages, p.downlinks_per_lamp
        );
    }
    let part = &r.policies["part-night"];
    assert!(part.energy_kwh < full.energy_kwh);
    assert!(part.savings_vs_full_pct.unwrap() > 0.0);
    assert_eq!(full.savings_vs_full_pct, Some(0.0));
    // The same road users meet every policy.
    let passages: Vec<u64> = r.policies.values().map(|p| p.exposure.passages).collect();
    assert!(passages.windows(2).all(|w| w[0] == w[1]), "{passages:?}");
}

#[test]
fn report_is_written_with_its_charts() {
    let r = plan::run(
        &PlanOptions {
            policies: vec!["profile-reactive".into()],
            ..small(5, 60)
        },
        &mut |_| {},
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("lamplighter-plan-{}", std::process::id()));
    plan::write_html_report(&r, &dir).unwrap();
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 4, "four charts inline");
    for needle in [
        "Energy by hour",
        "Busy zone",
        "Quiet zone",
        "exposure",
        "part-night",
    ] {
        assert!(html.contains(needle), "{needle} missing");
    }
    assert!(!html.contains("<script"), "offline, no scripts");
    let json = std::fs::read_to_string(dir.join("report.json")).unwrap();
    assert_eq!(json, r.to_json());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_policies_and_bad_options_are_refused() {
    let err = plan::run(
        &PlanOptions {
            policies: vec!["dim-everything".into()],
            ..small(1, 10)
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("dim-everything"), "{err}");
    assert!(err.to_string().contains("part-night"), "{err}");
    let err = plan::run(
        &PlanOptions {
            days: 0,
            ..small(1, 10)
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("days"), "{err}");
}

#[test]
fn a_missing_demand_file_falls_back_with_a_warning() {
    let r = plan::run(
        &PlanOptions {
            policies: vec!["full".into()],
            data_dir: Some("/nonexistent/lamplighter".into()),
            ..small(2, 30)
        },
        &mut |_| {},
    )
    .unwrap();
    // The default locations still hold the files in this checkout, so the fallback only
    // shows when they are gone too; either way the sources are named.
    assert_eq!(r.demand_sources.len(), 3);
    let builtin = r.demand_sources.values().any(|s| s.contains("built-in"));
    assert!(builtin || r.warnings.is_empty());
}

#[test]
fn regions_keep_every_road_user_and_leave_the_baselines_unchanged() {
    let t = Instant::now();
    let opts = PlanOptions {
        policies: vec!["adaptive".into()],
        ..small(5, 600)
    };
    let one = plan::run(&opts, &mut |_| {}).unwrap();
    let three_opts = PlanOptions {
        regions: 3,
        ..opts.clone()
    };
    let three = plan::run(&three_opts, &mut |_| {}).unwrap();
    eprintln!("one and three regions, 600 lamps: {:?}", t.elapsed());
    assert_eq!(one.parameters.regions, 1);
    assert_eq!(three.parameters.regions, 3);
    // The runs of three regions on the machine's cores still give one answer.
    let again = plan::run(&three_opts, &mut |_| {}).unwrap();
    assert_eq!(three.to_json(), again.to_json());
    for (name, a) in &one.policies {
        let b = &three.policies[name];
        // Every road user is met by exactly one region.
        assert_eq!(a.exposure.passages, b.exposure.passages, "{name}");
        assert_eq!(
            a.exposure.judged_passages, b.exposure.judged_passages,
            "{name}"
        );
        assert!(a.exposure.judged_passages > 1_000, "{name}: a quiet night");
        let energy_ratio = b.energy_kwh / a.energy_kwh;
        if name == "adaptive" {
            // Only bubbles across a region's edge are lost.
            assert!(
                (0.97..=1.0001).contains(&energy_ratio),
                "{name}: {energy_ratio}"
            );
            assert!(
                (a.exposure.share - b.exposure.share).abs() < 0.002,
                "{name}: {} against {}",
                a.exposure.share,
                b.exposure.share
            );
        } else {
            // The baselines do not depend on road users: the same figures.
            assert!((energy_ratio - 1.0).abs() < 1e-6, "{name}: {energy_ratio}");
            assert_eq!(
                a.exposure.underlit_passages, b.exposure.underlit_passages,
                "{name}"
            );
        }
    }
    let radio = PlanOptions {
        radio: Some(plan::radio::RadioConfig::default()),
        ..three_opts
    };
    let err = plan::run(&radio, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("one region"), "{err}");
    let zero = PlanOptions { regions: 0, ..opts };
    assert!(plan::run(&zero, &mut |_| {}).is_err());
}

/// A part-night run over each 2025 clock-change night, on London's clocks and on UTC: the
/// steps, and the match on the Sunday evening, move with the clocks.
#[test]
fn the_nights_of_both_2025_clock_changes_run_on_londons_clocks() {
    use lamplighter_protocol::local_time::TimeZone;
    use lamplighter_protocol::UnixMs;
    let run = |start_ms: u64, zone: &str| {
        let opts = PlanOptions {
            policies: vec!["part-night".into()],
            start: Some(UnixMs(start_ms)),
            time_zone: Some(TimeZone::named(zone).unwrap()),
            ..small(5, 60)
        };
        plan::run(&opts, &mut |_| {}).unwrap()
    };
    let kwh = |r: &plan::PlanReport, hour: usize| r.policies["part-night"].energy_by_hour_kwh[hour];
    let match_from_h = |r: &plan::PlanReport| {
        r.traffic_events
            .iter()
            .find(|e| e.name == "match ends")
            .map(|e| e.from_h)
    };
    // Saturday 12:00 UTC before each change; hour h of a run is h:00-h+1:00 after it.
    let spring = 1_743_249_600_000; // 2025-03-29 12:00 UTC
    let autumn = 1_761_393_600_000; // 2025-10-25 12:00 UTC
    let (london, utc) = (run(spring, "Europe/London"), run(spring, "UTC"));
    assert_eq!(london.parameters.time_zone.name(), "Europe/London");
    // Until the change (01:00 UTC, hour 13) both are on GMT: the same lamps, the same levels.
    for h in 6..13 {
        assert!(
            (kwh(&london, h) - kwh(&utc, h)).abs() < 1e-9,
            "spring hour {h}"
        );
    }
    // 05:30 BST is 04:30 UTC: London's lamps go back to 100 % an hour before UTC's.
    assert!(
        kwh(&london, 16) > kwh(&utc, 16) * 1.2,
        "spring 04:00-05:00 UTC: {} vs {}",
        kwh(&london, 16),
        kwh(&utc, 16)
    );
    // The match ends at 21:45 local on the Sunday: 20:45 UTC in summer time.
    assert_eq!(match_from_h(&london), Some(32.75));
    assert_eq!(match_from_h(&utc), Some(33.75));

    let (london, utc) = (run(autumn, "Europe/London"), run(autumn, "UTC"));
    // Saturday is still summer time: 22:00 BST is 21:00 UTC (hour 9), midnight 23:00 UTC.
    for h in [9, 11] {
        assert!(
            kwh(&london, h) < kwh(&utc, h) * 0.95,
            "autumn hour {h}: {} vs {}",
            kwh(&london, h),
            kwh(&utc, h)
        );
    }
    // From 01:00 UTC both are on GMT again: 05:30 is 05:30 UTC for both.
    for h in 13..17 {
        assert!(
            (kwh(&london, h) - kwh(&utc, h)).abs() < 1e-9,
            "autumn hour {h}"
        );
    }
    // Sunday is back on GMT: 21:45 UTC for both.
    assert_eq!(match_from_h(&london), Some(33.75));
    assert_eq!(match_from_h(&utc), Some(33.75));
}
