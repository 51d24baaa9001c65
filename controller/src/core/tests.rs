use super::*;
use lamplighter_protocol::lorawan::{self, AesKey, DataFrame, FCtrl, FrameError, MType};
use lamplighter_protocol::payload::{Command, FaultFlags, NodeMode, FPORT_STATUS};
use lamplighter_protocol::payload::{Presence, ReportTrigger};
use lamplighter_protocol::topics;
use lamplighter_protocol::LightingClass;

// 2024-12-21 22:00 UTC: dark in Bristol.
const NIGHT: UnixMs = UnixMs(1_734_818_400_000);

fn tenant() -> TenantId {
    TenantId::new("bristol").unwrap()
}

fn node(i: u32) -> ProvisionedNode {
    ProvisionedNode {
        lamp: LampId(i),
        tenant: tenant(),
        dev_eui: DevEui(0x70B3_D500_0000_0000 + i as u64),
        dev_addr: DevAddr(0x2601_0000 + i),
        keys: SessionKeys {
            nwk_s_key: AesKey([i as u8; 16]),
            app_s_key: AesKey([i as u8 + 100; 16]),
        },
        zone: ZoneId(i / 10),
        // A street running north, a lamp every 28 m.
        lat: 51.45 + i as f64 * 0.00025,
        lon: -2.59,
        rated_power_w: 40.0,
        last_fcnt_up: None,
        next_fcnt_down: 0,
        last_energy_dwh: None,
    }
}

fn core(n: u32) -> ControllerCore {
    ControllerCore::new(ControllerConfig::default(), (0..n).map(node).collect()).unwrap()
}

fn report(presence: Presence, energy_dwh: u32) -> StatusReport {
    StatusReport {
        level_pct: 50,
        target_level_pct: 50,
        power_dw: 200,
        energy_dwh,
        ambient_lux: 1,
        presence,
        faults: FaultFlags::default(),
        mode: NodeMode::Commanded,
        trigger: ReportTrigger::Periodic,
        reading_time_s: NIGHT.as_secs() as u32,
        applied_fcnt_down: 0,
    }
}

fn uplink(n: &ProvisionedNode, fcnt: u32, r: &StatusReport) -> (String, Vec<u8>) {
    let frame = DataFrame {
        mtype: MType::UnconfirmedDataUp,
        dev_addr: n.dev_addr,
        fctrl: FCtrl::default(),
        fcnt,
        fopts: vec![],
        fport: Some(FPORT_STATUS),
        frm_payload: r.encode(),
    };
    (
        topics::uplink(&n.tenant, n.dev_eui),
        lorawan::encode_data_frame(&frame, &n.keys).unwrap(),
    )
}

fn drain(c: &mut ControllerCore) -> Vec<Outgoing> {
    std::iter::from_fn(|| c.poll_command()).collect()
}

#[test]
fn accepted_reports_meter_energy_from_the_nodes_counter() {
    let mut c = core(3);
    let (t, f) = uplink(&node(1), 0, &report(Presence::default(), 1000));
    assert_eq!(c.handle_uplink(NIGHT, &t, &f), Ok(LampId(1)));
    let (t, f) = uplink(&node(1), 1, &report(Presence::default(), 1040));
    c.handle_uplink(NIGHT.plus_ms(60_000), &t, &f).unwrap();
    let s = c.summary(NIGHT.plus_ms(60_000), None);
    assert_eq!(s.uplinks, 2);
    assert_eq!(s.energy_wh, 104.0);
    assert_eq!(s.lamps_online, 1);
    let readings: Vec<_> = std::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            Event::Reading {
                energy_delta_dwh,
                fcnt,
                ..
            } => Some((fcnt, energy_delta_dwh)),
            _ => None,
        })
        .collect();
    assert_eq!(readings, vec![(0, 1000), (1, 40)]);
}

#[test]
fn an_opened_report_counts_as_its_frame_would_under_the_same_counter_rule() {
    let seen = Presence {
        pedestrians: 1,
        cyclists: 0,
        vehicles: 0,
    };
    let (mut by_frame, mut by_report) = (core(10), core(10));
    for (k, (presence, energy)) in [(Presence::default(), 1000), (seen, 1010)]
        .into_iter()
        .enumerate()
    {
        let at = NIGHT.plus_ms(k as u64 * 30_000);
        let r = report(presence, energy);
        let (t, f) = uplink(&node(4), k as u32, &r);
        assert_eq!(by_frame.handle_uplink(at, &t, &f), Ok(LampId(4)));
        assert_eq!(
            by_report.handle_report(at, LampId(4), k as u32, &r),
            Ok(LampId(4))
        );
    }
    let commands = |c: &mut ControllerCore| -> Vec<(LampId, Command, u32)> {
        drain(c)
            .into_iter()
            .map(|o| (o.lamp, o.command, o.fcnt_down))
            .collect()
    };
    let sent = commands(&mut by_frame);
    assert!(
        sent.len() >= 3,
        "presence raised the lamp and its neighbours"
    );
    assert_eq!(sent, commands(&mut by_report));
    let (a, b) = (
        by_frame.summary(NIGHT, None),
        by_report.summary(NIGHT, None),
    );
    assert_eq!((a.uplinks, a.energy_wh), (b.uplinks, b.energy_wh));

    // A counter that does not advance is a replay either way; an unknown lamp is refused.
    let r = report(seen, 1020);
    assert_eq!(
        by_report.handle_report(NIGHT.plus_ms(60_000), LampId(4), 1, &r),
        Err(Rejection::Replay { last: 1, got: 1 })
    );
    assert_eq!(
        by_report.handle_report(NIGHT.plus_ms(60_000), LampId(99), 0, &r),
        Err(Rejection::UnknownLamp(LampId(99)))
    );
    assert_eq!(by_report.counters().rejected, 2);
}

#[test]
fn presence_raises_the_lamp_and_its_neighbours_at_once() {
    let mut c = core(10);
    c.handle_tick(NIGHT);
    let first = drain(&mut c);
    assert_eq!(first.len(), 10);
    assert!(first
        .iter()
        .all(|o| o.reason == Reason::Schedule && o.level_pct == 50));

    let presence = Presence {
        pedestrians: 1,
        ..Presence::default()
    };
    let (t, f) = uplink(&node(5), 0, &report(presence, 0));
    c.handle_uplink(NIGHT.plus_ms(1000), &t, &f).unwrap();
    let mut raised: Vec<u32> = drain(&mut c)
        .iter()
        .inspect(|o| {
            assert_eq!(o.level_pct, 100);
            assert_eq!(o.reason, Reason::Presence);
            assert_eq!(o.ramp_ms, policy::ramp_ms(&c.config().policy, 50, 100));
        })
        .map(|o| o.lamp.0)
        .collect();
    raised.sort();
    // 28 m apart, a 60 m radius and four neighbours: two either side.
    assert_eq!(raised, vec![3, 4, 5, 6, 7]);

    // Held, then released back to the schedule by a tick after the hold.
    c.handle_tick(NIGHT.plus_ms(60_000));
    assert!(drain(&mut c).is_empty());
    c.handle_tick(NIGHT.plus_ms(1000 + 90_000));
    let released = drain(&mut c);
    assert_eq!(released.len(), 5);
    assert!(released
        .iter()
        .all(|o| o.level_pct == 50 && o.reason == Reason::Schedule));
}

#[test]
fn commands_are_frames_only_their_node_can_open() {
    let mut c = core(2);
    c.handle_tick(NIGHT);
    let out = drain(&mut c);
    let o = &out[1];
    let (topic, frame) = c.downlink(o).unwrap();
    assert_eq!(topic, topics::downlink(&tenant(), node(1).dev_eui));
    let f = lorawan::decode_data_frame(&frame, &node(1).keys, o.fcnt_down).unwrap();
    assert_eq!(Command::decode(&f.frm_payload).unwrap(), o.command);
    assert_eq!(
        Command::decode(&f.frm_payload).unwrap(),
        Command::SetLevel {
            level_pct: 50,
            // From off to 50 %: half a full rise.
            ramp_ms: 500,
            hold_s: 0
        }
    );
    assert_eq!(
        lorawan::decode_data_frame(&frame, &node(0).keys, o.fcnt_down),
        Err(FrameError::BadMic)
    );
}

#[test]
fn bad_uplinks_are_rejected_counted_and_do_not_change_state() {
    let mut c = core(3);
    let good = report(Presence::default(), 10);
    let (t1, f1) = uplink(&node(1), 7, &good);
    c.handle_uplink(NIGHT, &t1, &f1).unwrap();

    let mut forged_node = node(1);
    forged_node.keys.nwk_s_key = AesKey([0xee; 16]);
    let (_, forged) = uplink(&forged_node, 8, &good);
    let mut unknown = node(1);
    unknown.dev_addr = DevAddr(0xdead_beef);
    let (_, unknown_frame) = uplink(&unknown, 8, &good);
    let (t2, _) = uplink(&node(2), 0, &good);
    let mut truncated = f1.clone();
    truncated.truncate(9);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (&t1, f1.clone(), "replay"),
        (&t1, forged, "bad-mic"),
        (&t1, unknown_frame, "unknown-devaddr"),
        (&t2, uplink(&node(1), 8, &good).1, "topic-mismatch"),
        ("lamplighter/bristol/up/nothex", f1.clone(), "topic"),
        (
            "lamplighter/bristol/down/70B3D50000000001",
            f1.clone(),
            "topic",
        ),
        (&t1, truncated, "malformed"),
        (&t1, vec![], "malformed"),
        (&t1, vec![0xff; 400], "malformed"),
    ];
    for (topic, frame, kind) in &cases {
        let r = c.handle_uplink(NIGHT, topic, frame);
        assert_eq!(r.map_err(|e| e.kind()), Err(*kind), "{topic} {kind}");
    }
    let s = c.summary(NIGHT, None);
    assert_eq!(s.uplinks, 1);
    assert_eq!(s.rejected, cases.len() as u64);
    assert_eq!(s.rejected_by_reason["topic"], 2);
    assert_eq!(s.energy_wh, 1.0);
    // The genuine next frame still goes through.
    let (t, f) = uplink(&node(1), 8, &report(Presence::default(), 12));
    c.handle_uplink(NIGHT, &t, &f).unwrap();
}

#[test]
fn unchanged_levels_are_refreshed_not_repeated() {
    let mut c = core(1);
    c.handle_tick(NIGHT);
    assert_eq!(drain(&mut c).len(), 1);
    c.handle_tick(NIGHT.plus_ms(10_000));
    assert!(drain(&mut c).is_empty());
    c.handle_tick(NIGHT.plus_ms(300_000));
    assert_eq!(
        drain(&mut c).len(),
        1,
        "refresh keeps the node from going silent"
    );
}

#[test]
fn a_node_that_missed_its_command_gets_it_again() {
    let mut c = core(1);
    c.handle_tick(NIGHT);
    drain(&mut c);
    let mut r = report(Presence::default(), 0);
    r.target_level_pct = 75;
    r.mode = NodeMode::FailSafe;
    let (t, f) = uplink(&node(0), 0, &r);
    c.handle_uplink(NIGHT.plus_ms(5_000), &t, &f).unwrap();
    assert!(
        drain(&mut c).is_empty(),
        "too soon: the command may be in flight"
    );
    let (t, f) = uplink(&node(0), 1, &r);
    c.handle_uplink(NIGHT.plus_ms(20_000), &t, &f).unwrap();
    assert_eq!(drain(&mut c).len(), 1);
}

#[test]
fn overrides_win_until_they_expire() {
    let mut c = core(1);
    c.handle_tick(NIGHT);
    drain(&mut c);
    c.set_override(NIGHT, LampId(0), Some(100), NIGHT.plus_ms(60_000));
    let o = drain(&mut c);
    assert_eq!((o[0].level_pct, o[0].reason), (100, Reason::Override));
    c.handle_tick(NIGHT.plus_ms(60_000));
    let o = drain(&mut c);
    assert_eq!((o[0].level_pct, o[0].reason), (50, Reason::Schedule));
}

#[test]
fn duplicate_dev_addrs_are_refused() {
    let mut b = node(1);
    b.dev_addr = node(0).dev_addr;
    assert!(matches!(
        ControllerCore::new(ControllerConfig::default(), vec![node(0), b]),
        Err(ProvisionError::DuplicateDevAddr(_))
    ));
}

// ---- Demand, classes and the adaptive policy in the core ----

/// Lamps 0..n (zone 0 holds lamps 0-9) under `policy`, zone 0 an M3 road carrying 600
/// road users per hour.
fn core_on_m3(policy: PolicyConfig, n: u32) -> ControllerCore {
    let config = ControllerConfig {
        policy,
        zones: vec![ZoneParams {
            tenant: None,
            zone: ZoneId(0),
            design_class: LightingClass::M(3),
            capacity_per_h: 600.0,
        }],
        ..ControllerConfig::default()
    };
    ControllerCore::new(config, (0..n).map(node).collect()).unwrap()
}

/// The adaptive policy without presence sensing: every lamp holds the class in force, so
/// these tests read the class off the lamps' levels (with it, empty streets wait at the
/// minimum: policy.rs's tables, and the test of adaptive with presence below).
fn adaptive_core(n: u32) -> ControllerCore {
    let policy = PolicyConfig {
        reactive: false,
        ..PolicyConfig::named("adaptive").unwrap()
    };
    core_on_m3(policy, n)
}

fn pedestrians(n: u8) -> Presence {
    Presence {
        pedestrians: n,
        ..Presence::default()
    }
}

/// Sends lamp `i`'s next report (counting frames in `fcnt`).
fn send(c: &mut ControllerCore, fcnt: &mut [u32], i: u32, at: UnixMs, p: Presence) {
    let (t, f) = uplink(&node(i), fcnt[i as usize], &report(p, 0));
    fcnt[i as usize] += 1;
    c.handle_uplink(at, &t, &f).unwrap();
}

fn zone0(c: &ControllerCore, now: UnixMs) -> ZoneView {
    c.zones(now, None)
        .into_iter()
        .find(|z| z.zone == ZoneId(0))
        .unwrap()
}

fn last_by_lamp(out: &[Outgoing]) -> BTreeMap<u32, (u8, Reason)> {
    out.iter()
        .map(|o| (o.lamp.0, (o.level_pct, o.reason)))
        .collect()
}

const MIN: u64 = 60_000;

#[test]
fn adaptive_falls_back_to_part_night_until_demand_is_known() {
    let mut c = adaptive_core(10);
    c.handle_tick(NIGHT);
    let out = drain(&mut c);
    assert_eq!(out.len(), 10);
    // 22:00: part-night says 75 %.
    assert!(out
        .iter()
        .all(|o| (o.level_pct, o.reason) == (75, Reason::FailSafe)));
    let z = zone0(&c, NIGHT);
    assert_eq!(z.demand.class, None);
    assert_eq!(z.demand.class_reason, Some(Reason::FailSafe));
    assert_eq!(z.demand.design_class, Some(LightingClass::M(3)));
    assert_eq!(z.demand.capacity_per_h, 600.0);
}

#[test]
fn the_class_drops_after_two_quiet_intervals_and_rises_at_once() {
    let mut c = adaptive_core(10);
    let mut fcnt = vec![0; 10];
    let report_all = |c: &mut ControllerCore, fcnt: &mut [u32], at: UnixMs| {
        for i in 0..10 {
            send(c, fcnt, i, at, Presence::default());
        }
    };
    // Demand known, nothing measured yet: the design class, 100 %.
    report_all(&mut c, &mut fcnt, NIGHT.plus_ms(1000));
    c.handle_tick(NIGHT.plus_ms(2000));
    let out = last_by_lamp(&drain(&mut c));
    assert_eq!(out[&0], (100, Reason::Schedule));
    assert_eq!(zone0(&c, NIGHT).demand.class, Some(LightingClass::M(3)));

    // First quiet interval ends: one confirmation, no drop.
    report_all(&mut c, &mut fcnt, NIGHT.plus_ms(5 * MIN));
    c.handle_tick(NIGHT.plus_ms(10 * MIN + 1000));
    // Only the refresh, at the same level.
    assert!(drain(&mut c)
        .iter()
        .all(|o| (o.level_pct, o.reason) == (100, Reason::Schedule)));
    let z = zone0(&c, NIGHT.plus_ms(10 * MIN + 1000));
    assert_eq!(z.demand.demand_per_h, Some(0.0));
    assert_eq!(z.demand.class, Some(LightingClass::M(3)));

    // Second quiet interval ends: two classes down, M5, 50 % of an M3 lamp.
    report_all(&mut c, &mut fcnt, NIGHT.plus_ms(11 * MIN));
    report_all(&mut c, &mut fcnt, NIGHT.plus_ms(16 * MIN));
    // (The test's reports claim a 50 % target, so the 100 % command was resent meanwhile.)
    drain(&mut c);
    let t = NIGHT.plus_ms(20 * MIN + 1000);
    c.handle_tick(t);
    let out = drain(&mut c);
    assert_eq!(out.len(), 10);
    assert!(out
        .iter()
        .all(|o| (o.level_pct, o.reason) == (50, Reason::Schedule)));
    // A fall is slow: half a full fall.
    assert_eq!(out[0].ramp_ms, c.config().policy.ramp_down_ms / 2);
    assert_eq!(zone0(&c, t).demand.class, Some(LightingClass::M(5)));

    // Two minutes into an interval, one lamp counts 100 pedestrians: over the zone's 10
    // lamps and the shortest window the flow is measured over (demand::RISE_WINDOW_S, 3
    // minutes) that is already 200 per hour, 33 % of capacity: M4 at once, not at the
    // interval's end.
    let t = NIGHT.plus_ms(22 * MIN);
    send(&mut c, &mut fcnt, 0, t, pedestrians(100));
    let out = last_by_lamp(&drain(&mut c));
    assert_eq!(
        out[&0],
        (75, Reason::Schedule),
        "no bubble without presence sensing: the class"
    );
    assert_eq!(
        out[&5],
        (75, Reason::Schedule),
        "the class: M4 is 75 % of M3"
    );
    assert_eq!(zone0(&c, t).demand.class, Some(LightingClass::M(4)));
    // Another 100: 400 per hour, 67 %: the design class, on every lamp.
    send(&mut c, &mut fcnt, 9, t, pedestrians(100));
    let out = last_by_lamp(&drain(&mut c));
    assert_eq!(out.len(), 10);
    assert_eq!(out[&9], (100, Reason::Schedule));
    assert_eq!(out[&4], (100, Reason::Schedule));
    assert_eq!(zone0(&c, t).demand.class, Some(LightingClass::M(3)));
}

#[test]
fn ticks_every_ten_seconds_end_each_interval_once() {
    // As the test above, with a tick every 10 s rather than one per interval: the ticks
    // within an interval find nothing to end, and the class drops at the second end. No
    // report comes after that end, so only a tick can end the interval.
    let mut c = adaptive_core(10);
    let mut fcnt = vec![0; 10];
    let mut t = NIGHT.plus_ms(1000);
    let end = NIGHT.plus_ms(20 * MIN + 1000);
    let mut classes = Vec::new();
    while t <= end {
        if [1000, 5 * MIN + 1000, 15 * MIN + 1000].contains(&(t.0 - NIGHT.0)) {
            for i in 0..10 {
                send(&mut c, &mut fcnt, i, t, Presence::default());
            }
        }
        c.handle_tick(t);
        drain(&mut c);
        let class = zone0(&c, t).demand.class;
        if classes.last().is_none_or(|(_, k)| *k != class) {
            classes.push((t.0 - NIGHT.0, class));
        }
        t = t.plus_ms(10_000);
    }
    assert_eq!(
        classes,
        vec![
            (1000, Some(LightingClass::M(3))),
            (20 * MIN + 1000, Some(LightingClass::M(5)))
        ]
    );
}

#[test]
fn the_forecast_brightens_ahead_of_a_daily_peak() {
    // One lamp; every evening from 23:00 to 23:30 about 540 road users per hour pass it
    // (90 % of capacity), otherwise nobody.
    let mut c = adaptive_core(1);
    let mut fcnt = vec![0; 1];
    let start = NIGHT.plus_ms(0).0 - 7 * 86_400_000;
    let check = NIGHT.plus_ms(50 * MIN);
    let mut t = UnixMs(start);
    while t < check {
        let minute_of_day = (t.0 / MIN) % 1440;
        let busy = (23 * 60..23 * 60 + 30).contains(&minute_of_day);
        send(
            &mut c,
            &mut fcnt,
            0,
            t.plus_ms(5 * MIN),
            pedestrians(if busy { 90 } else { 0 }),
        );
        t = t.plus_ms(10 * MIN);
    }
    // The first call after 22:50 ends the 22:40 interval: nobody came, but the upper quantile
    // for 23:00 (within the 20-minute lead) calls for the design class.
    let now = check.plus_ms(1000);
    drain(&mut c);
    c.handle_tick(now);
    let z = zone0(&c, now);
    assert_eq!(z.demand.demand_per_h, Some(0.0));
    let q90 = z.demand.forecast_q90_peak_per_h.unwrap();
    assert!(q90 >= 300.0, "{:?}", z.demand);
    let (q10, p, q90_h) = (
        z.demand.forecast_q10_per_h.unwrap(),
        z.demand.forecast_per_h.unwrap(),
        z.demand.forecast_q90_per_h.unwrap(),
    );
    assert!(q10 <= p && p <= q90_h, "{:?}", z.demand);
    assert_eq!(z.demand.forecast_horizon_s, 1200);
    assert_eq!(z.demand.class, Some(LightingClass::M(3)));
    assert_eq!(z.demand.class_reason, Some(Reason::Forecast));
    let lamp = &c.lamps(now, None)[0];
    assert_eq!(lamp.commanded_level_pct, Some(100));
    assert_eq!(lamp.reason, Some(Reason::Forecast));
    assert_eq!(z.reasons.get("forecast"), Some(&1));
    assert!(
        c.zones[0].forecaster_bytes() <= 3 * 8 * 1024,
        "three series of at most 8 KB"
    );

    // The same lamp under part-night knows nothing of it.
    let events: Vec<_> = std::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            Event::CommandSent { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(events.contains(&Reason::Forecast));
}

/// Every zone tracks and forecasts its demand for the dashboard by default. A core told to
/// track demand only where a policy acts on it (a planning run's) has no demand, class or
/// forecast under `reactive`, until the zone is switched to `adaptive`.
#[test]
fn zones_track_demand_for_the_dashboard_or_only_where_the_policy_uses_it() {
    let demand_after_an_hour = |demand_every_zone: bool, switch_to_adaptive: bool| {
        let config = ControllerConfig {
            demand_every_zone,
            ..core_on_m3(PolicyConfig::named("reactive").unwrap(), 1)
                .config()
                .clone()
        };
        let mut c = ControllerCore::new(config, vec![node(0)]).unwrap();
        if switch_to_adaptive {
            let mut s = c.zone_settings(&tenant(), ZoneId(0)).unwrap();
            s.policy = "adaptive".into();
            c.set_zone_settings(NIGHT, &tenant(), ZoneId(0), &s)
                .unwrap();
        }
        let mut fcnt = vec![0; 1];
        let mut t = NIGHT;
        while t < NIGHT.plus_ms(60 * MIN) {
            send(&mut c, &mut fcnt, 0, t, pedestrians(20));
            c.handle_tick(t);
            t = t.plus_ms(5 * MIN);
        }
        let d = zone0(&c, t).demand;
        (d.demand_per_h, d.class, d.forecast_per_h)
    };
    for (every_zone, adaptive) in [(true, false), (false, true)] {
        let (demand, class, forecast) = demand_after_an_hour(every_zone, adaptive);
        assert!(demand.is_some_and(|d| d > 0.0), "{every_zone} {adaptive}");
        assert!(class.is_some(), "{every_zone} {adaptive}");
        assert!(forecast.is_some_and(|f| f > 0.0), "{every_zone} {adaptive}");
    }
    assert_eq!(demand_after_an_hour(false, false), (None, None, None));
}

#[test]
fn demand_unknown_for_too_long_falls_back_to_the_fail_safe_floor() {
    let mut c = adaptive_core(2);
    let mut fcnt = vec![0; 2];
    send(&mut c, &mut fcnt, 0, NIGHT, Presence::default());
    c.handle_tick(NIGHT.plus_ms(1000));
    let out = last_by_lamp(&drain(&mut c));
    assert_eq!(out[&0], (100, Reason::Schedule));
    // No report from the zone for more than 30 minutes.
    let t = NIGHT.plus_ms(31 * MIN);
    c.handle_tick(t);
    let out = last_by_lamp(&drain(&mut c));
    assert_eq!(out[&0], (75, Reason::FailSafe));
    assert_eq!(zone0(&c, t).demand.class_reason, Some(Reason::FailSafe));
}

#[test]
fn overrides_win_over_the_adaptive_policy_until_they_expire() {
    let mut c = adaptive_core(1);
    let mut fcnt = vec![0; 1];
    send(&mut c, &mut fcnt, 0, NIGHT, Presence::default());
    drain(&mut c);
    c.set_override(NIGHT, LampId(0), Some(10), NIGHT.plus_ms(MIN));
    assert_eq!(last_by_lamp(&drain(&mut c))[&0], (10, Reason::Override));
    send(&mut c, &mut fcnt, 0, NIGHT.plus_ms(30_000), pedestrians(5));
    assert!(
        drain(&mut c).is_empty(),
        "presence does not break an override"
    );
    c.handle_tick(NIGHT.plus_ms(MIN));
    assert_eq!(last_by_lamp(&drain(&mut c))[&0], (100, Reason::Schedule));
}

#[test]
fn adaptive_lights_road_users_for_their_class_and_keeps_the_node_in_the_bubble() {
    let mut c = core_on_m3(PolicyConfig::named("adaptive").unwrap(), 10);
    let mut fcnt = vec![0; 10];
    for i in 0..10 {
        send(&mut c, &mut fcnt, i, NIGHT, Presence::default());
    }
    // Demand known, the design class M3 in force; nobody near: every lamp at the minimum.
    c.handle_tick(NIGHT.plus_ms(1_000));
    let out = last_by_lamp(&drain(&mut c));
    assert!(
        out.values().all(|&o| o == (20, Reason::Schedule)),
        "{out:?}"
    );
    // A pedestrian at lamp 4: it and its neighbours rise to the class in force (M3, 100 %),
    // the rest of the street stays at the minimum.
    let t = NIGHT.plus_ms(2_000);
    send(&mut c, &mut fcnt, 4, t, pedestrians(1));
    let out = last_by_lamp(&drain(&mut c));
    assert_eq!(out[&4], (100, Reason::Presence));
    assert!(out.len() >= 3 && out.len() <= 5, "{out:?}");
    assert!(!out.contains_key(&0) && !out.contains_key(&9));
    // The pedestrian lingers by lamp 4: the bubble outlasts the hold its command carried, so
    // the command is sent again before the node's own hold ends.
    let hold_s = c.config().policy.bubble_hold_s as u64;
    let mut resent = false;
    for k in 1..=12u64 {
        let t = t.plus_ms(k * 10_000);
        send(&mut c, &mut fcnt, 4, t, pedestrians(1));
        c.handle_tick(t.plus_ms(1));
        resent |= drain(&mut c)
            .iter()
            .any(|o| o.lamp.0 == 4 && o.reason == Reason::Presence);
        if k * 10 >= hold_s + 10 {
            break;
        }
    }
    assert!(resent, "presence command resent within the node's hold");
    // A vehicle's bubble is short: after its hold and no more detections, back to the
    // minimum.
    let t = t.plus_ms(10 * MIN);
    c.handle_tick(t);
    drain(&mut c);
    send(
        &mut c,
        &mut fcnt,
        0,
        t,
        Presence {
            vehicles: 1,
            ..Presence::default()
        },
    );
    assert_eq!(last_by_lamp(&drain(&mut c))[&0].1, Reason::Presence);
    c.handle_tick(t.plus_ms(20_000));
    assert_eq!(last_by_lamp(&drain(&mut c))[&0].0, 20);
}

#[test]
fn zone_roads_come_from_the_config_by_tenant_and_zone() {
    let toml_text = r#"
        report_interval_s = 300
        [policy]
        name = "adaptive"
        forecast_lead_s = 1800
        [zone_default]
        design_class = "P5"
        capacity_per_h = 1800.0
        [[zones]]
        zone = 0
        design_class = "M3"
        capacity_per_h = 2400.0
        [[zones]]
        tenant = "bristol"
        zone = 1
        design_class = "M4"
        capacity_per_h = 1500.0
        [[zones]]
        tenant = "elsewhere"
        zone = 1
        design_class = "C2"
        capacity_per_h = 100.0
    "#;
    let config: ControllerConfig = toml::from_str(toml_text).unwrap();
    assert_eq!(config.policy.name, "adaptive");
    assert_eq!(config.policy.forecast_lead_s, 1800);
    let c = ControllerCore::new(config, (0..25).map(node).collect()).unwrap();
    let zones = c.zones(NIGHT, None);
    let roads: Vec<_> = zones
        .iter()
        .map(|z| {
            (
                z.zone.0,
                z.demand.design_class.unwrap().to_string(),
                z.demand.capacity_per_h,
            )
        })
        .collect();
    assert_eq!(
        roads,
        vec![
            (0, "M3".to_string(), 2400.0),
            (1, "M4".to_string(), 1500.0),
            (2, "P5".to_string(), 1800.0)
        ]
    );
    // The API's JSON carries the class and the demand flat in each zone.
    let json = serde_json::to_value(&zones[0]).unwrap();
    for key in [
        "class",
        "design_class",
        "class_reason",
        "demand_per_h",
        "forecast_per_h",
        "forecast_q10_per_h",
        "forecast_q90_per_h",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert_eq!(json["design_class"], "M3");
    assert_eq!(json["class_reason"], "fail-safe");

    // Bad roads are refused with a clear reason.
    let bad = |text: &str| {
        toml::from_str::<ControllerConfig>(text)
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                ControllerCore::new(cfg, vec![node(0)])
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .unwrap_err()
    };
    let e = bad("[[zones]]\nzone = 0\ndesign_class = \"M3\"\ncapacity_per_h = 0.0\n");
    assert!(
        e.contains("zone 0: capacity_per_h must be a positive number"),
        "{e}"
    );
    let e = bad("[[zones]]\nzone = 0\ndesign_class = \"M9\"\ncapacity_per_h = 10.0\n");
    assert!(e.contains("M9"), "{e}");
    let e = bad(
        "[[zones]]\nzone = 0\ndesign_class = \"M3\"\ncapacity_per_h = 10.0\n[[zones]]\nzone = 0\ndesign_class = \"M3\"\ncapacity_per_h = 10.0\n",
    );
    assert!(e.contains("listed twice"), "{e}");
    let e = bad("[policy]\nname = \"adaptiv\"\n");
    assert!(e.contains("unknown policy"), "{e}");
}

#[test]
fn every_named_policy_runs_in_the_core() {
    for name in policy::POLICY_NAMES {
        let config = ControllerConfig {
            policy: PolicyConfig::named(name).unwrap(),
            ..ControllerConfig::default()
        };
        let mut c = ControllerCore::new(config, (0..3).map(node).collect()).unwrap();
        c.handle_tick(NIGHT);
        let out = drain(&mut c);
        assert_eq!(out.len(), 3, "{name}");
        let want = match *name {
            "profile-reactive" => (50, Reason::Schedule),
            "full" => (100, Reason::Schedule),
            "part-night" => (75, Reason::Schedule),
            "reactive" => (20, Reason::Schedule),
            "adaptive" => (75, Reason::FailSafe),
            other => panic!("no expectation for {other}"),
        };
        assert_eq!((out[0].level_pct, out[0].reason), want, "{name}");
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Action {
        Tick,
        Report { lamp: u32, presence: Presence },
        Override { lamp: u32, level_pct: u8 },
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            Just(Action::Tick),
            (0u32..10, 0u8..=255, 0u8..=20, 0u8..=3).prop_map(|(lamp, p, c, v)| {
                Action::Report {
                    lamp,
                    presence: Presence {
                        pedestrians: p,
                        cyclists: c,
                        vehicles: v,
                    },
                }
            }),
            (0u32..10, 0u8..=100)
                .prop_map(|(lamp, level_pct)| Action::Override { lamp, level_pct }),
        ]
    }

    proptest! {
        // The night profile's steps are a few minutes in a night: enough cases to land on
        // them (removing the minute from the recheck time fails within a few hundred).
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Ticks and bubbles pass over a lamp until its recheck time: at any moment, under
        /// every policy, deciding such a lamp again would send it nothing (so passing over
        /// it is exact, not a shortcut that misses a change). Time runs across dawn.
        #[test]
        fn a_lamp_passed_over_until_its_recheck_time_would_be_sent_nothing(
            policy_index in 0..policy::POLICY_NAMES.len(),
            steps in proptest::collection::vec(
                (prop_oneof![1u64..120_000, 1u64..3_000_000], action()),
                1..80,
            ),
        ) {
            let name = policy::POLICY_NAMES[policy_index];
            let mut c = core_on_m3(PolicyConfig::named(name).unwrap(), 10);
            let mut fcnt = [0u32; 10];
            let mut now = NIGHT;
            for (dt, a) in steps {
                now = now.plus_ms(dt);
                drain(&mut c);
                for i in 0..c.lamps.len() {
                    if c.hot[i].recheck_at > now {
                        c.decide_lamp(now, i);
                        let sent = drain(&mut c);
                        prop_assert!(
                            sent.is_empty(),
                            "{name}: lamp {i} passed over until {:?} at {now:?} but due {sent:?}",
                            c.hot[i].recheck_at
                        );
                    }
                }
                match a {
                    Action::Tick => c.handle_tick(now),
                    Action::Report { lamp, presence } => {
                        send(&mut c, &mut fcnt, lamp, now, presence)
                    }
                    Action::Override { lamp, level_pct } => {
                        c.set_override(now, LampId(lamp), Some(level_pct), now.plus_ms(120_000));
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Whatever arrives, every command the adaptive core sends while dark is at least the
        /// minimum level and the level of its zone's class in force, unless an operator's
        /// override (which wins until it expires) says otherwise; and every ramp is within the
        /// bounded rate.
        #[test]
        fn the_core_keeps_the_floor_the_class_the_override_and_the_ramp_bounds(
            steps in proptest::collection::vec((1u64..400_000, action()), 1..80),
        ) {
            let mut c = adaptive_core(10);
            let policy = c.config().policy.clone();
            let mut fcnt = [0u32; 10];
            let mut overrides: BTreeMap<u32, (u8, UnixMs)> = BTreeMap::new();
            let mut last: BTreeMap<u32, u8> = BTreeMap::new();
            let mut now = NIGHT;
            for (dt, a) in steps {
                now = now.plus_ms(dt);
                match a {
                    Action::Tick => c.handle_tick(now),
                    Action::Report { lamp, presence } => {
                        send(&mut c, &mut fcnt, lamp, now, presence)
                    }
                    Action::Override { lamp, level_pct } => {
                        let until = now.plus_ms(120_000);
                        overrides.insert(lamp, (level_pct, until));
                        c.set_override(now, LampId(lamp), Some(level_pct), until);
                    }
                }
                let zone = zone0(&c, now);
                let class_level = zone
                    .demand
                    .class
                    .map(|k| classes::level_pct(LightingClass::M(3), k));
                for o in drain(&mut c) {
                    let lamp = o.lamp.0;
                    prop_assert!(sun::is_dark(node(lamp).lat, node(lamp).lon, now));
                    match overrides.get(&lamp).filter(|(_, until)| now < *until) {
                        Some(&(level, _)) => {
                            prop_assert_eq!((o.level_pct, o.reason), (level, Reason::Override));
                        }
                        None => {
                            prop_assert_ne!(o.reason, Reason::Override);
                            prop_assert!(o.level_pct >= policy.min_level_pct, "{o:?}");
                            if let Some(k) = class_level {
                                prop_assert!(o.level_pct >= k, "{o:?} below the class ({k} %)");
                            }
                        }
                    }
                    if let Some(&from) = last.get(&lamp) {
                        let delta = from.abs_diff(o.level_pct) as u64;
                        let full = if o.level_pct >= from {
                            policy.ramp_up_ms
                        } else {
                            policy.ramp_down_ms
                        } as u64;
                        prop_assert!(delta * full <= 100 * o.ramp_ms as u64, "{from} -> {o:?}");
                    }
                    last.insert(lamp, o.level_pct);
                }
            }
        }
    }
}
