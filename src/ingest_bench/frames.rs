//! The load's frames, sealed before the clock starts so the hot loop only hands bytes to
//! the MQTT client: each lamp's status reports with increasing FCnt, encrypted and signed
//! with its session keys, exactly what a node would publish.

use anyhow::{Context, Result};
use lamplighter_controller::store::StoredNode;
use lamplighter_protocol::lorawan::{self, DataFrame, FCtrl, MType};
use lamplighter_protocol::payload::{
    FaultFlags, NodeMode, Presence, ReportTrigger, StatusReport, FPORT_STATUS,
};
use lamplighter_protocol::topics;

/// One connection's share of the load: its lamps' uplink topics and its frames, in the
/// order they are published (round robin over its lamps, so each lamp's FCnt rises and no
/// lamp's frames overtake each other on the connection).
pub struct ConnectionFrames {
    /// The MQTT credentials the connection authenticates with (one of its lamps').
    pub username: String,
    pub password: String,
    /// Uplink topic of each of the connection's lamps.
    pub topics: Vec<String>,
    /// Every frame is `frame_len` bytes: frame `k` is `bytes[k * frame_len..][..frame_len]`
    /// and belongs to lamp `k % topics.len()`.
    pub bytes: Vec<u8>,
    pub frame_len: usize,
}

impl ConnectionFrames {
    pub fn len(&self) -> usize {
        self.bytes.len() / self.frame_len.max(1)
    }

    /// Frame `k`: (topic, bytes).
    pub fn frame(&self, k: usize) -> (&str, &[u8]) {
        let topic = &self.topics[k % self.topics.len()];
        (topic, &self.bytes[k * self.frame_len..][..self.frame_len])
    }
}

/// Seals `total` frames for `nodes`, split over `connections` (lamp `i` goes to connection
/// `i % connections`; each connection gets `total / connections` frames, the first
/// `total % connections` one more). Each lamp's FCnt continues from what the store holds.
/// The connections are sealed on parallel threads.
pub fn seal(nodes: &[StoredNode], connections: usize, total: u64) -> Result<Vec<ConnectionFrames>> {
    let reading_time_s = (lamplighter_protocol::time::ScaledClock::system().now().0 / 1000) as u32;
    let shares: Vec<(Vec<&StoredNode>, u64)> = (0..connections)
        .map(|c| {
            let lamps: Vec<&StoredNode> = nodes.iter().skip(c).step_by(connections).collect();
            let frames =
                total / connections as u64 + u64::from((c as u64) < total % connections as u64);
            (lamps, frames)
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = shares.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .chunks(chunk.max(1))
            .map(|group| {
                scope.spawn(move || {
                    group
                        .iter()
                        .map(|(lamps, frames)| seal_one(lamps, *frames, reading_time_s))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(connections);
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a sealing thread panicked"))??,
            );
        }
        Ok(out)
    })
}

fn seal_one(lamps: &[&StoredNode], frames: u64, reading_time_s: u32) -> Result<ConnectionFrames> {
    let first = lamps.first().context("a connection with no lamp")?;
    let report = |n: &StoredNode, k: u64| StatusReport {
        level_pct: 0,
        target_level_pct: 0,
        power_dw: 0,
        energy_dwh: n.node.last_energy_dwh.unwrap_or(0).wrapping_add(k as u32),
        ambient_lux: 0,
        presence: Presence::default(),
        faults: FaultFlags::default(),
        mode: NodeMode::FailSafe,
        trigger: ReportTrigger::Periodic,
        reading_time_s,
        applied_fcnt_down: 0,
    };
    let mut bytes = Vec::new();
    let mut frame_len = 0;
    for k in 0..frames {
        let n = lamps[(k % lamps.len() as u64) as usize];
        let round = k / lamps.len() as u64;
        let fcnt = n
            .node
            .last_fcnt_up
            .map_or(0, |f| u64::from(f) + 1)
            .checked_add(round)
            .and_then(|f| u32::try_from(f).ok())
            .with_context(|| format!("lamp {}'s uplink counter would overflow", n.node.lamp.0))?;
        let phy = lorawan::encode_data_frame(
            &DataFrame {
                mtype: MType::UnconfirmedDataUp,
                dev_addr: n.node.dev_addr,
                fctrl: FCtrl::default(),
                fcnt,
                fopts: Vec::new(),
                fport: Some(FPORT_STATUS),
                frm_payload: report(n, round + 1).encode(),
            },
            &n.node.keys,
        )
        .context("sealing a bench frame")?;
        if k == 0 {
            frame_len = phy.len();
            bytes.reserve_exact(frame_len * frames as usize);
        }
        anyhow::ensure!(phy.len() == frame_len, "bench frames differ in length");
        bytes.extend_from_slice(&phy);
    }
    Ok(ConnectionFrames {
        username: first.mqtt_username.clone(),
        password: first.mqtt_password.clone(),
        topics: lamps
            .iter()
            .map(|n| topics::uplink(&n.node.tenant, n.node.dev_eui))
            .collect(),
        bytes,
        frame_len,
    })
}
