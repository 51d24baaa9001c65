//! Store figures, printed as one JSON object (no assertions: figures, not tests).
//!
//! `cargo run --release -p lamplighter-controller --example store_bench -- [LAMPS] [MINUTES] [DEEP_LAMPS] [DEEP_DAYS]`
//!
//! 1. Throughput and size: LAMPS lamps (default 50,000) each reporting once a minute for
//!    MINUTES minutes (default 30), written as the writer thread writes them (batches of
//!    5,000 events, one transaction each, rollups included). Size on disk per lamp per day
//!    is extrapolated from the bytes the store grew by.
//! 2. History depth: DEEP_LAMPS lamps (default 50, in zones of 25) with DEEP_DAYS days
//!    (default 31) of minute readings in the same database, then the dashboard's queries:
//!    a lamp's day (raw), week and month (15 min), a zone's day and week (15 min) and month
//!    (daily), each timed over 20 runs.

use std::time::Instant;

use lamplighter_controller::core::Event;
use lamplighter_controller::store::{NewNode, Resolution, Store};
use lamplighter_protocol::payload::*;
use lamplighter_protocol::{LampId, TenantId, UnixMs, ZoneId};

const T0: u32 = 1_733_011_200; // 2024-12-01T00:00:00Z

fn reading(lamp: u32, fcnt: u32, t_s: u32, meter: u32) -> Event {
    Event::Reading {
        lamp: LampId(lamp),
        received: UnixMs(t_s as u64 * 1000 + 150),
        fcnt,
        report: StatusReport {
            level_pct: 30 + (fcnt % 50) as u8,
            target_level_pct: 50,
            power_dw: 180 + (lamp % 40) as u16,
            energy_dwh: meter,
            ambient_lux: 2,
            presence: Presence {
                pedestrians: (fcnt % 3) as u8,
                cyclists: u8::from(fcnt % 7 < 1),
                vehicles: (fcnt % 5) as u8,
            },
            faults: FaultFlags::default(),
            mode: NodeMode::Commanded,
            trigger: ReportTrigger::Periodic,
            reading_time_s: t_s,
            applied_fcnt_down: 3,
        },
        energy_delta_dwh: 3,
    }
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let lamps = *args.first().unwrap_or(&50_000);
    let minutes = *args.get(1).unwrap_or(&30);
    let deep_lamps = *args.get(2).unwrap_or(&50);
    let deep_days = *args.get(3).unwrap_or(&31);
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let tenant = TenantId::new("bench").unwrap();
    let nodes: Vec<NewNode> = (0..lamps + deep_lamps)
        .map(|i| NewNode {
            lamp: LampId(i),
            tenant: tenant.clone(),
            zone: ZoneId(i / 25),
            lat: 51.45,
            lon: -2.59,
            rated_power_w: 40.0,
        })
        .collect();
    store.provision(&nodes).unwrap();
    let checkpoint = |store: &Store| {
        let c = rusqlite::Connection::open(store.path()).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    };
    checkpoint(&store);
    let size0 = dir_size(dir.path());

    // 1. Sustained writes, minute by minute, all lamps.
    let mut batch = Vec::with_capacity(5_000);
    let mut written = 0u64;
    let start = Instant::now();
    for m in 0..minutes {
        for lamp in 0..lamps {
            batch.push(reading(lamp, m, T0 + m * 60 + lamp % 60, 3 * (m + 1)));
            if batch.len() == 5_000 {
                written += store.write_events(&batch).unwrap().len() as u64;
                batch.clear();
            }
        }
    }
    written += store.write_events(&batch).unwrap().len() as u64;
    batch.clear();
    let write_s = start.elapsed().as_secs_f64();
    checkpoint(&store);
    let size1 = dir_size(dir.path());
    let lamp_days = lamps as f64 * minutes as f64 / 1440.0;

    // 2. Deep history for a few lamps.
    let deep_start = Instant::now();
    let mut deep_written = 0u64;
    for d in 0..deep_days {
        for m in 0..1440u32 {
            let fcnt = d * 1440 + m;
            for lamp in lamps..lamps + deep_lamps {
                batch.push(reading(
                    lamp,
                    fcnt,
                    T0 + d * 86_400 + m * 60 + lamp % 60,
                    3 * (fcnt + 1),
                ));
            }
            if batch.len() >= 5_000 {
                deep_written += store.write_events(&batch).unwrap().len() as u64;
                batch.clear();
            }
        }
    }
    deep_written += store.write_events(&batch).unwrap().len() as u64;
    let deep_s = deep_start.elapsed().as_secs_f64();
    checkpoint(&store);
    let size2 = dir_size(dir.path());

    let lamp = LampId(lamps + deep_lamps / 2);
    let zone = ZoneId((lamps + deep_lamps / 2) / 25);
    let mid = (T0 + (deep_days / 2) * 86_400) as i64;
    let time = |f: &dyn Fn() -> usize| {
        let rows = f();
        let mut ms = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            std::hint::black_box(f());
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        serde_json::json!({"rows": rows, "median_ms": ms[10], "max_ms": ms[19]})
    };
    let day = 86_400i64;
    let lh = |from: i64, span: i64, res| {
        store
            .lamp_history(lamp, from, from + span, res)
            .unwrap()
            .len()
    };
    let zh = |from: i64, span: i64, res| {
        store
            .zone_history(&tenant, zone, from, from + span, res)
            .unwrap()
            .len()
    };
    let queries = serde_json::json!({
        "lamp_day_raw": time(&|| lh(mid, day, Resolution::Raw)),
        "lamp_week_15min": time(&|| lh(mid, 7 * day, Resolution::Min15)),
        "lamp_month_15min": time(&|| lh(T0 as i64, 31 * day, Resolution::Min15)),
        "lamp_month_daily": time(&|| lh(T0 as i64, 31 * day, Resolution::Day)),
        "zone_day_15min": time(&|| zh(mid, day, Resolution::Min15)),
        "zone_week_15min": time(&|| zh(mid, 7 * day, Resolution::Min15)),
        "zone_month_daily": time(&|| zh(T0 as i64, 31 * day, Resolution::Day)),
    });
    let out = serde_json::json!({
        "lamps": lamps,
        "minutes": minutes,
        "readings_written": written,
        "write_s": write_s,
        "readings_per_s": written as f64 / write_s,
        "bytes_per_lamp_day": (size1 - size0) as f64 / lamp_days,
        "deep_lamps": deep_lamps,
        "deep_days": deep_days,
        "deep_readings": deep_written,
        "deep_readings_per_s": deep_written as f64 / deep_s,
        "db_bytes": size2,
        "queries": queries,
    });
    println!("{out}");
}
