//! What a link counted, and the links' counters in Prometheus text for `/metrics`.

use std::collections::BTreeMap;

use serde::Serialize;

/// What the link counted. Every uplink event and every command frame heard ends in exactly
/// one count: `uplinks_passed + joins + sum(uplinks_refused)` events;
/// `downlinks_published + downlinks_superseded + downlinks_waiting + sum(downlinks_refused)`
/// frames.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkReport {
    pub tenant: String,
    pub uplinks_passed: u64,
    pub uplinks_refused: BTreeMap<&'static str, u64>,
    /// Join events: each started a new counter session for its device.
    pub joins: u64,
    /// Command frames from the controller accepted for the network.
    pub downlinks_passed: u64,
    pub downlinks_refused: BTreeMap<&'static str, u64>,
    /// Accepted command frames published to the network.
    pub downlinks_published: u64,
    /// Accepted command frames never published because a later one for the same lamp (and
    /// command kind) replaced them while they waited.
    pub downlinks_superseded: u64,
    /// Accepted command frames waiting: the network's broker is down, or (The Things Stack)
    /// the device's ID is not known yet.
    pub downlinks_waiting: u64,
    /// Connections made to the network's broker (1 while it never dropped).
    pub connections: u64,
    pub connected: bool,
}

/// The links' counters in Prometheus text.
pub fn prometheus(reports: &[LinkReport]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in rows {
            out.push_str(&format!("{name}{{{labels}}} {v}\n"));
        }
    };
    let per_tenant = |f: &dyn Fn(&LinkReport) -> u64| -> Vec<(String, u64)> {
        reports
            .iter()
            .map(|r| (format!("tenant=\"{}\"", r.tenant), f(r)))
            .collect()
    };
    family(
        "lamplighter_external_refused_total",
        "counter",
        "Messages refused at an external network link, by tenant, direction and reason.",
        reports
            .iter()
            .flat_map(|r| {
                let up = r.uplinks_refused.iter().map(move |(k, n)| {
                    (
                        format!("tenant=\"{}\",direction=\"up\",reason=\"{k}\"", r.tenant),
                        *n,
                    )
                });
                let down = r.downlinks_refused.iter().map(move |(k, n)| {
                    (
                        format!("tenant=\"{}\",direction=\"down\",reason=\"{k}\"", r.tenant),
                        *n,
                    )
                });
                up.chain(down)
            })
            .collect(),
    );
    family(
        "lamplighter_external_uplinks_total",
        "counter",
        "Uplink events passed to the controller from an external network.",
        per_tenant(&|r| r.uplinks_passed),
    );
    family(
        "lamplighter_external_joins_total",
        "counter",
        "Join events from an external network (each starts a new counter session).",
        per_tenant(&|r| r.joins),
    );
    family(
        "lamplighter_external_commands_published_total",
        "counter",
        "Commands published to an external network.",
        per_tenant(&|r| r.downlinks_published),
    );
    family(
        "lamplighter_external_commands_superseded_total",
        "counter",
        "Commands replaced by a later one for the same lamp before they were published.",
        per_tenant(&|r| r.downlinks_superseded),
    );
    family(
        "lamplighter_external_commands_waiting",
        "gauge",
        "Commands waiting for the network's broker or for the device's ID on the network.",
        per_tenant(&|r| r.downlinks_waiting),
    );
    family(
        "lamplighter_external_connected",
        "gauge",
        "1 while the link is connected to the network's broker.",
        per_tenant(&|r| u64::from(r.connected)),
    );
    out
}
