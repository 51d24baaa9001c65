//! The live town: every lamp an edge-node core behind simulated hardware, each its own MQTT
//! client of the broker, with road users arriving as the demand shape says.
//!
//! Used by `lamplighter demo` (nodes in the same process as the broker and controller) and
//! by the end-to-end tests. Each node is a tokio task running
//! [`lamplighter_edge::agent::run_node`], the same glue `lamplighter-edge` runs on a column.

use std::sync::Arc;
use std::time::Duration;

use lamplighter_edge::agent::{run_node, MqttLink, NodeProbe};
use lamplighter_edge::core::{NodeConfig, NodeCore};
use lamplighter_edge::hardware::SimulatedLamp;
use lamplighter_edge::RoadUser;
use lamplighter_protocol::lorawan::SessionKeys;
use lamplighter_protocol::payload::FailSafeProfile;
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{DevAddr, DevEui, TenantId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::demand::{self, PeakRates};

/// One node of the live town, as provisioned.
#[derive(Debug, Clone)]
pub struct LiveNode {
    pub dev_eui: DevEui,
    pub dev_addr: DevAddr,
    pub keys: SessionKeys,
    pub lat: f64,
    pub lon: f64,
    pub rated_power_w: f32,
    pub mqtt_username: String,
    pub mqtt_password: String,
    /// Next uplink FCnt (the node's persisted counter).
    pub fcnt_up: u32,
    /// The node's energy meter.
    pub energy_wh: f64,
}

impl LiveNode {
    /// A provisioned node as the simulator runs it, resuming the counters the controller has
    /// seen, as the node's own non-volatile memory would.
    pub fn resuming(s: lamplighter_controller::store::StoredNode) -> LiveNode {
        LiveNode {
            dev_eui: s.node.dev_eui,
            dev_addr: s.node.dev_addr,
            keys: s.node.keys,
            lat: s.node.lat,
            lon: s.node.lon,
            rated_power_w: s.node.rated_power_w,
            mqtt_username: s.mqtt_username,
            mqtt_password: s.mqtt_password,
            fcnt_up: s.node.last_fcnt_up.map_or(0, |f| f.wrapping_add(1)),
            energy_wh: s.node.last_energy_dwh.unwrap_or(0) as f64 / 10.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub mqtt_host: String,
    pub mqtt_port: u16,
    pub tenant: TenantId,
    pub clock: ScaledClock,
    pub report_interval_s: u32,
    pub silence_timeout_s: u16,
    pub utc_offset_min: i16,
    /// Road users; None for a town without traffic (tests inject presence themselves).
    pub demand: Option<PeakRates>,
    pub seed: u64,
}

pub struct LiveTown {
    pub probes: Vec<Arc<NodeProbe>>,
    presence: Vec<mpsc::Sender<RoadUser>>,
    tasks: Vec<JoinHandle<()>>,
    latencies_ms: Arc<std::sync::Mutex<Vec<u64>>>,
}

/// Presence-to-command latency seen at the nodes, in the clock's milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LatencyStats {
    pub samples: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl LiveTown {
    /// Spawns every node (connections are spread, 2,000 a second, so the broker is not hit by
    /// every CONNECT at once) and the road users.
    pub fn spawn(nodes: Vec<LiveNode>, config: LiveConfig) -> LiveTown {
        let mut probes = Vec::with_capacity(nodes.len());
        let mut presence = Vec::with_capacity(nodes.len());
        let mut tasks = Vec::with_capacity(nodes.len() + 1);
        let spread_ms = (nodes.len() as u64 / 2).max(1_000);
        let n = nodes.len().max(1) as u64;
        for (i, node) in nodes.into_iter().enumerate() {
            let now = config.clock.now();
            let mut node_config =
                NodeConfig::new(node.dev_eui, node.dev_addr, node.keys, node.lat, node.lon);
            node_config.report_interval_s = config.report_interval_s;
            node_config.fail_safe =
                FailSafeProfile::part_night(config.utc_offset_min, config.silence_timeout_s);
            let core = NodeCore::new(node_config, now, node.fcnt_up, node.energy_wh);
            let hardware = SimulatedLamp::new(node.lat, node.lon, node.rated_power_w);
            let link = MqttLink {
                host: config.mqtt_host.clone(),
                port: config.mqtt_port,
                username: node.mqtt_username,
                password: node.mqtt_password,
                tenant: config.tenant.clone(),
            };
            let probe = Arc::new(NodeProbe::default());
            let (tx, rx) = mpsc::channel(64);
            let delay = Duration::from_millis(i as u64 * spread_ms / n);
            let clock = config.clock;
            let task_probe = probe.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                run_node(core, hardware, link, clock, rx, task_probe).await;
            }));
            probes.push(probe);
            presence.push(tx);
        }
        let latencies_ms = Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(peak) = config.demand {
            tasks.push(tokio::spawn(road_users(
                presence.clone(),
                probes.clone(),
                latencies_ms.clone(),
                peak,
                config.clock,
                config.utc_offset_min,
                config.seed,
            )));
        }
        LiveTown {
            probes,
            presence,
            tasks,
            latencies_ms,
        }
    }

    /// Latency from a road user's detection at a lamp that was not already raised to the
    /// command that raised it, as applied at that node.
    pub fn latency(&self) -> LatencyStats {
        let mut v = self
            .latencies_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if v.is_empty() {
            return LatencyStats::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        LatencyStats {
            samples: v.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: v[v.len() - 1],
        }
    }

    /// A road user passes lamp `index` now.
    pub fn detect(&self, index: usize, who: RoadUser) -> bool {
        self.presence
            .get(index)
            .is_some_and(|tx| tx.try_send(who).is_ok())
    }

    pub fn online(&self) -> usize {
        self.probes
            .iter()
            .filter(|p| p.connected.load(std::sync::atomic::Ordering::Relaxed))
            .count()
    }

    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Road users arrive at each lamp as a Poisson process whose rate follows the demand shape
/// at the (scaled) clock's time of day. Checked every 100 ms of real time.
///
/// A detection at a lamp that is not ramping up or raised already is timed: the latency is
/// from the detection to the next command the node applies that raises its target.
async fn road_users(
    lamps: Vec<mpsc::Sender<RoadUser>>,
    probes: Vec<Arc<NodeProbe>>,
    latencies_ms: Arc<std::sync::Mutex<Vec<u64>>>,
    peak: PeakRates,
    clock: ScaledClock,
    utc_offset_min: i16,
    seed: u64,
) {
    use std::sync::atomic::Ordering;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let period = Duration::from_millis(100);
    let mut last = clock.now();
    // (lamp, detected at, target then)
    let mut timing: Vec<(usize, u64, f32)> = Vec::new();
    loop {
        tokio::time::sleep(period).await;
        let now = clock.now();
        let dt_s = now.since(last) as f64 / 1000.0;
        last = now;
        timing.retain(|&(i, t0, target_before)| {
            let p = &probes[i];
            let applied = p.last_command_ms.load(Ordering::Relaxed);
            if applied >= t0 && p.target_pct() > target_before {
                let mut l = latencies_ms.lock().unwrap_or_else(|e| e.into_inner());
                l.push(applied - t0);
                false
            } else {
                // Give up on detections that raised nothing (daylight, static policies).
                now.0.saturating_sub(t0) < 60_000
            }
        });
        let rates = demand::rates_per_s(peak, now.local_seconds_of_day(utc_offset_min as i32));
        for (i, tx) in lamps.iter().enumerate() {
            for &(who, rate) in &rates {
                // P(at least one arrival in dt) for small rate * dt; several in one check are
                // rare enough at these rates to count as one.
                if rng.gen::<f64>() < 1.0 - (-rate * dt_s).exp() && tx.try_send(who).is_ok() {
                    let p = &probes[i];
                    let steady = (p.level_pct() - p.target_pct()).abs() < 0.01;
                    if steady && p.target_pct() < 100.0 && !timing.iter().any(|t| t.0 == i) {
                        timing.push((i, clock.now().0, p.target_pct()));
                    }
                }
            }
        }
    }
}
