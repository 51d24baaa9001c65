//! Network-server functions, sans-IO, in virtual time.

use lamplighter_broker::gwmp::{GatewayEui, RxFrame, TxTiming};
use lamplighter_broker::netserver::*;
use lamplighter_protocol::lorawan::radio::{DataRate, RX2_FREQ_HZ};
use lamplighter_protocol::lorawan::{
    self, AesKey, DataFrame, FCtrl, JoinRequest, MType, SessionKeys,
};
use lamplighter_protocol::payload::{Command, FPORT_COMMAND, FPORT_STATUS};
use lamplighter_protocol::{DevAddr, DevEui, TenantId, UnixMs};

const T0: UnixMs = UnixMs(1_700_000_000_000);
const GW1: GatewayEui = GatewayEui(0x1111);
const GW2: GatewayEui = GatewayEui(0x2222);
const GW3: GatewayEui = GatewayEui(0x3333);

fn tenant() -> TenantId {
    TenantId::new("town").unwrap()
}

fn keys(n: u8) -> SessionKeys {
    SessionKeys {
        nwk_s_key: AesKey([n; 16]),
        app_s_key: AesKey([n.wrapping_add(100); 16]),
    }
}

fn abp(n: u8, class: DeviceClass) -> DeviceProfile {
    DeviceProfile {
        tenant: tenant(),
        dev_eui: DevEui(0xE000 + u64::from(n)),
        class,
        dev_addr: DevAddr(0x2600_0000 + u32::from(n)),
        app_keys: keys(n),
        activation: Activation::Abp,
        last_fcnt_up: None,
    }
}

fn up(d: &DeviceProfile, keys: &SessionKeys, fcnt: u32) -> Vec<u8> {
    lorawan::encode_data_frame(
        &DataFrame {
            mtype: MType::UnconfirmedDataUp,
            dev_addr: d.dev_addr,
            fctrl: FCtrl::default(),
            fcnt,
            fopts: vec![],
            fport: Some(FPORT_STATUS),
            frm_payload: vec![1, 2, 3, 4],
        },
        keys,
    )
    .unwrap()
}

fn down(addr: DevAddr, keys: &SessionKeys, fcnt: u32, level: u8) -> Vec<u8> {
    lorawan::encode_data_frame(
        &DataFrame {
            mtype: MType::UnconfirmedDataDown,
            dev_addr: addr,
            fctrl: FCtrl::default(),
            fcnt,
            fopts: vec![],
            fport: Some(FPORT_COMMAND),
            frm_payload: Command::SetLevel {
                level_pct: level,
                ramp_ms: 1000,
                hold_s: 0,
            }
            .encode()
            .unwrap(),
        },
        keys,
    )
    .unwrap()
}

fn rx(phy: &[u8], snr: f32, tmst: u32) -> RxFrame {
    RxFrame {
        phy: phy.to_vec(),
        tmst,
        freq_hz: 868_100_000,
        datr: DataRate::eu868(5).unwrap(),
        rssi_dbm: -90,
        snr_db: snr,
    }
}

fn drain_tx(ns: &mut NetworkServer) -> Vec<Transmission> {
    std::iter::from_fn(|| ns.poll_transmit()).collect()
}

#[test]
fn one_frame_from_three_gateways_is_one_uplink_with_the_best_snr() {
    let d = abp(1, DeviceClass::C);
    let mut ns = NetworkServer::new(NsConfig::default(), vec![d.clone()]).unwrap();
    let phy = up(&d, &d.app_keys, 7);
    ns.handle_rx(T0, GW1, rx(&phy, 2.0, 10));
    ns.handle_rx(T0.plus_ms(20), GW2, rx(&phy, 9.5, 20));
    ns.handle_rx(T0.plus_ms(40), GW3, rx(&phy, -3.0, 30));
    ns.handle_timeout(T0.plus_ms(100));
    assert!(ns.poll_uplink().is_none(), "the window is still open");
    assert_eq!(ns.poll_timeout(), Some(T0.plus_ms(200)));
    ns.handle_timeout(T0.plus_ms(200));
    let u = ns.poll_uplink().unwrap();
    assert_eq!((u.gateways, u.best.gateway, u.fcnt), (3, GW2, 7));
    assert_eq!(u.phy, phy, "ABP frames pass through unchanged");
    assert!(ns.poll_uplink().is_none());
    // A copy arriving after the window is a late duplicate, not a second uplink.
    ns.handle_rx(T0.plus_ms(900), GW1, rx(&phy, 1.0, 40));
    ns.handle_timeout(T0.plus_ms(1200));
    assert!(ns.poll_uplink().is_none());
    let c = ns.counters();
    assert_eq!(
        (
            c.rx_frames,
            c.unique_frames,
            c.duplicates,
            c.late_duplicates
        ),
        (4, 1, 2, 1)
    );
    // Once forgotten, the same frame again is a replay.
    ns.handle_rx(T0.plus_ms(20_000), GW1, rx(&phy, 1.0, 50));
    ns.handle_timeout(T0.plus_ms(20_300));
    assert!(ns.poll_uplink().is_none());
    assert_eq!(ns.counters().rejected.get("replay"), Some(&1));
}

#[test]
fn bad_mic_unknown_devaddr_and_garbage_are_counted_and_do_not_move_the_counter() {
    let d = abp(1, DeviceClass::C);
    let mut ns = NetworkServer::new(NsConfig::default(), vec![d.clone()]).unwrap();
    let forged = up(&d, &keys(9), 60_000);
    let stranger = up(&abp(2, DeviceClass::C), &keys(2), 1);
    let mut overrun = up(&d, &d.app_keys, 1);
    overrun[5] = 0x0f;
    for (i, phy) in [
        forged,
        stranger,
        overrun,
        vec![],
        vec![0x40],
        vec![0x60; 20],
    ]
    .iter()
    .enumerate()
    {
        ns.handle_rx(T0.plus_ms(i as u64), GW1, rx(phy, 0.0, 0));
    }
    ns.handle_timeout(T0.plus_ms(1_000));
    assert!(ns.poll_uplink().is_none());
    let r = &ns.counters().rejected;
    assert_eq!(r.get("bad-mic"), Some(&1));
    assert_eq!(r.get("unknown-devaddr"), Some(&1));
    assert_eq!(r.get("malformed"), Some(&3));
    assert_eq!(r.get("not-uplink"), Some(&1));
    // The forged FCnt 60000 did not move the counter: FCnt 2 is still accepted.
    ns.handle_rx(T0.plus_ms(2_000), GW1, rx(&up(&d, &d.app_keys, 2), 0.0, 0));
    ns.handle_timeout(T0.plus_ms(3_000));
    assert_eq!(ns.poll_uplink().unwrap().fcnt, 2);
}

#[test]
fn class_c_downlink_goes_at_once_on_rx2_through_the_best_gateway() {
    let d = abp(1, DeviceClass::C);
    let mut ns = NetworkServer::new(NsConfig::default(), vec![d.clone()]).unwrap();
    // Never heard: no path, the downlink waits.
    ns.handle_downlink(
        T0,
        &tenant(),
        d.dev_eui,
        &down(d.dev_addr, &d.app_keys, 0, 50),
        Priority::Normal,
    )
    .unwrap();
    assert!(drain_tx(&mut ns).is_empty());
    let phy = up(&d, &d.app_keys, 1);
    ns.handle_rx(T0, GW1, rx(&phy, 1.0, 0));
    ns.handle_rx(T0, GW2, rx(&phy, 8.0, 0));
    ns.handle_timeout(T0.plus_ms(200));
    let tx = drain_tx(&mut ns);
    assert_eq!(tx.len(), 1, "{tx:?}");
    assert_eq!(tx[0].gateway, GW2);
    assert!(tx[0].txpk.imme);
    assert_eq!((tx[0].txpk.freq * 1e6).round() as u32, RX2_FREQ_HZ);
    assert_eq!(tx[0].txpk.datr, "SF12BW125");
    // The gateway is busy for the frame's airtime; the next one goes after it.
    ns.handle_downlink(
        T0.plus_ms(300),
        &tenant(),
        d.dev_eui,
        &down(d.dev_addr, &d.app_keys, 1, 60),
        Priority::Normal,
    )
    .unwrap();
    let tx2 = drain_tx(&mut ns);
    assert!(tx2.is_empty() || tx2[0].gateway == GW1, "{tx2:?}");
    // Replayed and forged downlinks are refused.
    let replay = ns.handle_downlink(
        T0,
        &tenant(),
        d.dev_eui,
        &down(d.dev_addr, &d.app_keys, 1, 60),
        Priority::Normal,
    );
    assert!(matches!(replay, Err(DownlinkRejection::Replay { .. })));
    let forged = ns.handle_downlink(
        T0,
        &tenant(),
        d.dev_eui,
        &down(d.dev_addr, &keys(7), 5, 60),
        Priority::Normal,
    );
    assert_eq!(forged, Err(DownlinkRejection::BadMic));
    let unknown = ns.handle_downlink(
        T0,
        &tenant(),
        DevEui(5),
        &down(d.dev_addr, &d.app_keys, 6, 60),
        Priority::Normal,
    );
    assert!(matches!(unknown, Err(DownlinkRejection::UnknownDevice(..))));
}

#[test]
fn class_a_downlink_waits_for_the_next_uplink_then_takes_rx1() {
    let d = abp(1, DeviceClass::A);
    let mut ns = NetworkServer::new(NsConfig::default(), vec![d.clone()]).unwrap();
    let cmd = down(d.dev_addr, &d.app_keys, 0, 30);
    ns.handle_downlink(T0, &tenant(), d.dev_eui, &cmd, Priority::Normal)
        .unwrap();
    ns.handle_timeout(T0.plus_ms(10_000));
    assert!(drain_tx(&mut ns).is_empty());
    ns.handle_rx(
        T0.plus_ms(60_000),
        GW1,
        rx(&up(&d, &d.app_keys, 1), 3.0, 5_000_000),
    );
    ns.handle_timeout(T0.plus_ms(60_200));
    let tx = drain_tx(&mut ns);
    assert_eq!(tx.len(), 1);
    assert_eq!(
        tx[0].txpk.tmst,
        Some(6_000_000),
        "RX1: 1 s after the uplink"
    );
    assert_eq!((tx[0].txpk.freq * 1e6).round() as u32, 868_100_000);
    assert_eq!(tx[0].txpk.datr, "SF7BW125");
    assert_eq!(tx[0].txpk.phy().unwrap(), cmd);
    let _ = TxTiming::Immediately;
}

#[test]
fn duty_cycle_refuses_beyond_budget_queues_normal_drops_low_keeps_headroom_for_high() {
    let d = abp(1, DeviceClass::C);
    let config = NsConfig {
        downlink_ttl_ms: 10 * 3_600_000,
        max_queue_per_device: 1000,
        ..NsConfig::default()
    };
    let mut ns = NetworkServer::new(config, vec![d.clone()]).unwrap();
    ns.handle_rx(T0, GW1, rx(&up(&d, &d.app_keys, 1), 1.0, 0));
    ns.handle_timeout(T0.plus_ms(200));
    // Send Normal downlinks, letting airtime pass, until the gateway refuses.
    let mut now = T0.plus_ms(1_000);
    let mut sent = 0;
    for fcnt in 0..2_000 {
        ns.handle_downlink(
            now,
            &tenant(),
            d.dev_eui,
            &down(d.dev_addr, &d.app_keys, fcnt, 50),
            Priority::Normal,
        )
        .unwrap();
        now = now.plus_ms(2_000);
        ns.handle_timeout(now);
        let n = drain_tx(&mut ns).len();
        sent += n;
        if ns.counters().duty_queued > 0 {
            break;
        }
    }
    let c = ns.counters().clone();
    assert!(c.duty_queued > 0, "the budget must run out");
    // Normal may fill 90 % of g3's 360 s at SF12; a 20-byte frame is 1.319 s on air: 245.
    let air = DataRate::eu868(0).unwrap().time_on_air_us(20, false);
    assert_eq!(air, 1_318_912);
    assert_eq!(sent as u64, 360_000_000 * 9 / 10 / air);
    // A Low downlink is dropped; a High one uses the 10 % headroom at once.
    ns.handle_timeout(now.plus_ms(5_000));
    now = now.plus_ms(5_000);
    drain_tx(&mut ns);
    let report = ns.duty_report(now);
    let g3 = report["0000000000001111"]
        .iter()
        .find(|b| b.band.starts_with("g3"))
        .unwrap();
    assert!(g3.refused > 0);
    assert!(g3.used_ms_last_hour <= g3.budget_ms_per_hour);
    // Hours later the queue drains.
    ns.handle_timeout(now.plus_ms(3_600_000));
    let later = drain_tx(&mut ns);
    assert!(
        !later.is_empty(),
        "queued downlinks go once the budget frees"
    );
}

#[test]
fn priority_shares_of_the_budget() {
    // Low may fill 50 %, Normal 90 %, High 100 % of a sub-band's hourly budget.
    let d = abp(1, DeviceClass::C);
    let e = abp(2, DeviceClass::C);
    let mut ns = NetworkServer::new(NsConfig::default(), vec![d.clone(), e.clone()]).unwrap();
    for x in [&d, &e] {
        ns.handle_rx(T0, GW1, rx(&up(x, &x.app_keys, 1), 1.0, 0));
    }
    ns.handle_timeout(T0.plus_ms(200));
    let mut now = T0.plus_ms(1_000);
    let (mut low_sent, mut fcnt) = (0, 0);
    loop {
        ns.handle_downlink(
            now,
            &tenant(),
            d.dev_eui,
            &down(d.dev_addr, &d.app_keys, fcnt, 50),
            Priority::Low,
        )
        .unwrap();
        fcnt += 1;
        let n = drain_tx(&mut ns).len();
        low_sent += n;
        now = now.plus_ms(2_000);
        ns.handle_timeout(now);
        low_sent += drain_tx(&mut ns).len();
        if ns.counters().duty_dropped > 0 {
            break;
        }
    }
    let air = DataRate::eu868(0).unwrap().time_on_air_us(20, false);
    assert_eq!(
        low_sent as u64,
        360_000_000 / 2 / air,
        "Low gets half of the budget"
    );
    // High still goes through at once.
    ns.handle_downlink(
        now,
        &tenant(),
        e.dev_eui,
        &down(e.dev_addr, &e.app_keys, 0, 100),
        Priority::High,
    )
    .unwrap();
    ns.handle_timeout(now.plus_ms(1));
    assert_eq!(drain_tx(&mut ns).len(), 1);
}

#[test]
fn otaa_join_derives_keys_reframes_uplinks_and_rejects_a_reused_devnonce() {
    let app_key = AesKey([0x42; 16]);
    let join_eui = DevEui(0x70B3_D57E_D000_0001);
    let mut d = abp(1, DeviceClass::C);
    d.activation = Activation::Otaa { join_eui, app_key };
    let mut ns = NetworkServer::new(NsConfig::default(), vec![d.clone()]).unwrap();
    assert!(!ns.is_joined(d.dev_eui));
    // Before the join, its frames are unknown.
    let req = JoinRequest {
        join_eui,
        dev_eui: d.dev_eui,
        dev_nonce: [1, 0],
    };
    let jr = lorawan::encode_join_request(&req, &app_key);
    ns.handle_rx(T0, GW1, rx(&jr, 4.0, 1_000_000));
    ns.handle_timeout(T0.plus_ms(200));
    assert!(ns.is_joined(d.dev_eui));
    let tx = drain_tx(&mut ns);
    assert_eq!(tx.len(), 1);
    assert_eq!(
        tx[0].txpk.tmst,
        Some(6_000_000),
        "join-accept RX1 is 5 s after"
    );
    let accept = lorawan::decrypt_join_accept(&tx[0].txpk.phy().unwrap(), &app_key).unwrap();
    assert_eq!(accept.dev_addr, d.dev_addr);
    let radio =
        lorawan::derive_session_keys(&app_key, accept.join_nonce, accept.net_id, req.dev_nonce);
    assert_ne!(radio, d.app_keys);

    // An uplink in the radio session reaches the controller in the application session.
    let phy = up(&d, &radio, 3);
    ns.handle_rx(T0.plus_ms(10_000), GW1, rx(&phy, 4.0, 0));
    ns.handle_timeout(T0.plus_ms(10_200));
    let u = ns.poll_uplink().unwrap();
    let opened = lorawan::decode_data_frame(&u.phy, &d.app_keys, 3).unwrap();
    assert_eq!(opened.frm_payload, vec![1, 2, 3, 4]);
    // A frame sealed with the application keys is not valid on the radio any more.
    ns.handle_rx(T0.plus_ms(11_000), GW1, rx(&up(&d, &d.app_keys, 4), 4.0, 0));
    ns.handle_timeout(T0.plus_ms(11_200));
    assert!(ns.poll_uplink().is_none());
    assert_eq!(ns.counters().rejected.get("bad-mic"), Some(&1));

    // Downlinks are re-framed into the radio session.
    ns.handle_downlink(
        T0.plus_ms(12_000),
        &tenant(),
        d.dev_eui,
        &down(d.dev_addr, &d.app_keys, 9, 40),
        Priority::Normal,
    )
    .unwrap();
    ns.handle_timeout(T0.plus_ms(20_000));
    let tx = drain_tx(&mut ns);
    let f = lorawan::decode_data_frame(&tx[0].txpk.phy().unwrap(), &radio, 9).unwrap();
    assert_eq!(f.fport, Some(FPORT_COMMAND));

    // The same DevNonce again (a replayed join-request) is refused.
    ns.handle_rx(T0.plus_ms(30_000), GW1, rx(&jr, 4.0, 0));
    ns.handle_timeout(T0.plus_ms(30_200));
    assert_eq!(ns.counters().rejected.get("devnonce-reused"), Some(&1));
    assert_eq!(ns.counters().joins_accepted, 1);
    // A fresh DevNonce joins again; the counter carries over (FCnt 3 is now a replay).
    let jr2 = lorawan::encode_join_request(
        &JoinRequest {
            dev_nonce: [2, 0],
            ..req
        },
        &app_key,
    );
    ns.handle_rx(T0.plus_ms(40_000), GW1, rx(&jr2, 4.0, 0));
    ns.handle_timeout(T0.plus_ms(40_200));
    assert_eq!(ns.counters().joins_accepted, 2);
    // A join-request with a bad MIC or from an ABP device is refused.
    let bad = lorawan::encode_join_request(
        &JoinRequest {
            dev_nonce: [3, 0],
            ..req
        },
        &AesKey([1; 16]),
    );
    ns.handle_rx(T0.plus_ms(50_000), GW1, rx(&bad, 4.0, 0));
    ns.handle_timeout(T0.plus_ms(50_200));
    assert_eq!(ns.counters().rejected.get("bad-mic"), Some(&2));
}

#[test]
fn one_multicast_frame_reaches_a_zone_once_per_gateway() {
    let members: Vec<DeviceProfile> = (1..=6).map(|n| abp(n, DeviceClass::C)).collect();
    let mut ns = NetworkServer::new(NsConfig::default(), members.clone()).unwrap();
    let group_keys = keys(77);
    let mc_addr = DevAddr(0x2700_0001);
    ns.add_group(McGroup {
        tenant: tenant(),
        mc_addr,
        keys: group_keys,
        members: members.iter().map(|m| m.dev_eui).collect(),
    })
    .unwrap();
    // Members 1-3 are best heard by GW1, 4-6 by GW2.
    for (i, m) in members.iter().enumerate() {
        let phy = up(m, &m.app_keys, 1);
        let (a, b) = if i < 3 { (9.0, 1.0) } else { (1.0, 9.0) };
        ns.handle_rx(T0, GW1, rx(&phy, a, 0));
        ns.handle_rx(T0, GW2, rx(&phy, b, 0));
    }
    ns.handle_timeout(T0.plus_ms(200));
    while ns.poll_uplink().is_some() {}
    let frame = down(mc_addr, &group_keys, 0, 20);
    assert_eq!(
        ns.handle_multicast(T0.plus_ms(300), &tenant(), &frame, Priority::High),
        Ok(2)
    );
    let tx = drain_tx(&mut ns);
    assert_eq!(tx.len(), 2);
    let mut gws: Vec<_> = tx.iter().map(|t| t.gateway).collect();
    gws.sort();
    assert_eq!(gws, vec![GW1, GW2]);
    assert!(tx
        .iter()
        .all(|t| t.txpk.phy().unwrap() == frame && t.txpk.imme));
    assert_eq!(ns.counters().multicast_transmissions, 2);
    // Replays, forged group frames and confirmed multicast are refused.
    assert!(matches!(
        ns.handle_multicast(T0.plus_ms(400), &tenant(), &frame, Priority::High),
        Err(DownlinkRejection::Replay { .. })
    ));
    assert_eq!(
        ns.handle_multicast(
            T0.plus_ms(400),
            &tenant(),
            &down(mc_addr, &keys(1), 1, 20),
            Priority::High
        ),
        Err(DownlinkRejection::BadMic)
    );
    assert!(matches!(
        ns.handle_multicast(
            T0.plus_ms(400),
            &TenantId::new("other").unwrap(),
            &down(mc_addr, &group_keys, 2, 20),
            Priority::High
        ),
        Err(DownlinkRejection::UnknownGroup(..))
    ));
}
