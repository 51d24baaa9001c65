//! `lamplighter bench ingest`: how many status reports a self-started `serve` takes in
//! over real TCP MQTT, and what it costs. The lamps are provisioned (or reused), their
//! frames sealed before the clock starts, and a thread group of MQTT connections offers
//! them at a rate; afterwards the store is read for what it kept. The anchor is the broker
//! alone relaying the same frames to one subscriber. One JSON line on stdout.

mod frames;
mod load;
mod procstat;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use lamplighter_controller::store::{NewNode, Store, StoredNode};
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{topics, TenantId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

use crate::system::{self, SystemConfig};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Uplinks a self-started `serve` ingests over real TCP MQTT, and the broker alone as
    /// the anchor; one JSON line on stdout (logs on stderr).
    ///
    /// The bench starts the system in this process (broker, controller, store writer,
    /// dashboard on loopback ports) on a fresh temporary store, or on --data-dir: a store
    /// with no nodes is provisioned with a procedural town of --lamps lamps, a store with at
    /// least --lamps nodes has its first --lamps reused. Every lamp's status reports are
    /// sealed (FCnt rising from the store's counter, MIC and encryption with its session
    /// keys) before the clock starts. --connections MQTT connections, each on its own
    /// thread and authenticating with one of its lamps' credentials, publish them on the
    /// lamps' uplink topics at --rate frames a second in all (or as fast as they go), for
    /// --for. Then the bench waits up to 10 s for the store to catch up.
    ///
    /// Figures: `offered` publishes written to the connections; `acks` the broker's
    /// PubAcks (QoS 1); `accepted` readings the store kept; `rejected` uplinks the
    /// controller refused; `lost` = (acks at QoS 1, offered at QoS 0) - accepted - rejected,
    /// at least 0: frames the broker took that never became a reading or a rejection.
    /// RSS and CPU by thread (name) come from /proc: Linux only (null elsewhere). CPU covers
    /// the system's threads from the start of the load to the end of the wait, and the load
    /// threads' whole life. `broker_alone` runs first: the same frames, connections, rate
    /// and duration through a bare embedded broker (accepting any client) to one subscriber.
    /// Presence-to-command latency under load is not measured yet: it prints null.
    Ingest(IngestArgs),
}

#[derive(Args)]
pub struct IngestArgs {
    /// Lamps whose frames make the load (at least 1).
    #[arg(long, default_value_t = 1000)]
    pub lamps: usize,
    /// Frames per second over all connections (more than 0), or `max`.
    #[arg(long, default_value = "max", value_parser = parse_rate)]
    pub rate: Rate,
    /// MQTT QoS of the publishes: 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// How long the load runs, e.g. 10s, 1m.
    #[arg(long = "for", default_value = "10s", value_parser = humantime::parse_duration)]
    pub run_for: Duration,
    /// MQTT connections sharing the load, 1 to --lamps; each lamp's frames go through one.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Frames sealed beforehand at `--rate max` (the run ends early if they run out, and
    /// says so); at a set rate, rate x duration are sealed.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_frames: u64,
    /// The store to provision or reuse (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seed of the procedural town's layout.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    Max,
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s == "max" {
        return Ok(Rate::Max);
    }
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSecond(r)),
        _ => Err(format!(
            "expected frames per second (a number above 0) or `max`, got {s:?}"
        )),
    }
}

/// The bench's tenant when it provisions a town.
const TENANT: &str = "bench";
/// Where the procedural town stands (the demo's Bristol).
const CENTRE: (f64, f64) = (51.4545, -2.5879);
/// How long after the last publish the store may take to catch up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait ends early once the store's counts stop moving this long.
const SETTLE_QUIET: Duration = Duration::from_secs(3);

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Ingest(args) => {
            let line = ingest(&args)?;
            crate::lamplighter_print_line!("{line}");
            Ok(())
        }
    }
}

fn validate(args: &IngestArgs) -> Result<u64> {
    anyhow::ensure!(args.lamps >= 1, "--lamps must be at least 1");
    anyhow::ensure!(
        (1..=args.lamps).contains(&args.connections),
        "--connections must be between 1 and --lamps ({}), got {}",
        args.lamps,
        args.connections
    );
    anyhow::ensure!(
        !args.run_for.is_zero() && args.run_for <= Duration::from_secs(3600),
        "--for must be more than 0 and at most 1h, got {}",
        humantime::format_duration(args.run_for)
    );
    anyhow::ensure!(args.max_frames >= 1, "--max-frames must be at least 1");
    let frames = match args.rate {
        Rate::Max => args.max_frames,
        Rate::PerSecond(r) => (r * args.run_for.as_secs_f64()).ceil() as u64,
    };
    anyhow::ensure!(
        frames <= args.max_frames,
        "--rate x --for is {frames} frames, more than --max-frames {}; raise it if memory allows",
        args.max_frames
    );
    Ok(frames)
}

/// The store's first `lamps` nodes, provisioning a procedural town into an empty store.
fn lamps(dir: &std::path::Path, lamps: usize, seed: u64) -> Result<(Vec<StoredNode>, bool)> {
    let mut store = Store::open(dir)?;
    let mut nodes = store.nodes()?;
    let reused = !nodes.is_empty();
    if !reused {
        let tenant = TenantId::new(TENANT)?;
        let town = lamplighter_town::Town::procedural(lamps, seed, CENTRE);
        let new: Vec<NewNode> = town
            .lamps
            .iter()
            .map(|l| NewNode::from_town(&tenant, l))
            .collect();
        store.provision(&new)?;
        nodes = store.nodes()?;
    }
    anyhow::ensure!(
        nodes.len() >= lamps,
        "the store in {} holds {} nodes, fewer than --lamps {lamps}; use another --data-dir",
        dir.display(),
        nodes.len()
    );
    nodes.truncate(lamps);
    Ok((nodes, reused))
}

/// A directory under the system's temporary one, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ingest(args: &IngestArgs) -> Result<Value> {
    let total = validate(args)?;
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let rate = match args.rate {
        Rate::Max => None,
        Rate::PerSecond(r) => Some(r),
    };
    let (dir, _temp) = match &args.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let d = std::env::temp_dir().join(format!(
                "lamplighter-bench-ingest-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            (d.clone(), Some(TempDir(d)))
        }
    };
    let (nodes, reused) = lamps(&dir, args.lamps, args.seed)?;

    let sealing = Instant::now();
    let frames = Arc::new(frames::seal(&nodes, args.connections, total)?);
    let seal_s = sealing.elapsed().as_secs_f64();
    let (rss_after_seal, _) = procstat::rss_kib();
    tracing::info!(frames = total, seconds = seal_s, "frames sealed");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("serve-runtime")
        .build()
        .context("cannot start the async runtime")?;
    let options = |broker: std::net::SocketAddr, prefix: &str| load::LoadOptions {
        broker,
        qos,
        rate,
        duration: args.run_for,
        client_prefix: format!("{prefix}-{}", std::process::id()),
    };

    // The anchor: the broker alone, the same frames, one subscriber.
    let broker_alone = broker_alone(&rt, frames.clone(), &options, args.connections, qos)?;
    tracing::info!(%broker_alone, "broker alone done");

    // The system, as `serve` starts it, on loopback ports.
    let mut config = SystemConfig {
        data_dir: Some(dir.clone()),
        mqtt_max_connections: args.lamps + args.connections + 64,
        ..SystemConfig::default()
    };
    config.mqtt_listen.set_port(0);
    config.http_listen.set_port(0);
    let (sys, _) = rt.block_on(system::start(&config, &dir, ScaledClock::system()))?;
    let history = Store::open_read_only(&dir)?;
    let stored_before = history.count("readings")?;
    let summary_before = sys.controller.summary(None);

    let cpu_before = Mutex::new(None);
    let report = load::run(
        frames.clone(),
        &options(sys.mqtt_addr, "bench-load"),
        || {
            *cpu_before.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((procstat::thread_cpu(), Instant::now()));
        },
    )?;
    let (cpu_before, started) = cpu_before
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .context("the load never started")?;

    // Wait for the store: everything the broker took is a reading or a rejection, or the
    // counts stop moving.
    let expected = if qos == QoS::AtLeastOnce {
        report.acks
    } else {
        report.sent
    };
    let counts = || -> Result<(u64, u64)> {
        let stored = history.count("readings")?.saturating_sub(stored_before);
        let rejected = sys
            .controller
            .summary(None)
            .rejected
            .saturating_sub(summary_before.rejected);
        Ok((stored, rejected))
    };
    let waiting = Instant::now();
    let mut last = counts()?;
    let mut last_change = Instant::now();
    let mut caught_up_after = waiting.elapsed();
    while last.0 + last.1 < expected
        && waiting.elapsed() < SETTLE_TIMEOUT
        && last_change.elapsed() < SETTLE_QUIET
    {
        std::thread::sleep(Duration::from_millis(100));
        let now = counts()?;
        if now != last {
            last = now;
            last_change = Instant::now();
            caught_up_after = waiting.elapsed();
        }
    }
    let (accepted, rejected) = last;
    let measured_s = started.elapsed().as_secs_f64();
    let cpu_after = procstat::thread_cpu();
    let (rss_end, rss_peak) = procstat::rss_kib();
    let summary = sys.controller.summary(None);
    let metrics = sys.controller.metrics();
    let controller = json!({
        "uplinks": summary.uplinks - summary_before.uplinks,
        "rejected_by_reason": summary.rejected_by_reason,
        "commands": summary.commands - summary_before.commands,
        "acks_published": metrics.acks_published.load(Ordering::Relaxed),
        "mqtt_messages": metrics.mqtt_messages.load(Ordering::Relaxed),
    });
    drop(history);
    rt.block_on(sys.shutdown());

    let mut cpu: Vec<Value> = procstat::cpu_between(&cpu_before, &cpu_after)
        .into_iter()
        .filter(|(_, _, s)| *s > 0.0)
        .map(|(name, threads, s)| {
            json!({ "thread": name, "threads": threads, "cpu_s": s,
                    "pct_of_one_core": 100.0 * s / measured_s })
        })
        .collect();
    cpu.push(json!({
        "thread": "bench-load-N", "threads": args.connections, "cpu_s": report.cpu_s,
        "pct_of_one_core": 100.0 * report.cpu_s / measured_s,
    }));
    let per_s = |n: u64| n as f64 / report.window_s.max(1e-9);
    Ok(json!({
        "bench": "ingest",
        "lamps": args.lamps,
        "rate": match args.rate { Rate::Max => json!("max"), Rate::PerSecond(r) => json!(r) },
        "qos": args.qos,
        "for_s": args.run_for.as_secs_f64(),
        "connections": args.connections,
        "lamps_reused": reused,
        "machine": {
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
        },
        "frames_sealed": total,
        "seal_s": seal_s,
        "budget_exhausted": report.budget_exhausted,
        "window_s": report.window_s,
        "offered": report.sent,
        "offered_per_s": per_s(report.sent),
        "queued": report.queued,
        "acks": if qos == QoS::AtLeastOnce { json!(report.acks) } else { Value::Null },
        "accepted": accepted,
        "accepted_per_s": accepted as f64 / measured_s.max(1e-9),
        "rejected": rejected,
        "lost": expected.saturating_sub(accepted + rejected),
        "lost_is": if qos == QoS::AtLeastOnce { "acks - accepted - rejected" } else { "offered - accepted - rejected" },
        "beyond_expected": (accepted + rejected).saturating_sub(expected),
        "store_caught_up_after_s": caught_up_after.as_secs_f64(),
        "measured_s": measured_s,
        "connection_errors": report.connection_errors,
        "controller": controller,
        "rss_kib": { "after_seal": rss_after_seal, "end": rss_end, "peak": rss_peak },
        "cpu_by_thread": cpu,
        "presence_to_command_ms": Value::Null,
        "broker_alone": broker_alone,
    }))
}

/// The same frames through a bare broker to one subscriber on the controller's uplink
/// subscription.
fn broker_alone(
    rt: &tokio::runtime::Runtime,
    frames: Arc<Vec<frames::ConnectionFrames>>,
    options: &dyn Fn(std::net::SocketAddr, &str) -> load::LoadOptions,
    connections: usize,
    qos: QoS,
) -> Result<Value> {
    let auth: lamplighter_broker::Authenticator = Arc::new(|_, _, _| true);
    let broker = lamplighter_broker::start(
        &lamplighter_broker::BrokerConfig::loopback(0, connections + 16),
        auth,
    )?;
    let received = Arc::new(AtomicU64::new(0));
    let last_rx_ns = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let subscriber = {
        let (received, last_rx_ns) = (received.clone(), last_rx_ns.clone());
        let mut opts = MqttOptions::new(
            format!("bench-anchor-sub-{}", std::process::id()),
            broker.listen.ip().to_string(),
            broker.listen.port(),
        );
        opts.set_credentials("bench", "bench");
        opts.set_max_packet_size(64 * 1024, 64 * 1024);
        rt.spawn(async move {
            let (client, mut el) = AsyncClient::new(opts, 1000);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe(topics::ALL_UPLINKS, qos).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        received.fetch_add(1, Ordering::Relaxed);
                        last_rx_ns.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the anchor's subscriber did not subscribe")?;
    let started = Mutex::new(epoch);
    let report = load::run(frames, &options(broker.listen, "bench-anchor"), || {
        *started.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    })?;
    let started = started.into_inner().unwrap_or_else(|p| p.into_inner());
    let waiting = Instant::now();
    let mut last = received.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while last < report.sent
        && waiting.elapsed() < SETTLE_TIMEOUT
        && last_change.elapsed() < SETTLE_QUIET
    {
        std::thread::sleep(Duration::from_millis(50));
        let now = received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    subscriber.abort();
    let received = received.load(Ordering::Relaxed);
    // From the load's start to the subscriber's last message.
    let receive_s = (Duration::from_nanos(last_rx_ns.load(Ordering::Relaxed)))
        .saturating_sub(started.duration_since(epoch))
        .as_secs_f64();
    Ok(json!({
        "offered": report.sent,
        "acks": if qos == QoS::AtLeastOnce { json!(report.acks) } else { Value::Null },
        "received": received,
        "window_s": report.window_s,
        "offered_per_s": report.sent as f64 / report.window_s.max(1e-9),
        "received_per_s": received as f64 / receive_s.max(1e-9),
        "lost": report.sent.saturating_sub(received),
        "connection_errors": report.connection_errors,
    }))
}
