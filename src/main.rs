//! `lamplighter`: the command line. It composes the crates and does nothing else: every
//! behaviour lives in a library crate, and this file parses flags, builds the parts, and
//! prints one clear line on failure.

use lamplighter::{lamplighter_print_line, system};

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use lamplighter_controller::core::policy::{PolicyConfig, POLICY_NAMES};
use lamplighter_controller::core::ZoneParams;
use lamplighter_controller::store::{NewNode, Store};
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{sun, TenantId, UnixMs};
use lamplighter_simulator::demand::PeakRates;
use lamplighter_simulator::live::{LiveConfig, LiveNode, LiveTown, LorawanAir};

use system::SystemConfig;

#[derive(Parser)]
#[command(
    name = "lamplighter",
    version,
    about = "Smart street-lighting control: lamps follow demand"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the whole system with a simulated town, in one process, on loopback.
    Demo(DemoArgs),
    /// Runs the system for a real deployment (no simulated town).
    Serve(ServeArgs),
    /// Provisioned nodes.
    Nodes {
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// LoRaWAN tools: decode a frame, bench the gateway path.
    Lorawan {
        #[command(subcommand)]
        command: lamplighter::cli_lorawan::LorawanCommand,
    },
    /// LoRaWAN gateways (Semtech UDP) the bridge listens to.
    Gateways {
        #[command(subcommand)]
        command: lamplighter::cli_lorawan::GatewaysCommand,
    },
    /// Measuring tools: `bench ingest` (uplinks a self-started `serve` takes in over MQTT).
    Bench {
        #[command(subcommand)]
        command: lamplighter::ingest_bench::BenchCommand,
    },
    /// The simulator.
    Sim {
        #[command(subcommand)]
        command: lamplighter::cli_sim::SimCommand,
    },
    /// Demand forecasting.
    Forecast {
        #[command(subcommand)]
        command: ForecastCommand,
    },
    /// Exports readings, daily energy or the audit trail as CSV (works while running).
    Export(lamplighter::cli_store::ExportArgs),
    /// Copies the store to FILE with SQLite's online backup (safe while running).
    Backup(lamplighter::cli_store::BackupArgs),
    /// Dashboard users (works while running).
    Users {
        #[command(subcommand)]
        command: lamplighter::cli_accounts::UsersCommand,
    },
    /// API tokens for the dashboard's JSON API (works while running).
    Tokens {
        #[command(subcommand)]
        command: lamplighter::cli_accounts::TokensCommand,
    },
}

#[derive(Args)]
struct DemoArgs {
    /// Lamps in the simulated town.
    #[arg(long, default_value_t = 1000)]
    lamps: usize,
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Run the LoRaWAN gateway bridge (Semtech UDP) on this port (forwarders use 1700).
    #[arg(long)]
    udp_port: Option<u16>,
    /// How the simulated nodes reach the controller: `mqtt` (each node an MQTT client), or
    /// `lorawan` (radio frames to simulated gateways, which forward them over real UDP to
    /// the gateway bridge; the bridge listens on --udp-port, or on any free port).
    #[arg(long, value_enum, default_value_t = DemoTransport::Mqtt)]
    transport: DemoTransport,
    /// Simulated gateways for `--transport lorawan`; every node is heard by all of them.
    #[arg(long, default_value_t = 2)]
    gateways: u16,
    /// Where the store lives (default: the per-user data directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The simulated clock runs this many times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Stop after this much real time (e.g. 90s, 5m) and print a JSON summary on stdout.
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    run_for: Option<Duration>,
    /// When the simulated clock starts: `dusk` (shortly before the next sunset at the town,
    /// or now if it is dark already), `now`, or Unix seconds.
    #[arg(long, default_value = "dusk")]
    start: String,
    /// Seconds between a node's periodic reports (simulated time).
    #[arg(long, default_value_t = 60)]
    report_interval_s: u32,
    /// Seed of the town's layout and its road users.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The lighting policy: profile-reactive, full, part-night, reactive or adaptive.
    #[arg(long, default_value = "profile-reactive")]
    policy: String,
    #[command(flatten)]
    influx: lamplighter::cli_store::InfluxArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DemoTransport {
    Mqtt,
    Lorawan,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (see README); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    mqtt_port: Option<u16>,
    #[arg(long)]
    http_port: Option<u16>,
    #[command(flatten)]
    influx: lamplighter::cli_store::InfluxArgs,
}

#[derive(Subcommand)]
enum NodesCommand {
    /// Prints the provisioned nodes as CSV: ids, position, MQTT credentials, session keys
    /// and topics, for loading real devices. Works while the system runs.
    Export {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Provisions lamps from a CSV file (tenant,zone,latitude,longitude[,rated_power_w]).
    Import {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        file: PathBuf,
    },
    /// Names provisioned lamps on their tenant's own network (The Things Stack device IDs)
    /// from a CSV file (dev_eui,device_id), so commands reach them before their first uplink.
    DeviceIds {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ForecastCommand {
    /// Rolling-origin evaluation of the model against four baselines; one JSON object.
    Eval {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        time_column: String,
        #[arg(long)]
        value_column: String,
        /// strftime format of the time column, e.g. "%m/%d/%Y %I:%M:%S %p".
        #[arg(long)]
        time_format: String,
        /// Horizons in steps (repeatable); default: one step and one hour.
        #[arg(long = "horizon")]
        horizons: Vec<u32>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=off,rumqttc=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            // The reader went away (`| head`): nothing more to say.
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line, whatever the error chain holds.
            let message = format!("{e:#}");
            let one_line: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("lamplighter: {}", one_line.join(" "));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Lorawan { command } => lamplighter::cli_lorawan::run_lorawan(command),
        Command::Gateways { command } => lamplighter::cli_lorawan::run_gateways(command),
        Command::Demo(args) => runtime()?.block_on(demo(args)),
        Command::Sim { command } => runtime()?.block_on(lamplighter::cli_sim::run(command)),
        Command::Bench { command } => lamplighter::ingest_bench::run(command),
        Command::Serve(args) => runtime()?.block_on(serve(args)),
        Command::Nodes {
            command: NodesCommand::Export { data_dir },
        } => {
            let dir = match data_dir {
                Some(d) => d,
                None => system::default_data_dir()?,
            };
            anyhow::ensure!(
                dir.join(lamplighter_controller::store::DB_FILE).exists(),
                "no store in {} (run `lamplighter demo` or `serve` with that --data-dir first)",
                dir.display()
            );
            let store = Store::open(&dir)?;
            let stdout = std::io::stdout();
            store.export_nodes_csv(stdout.lock())?;
            Ok(())
        }
        Command::Nodes {
            command: NodesCommand::Import { data_dir, file },
        } => {
            let dir = match data_dir {
                Some(d) => d,
                None => system::default_data_dir()?,
            };
            let added = lamplighter::cli_nodes::import(&dir, &file)?;
            eprintln!(
                "lamplighter: provisioned {added} new nodes in {}; restart `serve` to control them",
                dir.display()
            );
            Ok(())
        }
        Command::Nodes {
            command: NodesCommand::DeviceIds { data_dir, file },
        } => {
            let dir = match data_dir {
                Some(d) => d,
                None => system::default_data_dir()?,
            };
            let named = lamplighter::cli_nodes::import_device_ids(&dir, &file)?;
            eprintln!(
                "lamplighter: named {named} lamps on their network in {}; restart `serve` to use the names",
                dir.display()
            );
            Ok(())
        }
        Command::Export(args) => lamplighter::cli_store::export(args),
        Command::Backup(args) => lamplighter::cli_store::backup(args),
        Command::Users { command } => lamplighter::cli_accounts::run_users(command),
        Command::Tokens { command } => lamplighter::cli_accounts::run_tokens(command),
        Command::Forecast {
            command:
                ForecastCommand::Eval {
                    data,
                    time_column,
                    value_column,
                    time_format,
                    horizons,
                },
        } => {
            let report = lamplighter_forecast::evaluate(&lamplighter_forecast::EvalOptions {
                data,
                time_column,
                value_column,
                time_format,
                horizons,
            })?;
            lamplighter_print_line!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The demo town stands in Bristol.
const DEMO_CENTRE: (f64, f64) = (51.4545, -2.5879);
const DEMO_TENANT: &str = "demo";
/// The demo's gateways are numbered up from this EUI (a private, made-up range).
const DEMO_GATEWAY_EUI: u64 = 0xAA55_5A00_0000_0000;
/// The demo's LoRaWAN nodes send at EU868 DR5 (SF7/125 kHz): lamps in a town are close to
/// a gateway, and a short airtime keeps each node's 1 % duty cycle far from its reports.
const DEMO_NODE_DATA_RATE: lamplighter_protocol::lorawan::radio::DataRate =
    lamplighter_protocol::lorawan::radio::DataRate { sf: 7, bw_khz: 125 };

fn demo_start(spec: &str) -> Result<UnixMs> {
    let now = ScaledClock::system().now();
    match spec {
        "now" => Ok(now),
        "dusk" => {
            let (lat, lon) = DEMO_CENTRE;
            if sun::is_dark(lat, lon, now) {
                Ok(now)
            } else {
                let dusk = sun::next_transition(lat, lon, now).unwrap_or(now);
                Ok(UnixMs(dusk.0.saturating_sub(10 * 60_000).max(now.0)))
            }
        }
        s => s.parse::<u64>().map(UnixMs::from_secs).map_err(|_| {
            anyhow::anyhow!("--start must be `dusk`, `now` or Unix seconds, got {s:?}")
        }),
    }
}

async fn demo(args: DemoArgs) -> Result<()> {
    anyhow::ensure!(args.lamps > 0, "--lamps must be at least 1");
    anyhow::ensure!(
        args.speed.is_finite() && args.speed > 0.0 && args.speed <= 10_000.0,
        "--speed must be in (0, 10000], got {}",
        args.speed
    );
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => system::default_data_dir()?,
    };
    let tenant = TenantId::new(DEMO_TENANT)?;

    // The town, provisioned once; a different size or seed provisions it anew.
    let town = lamplighter_town::Town::procedural(args.lamps, args.seed, DEMO_CENTRE);
    {
        let mut store = Store::open(&data_dir)?;
        let existing = store.nodes()?;
        let matches = existing.len() == town.lamps.len()
            && existing.iter().zip(&town.lamps).all(|(s, l)| {
                s.node.lamp == l.id
                    && (s.node.lat - l.lat).abs() < 1e-9
                    && (s.node.lon - l.lon).abs() < 1e-9
            });
        if !matches {
            store.remove_tenant(&tenant)?;
            let new: Vec<NewNode> = town
                .lamps
                .iter()
                .map(|l| NewNode::from_town(&tenant, l))
                .collect();
            let added = store.provision(&new)?;
            tracing::info!(added, dir = %data_dir.display(), "provisioned the demo town");
        }
    }

    let mut config = SystemConfig {
        data_dir: Some(data_dir.clone()),
        ..SystemConfig::default()
    };
    config.mqtt_listen.set_port(args.mqtt_port);
    config.http_listen.set_port(args.http_port);
    config.store.influx = args.influx.config()?;
    config.udp_listen = match (args.udp_port, args.transport) {
        (Some(p), _) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], p))),
        (None, DemoTransport::Lorawan) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        (None, DemoTransport::Mqtt) => None,
    };
    // The simulated gateways, known to the bridge before it starts.
    let gateway_euis: Vec<lamplighter_broker::gwmp::GatewayEui> = match args.transport {
        DemoTransport::Mqtt => Vec::new(),
        DemoTransport::Lorawan => {
            anyhow::ensure!(args.gateways > 0, "--gateways must be at least 1");
            let registry = lamplighter_broker::gateways::GatewayRegistry::open(&data_dir)?;
            let now_ms = ScaledClock::system().now().0;
            (0..args.gateways)
                .map(|i| {
                    let eui = lamplighter_broker::gwmp::GatewayEui(DEMO_GATEWAY_EUI + u64::from(i));
                    registry.add(eui, now_ms, Some("demo gateway"))?;
                    Ok(eui)
                })
                .collect::<Result<_>>()?
        }
    };
    config.controller.report_interval_s = args.report_interval_s;
    config.controller.policy = PolicyConfig::named(&args.policy).with_context(|| {
        format!(
            "unknown policy {:?}; known: {}",
            args.policy,
            POLICY_NAMES.join(", ")
        )
    })?;
    // The town's roads give each zone its design class and capacity (for `adaptive`).
    config.controller.zones = town
        .zones
        .iter()
        .map(|z| ZoneParams {
            tenant: Some(tenant.clone()),
            zone: z.id,
            design_class: z.design_class,
            capacity_per_h: z.capacity_per_h,
        })
        .collect();
    config.mqtt_max_connections = args.lamps + 64;
    config.roads = lamplighter::cli_accounts::town_roads(&town, &tenant);
    let clock = ScaledClock::starting_at(demo_start(&args.start)?, args.speed);
    lamplighter::cli_accounts::ensure_demo_admin(&data_dir)?;
    let (system, nodes) = system::start(&config, &data_dir, clock).await?;

    let groups = match args.transport {
        DemoTransport::Lorawan => lamplighter::lorawan_system::zone_groups(&data_dir, &nodes)?,
        DemoTransport::Mqtt => Vec::new(),
    };
    let live_nodes = nodes
        .into_iter()
        .filter(|s| s.node.tenant == tenant)
        .map(|s| {
            let multicast = lamplighter::lorawan_system::zone_sessions(&groups, &s);
            LiveNode {
                multicast,
                ..LiveNode::resuming(s)
            }
        })
        .collect();
    let live_config = LiveConfig {
        mqtt_host: system.mqtt_addr.ip().to_string(),
        mqtt_port: system.mqtt_addr.port(),
        tenant,
        clock,
        report_interval_s: args.report_interval_s,
        silence_timeout_s: 900,
        time_zone: lamplighter_protocol::local_time::DEFAULT_TIME_ZONE,
        demand: Some(PeakRates::default()),
        seed: args.seed,
    };
    let town = match (&system.bridge, args.transport) {
        (Some(bridge), DemoTransport::Lorawan) => LiveTown::spawn_lorawan(
            live_nodes,
            live_config,
            LorawanAir {
                bridge: bridge.udp_addr,
                gateways: gateway_euis,
                data_rate: DEMO_NODE_DATA_RATE,
            },
        )
        .await
        .context("cannot start the simulated gateways")?,
        _ => LiveTown::spawn(live_nodes, live_config),
    };
    eprintln!(
        "lamplighter demo: {} lamps; dashboard http://{}  MQTT {}  data {}  (Ctrl-C stops)",
        args.lamps,
        system.http_addr,
        system.mqtt_addr,
        data_dir.display()
    );

    let started = std::time::Instant::now();
    match args.run_for {
        Some(d) => tokio::time::sleep(d).await,
        None => {
            tokio::signal::ctrl_c()
                .await
                .context("cannot wait for Ctrl-C")?;
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    let summary = system.controller.summary(None);
    let latency = town.latency();
    let lorawan = system.bridge.as_ref().map(|b| {
        let gateways: Vec<_> = town
            .gateways
            .iter()
            .map(|g| {
                use std::sync::atomic::Ordering::Relaxed;
                serde_json::json!({
                    "eui": g.eui.to_string(),
                    "frames_forwarded": g.stats.pushed.load(Relaxed),
                    "push_acks": g.stats.push_acks.load(Relaxed),
                    "downlinks_received": g.stats.downlinks.load(Relaxed),
                })
            })
            .collect();
        serde_json::json!({ "bridge": b.report(), "gateways": gateways })
    });
    town.stop();
    system.shutdown().await;
    if args.run_for.is_some() {
        let mut line = serde_json::to_value(&summary)?;
        if let Some(obj) = line.as_object_mut() {
            obj.insert("wall_s".into(), wall_s.into());
            obj.insert("speed".into(), args.speed.into());
            obj.insert(
                "uplinks_per_s".into(),
                (summary.uplinks as f64 / wall_s).into(),
            );
            // The nodes time commands on the scaled clock; divide by the speed for real time.
            let wall_ms = |ms: u64| ms as f64 / args.speed;
            obj.insert(
                "presence_to_command_wall_ms".into(),
                serde_json::json!({
                    "samples": latency.samples,
                    "p50": wall_ms(latency.p50_ms),
                    "p99": wall_ms(latency.p99_ms),
                    "max": wall_ms(latency.max_ms),
                }),
            );
            if let Some(l) = lorawan {
                obj.insert("lorawan".into(), l);
            }
        }
        lamplighter_print_line!("{line}");
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => SystemConfig::load(path)?,
        None => SystemConfig::default(),
    };
    if let Some(d) = args.data_dir {
        config.data_dir = Some(d);
    }
    if let Some(p) = args.mqtt_port {
        config.mqtt_listen.set_port(p);
    }
    if let Some(p) = args.http_port {
        config.http_listen.set_port(p);
    }
    config.store.influx = args.influx.config()?;
    config.validate()?;
    let data_dir = config.data_dir()?;
    let (system, nodes) = system::start(&config, &data_dir, ScaledClock::system()).await?;
    let lorawan = system
        .bridge
        .as_ref()
        .map(|b| format!("  LoRaWAN UDP {}", b.udp_addr))
        .unwrap_or_default();
    eprintln!(
        "lamplighter serve: {} nodes; dashboard http://{}  MQTT {}{lorawan}  data {}",
        nodes.len(),
        system.http_addr,
        system.mqtt_addr,
        data_dir.display()
    );
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    system.shutdown().await;
    Ok(())
}
