//! History, rollups, retention, export and backup.

use lamplighter_protocol::payload::*;
use lamplighter_protocol::{LampId, TenantId, UnixMs, ZoneId};
use rusqlite::Connection;

use super::*;
use crate::core::Event;

fn node(i: u32) -> NewNode {
    NewNode {
        lamp: LampId(i),
        tenant: TenantId::new("bath").unwrap(),
        zone: ZoneId(i / 2),
        lat: 51.45,
        lon: -2.59,
        rated_power_w: 40.0,
    }
}

fn reading(lamp: u32, fcnt: u32, t_s: u32, energy_dwh: u32, delta: u32) -> Event {
    Event::Reading {
        lamp: LampId(lamp),
        received: UnixMs(t_s as u64 * 1000 + 200),
        fcnt,
        report: StatusReport {
            level_pct: 50,
            target_level_pct: 50,
            power_dw: 200,
            energy_dwh,
            ambient_lux: 0,
            presence: Presence {
                pedestrians: 1,
                cyclists: 0,
                vehicles: 2,
            },
            faults: FaultFlags::default(),
            mode: NodeMode::Commanded,
            trigger: ReportTrigger::Periodic,
            reading_time_s: t_s,
            applied_fcnt_down: 0,
        },
        energy_delta_dwh: delta,
    }
}

const DAY0: u32 = 1_734_739_200; // 2024-12-21T00:00:00Z

#[test]
fn rollups_count_each_reading_once_and_serve_lamp_and_zone_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    store.provision(&[node(0), node(1), node(2)]).unwrap();
    store.set_influx_spool(true);
    // Lamps 0 and 1 (zone 0) report every minute for two hours; each reading 2 dWh.
    let mut events = Vec::new();
    for m in 0..120u32 {
        for lamp in 0..2 {
            events.push(reading(lamp, m, DAY0 + m * 60, 2 * (m + 1), 2));
        }
    }
    let stored = store.write_events(&events).unwrap();
    assert_eq!(stored.len(), 240);
    // The same frames again (a node resending): nothing new anywhere.
    assert!(store.write_events(&events[..50]).unwrap().is_empty());
    assert_eq!(store.count("readings").unwrap(), 240);
    let spooled: i64 = store
        .conn
        .query_row("SELECT COUNT(*) FROM influx_spool", [], |r| r.get(0))
        .unwrap();
    assert_eq!(spooled, 240);

    let raw = store
        .lamp_history(LampId(0), DAY0 as i64, DAY0 as i64 + 3600, Resolution::Raw)
        .unwrap();
    assert_eq!(raw.len(), 60);
    let q = store
        .lamp_history(
            LampId(0),
            DAY0 as i64,
            DAY0 as i64 + 86_400,
            Resolution::Min15,
        )
        .unwrap();
    assert_eq!(q.len(), 8);
    assert!(q.iter().all(|p| p.readings == 15 && p.energy_wh == 3.0));
    assert_eq!(q[0].power_w, 20.0);
    let zone = store
        .zone_history(
            &TenantId::new("bath").unwrap(),
            ZoneId(0),
            DAY0 as i64,
            DAY0 as i64 + 86_400,
            Resolution::Min15,
        )
        .unwrap();
    assert_eq!(zone.len(), 8);
    assert_eq!(zone[0].readings, 30);
    assert_eq!(zone[0].power_w, 40.0, "two lamps of 20 W");
    assert_eq!(zone[0].vehicles, 60);
    let day = store
        .zone_history(
            &TenantId::new("bath").unwrap(),
            ZoneId(0),
            DAY0 as i64 - 86_400,
            DAY0 as i64 + 86_400,
            Resolution::Day,
        )
        .unwrap();
    assert_eq!(day.len(), 1);
    assert_eq!(day[0].energy_wh, 2.0 * 120.0 * 2.0 / 10.0);

    // Retention: 35 days later the raw readings go, the rollups stay.
    let later_ms = (DAY0 as i64 + 40 * 86_400) * 1000;
    let deleted = store.apply_retention(later_ms).unwrap();
    assert_eq!(deleted, 240);
    assert_eq!(store.count("readings").unwrap(), 0);
    assert_eq!(
        store
            .lamp_history(
                LampId(0),
                DAY0 as i64,
                DAY0 as i64 + 86_400,
                Resolution::Day
            )
            .unwrap()[0]
            .readings,
        120
    );
    // Six years on, the 15-minute rollups go too; daily ones are kept.
    store
        .apply_retention(later_ms + 6 * 366 * 86_400_000)
        .unwrap();
    assert!(store
        .lamp_history(LampId(0), 0, i64::MAX, Resolution::Min15)
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .lamp_history(LampId(0), 0, i64::MAX, Resolution::Day)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_version_1_database_is_migrated_and_its_readings_rolled_up() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Build a version-1 store by hand: migration 1 only, with readings in it.
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO nodes (lamp_id, tenant, dev_eui, dev_addr, zone, lat, lon, rated_power_w,
                mqtt_username, mqtt_password, nwk_s_key, app_s_key)
             VALUES (7, 'bath', '70b3d5e000000007', 7, 3, 51.0, -2.0, 40.0, 'u', 'p',
                '00000000000000000000000000000000', '00000000000000000000000000000000')",
            [],
        )
        .unwrap();
        for m in 0..30i64 {
            conn.execute(
                "INSERT INTO readings VALUES (7, ?1, ?2, ?3, 40, 40, 16.0, ?4, 3, 0, 0, 0, 0, 0,
                    'Commanded', 'Periodic')",
                rusqlite::params![
                    m,
                    (DAY0 as i64 + m * 60) * 1000,
                    DAY0 as i64 + m * 60,
                    m * 3
                ],
            )
            .unwrap();
        }
    }
    let store = Store::open(dir.path()).unwrap();
    let v: i64 = store
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let h = store
        .lamp_history(LampId(7), 0, i64::MAX, Resolution::Min15)
        .unwrap();
    assert_eq!(
        h.iter().map(|p| p.readings).collect::<Vec<_>>(),
        vec![15, 15]
    );
    let zone = store
        .zone_history(
            &TenantId::new("bath").unwrap(),
            ZoneId(3),
            0,
            i64::MAX,
            Resolution::Day,
        )
        .unwrap();
    assert_eq!(zone[0].energy_wh, 9.0);
}

#[test]
fn export_and_online_backup() {
    use crate::core::policy::Reason;
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    store.provision(&[node(0)]).unwrap();
    let mut events: Vec<Event> = (0..10)
        .map(|m| reading(0, m, DAY0 + m * 60, 5 * (m + 1), 5))
        .collect();
    events.push(Event::CommandSent {
        lamp: LampId(0),
        at: UnixMs(DAY0 as u64 * 1000 + 5),
        level_pct: 80,
        ramp_ms: 1000,
        reason: Reason::Presence,
        fcnt_down: 0,
    });
    events.push(Event::Rejected {
        at: UnixMs(DAY0 as u64 * 1000 + 7),
        kind: "replay",
        detail: "FCnt 3 after 9, a replay".into(),
    });
    store.write_events(&events).unwrap();

    let csv = |what| {
        let mut out = Vec::new();
        let ro = Store::open_read_only(dir.path()).unwrap();
        ro.export_csv(what, DAY0 as i64, DAY0 as i64 + 86_400, &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    };
    let readings = csv(ExportWhat::Readings);
    assert_eq!(readings.lines().count(), 11);
    assert!(readings
        .lines()
        .nth(1)
        .unwrap()
        .starts_with("2024-12-21T00:00:00Z,2024-12-21T00:00:00Z,bath,0,0,"));
    let energy = csv(ExportWhat::Energy);
    assert_eq!(energy.lines().count(), 2);
    assert!(
        energy.lines().nth(1).unwrap().contains(",5.0,10,"),
        "{energy}"
    );
    let audit = csv(ExportWhat::Audit);
    assert_eq!(audit.lines().count(), 3, "{audit}");
    assert!(audit.contains(",command,bath,0,0,"));
    assert!(audit.contains("\"FCnt 3 after 9, a replay\""));

    // Backup while a writer holds the store open: a consistent, self-contained copy.
    let dest = dir.path().join("copy.sqlite");
    super::backup(dir.path(), &dest).unwrap();
    store
        .write_events(&[reading(0, 10, DAY0 + 600, 55, 5)])
        .unwrap();
    let copy_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&dest, copy_dir.path().join(DB_FILE)).unwrap();
    let copy = Store::open(copy_dir.path()).unwrap();
    assert_eq!(copy.count("readings").unwrap(), 10);
    assert_eq!(copy.count("commands").unwrap(), 1);
    let n = &copy.nodes().unwrap()[0];
    assert_eq!(n.mqtt_password, store.nodes().unwrap()[0].mqtt_password);
    assert_eq!(
        n.node.last_fcnt_up,
        Some(9),
        "the snapshot, not the later write"
    );
}
