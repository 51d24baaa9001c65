//! Energy against a real SQLite file with known readings: exact kWh per half hour, local
//! day boundaries, today/week/month, and the baselines from the lamps' power model.

use lamplighter_protocol::local_time::TimeZone;
use lamplighter_protocol::payload::*;
use lamplighter_protocol::{LampId, TenantId, UnixMs, ZoneId};
use lamplighter_town::LedPowerModel;

use super::*;
use crate::core::Event;

const DAY0: i64 = 1_734_739_200; // Saturday 2024-12-21T00:00:00Z
const H: i64 = 3600;
const D: i64 = 86_400;

fn node(i: u32, tenant: &str) -> NewNode {
    NewNode {
        lamp: LampId(i),
        tenant: TenantId::new(tenant).unwrap(),
        zone: ZoneId(3),
        // Bath: dark at midnight and at 21:30 in December, light at noon.
        lat: 51.38,
        lon: -2.36,
        rated_power_w: 40.0,
    }
}

fn reading(lamp: u32, fcnt: u32, t_s: i64, delta_dwh: u32) -> Event {
    Event::Reading {
        lamp: LampId(lamp),
        received: UnixMs(t_s as u64 * 1000 + 500),
        fcnt,
        report: StatusReport {
            level_pct: 100,
            target_level_pct: 100,
            power_dw: 488,
            energy_dwh: fcnt * 40,
            ambient_lux: 0,
            presence: Presence::default(),
            faults: FaultFlags::default(),
            mode: NodeMode::Commanded,
            trigger: ReportTrigger::Periodic,
            reading_time_s: t_s as u32,
            applied_fcnt_down: 0,
        },
        energy_delta_dwh: delta_dwh,
    }
}

/// The store: lamp 0 reports 4 Wh every 5 minutes from DAY0 for two hours and once at
/// noon the day before; lamp 1 reports just before and at DAY0, on the Sunday of the week
/// before at 21:30, and on 30 November; lamp 2 belongs to another tenant.
fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    store
        .provision(&[node(0, "bath"), node(1, "bath"), node(2, "wells")])
        .unwrap();
    let mut events = Vec::new();
    for k in 0..24 {
        events.push(reading(0, k + 10, DAY0 + k as i64 * 300, 40));
    }
    events.push(reading(0, 1, DAY0 - 12 * H, 5)); // Friday noon: daylight
    events.push(reading(1, 5, DAY0 - 60, 100)); // 23:59 UTC Friday
    events.push(reading(1, 6, DAY0, 200)); // 00:00 UTC Saturday
    events.push(reading(1, 2, DAY0 - 5 * D - 2 * H - 30 * 60, 500)); // Sun 15 Dec 21:30 UTC
    events.push(reading(1, 1, DAY0 - 21 * D + 22 * H, 700)); // Sat 30 Nov 22:00 UTC
    events.push(reading(2, 1, DAY0 + 600, 9999));
    store.write_events(&events).unwrap();
    (dir, store)
}

/// A zone a fixed number of minutes (whole hours) east of UTC.
fn fixed(offset_min: i32) -> TimeZone {
    TimeZone::fixed_hours(offset_min / 60).unwrap()
}

fn csv_rows(store: &Store, tenant: Option<&str>, from: i64, to: i64, off: i32) -> Vec<String> {
    let tenant = tenant.map(|t| TenantId::new(t).unwrap());
    let mut out = Vec::new();
    let n = store
        .half_hourly_csv(tenant.as_ref(), from, to, fixed(off), &mut out)
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(
        lines[0],
        "date,period,period_start_utc,tenant,zone,lamp_id,dev_eui,rated_power_w,energy_kwh,readings"
    );
    assert_eq!(lines.len() as u64, n + 1);
    lines[1..].to_vec()
}

/// `date,period,energy_kwh,readings` of one lamp's rows.
fn lamp_rows(rows: &[String], lamp: u32) -> Vec<String> {
    rows.iter()
        .filter(|r| r.split(',').nth(5) == Some(&lamp.to_string()))
        .map(|r| {
            let f: Vec<&str> = r.split(',').collect();
            format!("{},{},{},{}", f[0], f[1], f[8], f[9])
        })
        .collect()
}

#[test]
fn half_hourly_export_is_exact_per_period_with_local_day_boundaries() {
    let (_dir, store) = store();
    let rows = csv_rows(&store, Some("bath"), DAY0 - 1800, DAY0 + 2 * H, 0);
    // Five half-hours for each of bath's two lamps, with or without data.
    assert_eq!(rows.len(), 10, "{rows:#?}");
    assert_eq!(
        lamp_rows(&rows, 0),
        vec![
            "2024-12-20,48,0.0000,0",
            "2024-12-21,1,0.0240,6",
            "2024-12-21,2,0.0240,6",
            "2024-12-21,3,0.0240,6",
            "2024-12-21,4,0.0240,6",
        ]
    );
    assert_eq!(
        lamp_rows(&rows, 1),
        vec![
            "2024-12-20,48,0.0100,1",
            "2024-12-21,1,0.0200,1",
            "2024-12-21,2,0.0000,0",
            "2024-12-21,3,0.0000,0",
            "2024-12-21,4,0.0000,0",
        ]
    );
    let first = &rows[0];
    assert!(
        first.starts_with("2024-12-20,48,2024-12-20T23:30:00Z,bath,3,0,"),
        "{first}"
    );
    assert!(first.contains(",40,0.0000,0"), "{first}");

    // An hour ahead of UTC: local midnight is 23:00 UTC, so 23:59 UTC falls in period 2 of
    // the 21st and 00:00 UTC in period 3.
    let rows = csv_rows(&store, Some("bath"), DAY0 - H, DAY0 + H, 60);
    assert_eq!(
        lamp_rows(&rows, 1),
        vec![
            "2024-12-21,1,0.0000,0",
            "2024-12-21,2,0.0100,1",
            "2024-12-21,3,0.0200,1",
            "2024-12-21,4,0.0000,0",
        ]
    );
    assert!(rows[0].contains(",2024-12-20T23:00:00Z,"), "{}", rows[0]);

    // Every tenant: wells' lamp too; a range inside a half-hour is rounded out to it.
    let rows = csv_rows(&store, None, DAY0 + 600, DAY0 + 700, 0);
    assert_eq!(rows.len(), 3);
    assert!(
        rows[2].contains(",wells,3,2,") && rows[2].ends_with(",0.9999,1"),
        "{}",
        rows[2]
    );
    assert!(matches!(
        store.half_hourly_csv(None, DAY0, DAY0, TimeZone::UTC, Vec::new()),
        Err(EnergyError::Range { .. })
    ));
    // Nepal is 5 h 45 min ahead: no half-hour settlement periods.
    let kathmandu = TimeZone::named("Asia/Kathmandu").unwrap();
    assert!(matches!(
        store.half_hourly_csv(None, DAY0, DAY0 + H, kathmandu, Vec::new()),
        Err(EnergyError::Offset {
            offset_min: 345,
            ..
        })
    ));
}

#[test]
fn half_hourly_days_of_a_clock_change_have_46_and_50_settlement_periods() {
    let (_dir, store) = store();
    let london = TimeZone::named("Europe/London").unwrap();
    // (local day, its first period's start in UTC, periods)
    for (day, first_start, periods) in [
        ("2025-03-30", "2025-03-30T00:00:00Z", 46),
        ("2025-10-26", "2025-10-25T23:00:00Z", 50),
        ("2025-07-01", "2025-06-30T23:00:00Z", 48),
    ] {
        let date = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
        let d = lamplighter_protocol::local_time::days_of_date(date);
        let from = (london.instants_at_local(d, 0).0 .0 / 1000) as i64;
        let to = (london.instants_at_local(d + 1, 0).0 .0 / 1000) as i64;
        let mut out = Vec::new();
        store
            .half_hourly_csv(
                Some(&TenantId::new("bath").unwrap()),
                from,
                to,
                london,
                &mut out,
            )
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lamp0: Vec<Vec<&str>> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f[5] == "0")
            .collect();
        assert_eq!(lamp0.len(), periods, "{day}");
        assert!(lamp0.iter().all(|f| f[0] == day), "{day}: {lamp0:?}");
        let numbers: Vec<usize> = lamp0.iter().map(|f| f[1].parse().unwrap()).collect();
        assert_eq!(numbers, (1..=periods).collect::<Vec<_>>(), "{day}");
        assert_eq!(lamp0[0][2], first_start, "{day}");
    }
}

#[test]
fn periods_start_at_local_midnight_monday_and_the_first() {
    // Saturday 02:00 UTC.
    assert_eq!(
        period_starts(DAY0 + 2 * H, fixed(0)),
        (DAY0, DAY0 - 5 * D, DAY0 - 20 * D)
    );
    // An hour ahead: local 03:00 Saturday.
    assert_eq!(
        period_starts(DAY0 + 2 * H, fixed(60)),
        (DAY0 - H, DAY0 - 5 * D - H, DAY0 - 20 * D - H)
    );
    // Friday 23:30 UTC is already Saturday an hour ahead.
    assert_eq!(period_starts(DAY0 - 1800, fixed(60)).0, DAY0 - H);
    // Monday itself starts its week; 1 December 00:30 UTC is still November an hour
    // behind.
    assert_eq!(period_starts(DAY0 - 5 * D + 1, fixed(0)).1, DAY0 - 5 * D);
    let dec1 = DAY0 - 20 * D;
    let nov1 = dec1 - 30 * D;
    assert_eq!(period_starts(dec1 + 1800, fixed(-60)).2, nov1 + H);
    // London on the Sunday the clocks go forward: the day began at 00:00 GMT, the month
    // on 1 March (GMT); on 1 July, both at 23:00 UTC the day before.
    let london = TimeZone::named("Europe/London").unwrap();
    let spring = 1_743_296_400; // 2025-03-30 01:00 UTC
    assert_eq!(
        period_starts(spring + 3600, london),
        (spring - 3600, spring - 3600 - 6 * D, spring - 3600 - 29 * D)
    );
    let july1 = 1_751_324_400; // 2025-06-30 23:00 UTC
    assert_eq!(period_starts(july1 + 60, london).0, july1);
    assert_eq!(period_starts(july1 + 60, london).2, july1);
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1e-6)
}

#[test]
fn summaries_and_savings_against_the_baselines() {
    let (_dir, store) = store();
    let bath = TenantId::new("bath").unwrap();
    let tariff = Tariff::default();
    let now = UnixMs((DAY0 + 2 * H) as u64 * 1000);
    let s = store.energy_summary(&bath, now, fixed(0), &tariff).unwrap();

    let m = LedPowerModel::for_rated(40.0);
    // Wh of one lamp for one 15-minute bucket at a level.
    let q = |level: f32| m.input_power_w(level) as f64 * 0.25;

    // Today: lamp 0's 24 readings of 4 Wh, lamp 1's 20 Wh at 00:00; nine lamp-buckets,
    // all dark, 00:00-02:00 (part-night: 50 %).
    assert_eq!((s.today.from_s, s.today.to_s), (DAY0, DAY0 + 2 * H));
    assert!(close(s.today.metered_kwh, 0.116), "{:?}", s.today);
    assert!(close(s.today.gbp, 0.116 * 0.294));
    assert!(close(s.today.co2e_t, 0.116 * 0.20705 / 1000.0));
    assert!(close(s.today.reported_lamp_hours, 2.25));
    let full = s.today.savings["full"];
    assert!(
        close(full.baseline_kwh, 9.0 * q(100.0) / 1000.0),
        "{full:?}"
    );
    assert!(close(full.saved_kwh, (9.0 * q(100.0) - 116.0) / 1000.0));
    assert!(close(full.saved_gbp, full.saved_kwh * 0.294));
    assert!(close(
        full.baseline_co2e_t,
        full.baseline_kwh * 0.20705 / 1000.0
    ));
    assert!(close(
        full.saved_pct.unwrap(),
        100.0 * (9.0 * q(100.0) - 116.0) / (9.0 * q(100.0))
    ));
    let pn = s.today.savings["part-night"];
    assert!(close(pn.baseline_kwh, 9.0 * q(50.0) / 1000.0), "{pn:?}");
    assert!(pn.saved_kwh < full.saved_kwh);

    // The week (from Monday 16th) adds Friday noon (daylight: standby only) and 23:59
    // (23:45 bucket, 75 % part-night).
    assert_eq!(s.week.from_s, DAY0 - 5 * D);
    assert!(close(s.week.metered_kwh, 0.1265), "{:?}", s.week);
    assert!(close(
        s.week.savings["full"].baseline_kwh,
        (10.0 * q(100.0) + q(0.0)) / 1000.0
    ));
    assert!(close(
        s.week.savings["part-night"].baseline_kwh,
        (9.0 * q(50.0) + q(75.0) + q(0.0)) / 1000.0
    ));

    // The month adds Sunday 15th 21:30 (before 22:00: 100 % in both); not 30 November.
    assert_eq!(s.month.from_s, DAY0 - 20 * D);
    assert!(close(s.month.metered_kwh, 0.1765), "{:?}", s.month);
    assert!(close(
        s.month.savings["part-night"].baseline_kwh,
        (9.0 * q(50.0) + q(75.0) + q(0.0) + q(100.0)) / 1000.0
    ));

    // An hour ahead of UTC: today starts at 23:00 UTC (lamp 1's 23:59 reading is today's),
    // and 21:30 UTC on the 15th is 22:30 local: 75 % part-night.
    let s = store
        .energy_summary(&bath, now, fixed(60), &tariff)
        .unwrap();
    assert!(close(s.today.metered_kwh, 0.126), "{:?}", s.today);
    assert!(close(
        s.month.savings["part-night"].baseline_kwh,
        (9.0 * q(50.0) + q(50.0) + q(0.0) + q(75.0)) / 1000.0
    ));

    // Now in the middle of a bucket: its baseline counts up to now only.
    let mid = UnixMs((DAY0 + 5 * 60) as u64 * 1000);
    let s = store.energy_summary(&bath, mid, fixed(0), &tariff).unwrap();
    // Metered is the bucket's rollup, which here also holds lamp 0's 00:10 reading (a
    // store only holds readings after `now` when a test asks about the past); the baseline
    // is 5 minutes of each of the two lamps.
    assert!(close(s.today.metered_kwh, 0.032), "{:?}", s.today);
    assert!(close(
        s.today.savings["full"].baseline_kwh,
        2.0 * m.input_power_w(100.0) as f64 * 5.0 / 60.0 / 1000.0
    ));

    // Nothing reported: no baseline, no percentage.
    let wells_empty = store
        .energy_summary(&TenantId::new("nowhere").unwrap(), now, fixed(0), &tariff)
        .unwrap();
    assert_eq!(wells_empty.today.savings["full"].saved_pct, None);
    assert_eq!(wells_empty.month.metered_kwh, 0.0);

    // A tariff of one's own, validated.
    let own = Tariff {
        gbp_per_kwh: 0.5,
        co2e_kg_per_kwh: 0.1,
    };
    let s = store.energy_summary(&bath, now, fixed(0), &own).unwrap();
    assert!(close(s.today.gbp, 0.058));
    assert!(matches!(
        store.energy_summary(
            &bath,
            now,
            fixed(0),
            &Tariff {
                gbp_per_kwh: -1.0,
                ..own
            }
        ),
        Err(EnergyError::Tariff(_))
    ));
    let t: Tariff = toml::from_str("gbp_per_kwh = 0.31").unwrap();
    assert_eq!(t.co2e_kg_per_kwh, 0.20705);
    assert!(toml::from_str::<Tariff>("pence = 31").is_err());
}
