//! `lamplighter export` and `lamplighter backup` as a user runs them: the real binary on a
//! store with readings, commands and rejections in it, while a writer holds it open.

use lamplighter_controller::core::policy::Reason;
use lamplighter_controller::core::Event;
use lamplighter_controller::store::{NewNode, Store};
use lamplighter_protocol::payload::*;
use lamplighter_protocol::{LampId, TenantId, UnixMs, ZoneId};

use crate::util::{run, Run};

const T0: u32 = 1_734_739_200; // 2024-12-21T00:00:00Z

#[test]
fn export_and_backup_work_on_a_store_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    store
        .provision(&[NewNode {
            lamp: LampId(1),
            tenant: TenantId::new("bath").unwrap(),
            zone: ZoneId(2),
            lat: 51.38,
            lon: -2.36,
            rated_power_w: 36.0,
        }])
        .unwrap();
    let mut events: Vec<Event> = (0..48u32)
        .map(|i| Event::Reading {
            lamp: LampId(1),
            received: UnixMs((T0 + i * 3600) as u64 * 1000),
            fcnt: i,
            report: StatusReport {
                level_pct: 50,
                target_level_pct: 50,
                power_dw: 180,
                energy_dwh: 180 * (i + 1),
                ambient_lux: 0,
                presence: Presence::default(),
                faults: FaultFlags::default(),
                mode: NodeMode::Commanded,
                trigger: ReportTrigger::Periodic,
                reading_time_s: T0 + i * 3600,
                applied_fcnt_down: 0,
            },
            energy_delta_dwh: 180,
        })
        .collect();
    events.push(Event::CommandSent {
        lamp: LampId(1),
        at: UnixMs(T0 as u64 * 1000 + 1),
        level_pct: 100,
        ramp_ms: 1000,
        reason: Reason::Presence,
        fcnt_down: 0,
    });
    store.write_events(&events).unwrap();
    let d = dir.path().to_str().unwrap();

    // Store still open here (as in a running system).
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
        "readings",
        "--format",
        "csv",
        "--data-dir",
        d,
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        csv.lines().count(),
        25,
        "header and the 24 readings of that day"
    );
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
        "2024-12-22",
        "--what",
        "energy",
        "--data-dir",
        d,
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[1].starts_with("2024-12-21,bath,2,1,"), "{csv}");
    assert!(
        lines[1].contains(",432.0,24,"),
        "24 readings of 18 Wh: {csv}"
    );
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
        "audit",
        "--data-dir",
        d,
    ]);
    assert!(ok, "{err}");
    assert!(
        csv.contains(",command,bath,2,1,") && csv.contains(",presence,"),
        "{csv}"
    );
    let Run {
        ok, stderr: err, ..
    } = run(&[
        "export",
        "--from",
        "2024-12-21",
        "--to",
        "2024-12-21",
        "--what",
        "gossip",
        "--data-dir",
        d,
    ]);
    assert!(!ok && err.contains("readings, energy or audit"), "{err}");

    let backup = dir.path().join("backup.sqlite");
    let Run {
        ok, stderr: err, ..
    } = run(&["backup", backup.to_str().unwrap(), "--data-dir", d]);
    assert!(ok, "{err}");
    let restored = tempfile::tempdir().unwrap();
    std::fs::copy(&backup, restored.path().join("lamplighter.sqlite")).unwrap();
    let copy = Store::open(restored.path()).unwrap();
    assert_eq!(copy.count("readings").unwrap(), 48);
    assert_eq!(copy.count("commands").unwrap(), 1);
    drop(store);
}
