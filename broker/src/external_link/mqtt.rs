//! The tokio and rumqttc glue around the [`ExternalAdapter`]: two MQTT clients (the
//! network's broker and ours) and three tasks that pass messages through the adapter, store
//! what it asks to store, and publish what it decides. Nothing here decides anything.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lamplighter_protocol::{TenantId, UnixMs};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

use super::adapter::ExternalAdapter;
use super::config::{ExternalDevice, ExternalNetwork};
use super::queue::AdapterOptions;
use super::report::LinkReport;
use crate::bridge::MqttTarget;
use crate::external_state::{ExternalState, StateError};

/// What the link's tasks share.
struct Shared {
    tenant: TenantId,
    adapter: Mutex<ExternalAdapter>,
    state: Mutex<ExternalState>,
    /// Wakes the sender: a command is waiting, the broker is back, or a device ID is known.
    wake: tokio::sync::Notify,
}

impl Shared {
    fn adapter(&self) -> std::sync::MutexGuard<'_, ExternalAdapter> {
        self.adapter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes every changed device state; called before the frames that depend on it leave.
    fn store_state(&self) {
        while let Some((dev_eui, state)) = self.adapter().poll_state() {
            let store = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = store.save(&self.tenant, dev_eui, &state) {
                tracing::error!(tenant = %self.tenant, %dev_eui, error = %e, "cannot store an external device's state");
            }
        }
    }
}

/// A cheap handle on a running link's counters (for `/metrics` and the summary).
#[derive(Clone)]
pub struct LinkHandle(Arc<Shared>);

impl LinkHandle {
    pub fn report(&self) -> LinkReport {
        self.0.adapter().report().clone()
    }
}

/// A running link; [`ExternalLink::report`] reads its counters.
pub struct ExternalLink {
    handle: LinkHandle,
    /// The MQTT client ID on the network's broker.
    pub client_id: String,
    /// Set once the link listens for this tenant's downlinks on the embedded broker.
    downlinks_subscribed: Arc<AtomicBool>,
    /// Set once the link is subscribed to uplinks and joins on the network's broker.
    uplinks_subscribed: Arc<AtomicBool>,
    pub tasks: Vec<JoinHandle<()>>,
}

async fn wait_for(flag: &AtomicBool, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while !flag.load(Ordering::Acquire) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

impl ExternalLink {
    /// Waits (up to `timeout`) until the link hears the controller's downlinks: the system
    /// starts the controller after this, so its first commands are not published to no one.
    pub async fn wait_subscribed(&self, timeout: Duration) -> bool {
        wait_for(&self.downlinks_subscribed, timeout).await
    }

    /// Waits (up to `timeout`) until the link is subscribed on the network's broker.
    pub async fn wait_uplinks_subscribed(&self, timeout: Duration) -> bool {
        wait_for(&self.uplinks_subscribed, timeout).await
    }

    pub fn report(&self) -> LinkReport {
        self.handle.report()
    }

    pub fn handle(&self) -> LinkHandle {
        self.handle.clone()
    }
}

/// How a link runs beside the rest of the system.
pub struct LinkOptions {
    /// `external.sqlite` of the data directory.
    pub state: ExternalState,
    /// Set once the controller listens for uplinks on the embedded broker. The link reads
    /// the network's broker only then: its persistent session delivers what was published
    /// while we were away at once, and none of it may be published to no one.
    pub controller_listening: Arc<AtomicBool>,
    pub adapter: AdapterOptions,
}

/// Connects to the network's broker and to ours, and passes frames both ways until the
/// tasks are aborted. Lost connections are retried every second and logged once each.
///
/// On the network's broker the link keeps a persistent session (clean session off, QoS 1
/// both ways, acknowledged only once passed on) under a client ID that is the same after a
/// restart and different for each data directory: `lamplighter-{tenant}-{instance}`.
pub fn start(
    network: ExternalNetwork,
    devices: Vec<ExternalDevice>,
    ours: MqttTarget,
    options: LinkOptions,
) -> Result<ExternalLink, StateError> {
    let tenant = network.tenant.clone();
    let states = options.state.devices(&tenant)?;
    let client_id = format!("lamplighter-{tenant}-{}", options.state.instance_id()?);
    let mut theirs_options = MqttOptions::new(&client_id, network.host.clone(), network.port);
    if let Some(user) = &network.username {
        theirs_options.set_credentials(user, network.password.clone().unwrap_or_default());
    }
    theirs_options.set_keep_alive(Duration::from_secs(30));
    theirs_options.set_clean_session(false);
    theirs_options.set_manual_acks(true);
    let mut ours_options = MqttOptions::new(&ours.client_id, &ours.host, ours.port);
    ours_options.set_credentials(&ours.username, &ours.password);
    ours_options.set_keep_alive(Duration::from_secs(30));

    let adapter = ExternalAdapter::new(network, devices)
        .with_state(states)
        .with_options(options.adapter);
    let (up_filters, down_filter) = (adapter.uplink_filters(), adapter.downlink_filter());
    let shared = Arc::new(Shared {
        tenant: tenant.clone(),
        adapter: Mutex::new(adapter),
        state: Mutex::new(options.state),
        wake: tokio::sync::Notify::new(),
    });
    let (theirs, theirs_loop) = AsyncClient::new(theirs_options, 10_000);
    let (ours_client, ours_loop) = AsyncClient::new(ours_options, 10_000);
    let downlinks_subscribed = Arc::new(AtomicBool::new(false));
    let uplinks_subscribed = Arc::new(AtomicBool::new(false));
    let uplinks = tokio::spawn(uplink_pump(
        format!("{tenant}: network broker"),
        theirs_loop,
        theirs.clone(),
        up_filters,
        ours_client.clone(),
        shared.clone(),
        options.controller_listening,
        uplinks_subscribed.clone(),
    ));
    let downlinks = tokio::spawn(downlink_pump(
        format!("{tenant}: embedded broker"),
        ours_loop,
        ours_client,
        down_filter,
        shared.clone(),
        downlinks_subscribed.clone(),
    ));
    let sender = tokio::spawn(send_commands(
        format!("{tenant}: network broker"),
        theirs,
        shared.clone(),
    ));
    Ok(ExternalLink {
        handle: LinkHandle(shared),
        client_id,
        downlinks_subscribed,
        uplinks_subscribed,
        tasks: vec![uplinks, downlinks, sender],
    })
}

fn wall_clock() -> UnixMs {
    UnixMs(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// Reads the network's broker: uplinks and joins through the adapter to the embedded broker.
#[allow(clippy::too_many_arguments)]
async fn uplink_pump(
    name: String,
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    filters: [String; 2],
    to: AsyncClient,
    shared: Arc<Shared>,
    controller_listening: Arc<AtomicBool>,
    subscribed: Arc<AtomicBool>,
) {
    while !controller_listening.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut link_down_logged = false;
    let mut logged: HashSet<&'static str> = HashSet::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if link_down_logged {
                    tracing::info!(link = %name, session_present = ack.session_present, "external network link up again");
                }
                link_down_logged = false;
                shared.adapter().handle_connection(true);
                let filters = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(filters) {
                    tracing::error!(link = %name, error = %e, "cannot subscribe");
                }
                shared.wake.notify_one();
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                subscribed.store(true, Ordering::Release);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let result = shared.adapter().handle_uplink(&p.topic, &p.payload);
                // The counters this frame moved are stored before it leaves.
                shared.store_state();
                match result {
                    Ok(Some(out)) => {
                        if let Err(e) = to
                            .publish(out.topic, QoS::AtLeastOnce, false, out.payload)
                            .await
                        {
                            tracing::warn!(link = %name, error = %e, "cannot pass a message on");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if logged.insert(e.kind()) {
                            tracing::warn!(link = %name, error = %e, "message refused (further ones of this kind are counted, not logged)");
                        }
                    }
                }
                // Passed on (or refused for good): only now may the broker forget it.
                if let Err(e) = client.ack(&p).await {
                    tracing::warn!(link = %name, error = %e, "cannot acknowledge a message");
                }
                // A device ID learnt may let waiting commands go.
                shared.wake.notify_one();
            }
            Ok(_) => {}
            Err(e) => {
                shared.adapter().handle_connection(false);
                if !link_down_logged {
                    tracing::warn!(link = %name, error = %e, "external network link down; retrying");
                    link_down_logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Reads the embedded broker: the controller's command frames into the adapter.
async fn downlink_pump(
    name: String,
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    filter: String,
    shared: Arc<Shared>,
    subscribed: Arc<AtomicBool>,
) {
    let mut link_down_logged = false;
    let mut logged: HashSet<&'static str> = HashSet::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if link_down_logged {
                    tracing::info!(link = %name, "external network link up again");
                }
                link_down_logged = false;
                if let Err(e) = client.try_subscribe(&filter, QoS::AtLeastOnce) {
                    tracing::error!(link = %name, error = %e, "cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                subscribed.store(true, Ordering::Release);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let result = shared.adapter().handle_downlink(&p.topic, &p.payload);
                shared.store_state();
                match result {
                    Ok(()) => shared.wake.notify_one(),
                    Err(e) => {
                        if logged.insert(e.kind()) {
                            tracing::warn!(link = %name, error = %e, "message refused (further ones of this kind are counted, not logged)");
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                if !link_down_logged {
                    tracing::warn!(link = %name, error = %e, "external network link down; retrying");
                    link_down_logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Publishes waiting commands on the network's broker while it is connected: only the latest
/// per lamp, because commands wait in the adapter, not in the MQTT client's queue.
async fn send_commands(name: String, theirs: AsyncClient, shared: Arc<Shared>) {
    loop {
        shared.wake.notified().await;
        loop {
            let next = {
                let mut a = shared.adapter();
                if !a.report().connected {
                    break;
                }
                a.poll_downlink(wall_clock())
            };
            let Some(out) = next else { break };
            if let Err(e) = theirs
                .publish(out.topic, QoS::AtLeastOnce, false, out.payload)
                .await
            {
                tracing::warn!(link = %name, error = %e, "cannot publish a command");
            }
        }
    }
}
