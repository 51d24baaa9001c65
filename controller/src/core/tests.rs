use super::*;
use lamplighter_protocol::lorawan::AesKey;
use lamplighter_protocol::payload::{Presence, ReportTrigger};

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
            assert_eq!(o.ramp_ms, c.config().policy.ramp_up_ms);
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
    assert_eq!(o.topic, topics::downlink(&tenant(), node(1).dev_eui));
    let f = lorawan::decode_data_frame(&o.frame, &node(1).keys, o.fcnt_down).unwrap();
    assert_eq!(
        Command::decode(&f.frm_payload).unwrap(),
        Command::SetLevel {
            level_pct: 50,
            ramp_ms: 1000,
            hold_s: 0
        }
    );
    assert_eq!(
        lorawan::decode_data_frame(&o.frame, &node(0).keys, o.fcnt_down),
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
