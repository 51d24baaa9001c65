//! Tokio glue: one [`NodeCore`] on a LoRa radio.
//!
//! The same core as over MQTT ([`crate::agent`]); only the carrier differs. A [`Radio`] puts
//! frames on the air and hands back every frame it hears; the core decides which are its own
//! (its DevAddr, one of its multicast groups, a JoinAccept it waits for) and, for a Class A
//! node, whether one arrived inside a receive window.
//!
//! What the radio path does not do, and why:
//! - **No acknowledgement outbox.** Uplinks are unconfirmed, as a lighting network's are:
//!   an acknowledgement per report would spend the gateways' downlink budget (the 10 %
//!   sub-band carries a few thousand frames an hour per gateway, for the whole town). A lost
//!   report shows as a gap in FCnt; the next report carries the cumulative energy meter, so
//!   no energy is lost with it.
//! - **Duty cycle is kept by the node.** EU868 allows a device 1 % of the time on the air in
//!   the sub-bands the lamp nodes use: after a frame of airtime T, the next waits 99 T. Frames
//!   due meanwhile wait in a queue of [`RADIO_QUEUE`]; beyond that the oldest is dropped and
//!   counted ([`NodeProbe::outbox_dropped`]).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use lamplighter_protocol::lorawan::radio::DataRate;
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::UnixMs;
use tokio::sync::{broadcast, mpsc};

use crate::agent::NodeProbe;
use crate::core::{NodeCore, RoadUser};
use crate::hardware::Hardware;

/// Frames waiting for the duty cycle; at one report a minute this is minutes of backlog.
pub const RADIO_QUEUE: usize = 8;

/// Time on air allowed per unit of time, per mille (EU868 g/g1 sub-bands: 1 %).
pub const UPLINK_DUTY_PERMILLE: u64 = 10;

/// A LoRa transceiver as the node's glue sees it.
pub trait Radio: Send {
    /// Puts a frame on the air. Returns false when the frame could not be sent (the air is
    /// gone: a simulation that ended, a radio that failed).
    fn transmit(&mut self, phy: Vec<u8>) -> bool;
    /// The next frame heard on the downlink channels, whoever it is for. `None` when the
    /// radio is gone for good.
    fn receive(&mut self) -> impl Future<Output = Option<Vec<u8>>> + Send;
}

/// The simulated air: uplinks into a channel the simulated gateways listen to, downlinks
/// from a broadcast every node hears.
pub struct SimulatedRadio {
    pub uplinks: mpsc::Sender<Vec<u8>>,
    pub downlinks: broadcast::Receiver<Vec<u8>>,
}

impl Radio for SimulatedRadio {
    fn transmit(&mut self, phy: Vec<u8>) -> bool {
        // A full air channel is a collision: the frame is lost, as on a crowded band.
        !matches!(
            self.uplinks.try_send(phy),
            Err(mpsc::error::TrySendError::Closed(_))
        )
    }
    async fn receive(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.downlinks.recv().await {
                Ok(f) => return Some(f),
                // Missed frames were for someone else or are lost: a radio cannot replay them.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Runs one node on `radio` at `data_rate` until the task is aborted or the radio is gone.
pub async fn run_radio_node<H: Hardware, R: Radio>(
    mut core: NodeCore,
    mut hardware: H,
    mut radio: R,
    data_rate: DataRate,
    clock: ScaledClock,
    mut presence: mpsc::Receiver<RoadUser>,
    probe: Arc<NodeProbe>,
) {
    let dev_eui = core.config().dev_eui;
    let mut queue: VecDeque<Vec<u8>> = VecDeque::new();
    let mut air_free_at = UnixMs(0);
    let mut presence_open = true;
    probe.connected.store(true, Ordering::Relaxed);
    loop {
        let now = clock.now();
        let mut wake = core.poll_timeout(now);
        if !queue.is_empty() {
            wake = wake.min(air_free_at.max(now));
        }
        tokio::select! {
            frame = radio.receive() => match frame {
                Some(phy) => {
                    let now = clock.now();
                    match core.handle_downlink(now, &phy) {
                        Ok(_) => {
                            probe.commands_applied.fetch_add(1, Ordering::Relaxed);
                            probe.last_command_ms.store(now.0, Ordering::Relaxed);
                        }
                        // Most frames on a shared channel are for other nodes: not an error.
                        Err(crate::core::DownlinkError::NotForMe(_)) => {}
                        Err(e) => {
                            probe.downlinks_rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%dev_eui, error = %e, "downlink rejected");
                        }
                    }
                }
                None => {
                    probe.connected.store(false, Ordering::Relaxed);
                    return;
                }
            },
            who = presence.recv(), if presence_open => match who {
                Some(who) => core.handle_presence(clock.now(), who),
                None => presence_open = false,
            },
            _ = tokio::time::sleep(clock.wall_until(wake)) => core.handle_timeout(clock.now()),
        }

        let now = clock.now();
        hardware.set_level_pct(core.level_pct(now));
        core.handle_sample(now, hardware.sample(now));
        while let Some(frame) = core.poll_transmit(now) {
            if queue.len() == RADIO_QUEUE {
                queue.pop_front();
                probe.outbox_dropped.fetch_add(1, Ordering::Relaxed);
            }
            queue.push_back(frame);
            probe.uplinks.fetch_add(1, Ordering::Relaxed);
        }
        if now >= air_free_at {
            if let Some(frame) = queue.pop_front() {
                let airtime_us = data_rate.time_on_air_us(frame.len(), true);
                if !radio.transmit(frame) {
                    probe.connected.store(false, Ordering::Relaxed);
                    return;
                }
                let off_ms =
                    airtime_us * (1000 - UPLINK_DUTY_PERMILLE) / UPLINK_DUTY_PERMILLE / 1000;
                air_free_at = now.plus_ms(airtime_us / 1000 + off_ms);
            }
        }
        probe
            .outbox_len
            .store(queue.len() as u64, Ordering::Relaxed);
        probe.observe(&core, now);
    }
}
