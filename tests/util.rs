//! The harness every integration test uses: the built binary, a provisioned town, a started
//! system, and the small pieces of plumbing (free ports, child processes that die with the
//! test, polling) that each test file used to copy.
//!
//! All integration tests are modules of one test binary (`tests/tests.rs`, as ripgrep's),
//! so cargo links one executable instead of one per file. The price is that the tests run
//! side by side in one process; tests that start a whole system take
//! [`one_system_at_a_time`] first, so on a 2-core machine two towns of nodes never starve
//! each other's timing (they ran one binary at a time before for the same reason).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lamplighter::system::SystemConfig;
use lamplighter_controller::store::{NewNode, Store, StoredNode};
use lamplighter_protocol::payload::{FaultFlags, NodeMode, Presence, ReportTrigger, StatusReport};
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::TenantId;
use lamplighter_simulator::live::{LiveConfig, LiveNode, LiveTown};

/// Where the procedural test towns stand: Bristol (the demo's town), so the sun and the
/// part-night profile behave as in the README's examples.
pub const BRISTOL: (f64, f64) = (51.4545, -2.5879);

/// The `lamplighter` binary this test run built, with nothing set.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lamplighter"))
}

/// What a finished run of the binary said.
pub struct Run {
    pub ok: bool,
    /// The exit code; -1 when a signal ended it.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to the end and collects what it said.
pub fn output(command: &mut Command) -> Run {
    let out = command.output().expect("run lamplighter");
    Run {
        ok: out.status.success(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `lamplighter ARGS...` as a user types it (the binary's own default logging).
pub fn run(args: &[&str]) -> Run {
    output(bin().args(args))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when the test ends, pass or fail, so no server outlives it.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The right to run a whole system, held for a test's whole length (across its awaits, on
/// purpose: it serialises tests, not data, and no task ever waits on it).
pub struct SystemSlot(#[allow(dead_code)] MutexGuard<'static, ()>);

/// Taken by every test that starts a whole system (a served town, a demo, a browser): one
/// such test runs at a time. A failed test poisons nothing: the next one still runs.
pub fn one_system_at_a_time() -> SystemSlot {
    static SYSTEM: Mutex<()> = Mutex::new(());
    SystemSlot(
        SYSTEM
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

/// Provisions a procedural town of `lamps` lamps (seeded, in Bristol) for `tenant` in the
/// store at `dir`, and returns the provisioned nodes with their keys.
pub fn provision_town(dir: &Path, tenant: &TenantId, lamps: usize, seed: u64) -> Vec<StoredNode> {
    let town = lamplighter_town::Town::procedural(lamps, seed, BRISTOL);
    let mut store = Store::open(dir).unwrap();
    let new: Vec<NewNode> = town
        .lamps
        .iter()
        .map(|l| NewNode::from_town(tenant, l))
        .collect();
    assert_eq!(store.provision(&new).unwrap(), lamps);
    store.nodes().unwrap()
}

/// The in-process system's configuration for tests: every listener on an ephemeral
/// loopback port and a fast controller tick.
pub fn system_config() -> SystemConfig {
    let mut config = SystemConfig::default();
    config.mqtt_listen.set_port(0);
    config.http_listen.set_port(0);
    config.tick_interval_s = 0.2;
    config
}

/// Starts `nodes` (freshly provisioned: FCnt 0, empty meter) as live edge nodes against
/// the broker at `mqtt`, reporting every `report_interval_s` simulated seconds, with no road
/// users (a test injects presence itself).
pub fn live_town(
    mqtt: SocketAddr,
    nodes: &[StoredNode],
    tenant: &TenantId,
    clock: ScaledClock,
    report_interval_s: u32,
    seed: u64,
) -> LiveTown {
    LiveTown::spawn(
        nodes.iter().cloned().map(LiveNode::resuming).collect(),
        LiveConfig {
            mqtt_host: mqtt.ip().to_string(),
            mqtt_port: mqtt.port(),
            tenant: tenant.clone(),
            clock,
            report_interval_s,
            silence_timeout_s: 900,
            time_zone: lamplighter_protocol::local_time::DEFAULT_TIME_ZONE,
            demand: None,
            seed,
        },
    )
}

/// Polls `ok` until it holds; fails the test, naming `what`, after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// One HTTP/1.0 request on loopback with a bearer token and an optional JSON body:
/// (status, body).
pub fn http_bearer(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    json_body: Option<&str>,
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = json_body.unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A periodic fail-safe report from a dark lamp with `energy_dwh` on its meter, read at
/// `reading_time_s`: what an external network's uplinks carry in the tests.
pub fn status_report(energy_dwh: u32, reading_time_s: u32) -> StatusReport {
    StatusReport {
        level_pct: 0,
        target_level_pct: 0,
        power_dw: 0,
        energy_dwh,
        ambient_lux: 0,
        presence: Presence::default(),
        faults: FaultFlags::default(),
        mode: NodeMode::FailSafe,
        trigger: ReportTrigger::Periodic,
        reading_time_s,
        applied_fcnt_down: 0,
    }
}
