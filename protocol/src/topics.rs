//! The MQTT topic layout. Every topic carries the tenant (council), so one broker can serve
//! several councils and a subscription can be scoped to one of them.
//!
//! - `lamplighter/{tenant}/up/{dev_eui}`: a node's uplink frames (LoRaWAN data frames).
//! - `lamplighter/{tenant}/down/{dev_eui}`: the controller's downlink frames to that node.
//! - `lamplighter/{tenant}/ack/{dev_eui}`: the controller's acknowledgement to an MQTT node
//!   of the readings stored (the FCnt up to which), so the node can drop them from its outbox.
//! - `lamplighter/{tenant}/mcast/{mc_addr}`: a downlink frame for a zone's multicast group
//!   (LoRaWAN only: the bridge's network server sends it once per gateway).
//!
//! Topics are routing only. The broker has no ACLs, so whoever may connect may publish or
//! subscribe anywhere; the frames themselves carry integrity, confidentiality and replay
//! protection, and the controller checks that a frame's DevAddr belongs to the node the topic
//! names.

use crate::{DevAddr, DevEui, TenantId};

pub const ROOT: &str = "lamplighter";

pub fn uplink(tenant: &TenantId, dev_eui: DevEui) -> String {
    format!("{ROOT}/{tenant}/up/{dev_eui}")
}

pub fn downlink(tenant: &TenantId, dev_eui: DevEui) -> String {
    format!("{ROOT}/{tenant}/down/{dev_eui}")
}

pub fn ack(tenant: &TenantId, dev_eui: DevEui) -> String {
    format!("{ROOT}/{tenant}/ack/{dev_eui}")
}

/// The subscription to one tenant's unicast downlinks.
pub fn downlinks_of(tenant: &TenantId) -> String {
    format!("{ROOT}/{tenant}/down/+")
}

pub fn multicast(tenant: &TenantId, mc_addr: DevAddr) -> String {
    format!("{ROOT}/{tenant}/mcast/{mc_addr}")
}

/// The controller's subscription: every tenant's uplinks.
pub const ALL_UPLINKS: &str = "lamplighter/+/up/+";
/// The LoRaWAN bridge's subscriptions: every tenant's unicast and multicast downlinks.
pub const ALL_DOWNLINKS: &str = "lamplighter/+/down/+";
pub const ALL_MULTICAST: &str = "lamplighter/+/mcast/+";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    Uplink { tenant: TenantId, dev_eui: DevEui },
    Downlink { tenant: TenantId, dev_eui: DevEui },
    Ack { tenant: TenantId, dev_eui: DevEui },
    Multicast { tenant: TenantId, mc_addr: DevAddr },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a lamplighter topic: {0:?}")]
pub struct TopicError(pub String);

pub fn parse(topic: &str) -> Result<Topic, TopicError> {
    let err = || TopicError(topic.chars().take(128).collect());
    let mut parts = topic.split('/');
    let (Some(ROOT), Some(tenant), Some(dir), Some(eui), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(err());
    };
    let tenant = TenantId::new(tenant).map_err(|_| err())?;
    let dev_eui = || eui.parse::<DevEui>().map_err(|_| err());
    match dir {
        "up" => Ok(Topic::Uplink {
            tenant,
            dev_eui: dev_eui()?,
        }),
        "down" => Ok(Topic::Downlink {
            tenant,
            dev_eui: dev_eui()?,
        }),
        "ack" => Ok(Topic::Ack {
            tenant,
            dev_eui: dev_eui()?,
        }),
        "mcast" => Ok(Topic::Multicast {
            tenant,
            mc_addr: eui.parse().map_err(|_| err())?,
        }),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        let t = TenantId::new("bristol").unwrap();
        let eui = DevEui(0x0011_2233_4455_6677);
        assert_eq!(uplink(&t, eui), "lamplighter/bristol/up/0011223344556677");
        assert_eq!(
            parse(&uplink(&t, eui)).unwrap(),
            Topic::Uplink {
                tenant: t.clone(),
                dev_eui: eui
            }
        );
        assert_eq!(
            parse(&downlink(&t, eui)).unwrap(),
            Topic::Downlink {
                tenant: t.clone(),
                dev_eui: eui
            }
        );
        assert_eq!(
            parse(&ack(&t, eui)).unwrap(),
            Topic::Ack {
                tenant: t.clone(),
                dev_eui: eui
            }
        );
        assert_eq!(downlinks_of(&t), "lamplighter/bristol/down/+");
        let group = DevAddr(0x01AB_CDEF);
        assert_eq!(multicast(&t, group), "lamplighter/bristol/mcast/01ABCDEF");
        assert_eq!(
            parse(&multicast(&t, group)).unwrap(),
            Topic::Multicast {
                tenant: t,
                mc_addr: group
            }
        );
    }

    #[test]
    fn foreign_topics_are_refused() {
        for bad in [
            "",
            "lamplighter",
            "lamplighter/bristol/up",
            "lamplighter/bristol/up/0011223344556677/x",
            "lamplighter/Bristol/up/0011223344556677",
            "lamplighter/bristol/sideways/0011223344556677",
            "other/bristol/up/0011223344556677",
            "lamplighter/bristol/up/zz",
            "lamplighter/bristol/mcast/0011223344556677",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
