//! Field realities of councils' own LoRaWAN networks (issue 24), against a real Mosquitto
//! that each test starts on a free loopback port: OTAA re-joins, a restart of `serve` while
//! the network goes on publishing, and an outage of the network's broker while the
//! controller goes on commanding. Every reading and command is counted at both ends: what
//! the network published against what the controller accepted, what the controller sent
//! against what the network received.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command as Process};
use std::time::{Duration, Instant};

use base64::Engine;
use lamplighter::system::{self, System, SystemConfig};
use lamplighter_broker::external::NetworkKind;
use lamplighter_broker::external_link::ExternalNetwork;
use lamplighter_controller::core::policy::PolicyConfig;
use lamplighter_controller::store::{NewNode, Store, StoredNode};
use lamplighter_protocol::payload::{Command, Presence, StatusReport};
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{LampId, TenantId, UnixMs, ZoneId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::util::{free_port, one_system_at_a_time};

// 2024-12-21 22:00 UTC: dark at the lamps.
const NIGHT: UnixMs = UnixMs(1_734_818_400_000);
const APPLICATION: &str = "b1c5a3a0-7f0e-4c57-9a8d-2f1d1b3e0c11";
const TTS_APPLICATION: &str = "lights@council";

/// A real Mosquitto on a loopback port, persisting its sessions in `dir`; killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &Path, port: u16) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        // Started as root, Mosquitto becomes user `mosquitto` unless told to stay who it
        // is; that user could not write its sessions into our temporary folder.
        let user = Process::new("id").arg("-un").output().unwrap();
        let user = String::from_utf8_lossy(&user.stdout).trim().to_string();
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nlog_dest none\nuser {user}\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Process::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .spawn()
            .expect("Mosquitto at /usr/sbin/mosquitto (apt-get install mosquitto)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child, port }
    }

    /// Stops it as an operator would (SIGTERM: it saves its sessions) and waits.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Process::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report(energy_dwh: u32, reading_time_s: u32) -> StatusReport {
    crate::util::status_report(energy_dwh, reading_time_s)
}

fn chirpstack_uplink(dev_eui: &str, fcnt: u32, payload: &[u8]) -> String {
    serde_json::json!({
        "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        "time": "2024-12-21T22:00:05Z",
        "deviceInfo": {"tenantId": "t", "applicationId": APPLICATION, "devEui": dev_eui},
        "devAddr": "00000000", "fCnt": fcnt, "fPort": 10, "confirmed": false,
        "data": base64::engine::general_purpose::STANDARD.encode(payload),
        "rxInfo": [{"gatewayId": "aa555a0000000101", "rssi": -80, "snr": 7.5}],
    })
    .to_string()
}

fn chirpstack_join(dev_eui: &str) -> String {
    serde_json::json!({
        "deduplicationId": "6b1e6f7c-2f4b-4d1d-8f3e-0d0b7a0e9c11",
        "time": "2024-12-21T22:01:00Z",
        "deviceInfo": {"tenantId": "t", "applicationId": APPLICATION, "devEui": dev_eui},
        "devAddr": "01ab23cd",
    })
    .to_string()
}

fn tts_uplink(device_id: &str, dev_eui: &str, fcnt: u32, payload: &[u8]) -> String {
    serde_json::json!({
        "end_device_ids": {"device_id": device_id, "application_ids": {"application_id": "lights"},
                           "dev_eui": dev_eui.to_ascii_uppercase()},
        "uplink_message": {"f_port": 10, "f_cnt": fcnt,
            "frm_payload": base64::engine::general_purpose::STANDARD.encode(payload),
            "rx_metadata": [{"gateway_ids": {"gateway_id": "gw-1"}, "rssi": -70, "snr": 7.25}]},
    })
    .to_string()
}

/// A provisioned town of `n` lamps of `tenant` in a fresh data directory.
fn provision(dir: &Path, tenant: &TenantId, n: u32) -> Vec<StoredNode> {
    let mut store = Store::open(dir).unwrap();
    let new: Vec<NewNode> = (0..n)
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
    store.nodes().unwrap()
}

fn config(tenant: &TenantId, kind: NetworkKind, port: u16) -> SystemConfig {
    let mut config = SystemConfig::default();
    config.mqtt_listen.set_port(0);
    config.http_listen.set_port(0);
    config.controller.policy = PolicyConfig::named("full").unwrap();
    config.external_networks = vec![ExternalNetwork {
        tenant: tenant.clone(),
        kind,
        host: "127.0.0.1".into(),
        port,
        username: None,
        password: None,
        application: match kind {
            NetworkKind::Chirpstack => APPLICATION.into(),
            NetworkKind::Tts => TTS_APPLICATION.into(),
        },
    }];
    config.validate().unwrap();
    config
}

async fn start(config: &SystemConfig, dir: &Path) -> System {
    let (system, _) = system::start(config, dir, ScaledClock::starting_at(NIGHT, 1.0))
        .await
        .unwrap();
    assert!(
        system.external_links[0]
            .wait_uplinks_subscribed(Duration::from_secs(10))
            .await,
        "the link subscribed on the network's broker"
    );
    system
}

/// The network's side: an integration client with a persistent session, reading the
/// command topics; what it receives goes to the channel as (topic, JSON).
async fn network_client(port: u16, id: &str, filter: &str) -> (AsyncClient, Commands) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    let (c, filter) = (client.clone(), filter.to_string());
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = c.subscribe(&filter, QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = subscribed_tx.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v = serde_json::from_slice(&p.payload).unwrap_or_default();
                    let _ = tx.send((p.topic, v));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("the network client subscribed")
        .unwrap();
    (client, rx)
}

/// Waits until `done` holds for the controller's summary of the tenant.
async fn until(
    system: &System,
    tenant: &TenantId,
    what: &str,
    done: impl Fn(&lamplighter_controller::core::Summary) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = system.controller.summary(Some(tenant));
        if done(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: summary {s:?}; link {:?}",
            system.external_links[0].report()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The level of a ChirpStack command message.
fn chirpstack_level(v: &serde_json::Value) -> u8 {
    let data = base64::engine::general_purpose::STANDARD
        .decode(v["data"].as_str().unwrap())
        .unwrap();
    match Command::decode(&data).unwrap() {
        Command::SetLevel { level_pct, .. } => level_pct,
        other => panic!("unexpected command {other:?}"),
    }
}

type Commands = tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>;

/// The next command the network receives, waiting up to 20 s.
async fn next(commands: &mut Commands) -> Option<(String, serde_json::Value)> {
    tokio::time::timeout(Duration::from_secs(20), commands.recv())
        .await
        .ok()
        .flatten()
}

/// A GET with a bearer token: (status, body).
fn http_get(port: u16, path: &str, token: &str) -> (u16, String) {
    crate::util::http_bearer(port, "GET", path, token, None)
}

/// OTAA re-join behind ChirpStack: the network restarts FCnt at 0; every reading of both
/// sessions reaches the controller, a replay inside a session is refused and counted (in
/// the link's report, `/api/v1/summary` and `/metrics`), and the new session survives a
/// restart of `serve`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_loses_no_reading_and_replays_stay_refused() {
    let _system = one_system_at_a_time();
    let broker_dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(broker_dir.path(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new("cs-council").unwrap();
    let nodes = provision(dir.path(), &tenant, 2);
    let token = lamplighter_dashboards::Accounts::open(dir.path())
        .unwrap()
        .add_token(lamplighter_dashboards::Role::Viewer, None, "test", 0)
        .unwrap();
    let config = config(&tenant, NetworkKind::Chirpstack, mosquitto.port);
    let system = start(&config, dir.path()).await;
    let (network, _commands) = network_client(
        mosquitto.port,
        "chirpstack",
        &format!("application/{APPLICATION}/device/+/command/down"),
    )
    .await;

    let lamp0 = nodes[0].node.dev_eui.to_string().to_ascii_lowercase();
    let up = format!("application/{APPLICATION}/device/{lamp0}/event/up");
    let join = format!("application/{APPLICATION}/device/{lamp0}/event/join");
    let t0 = NIGHT.as_secs() as u32;
    let mut published = 0u64;
    let mut messages = Vec::new();
    // Session 1: FCnt 0..=9. Then a join, and session 2 from FCnt 0 again: 0..=9. Then a
    // replay of session 2's FCnt 4.
    for fcnt in 0..10u32 {
        messages.push((
            up.clone(),
            chirpstack_uplink(&lamp0, fcnt, &report(fcnt, t0 + fcnt).encode()),
        ));
        published += 1;
    }
    messages.push((join.clone(), chirpstack_join(&lamp0)));
    for fcnt in 0..10u32 {
        messages.push((
            up.clone(),
            chirpstack_uplink(&lamp0, fcnt, &report(100 + fcnt, t0 + 100 + fcnt).encode()),
        ));
        published += 1;
    }
    messages.push((
        up.clone(),
        chirpstack_uplink(&lamp0, 4, &report(104, t0 + 104).encode()),
    ));
    for (topic, payload) in messages {
        network
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    until(&system, &tenant, "both sessions' readings", |s| {
        s.uplinks >= published
    })
    .await;
    let link = system.external_links[0].report();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut link = link;
    while link.uplinks_refused.values().sum::<u64>() < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        link = system.external_links[0].report();
    }
    // Both ends: 20 readings published, 20 passed, 20 accepted; 1 join; 1 replay refused.
    assert_eq!(link.uplinks_passed, published, "{link:?}");
    assert_eq!(link.joins, 1, "{link:?}");
    assert_eq!(link.uplinks_refused.get("replay"), Some(&1), "{link:?}");
    let s = system.controller.summary(Some(&tenant));
    assert_eq!((s.uplinks, s.rejected), (published, 0), "{s:?}");

    // The refusal is counted where every other rejection is.
    let (status, body) = http_get(system.http_addr.port(), "/api/v1/summary", &token);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["rejected_by_reason"]["external-replay"], 1, "{body}");
    assert_eq!(v["rejected"], 1, "{body}");
    let (status, metrics) = http_get(system.http_addr.port(), "/metrics", &token);
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "lamplighter_external_refused_total{tenant=\"cs-council\",direction=\"up\",reason=\"replay\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("lamplighter_external_joins_total{tenant=\"cs-council\"} 1"),
        "{metrics}"
    );
    system.shutdown().await;

    // After a restart, session 2 goes on (FCnt 10, 11) and a replay of it is still refused.
    let system = start(&config, dir.path()).await;
    for fcnt in [10u32, 11, 3] {
        network
            .publish(
                up.clone(),
                QoS::AtLeastOnce,
                false,
                chirpstack_uplink(&lamp0, fcnt, &report(100 + fcnt, t0 + 100 + fcnt).encode()),
            )
            .await
            .unwrap();
    }
    until(&system, &tenant, "readings after the restart", |s| {
        s.uplinks >= 2
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut link = system.external_links[0].report();
    while link.uplinks_refused.values().sum::<u64>() < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        link = system.external_links[0].report();
    }
    assert_eq!(link.uplinks_passed, 2, "{link:?}");
    assert_eq!(link.uplinks_refused.get("replay"), Some(&1), "{link:?}");
    assert_eq!(system.controller.summary(Some(&tenant)).rejected, 0);
    system.shutdown().await;
    drop(mosquitto);
}

/// The Things Stack across a restart of `serve`: a device ID set at provisioning addresses
/// commands before any uplink; a lamp whose ID is not known keeps its latest command until
/// an uplink names it; the ID learnt survives the restart; uplinks published while `serve`
/// was away arrive when it is back (persistent session, stable client ID), and two
/// instances with their own data directories never take each other's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_no_reading_and_no_command_waits_for_an_uplink() {
    let _system = one_system_at_a_time();
    let broker_dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(broker_dir.path(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new("tts-council").unwrap();
    let nodes = provision(dir.path(), &tenant, 2);
    let euis: Vec<String> = nodes
        .iter()
        .map(|n| n.node.dev_eui.to_string().to_ascii_lowercase())
        .collect();
    // Provisioning names lamp 0 on the network; lamp 1 is left to be learnt.
    let ids = dir.path().join("device-ids.csv");
    std::fs::write(
        &ids,
        format!("dev_eui,device_id\n{},lamp-0\n", nodes[0].node.dev_eui),
    )
    .unwrap();
    assert_eq!(
        lamplighter::cli_nodes::import_device_ids(dir.path(), &ids).unwrap(),
        1
    );
    let (network, mut commands) = network_client(
        mosquitto.port,
        "tts",
        &format!("v3/{TTS_APPLICATION}/devices/+/down/+"),
    )
    .await;
    let config = config(&tenant, NetworkKind::Tts, mosquitto.port);
    let system = start(&config, dir.path()).await;

    // `full` at night commands both lamps; only lamp 0 can be addressed.
    let (topic, v) = next(&mut commands).await.expect("a command for lamp 0");
    assert_eq!(
        topic,
        format!("v3/{TTS_APPLICATION}/devices/lamp-0/down/replace")
    );
    assert_eq!(v["downlinks"].as_array().unwrap().len(), 1);
    let link = system.external_links[0].report();
    assert!(
        link.downlinks_waiting >= 1,
        "lamp 1's command waits: {link:?}"
    );
    // An uplink names lamp 1; its command goes at once.
    let t0 = NIGHT.as_secs() as u32;
    network
        .publish(
            format!("v3/{TTS_APPLICATION}/devices/lamp-1/up"),
            QoS::AtLeastOnce,
            false,
            tts_uplink("lamp-1", &euis[1], 1, &report(1, t0).encode()),
        )
        .await
        .unwrap();
    let (topic, _) = next(&mut commands).await.expect("a command for lamp 1");
    assert_eq!(
        topic,
        format!("v3/{TTS_APPLICATION}/devices/lamp-1/down/replace")
    );
    until(&system, &tenant, "lamp 1's reading", |s| s.uplinks >= 1).await;
    let first = system.external_links[0].report();
    assert_eq!(first.downlinks_waiting, 0, "{first:?}");
    let client_id = system.external_links[0].client_id.clone();
    system.shutdown().await;

    // While serve is away the network goes on publishing.
    let away = 5u32;
    for i in 0..away {
        for (lamp, eui) in euis.iter().enumerate() {
            network
                .publish(
                    format!("v3/{TTS_APPLICATION}/devices/lamp-{lamp}/up"),
                    QoS::AtLeastOnce,
                    false,
                    tts_uplink(
                        &format!("lamp-{lamp}"),
                        eui,
                        2 + i,
                        &report(2 + i, t0 + 60 * (1 + i)).encode(),
                    ),
                )
                .await
                .unwrap();
        }
    }
    // Delivered to Mosquitto before the restart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while commands.try_recv().is_ok() {}

    let system = start(&config, dir.path()).await;
    assert_eq!(system.external_links[0].client_id, client_id);
    let published = u64::from(away) * 2;
    until(&system, &tenant, "the readings published while away", |s| {
        s.uplinks >= published
    })
    .await;
    // Both lamps are commanded at once after the restart: lamp 1's ID was stored.
    let mut commanded = std::collections::BTreeSet::new();
    while commanded.len() < 2 {
        let (topic, _) = next(&mut commands)
            .await
            .unwrap_or_else(|| panic!("commands after the restart: {commanded:?}"));
        commanded.insert(topic);
    }
    let link = system.external_links[0].report();
    assert_eq!(link.uplinks_passed, published, "{link:?}");
    assert_eq!(link.uplinks_refused.values().sum::<u64>(), 0, "{link:?}");
    assert_eq!(system.controller.summary(Some(&tenant)).uplinks, published);

    // A second instance (its own data directory) on the same broker: neither is kicked off.
    let other_dir = tempfile::tempdir().unwrap();
    provision(other_dir.path(), &tenant, 1);
    let other = start(&config, other_dir.path()).await;
    assert_ne!(other.external_links[0].client_id, client_id);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for s in [&system, &other] {
        let r = s.external_links[0].report();
        assert_eq!((r.connections, r.connected), (1, true), "{r:?}");
    }
    other.shutdown().await;
    system.shutdown().await;
    drop(mosquitto);
}

/// An outage of ChirpStack's broker while the controller changes its mind three times per
/// lamp: when the broker is back, each lamp gets exactly one command, the latest, with an
/// `expiresAt` in the future; every command sent is accounted for (published, superseded or
/// waiting) and none published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_sends_only_the_latest_command_per_lamp() {
    let _system = one_system_at_a_time();
    let broker_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mosquitto = Mosquitto::start(broker_dir.path(), port);
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new("cs-council").unwrap();
    let nodes = provision(dir.path(), &tenant, 3);
    let (_network, mut commands) = network_client(
        port,
        "chirpstack",
        &format!("application/{APPLICATION}/device/+/command/down"),
    )
    .await;
    let config = config(&tenant, NetworkKind::Chirpstack, port);
    let system = start(&config, dir.path()).await;
    let mut received: HashMap<String, Vec<u8>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, v) = tokio::time::timeout(left, commands.recv())
            .await
            .ok()
            .flatten()
            .expect("the first command of every lamp");
        received
            .entry(v["devEui"].as_str().unwrap().to_string())
            .or_default()
            .push(chirpstack_level(&v));
    }

    mosquitto.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while system.external_links[0].report().connected {
        assert!(Instant::now() < deadline, "the link saw the outage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = system.external_links[0].report();
    for level in [30u8, 60, 90] {
        system.controller.with_core(|core, now| {
            for n in &nodes {
                core.set_override(now, n.node.lamp, Some(level), now.plus_ms(3_600_000));
            }
        });
        // Every lamp commanded to the level, and every command the controller sent heard
        // by the link.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lamps = system.controller.lamps(Some(&tenant));
            let sent = system.controller.summary(Some(&tenant)).commands;
            let link = system.external_links[0].report();
            if lamps.iter().all(|l| l.commanded_level_pct == Some(level))
                && link.downlinks_passed == sent
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the commands for {level} %: sent {sent}; link {link:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let during = system.external_links[0].report();
    assert_eq!(during.downlinks_published, before.downlinks_published);
    assert_eq!(during.downlinks_waiting, 3, "{during:?}");

    let mosquitto = Mosquitto::start(broker_dir.path(), port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after: HashMap<String, Vec<(u8, String)>> = HashMap::new();
    while after.values().map(Vec::len).sum::<usize>() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, v) = tokio::time::timeout(left, commands.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "commands after the outage: {after:?}; link {:?}",
                    system.external_links[0].report()
                )
            });
        after
            .entry(v["devEui"].as_str().unwrap().to_string())
            .or_default()
            .push((
                chirpstack_level(&v),
                v["expiresAt"].as_str().unwrap().to_string(),
            ));
    }
    // Nothing else comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok((_, v)) = commands.try_recv() {
        after
            .entry(v["devEui"].as_str().unwrap().to_string())
            .or_default()
            .push((chirpstack_level(&v), String::new()));
    }
    let wall = UnixMs(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    let now = lamplighter_broker::external::rfc3339(wall);
    let latest = lamplighter_broker::external::rfc3339(
        wall.plus_ms(lamplighter_broker::external_link::DEFAULT_COMMAND_EXPIRY_MS),
    );
    assert_eq!(after.len(), 3, "{after:?}");
    for (eui, cmds) in &after {
        assert_eq!(cmds.len(), 1, "{eui}: {cmds:?}");
        assert_eq!(cmds[0].0, 90, "{eui}: {cmds:?}");
        assert!(
            cmds[0].1 > now && cmds[0].1 <= latest,
            "expiresAt in the next 6 minutes: {cmds:?} (now {now})"
        );
    }
    // Both ends: the controller sent N, the link took N; the network got what was published.
    let r = system.external_links[0].report();
    let sent = system.controller.summary(Some(&tenant)).commands;
    assert_eq!(r.downlinks_passed, sent, "{r:?}");
    assert_eq!(
        r.downlinks_published + r.downlinks_superseded + r.downlinks_waiting,
        r.downlinks_passed,
        "{r:?}"
    );
    // At least the two earlier overrides of each lamp were superseded while the broker was
    // away (the controller may have sent more in that time; they were superseded too).
    let during_outage = during.downlinks_passed - before.downlinks_passed;
    assert!(during_outage >= 9, "{during:?}");
    assert_eq!(r.downlinks_superseded, during_outage - 3, "{r:?}");
    let got: usize = received.values().map(Vec::len).sum::<usize>() + 3;
    assert_eq!(r.downlinks_published, got as u64, "{r:?}");
    assert_eq!(r.connections, 2, "{r:?}");
    system.shutdown().await;
    drop(mosquitto);
}

/// The zones' forecasters across a real restart of the real store: what they learnt is
/// saved at shutdown and a new `serve` resumes from it, showing its age on
/// `/api/v1/zones`; a fresh data directory starts from nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forecasters_resume_after_a_restart() {
    let _system = one_system_at_a_time();
    let broker_dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(broker_dir.path(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new("cs-council").unwrap();
    let nodes = provision(dir.path(), &tenant, 2);
    let token = lamplighter_dashboards::Accounts::open(dir.path())
        .unwrap()
        .add_token(lamplighter_dashboards::Role::Viewer, None, "test", 0)
        .unwrap();
    let mut config = config(&tenant, NetworkKind::Chirpstack, mosquitto.port);
    config.tick_interval_s = 0.05;
    // 600 x: a 10-minute demand interval passes in a second.
    let (system, _) = system::start(&config, dir.path(), ScaledClock::starting_at(NIGHT, 600.0))
        .await
        .unwrap();
    assert!(
        system.external_links[0]
            .wait_uplinks_subscribed(Duration::from_secs(10))
            .await
    );
    let (network, _commands) = network_client(
        mosquitto.port,
        "chirpstack",
        &format!("application/{APPLICATION}/device/+/command/down"),
    )
    .await;
    let zone_view = |system: &System| {
        system
            .controller
            .zones(Some(&tenant))
            .into_iter()
            .next()
            .unwrap()
            .demand
    };
    // Both lamps report road users for several intervals.
    let mut fcnt = 0u32;
    let deadline = Instant::now() + Duration::from_secs(30);
    while zone_view(&system).forecaster_samples < 4 {
        assert!(Instant::now() < deadline, "{:?}", zone_view(&system));
        for n in &nodes {
            let eui = n.node.dev_eui.to_string().to_ascii_lowercase();
            let mut r = report(fcnt, NIGHT.as_secs() as u32 + fcnt);
            r.presence = Presence {
                pedestrians: 3,
                cyclists: 1,
                vehicles: 5,
            };
            network
                .publish(
                    format!("application/{APPLICATION}/device/{eui}/event/up"),
                    QoS::AtLeastOnce,
                    false,
                    chirpstack_uplink(&eui, fcnt, &r.encode()),
                )
                .await
                .unwrap();
        }
        fcnt += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = zone_view(&system);
    system.shutdown().await;

    // A day later (the town's clock), the same data directory.
    let later = NIGHT.plus_ms(86_400_000);
    let (system, _) = system::start(&config, dir.path(), ScaledClock::starting_at(later, 1.0))
        .await
        .unwrap();
    let after = zone_view(&system);
    assert!(
        after.forecaster_samples >= before.forecaster_samples,
        "{before:?} then {after:?}"
    );
    assert_eq!(
        after.forecaster_learned_until_ms,
        zone_view_learned(&before),
        "{after:?}"
    );
    let age_s = after.forecaster_age_s.expect("an age");
    let learned_s = after.forecaster_learned_until_ms.unwrap() / 1000;
    assert!(age_s + 5 >= later.as_secs() - learned_s, "age {age_s} s");
    assert!(
        after.forecast_per_h.is_some(),
        "a forecast at once: {after:?}"
    );
    let (status, body) = http_get(system.http_addr.port(), "/api/v1/zones", &token);
    assert_eq!(status, 200, "{body}");
    let zones: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        zones[0]["forecaster_age_s"].as_u64().unwrap() >= age_s,
        "{body}"
    );
    system.shutdown().await;

    // A fresh data directory: nothing learnt, no age.
    let fresh = tempfile::tempdir().unwrap();
    provision(fresh.path(), &tenant, 2);
    let (system, _) = system::start(&config, fresh.path(), ScaledClock::starting_at(later, 1.0))
        .await
        .unwrap();
    let view = zone_view(&system);
    assert_eq!((view.forecaster_samples, view.forecaster_age_s), (0, None));
    system.shutdown().await;
    drop(mosquitto);
}

fn zone_view_learned(v: &lamplighter_controller::core::ZoneDemandView) -> Option<u64> {
    v.forecaster_learned_until_ms
}

/// Item 6: the controller's clock set either side of a change of London's clocks, with live
/// nodes over the real broker under `part-night` (05:30 local: back to 100 %). After the
/// spring change 05:30 BST is 04:30 UTC; after the autumn one, 05:30 GMT is 05:30 UTC. The
/// nodes must apply the 100 % command at that instant, not an hour off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lamps_keep_to_londons_clocks_after_both_2025_changes() {
    // (controller clock starts, the 05:30 local step in UTC)
    let spring_step = UnixMs(1_743_309_000_000); // 2025-03-30 04:30 UTC
    let autumn_step = UnixMs(1_761_456_600_000); // 2025-10-26 05:30 UTC
    for step in [spring_step, autumn_step] {
        let _slot = one_system_at_a_time();
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::new("bristol").unwrap();
        crate::util::provision_town(dir.path(), &tenant, 40, 3);
        let mut config = crate::util::system_config();
        config.controller.report_interval_s = 60;
        config.controller.policy = PolicyConfig::named("part-night").unwrap();
        // 20 simulated minutes before the step, at 60x: 20 s to start and settle at 50 %.
        let clock = ScaledClock::starting_at(UnixMs(step.0 - 20 * 60_000), 60.0);
        let (system, nodes) = system::start(&config, dir.path(), clock).await.unwrap();
        let town = crate::util::live_town(system.mqtt_addr, &nodes, &tenant, clock, 60, 1);
        let probes = &town.probes;
        let all_at = |pct: f32| {
            probes.iter().all(|p| {
                p.commands_applied
                    .load(std::sync::atomic::Ordering::Relaxed)
                    >= 1
                    && p.target_pct() == pct
            })
        };
        crate::util::wait_for("every lamp at 50 %", Duration::from_secs(20), || {
            all_at(50.0)
        })
        .await;
        assert!(clock.now() < step, "settled before the step at {step:?}");
        crate::util::wait_for("every lamp at 100 %", Duration::from_secs(30), || {
            all_at(100.0)
        })
        .await;
        for (i, p) in probes.iter().enumerate() {
            let applied = UnixMs(p.last_command_ms.load(std::sync::atomic::Ordering::Relaxed));
            assert!(
                // At 60x a controller tick is 12 simulated seconds; an hour off is the bug.
                applied >= step && applied.since(step) <= 180_000,
                "lamp {i}: 100 % applied at {applied:?}, the step is at {step:?}"
            );
        }
        town.stop();
        system.shutdown().await;
    }
}
