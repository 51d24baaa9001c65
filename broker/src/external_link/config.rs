//! What a link is told: the tenant's network as configured, and the nodes it carries.

use lamplighter_protocol::lorawan::SessionKeys;
use lamplighter_protocol::{DevAddr, DevEui, TenantId};
use serde::{Deserialize, Serialize};

use crate::external::NetworkKind;

/// One tenant's external network, as configured (`[[external_networks]]` in the TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalNetwork {
    pub tenant: TenantId,
    pub kind: NetworkKind,
    /// The network's MQTT broker.
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// ChirpStack: the application ID (a UUID). The Things Stack: `{application}@{tenant}`
    /// as its MQTT topics spell it (`{application}` alone on a single-tenant deployment).
    pub application: String,
}

fn default_port() -> u16 {
    1883
}

impl ExternalNetwork {
    pub fn validate(&self) -> Result<(), String> {
        if self.host.trim().is_empty() {
            return Err(format!("external network of {}: empty host", self.tenant));
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || "-_.@".contains(c);
        if self.application.is_empty() || !self.application.chars().all(ok) {
            return Err(format!(
                "external network of {}: application {:?} must be letters, digits, '-', '_', '.' or '@'",
                self.tenant, self.application
            ));
        }
        Ok(())
    }
}

/// A node the external network carries: its identity and application session in our store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalDevice {
    pub dev_eui: DevEui,
    pub dev_addr: DevAddr,
    pub keys: SessionKeys,
}
