//! The embedded MQTT broker: rumqttd in-process, on loopback by default, with every client
//! checked by a caller-supplied authenticator (the root binary checks against the store).
//!
//! rumqttd authenticates but has no topic ACLs: any client it lets in may publish or
//! subscribe anywhere. Lamplighter does not rely on the broker for integrity,
//! confidentiality or replay protection; the LoRaWAN frames carry those (see
//! `lamplighter-protocol`). The broker's job is only to keep strangers out and move bytes.
//!
//! The LoRaWAN side lives here too:
//!
//! - [`gwmp`]: the Semtech packet-forwarder protocol (GWMP v1/v2), parsing and building.
//! - [`netserver`]: network-server functions, sans-IO (de-duplication, MIC, FCnt, joins,
//!   Class A/C and multicast downlinks, duty cycle). Its module docs argue the design.
//! - [`dutycycle`]: EU868 per-gateway, per-sub-band airtime accounting.
//! - [`gateways`]: the gateway registry (`lorawan.sqlite` in the data directory).
//! - [`bridge`]: the UDP socket and the MQTT client around the network server.
//! - [`simgw`]: a simulated gateway speaking real GWMP over UDP (demo, tests, bench).
//! - [`external`]: councils' existing networks (ChirpStack v4, The Things Stack v3).
//! - [`external_link`]: a tenant's existing network as the carrier of its frames (MQTT both ways).
//! - [`external_state`]: what those links remember across restarts (`external.sqlite`).

pub mod bridge;
pub mod dutycycle;
pub mod external;
pub mod external_link;
pub mod external_state;
pub mod gateways;
pub mod gwmp;
pub mod netserver;
pub mod simgw;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Decides whether a client may connect: (client id, username, password) -> allowed.
pub type Authenticator = Arc<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    /// Lamps plus the controller plus headroom.
    pub max_connections: usize,
    pub max_payload_bytes: usize,
}

impl BrokerConfig {
    pub fn loopback(port: u16, max_connections: usize) -> Self {
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            max_connections,
            max_payload_bytes: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
}

/// A running broker. It lives as long as the process (rumqttd has no shutdown).
pub struct EmbeddedBroker {
    pub listen: SocketAddr,
}

/// Starts rumqttd on its own threads and returns once its port accepts connections.
pub fn start(config: &BrokerConfig, auth: Authenticator) -> Result<EmbeddedBroker, BrokerError> {
    // rumqttd binds inside its own thread and only logs a failure there; bind first here so a
    // port in use is a clear error to the user. Port 0 resolves to a free port.
    let probe = TcpListener::bind(config.listen).map_err(|source| BrokerError::Bind {
        addr: config.listen,
        source,
    })?;
    let listen = probe.local_addr().map_err(|source| BrokerError::Bind {
        addr: config.listen,
        source,
    })?;
    drop(probe);

    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: config.max_payload_bytes,
        max_inflight_count: 200,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
        let ok = auth(&client_id, &user, &pass);
        if !ok {
            tracing::info!(%client_id, %user, "MQTT client refused: unknown user or wrong password");
        }
        async move { ok }
    });
    let server = ServerSettings {
        name: "v4-lamplighter".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: config.max_connections,
            max_outgoing_packet_count: 200,
            // rumqttd keeps a commit log per topic; every node has its own topics, so keep
            // each small (frames are under 300 bytes) or memory grows with the town.
            max_segment_size: 16 * 1024,
            max_segment_count: 2,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Config::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;

    // Wait until the listener is up. (rumqttd logs the probe as an aborted handshake; the
    // binaries keep rumqttd's per-connection logs off by default for that and for nodes that
    // drop their connections.)
    for _ in 0..500 {
        if std::net::TcpStream::connect(listen).is_ok() {
            return Ok(EmbeddedBroker { listen });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(BrokerError::Bind {
        addr: listen,
        source: std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "broker did not start listening",
        ),
    })
}
