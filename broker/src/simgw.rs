//! A simulated gateway: it hears frames from simulated nodes (an in-process "air") and
//! forwards them to the bridge over real UDP with the Semtech protocol, exactly as a packet
//! forwarder on a rooftop does; it sends PULL_DATA keep-alives, takes PULL_RESP downlinks,
//! delivers them to the air, and answers TX_ACK.
//!
//! Radio timing is not simulated here: a downlink is put on the air when it arrives (the
//! nodes' MAC decides whether it is in a receive window).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lamplighter_protocol::lorawan::radio::DataRate;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::gwmp::{self, GatewayEui, Packet, Rxpk};

/// A frame on the air, as a gateway hears it.
#[derive(Debug, Clone)]
pub struct AirFrame {
    pub phy: Vec<u8>,
    pub freq_hz: u32,
    pub datr: DataRate,
    pub rssi_dbm: i32,
    pub snr_db: f64,
}

#[derive(Debug, Default)]
pub struct SimGatewayStats {
    pub pushed: AtomicU64,
    pub push_acks: AtomicU64,
    pub pull_acks: AtomicU64,
    pub downlinks: AtomicU64,
}

pub struct SimGateway {
    pub eui: GatewayEui,
    pub local_addr: SocketAddr,
    pub stats: Arc<SimGatewayStats>,
    pub task: JoinHandle<()>,
}

/// Starts a gateway that forwards `air` to `bridge` and puts downlinks on `downlinks`.
/// Frames are batched up to 16 per PUSH_DATA, as forwarders do.
pub async fn spawn(
    eui: GatewayEui,
    bridge: SocketAddr,
    mut air: mpsc::Receiver<AirFrame>,
    downlinks: broadcast::Sender<Vec<u8>>,
    pull_interval: Duration,
) -> std::io::Result<SimGateway> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let local_addr = socket.local_addr()?;
    let stats = Arc::new(SimGatewayStats::default());
    let task_stats = stats.clone();
    let task = tokio::spawn(async move {
        let start = Instant::now();
        let mut token: u16 = 0;
        let mut buf = vec![0u8; gwmp::MAX_DATAGRAM];
        let mut pull = tokio::time::interval(pull_interval);
        let mut air_open = true;
        loop {
            tokio::select! {
                _ = pull.tick() => {
                    token = token.wrapping_add(1);
                    let _ = socket.send_to(&gwmp::pull_data(token, eui), bridge).await;
                }
                f = air.recv(), if air_open => match f {
                    Some(first) => {
                        let mut batch = vec![first];
                        while batch.len() < 16 {
                            match air.try_recv() {
                                Ok(f) => batch.push(f),
                                Err(_) => break,
                            }
                        }
                        let tmst = start.elapsed().as_micros() as u32;
                        let rxpk: Vec<Rxpk> = batch
                            .iter()
                            .map(|f| Rxpk::for_frame(&f.phy, tmst, f.freq_hz, f.datr, f.rssi_dbm, f.snr_db))
                            .collect();
                        token = token.wrapping_add(1);
                        let d = gwmp::push_data(token, eui, &rxpk);
                        if socket.send_to(&d, bridge).await.is_ok() {
                            task_stats.pushed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        }
                    }
                    None => air_open = false,
                },
                r = socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    match gwmp::parse(&buf[..n]) {
                        Ok(Packet::PushAck { .. }) => {
                            task_stats.push_acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Packet::PullAck { .. }) => {
                            task_stats.pull_acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Packet::PullResp { token, txpk, .. }) => {
                            let error = match txpk.phy() {
                                Ok(phy) => {
                                    task_stats.downlinks.fetch_add(1, Ordering::Relaxed);
                                    let _ = downlinks.send(phy);
                                    None
                                }
                                Err(_) => Some("TX_FREQ"),
                            };
                            let _ = socket.send_to(&gwmp::tx_ack(token, eui, error), from).await;
                        }
                        _ => {}
                    }
                }
            }
        }
    });
    Ok(SimGateway {
        eui,
        local_addr,
        stats,
        task,
    })
}
