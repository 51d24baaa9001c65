//! The node's configuration file, as `lamplighter-edge --config FILE` reads it. Parsed once,
//! validated, and turned into the core's [`NodeConfig`] and the agent's [`MqttLink`].

use std::path::{Path, PathBuf};

use lamplighter_protocol::local_time::{TimeZone, DEFAULT_TIME_ZONE};
use lamplighter_protocol::lorawan::{AesKey, SessionKeys};
use lamplighter_protocol::{DevAddr, DevEui, TenantId};
use serde::Deserialize;

use crate::agent::MqttLink;
use crate::core::NodeConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub dev_eui: DevEui,
    pub dev_addr: DevAddr,
    pub nwk_s_key: AesKey,
    pub app_s_key: AesKey,
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default = "default_power")]
    pub rated_power_w: f32,
    #[serde(default = "default_interval")]
    pub report_interval_s: u32,
    /// The clocks the fail-safe profile follows (IANA name), across their changes.
    #[serde(default = "default_time_zone")]
    pub time_zone: TimeZone,
    /// Where the node keeps its FCnt and energy meter across restarts.
    pub state_file: PathBuf,
    pub mqtt: MqttSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub tenant: TenantId,
}

fn default_power() -> f32 {
    40.0
}
fn default_interval() -> u32 {
    300
}
fn default_time_zone() -> TimeZone {
    DEFAULT_TIME_ZONE
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl EdgeConfig {
    pub fn load(path: &Path) -> Result<EdgeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<EdgeConfig, ConfigError> {
        let cfg: EdgeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let invalid = |message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: message.to_string(),
        };
        if !(-90.0..=90.0).contains(&cfg.latitude) || !(-180.0..=180.0).contains(&cfg.longitude) {
            return Err(invalid(
                "latitude must be in -90..90 and longitude in -180..180",
            ));
        }
        if cfg.report_interval_s < 10 {
            return Err(invalid("report_interval_s must be at least 10"));
        }
        if !(cfg.rated_power_w > 0.0 && cfg.rated_power_w <= 2000.0) {
            return Err(invalid("rated_power_w must be in (0, 2000]"));
        }
        Ok(cfg)
    }

    pub fn node_config(&self) -> NodeConfig {
        let mut node = NodeConfig::new(
            self.dev_eui,
            self.dev_addr,
            SessionKeys {
                nwk_s_key: self.nwk_s_key,
                app_s_key: self.app_s_key,
            },
            self.latitude,
            self.longitude,
        );
        node.report_interval_s = self.report_interval_s;
        node.time_zone = Some(self.time_zone);
        node
    }

    pub fn mqtt_link(&self) -> MqttLink {
        MqttLink {
            host: self.mqtt.host.clone(),
            port: self.mqtt.port,
            username: self.mqtt.username.clone(),
            password: self.mqtt.password.clone(),
            tenant: self.mqtt.tenant.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
dev_eui = "70B3D5E012345678"
dev_addr = "01ABCDEF"
nwk_s_key = "00112233445566778899aabbccddeeff"
app_s_key = "ffeeddccbbaa99887766554433221100"
latitude = 51.4545
longitude = -2.5879
report_interval_s = 60
state_file = "/tmp/state.json"

[mqtt]
host = "127.0.0.1"
port = 1883
username = "node-70B3D5E012345678"
password = "secret"
tenant = "demo"
"#;

    #[test]
    fn the_documented_example_parses() {
        let cfg = EdgeConfig::parse(EXAMPLE, Path::new("node.toml")).unwrap();
        assert_eq!(cfg.dev_addr, DevAddr(0x01AB_CDEF));
        assert_eq!(cfg.rated_power_w, 40.0);
        assert_eq!(cfg.node_config().report_interval_s, 60);
        assert_eq!(cfg.mqtt_link().tenant.as_str(), "demo");
        assert_eq!(cfg.node_config().time_zone, Some(DEFAULT_TIME_ZONE));
        let dublin = EXAMPLE.replace(
            "state_file = \"/tmp/state.json\"",
            "state_file = \"/tmp/state.json\"\ntime_zone = \"Europe/Dublin\"",
        );
        let cfg = EdgeConfig::parse(&dublin, Path::new("node.toml")).unwrap();
        assert_eq!(cfg.time_zone.name(), "Europe/Dublin");
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let cases = [
            (
                EXAMPLE.replace("latitude = 51.4545", "latitude = 91"),
                "latitude",
            ),
            (
                EXAMPLE.replace("report_interval_s = 60", "report_interval_s = 1"),
                "report_interval_s",
            ),
            (EXAMPLE.replace("01ABCDEF", "01ABCDE"), "hex"),
            (
                EXAMPLE.replace("tenant = \"demo\"", "tenant = \"Demo\""),
                "tenant",
            ),
            (format!("{EXAMPLE}\nextra = 1\n"), "unknown field"),
            (
                EXAMPLE.replace(
                    "state_file = \"/tmp/state.json\"",
                    "state_file = \"/tmp/state.json\"\ntime_zone = \"Europe/Bristol\"",
                ),
                "Europe/Bristol",
            ),
            (
                EXAMPLE.replace("nwk_s_key = \"00112233445566778899aabbccddeeff\"\n", ""),
                "nwk_s_key",
            ),
        ];
        for (text, expect) in cases {
            let e = EdgeConfig::parse(&text, Path::new("node.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expect), "{expect}: {e}");
        }
    }
}
