//! `lamplighter sim ...`: the simulator from the command line.
//!
//! `sim run` is planning mode: a town (a folder of real data, or `procedural:N`) under one
//! or all policies for N days in virtual time, deterministic for the seed, with a JSON report
//! and an offline HTML report. `sim bench` times planning mode on Cambridge and a 72,000-lamp
//! town and prints JSON.
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
use lamplighter_simulator::live::{LiveConfig, LiveNode, LiveTown, LorawanAir};

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
    /// Send the nodes' frames by LoRaWAN radio to simulated gateways, which forward them to
    /// the gateway bridge at this address (Semtech UDP; `udp_listen` of the running serve).
    #[arg(long)]
    pub udp: Option<std::net::SocketAddr>,
    /// Simulated gateways with --udp (registered in the data dir's lorawan.sqlite).
    #[arg(long, default_value_t = 2)]
    pub gateways: u16,
}

/// `sim live --udp` numbers its gateways up from this EUI (a made-up private range, apart
/// from the demo's).
const LIVE_GATEWAY_EUI: u64 = 0xAA55_5A00_0001_0000;

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
    // Over LoRaWAN, nodes hold their zone's multicast group, as the bridge of the running
    // system made it in the same data dir.
    let groups = match args.udp {
        Some(_) => crate::lorawan_system::zone_groups(&args.data_dir, &nodes)?,
        None => Vec::new(),
    };
    let live: Vec<LiveNode> = nodes
        .into_iter()
        .filter(|s| s.node.tenant == tenant)
        .map(|s| LiveNode {
            multicast: crate::lorawan_system::zone_sessions(&groups, &s),
            ..LiveNode::resuming(s)
        })
        .collect();
    let share = args.peak_per_h / 80.0;
    let peak = PeakRates {
        pedestrians_per_h: 30.0 * share,
        cyclists_per_h: 10.0 * share,
        vehicles_per_h: 40.0 * share,
    };
    let clock = ScaledClock::system();
    let config = LiveConfig {
        mqtt_host: args.mqtt_host.clone(),
        mqtt_port: args.mqtt_port,
        tenant,
        clock,
        report_interval_s: args.report_interval_s,
        silence_timeout_s: 900,
        time_zone: lamplighter_protocol::local_time::DEFAULT_TIME_ZONE,
        demand: Some(peak),
        seed: args.seed,
    };
    let town = match args.udp {
        Some(bridge) => {
            anyhow::ensure!(args.gateways > 0, "--gateways must be at least 1");
            let registry = lamplighter_broker::gateways::GatewayRegistry::open(&args.data_dir)?;
            let mut gateways = Vec::new();
            for i in 0..args.gateways {
                let eui = lamplighter_broker::gwmp::GatewayEui(LIVE_GATEWAY_EUI + u64::from(i));
                registry.add(eui, clock.now().0, Some("sim live gateway"))?;
                gateways.push(eui);
            }
            LiveTown::spawn_lorawan(
                live,
                config,
                LorawanAir {
                    bridge,
                    gateways,
                    // SF7: lamps in a town are near a gateway.
                    data_rate: lamplighter_protocol::lorawan::radio::DataRate {
                        sf: 7,
                        bw_khz: 125,
                    },
                },
            )
            .await
            .context("cannot start the simulated gateways")?
        }
        None => LiveTown::spawn(live, config),
    };
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
    lamplighter_print_line!("{}", serde_json::to_string(&out).context("JSON")?);
    Ok(())
}

#[derive(Args)]
pub struct RunArgs {
    /// A town folder (Cambridge's GeoJSON, a points CSV such as Bristol's) or
    /// `procedural:LAMPS`.
    #[arg(long)]
    pub town: String,
    /// A policy name, or `all`.
    #[arg(long, default_value = "all")]
    pub policy: String,
    #[arg(long, default_value_t = 1)]
    pub days: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the JSON report here (default: stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HTML report with charts into this folder.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Electricity tariff, GBP per kWh.
    #[arg(long, default_value_t = 0.294)]
    pub tariff_gbp_per_kwh: f64,
    /// Grid carbon factor, kg CO2e per kWh.
    #[arg(long, default_value_t = 0.20705)]
    pub carbon_kg_per_kwh: f64,
    /// How nodes reach the controller: `ip` (MQTT over TCP) or `lorawan` (EU868 radio,
    /// gateways on a grid).
    #[arg(long, default_value = "ip")]
    pub radio: String,
    /// Distance between gateways with `--radio lorawan`.
    #[arg(long, default_value_t = 2000.0)]
    pub gateway_spacing_m: f64,
    /// Regions the town is planned as, each with its own controller (IP nodes only).
    #[arg(long, default_value_t = 1)]
    pub regions: usize,
    /// When the run starts: RFC 3339 (`2025-03-29T12:00:00Z`) or a date (12:00 UTC that
    /// day). Default 2024-11-04 12:00 UTC.
    #[arg(long)]
    pub start: Option<String>,
    /// The town's clocks, an IANA name (`Europe/London`). Default: `Europe/London` for a town
    /// in Britain or Ireland, else a fixed offset from the town's longitude.
    #[arg(long)]
    pub time_zone: Option<lamplighter_protocol::local_time::TimeZone>,
}

/// `--start` of `sim run`: RFC 3339, or a date meaning 12:00 UTC that day.
fn parse_start(s: &str) -> Result<lamplighter_protocol::UnixMs> {
    let utc = match chrono::DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.with_timezone(&chrono::Utc),
        Err(_) => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(12, 0, 0))
            .map(|t| t.and_utc())
            .with_context(|| {
                format!("--start: expected 2025-03-29T12:00:00Z or 2025-03-29, got {s:?}")
            })?,
    };
    let ms = u64::try_from(utc.timestamp_millis())
        .map_err(|_| anyhow::anyhow!("--start: {s:?} is before 1970"))?;
    Ok(lamplighter_protocol::UnixMs(ms))
}

#[derive(Args)]
pub struct BenchArgs {
    /// Lamps in the procedural town (Glasgow has about 72,000).
    #[arg(long, default_value_t = 72_000)]
    pub lamps: usize,
    #[arg(long, default_value = "adaptive")]
    pub policy: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Runs of each case; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Skip the Cambridge case (`--only big`) or the big town (`--only cambridge`).
    #[arg(long)]
    pub only: Option<String>,
    /// Regions the big town is planned as (default: one per 3,000 lamps).
    #[arg(long)]
    pub regions: Option<usize>,
}

#[derive(clap::Subcommand)]
pub enum SimCommand {
    /// Planning mode: compare policies on a town in virtual time.
    Run(RunArgs),
    /// Times planning mode on Cambridge and a large procedural town; prints JSON.
    Bench(BenchArgs),
    /// Simulated nodes from a data directory, over real MQTT, against a running `serve`.
    Live(LiveArgs),
}

pub async fn run(command: SimCommand) -> Result<()> {
    match command {
        SimCommand::Run(args) => tokio::task::spawn_blocking(move || plan(args)).await?,
        SimCommand::Bench(args) => tokio::task::spawn_blocking(move || bench(args)).await?,
        SimCommand::Live(args) => live(args).await,
    }
}

fn plan(args: RunArgs) -> Result<()> {
    use lamplighter_simulator::plan::{self, PlanOptions, TownSource};
    anyhow::ensure!(
        args.days >= 1 && args.days <= 366,
        "--days must be 1 to 366"
    );
    anyhow::ensure!(
        args.tariff_gbp_per_kwh >= 0.0 && args.carbon_kg_per_kwh >= 0.0,
        "--tariff-gbp-per-kwh and --carbon-kg-per-kwh must not be negative"
    );
    let town = match args.town.strip_prefix("procedural:") {
        Some(n) => TownSource::Procedural {
            lamps: n
                .parse()
                .with_context(|| format!("--town procedural:N needs a number, got {n:?}"))?,
            seed: args.seed,
        },
        None => TownSource::Path(PathBuf::from(&args.town)),
    };
    let radio = match args.radio.as_str() {
        "ip" => None,
        "lorawan" => {
            anyhow::ensure!(
                args.gateway_spacing_m.is_finite() && args.gateway_spacing_m >= 100.0,
                "--gateway-spacing-m must be at least 100"
            );
            Some(plan::radio::RadioConfig {
                gateway_spacing_m: args.gateway_spacing_m,
                ..Default::default()
            })
        }
        other => anyhow::bail!("--radio must be ip or lorawan, got {other:?}"),
    };
    let opts = PlanOptions {
        town,
        radio,
        policies: vec![args.policy.clone()],
        days: args.days,
        seed: args.seed,
        tariff_gbp_per_kwh: args.tariff_gbp_per_kwh,
        carbon_kg_per_kwh: args.carbon_kg_per_kwh,
        regions: args.regions,
        start: args.start.as_deref().map(parse_start).transpose()?,
        time_zone: args.time_zone,
        ..PlanOptions::default()
    };
    let started = Instant::now();
    let mut last_shown = 0.0;
    let mut progress = |done: f64| {
        // A progress line on stderr for runs that take more than a moment.
        if started.elapsed() > Duration::from_secs(2) && done - last_shown >= 0.05 {
            last_shown = done;
            eprint!("\rsimulating: {:>3.0} %", done * 100.0);
        }
    };
    let report = plan::run(&opts, &mut progress)?;
    if last_shown > 0.0 {
        eprintln!();
    }
    let json = report.to_json();
    match &args.json {
        Some(path) => std::fs::write(path, &json)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => lamplighter_print_line!("{json}"),
    }
    if let Some(dir) = &args.report {
        plan::write_html_report(&report, dir)?;
        eprintln!(
            "lamplighter: report written to {}",
            dir.join("report.html").display()
        );
    }
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    use lamplighter_simulator::plan::{self, BenchOptions};
    let opts = BenchOptions {
        procedural_lamps: args.lamps,
        procedural_policy: args.policy,
        seed: args.seed,
        runs: args.runs.max(1),
        only: args.only.clone(),
        procedural_regions: args.regions,
        ..BenchOptions::default()
    };
    lamplighter_print_line!("{}", plan::bench(&opts));
    Ok(())
}
