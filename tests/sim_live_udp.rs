//! `lamplighter sim live --udp` as an operator runs it: against a running `lamplighter serve`
//! with its LoRaWAN gateway bridge on, the simulated nodes' frames go over the air to
//! simulated gateways, which forward them over real UDP (Semtech packet forwarder) to the
//! bridge; the network server and controller take them in, and commands come back the same
//! way. Everything runs as child processes on loopback.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lamplighter_controller::store::Store;
use lamplighter_protocol::{sun, UnixMs};

use crate::util::{bin, one_system_at_a_time, output, Reaped, Run};

const LAMPS: usize = 30;
/// Longer than the first report's spread (10 s) and a report interval (5 s) on top.
const RUN_S: u64 = 16;

/// `serve` on loopback with its bridge on; returns it and the bridge's UDP address from its
/// start-up line.
fn serve(dir: &Path, data: &Path) -> (Reaped, String) {
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nmqtt_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
             udp_listen = \"127.0.0.1:0\"\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let log = dir.join("serve.log");
    let server = Reaped(
        bin()
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start lamplighter serve"),
    );
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("lamplighter serve:")) {
            let udp = line
                .split("LoRaWAN UDP ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no UDP address in {line:?}"));
            return (server, udp.to_string());
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "serve did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn warn(args: &[&str]) -> Run {
    output(bin().args(args).env("RUST_LOG", "warn"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn sim_live_runs_its_nodes_through_simulated_gateways_to_a_running_serve() {
    let _system = one_system_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    // The demo provisions a LoRaWAN town (nodes, sessions, zone groups) in the data dir.
    let Run {
        ok, stderr: err, ..
    } = warn(&[
        "demo",
        "--transport",
        "lorawan",
        "--lamps",
        &LAMPS.to_string(),
        "--gateways",
        "1",
        "--for",
        "1s",
        "--mqtt-port",
        "0",
        "--http-port",
        "0",
        "--data-dir",
        data_arg,
    ]);
    assert!(ok, "{err}");
    let (readings_before, position) = {
        let store = Store::open(&data).unwrap();
        let node = store.nodes().unwrap().remove(0).node;
        (store.count("readings").unwrap(), (node.lat, node.lon))
    };

    let (server, udp) = serve(dir.path(), &data);
    let started = now_ms();
    let Run {
        ok,
        stdout: out,
        stderr: err,
        ..
    } = warn(&[
        "sim",
        "live",
        "--data-dir",
        data_arg,
        "--udp",
        &udp,
        "--lamps",
        &LAMPS.to_string(),
        "--for",
        &format!("{RUN_S}s"),
        "--report-interval-s",
        "5",
        "--peak-per-h",
        "2000",
    ]);
    let ended = now_ms();
    // Let the store commit what arrived last before the server goes.
    std::thread::sleep(Duration::from_secs(2));
    drop(server);
    assert!(ok, "{err}");

    let v: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert_eq!(v["lamps"], LAMPS, "{v}");
    assert_eq!(v["connected"], LAMPS, "every node on the air: {v}");
    let uplinks = v["uplinks"].as_u64().unwrap();
    // A first report within 10 s of start, then every 5 s, and presence reports on top.
    assert!(uplinks >= 2 * LAMPS as u64, "{v}");
    assert!(v["messages_per_s"].as_f64().unwrap() > 0.0, "{v}");

    // The controller took the frames in through the bridge: they are in the store, from
    // (nearly) every node. A frame may be lost on the way, as on a real network (collisions
    // on the air, the nodes' duty cycle).
    let readings_after = Store::open(&data).unwrap().count("readings").unwrap();
    let db = rusqlite::Connection::open(data.join("lamplighter.sqlite")).unwrap();
    let lamps_heard: u64 = db
        .query_row(
            "SELECT COUNT(DISTINCT lamp_id) FROM readings WHERE received_ms >= ?1",
            [started as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        lamps_heard + 3 >= LAMPS as u64,
        "{lamps_heard} of {LAMPS} lamps heard; {readings_before} readings before, \
         {readings_after} after {uplinks} uplinks"
    );

    // By night, presence brings commands back over the air, and the loop is timed; by day
    // the lamps stay off whoever passes, so there is nothing to time.
    let dark = |t: u64| sun::is_dark(position.0, position.1, UnixMs(t));
    if dark(started) && dark(ended) {
        assert!(v["commands_applied"].as_u64().unwrap() > 0, "{v}");
        let latency = &v["presence_to_command_ms"];
        assert!(latency["samples"].as_u64().unwrap() > 0, "{v}");
        assert!(
            latency["p50_ms"].as_u64().unwrap() <= latency["max_ms"].as_u64().unwrap(),
            "{v}"
        );
    } else {
        eprintln!("daylight at the demo town: the presence-to-command loop is not timed");
    }
}
