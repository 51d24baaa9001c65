//! The fault tracker, driven with time as an argument: each kind is raised only after its
//! condition persists, clears itself after the quiet time, and keeps its acknowledgement.

use lamplighter_controller::faults::*;
use lamplighter_protocol::payload::*;
use lamplighter_protocol::{DevEui, LampId, TenantId, UnixMs};

const T0: u64 = 1_734_739_200_000; // 2024-12-21T00:00:00Z, ms
const PERIOD_S: u32 = 300;

fn lamp(i: u32, tenant: &str) -> LampInfo {
    LampInfo {
        lamp: LampId(i),
        tenant: TenantId::new(tenant).unwrap(),
        dev_eui: DevEui(0x70B3_D5E0_0000_0000 + i as u64),
    }
}

/// A healthy lamp lit at 100 % at night: 40 W LED load, 48.8 W drawn.
fn healthy() -> StatusReport {
    StatusReport {
        level_pct: 100,
        target_level_pct: 100,
        power_dw: 488,
        energy_dwh: 0,
        ambient_lux: 0,
        presence: Presence::default(),
        faults: FaultFlags::default(),
        mode: NodeMode::Commanded,
        trigger: ReportTrigger::Periodic,
        reading_time_s: 0,
        applied_fcnt_down: 0,
    }
}

fn at(s: u64) -> UnixMs {
    UnixMs(T0 + s * 1000)
}

fn tracker() -> FaultTracker {
    FaultTracker::new(FaultConfig::default(), PERIOD_S).unwrap()
}

fn night() -> ReportContext {
    ReportContext::default()
}

fn day() -> ReportContext {
    ReportContext {
        daylight: true,
        override_active: false,
    }
}

fn events(t: &mut FaultTracker) -> Vec<FaultEvent> {
    std::iter::from_fn(|| t.poll_event()).collect()
}

fn raised(ev: &[FaultEvent]) -> Vec<FaultKind> {
    ev.iter()
        .filter_map(|e| match e {
            FaultEvent::Raised(f) => Some(f.kind),
            _ => None,
        })
        .collect()
}

fn cleared(ev: &[FaultEvent]) -> Vec<FaultId> {
    ev.iter()
        .filter_map(|e| match e {
            FaultEvent::Cleared { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

/// One kind's condition as a report (and the context it is read in).
struct Case {
    kind: FaultKind,
    bad: fn() -> (StatusReport, ReportContext),
    good: fn() -> (StatusReport, ReportContext),
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            kind: FaultKind::LampFailure,
            bad: || {
                let mut r = healthy();
                r.power_dw = 5; // standby only, though commanded to 100 %
                (r, night())
            },
            good: || (healthy(), night()),
        },
        Case {
            kind: FaultKind::LampFailure,
            bad: || {
                let mut r = healthy();
                r.faults = FaultFlags::LAMP_FAILURE;
                (r, night())
            },
            good: || (healthy(), night()),
        },
        Case {
            kind: FaultKind::DriverFault,
            bad: || {
                let mut r = healthy();
                r.faults = FaultFlags::DRIVER;
                (r, night())
            },
            good: || (healthy(), night()),
        },
        Case {
            kind: FaultKind::CommsLoss,
            bad: || {
                let mut r = healthy();
                r.faults = FaultFlags::COMMS_LOST;
                r.mode = NodeMode::FailSafe;
                (r, night())
            },
            good: || (healthy(), night()),
        },
        Case {
            kind: FaultKind::DayBurning,
            bad: || {
                let mut r = healthy();
                r.ambient_lux = 9000;
                (r, day())
            },
            good: || {
                let mut r = healthy();
                r.level_pct = 0;
                r.target_level_pct = 0;
                r.power_dw = 5;
                r.ambient_lux = 9000;
                (r, day())
            },
        },
    ]
}

#[test]
fn a_single_flicker_raises_nothing() {
    for c in cases() {
        let mut t = tracker();
        let l = lamp(1, "bath");
        let mut s = 0;
        for _ in 0..5 {
            let (r, ctx) = (c.good)();
            t.handle_report(at(s), &l, &r, ctx);
            t.handle_tick(at(s + 1));
            s += PERIOD_S as u64;
        }
        // One bad report, then good ones again.
        let (r, ctx) = (c.bad)();
        t.handle_report(at(s), &l, &r, ctx);
        for _ in 0..20 {
            s += PERIOD_S as u64;
            let (r, ctx) = (c.good)();
            t.handle_report(at(s), &l, &r, ctx);
            t.handle_tick(at(s + 1));
        }
        assert_eq!(raised(&events(&mut t)), vec![], "{:?}", c.kind);
        assert_eq!(t.counts(None).open, 0);
        // Two bad in a row is still below the threshold of three.
        for _ in 0..2 {
            s += PERIOD_S as u64;
            let (r, ctx) = (c.bad)();
            t.handle_report(at(s), &l, &r, ctx);
        }
        s += PERIOD_S as u64;
        let (r, ctx) = (c.good)();
        t.handle_report(at(s), &l, &r, ctx);
        assert_eq!(raised(&events(&mut t)), vec![], "{:?}", c.kind);
    }
}

#[test]
fn a_persisting_condition_raises_after_the_threshold_and_clears_after_the_quiet_time() {
    let cfg = FaultConfig::default();
    for c in cases() {
        let mut t = tracker();
        let l = lamp(7, "bath");
        let mut s = 0u64;
        for n in 1..=cfg.raise_after_reports {
            let (r, ctx) = (c.bad)();
            t.handle_report(at(s), &l, &r, ctx);
            t.handle_tick(at(s + 1));
            let ev = events(&mut t);
            if n < cfg.raise_after_reports {
                assert!(raised(&ev).is_empty(), "{:?} raised after {n}", c.kind);
            } else {
                assert_eq!(raised(&ev), vec![c.kind], "{:?}", c.kind);
            }
            s += PERIOD_S as u64;
        }
        let open = t.faults(None);
        assert_eq!(open.len(), 1);
        let f = &open[0];
        assert_eq!(
            (f.kind, f.lamp, f.state()),
            (c.kind, LampId(7), FaultState::Open)
        );
        assert_eq!(
            f.raised_at,
            at((cfg.raise_after_reports as u64 - 1) * PERIOD_S as u64)
        );
        assert!(!f.detail.is_empty());
        // Still bad: no second fault.
        let (r, ctx) = (c.bad)();
        t.handle_report(at(s), &l, &r, ctx);
        assert!(raised(&events(&mut t)).is_empty());

        // Good from here: not cleared before clear_after_s, cleared at it.
        s += PERIOD_S as u64;
        let good_from = s;
        while s < good_from + cfg.clear_after_s as u64 {
            let (r, ctx) = (c.good)();
            t.handle_report(at(s), &l, &r, ctx);
            t.handle_tick(at(s));
            assert!(
                cleared(&events(&mut t)).is_empty(),
                "{:?} cleared early",
                c.kind
            );
            s += 60;
        }
        t.handle_tick(at(good_from + cfg.clear_after_s as u64));
        let ev = events(&mut t);
        assert_eq!(cleared(&ev), vec![f.id], "{:?}", c.kind);
        match &ev[0] {
            FaultEvent::Cleared { action, .. } => assert_eq!(action.by, None),
            e => panic!("{e:?}"),
        }
        assert!(t.faults(None).is_empty());
    }
}

#[test]
fn a_condition_that_returns_during_the_quiet_time_stays_raised() {
    let mut t = tracker();
    let l = lamp(1, "bath");
    let mut bad = healthy();
    bad.faults = FaultFlags::DRIVER;
    for k in 0..3 {
        t.handle_report(at(k * 300), &l, &bad, night());
    }
    assert_eq!(raised(&events(&mut t)), vec![FaultKind::DriverFault]);
    // Clean for 10 minutes, bad once, clean for 10 minutes: never 15 quiet minutes.
    t.handle_report(at(900), &l, &healthy(), night());
    t.handle_report(at(1500), &l, &bad, night());
    t.handle_report(at(1800), &l, &healthy(), night());
    t.handle_tick(at(2400));
    assert!(cleared(&events(&mut t)).is_empty());
    t.handle_tick(at(1800 + 900));
    assert_eq!(cleared(&events(&mut t)).len(), 1);
}

#[test]
fn a_failed_lamp_does_not_clear_itself_by_day() {
    let mut t = tracker();
    let l = lamp(1, "bath");
    let mut bad = healthy();
    bad.power_dw = 5;
    for k in 0..3 {
        t.handle_report(at(k * 300), &l, &bad, night());
    }
    assert_eq!(raised(&events(&mut t)), vec![FaultKind::LampFailure]);
    // Day: commanded off, so the lamp shows nothing either way.
    let mut off = healthy();
    off.level_pct = 0;
    off.target_level_pct = 0;
    off.power_dw = 5;
    off.ambient_lux = 8000;
    for k in 3..200 {
        t.handle_report(at(k * 300), &l, &off, day());
        t.handle_tick(at(k * 300 + 1));
    }
    assert!(cleared(&events(&mut t)).is_empty());
    assert_eq!(t.counts(None).open, 1);
}

#[test]
fn a_burst_of_reports_within_seconds_does_not_raise_but_five_minutes_do() {
    // A lamp still ramping down at sunrise sends a command report, a presence report and
    // a periodic one within seconds: three reports, not a persisting condition.
    let mut t = tracker();
    let l = lamp(1, "bath");
    let mut lit = healthy();
    lit.level_pct = 40;
    for s in [0, 5, 12, 20] {
        t.handle_report(at(s), &l, &lit, day());
    }
    let mut off = lit;
    off.level_pct = 0;
    off.power_dw = 5;
    t.handle_report(at(25), &l, &off, day());
    assert!(raised(&events(&mut t)).is_empty());
    // Lit by day again from 85 s, reported every minute: three reports are not enough
    // until the condition has lasted five minutes, at 385 s.
    for s in [85, 145, 205, 265, 325] {
        t.handle_report(at(s), &l, &lit, day());
        assert!(raised(&events(&mut t)).is_empty(), "raised at {s} s");
    }
    t.handle_report(at(385), &l, &lit, day());
    assert_eq!(raised(&events(&mut t)), vec![FaultKind::DayBurning]);
}

#[test]
fn a_bright_sensor_after_sunset_is_not_day_burning() {
    // Just after sunset the sensor still reads ~400 lx and the node flags day-burning
    // against its 200 lx threshold, but the sun is down and every lamp is rightly lit.
    let mut t = tracker();
    let l = lamp(1, "bath");
    let mut dusk = healthy();
    dusk.ambient_lux = 390;
    dusk.faults = FaultFlags::DAY_BURNING;
    for k in 0..10 {
        t.handle_report(at(k * 60), &l, &dusk, night());
    }
    assert!(raised(&events(&mut t)).is_empty());
}

#[test]
fn an_override_by_day_is_not_day_burning() {
    let mut t = tracker();
    let l = lamp(1, "bath");
    let mut lit = healthy();
    lit.ambient_lux = 9000;
    let ctx = ReportContext {
        daylight: true,
        override_active: true,
    };
    for k in 0..10 {
        t.handle_report(at(k * 300), &l, &lit, ctx);
    }
    assert!(raised(&events(&mut t)).is_empty());
}

#[test]
fn comms_loss_is_raised_after_n_silent_periods_measured_with_now() {
    let cfg = FaultConfig::default();
    let threshold_s = cfg.comms_loss_after_periods as u64 * PERIOD_S as u64;
    let mut t = tracker();
    let quiet = lamp(1, "bath");
    let chatty = lamp(2, "bath");
    t.watch(at(0), quiet.clone());
    t.handle_report(at(0), &quiet, &healthy(), night());
    t.handle_report(at(0), &chatty, &healthy(), night());
    // Ticks every 30 s; the chatty lamp reports every period, the quiet one never again.
    let mut s = 0;
    let mut raised_at = None;
    while s <= threshold_s + 120 {
        if s > 0 && s % PERIOD_S as u64 == 0 {
            t.handle_report(at(s), &chatty, &healthy(), night());
        }
        t.handle_tick(at(s));
        let ev = events(&mut t);
        if let Some(FaultEvent::Raised(f)) = ev.first() {
            assert_eq!((f.kind, f.lamp), (FaultKind::CommsLoss, LampId(1)));
            assert!(f.detail.contains("no report for"), "{}", f.detail);
            raised_at.get_or_insert(s);
        }
        s += 30;
    }
    // Silent exactly threshold_s is not yet lost; the first tick past it is.
    assert_eq!(raised_at, Some(threshold_s + 30));
    assert_eq!(t.counts(None).by_kind[&FaultKind::CommsLoss].open, 1);

    // Reports again: cleared only once it has kept reporting for the quiet time.
    let back = s;
    let mut k = 0;
    while back + k * 60 < back + cfg.clear_after_s as u64 {
        if k % 5 == 0 {
            t.handle_report(at(back + k * 60), &quiet, &healthy(), night());
        }
        t.handle_tick(at(back + k * 60));
        assert!(cleared(&events(&mut t)).is_empty());
        k += 1;
    }
    t.handle_tick(at(back + cfg.clear_after_s as u64));
    assert_eq!(cleared(&events(&mut t)).len(), 1);
}

#[test]
fn a_comms_loss_cleared_by_hand_returns_only_after_another_threshold_of_silence() {
    let mut t = tracker();
    t.watch(at(0), lamp(3, "bath"));
    t.handle_tick(at(901));
    let id = match &events(&mut t)[..] {
        [FaultEvent::Raised(f)] => f.id,
        e => panic!("{e:?}"),
    };
    t.clear(id, "carol", "radio replaced", at(1000)).unwrap();
    assert_eq!(cleared(&events(&mut t)), vec![id]);
    t.handle_tick(at(1900));
    assert!(events(&mut t).is_empty());
    t.handle_tick(at(1901));
    assert_eq!(raised(&events(&mut t)), vec![FaultKind::CommsLoss]);
}

#[test]
fn a_lamp_that_never_reports_is_lost_too() {
    let mut t = tracker();
    t.watch(at(0), lamp(3, "bath"));
    t.handle_tick(at(900));
    assert!(events(&mut t).is_empty());
    t.handle_tick(at(901));
    let ev = events(&mut t);
    match &ev[..] {
        [FaultEvent::Raised(f)] => assert!(f.detail.contains("never reported")),
        e => panic!("{e:?}"),
    }
}

#[test]
fn cycling_is_raised_past_n_changes_in_the_window_and_not_for_dusk_and_dawn() {
    let mut t = tracker();
    let l = lamp(1, "bath");
    let on = healthy();
    let mut off = healthy();
    off.power_dw = 5;
    off.level_pct = 0;
    // Dusk and dawn a day for a week: two changes a day, never cycling.
    for d in 0..7u64 {
        for h in 0..24u64 {
            let r = if (7..17).contains(&h) { &off } else { &on };
            t.handle_report(at(d * 86_400 + h * 3600), &l, r, night());
            t.handle_tick(at(d * 86_400 + h * 3600 + 1));
        }
    }
    assert!(raised(&events(&mut t)).is_empty());

    // Flapping every report (every 5 minutes): the 7th change in an hour raises.
    let base = 7 * 86_400;
    let mut changes = 0;
    for k in 0..12u64 {
        let r = if k % 2 == 0 { &off } else { &on };
        t.handle_report(at(base + k * 300), &l, r, night());
        changes += 1;
        let ev = events(&mut t);
        let r = raised(&ev);
        if changes <= 6 {
            assert!(r.is_empty(), "raised after {changes} changes");
        } else {
            assert!(r.contains(&FaultKind::Cycling));
            break;
        }
    }
    assert_eq!(t.counts(None).by_kind[&FaultKind::Cycling].open, 1);
    // Steady from here: the changes age out of the hour, then 15 quiet minutes clear it.
    let steady = base + 7 * 300;
    let mut s = steady;
    let mut cleared_at = None;
    while s < steady + 3 * 3600 {
        t.handle_report(at(s), &l, &on, night());
        t.handle_tick(at(s));
        if !cleared(&events(&mut t)).is_empty() {
            cleared_at = Some(s);
            break;
        }
        s += 60;
    }
    // Eight changes (the return to steady is one), at base + 0, 300, ..., 2100: the count
    // is back to six once base + 300 is more than an hour old (the first minute tick after
    // base + 3900), and 15 quiet minutes later it clears.
    assert_eq!(cleared_at, Some(base + 3960 + 900));
}

#[test]
fn acknowledged_faults_stay_listed_as_acknowledged_and_manual_clear_rearms() {
    let mut t = tracker();
    let a = lamp(1, "bath");
    let b = lamp(2, "wells");
    let mut bad = healthy();
    bad.faults = FaultFlags::DRIVER;
    for k in 0..3 {
        t.handle_report(at(k * 300), &a, &bad, night());
        t.handle_report(at(k * 300), &b, &bad, night());
    }
    events(&mut t);
    let bath = TenantId::new("bath").unwrap();
    let f = t.faults(Some(&bath));
    assert_eq!(f.len(), 1);
    let id = f[0].id;

    assert_eq!(
        t.acknowledge(id, " ", "", at(1000)),
        Err(FaultError::NoUser)
    );
    let acked = t
        .acknowledge(id, "alice", "crew booked for Tuesday", at(1000))
        .unwrap();
    assert_eq!(acked.state(), FaultState::Acknowledged);
    assert!(matches!(
        t.acknowledge(id, "bob", "", at(1001)),
        Err(FaultError::AlreadyAcknowledged { .. })
    ));
    assert_eq!(
        events(&mut t),
        vec![FaultEvent::Acknowledged {
            id,
            action: Action {
                by: Some("alice".into()),
                at: at(1000),
                note: "crew booked for Tuesday".into()
            }
        }]
    );
    // Still bad: listed as acknowledged, counted so, for its tenant only.
    t.handle_report(at(1200), &a, &bad, night());
    t.handle_tick(at(1300));
    let listed = t.faults(Some(&bath));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state(), FaultState::Acknowledged);
    assert_eq!(
        listed[0].acknowledged.as_ref().unwrap().by.as_deref(),
        Some("alice")
    );
    let c = t.counts(Some(&bath));
    assert_eq!((c.open, c.acknowledged, c.lamps), (0, 1, 1));
    assert_eq!(c.by_kind[&FaultKind::DriverFault].acknowledged, 1);
    assert_eq!(c.by_kind.len(), FaultKind::ALL.len());
    let all = t.counts(None);
    assert_eq!((all.open, all.acknowledged, all.lamps), (1, 1, 2));

    // Cleared by hand: gone at once; the persisting condition raises a new fault later.
    let done = t.clear(id, "alice", "driver replaced", at(1400)).unwrap();
    assert_eq!(done.state(), FaultState::Cleared);
    assert_eq!(
        t.clear(id, "alice", "", at(1401)),
        Err(FaultError::NotOpen(id))
    );
    assert!(t.faults(Some(&bath)).is_empty());
    assert_eq!(cleared(&events(&mut t)), vec![id]);
    t.handle_report(at(1500), &a, &bad, night());
    t.handle_report(at(1800), &a, &bad, night());
    assert!(raised(&events(&mut t)).is_empty());
    t.handle_report(at(2100), &a, &bad, night());
    let ev = events(&mut t);
    match &ev[..] {
        [FaultEvent::Raised(f)] => assert!(f.id > id),
        e => panic!("{e:?}"),
    }
}

#[test]
fn restored_faults_keep_their_ids_and_can_be_acknowledged() {
    let mut t = tracker();
    let l = lamp(1, "bath");
    let mut bad = healthy();
    bad.faults = FaultFlags::DRIVER;
    for k in 0..3 {
        t.handle_report(at(k * 300), &l, &bad, night());
    }
    events(&mut t);
    let open = t.faults(None);

    let mut t2 = tracker();
    t2.restore(at(5000), open.clone(), 40);
    assert_eq!(t2.faults(None), open);
    t2.acknowledge(open[0].id, "bob", "", at(5001)).unwrap();
    // Still bad: no duplicate raised; a new kind gets an id past the store's.
    for k in 0..3 {
        let mut r = bad;
        r.faults = FaultFlags::DRIVER | FaultFlags::LAMP_FAILURE;
        t2.handle_report(at(5100 + k * 300), &l, &r, night());
    }
    let ev = events(&mut t2);
    let new: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            FaultEvent::Raised(f) => Some((f.kind, f.id)),
            _ => None,
        })
        .collect();
    assert_eq!(new, vec![(FaultKind::LampFailure, FaultId(40))]);
}

#[test]
fn config_is_validated_and_refuses_unknown_keys() {
    let c: FaultConfig = toml::from_str("raise_after_reports = 5").unwrap();
    assert_eq!(c.raise_after_reports, 5);
    assert_eq!(c.clear_after_s, FaultConfig::default().clear_after_s);
    assert!(toml::from_str::<FaultConfig>("raise_after = 5").is_err());
    for bad in [
        FaultConfig {
            raise_after_reports: 0,
            ..Default::default()
        },
        FaultConfig {
            lit_level_pct: 0,
            ..Default::default()
        },
        FaultConfig {
            failed_max_power_w: f32::NAN,
            ..Default::default()
        },
    ] {
        assert!(bad.validate().is_err());
        assert!(FaultTracker::new(bad, 300).is_err());
    }
    assert!(FaultTracker::new(FaultConfig::default(), 0).is_err());
    assert_eq!(
        "day-burning".parse::<FaultKind>(),
        Ok(FaultKind::DayBurning)
    );
    assert!("flicker".parse::<FaultKind>().is_err());
}
