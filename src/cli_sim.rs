//! `lamplighter sim ...`: the simulator from the command line.
//!
//! `sim live` runs the provisioned nodes of a data directory as simulated lamps in this
//! process, connected over real MQTT to a running `lamplighter serve`, and prints one JSON
//! object: messages per second and the presence-to-command latency measured at the nodes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use lamplighter_controller::store::Store;
use lamplighter_protocol::time::ScaledClock;
use lamplighter_simulator::demand::PeakRates;
use lamplighter_simulator::live::{LiveConfig, LiveNode, LiveTown};

#[derive(Args)]
pub struct LiveArgs {
    /// The data directory of the running system (its store holds the nodes' credentials).
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    pub mqtt_host: String,
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// Run at most this many of the provisioned nodes (default: all).
    #[arg(long)]
    pub lamps: Option<usize>,
    /// How long to run (real time).
    #[arg(long = "for", value_parser = humantime::parse_duration, default_value = "60s")]
    pub run_for: Duration,
    /// Nodes' periodic report interval, seconds.
    #[arg(long, default_value_t = 60)]
    pub report_interval_s: u32,
    /// Road users at a lamp at the evening peak, per hour (all kinds together).
    #[arg(long, default_value_t = 80.0)]
    pub peak_per_h: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub async fn live(args: LiveArgs) -> Result<()> {
    anyhow::ensure!(
        args.data_dir
            .join(lamplighter_controller::store::DB_FILE)
            .exists(),
        "no store in {}",
        args.data_dir.display()
    );
    anyhow::ensure!(args.peak_per_h >= 0.0, "--peak-per-h must not be negative");
    let store = Store::open(&args.data_dir)?;
    let mut nodes = store.nodes()?;
    if let Some(n) = args.lamps {
        nodes.truncate(n);
    }
    anyhow::ensure!(
        !nodes.is_empty(),
        "no provisioned nodes in {}",
        args.data_dir.display()
    );
    let tenant = nodes[0].node.tenant.clone();
    let lamps = nodes.len();
    let live: Vec<LiveNode> = nodes
        .into_iter()
        .filter(|s| s.node.tenant == tenant)
        .map(|s| LiveNode {
            dev_eui: s.node.dev_eui,
            dev_addr: s.node.dev_addr,
            keys: s.node.keys,
            lat: s.node.lat,
            lon: s.node.lon,
            rated_power_w: s.node.rated_power_w,
            mqtt_username: s.mqtt_username,
            mqtt_password: s.mqtt_password,
            // Continue the counters the controller has seen, as the nodes' memory would.
            fcnt_up: s.node.last_fcnt_up.map_or(0, |f| f.wrapping_add(1)),
            energy_wh: s.node.last_energy_dwh.unwrap_or(0) as f64 / 10.0,
        })
        .collect();
    let share = args.peak_per_h / 80.0;
    let peak = PeakRates {
        pedestrians_per_h: 30.0 * share,
        cyclists_per_h: 10.0 * share,
        vehicles_per_h: 40.0 * share,
    };
    let clock = ScaledClock::system();
    let town = LiveTown::spawn(
        live,
        LiveConfig {
            mqtt_host: args.mqtt_host.clone(),
            mqtt_port: args.mqtt_port,
            tenant,
            clock,
            report_interval_s: args.report_interval_s,
            silence_timeout_s: 900,
            utc_offset_min: 0,
            demand: Some(peak),
            seed: args.seed,
        },
    );
    let started = Instant::now();
    tokio::time::sleep(args.run_for).await;
    let wall_s = started.elapsed().as_secs_f64();
    let uplinks: u64 = town
        .probes
        .iter()
        .map(|p| p.uplinks.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let commands: u64 = town
        .probes
        .iter()
        .map(|p| {
            p.commands_applied
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    let connected = town.online();
    let latency = town.latency();
    town.stop();
    let out = serde_json::json!({
        "lamps": lamps,
        "connected": connected,
        "wall_s": wall_s,
        "uplinks": uplinks,
        "commands_applied": commands,
        "messages_per_s": (uplinks + commands) as f64 / wall_s,
        "presence_to_command_ms": latency,
    });
    println!("{}", serde_json::to_string(&out).context("JSON")?);
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum SimCommand {
    /// Simulated nodes from a data directory, over real MQTT, against a running `serve`.
    Live(LiveArgs),
}

pub async fn run(command: SimCommand) -> Result<()> {
    match command {
        SimCommand::Live(args) => live(args).await,
    }
}
