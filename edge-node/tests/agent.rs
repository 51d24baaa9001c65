//! The agent as it runs on a column: configured from its TOML file, connected to a real
//! (embedded) MQTT broker on loopback, reporting, and obeying only genuine commands.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lamplighter_edge::agent::{run_node, NodeProbe};
use lamplighter_edge::config::EdgeConfig;
use lamplighter_edge::core::NodeCore;
use lamplighter_edge::hardware::SimulatedLamp;
use lamplighter_protocol::lorawan::{self, AesKey, DataFrame, FCtrl, MType, SessionKeys};
use lamplighter_protocol::payload::{Command, StatusReport, FPORT_COMMAND};
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{topics, UnixMs};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const NODE_TOML: &str = r#"
dev_eui = "70B3D5E012345678"
dev_addr = "01ABCDEF"
nwk_s_key = "00112233445566778899aabbccddeeff"
app_s_key = "ffeeddccbbaa99887766554433221100"
latitude = 51.4545
longitude = -2.5879
report_interval_s = 60
state_file = "unused"

[mqtt]
host = "127.0.0.1"
port = PORT
username = "node-70B3D5E012345678"
password = "PASSWORD"
tenant = "bath"
"#;

fn start_broker() -> std::net::SocketAddr {
    let auth: lamplighter_broker::Authenticator = Arc::new(|_client, user, pass| {
        matches!(
            (user, pass),
            ("node-70B3D5E012345678", "right") | ("observer", "observer-pass")
        )
    });
    lamplighter_broker::start(&lamplighter_broker::BrokerConfig::loopback(0, 16), auth)
        .unwrap()
        .listen
}

fn config(port: u16, password: &str) -> EdgeConfig {
    let text = NODE_TOML
        .replace("PORT", &port.to_string())
        .replace("PASSWORD", password);
    EdgeConfig::parse(&text, Path::new("node.toml")).unwrap()
}

fn spawn_node(cfg: &EdgeConfig, clock: ScaledClock) -> Arc<NodeProbe> {
    let core = NodeCore::new(cfg.node_config(), clock.now(), 0, 0.0);
    let lamp = SimulatedLamp::new(cfg.latitude, cfg.longitude, cfg.rated_power_w);
    let probe = Arc::new(NodeProbe::default());
    let (_tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(run_node(
        core,
        lamp,
        cfg.mqtt_link(),
        clock,
        rx,
        probe.clone(),
    ));
    // Keep the presence channel open for the node's life.
    std::mem::forget(_tx);
    probe
}

fn command_frame(keys: &SessionKeys, fcnt: u32, level_pct: u8) -> Vec<u8> {
    lorawan::encode_data_frame(
        &DataFrame {
            mtype: MType::UnconfirmedDataDown,
            dev_addr: lamplighter_protocol::DevAddr(0x01AB_CDEF),
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

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_and_obeys_only_genuine_commands() {
    let addr = start_broker();
    let cfg = config(addr.port(), "right");
    // 2024-12-21 22:00 UTC, ten times real time: the first report comes within a second.
    let clock = ScaledClock::starting_at(UnixMs(1_734_818_400_000), 10.0);

    let mut opts = MqttOptions::new("observer", addr.ip().to_string(), addr.port());
    opts.set_credentials("observer", "observer-pass");
    let (observer, mut events) = AsyncClient::new(opts, 16);
    observer
        .subscribe("lamplighter/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let probe = spawn_node(&cfg, clock);

    let up_topic = topics::uplink(&cfg.mqtt.tenant, cfg.dev_eui);
    let keys = cfg.node_config().keys;
    let report = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = events.poll().await {
                if p.topic == up_topic {
                    return p.payload.to_vec();
                }
            }
        }
    })
    .await
    .expect("an uplink within 15 s");
    let header = lorawan::peek_header(&report).unwrap();
    let frame = lorawan::decode_data_frame(&report, &keys, header.fcnt16 as u32).unwrap();
    let status = StatusReport::decode(&frame.frm_payload).unwrap();
    // Dark at 22:00 in Bristol: the fail-safe profile's 75 % step until commanded.
    assert_eq!(status.target_level_pct, 75);

    let down_topic = topics::downlink(&cfg.mqtt.tenant, cfg.dev_eui);
    let forged_keys = SessionKeys {
        nwk_s_key: AesKey([7; 16]),
        app_s_key: keys.app_s_key,
    };
    observer
        .publish(
            &down_topic,
            QoS::AtLeastOnce,
            false,
            command_frame(&forged_keys, 1, 5),
        )
        .await
        .unwrap();
    observer
        .publish(
            &down_topic,
            QoS::AtLeastOnce,
            false,
            command_frame(&keys, 2, 30),
        )
        .await
        .unwrap();
    let drive = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    wait_for("the genuine command applied", || probe.target_pct() == 30.0).await;
    assert_eq!(probe.commands_applied.load(Ordering::Relaxed), 1);
    assert_eq!(probe.downlinks_rejected.load(Ordering::Relaxed), 1);
    drive.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_password_is_kept_out() {
    let addr = start_broker();
    let cfg = config(addr.port(), "wrong");
    let probe = spawn_node(
        &cfg,
        ScaledClock::starting_at(UnixMs(1_734_818_400_000), 10.0),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!probe.connected.load(Ordering::Relaxed));
    assert!(
        probe.uplinks.load(Ordering::Relaxed) >= 1,
        "it keeps its readings meanwhile"
    );
}
