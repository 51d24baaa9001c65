//! Starts the LoRaWAN gateway bridge next to the controller (called from `system::start`
//! when `udp_listen` is set). The bridge serves every provisioned node as an ABP Class C
//! device with the store's DevAddr and keys, and joins the embedded broker as the
//! controller's user under its own client id.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use lamplighter_broker::bridge::{self, Bridge, BridgeConfig, MqttTarget};
use lamplighter_broker::netserver::{Activation, DeviceClass, DeviceProfile, NsConfig};
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
            ns: NsConfig::default(),
            mqtt: Some(MqttTarget {
                host: mqtt.ip().to_string(),
                port: mqtt.port(),
                client_id: "lamplighter-bridge".into(),
                username: username.into(),
                password: password.into(),
            }),
        },
        devices,
        vec![],
        clock,
    )
    .await
    .context("cannot start the LoRaWAN gateway bridge")
}
