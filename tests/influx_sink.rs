//! The InfluxDB sink against a real server: Debian's `victoria-metrics` (it accepts the
//! InfluxDB v2 write API), started by the test on a loopback port with a temporary data
//! directory. The system runs with 200 nodes reporting every second; the server is stopped
//! in the middle of the run and started again; afterwards every reading and command in the
//! store must be in the server exactly once, checked through the server's own export API.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lamplighter::system;
use lamplighter_controller::influx::InfluxConfig;
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::TenantId;

use crate::util::{
    free_port, http_get, live_town, one_system_at_a_time, provision_town, system_config,
};

const LAMPS: usize = 200;

struct Vm {
    child: Child,
    port: u16,
}

impl Vm {
    fn start(port: u16, data: &std::path::Path) -> Vm {
        let child = Command::new("victoria-metrics")
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", data.display()))
            .arg("-retentionPeriod=100y")
            .arg("-loggerLevel=ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "victoria-metrics is not installed: `apt-get install -y victoria-metrics` \
                 (.ci/run does this)",
            );
        let vm = Vm { child, port };
        let start = Instant::now();
        while !matches!(http_get(port, "/health"), Ok((200, _))) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "victoria-metrics did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        vm
    }

    /// A graceful stop (SIGTERM), as an operator or a package upgrade would.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Every sample of a metric: (labels, timestamps in ms).
    fn export(&self, metric: &str) -> Vec<(HashMap<String, String>, Vec<i64>)> {
        let (status, _) = http_get(self.port, "/internal/force_flush").unwrap();
        assert_eq!(status, 200);
        // The town's clock runs ahead of real time: ask for the future too.
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 7 * 86_400;
        let (status, body) = http_get(
            self.port,
            &format!("/api/v1/export?match[]={metric}&start=0&end={end}"),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let labels = v["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect();
                let ts = v["timestamps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_i64().unwrap())
                    .collect();
                (labels, ts)
            })
            .collect()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn spooled(dir: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open(dir.join("lamplighter.sqlite")).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.query_row("SELECT COUNT(*) FROM influx_spool", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_point_reaches_the_server_once_across_a_server_outage() {
    let _system = one_system_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let vm_data = tempfile::tempdir().unwrap();
    let vm_port = free_port();
    let vm = Vm::start(vm_port, vm_data.path());

    let tenant = TenantId::new("influx").unwrap();
    provision_town(dir.path(), &tenant, LAMPS, 5);

    let mut config = system_config();
    config.store.influx = Some(
        InfluxConfig::new(
            &format!("http://127.0.0.1:{vm_port}"),
            "lamplighter",
            "readings",
            "",
        )
        .unwrap(),
    );
    // The clock runs 60 times real time: a report a second from each node.
    let clock = ScaledClock::starting_at(ScaledClock::system().now(), 60.0);
    let (system, nodes) = system::start(&config, dir.path(), clock).await.unwrap();
    let town = live_town(system.mqtt_addr, &nodes, &tenant, clock, 60, 5);

    tokio::time::sleep(Duration::from_secs(6)).await;
    vm.stop();
    // Ten seconds of outage: ten minutes of the town's clock.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let spooled_at_restart = spooled(dir.path());
    assert!(
        spooled_at_restart > 1_000,
        "points wait on disk while the server is down ({spooled_at_restart})"
    );
    let vm = Vm::start(vm_port, vm_data.path());
    let back = Instant::now();
    let mut catch_up = None;
    while back.elapsed() < Duration::from_secs(60) {
        if spooled(dir.path()) < 500 {
            catch_up = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let catch_up = catch_up.expect("the spool drains once the server is back");
    tokio::time::sleep(Duration::from_secs(3)).await;
    town.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Everything accepted is written and sent before shutdown completes? Wait for the spool.
    let start = Instant::now();
    while spooled(dir.path()) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "spool never drained"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    system.shutdown().await;
    assert_eq!(spooled(dir.path()), 0);

    // The store's readings and commands...
    let c = rusqlite::Connection::open(dir.path().join("lamplighter.sqlite")).unwrap();
    let mut expected: HashMap<(String, i64), u32> = HashMap::new();
    {
        let mut stmt = c
            .prepare("SELECT lamp_id, reading_time_s, fcnt FROM readings")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (lamp, t, fcnt) = row.unwrap();
            let ms = t * 1000 + (fcnt % 1_000_000_000) / 1_000_000;
            *expected.entry((lamp.to_string(), ms)).or_default() += 1;
        }
    }
    let readings: usize = expected.values().map(|&n| n as usize).sum();
    let commands: i64 = c
        .query_row("SELECT COUNT(*) FROM commands", [], |r| r.get(0))
        .unwrap();

    // ...are in the server, each once.
    let mut got: HashMap<(String, i64), u32> = HashMap::new();
    for (labels, ts) in vm.export("reading_level_pct") {
        for t in ts {
            *got.entry((labels["lamp"].clone(), t)).or_default() += 1;
        }
    }
    let got_total: usize = got.values().map(|&n| n as usize).sum();
    let got_commands: usize = vm
        .export("command_level_pct")
        .iter()
        .map(|(_, ts)| ts.len())
        .sum();
    eprintln!(
        "{readings} readings and {commands} commands stored; server has {got_total} reading and {got_commands} command points; \
         {spooled_at_restart} points spooled during a 10 s (10 simulated minutes) outage, caught up in {:.2} s",
        catch_up.as_secs_f64()
    );
    assert!(readings > 2_000, "the town reported ({readings})");
    assert_eq!(got_total, readings, "every reading point, once");
    assert_eq!(got, expected, "the same points, each once");
    assert_eq!(got_commands as i64, commands, "every command point, once");
    vm.stop();
}
