//! The whole system in one test process: the embedded broker, the controller service with
//! its SQLite store, the dashboard, and 200 simulated nodes running the real edge-node core
//! over real MQTT on loopback, all on ephemeral ports.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lamplighter::system;
use lamplighter_edge::RoadUser;
use lamplighter_protocol::lorawan::{self, DataFrame, FCtrl, MType};
use lamplighter_protocol::payload::{self, StatusReport};
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{topics, LampId, TenantId, UnixMs};
use lamplighter_simulator::live::LiveTown;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::util::{
    live_town, one_system_at_a_time, provision_town, system_config, wait_for, SystemSlot,
};

// 2024-12-21 22:00 UTC: dark in Bristol, in the part of the night the policy dims to 50 %.
const NIGHT: UnixMs = UnixMs(1_734_818_400_000);
const SPEED: f64 = 10.0;
const LAMPS: usize = 200;

/// A started system with a town of live nodes; `_system` keeps other whole-system tests
/// waiting until this one is done.
struct Harness {
    system: system::System,
    town: LiveTown,
    nodes: Vec<lamplighter_controller::store::StoredNode>,
    clock: ScaledClock,
    _dir: tempfile::TempDir,
    _system: SystemSlot,
}

async fn start_town() -> Harness {
    let serial = one_system_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new("e2e").unwrap();
    provision_town(dir.path(), &tenant, LAMPS, 7);
    let mut config = system_config();
    config.controller.report_interval_s = 60;
    let clock = ScaledClock::starting_at(NIGHT, SPEED);
    let (system, nodes) = system::start(&config, dir.path(), clock).await.unwrap();
    let town = live_town(system.mqtt_addr, &nodes, &tenant, clock, 60, 1);
    Harness {
        system,
        town,
        nodes,
        clock,
        _dir: dir,
        _system: serial,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_at_one_lamp_raises_it_and_its_neighbours_within_seconds() {
    let h = start_town().await;
    // Every node connects and applies its first (schedule) command.
    wait_for("all nodes commanded", Duration::from_secs(60), || {
        h.town
            .probes
            .iter()
            .all(|p| p.commands_applied.load(Ordering::Relaxed) >= 1 && p.target_pct() == 50.0)
    })
    .await;

    let lamp = LampId(100);
    let neighbours = h.system.controller.with_core(|c, _| c.neighbours_of(lamp));
    assert!(!neighbours.is_empty(), "a lamp mid-street has neighbours");
    let bubble: Vec<usize> = std::iter::once(lamp)
        .chain(neighbours.iter().copied())
        .map(|l| l.0 as usize)
        .collect();

    let t0 = h.clock.now();
    assert!(h.town.detect(lamp.0 as usize, RoadUser::Pedestrian));
    wait_for("the bubble at full level", Duration::from_secs(10), || {
        bubble
            .iter()
            .all(|&i| h.town.probes[i].level_pct() == 100.0)
    })
    .await;
    // Bound in simulated time: report, decision, command and a 1 s ramp within 5 s.
    for &i in &bubble {
        let applied = UnixMs(h.town.probes[i].last_command_ms.load(Ordering::Relaxed));
        let latency_ms = applied.since(t0);
        assert!(
            latency_ms <= 4_000,
            "lamp {i}: command applied {latency_ms} ms after presence"
        );
    }
    // Lamps outside the bubble stayed at the schedule's level.
    let outside = (0..LAMPS).filter(|i| !bubble.contains(i));
    for i in outside {
        assert_eq!(
            h.town.probes[i].target_pct(),
            50.0,
            "lamp {i} outside the bubble"
        );
    }
    // The controller knows why: presence.
    let lamps = h.system.controller.lamps(None);
    for &i in &bubble {
        assert_eq!(
            lamps[i].reason,
            Some(lamplighter_controller::core::policy::Reason::Presence)
        );
    }
    h.town.stop();
    h.system.shutdown().await;
}

/// A client with valid credentials (a node's own) publishes everything a broken or
/// malicious client could: garbage, another node's frame replayed, a forged MIC, an unknown
/// DevAddr, frames on the wrong topics. Each is rejected and counted; the controller keeps
/// serving; and nothing decoded is republished on the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_mqtt_is_rejected_counted_and_harmless() {
    let h = start_town().await;
    wait_for("nodes reporting", Duration::from_secs(60), || {
        h.system.controller.summary(None).uplinks >= LAMPS as u64
    })
    .await;

    let attacker = &h.nodes[3];
    let victim = &h.nodes[4];
    let mut opts = MqttOptions::new(
        "attacker",
        h.system.mqtt_addr.ip().to_string(),
        h.system.mqtt_addr.port(),
    );
    opts.set_credentials(&attacker.mqtt_username, &attacker.mqtt_password);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    client.subscribe("#", QoS::AtMostOnce).await.unwrap();

    let report = StatusReport::decode(&{
        let mut r = vec![
            payload::VERSION,
            100,
            100,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            9,
            0,
            0,
            0,
            0,
        ];
        r.extend_from_slice(&[0; 6]);
        r
    })
    .unwrap();
    let frame = |node: &lamplighter_controller::store::StoredNode, fcnt: u32, keys| {
        lorawan::encode_data_frame(
            &DataFrame {
                mtype: MType::UnconfirmedDataUp,
                dev_addr: node.node.dev_addr,
                fctrl: FCtrl::default(),
                fcnt,
                fopts: vec![],
                fport: Some(payload::FPORT_STATUS),
                frm_payload: report.encode(),
            },
            &keys,
        )
        .unwrap()
    };
    let victim_topic = topics::uplink(&victim.node.tenant, victim.node.dev_eui);
    let mut forged_keys = victim.node.keys;
    forged_keys.nwk_s_key = attacker.node.keys.nwk_s_key;
    let mut unknown = victim.clone();
    unknown.node.dev_addr = lamplighter_protocol::DevAddr(0x01FF_FFFF);
    let attacks: Vec<(String, Vec<u8>)> = vec![
        (victim_topic.clone(), b"garbage".to_vec()),
        (victim_topic.clone(), vec![0x40; 300]),
        (victim_topic.clone(), frame(victim, 0, victim.node.keys)), // replay of FCnt 0
        (victim_topic.clone(), frame(victim, 50_000, forged_keys)),
        (victim_topic.clone(), frame(&unknown, 1, victim.node.keys)),
        (
            topics::uplink(&attacker.node.tenant, attacker.node.dev_eui),
            frame(victim, 40_000, victim.node.keys),
        ),
        ("lamplighter/e2e/up/not-an-eui".into(), b"x".to_vec()),
    ];
    let before = h.system.controller.summary(None);
    for (topic, payload) in &attacks {
        client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
    }
    // Drive the attacker's connection and watch everything on the broker meanwhile.
    let mut seen_topics = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
            tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await
        {
            seen_topics.push(p.topic);
        }
        if h.system.controller.summary(None).rejected >= before.rejected + attacks.len() as u64 {
            break;
        }
    }
    let after = h.system.controller.summary(None);
    assert_eq!(
        after.rejected - before.rejected,
        attacks.len() as u64,
        "{after:?}"
    );
    for kind in [
        "malformed",
        "replay",
        "bad-mic",
        "unknown-devaddr",
        "topic-mismatch",
        "topic",
    ] {
        assert!(
            after.rejected_by_reason.get(kind).copied().unwrap_or(0) >= 1,
            "{kind}: {after:?}"
        );
    }
    // Only frames travel on the broker: uplinks and downlinks on their topics (and the
    // controller's authenticated acks, FCnt and MIC only), no decoded readings anywhere.
    assert!(
        seen_topics
            .iter()
            .all(|t| t.contains("/up/") || t.contains("/down/") || t.contains("/ack/")),
        "{seen_topics:?}"
    );

    // The system still works: the victim's lamp reacts to its own genuine presence report.
    assert!(h.town.detect(4, RoadUser::Cyclist));
    wait_for("victim raised", Duration::from_secs(10), || {
        h.town.probes[4].target_pct() == 100.0
    })
    .await;

    // The broker refuses strangers and wrong passwords.
    for (user, pass) in [("nobody", "x"), (attacker.mqtt_username.as_str(), "wrong")] {
        let mut opts = MqttOptions::new(
            "stranger",
            h.system.mqtt_addr.ip().to_string(),
            h.system.mqtt_addr.port(),
        );
        opts.set_credentials(user, pass);
        let (_c, mut ev) = AsyncClient::new(opts, 10);
        let refused = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return false,
                    Err(_) => return true,
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or(false);
        assert!(refused, "{user} connected");
    }
    h.town.stop();
    h.system.shutdown().await;
}
