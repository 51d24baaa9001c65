//! The gateway bridge as a tokio service: a UDP socket speaking GWMP to the gateways, the
//! [`NetworkServer`] in the middle, and (optionally) an MQTT client on the embedded broker.
//!
//! ```text
//!            UDP task (owns the socket, drives the network server)
//! gateways <-----------------------------------------------> NetworkServer (sans-IO)
//!                 | uplinks (mpsc)            ^ downlinks (mpsc)
//!                 v                           |
//!            MQTT tasks: publish on lamplighter/{tenant}/up/{dev_eui};
//!            subscribe lamplighter/+/down/+ (unicast) and lamplighter/+/mcast/+ (groups)
//! ```
//!
//! The bridge connects to the embedded broker as an authenticated internal client, so the
//! controller sees LoRaWAN nodes exactly as it sees MQTT nodes. Without MQTT (tests, the
//! bench) the caller gets the two channels instead.
//!
//! Every datagram is answered or dropped with its reason counted in [`BridgeMetrics`]:
//! unknown gateways, bad shapes, bad `rxpk`, and TX_ACK errors. Nothing from the network
//! ends the loop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::topics::{self, Topic};
use lamplighter_protocol::{DevEui, TenantId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet as MqttPacket, QoS};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::dutycycle::BandReport;
use crate::gateways::GatewayRegistry;
use crate::gwmp::{self, GatewayEui, Packet};
use crate::netserver::{
    DeviceProfile, McGroup, NetworkServer, NsConfig, NsCounters, Priority, Uplink,
};

/// The embedded broker and who the bridge is there.
#[derive(Debug, Clone)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Where gateways send GWMP. Default 127.0.0.1:1700 (a laptop); 0.0.0.0:1700 in the field.
    pub udp_listen: SocketAddr,
    /// Holds `lorawan.sqlite`, the gateway registry.
    pub data_dir: PathBuf,
    pub ns: NsConfig,
    pub mqtt: Option<MqttTarget>,
}

/// A downlink for the network server.
#[derive(Debug, Clone)]
pub enum DownlinkRequest {
    Unicast {
        tenant: TenantId,
        dev_eui: DevEui,
        phy: Vec<u8>,
        priority: Priority,
    },
    Multicast {
        tenant: TenantId,
        phy: Vec<u8>,
        priority: Priority,
    },
}

/// Datagram-level counters.
#[derive(Debug, Default)]
pub struct BridgeMetrics {
    pub datagrams: AtomicU64,
    pub bad_datagrams: AtomicU64,
    pub unknown_gateway: AtomicU64,
    pub push_data: AtomicU64,
    pub pull_data: AtomicU64,
    pub tx_ack: AtomicU64,
    pub tx_ack_errors: AtomicU64,
    pub bad_rxpk: AtomicU64,
    pub pull_resp_sent: AtomicU64,
    /// Downlinks for a gateway that has not sent PULL_DATA yet (no address to send to).
    pub no_pull_address: AtomicU64,
    pub uplinks_published: AtomicU64,
    /// Uplinks dropped because the MQTT side could not keep up.
    pub uplinks_dropped: AtomicU64,
    pub downlink_messages: AtomicU64,
    pub bad_downlink_topics: AtomicU64,
    pub registry_reloads: AtomicU64,
}

/// The JSON the bridge reports (`bench`, logs, tests).
#[derive(Debug, Clone, Serialize)]
pub struct BridgeReport {
    pub datagrams: u64,
    pub bad_datagrams: u64,
    pub bad_datagrams_by_reason: std::collections::BTreeMap<&'static str, u64>,
    pub unknown_gateway: u64,
    pub push_data: u64,
    pub pull_data: u64,
    pub tx_ack: u64,
    pub tx_ack_errors: u64,
    pub bad_rxpk: u64,
    pub pull_resp_sent: u64,
    pub no_pull_address: u64,
    pub uplinks_published: u64,
    pub uplinks_dropped: u64,
    pub downlink_messages: u64,
    pub network_server: NsCounters,
    pub duty_cycle: std::collections::BTreeMap<String, Vec<BandReport>>,
}

struct Shared {
    ns: Mutex<NetworkServer>,
    metrics: BridgeMetrics,
    bad_by_reason: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    clock: ScaledClock,
}

/// A cheap handle on the running bridge.
#[derive(Clone)]
pub struct BridgeHandle {
    shared: Arc<Shared>,
    pub udp_addr: SocketAddr,
}

impl BridgeHandle {
    fn ns(&self) -> MutexGuard<'_, NetworkServer> {
        self.shared.ns.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Restores a multicast group's counter (see [`NetworkServer::restore_group_fcnt`]).
    pub fn restore_group_fcnt(&self, mc_addr: lamplighter_protocol::DevAddr, fcnt: u32) -> bool {
        self.ns().restore_group_fcnt(mc_addr, fcnt)
    }
    pub fn metrics(&self) -> &BridgeMetrics {
        &self.shared.metrics
    }
    /// Runs `f` on the network server under its lock (provisioning, tests).
    pub fn with_ns<T>(&self, f: impl FnOnce(&mut NetworkServer) -> T) -> T {
        f(&mut self.ns())
    }
    pub fn report(&self) -> BridgeReport {
        let m = &self.shared.metrics;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let now = self.shared.clock.now();
        let (network_server, duty_cycle) = {
            let mut ns = self.ns();
            (ns.counters().clone(), ns.duty_report(now))
        };
        BridgeReport {
            datagrams: get(&m.datagrams),
            bad_datagrams: get(&m.bad_datagrams),
            bad_datagrams_by_reason: self
                .shared
                .bad_by_reason
                .lock()
                .map(|g| g.clone())
                .unwrap_or_default(),
            unknown_gateway: get(&m.unknown_gateway),
            push_data: get(&m.push_data),
            pull_data: get(&m.pull_data),
            tx_ack: get(&m.tx_ack),
            tx_ack_errors: get(&m.tx_ack_errors),
            bad_rxpk: get(&m.bad_rxpk),
            pull_resp_sent: get(&m.pull_resp_sent),
            no_pull_address: get(&m.no_pull_address),
            uplinks_published: get(&m.uplinks_published),
            uplinks_dropped: get(&m.uplinks_dropped),
            downlink_messages: get(&m.downlink_messages),
            network_server,
            duty_cycle,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot listen for gateways (UDP) on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] crate::gateways::RegistryError),
    #[error("network server: {0}")]
    Provision(#[from] crate::netserver::NsProvisionError),
}

/// The running bridge. Without MQTT, `uplinks` yields accepted uplinks and `downlinks`
/// takes downlinks; with MQTT both are `None` (the MQTT tasks hold them).
pub struct Bridge {
    pub handle: BridgeHandle,
    pub tasks: Vec<JoinHandle<()>>,
    pub uplinks: Option<mpsc::Receiver<Uplink>>,
    pub downlinks: Option<mpsc::Sender<DownlinkRequest>>,
}

/// Starts the bridge. Returns once the UDP socket is bound.
pub async fn start(
    config: BridgeConfig,
    devices: Vec<DeviceProfile>,
    groups: Vec<McGroup>,
    clock: ScaledClock,
) -> Result<Bridge, BridgeError> {
    let registry = GatewayRegistry::open(&config.data_dir)?;
    let socket = UdpSocket::bind(config.udp_listen)
        .await
        .map_err(|source| BridgeError::Bind {
            addr: config.udp_listen,
            source,
        })?;
    let udp_addr = socket.local_addr().map_err(|source| BridgeError::Bind {
        addr: config.udp_listen,
        source,
    })?;
    let otaa: Vec<DevEui> = devices
        .iter()
        .filter(|d| matches!(d.activation, crate::netserver::Activation::Otaa { .. }))
        .map(|d| d.dev_eui)
        .collect();
    let mut ns = NetworkServer::new(config.ns.clone(), devices)?;
    for dev_eui in otaa {
        ns.restore_dev_nonces(dev_eui, registry.dev_nonces(dev_eui)?);
    }
    for g in groups {
        ns.add_group(g)?;
    }
    let shared = Arc::new(Shared {
        ns: Mutex::new(ns),
        metrics: BridgeMetrics::default(),
        bad_by_reason: Mutex::new(Default::default()),
        clock,
    });
    let handle = BridgeHandle { shared, udp_addr };
    let (up_tx, up_rx) = mpsc::channel::<Uplink>(65_536);
    let (down_tx, down_rx) = mpsc::channel::<DownlinkRequest>(65_536);

    let mut tasks = vec![tokio::spawn(udp_loop(
        handle.clone(),
        socket,
        registry,
        up_tx,
        down_rx,
    ))];
    let (uplinks, downlinks) = match config.mqtt {
        Some(target) => {
            tasks.extend(mqtt_tasks(handle.clone(), target, up_rx, down_tx));
            (None, None)
        }
        None => (Some(up_rx), Some(down_tx)),
    };
    tracing::info!(%udp_addr, "LoRaWAN gateway bridge listening (Semtech UDP)");
    Ok(Bridge {
        handle,
        tasks,
        uplinks,
        downlinks,
    })
}

struct UdpState {
    handle: BridgeHandle,
    registry: GatewayRegistry,
    known: std::collections::HashSet<GatewayEui>,
    last_reload: Instant,
    /// The registry's `data_version` at the last reload.
    registry_version: Option<i64>,
    pull_addr: HashMap<GatewayEui, (SocketAddr, u8)>,
    token: u16,
    logged: std::collections::HashSet<&'static str>,
}

impl UdpState {
    fn reload(&mut self) {
        self.last_reload = Instant::now();
        self.registry_version = self.registry.data_version().ok();
        self.handle
            .shared
            .metrics
            .registry_reloads
            .fetch_add(1, Ordering::Relaxed);
        match self.registry.all() {
            Ok(set) => self.known = set,
            Err(e) => tracing::warn!(error = %e, "cannot read the gateway registry"),
        }
    }

    /// Whether a gateway is registered. An unknown one reads the registry again at once if
    /// it changed (a gateway added while the bridge runs is heard from its first datagram),
    /// else at most once a second, so a flood from strangers costs no reads.
    fn is_known(&mut self, eui: GatewayEui) -> bool {
        if self.known.contains(&eui) {
            return true;
        }
        let changed = self.registry.data_version().ok() != self.registry_version;
        if changed || self.last_reload.elapsed() >= Duration::from_secs(1) {
            self.reload();
        }
        self.known.contains(&eui)
    }

    fn bad(&mut self, kind: &'static str, detail: &str, from: SocketAddr) {
        let m = &self.handle.shared.metrics;
        m.bad_datagrams.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.handle.shared.bad_by_reason.lock() {
            *g.entry(kind).or_default() += 1;
        }
        if self.logged.insert(kind) {
            tracing::warn!(%from, reason = detail, "dropped a gateway datagram (further ones of this kind are counted, not logged)");
        }
    }
}

async fn udp_loop(
    handle: BridgeHandle,
    socket: UdpSocket,
    registry: GatewayRegistry,
    up_tx: mpsc::Sender<Uplink>,
    mut down_rx: mpsc::Receiver<DownlinkRequest>,
) {
    let clock = handle.shared.clock;
    let mut st = UdpState {
        handle: handle.clone(),
        registry,
        known: Default::default(),
        last_reload: Instant::now(),
        registry_version: None,
        pull_addr: HashMap::new(),
        token: 1,
        logged: Default::default(),
    };
    st.reload();
    let mut buf = vec![0u8; gwmp::MAX_DATAGRAM];
    let mut downlinks_open = true;
    let mut recv_error_logged = false;
    loop {
        let deadline = handle.ns().poll_timeout();
        let wait = deadline
            .map(|t| clock.wall_until(t))
            .unwrap_or(Duration::from_millis(500))
            .min(Duration::from_millis(500));
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    recv_error_logged = false;
                    on_datagram(&mut st, &socket, &buf[..n], from).await;
                    // Drain what else is waiting before the network server runs.
                    for _ in 0..256 {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, from)) => on_datagram(&mut st, &socket, &buf[..n], from).await,
                            Err(_) => break,
                        }
                    }
                }
                Err(e) => {
                    // ICMP port unreachable from a vanished gateway shows up here on some OSes.
                    if !recv_error_logged {
                        tracing::debug!(error = %e, "UDP receive error");
                        recv_error_logged = true;
                    }
                }
            },
            d = down_rx.recv(), if downlinks_open => match d {
                Some(d) => on_downlink(&handle, d),
                None => downlinks_open = false,
            },
            _ = tokio::time::sleep(wait) => {}
        }
        if st.last_reload.elapsed() >= Duration::from_secs(5) {
            st.reload();
        }
        let (uplinks, txs) = {
            let mut ns = handle.ns();
            ns.handle_timeout(clock.now());
            let mut ups = Vec::new();
            while let Some(u) = ns.poll_uplink() {
                ups.push(u);
            }
            // Stored before the JoinAccept goes out, so no restart can accept it twice.
            while let Some((dev_eui, nonce)) = ns.poll_dev_nonce() {
                if let Err(e) = st.registry.record_dev_nonce(dev_eui, nonce, clock.now().0) {
                    tracing::error!(%dev_eui, error = %e, "cannot store a DevNonce");
                }
            }
            let mut txs = Vec::new();
            while let Some(t) = ns.poll_transmit() {
                txs.push(t);
            }
            (ups, txs)
        };
        for u in uplinks {
            if up_tx.try_send(u).is_err() {
                handle
                    .shared
                    .metrics
                    .uplinks_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        for t in txs {
            if let crate::netserver::TxKind::Multicast { mc_addr, fcnt } = t.what {
                // Zone groups live in the registry; a controller's own groups may not.
                if let Err(e) = st.registry.record_group_fcnt(mc_addr, fcnt) {
                    tracing::error!(%mc_addr, error = %e, "cannot store a group FCnt");
                }
            }
            match st.pull_addr.get(&t.gateway) {
                Some(&(addr, version)) => {
                    st.token = st.token.wrapping_add(1);
                    let d = gwmp::pull_resp(version, st.token, &t.txpk);
                    if socket.send_to(&d, addr).await.is_ok() {
                        handle
                            .shared
                            .metrics
                            .pull_resp_sent
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    handle
                        .shared
                        .metrics
                        .no_pull_address
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn on_downlink(handle: &BridgeHandle, d: DownlinkRequest) {
    let now = handle.shared.clock.now();
    let mut ns = handle.ns();
    let result = match &d {
        DownlinkRequest::Unicast {
            tenant,
            dev_eui,
            phy,
            priority,
        } => ns.handle_downlink(now, tenant, *dev_eui, phy, *priority),
        DownlinkRequest::Multicast {
            tenant,
            phy,
            priority,
        } => ns.handle_multicast(now, tenant, phy, *priority).map(|_| ()),
    };
    if let Err(e) = result {
        tracing::debug!(reason = %e, "downlink refused");
    }
}

async fn on_datagram(st: &mut UdpState, socket: &UdpSocket, d: &[u8], from: SocketAddr) {
    let m = &st.handle.shared.metrics;
    m.datagrams.fetch_add(1, Ordering::Relaxed);
    let packet = match gwmp::parse(d) {
        Ok(p) => p,
        Err(e) => {
            st.bad(e.kind(), &e.to_string(), from);
            return;
        }
    };
    let Some(gateway) = packet.gateway() else {
        // ACKs and PULL_RESP travel the other way.
        st.bad(
            "direction",
            "a downstream packet type sent to the bridge",
            from,
        );
        return;
    };
    if !st.is_known(gateway) {
        st.handle
            .shared
            .metrics
            .unknown_gateway
            .fetch_add(1, Ordering::Relaxed);
        if st.logged.insert("unknown-gateway") {
            tracing::warn!(%gateway, %from, "datagram from an unknown gateway dropped (add it with `lamplighter gateways add`); further ones are counted");
        }
        return;
    }
    let m = &st.handle.shared.metrics;
    match packet {
        Packet::PushData {
            version,
            token,
            rxpk,
            ..
        } => {
            m.push_data.fetch_add(1, Ordering::Relaxed);
            let _ = socket
                .send_to(&gwmp::ack(version, token, gwmp::PUSH_ACK), from)
                .await;
            let now = st.handle.shared.clock.now();
            let mut ns = st.handle.ns();
            for r in rxpk {
                match r {
                    Ok(frame) => ns.handle_rx(now, gateway, frame),
                    Err(reason) => {
                        m.bad_rxpk.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%gateway, reason, "rxpk dropped");
                    }
                }
            }
        }
        Packet::PullData { version, token, .. } => {
            m.pull_data.fetch_add(1, Ordering::Relaxed);
            st.pull_addr.insert(gateway, (from, version));
            let _ = socket
                .send_to(&gwmp::ack(version, token, gwmp::PULL_ACK), from)
                .await;
        }
        Packet::TxAck { error, .. } => {
            m.tx_ack.fetch_add(1, Ordering::Relaxed);
            if let Some(e) = error.filter(|e| e != "NONE") {
                m.tx_ack_errors.fetch_add(1, Ordering::Relaxed);
                st.handle.ns().handle_tx_ack_error(gateway, &e);
            }
        }
        _ => {}
    }
}

fn mqtt_tasks(
    handle: BridgeHandle,
    target: MqttTarget,
    mut up_rx: mpsc::Receiver<Uplink>,
    down_tx: mpsc::Sender<DownlinkRequest>,
) -> Vec<JoinHandle<()>> {
    let mut options = MqttOptions::new(&target.client_id, &target.host, target.port);
    options.set_credentials(&target.username, &target.password);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);

    let poll = {
        let handle = handle.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut down_logged = false;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(MqttPacket::ConnAck(_))) => {
                        down_logged = false;
                        for filter in [topics::ALL_DOWNLINKS, topics::ALL_MULTICAST] {
                            if let Err(e) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                                tracing::error!(error = %e, filter, "bridge cannot subscribe");
                            }
                        }
                    }
                    Ok(Event::Incoming(MqttPacket::Publish(p))) => {
                        let m = &handle.shared.metrics;
                        m.downlink_messages.fetch_add(1, Ordering::Relaxed);
                        let request = match topics::parse(&p.topic) {
                            Ok(Topic::Downlink { tenant, dev_eui }) => {
                                Some(DownlinkRequest::Unicast {
                                    tenant,
                                    dev_eui,
                                    phy: p.payload.to_vec(),
                                    priority: Priority::Normal,
                                })
                            }
                            Ok(Topic::Multicast { tenant, .. }) => {
                                Some(DownlinkRequest::Multicast {
                                    tenant,
                                    phy: p.payload.to_vec(),
                                    priority: Priority::High,
                                })
                            }
                            Ok(Topic::Uplink { .. } | Topic::Ack { .. }) | Err(_) => None,
                        };
                        match request {
                            Some(r) => {
                                if down_tx.send(r).await.is_err() {
                                    return;
                                }
                            }
                            None => {
                                m.bad_downlink_topics.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !down_logged {
                            tracing::warn!(error = %e, "bridge's MQTT link down; retrying");
                            down_logged = true;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
    };
    let publish = tokio::spawn(async move {
        while let Some(u) = up_rx.recv().await {
            let topic = topics::uplink(&u.tenant, u.dev_eui);
            if client
                .publish(topic, QoS::AtLeastOnce, false, u.phy)
                .await
                .is_ok()
            {
                handle
                    .shared
                    .metrics
                    .uplinks_published
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    vec![poll, publish]
}
