//! Crash safety with a real process and a real kill: `lamplighter serve` (broker, controller,
//! store) runs as a child process; 1,000 nodes (the real edge agent, in this test process)
//! report to it every two seconds; the test SIGKILLs the server mid-stream, starts it again
//! on the same data and port, and checks that
//! - every reading a node saw acknowledged before the kill is in the store,
//! - the nodes resent what was not acknowledged, and everything they sent is stored once,
//! - energy is not double-counted (per lamp, the deltas add up to the node's meter), in the
//!   raw readings and in the rollups alike.

use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use lamplighter_controller::store::Store;
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::TenantId;

use crate::util::{bin, free_port, live_town, one_system_at_a_time, provision_town, wait_for};

const LAMPS: usize = 1_000;

fn serve(dir: &std::path::Path, port: u16, log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    bin()
        .args([
            "serve",
            "--mqtt-port",
            &port.to_string(),
            "--http-port",
            "0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start lamplighter serve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_1000_nodes_report_loses_no_acknowledged_reading_and_counts_energy_once() {
    let _system = one_system_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new("crash").unwrap();
    let nodes = provision_town(dir.path(), &tenant, LAMPS, 3);

    let port = free_port();
    let mut server = serve(dir.path(), port, "serve-1.log");

    // Nodes report every 60 s of a clock running 30 times real time: every 2 s, 500 readings
    // a second in all.
    let clock = ScaledClock::starting_at(ScaledClock::system().now(), 30.0);
    let town = live_town(([127, 0, 0, 1], port).into(), &nodes, &tenant, clock, 60, 3);
    let probes = &town.probes;
    let acked_total = || {
        probes
            .iter()
            .map(|p| p.acked_fcnt().map_or(0, |f| f as u64 + 1))
            .sum::<u64>()
    };
    wait_for(
        "5,000 readings acknowledged",
        Duration::from_secs(120),
        || acked_total() >= 5_000,
    )
    .await;

    // The kill, mid-stream.
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked_at_kill: Vec<Option<u32>> = probes.iter().map(|p| p.acked_fcnt()).collect();
    let unacked_at_kill: u64 = probes
        .iter()
        .map(|p| p.outbox_len.load(Ordering::Relaxed))
        .sum();
    let sent_at_kill: u64 = probes
        .iter()
        .map(|p| p.uplinks.load(Ordering::Relaxed))
        .sum();
    eprintln!(
        "killed: {} readings acknowledged, {unacked_at_kill} waiting, {sent_at_kill} sent",
        acked_at_kill
            .iter()
            .flatten()
            .map(|&f| f as u64 + 1)
            .sum::<u64>()
    );
    assert!(
        unacked_at_kill > 0,
        "the kill should catch readings in flight"
    );

    // Nodes keep measuring while the server is down; then it comes back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut server = serve(dir.path(), port, "serve-2.log");
    let sent_before_restart: u64 = probes
        .iter()
        .map(|p| p.uplinks.load(Ordering::Relaxed))
        .sum();
    wait_for(
        "every node to have everything acknowledged again",
        Duration::from_secs(180),
        || {
            acked_total() > sent_before_restart
                && probes
                    .iter()
                    .all(|p| p.outbox_len.load(Ordering::Relaxed) == 0)
        },
    )
    .await;
    let final_acked: Vec<u32> = probes
        .iter()
        .map(|p| p.acked_fcnt().expect("every node acknowledged"))
        .collect();
    let final_sent: Vec<u64> = probes
        .iter()
        .map(|p| p.uplinks.load(Ordering::Relaxed))
        .collect();
    let dropped: u64 = probes
        .iter()
        .map(|p| p.outbox_dropped.load(Ordering::Relaxed))
        .sum();
    town.stop();
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(dropped, 0, "no outbox overflowed");

    let store = Store::open(dir.path()).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("lamplighter.sqlite")).unwrap();
    let mut per_lamp = conn
        .prepare(
            "SELECT COUNT(*), MIN(fcnt), MAX(fcnt), SUM(energy_delta_dwh), MAX(energy_dwh)
             FROM readings WHERE lamp_id = ?1",
        )
        .unwrap();
    let mut rollup = conn
        .prepare("SELECT SUM(readings), SUM(energy_dwh) FROM rollup_1d WHERE lamp_id = ?1")
        .unwrap();
    let mut stored_total = 0u64;
    for (i, s) in nodes.iter().enumerate() {
        let lamp = s.node.lamp.0;
        let (count, min, max, energy_sum, meter): (u64, u32, u32, i64, i64) = per_lamp
            .query_row([lamp], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap();
        // Everything acknowledged before the kill, and everything acknowledged after.
        if let Some(a) = acked_at_kill[i] {
            assert!(
                max >= a,
                "lamp {lamp}: FCnt {a} was acknowledged, store has up to {max}"
            );
        }
        assert_eq!(max, final_acked[i], "lamp {lamp}");
        // Every frame the node sent is there once: FCnts 0..=last, no gap, no duplicate.
        assert_eq!(
            (min, count),
            (0, final_acked[i] as u64 + 1),
            "lamp {lamp}: readings 0..={} expected",
            final_acked[i]
        );
        assert_eq!(
            count, final_sent[i],
            "lamp {lamp}: every frame sent is stored"
        );
        // Energy from the cumulative meter: the deltas add up to the meter, once.
        assert_eq!(
            energy_sum, meter,
            "lamp {lamp}: energy double-counted or lost"
        );
        let (rollup_readings, rollup_energy): (u64, i64) = rollup
            .query_row([lamp], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(
            (rollup_readings, rollup_energy),
            (count, meter),
            "lamp {lamp}: rollups"
        );
        stored_total += count;
    }
    let replays: u64 = conn
        .query_row(
            "SELECT COUNT(*) FROM rejections WHERE kind = 'replay'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    eprintln!(
        "after restart: {stored_total} readings stored, all acknowledged; {replays} resends of frames already stored were answered with an ack"
    );
    assert_eq!(store.count("readings").unwrap(), stored_total);
}
