//! The live town: every lamp an edge-node core behind simulated hardware, with road users
//! arriving as the demand shape says. Nodes reach the controller one of two ways:
//!
//! - **MQTT** ([`LiveTown::spawn`]): each node its own MQTT client of the broker, running
//!   [`lamplighter_edge::agent::run_node`], the same glue `lamplighter-edge` runs on a column.
//! - **LoRaWAN** ([`LiveTown::spawn_lorawan`]): each node runs
//!   [`lamplighter_edge::radio::run_radio_node`] on a simulated radio. Its frames go on a
//!   shared "air" that every simulated gateway hears (with its own signal strength), and the
//!   gateways forward them over real UDP, Semtech protocol, to the bridge, exactly as packet
//!   forwarders on rooftops do; downlinks come back as PULL_RESP and go on the air for every
//!   node to hear.
//!
//! Used by `lamplighter demo` (nodes in the same process as the broker and controller), by
//! `sim live` and by the end-to-end tests.

use std::sync::Arc;
use std::time::Duration;

use lamplighter_broker::gwmp::GatewayEui;
use lamplighter_broker::simgw::{self, AirFrame, SimGateway};
use lamplighter_edge::agent::{run_node, MqttLink, NodeProbe};
use lamplighter_edge::core::{NodeConfig, NodeCore};
use lamplighter_edge::hardware::SimulatedLamp;
use lamplighter_edge::radio::{run_radio_node, SimulatedRadio};
use lamplighter_edge::RoadUser;
use lamplighter_protocol::local_time::TimeZone;
use lamplighter_protocol::lorawan::radio::DataRate;
use lamplighter_protocol::lorawan::SessionKeys;
use lamplighter_protocol::payload::FailSafeProfile;
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{DevAddr, DevEui, TenantId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{broadcast, mpsc};
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
    /// Its zone's multicast group (LoRaWAN nodes).
    pub multicast: Vec<lamplighter_edge::core::MulticastSession>,
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
            multicast: Vec::new(),
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
    /// The town's clocks, for its road users' time of day; a node's fail-safe takes the
    /// offset in force when it starts (a node keeps one offset).
    pub time_zone: TimeZone,
    /// Road users; None for a town without traffic (tests inject presence themselves).
    pub demand: Option<PeakRates>,
    pub seed: u64,
}

/// The radio side of a LoRaWAN town.
#[derive(Debug, Clone)]
pub struct LorawanAir {
    /// The bridge's Semtech UDP address.
    pub bridge: std::net::SocketAddr,
    /// One simulated gateway per EUI (they must be in the bridge's registry).
    pub gateways: Vec<GatewayEui>,
    /// The nodes' uplink data rate.
    pub data_rate: DataRate,
}

/// Uplink channels of EU868's three default channels; a node hops among them per frame.
const UPLINK_FREQS_HZ: [u32; 3] = [868_100_000, 868_300_000, 868_500_000];

pub struct LiveTown {
    pub probes: Vec<Arc<NodeProbe>>,
    /// The simulated gateways of a LoRaWAN town (empty over MQTT).
    pub gateways: Vec<SimGateway>,
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
            node_config.fail_safe = FailSafeProfile::part_night(
                config.time_zone.offset_min_at(now) as i16,
                config.silence_timeout_s,
            );
            node_config.time_zone = Some(config.time_zone);
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
                config.time_zone,
                config.seed,
            )));
        }
        LiveTown {
            probes,
            gateways: Vec::new(),
            presence,
            tasks,
            latencies_ms,
        }
    }

    /// Spawns every node on a simulated radio, the gateways that hear them, and the road
    /// users. `config.mqtt_*` is not used: the nodes reach the controller through the
    /// gateways and the bridge.
    pub async fn spawn_lorawan(
        nodes: Vec<LiveNode>,
        config: LiveConfig,
        air: LorawanAir,
    ) -> std::io::Result<LiveTown> {
        let (up_tx, up_rx) = mpsc::channel::<Vec<u8>>(nodes.len().max(64) * 2);
        // Every node hears every downlink and keeps its own; a node that falls this far
        // behind misses frames, as a radio does.
        let (down_tx, _) = broadcast::channel::<Vec<u8>>(4096);
        let mut gateways = Vec::with_capacity(air.gateways.len());
        let mut gateway_air = Vec::with_capacity(air.gateways.len());
        for &eui in &air.gateways {
            let (tx, rx) = mpsc::channel::<AirFrame>(nodes.len().max(64) * 2);
            gateways.push(
                simgw::spawn(eui, air.bridge, rx, down_tx.clone(), Duration::from_secs(5)).await?,
            );
            gateway_air.push(tx);
        }
        let mut tasks = vec![tokio::spawn(propagate(up_rx, gateway_air, air.data_rate))];
        let mut probes = Vec::with_capacity(nodes.len());
        let mut presence = Vec::with_capacity(nodes.len());
        for node in nodes {
            let now = config.clock.now();
            let mut node_config =
                NodeConfig::new(node.dev_eui, node.dev_addr, node.keys, node.lat, node.lon);
            node_config.report_interval_s = config.report_interval_s;
            node_config.fail_safe = FailSafeProfile::part_night(
                config.time_zone.offset_min_at(now) as i16,
                config.silence_timeout_s,
            );
            node_config.time_zone = Some(config.time_zone);
            node_config.multicast = node.multicast;
            let core = NodeCore::new(node_config, now, node.fcnt_up, node.energy_wh);
            let hardware = SimulatedLamp::new(node.lat, node.lon, node.rated_power_w);
            let radio = SimulatedRadio {
                uplinks: up_tx.clone(),
                downlinks: down_tx.subscribe(),
            };
            let probe = Arc::new(NodeProbe::default());
            let (tx, rx) = mpsc::channel(64);
            tasks.push(tokio::spawn(run_radio_node(
                core,
                hardware,
                radio,
                air.data_rate,
                config.clock,
                rx,
                probe.clone(),
            )));
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
                config.time_zone,
                config.seed,
            )));
        }
        Ok(LiveTown {
            probes,
            gateways,
            presence,
            tasks,
            latencies_ms,
        })
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
        for g in self.gateways {
            g.task.abort();
        }
    }
}

/// The air: every frame a node sends reaches every gateway, each with its own signal. The
/// signal is a fixed function of the frame and the gateway (no randomness to seed), spread
/// over -120..-60 dBm and -10..+10 dB SNR, so which gateway is "best" differs frame by frame
/// and the bridge's de-duplication has real choices to make.
async fn propagate(
    mut up: mpsc::Receiver<Vec<u8>>,
    gateways: Vec<mpsc::Sender<AirFrame>>,
    data_rate: DataRate,
) {
    while let Some(phy) = up.recv().await {
        let h = phy.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let freq_hz = UPLINK_FREQS_HZ[(h % 3) as usize];
        for (i, gw) in gateways.iter().enumerate() {
            let g = h.rotate_left(17 * (i as u32 + 1));
            let frame = AirFrame {
                phy: phy.clone(),
                freq_hz,
                datr: data_rate,
                rssi_dbm: -120 + (g % 61) as i32,
                snr_db: -10.0 + ((g >> 8) % 201) as f64 / 10.0,
            };
            // A gateway that cannot keep up misses the frame, as a busy demodulator does.
            let _ = gw.try_send(frame);
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
    time_zone: TimeZone,
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
        let rates = demand::rates_per_s(peak, time_zone.seconds_of_day(now));
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
