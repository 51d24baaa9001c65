//! `lamplighter export --what half-hourly`: the real binary, local days and periods.

use lamplighter_controller::core::Event;
use lamplighter_controller::store::{NewNode, Store};
use lamplighter_protocol::payload::*;
use lamplighter_protocol::{LampId, TenantId, UnixMs, ZoneId};

use crate::util::{run, Run};

const T0: u32 = 1_734_739_200; // 2024-12-21T00:00:00Z

#[test]
fn half_hourly_export_gives_every_lamp_every_local_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let node = |i: u32, tenant: &str| NewNode {
        lamp: LampId(i),
        tenant: TenantId::new(tenant).unwrap(),
        zone: ZoneId(2),
        lat: 51.38,
        lon: -2.36,
        rated_power_w: 36.0,
    };
    store
        .provision(&[node(1, "bath"), node(2, "wells")])
        .unwrap();
    // Lamp 1: 1.8 Wh every 10 minutes for a day from 23:00 UTC on the 20th.
    let start = T0 - 3600;
    let events: Vec<Event> = (0..144u32)
        .map(|i| Event::Reading {
            lamp: LampId(1),
            received: UnixMs((start + i * 600) as u64 * 1000),
            fcnt: i,
            report: StatusReport {
                level_pct: 50,
                target_level_pct: 50,
                power_dw: 108,
                energy_dwh: 18 * (i + 1),
                ambient_lux: 0,
                presence: Presence::default(),
                faults: FaultFlags::default(),
                mode: NodeMode::Commanded,
                trigger: ReportTrigger::Periodic,
                reading_time_s: start + i * 600,
                applied_fcnt_down: 0,
            },
            energy_delta_dwh: 18,
        })
        .collect();
    store.write_events(&events).unwrap();
    let d = dir.path().to_str().unwrap();

    // The 21st an hour ahead of UTC: 48 periods from 23:00 UTC, three readings in each.
    let Run {
        ok,
        stdout: csv,
        stderr: err,
        ..
    } = run(&[
        "export",
        "--from",
        "2024-12-21",
        "--to",
        "2024-12-21",
        "--what",
        "half-hourly",
        "--time-zone",
        "Etc/GMT-1",
        "--tenant",
        "bath",
        "--data-dir",
        d,
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 48, "{csv}");
    assert!(
        lines[1].starts_with("2024-12-21,1,2024-12-20T23:00:00Z,bath,2,1,"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1..].iter().all(|l| l.ends_with(",36,0.0054,3")),
        "{csv}"
    );
    assert!(lines[48].starts_with("2024-12-21,48,2024-12-21T22:30:00Z,"));

    // A time zone that does not exist is refused, saying which names are meant.
    let bad = run(&[
        "export",
        "--from",
        "2024-12-21",
        "--to",
        "2024-12-21",
        "--what",
        "half-hourly",
        "--time-zone",
        "Mars/Olympus",
        "--data-dir",
        d,
    ]);
    assert!(!bad.ok);
    assert!(
        bad.stderr.contains("unknown time zone \"Mars/Olympus\""),
        "{}",
        bad.stderr
    );

    // Every tenant, London (GMT in December): wells' lamp gets its empty grid too.
    let Run {
        ok,
        stdout: csv,
        stderr: err,
        ..
    } = run(&[
        "export",
        "--from",
        "2024-12-21",
        "--to",
        "2024-12-21",
        "--what",
        "half-hourly",
        "--data-dir",
        d,
    ]);
    assert!(ok, "{err}");
    assert_eq!(csv.lines().count(), 1 + 2 * 48);
    assert!(csv.contains("2024-12-21,48,2024-12-21T23:30:00Z,bath,2,1,"));
    assert!(csv.contains(",wells,2,2,") && csv.contains(",36,0.0000,0"));
}
