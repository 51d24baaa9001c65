//! A council on its own ChirpStack: the system reads the network's uplink events from that
//! network's MQTT broker and sends commands through its command topic. The "ChirpStack
//! broker" is a second real MQTT broker on loopback (rumqttd); the test publishes and reads
//! ChirpStack v4's JSON on it as ChirpStack would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use lamplighter::system::{self, SystemConfig};
use lamplighter_broker::external::NetworkKind;
use lamplighter_broker::external_link::ExternalNetwork;
use lamplighter_controller::core::policy::PolicyConfig;
use lamplighter_controller::store::{NewNode, Store};
use lamplighter_protocol::payload::{Command, StatusReport};
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{LampId, TenantId, UnixMs, ZoneId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

// 2024-12-21 22:00 UTC: dark at the lamps.
const NIGHT: UnixMs = UnixMs(1_734_818_400_000);
const APPLICATION: &str = "b1c5a3a0-7f0e-4c57-9a8d-2f1d1b3e0c11";

fn report(energy_dwh: u32) -> StatusReport {
    crate::util::status_report(energy_dwh, NIGHT.as_secs() as u32)
}

fn chirpstack_uplink(dev_eui: &str, fcnt: u32, payload: &[u8]) -> String {
    serde_json::json!({
        "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        "time": "2024-12-21T22:00:05Z",
        "deviceInfo": {"tenantId": "t", "applicationId": APPLICATION, "devEui": dev_eui,
                       "deviceName": "lamp"},
        "devAddr": "00000000", "adr": true, "dr": 5, "fCnt": fcnt, "fPort": 10,
        "confirmed": false,
        "data": base64::engine::general_purpose::STANDARD.encode(payload),
        "rxInfo": [{"gatewayId": "aa555a0000000101", "uplinkId": 1, "rssi": -80, "snr": 7.5}],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chirpstack_tenant_reports_and_is_commanded_through_its_network() {
    let _system = crate::util::one_system_at_a_time();
    let chirpstack = lamplighter_broker::start(
        &lamplighter_broker::BrokerConfig::loopback(0, 16),
        Arc::new(|_, _, _| true),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new("cs-council").unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let new: Vec<NewNode> = (0..3)
        .map(|i| NewNode {
            lamp: LampId(i),
            tenant: tenant.clone(),
            zone: ZoneId(1),
            lat: 51.4545 + i as f64 * 1e-4,
            lon: -2.5879,
            rated_power_w: 40.0,
        })
        .collect();
    store.provision(&new).unwrap();
    let nodes = store.nodes().unwrap();
    drop(store);

    let mut config = SystemConfig::default();
    config.mqtt_listen.set_port(0);
    config.http_listen.set_port(0);
    config.controller.policy = PolicyConfig::named("full").unwrap();
    config.external_networks = vec![ExternalNetwork {
        tenant: tenant.clone(),
        kind: NetworkKind::Chirpstack,
        host: chirpstack.listen.ip().to_string(),
        port: chirpstack.listen.port(),
        username: Some("lamplighter".into()),
        password: Some("secret".into()),
        application: APPLICATION.into(),
    }];
    config.validate().unwrap();

    // ChirpStack's side: an integration client that reads command topics.
    let mut options = MqttOptions::new("chirpstack", "127.0.0.1", chirpstack.listen.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_credentials("chirpstack", "integration");
    let (network, mut network_loop) = AsyncClient::new(options, 100);
    network
        .subscribe(
            format!("application/{APPLICATION}/device/+/command/down"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    let (commands_tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match network_loop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = commands_tx.send((p.topic, p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });

    let clock = ScaledClock::starting_at(NIGHT, 1.0);
    let (system, _) = system::start(&config, dir.path(), clock).await.unwrap();

    // `full` at night: every lamp is commanded to 100 %, through ChirpStack's command topic
    // for its DevEUI, as ChirpStack's JSON with our command payload.
    let mut commanded = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while commanded.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((topic, payload))) = tokio::time::timeout(left, commands.recv()).await else {
            panic!(
                "a command for every lamp within 20 s; got {commanded:?}; link {:?}; controller {:?}",
                system.external_links[0].report(),
                system.controller.summary(None)
            );
        };
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let eui = v["devEui"].as_str().unwrap().to_string();
        assert_eq!(
            topic,
            format!("application/{APPLICATION}/device/{eui}/command/down")
        );
        assert_eq!(v["fPort"], 11);
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().unwrap())
            .unwrap();
        match Command::decode(&data).unwrap() {
            Command::SetLevel { level_pct, .. } => assert_eq!(level_pct, 100),
            other => panic!("unexpected command {other:?}"),
        }
        commanded.insert(eui);
    }
    let euis: std::collections::HashSet<String> = nodes
        .iter()
        .map(|s| s.node.dev_eui.to_string().to_ascii_lowercase())
        .collect();
    assert_eq!(commanded, euis);

    // Their uplink events reach the controller as our frames; bad ones are refused and
    // counted without stopping the link.
    let lamp0 = nodes[0].node.dev_eui.to_string().to_ascii_lowercase();
    let up_topic = format!("application/{APPLICATION}/device/{lamp0}/event/up");
    for payload in [
        chirpstack_uplink(&lamp0, 1, &report(10).encode()),
        "{not json".to_string(),
        chirpstack_uplink("8899aabbccddeeff", 1, &report(10).encode()),
        chirpstack_uplink(&lamp0, 2, &report(25).encode()),
    ] {
        network
            .publish(&up_topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = system.controller.summary(Some(&tenant));
        if s.uplinks >= 2 && s.lamps_online == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "uplinks did not arrive: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = system.external_links[0].report();
    assert_eq!(report.uplinks_passed, 2, "{report:?}");
    assert_eq!(report.uplinks_refused.get("shape"), Some(&1), "{report:?}");
    assert_eq!(
        report.uplinks_refused.get("unknown-device"),
        Some(&1),
        "{report:?}"
    );
    assert!(report.downlinks_passed >= 3, "{report:?}");
    assert_eq!(system.controller.summary(None).rejected, 0);
    system.shutdown().await;
}
