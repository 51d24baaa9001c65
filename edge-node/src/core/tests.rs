use super::*;
use lamplighter_protocol::lorawan::AesKey;

// 2024-12-21: 12:00 UTC is daylight in London, 22:00 UTC is dark.
const NOON: UnixMs = UnixMs(1_734_782_400_000);
const NIGHT: UnixMs = UnixMs(1_734_782_400_000 + 10 * 3_600_000);

fn keys() -> SessionKeys {
    SessionKeys {
        nwk_s_key: AesKey([1; 16]),
        app_s_key: AesKey([2; 16]),
    }
}

fn node(now: UnixMs) -> NodeCore {
    let mut cfg = NodeConfig::new(DevEui(7), DevAddr(0x2601_0007), keys(), 51.5, -0.12);
    cfg.report_interval_s = 60;
    cfg.fail_safe = FailSafeProfile::part_night(0, 600);
    NodeCore::new(cfg, now, 0, 0.0)
}

fn downlink(fcnt: u32, command: &Command) -> Vec<u8> {
    downlink_to(DevAddr(0x2601_0007), fcnt, command, &keys())
}

fn downlink_to(addr: DevAddr, fcnt: u32, command: &Command, keys: &SessionKeys) -> Vec<u8> {
    let frame = DataFrame {
        mtype: MType::UnconfirmedDataDown,
        dev_addr: addr,
        fctrl: FCtrl::default(),
        fcnt,
        fopts: vec![],
        fport: Some(FPORT_COMMAND),
        frm_payload: command.encode().unwrap(),
    };
    lorawan::encode_data_frame(&frame, keys).unwrap()
}

fn set(level_pct: u8, ramp_ms: u32, hold_s: u16) -> Command {
    Command::SetLevel {
        level_pct,
        ramp_ms,
        hold_s,
    }
}

fn decode_report(n: &NodeCore, phy: &[u8]) -> StatusReport {
    let h = lorawan::peek_header(phy).unwrap();
    let f = lorawan::decode_data_frame(phy, &n.config().keys, h.fcnt16 as u32).unwrap();
    StatusReport::decode(&f.frm_payload).unwrap()
}

#[test]
fn a_fail_safe_node_keeps_to_its_time_zone_across_the_spring_clock_change() {
    // 2025-03-29 (GMT) and 2025-03-30 (BST, from 01:00 UTC): the part-night profile's 75 %
    // step at 22:00 local is 22:00 UTC before the change and 21:00 UTC after it.
    const SAT_22_UTC: UnixMs = UnixMs(1_743_285_600_000);
    const SUN_21_UTC: UnixMs = UnixMs(1_743_368_400_000);
    let silent = |tz: Option<TimeZone>, t: UnixMs| {
        let mut cfg = NodeConfig::new(DevEui(7), DevAddr(0x2601_0007), keys(), 51.5, -0.12);
        cfg.time_zone = tz;
        NodeCore::new(cfg, t, 0, 0.0).target_pct()
    };
    let london = Some(TimeZone::named("Europe/London").unwrap());
    for (t, fixed_utc, in_london) in [
        (UnixMs(SAT_22_UTC.0 - 60_000), 100.0, 100.0),
        (SAT_22_UTC, 75.0, 75.0),
        (UnixMs(SUN_21_UTC.0 - 60_000), 100.0, 100.0),
        (SUN_21_UTC, 100.0, 75.0),
    ] {
        assert_eq!(silent(None, t), fixed_utc, "{t:?}, fixed offset 0");
        assert_eq!(silent(london, t), in_london, "{t:?}, Europe/London");
    }
}

#[test]
fn fail_safe_profile_lights_at_night_and_not_by_day() {
    assert_eq!(node(NOON).target_pct(), 0.0);
    // 22:00 UTC with offset 0: the part-night profile's 75 % step.
    assert_eq!(node(NIGHT).target_pct(), 75.0);
    assert_eq!(node(NIGHT).mode(NIGHT), NodeMode::FailSafe);
}

#[test]
fn commanded_level_is_reached_by_a_linear_ramp() {
    let mut n = node(NIGHT);
    n.handle_downlink(NIGHT, &downlink(1, &set(20, 10_000, 0)))
        .unwrap();
    assert_eq!(n.mode(NIGHT), NodeMode::Commanded);
    let half = n.level_pct(NIGHT.plus_ms(5_000));
    assert!((half - 47.5).abs() < 0.01, "{half}");
    assert_eq!(n.level_pct(NIGHT.plus_ms(10_000)), 20.0);
    assert_eq!(n.level_pct(NIGHT.plus_ms(60_000)), 20.0);
}

#[test]
fn replayed_foreign_and_forged_downlinks_are_refused() {
    let mut n = node(NIGHT);
    let frame = downlink(5, &set(10, 0, 0));
    n.handle_downlink(NIGHT, &frame).unwrap();
    assert!(matches!(
        n.handle_downlink(NIGHT, &frame),
        Err(DownlinkError::Frame(FrameError::Replay { .. }))
    ));
    let other = downlink_to(DevAddr(0x2601_0008), 9, &set(90, 0, 0), &keys());
    assert!(matches!(
        n.handle_downlink(NIGHT, &other),
        Err(DownlinkError::NotForMe(_))
    ));
    let wrong_keys = SessionKeys {
        nwk_s_key: AesKey([9; 16]),
        app_s_key: AesKey([2; 16]),
    };
    let forged = downlink_to(DevAddr(0x2601_0007), 9, &set(90, 0, 0), &wrong_keys);
    assert!(matches!(
        n.handle_downlink(NIGHT, &forged),
        Err(DownlinkError::Frame(FrameError::BadMic))
    ));
    assert_eq!(n.target_pct(), 10.0);
    assert_eq!(n.counters().downlinks_rejected, 3);
    for garbage in [&[][..], &[0x60][..], &[0xff; 300][..]] {
        assert!(n.handle_downlink(NIGHT, garbage).is_err());
    }
}

#[test]
fn silence_and_hold_expiry_fall_back_to_the_profile() {
    let mut n = node(NIGHT);
    n.handle_downlink(NIGHT, &downlink(1, &set(20, 0, 30)))
        .unwrap();
    n.handle_timeout(NIGHT.plus_ms(29_000));
    assert_eq!(n.target_pct(), 20.0);
    n.handle_timeout(NIGHT.plus_ms(30_000));
    assert_eq!(n.mode(NIGHT.plus_ms(30_000)), NodeMode::FailSafe);
    assert_eq!(n.target_pct(), 75.0);

    let mut n = node(NIGHT);
    n.handle_downlink(NIGHT, &downlink(1, &set(20, 0, 0)))
        .unwrap();
    let silent = NIGHT.plus_ms(600_000);
    n.handle_timeout(silent);
    assert_eq!(n.mode(silent), NodeMode::FailSafe);
    assert_eq!(n.target_pct(), 75.0);
    let r = n.status_report(silent, ReportTrigger::Periodic);
    assert!(r.faults.contains(FaultFlags::COMMS_LOST));
}

#[test]
fn a_commanded_node_sleeps_to_its_next_deadline_and_a_fail_safe_one_by_the_minute() {
    let mut cfg = NodeConfig::new(DevEui(7), DevAddr(0x2601_0007), keys(), 51.5, -0.12);
    cfg.report_interval_s = 3_600;
    cfg.fail_safe = FailSafeProfile::part_night(0, 900);
    let mut n = NodeCore::new(cfg, NIGHT, 0, 0.0);
    let mut t = NIGHT;
    while t < NIGHT.plus_ms(10_000) {
        while n.poll_transmit(t).is_some() {}
        t = t.plus_ms(1_000);
    }
    // Fail-safe (no command yet): the profile is read by the minute.
    assert_eq!(n.mode(t), NodeMode::FailSafe);
    assert_eq!(n.poll_timeout(t), UnixMs((t.0 / 60_000 + 1) * 60_000));
    // Commanded, held for 300 s: nothing changes before the hold ends or a report is due.
    n.handle_downlink(t, &downlink(1, &set(20, 0, 300)))
        .unwrap();
    let hold_end = t.plus_ms(300_000);
    let due = n.poll_timeout(t);
    assert_eq!(due, hold_end.min(n.next_periodic));
    let mut m = UnixMs((t.0 / 60_000 + 1) * 60_000);
    while m < due {
        n.handle_timeout(m);
        assert_eq!((n.mode(m), n.target_pct()), (NodeMode::Commanded, 20.0));
        m = m.plus_ms(60_000);
    }
    // Past the hold it falls back to the profile, read by the minute again.
    n.handle_timeout(hold_end);
    assert_eq!(n.mode(hold_end), NodeMode::FailSafe);
    let next = n.poll_timeout(hold_end);
    assert!(next > hold_end && next.0 - hold_end.0 <= 60_000, "{next:?}");
}

#[test]
fn presence_is_reported_at_once_but_rate_limited() {
    let mut n = node(NIGHT);
    // The periodic phase may fall anywhere in the first minute; drain it.
    let mut t = NIGHT;
    while n.poll_transmit(t).is_some() || t < NIGHT.plus_ms(61_000) {
        t = t.plus_ms(1_000);
    }
    n.handle_presence(t, RoadUser::Pedestrian);
    n.handle_presence(t, RoadUser::Vehicle);
    let phy = n.poll_transmit(t).expect("presence report at once");
    let r = decode_report(&n, &phy);
    assert_eq!(r.trigger, ReportTrigger::Presence);
    assert_eq!(r.presence.pedestrians, 1);
    assert_eq!(r.presence.vehicles, 1);
    n.handle_presence(t.plus_ms(100), RoadUser::Cyclist);
    assert!(n.poll_transmit(t.plus_ms(100)).is_none(), "rate limited");
    assert_eq!(n.poll_timeout(t.plus_ms(100)), t.plus_ms(1_000));
    let phy = n.poll_transmit(t.plus_ms(1_000)).unwrap();
    let r = decode_report(&n, &phy);
    assert_eq!(r.presence.cyclists, 1);
}

/// The simulator polls once per input: a report, once returned, leaves none due at the same
/// instant, whatever mix of presence and periodic reports is going on.
#[test]
fn one_report_at_most_is_due_at_an_instant() {
    let mut n = node(NIGHT);
    let mut t = NIGHT;
    let (mut reports, mut presence) = (0, 0);
    for step in 0..(2 * 7200) {
        if step % 7 == 0 {
            n.handle_presence(t, RoadUser::Pedestrian);
        }
        if let Some(u) = n.poll_report(t) {
            reports += 1;
            presence += (u.report.trigger == ReportTrigger::Presence) as u32;
            assert_eq!(n.poll_report(t), None, "a second report at {t:?}");
        }
        t = t.plus_ms(500);
    }
    // Both kinds came: presence every 3.5 s, a periodic report each minute between.
    assert!(
        presence > 1_500 && reports > presence,
        "{reports} {presence}"
    );
}

#[test]
fn periodic_reports_advance_fcnt_and_meter_energy() {
    let mut n = node(NIGHT);
    let mut t = NIGHT;
    let mut frames = vec![];
    for _ in 0..(3 * 3600) {
        n.handle_sample(
            t,
            Sample {
                power_w: 36.0,
                ambient_lux: 1.0,
                faults: FaultFlags::default(),
            },
        );
        if let Some(f) = n.poll_transmit(t) {
            frames.push(f);
        }
        t = t.plus_ms(1_000);
    }
    // One report a minute for three hours, give or take the phase.
    assert!((179..=181).contains(&frames.len()), "{}", frames.len());
    let fcnts: Vec<u16> = frames
        .iter()
        .map(|f| lorawan::peek_header(f).unwrap().fcnt16)
        .collect();
    assert!(fcnts.windows(2).all(|w| w[1] == w[0] + 1));
    // 36 W for 3 h (less the last second) is 108 Wh.
    assert!((n.energy_wh() - 108.0).abs() < 0.05, "{}", n.energy_wh());
}

#[test]
fn an_opened_command_and_report_match_their_frames() {
    // Two identical nodes: one driven by frames, one past the codec.
    let (mut by_frame, mut by_value) = (node(NIGHT), node(NIGHT));
    let command = set(30, 2_000, 120);
    by_frame
        .handle_downlink(NIGHT, &downlink(3, &command))
        .unwrap();
    by_value.handle_command(NIGHT, 3, &command).unwrap();
    for dt in [0, 1_000, 2_000, 119_000, 121_000] {
        let at = NIGHT.plus_ms(dt);
        assert_eq!(
            by_frame.level_pct(at),
            by_value.level_pct(at),
            "at +{dt} ms"
        );
        assert_eq!(by_frame.mode(at), by_value.mode(at));
    }
    // The same counter rule: not advancing is a replay, and nothing changes.
    assert!(matches!(
        by_value.handle_command(NIGHT, 3, &set(100, 0, 0)),
        Err(DownlinkError::Frame(FrameError::Replay { last: 3, got: 3 }))
    ));
    assert_eq!(by_value.target_pct(), 30.0);
    assert_eq!(by_value.counters().downlinks_rejected, 1);

    // The report poll_report hands out is the one poll_transmit seals.
    let at = NIGHT.plus_ms(5_000);
    by_frame.handle_presence(at, RoadUser::Cyclist);
    by_value.handle_presence(at, RoadUser::Cyclist);
    let phy = by_frame.poll_transmit(at).unwrap();
    let uplink = by_value.poll_report(at).unwrap();
    assert_eq!(uplink.report.presence.cyclists, 1);
    assert_eq!(decode_report(&by_frame, &phy), uplink.report);
    assert_eq!(by_value.seal(&uplink).unwrap(), phy);
    assert_eq!(by_value.fcnt_up(), by_frame.fcnt_up());
}
