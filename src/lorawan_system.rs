//! Starts the LoRaWAN gateway bridge next to the controller (called from `system::start`
//! when `udp_listen` is set). The bridge serves every provisioned node as an ABP Class C
//! device with the store's DevAddr and keys, and joins the embedded broker as the
//! controller's user under its own client id.
//!
//! Every zone is a multicast group (McAddr and keys kept in `lorawan.sqlite`, created on
//! first start): when the controller commands a whole zone alike in one tick, the network
//! server sends one group frame instead of one frame per lamp. Nodes learn their zone's
//! group at provisioning ([`zone_sessions`]).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use lamplighter_broker::bridge::{self, Bridge, BridgeConfig, MqttTarget};
use lamplighter_broker::gateways::{GatewayRegistry, ZoneGroup};
use lamplighter_broker::netserver::{Activation, DeviceClass, DeviceProfile, McGroup, NsConfig};
use lamplighter_controller::store::StoredNode;
use lamplighter_protocol::time::ScaledClock;

pub async fn start_bridge(
    udp_listen: SocketAddr,
    data_dir: &Path,
    nodes: &[StoredNode],
    mqtt: SocketAddr,
    username: &str,
    password: &str,
    clock: ScaledClock,
) -> Result<Bridge> {
    let zone_groups = zone_groups(data_dir, nodes)?;
    let groups = zone_groups
        .iter()
        .map(|g| McGroup {
            tenant: g.tenant.clone(),
            mc_addr: g.mc_addr,
            keys: g.keys,
            members: nodes
                .iter()
                .filter(|s| s.node.tenant == g.tenant && s.node.zone.0 == g.zone)
                .map(|s| s.node.dev_eui)
                .collect(),
        })
        .collect();
    let devices = nodes
        .iter()
        .map(|s| DeviceProfile {
            tenant: s.node.tenant.clone(),
            dev_eui: s.node.dev_eui,
            class: DeviceClass::C,
            dev_addr: s.node.dev_addr,
            app_keys: s.node.keys,
            activation: Activation::Abp,
            last_fcnt_up: s.node.last_fcnt_up,
        })
        .collect();
    bridge::start(
        BridgeConfig {
            udp_listen,
            data_dir: data_dir.to_path_buf(),
            ns: NsConfig {
                // RX2 (and so Class C) at DR3, SF9, as The Things Stack sets it in EU868: a
                // lamp network is dense, and DR0 would spend 8 times the airtime per command.
                rx2_dr: lamplighter_protocol::lorawan::radio::DataRate { sf: 9, bw_khz: 125 },
                // The controller sends a tick's commands within milliseconds; a quarter
                // second gathers them into zone frames at little cost in latency.
                multicast_gather_ms: 250,
                ..NsConfig::default()
            },
            mqtt: Some(MqttTarget {
                host: mqtt.ip().to_string(),
                port: mqtt.port(),
                client_id: "lamplighter-bridge".into(),
                username: username.into(),
                password: password.into(),
            }),
        },
        devices,
        groups,
        clock,
    )
    .await
    .context("cannot start the LoRaWAN gateway bridge")
    .inspect(|bridge| {
        for g in &zone_groups {
            if let Some(fcnt) = g.last_fcnt {
                bridge.handle.restore_group_fcnt(g.mc_addr, fcnt);
            }
        }
    })
}

/// The multicast group of every zone that has nodes (created on first use).
pub fn zone_groups(data_dir: &Path, nodes: &[StoredNode]) -> Result<Vec<ZoneGroup>> {
    let mut zones: Vec<_> = nodes
        .iter()
        .map(|s| (s.node.tenant.clone(), s.node.zone.0))
        .collect();
    zones.sort();
    zones.dedup();
    GatewayRegistry::open(data_dir)?
        .zone_groups(&zones)
        .context("cannot read the zones' multicast groups")
}

/// What a node holds of its zone's group, for provisioning it.
pub fn zone_sessions(
    groups: &[ZoneGroup],
    node: &StoredNode,
) -> Vec<lamplighter_edge::core::MulticastSession> {
    groups
        .iter()
        .filter(|g| g.tenant == node.node.tenant && g.zone == node.node.zone.0)
        .map(|g| lamplighter_edge::core::MulticastSession {
            mc_addr: g.mc_addr,
            keys: g.keys,
        })
        .collect()
}
