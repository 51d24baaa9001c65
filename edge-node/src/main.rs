//! `lamplighter-edge`: one node on one lamp column, from a TOML file.
//!
//! ```toml
//! dev_eui = "70B3D5E012345678"
//! dev_addr = "01ABCDEF"
//! nwk_s_key = "00112233445566778899aabbccddeeff"
//! app_s_key = "ffeeddccbbaa99887766554433221100"
//! latitude = 51.4545
//! longitude = -2.5879
//! rated_power_w = 40.0
//! report_interval_s = 300
//! time_zone = "Europe/London"   # the fail-safe profile's clocks, across their changes (default)
//! state_file = "/var/lib/lamplighter-edge/state.json"   # FCnt and energy meter survive restarts
//!
//! [mqtt]
//! host = "127.0.0.1"
//! port = 1883
//! username = "node-70B3D5E012345678"
//! password = "..."
//! tenant = "demo"
//! ```
//! `lamplighter nodes export` prints these values for every provisioned node.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use lamplighter_edge::agent::{run_node, NodeProbe};
use lamplighter_edge::config::EdgeConfig;
use lamplighter_edge::core::NodeCore;
use lamplighter_edge::hardware::SimulatedLamp;
use lamplighter_protocol::time::ScaledClock;
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(
    name = "lamplighter-edge",
    version,
    about = "Lamplighter edge node agent"
)]
struct Cli {
    /// The node's TOML configuration.
    #[arg(long)]
    config: PathBuf,
}

/// More frames than a node sends between two saves of its state.
const FCNT_SKIP_ON_START: u32 = 64;

/// What the node keeps across restarts: without its FCnt the controller would reject its
/// frames as replays.
#[derive(Serialize, Deserialize, Default)]
struct State {
    fcnt_up: u32,
    energy_wh: f64,
}

fn load_state(path: &Path) -> Result<State> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .with_context(|| format!("corrupt state file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read state file {}", path.display())),
    }
}

fn save_state(path: &Path, state: &State) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(state)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lamplighter-edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let text = std::fs::read_to_string(&cli.config)
        .with_context(|| format!("cannot read {}", cli.config.display()))?;
    let cfg: EdgeConfig = toml::from_str(&text)
        .with_context(|| format!("invalid config {}", cli.config.display()))?;
    anyhow::ensure!(
        (-90.0..=90.0).contains(&cfg.latitude) && (-180.0..=180.0).contains(&cfg.longitude),
        "latitude/longitude out of range"
    );
    anyhow::ensure!(
        cfg.report_interval_s >= 10,
        "report_interval_s must be at least 10"
    );
    let state = load_state(&cfg.state_file)?;
    let clock = ScaledClock::system();
    let node = cfg.node_config();
    // The state is saved every 10 s; frames sent after the last save would be reused after
    // a crash and rejected as replays, so a restart skips well past them.
    let fcnt_up = state.fcnt_up.wrapping_add(FCNT_SKIP_ON_START);
    let core = NodeCore::new(node, clock.now(), fcnt_up, state.energy_wh);
    let hardware = SimulatedLamp::new(cfg.latitude, cfg.longitude, cfg.rated_power_w);
    let link = cfg.mqtt_link();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let probe = Arc::new(NodeProbe::default());
        // No sensor wired in this build: presence arrives from the hardware layer only.
        let (_presence_tx, presence_rx) = tokio::sync::mpsc::channel(16);
        let node_task = tokio::spawn(run_node(
            core,
            hardware,
            link,
            clock,
            presence_rx,
            probe.clone(),
        ));
        eprintln!("lamplighter-edge: node {} running", cfg.dev_eui);
        let base_fcnt = fcnt_up;
        let persist = |probe: &NodeProbe| {
            let s = State {
                fcnt_up: base_fcnt.wrapping_add(probe.uplinks.load(Ordering::Relaxed) as u32),
                energy_wh: probe.energy_wh(),
            };
            if let Err(e) = save_state(&cfg.state_file, &s) {
                tracing::error!(error = %e, "cannot save node state");
            }
        };
        let mut every = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = every.tick() => persist(&probe),
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        node_task.abort();
        persist(&probe);
        Ok(())
    })
}
