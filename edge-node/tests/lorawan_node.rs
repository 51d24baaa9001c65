//! The edge-node core and the network server talking LoRaWAN to each other, both sans-IO,
//! in virtual time: OTAA joins, Class A receive windows, Class C, multicast, and DevNonces
//! that survive a restart of either side.

use lamplighter_broker::gateways::GatewayRegistry;
use lamplighter_broker::gwmp::{GatewayEui, RxFrame};
use lamplighter_broker::netserver::*;
use lamplighter_edge::core::{
    DownlinkError, LorawanClass, MulticastSession, NodeConfig, NodeCore, OtaaKeys,
    CLASS_A_WINDOW_MS,
};
use lamplighter_protocol::lorawan::radio::DataRate;
use lamplighter_protocol::lorawan::{self, AesKey, DataFrame, FCtrl, MType, SessionKeys};
use lamplighter_protocol::payload::{Command, StatusReport, FPORT_COMMAND};
use lamplighter_protocol::{DevAddr, DevEui, TenantId, UnixMs};

// Noon in winter at Cambridge, Massachusetts (17:00 UTC): the fail-safe profile keeps the
// lamp off, so any level seen came from a command.
const T0: UnixMs = UnixMs(1_734_886_800_000);
const GW: GatewayEui = GatewayEui(0xAA55_5A00_0000_0101);
const JOIN_EUI: DevEui = DevEui(0x70B3_D57E_D000_0000);

fn tenant() -> TenantId {
    TenantId::new("cambridge").unwrap()
}

fn app_keys(n: u8) -> SessionKeys {
    SessionKeys {
        nwk_s_key: AesKey([n; 16]),
        app_s_key: AesKey([n ^ 0x5a; 16]),
    }
}

fn app_key(n: u8) -> AesKey {
    AesKey([n.wrapping_mul(7).wrapping_add(1); 16])
}

/// The node and the network server's view of it.
fn otaa_pair(n: u8, class: LorawanClass) -> (NodeConfig, DeviceProfile) {
    let dev_eui = DevEui(0xE000 + u64::from(n));
    let dev_addr = DevAddr(0x2600_0000 + u32::from(n));
    // Before its first join the node's session fields are placeholders.
    let mut node = NodeConfig::new(dev_eui, DevAddr(0), app_keys(0), 42.37, -71.11);
    node.class = class;
    node.otaa = Some(OtaaKeys {
        join_eui: JOIN_EUI,
        app_key: app_key(n),
    });
    let profile = DeviceProfile {
        tenant: tenant(),
        dev_eui,
        class: match class {
            LorawanClass::A => DeviceClass::A,
            LorawanClass::C => DeviceClass::C,
        },
        dev_addr,
        app_keys: app_keys(n),
        activation: Activation::Otaa {
            join_eui: JOIN_EUI,
            app_key: app_key(n),
        },
        last_fcnt_up: None,
    };
    (node, profile)
}

fn heard(phy: &[u8]) -> RxFrame {
    RxFrame {
        phy: phy.to_vec(),
        tmst: 0,
        freq_hz: 868_100_000,
        datr: DataRate::eu868(5).unwrap(),
        rssi_dbm: -95,
        snr_db: 4.0,
    }
}

/// One frame from the node to the network server; the server's window closes 300 ms later.
/// Returns the uplinks and the PHYPayloads of the downlinks it sends.
fn air_up(ns: &mut NetworkServer, now: UnixMs, phy: &[u8]) -> (Vec<Uplink>, Vec<Vec<u8>>) {
    ns.handle_rx(now, GW, heard(phy));
    ns.handle_timeout(now.plus_ms(300));
    let ups = std::iter::from_fn(|| ns.poll_uplink()).collect();
    (ups, drain(ns))
}

fn drain(ns: &mut NetworkServer) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| ns.poll_transmit())
        .map(|t| t.txpk.phy().expect("the server's own txpk decodes"))
        .collect()
}

fn set_level(addr: DevAddr, keys: &SessionKeys, fcnt: u32, level_pct: u8) -> Vec<u8> {
    lorawan::encode_data_frame(
        &DataFrame {
            mtype: MType::UnconfirmedDataDown,
            dev_addr: addr,
            fctrl: FCtrl::default(),
            fcnt,
            fopts: vec![],
            fport: Some(FPORT_COMMAND),
            frm_payload: Command::SetLevel {
                level_pct,
                ramp_ms: 0,
                hold_s: 0,
            }
            .encode()
            .unwrap(),
        },
        keys,
    )
    .unwrap()
}

/// Joins `node` through `ns`; returns the instant the join completed.
fn join(node: &mut NodeCore, ns: &mut NetworkServer, at: UnixMs) -> UnixMs {
    let request = node
        .poll_transmit(at)
        .expect("an unjoined node asks to join");
    assert_eq!(request.len(), lorawan::JOIN_REQUEST_LEN);
    let (ups, downs) = air_up(ns, at, &request);
    assert!(ups.is_empty(), "a join is not an application uplink");
    assert_eq!(downs.len(), 1, "one JoinAccept");
    let t = at.plus_ms(5_000);
    node.handle_downlink(t, &downs[0])
        .expect("the JoinAccept opens");
    t
}

#[test]
fn an_otaa_node_joins_reports_in_its_new_session_and_is_commanded() {
    let (config, profile) = otaa_pair(1, LorawanClass::C);
    let mut ns = NetworkServer::new(NsConfig::default(), vec![profile.clone()]).unwrap();
    let mut node = NodeCore::new(config, T0, 0, 0.0);
    assert!(!node.is_joined());
    // Until it joins, the node sends nothing but JoinRequests, backing off.
    let first = node.poll_transmit(T0).unwrap();
    assert!(node.poll_transmit(T0.plus_ms(5_000)).is_none());
    let second = node.poll_transmit(T0.plus_ms(10_000)).unwrap();
    assert!(
        node.poll_transmit(T0.plus_ms(25_000)).is_none(),
        "doubled gap"
    );
    assert_ne!(first, second, "each request has its own DevNonce");
    assert_eq!(node.next_dev_nonce(), 2);

    let joined_at = join(&mut node, &mut ns, T0.plus_ms(30_000));
    assert!(node.is_joined());
    assert_eq!(node.config().dev_addr, profile.dev_addr);
    assert!(ns.is_joined(profile.dev_eui));
    assert_eq!(
        ns.poll_dev_nonce(),
        Some((profile.dev_eui, 2u16.to_le_bytes()))
    );

    // The node reports at once in its new session; the network server re-seals the frame
    // with the application keys the controller holds.
    let report = node
        .poll_transmit(joined_at)
        .expect("a report right after joining");
    let (ups, _) = air_up(&mut ns, joined_at, &report);
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0].fcnt, 0, "a new session counts from 0");
    let opened = lorawan::decode_data_frame(&ups[0].phy, &profile.app_keys, 0).unwrap();
    StatusReport::decode(&opened.frm_payload).expect("our own report");

    // A command sealed by the controller reaches the node re-sealed in its session.
    let t = joined_at.plus_ms(1_000);
    ns.handle_downlink(
        t,
        &tenant(),
        profile.dev_eui,
        &set_level(profile.dev_addr, &profile.app_keys, 0, 80),
        Priority::Normal,
    )
    .unwrap();
    let downs = drain(&mut ns);
    assert_eq!(downs.len(), 1, "Class C: at once");
    node.handle_downlink(t.plus_ms(100), &downs[0]).unwrap();
    assert_eq!(node.target_pct(), 80.0);
}

#[test]
fn a_node_that_forgets_its_devnonce_counter_is_refused_and_one_that_keeps_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (config, profile) = otaa_pair(2, LorawanClass::C);
    // First life of both: a join, and the server stores the nonce it accepted.
    {
        let registry = GatewayRegistry::open(dir.path()).unwrap();
        let mut ns = NetworkServer::new(NsConfig::default(), vec![profile.clone()]).unwrap();
        let mut node = NodeCore::new(config.clone(), T0, 0, 0.0);
        join(&mut node, &mut ns, T0);
        while let Some((eui, nonce)) = ns.poll_dev_nonce() {
            registry.record_dev_nonce(eui, nonce, T0.0).unwrap();
        }
    }
    // Both restart. The server restores the nonces it stored.
    let registry = GatewayRegistry::open(dir.path()).unwrap();
    let mut ns = NetworkServer::new(NsConfig::default(), vec![profile.clone()]).unwrap();
    assert!(ns.restore_dev_nonces(
        profile.dev_eui,
        registry.dev_nonces(profile.dev_eui).unwrap()
    ));
    let t = T0.plus_ms(3_600_000);

    // A node that lost its counter repeats DevNonce 0: refused (it could be a replay).
    let mut amnesiac = NodeCore::new(config.clone(), t, 0, 0.0);
    let request = amnesiac.poll_transmit(t).unwrap();
    let (_, downs) = air_up(&mut ns, t, &request);
    assert!(downs.is_empty());
    assert_eq!(ns.counters().rejected.get("devnonce-reused"), Some(&1));
    assert!(!ns.is_joined(profile.dev_eui));

    // One that kept its counter (as the agent persists it) joins.
    let mut node = NodeCore::new(config, t, 0, 0.0);
    node.set_next_dev_nonce(1);
    join(&mut node, &mut ns, t.plus_ms(60_000));
    assert!(node.is_joined() && ns.is_joined(profile.dev_eui));
}

#[test]
fn a_class_a_node_takes_a_downlink_only_in_its_receive_windows() {
    let (config, profile) = otaa_pair(3, LorawanClass::A);
    let mut ns = NetworkServer::new(NsConfig::default(), vec![profile.clone()]).unwrap();
    let mut node = NodeCore::new(config, T0, 0, 0.0);
    let joined_at = join(&mut node, &mut ns, T0);
    let report = node.poll_transmit(joined_at).unwrap();
    air_up(&mut ns, joined_at, &report);

    // The controller's command waits in the server for the node's next uplink.
    let t = joined_at.plus_ms(10_000);
    ns.handle_downlink(
        t,
        &tenant(),
        profile.dev_eui,
        &set_level(profile.dev_addr, &profile.app_keys, 0, 60),
        Priority::Normal,
    )
    .unwrap();
    assert!(drain(&mut ns).is_empty(), "no window open");
    let (up_at, report) = (1..=700u64)
        .map(|s| t.plus_ms(s * 1000))
        .find_map(|at| node.poll_transmit(at).map(|f| (at, f)))
        .expect("a periodic report within two intervals");
    let (_, downs) = air_up(&mut ns, up_at, &report);
    assert_eq!(downs.len(), 1, "sent in RX1 after the uplink");

    // Heard outside the windows, the frame is not taken (and does not burn its counter) ...
    let late = up_at.plus_ms(CLASS_A_WINDOW_MS + 1);
    assert_eq!(
        node.handle_downlink(late, &downs[0]),
        Err(DownlinkError::OutsideReceiveWindow)
    );
    // ... in RX1 it is.
    node.handle_downlink(up_at.plus_ms(1_000), &downs[0])
        .unwrap();
    assert_eq!(node.target_pct(), 60.0);
}

#[test]
fn one_multicast_frame_dims_every_member_and_only_members() {
    let group_keys = app_keys(200);
    let mc_addr = DevAddr(0x2700_0001);
    let mut profiles = Vec::new();
    let mut nodes = Vec::new();
    for n in 10..14u8 {
        let (mut config, profile) = otaa_pair(n, LorawanClass::C);
        // Node 13 is in another zone: not a member.
        if n != 13 {
            config.multicast.push(MulticastSession {
                mc_addr,
                keys: group_keys,
            });
        }
        profiles.push(profile);
        nodes.push(NodeCore::new(config, T0, 0, 0.0));
    }
    let mut ns = NetworkServer::new(NsConfig::default(), profiles.clone()).unwrap();
    ns.add_group(McGroup {
        tenant: tenant(),
        mc_addr,
        keys: group_keys,
        members: profiles[..3].iter().map(|p| p.dev_eui).collect(),
    })
    .unwrap();
    let mut t = T0;
    for node in nodes.iter_mut() {
        t = join(node, &mut ns, t.plus_ms(1_000));
        let report = node.poll_transmit(t).unwrap();
        air_up(&mut ns, t, &report);
    }
    let t = t.plus_ms(1_000);
    let sent = ns
        .handle_multicast(
            t,
            &tenant(),
            &set_level(mc_addr, &group_keys, 0, 35),
            Priority::High,
        )
        .unwrap();
    assert_eq!(sent, 1, "one gateway serves the whole group");
    let downs = drain(&mut ns);
    assert_eq!(downs.len(), 1, "one frame on the air for the zone");
    for node in nodes.iter_mut() {
        let _ = node.handle_downlink(t.plus_ms(500), &downs[0]);
    }
    let levels: Vec<f32> = nodes.iter().map(|n| n.target_pct()).collect();
    assert_eq!(levels, vec![35.0, 35.0, 35.0, 0.0]);
    assert_eq!(nodes[0].counters().multicast_applied, 1);
    // The group counter refuses the same frame again.
    assert!(matches!(
        nodes[0].handle_downlink(t.plus_ms(600), &downs[0]),
        Err(DownlinkError::Frame(lorawan::FrameError::Replay { .. }))
    ));
}

#[test]
fn a_zone_commanded_alike_in_one_tick_gets_one_group_frame_and_a_mixed_one_does_not() {
    let group_keys = app_keys(201);
    let mc_addr = DevAddr(0xFE00_0000);
    let config = NsConfig {
        multicast_gather_ms: 250,
        ..NsConfig::default()
    };
    let mut profiles = Vec::new();
    let mut nodes = Vec::new();
    for n in 20..23u8 {
        let (mut node, profile) = otaa_pair(n, LorawanClass::C);
        node.multicast.push(MulticastSession {
            mc_addr,
            keys: group_keys,
        });
        profiles.push(profile);
        nodes.push(NodeCore::new(node, T0, 0, 0.0));
    }
    let mut ns = NetworkServer::new(config, profiles.clone()).unwrap();
    ns.add_group(McGroup {
        tenant: tenant(),
        mc_addr,
        keys: group_keys,
        members: profiles.iter().map(|p| p.dev_eui).collect(),
    })
    .unwrap();
    let mut t = T0;
    for node in nodes.iter_mut() {
        t = join(node, &mut ns, t.plus_ms(1_000));
        let report = node.poll_transmit(t).unwrap();
        air_up(&mut ns, t, &report);
    }

    // The controller's tick: the same level for every lamp of the zone, each frame sealed
    // with that lamp's own keys and counter.
    let tick = t.plus_ms(1_000);
    let mut downs = Vec::new();
    for (k, p) in profiles.iter().enumerate() {
        let frame = set_level(p.dev_addr, &p.app_keys, 0, 30);
        ns.handle_downlink(
            tick.plus_ms(k as u64),
            &tenant(),
            p.dev_eui,
            &frame,
            Priority::Normal,
        )
        .unwrap();
        downs.extend(drain(&mut ns));
        if k < 2 {
            assert!(downs.is_empty(), "gathering the zone's commands");
        }
    }
    ns.handle_timeout(tick.plus_ms(250));
    downs.extend(drain(&mut ns));
    assert_eq!(downs.len(), 1, "one group frame, not three unicasts");
    assert_eq!(ns.counters().coalesced_downlinks, 3);
    for node in nodes.iter_mut() {
        node.handle_downlink(tick.plus_ms(300), &downs[0]).unwrap();
        assert_eq!(node.target_pct(), 30.0);
        assert_eq!(node.counters().multicast_applied, 1);
    }

    // Next tick one lamp differs (a road user near it): every lamp gets its own frame.
    let tick = tick.plus_ms(10_000);
    for (k, p) in profiles.iter().enumerate() {
        let level = if k == 1 { 100 } else { 20 };
        let frame = set_level(p.dev_addr, &p.app_keys, 1, level);
        ns.handle_downlink(tick, &tenant(), p.dev_eui, &frame, Priority::Normal)
            .unwrap();
    }
    let mut downs = Vec::new();
    // One radio per gateway: the three frames leave one after another.
    for ms in (250..20_000).step_by(250) {
        ns.handle_timeout(tick.plus_ms(ms));
        downs.extend(drain(&mut ns));
    }
    assert_eq!(downs.len(), 3, "unicasts");
    assert_eq!(ns.counters().coalesced_downlinks, 3, "unchanged");
    for node in nodes.iter_mut() {
        for d in &downs {
            let _ = node.handle_downlink(tick.plus_ms(20_000), d);
        }
    }
    let levels: Vec<f32> = nodes.iter().map(|n| n.target_pct()).collect();
    assert_eq!(levels, vec![20.0, 100.0, 20.0]);
}
