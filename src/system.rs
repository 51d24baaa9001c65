//! Composes the running system: the embedded broker, the controller service, the store's
//! writer and the dashboard, from one validated configuration. `demo` adds a simulated town.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use lamplighter_controller::core::{ControllerConfig, ControllerCore, LampView, Summary, ZoneView};
use lamplighter_controller::service::{self, ControllerHandle, ServiceConfig};
use lamplighter_controller::store::{Store, StoreThread, StoreWriter, StoredNode};
use lamplighter_dashboards::LiveSource;
use lamplighter_protocol::time::ScaledClock;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Deserialize;
use tokio::task::JoinHandle;

/// `lamplighter serve`'s configuration file. Every field has a default that works on a
/// laptop; flags override the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemConfig {
    /// Where the SQLite store lives. Default: the per-user data directory.
    pub data_dir: Option<PathBuf>,
    /// The embedded MQTT broker's address.
    pub mqtt_listen: SocketAddr,
    pub mqtt_max_connections: usize,
    /// The dashboard and API.
    pub http_listen: SocketAddr,
    /// The LoRaWAN gateway bridge (Semtech UDP; forwarders default to port 1700). Off unless set.
    pub udp_listen: Option<SocketAddr>,
    /// Seconds between the controller's re-decisions of every lamp (real time).
    pub tick_interval_s: f64,
    pub controller: ControllerConfig,
    /// Retention and the InfluxDB sink (`[store.retention]`; the sink from flags).
    pub store: lamplighter_controller::store::StoreOptions,
    /// Tenants whose lamps talk through their own LoRaWAN network (ChirpStack v4, The Things
    /// Stack v3): `[[external_networks]]` with tenant, kind, host, port, username, password,
    /// application.
    pub external_networks: Vec<lamplighter_broker::external_link::ExternalNetwork>,
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            data_dir: None,
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            mqtt_max_connections: 20_000,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            udp_listen: None,
            tick_interval_s: 1.0,
            controller: ControllerConfig::default(),
            store: Default::default(),
            external_networks: Vec::new(),
        }
    }
}

impl SystemConfig {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config: SystemConfig = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        self.controller
            .policy
            .validate()
            .context("invalid [controller.policy]")?;
        anyhow::ensure!(
            self.tick_interval_s > 0.0 && self.tick_interval_s <= 60.0,
            "tick_interval_s must be in (0, 60], got {}",
            self.tick_interval_s
        );
        anyhow::ensure!(
            self.controller.report_interval_s > 0,
            "controller.report_interval_s must be positive"
        );
        let mut tenants = std::collections::HashSet::new();
        for n in &self.external_networks {
            n.validate().map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                tenants.insert(&n.tenant),
                "tenant {} has two external networks",
                n.tenant
            );
        }
        Ok(())
    }

    pub fn data_dir(&self) -> Result<PathBuf> {
        match &self.data_dir {
            Some(d) => Ok(d.clone()),
            None => default_data_dir(),
        }
    }
}

pub fn default_data_dir() -> Result<PathBuf> {
    directories::ProjectDirs::from("org", "lamplighter", "lamplighter")
        .map(|d| d.data_dir().to_path_buf())
        .context("no home directory to put the data in; pass --data-dir")
}

/// The running system.
pub struct System {
    pub controller: ControllerHandle,
    pub mqtt_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The LoRaWAN gateway bridge, when `udp_listen` is set.
    pub bridge: Option<lamplighter_broker::bridge::BridgeHandle>,
    /// One link per tenant on an external LoRaWAN network.
    pub external_links: Vec<lamplighter_broker::external_link::ExternalLink>,
    tasks: Vec<JoinHandle<()>>,
    store_thread: StoreThread,
}

struct Dashboard(ControllerHandle);

impl LiveSource for Dashboard {
    fn summary(&self) -> Summary {
        self.0.summary(None)
    }
    fn lamps(&self) -> Vec<LampView> {
        self.0.lamps(None)
    }
    fn zones(&self) -> Vec<ZoneView> {
        self.0.zones(None)
    }
    fn metrics(&self) -> String {
        self.0.prometheus()
    }
}

const CONTROLLER_USER: &str = "lamplighter-controller";

/// Starts broker, controller and dashboard on the store in `data_dir`. Returns the
/// provisioned nodes so a simulated town can be started against it.
pub async fn start(
    config: &SystemConfig,
    data_dir: &std::path::Path,
    clock: ScaledClock,
) -> Result<(System, Vec<StoredNode>)> {
    let store = Store::open(data_dir)?;
    let nodes = store.nodes()?;
    let core = ControllerCore::new(
        config.controller.clone(),
        nodes.iter().map(|s| s.node.clone()).collect(),
    )?;

    // The controller's own MQTT password lives only in this process.
    let controller_password: String = rand::thread_rng()
        .sample_iter(Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let auth_store = Mutex::new(Store::open(data_dir)?);
    let expected = controller_password.clone();
    // Nodes are let in once the controller listens, so no uplink is published to no one.
    let uplinks_subscribed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listening = uplinks_subscribed.clone();
    let auth: lamplighter_broker::Authenticator = Arc::new(move |_client, user, pass| {
        if user == CONTROLLER_USER {
            return pass == expected;
        }
        if !listening.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let store = auth_store.lock().unwrap_or_else(|p| p.into_inner());
        match store.check_mqtt_credentials(user, pass) {
            Ok(ok) => ok,
            Err(e) => {
                tracing::error!(error = %e, "cannot check MQTT credentials");
                false
            }
        }
    });
    let broker_config = lamplighter_broker::BrokerConfig {
        listen: config.mqtt_listen,
        max_connections: config.mqtt_max_connections.max(nodes.len() + 16),
        max_payload_bytes: 4096,
    };
    let broker = lamplighter_broker::start(&broker_config, auth)?;

    let bridge = match config.udp_listen {
        Some(udp) => Some(
            crate::lorawan_system::start_bridge(
                udp,
                data_dir,
                &nodes,
                broker.listen,
                CONTROLLER_USER,
                &controller_password,
                clock,
            )
            .await?,
        ),
        None => None,
    };
    // Links to tenants' own networks listen before the controller sends its first commands.
    let external_links: Vec<_> = config
        .external_networks
        .iter()
        .map(|network| {
            let devices = nodes
                .iter()
                .filter(|s| s.node.tenant == network.tenant)
                .map(|s| lamplighter_broker::external_link::ExternalDevice {
                    dev_eui: s.node.dev_eui,
                    dev_addr: s.node.dev_addr,
                    keys: s.node.keys,
                })
                .collect();
            lamplighter_broker::external_link::start(
                network.clone(),
                devices,
                lamplighter_broker::bridge::MqttTarget {
                    host: broker.listen.ip().to_string(),
                    port: broker.listen.port(),
                    client_id: format!("lamplighter-external-{}", network.tenant),
                    username: CONTROLLER_USER.into(),
                    password: controller_password.clone(),
                },
            )
        })
        .collect();
    for link in &external_links {
        if !link.wait_subscribed(Duration::from_secs(5)).await {
            tracing::warn!("an external network link is not yet listening for commands");
        }
    }
    let (writer, store_thread) = StoreWriter::start_with(store, &config.store);
    let (controller, mut tasks) = service::start(
        core,
        writer,
        clock,
        ServiceConfig {
            mqtt_host: broker.listen.ip().to_string(),
            mqtt_port: broker.listen.port(),
            mqtt_client_id: CONTROLLER_USER.into(),
            mqtt_username: CONTROLLER_USER.into(),
            mqtt_password: controller_password.clone(),
            tick_interval: Duration::from_secs_f64(config.tick_interval_s),
            uplinks_subscribed,
        },
    );

    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
    let http_addr = listener.local_addr()?;
    let source: Arc<dyn LiveSource> = Arc::new(Dashboard(controller.clone()));
    let bridge_handle = bridge.as_ref().map(|b| b.handle.clone());
    tasks.extend(bridge.into_iter().flat_map(|b| b.tasks));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = lamplighter_dashboards::serve(listener, source).await {
            tracing::error!(error = %e, "dashboard stopped");
        }
    }));

    Ok((
        System {
            controller,
            mqtt_addr: broker.listen,
            http_addr,
            bridge: bridge_handle,
            external_links,
            tasks,
            store_thread,
        },
        nodes,
    ))
}

impl System {
    /// Stops the tasks and waits until everything accepted is written to the store.
    pub async fn shutdown(self) {
        for t in self.external_links.iter().flat_map(|l| &l.tasks) {
            t.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        let thread = self.store_thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}
