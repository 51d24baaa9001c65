//! Identifiers as newtypes, so a `DevAddr` can never be passed where a `LampId` is meant.
//!
//! Display and `FromStr` use the form an installer sees on a label or in ChirpStack:
//! upper-case hex, most significant byte first ("as displayed"). On the wire LoRaWAN sends
//! DevAddr and EUIs little-endian; `to_wire`/`from_wire` do that conversion in one place.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an identifier could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("expected {expected} hex digits, got {got:?}")]
    BadHex { expected: usize, got: String },
    #[error("tenant id must be 1-32 characters of a-z, 0-9, '-' or '_', got {0:?}")]
    BadTenant(String),
}

fn parse_hex_u64(s: &str, digits: usize) -> Result<u64, IdError> {
    let bad = || IdError::BadHex {
        expected: digits,
        got: s.to_string(),
    };
    if s.len() != digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u64::from_str_radix(s, 16).map_err(|_| bad())
}

/// LoRaWAN device address: 32 bits, unique among a deployment's active sessions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct DevAddr(pub u32);

impl DevAddr {
    pub fn to_wire(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }
    pub fn from_wire(bytes: [u8; 4]) -> Self {
        DevAddr(u32::from_le_bytes(bytes))
    }
}

/// IEEE EUI-64 of an end device: its permanent identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct DevEui(pub u64);

impl DevEui {
    pub fn to_wire(self) -> [u8; 8] {
        self.0.to_le_bytes()
    }
    pub fn from_wire(bytes: [u8; 8]) -> Self {
        DevEui(u64::from_le_bytes(bytes))
    }
}

macro_rules! hex_id {
    ($t:ident, $inner:ty, $digits:expr) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:0width$X}", self.0, width = $digits)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), self)
            }
        }
        impl FromStr for $t {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                parse_hex_u64(s, $digits).map(|v| $t(v as $inner))
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
        impl TryFrom<String> for $t {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }
    };
}
hex_id!(DevAddr, u32, 8);
hex_id!(DevEui, u64, 16);

/// A lamp (one edge node on one column) within a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LampId(pub u32);

/// A zone: a stretch of road whose lamps share a lighting class and a demand forecast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ZoneId(pub u32);

impl fmt::Display for LampId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A council sharing the deployment. It is a segment of every MQTT topic, so it is kept to
/// characters that are safe there (no '/', '+', '#').
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn new(s: &str) -> Result<Self, IdError> {
        let ok = (1..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(TenantId(s.to_string()))
        } else {
            Err(IdError::BadTenant(s.to_string()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a caller limited to `scope` may see this tenant's lamps, zones and records
    /// (`None`: an unlimited caller, who sees every tenant). The one place this rule lives.
    pub fn visible_to(&self, scope: Option<&TenantId>) -> bool {
        scope.is_none_or(|s| s == self)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl FromStr for TenantId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        TenantId::new(s)
    }
}
impl From<TenantId> for String {
    fn from(v: TenantId) -> String {
        v.0
    }
}
impl TryFrom<String> for TenantId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        TenantId::new(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_addr_displays_big_endian_and_goes_on_air_little_endian() {
        let a: DevAddr = "49BE7DF1".parse().unwrap();
        assert_eq!(a.to_string(), "49BE7DF1");
        assert_eq!(a.to_wire(), [0xf1, 0x7d, 0xbe, 0x49]);
        assert_eq!(DevAddr::from_wire(a.to_wire()), a);
    }

    #[test]
    fn bad_ids_are_refused() {
        assert!("49BE7DF".parse::<DevAddr>().is_err());
        assert!("49BE7DFZ".parse::<DevAddr>().is_err());
        assert!("0011223344556677".parse::<DevEui>().is_ok());
        assert!(TenantId::new("leeds").is_ok());
        let leeds = TenantId::new("leeds").unwrap();
        let bath = TenantId::new("bath").unwrap();
        assert!(leeds.visible_to(None));
        assert!(leeds.visible_to(Some(&leeds)));
        assert!(!leeds.visible_to(Some(&bath)));
        assert!(TenantId::new("lee/ds").is_err());
        assert!(TenantId::new("").is_err());
        assert!(TenantId::new("Leeds").is_err());
    }
}
