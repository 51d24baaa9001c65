//! Composes the running system: the embedded broker, the controller service, the store's
//! writer and the dashboard, from one validated configuration. `demo` adds a simulated town.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use lamplighter_controller::core::{
    ControllerConfig, ControllerCore, LampView, Summary, ZoneSettings, ZoneSettingsError, ZoneView,
};
use lamplighter_controller::faults::{Fault, FaultCounts, FaultError, FaultId};
use lamplighter_controller::overrides::{self, ActiveOverride, OverrideTarget};
use lamplighter_controller::service::{self, ControllerHandle, ServiceConfig};
use lamplighter_controller::store::{EnergySummary, HistoryPoint, Overrides, Resolution};
use lamplighter_controller::store::{
    ForecastStore, OperatorStore, Store, StoreThread, StoreWriter, StoredNode,
};
use lamplighter_dashboards::{
    Accounts, DashboardOptions, LampHistory, LiveSource, Road, SourceError,
};
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{LampId, TenantId, ZoneId};
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
    /// Mark the dashboard's session cookie `Secure`: set it when users reach the dashboard
    /// over HTTPS (a reverse proxy terminating TLS in front of `http_listen`).
    pub http_secure_cookies: bool,
    /// Road centre lines to draw under the lamps, by tenant (the demo's town fills it; not
    /// read from the file).
    #[serde(skip)]
    pub roads: Vec<(TenantId, lamplighter_dashboards::Road)>,
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
            http_secure_cookies: false,
            roads: Vec::new(),
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
    forecasts: Arc<Mutex<ForecastStore>>,
}

/// The dashboard's view of the running system: live state from the controller, history
/// from a read-only connection to the store (WAL: it never blocks the writer).
struct Dashboard {
    controller: ControllerHandle,
    history: Mutex<Store>,
    roads: Vec<(TenantId, Road)>,
    /// Links to tenants' own networks: what they refused counts as rejected.
    external_links: Vec<lamplighter_broker::external_link::LinkHandle>,
    /// The InfluxDB sink's counters (spool depth), if it runs.
    influx: Option<Arc<lamplighter_controller::influx::SinkMetrics>>,
    /// Operators' overrides in force, kept in the store.
    overrides: Mutex<Overrides>,
    /// Zones' settings as operators set them, kept in the store.
    operator: Mutex<OperatorStore>,
}

/// A lock still usable after a panic elsewhere held it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dashboard {
    /// The lamp's tenant, if the caller may see the lamp.
    fn lamp_visible(&self, tenant: Option<&TenantId>, lamp: LampId) -> bool {
        self.controller
            .with_core(|core, _| core.node(lamp).is_some_and(|n| n.tenant.visible_to(tenant)))
    }
}

impl LiveSource for Dashboard {
    fn summary(&self, tenant: Option<&TenantId>) -> Summary {
        let mut s = self.controller.summary(tenant);
        for link in &self.external_links {
            let r = link.report();
            if tenant.is_some_and(|t| t.as_str() != r.tenant) {
                continue;
            }
            for (kind, n) in r.uplinks_refused {
                s.rejected += n;
                *s.rejected_by_reason
                    .entry(lamplighter_broker::external_link::summary_reason(kind))
                    .or_default() += n;
            }
        }
        s
    }
    fn lamps(&self, tenant: Option<&TenantId>) -> Vec<LampView> {
        self.controller.lamps(tenant)
    }
    fn zones(&self, tenant: Option<&TenantId>) -> Vec<ZoneView> {
        self.controller.zones(tenant)
    }
    fn metrics(&self) -> String {
        let mut out = self.controller.prometheus();
        if !self.external_links.is_empty() {
            let reports: Vec<_> = self.external_links.iter().map(|l| l.report()).collect();
            out.push_str(&lamplighter_broker::external_link::prometheus(&reports));
        }
        if let Some(influx) = &self.influx {
            out.push_str(&influx.prometheus());
        }
        out
    }
    fn now_ms(&self) -> u64 {
        self.controller.now().0
    }
    fn set_override(
        &self,
        tenant: Option<&TenantId>,
        target: &OverrideTarget,
        level_pct: Option<u8>,
        until_ms: u64,
    ) -> Result<usize, SourceError> {
        self.controller
            .with_core(|core, now| overrides::apply(core, now, tenant, target, level_pct, until_ms))
            .ok_or_else(|| SourceError::NotFound(target.to_string()))
    }
    fn keep_override(&self, o: &ActiveOverride) -> Result<(), SourceError> {
        lock(&self.overrides)
            .record(o.clone())
            .map_err(|e| SourceError::Internal(e.to_string()))
    }
    fn forget_override(
        &self,
        target: &OverrideTarget,
        tenant: Option<&TenantId>,
        now_ms: u64,
    ) -> Result<(), SourceError> {
        lock(&self.overrides)
            .forget(target, tenant, now_ms)
            .map_err(|e| SourceError::Internal(e.to_string()))
    }
    fn overrides(&self, tenant: Option<&TenantId>) -> Vec<ActiveOverride> {
        lock(&self.overrides).in_force(self.controller.now().0, tenant)
    }
    fn keep_zone_settings(
        &self,
        tenant: &TenantId,
        zone: ZoneId,
        settings: &ZoneSettings,
        username: &str,
    ) -> Result<(), SourceError> {
        let json =
            serde_json::to_string(settings).map_err(|e| SourceError::Internal(e.to_string()))?;
        lock(&self.operator)
            .save_zone_settings(tenant, zone, &json, username, self.controller.now().0)
            .map_err(|e| SourceError::Internal(e.to_string()))
    }
    fn lamp_history(
        &self,
        tenant: Option<&TenantId>,
        lamp: LampId,
        from_s: i64,
        to_s: i64,
    ) -> Result<LampHistory, SourceError> {
        if !self.lamp_visible(tenant, lamp) {
            return Err(SourceError::NotFound(format!("lamp {}", lamp.0)));
        }
        let resolution = Resolution::for_span((to_s - from_s).max(0) as u64, false);
        let store = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let points = store
            .lamp_history(lamp, from_s, to_s, resolution)
            .map_err(|e| SourceError::Internal(e.to_string()))?;
        let commands = store
            .lamp_commands(lamp, from_s * 1000, to_s * 1000, 500)
            .map_err(|e| SourceError::Internal(e.to_string()))?;
        Ok(LampHistory {
            lamp,
            points,
            commands,
        })
    }
    fn zone_history(
        &self,
        tenant: &TenantId,
        zone: ZoneId,
        from_s: i64,
        to_s: i64,
    ) -> Result<Vec<HistoryPoint>, SourceError> {
        let resolution = Resolution::for_span((to_s - from_s).max(0) as u64, true);
        let store = self.history.lock().unwrap_or_else(|p| p.into_inner());
        store
            .zone_history(tenant, zone, from_s, to_s, resolution)
            .map_err(|e| SourceError::Internal(e.to_string()))
    }
    fn zone_settings(&self, tenant: &TenantId, zone: ZoneId) -> Result<ZoneSettings, SourceError> {
        self.controller
            .with_core(|core, _| core.zone_settings(tenant, zone))
            .ok_or_else(|| SourceError::NotFound(format!("zone {tenant}/{}", zone.0)))
    }
    fn set_zone_settings(
        &self,
        tenant: &TenantId,
        zone: ZoneId,
        settings: &ZoneSettings,
    ) -> Result<usize, SourceError> {
        self.controller
            .with_core(|core, now| core.set_zone_settings(now, tenant, zone, settings))
            .map_err(|e| match e {
                ZoneSettingsError::UnknownZone => {
                    SourceError::NotFound(format!("zone {tenant}/{}", zone.0))
                }
                ZoneSettingsError::Policy(p) => SourceError::Invalid(p.to_string()),
            })
    }
    fn faults(&self, tenant: Option<&TenantId>) -> Result<(FaultCounts, Vec<Fault>), SourceError> {
        Ok((
            self.controller.fault_counts(tenant),
            self.controller.faults(tenant),
        ))
    }
    fn fault_action(
        &self,
        tenant: Option<&TenantId>,
        id: FaultId,
        clear: bool,
        user: &str,
        note: &str,
    ) -> Result<Fault, SourceError> {
        let now = self.controller.now();
        let result = if clear {
            self.controller.clear_fault(tenant, id, user, note, now)
        } else {
            self.controller
                .acknowledge_fault(tenant, id, user, note, now)
        };
        result.map_err(|e| match e {
            FaultError::NotOpen(_) => SourceError::NotFound(format!("open fault {id}")),
            e => SourceError::Invalid(e.to_string()),
        })
    }
    fn energy(&self, tenant: Option<&TenantId>) -> Result<Vec<EnergySummary>, SourceError> {
        let tenants: std::collections::BTreeSet<TenantId> = match tenant {
            Some(t) => [t.clone()].into(),
            None => self
                .controller
                .zones(None)
                .into_iter()
                .map(|z| z.tenant)
                .collect(),
        };
        let store = self.history.lock().unwrap_or_else(|p| p.into_inner());
        tenants
            .iter()
            .map(|t| {
                self.controller
                    .energy_summary(&store, t)
                    .map_err(|e| SourceError::Internal(e.to_string()))
            })
            .collect()
    }
    fn half_hourly_csv(
        &self,
        tenant: Option<&TenantId>,
        from_s: i64,
        to_s: i64,
    ) -> Result<String, SourceError> {
        let time_zone = self.controller.time_zone();
        let store = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        store
            .half_hourly_csv(tenant, from_s, to_s, time_zone, &mut out)
            .map_err(|e| SourceError::Invalid(e.to_string()))?;
        String::from_utf8(out).map_err(|e| SourceError::Internal(e.to_string()))
    }
    fn roads(&self, tenant: Option<&TenantId>) -> Vec<Road> {
        self.roads
            .iter()
            .filter(|(t, _)| tenant.is_none_or(|want| want == t))
            .map(|(_, r)| r.clone())
            .collect()
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
    let mut core = ControllerCore::new(
        config.controller.clone(),
        nodes.iter().map(|s| s.node.clone()).collect(),
    )?;
    // What the zones' forecasters learnt before the restart.
    let forecasts = ForecastStore::open(data_dir)?;
    let restored = core.restore_forecasters(forecasts.load()?);
    if restored > 0 {
        tracing::info!(
            zones = restored,
            "forecasters resume from their saved state"
        );
    }
    let forecasts = Arc::new(Mutex::new(forecasts));

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
    // Links to tenants' own networks listen before the controller sends its first commands,
    // and read their networks only once the controller listens.
    let external_links = config
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
                lamplighter_broker::external_link::LinkOptions {
                    state: lamplighter_broker::external_state::ExternalState::open(data_dir)?,
                    controller_listening: uplinks_subscribed.clone(),
                    adapter: Default::default(),
                },
            )
            .with_context(|| format!("external network of {}", network.tenant))
        })
        .collect::<Result<Vec<_>>>()?;
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

    tasks.push(service::spawn_forecast_saver(
        controller.clone(),
        forecasts.clone(),
        service::FORECASTS_SAVED_EVERY,
    ));

    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
    let http_addr = listener.local_addr()?;
    let mut accounts = Accounts::open(data_dir)?;
    if accounts.users(None)?.is_empty() {
        tracing::warn!(
            file = %accounts.path().display(),
            "no dashboard accounts yet: add one with `lamplighter users add --data-dir DIR \
             --username NAME --role admin` (the password is read from stdin)"
        );
    }
    let (overrides, operator) = restore_operator_state(data_dir, &controller, &mut accounts)?;
    let source: Arc<dyn LiveSource> = Arc::new(Dashboard {
        controller: controller.clone(),
        history: Mutex::new(Store::open_read_only(data_dir)?),
        roads: config.roads.clone(),
        external_links: external_links.iter().map(|l| l.handle()).collect(),
        influx: store_thread.influx_metrics(),
        overrides: Mutex::new(overrides),
        operator: Mutex::new(operator),
    });
    let options = DashboardOptions {
        secure_cookies: config.http_secure_cookies,
        ..DashboardOptions::default()
    };
    let bridge_handle = bridge.as_ref().map(|b| b.handle.clone());
    tasks.extend(bridge.into_iter().flat_map(|b| b.tasks));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = lamplighter_dashboards::serve(listener, source, accounts, options).await {
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
            forecasts,
        },
        nodes,
    ))
}

/// What operators set that outlives a restart, applied again: zones' settings, then the
/// overrides still in force. Rows an earlier version kept in the accounts file move to the
/// store first, once.
fn restore_operator_state(
    data_dir: &std::path::Path,
    controller: &ControllerHandle,
    accounts: &mut Accounts,
) -> Result<(Overrides, OperatorStore)> {
    let now_ms = controller.now().0;
    let mut operator = OperatorStore::open(data_dir)?;
    let earlier = accounts.operator_state(now_ms)?;
    if !earlier.overrides.is_empty() || !earlier.zone_settings.is_empty() {
        for o in &earlier.overrides {
            operator.save_override(o)?;
        }
        for (tenant, zone, json, username) in &earlier.zone_settings {
            match TenantId::new(tenant) {
                Ok(t) => operator.save_zone_settings(&t, ZoneId(*zone), json, username, now_ms)?,
                Err(e) => tracing::warn!(%tenant, zone, error = %e, "saved zone settings skipped"),
            }
        }
        accounts.forget_operator_state()?;
        tracing::info!(
            overrides = earlier.overrides.len(),
            zones = earlier.zone_settings.len(),
            "moved the overrides and zone settings kept in the accounts file to the store"
        );
    }
    for (tenant, zone, json) in operator.saved_zone_settings()? {
        let applied = TenantId::new(&tenant)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                let s: ZoneSettings = serde_json::from_str(&json).map_err(|e| e.to_string())?;
                controller
                    .with_core(|core, now| core.set_zone_settings(now, &t, ZoneId(zone), &s))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = applied {
            tracing::warn!(%tenant, zone, error = %e, "saved zone settings not applied");
        }
    }
    let mut overrides = Overrides::with_store(OperatorStore::open(data_dir)?);
    for o in overrides.saved(now_ms)? {
        let (target, level_pct, until_ms) = (o.target.clone(), o.level_pct, o.until_ms);
        let applied = controller.with_core(|core, now| {
            overrides::apply(
                core,
                now,
                o.tenant.as_ref(),
                &target,
                Some(level_pct),
                until_ms,
            )
        });
        match applied {
            Some(lamps) => {
                tracing::info!(%target, level_pct, lamps, until_ms, "override restored");
                overrides.record(ActiveOverride { lamps, ..o })?;
            }
            None => tracing::warn!(%target, "saved override matches no lamp; not applied"),
        }
    }
    Ok((overrides, operator))
}

impl System {
    /// Stops the tasks and waits until everything accepted is written to the store.
    pub async fn shutdown(self) {
        // The forecasters' state first: a restart resumes from it.
        let (controller, forecasts) = (self.controller.clone(), self.forecasts.clone());
        let _ =
            tokio::task::spawn_blocking(move || service::save_forecasters(&controller, &forecasts))
                .await;
        for t in self.external_links.iter().flat_map(|l| &l.tasks) {
            t.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        // The handle holds a store writer (for faults): the writer thread ends only once
        // every writer is gone.
        drop(self.controller);
        let thread = self.store_thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}
