//! `lamplighter bench ingest` as a user runs it: at a low rate every frame the broker took
//! is stored, the accounting adds up, and the anchor relays everything; bad arguments are
//! one clear line. Behaviour only: no speed is asserted.

use crate::util::{bin, one_system_at_a_time, output};

#[test]
fn bench_ingest_accounts_for_every_frame_at_a_low_rate() {
    let _system = one_system_at_a_time();
    let run = output(bin().env("RUST_LOG", "warn").args([
        "bench",
        "ingest",
        "--lamps",
        "50",
        "--rate",
        "200",
        "--qos",
        "1",
        "--for",
        "2s",
        "--connections",
        "2",
    ]));
    assert!(run.ok, "bench failed: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {}", run.stdout);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{k} is not a count: {v}"))
    };
    assert_eq!(v["lamps"], 50);
    assert_eq!(v["connections"], 2);
    assert_eq!(v["qos"], 1);
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1, "{v}");
    let offered = n("offered");
    assert!(offered >= 300, "offered {offered}: {v}");
    assert_eq!(n("acks"), offered, "{v}");
    assert_eq!(
        n("accepted") + n("rejected") + n("lost"),
        n("acks"),
        "accounting: {v}"
    );
    assert_eq!(n("rejected"), 0, "{v}");
    assert_eq!(n("lost"), 0, "{v}");
    assert_eq!(n("connection_errors"), 0, "{v}");
    let anchor = &v["broker_alone"];
    assert!(anchor["offered"].as_u64().unwrap() >= 300, "{v}");
    assert_eq!(anchor["received"], anchor["offered"], "{v}");
    if cfg!(target_os = "linux") {
        assert!(v["rss_kib"]["end"].as_u64().unwrap() > 0, "{v}");
        assert!(!v["cpu_by_thread"].as_array().unwrap().is_empty(), "{v}");
    }
}

#[test]
fn bench_ingest_refuses_bad_arguments_in_one_line() {
    for (args, says) in [
        (&["--connections", "0"][..], "--connections"),
        (&["--lamps", "3", "--connections", "4"][..], "--connections"),
        (&["--rate", "0"][..], "--rate"),
        (&["--qos", "2"][..], "--qos"),
        (&["--for", "ten"][..], "--for"),
    ] {
        let run = output(bin().args(["bench", "ingest"]).args(args));
        assert!(!run.ok, "{args:?} was accepted");
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
}
