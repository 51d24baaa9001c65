//! Unicast downlinks: the controller's frames checked and queued per device (at most
//! [`NsConfig::max_queue_per_device`](super::NsConfig::max_queue_per_device), the oldest
//! of the lowest priority dropped first), then sent in a Class A device's RX1/RX2 windows
//! after its uplink, or at once on RX2 for a Class C device, through the best gateway on
//! its path that has budget and a free radio. [`NetworkServer::service`] is the scheduler
//! that runs whatever is due, multicast first.

use std::collections::HashSet;

use lamplighter_protocol::lorawan::{self, DataFrame, FrameError};
use lamplighter_protocol::{DevEui, TenantId, UnixMs};

use super::config::{DeviceClass, Priority};
use super::counters::DownlinkRejection;
use super::events::TxKind;
use super::session::QueuedDownlink;
use super::NetworkServer;
use crate::gwmp::{GatewayEui, TxTiming, Txpk};

impl NetworkServer {
    pub(super) fn accept_downlink(
        &mut self,
        now: UnixMs,
        tenant: &TenantId,
        dev_eui: DevEui,
        phy: &[u8],
        priority: Priority,
    ) -> Result<(), DownlinkRejection> {
        let &i = self
            .by_eui
            .get(&dev_eui)
            .filter(|&&i| self.devices[i].profile.tenant == *tenant)
            .ok_or_else(|| DownlinkRejection::UnknownDevice(dev_eui, tenant.clone()))?;
        let header = lorawan::peek_header(phy).map_err(DownlinkRejection::Frame)?;
        if header.mtype.is_uplink() {
            return Err(DownlinkRejection::NotDownlink(header.mtype));
        }
        let device = &mut self.devices[i];
        if header.dev_addr != device.profile.dev_addr {
            return Err(DownlinkRejection::WrongDevAddr {
                got: header.dev_addr,
                want: device.profile.dev_addr,
            });
        }
        let fcnt = match lorawan::rebuild_fcnt(device.last_app_fcnt_down, header.fcnt16) {
            Ok(f) => f,
            Err(FrameError::Replay { last, got }) => {
                return Err(DownlinkRejection::Replay { last, got })
            }
            Err(e) => return Err(DownlinkRejection::Frame(e)),
        };
        // Only frames the controller sealed may spend airtime: anyone on the broker can publish.
        let frame = lorawan::decode_data_frame(phy, &device.profile.app_keys, fcnt).map_err(
            |e| match e {
                FrameError::BadMic => DownlinkRejection::BadMic,
                e => DownlinkRejection::Frame(e),
            },
        )?;
        device.last_app_fcnt_down = Some(fcnt);
        if device.queue.len() >= self.config.max_queue_per_device {
            // Drop the oldest of the lowest priority.
            let lowest = device
                .queue
                .iter()
                .map(|d| d.priority)
                .min()
                .unwrap_or(priority);
            if lowest > priority {
                self.counters.queue_overflow += 1;
                return Ok(());
            }
            if let Some(pos) = device.queue.iter().position(|d| d.priority == lowest) {
                device.queue.remove(pos);
                self.counters.queue_overflow += 1;
            }
        }
        device.queue.push_back(QueuedDownlink {
            frame,
            priority,
            enqueued: now,
        });
        if device.profile.class == DeviceClass::C {
            let gather = self.config.multicast_gather_ms;
            let first_in_queue = device.queue.len() == 1;
            if gather > 0 && first_in_queue && self.in_a_group(dev_eui) {
                let device = &mut self.devices[i];
                device.not_before = device.not_before.max(now.plus_ms(gather));
            }
            self.class_c.push_back(i);
            self.service(now);
        }
        Ok(())
    }

    /// Sends the Class C and multicast downlinks that are due, within budget.
    pub(super) fn service(&mut self, now: UnixMs) {
        if self.config.multicast_gather_ms > 0 {
            self.coalesce(now);
        }
        // Multicast first: one frame serves a whole group.
        self.send_multicast(now);

        let mut again = Vec::new();
        let pending: Vec<usize> = self.class_c.drain(..).collect();
        let mut seen = HashSet::new();
        for i in pending {
            if !seen.insert(i) {
                continue;
            }
            if self.devices[i].not_before > now {
                again.push(i);
                continue;
            }
            self.expire(now, i);
            if self.service_device(now, i) {
                again.push(i);
            }
        }
        self.class_c.extend(again);
    }

    /// Sends as much of one Class C device's queue as the gateways allow. True if some
    /// remains and should be retried (at `not_before`).
    fn service_device(&mut self, now: UnixMs, i: usize) -> bool {
        let rx2_freq = self.config.rx2_freq_hz;
        let rx2_dr = self.config.rx2_dr;
        let power = self.config.tx_power_dbm;
        loop {
            let Some(head) = self.devices[i].queue.front().cloned() else {
                return false;
            };
            if self.devices[i].path.is_empty() {
                // Never heard: no gateway to send through until its first uplink.
                return false;
            }
            let Some(phy) = self.radio_frame(i, &head.frame) else {
                self.devices[i].queue.pop_front();
                continue;
            };
            let air = rx2_dr.time_on_air_us(phy.len(), false);
            let mut wait_until: Option<UnixMs> = None;
            let mut sent = false;
            let mut any_busy = false;
            let path: Vec<GatewayEui> = self.devices[i].path.iter().map(|m| m.gateway).collect();
            for eui in path {
                let gw = self.gateways.entry(eui).or_default();
                let ready_at = if gw.busy_until > now {
                    any_busy = true;
                    gw.busy_until
                } else if !gw.duty_fits(now, rx2_freq, air, head.priority) {
                    gw.duty_retry_at(now, rx2_freq, air, head.priority)
                } else {
                    gw.duty.record(now, rx2_freq, air);
                    gw.busy_until = now.plus_ms(air / 1000 + 1);
                    let txpk = Txpk::new(&phy, TxTiming::Immediately, rx2_freq, rx2_dr, power);
                    let what = TxKind::Unicast {
                        dev_eui: self.devices[i].profile.dev_eui,
                        fcnt: head.frame.fcnt,
                    };
                    self.push_tx(eui, txpk, air, what);
                    sent = true;
                    break;
                };
                wait_until = Some(wait_until.map_or(ready_at, |w: UnixMs| w.min(ready_at)));
            }
            if sent {
                self.devices[i].queue.pop_front();
                continue;
            }
            let wait_until = wait_until.unwrap_or(now.plus_ms(1_000));
            if !any_busy {
                // Every gateway on the path is over this priority's share of its budget.
                if head.priority == Priority::Low {
                    self.devices[i].queue.pop_front();
                    self.counters.duty_dropped += 1;
                    continue;
                }
                self.counters.duty_queued += 1;
            }
            self.devices[i].not_before = wait_until;
            return true;
        }
    }

    /// Class A: the uplink just accepted opens RX1/RX2; send the head of the queue.
    pub(super) fn class_a_window(&mut self, now: UnixMs, i: usize, rx1_us: u32, rx2_us: u32) {
        self.expire(now, i);
        let Some(head) = self.devices[i].queue.front().cloned() else {
            return;
        };
        let Some(phy) = self.radio_frame(i, &head.frame) else {
            self.devices[i].queue.pop_front();
            return;
        };
        let what = TxKind::Unicast {
            dev_eui: self.devices[i].profile.dev_eui,
            fcnt: head.frame.fcnt,
        };
        if self.send_in_rx_windows(now, i, &phy, rx1_us, rx2_us, head.priority, what) {
            self.devices[i].queue.pop_front();
        } else if head.priority == Priority::Low {
            self.devices[i].queue.pop_front();
            self.counters.duty_dropped += 1;
        } else {
            // Waits for the next uplink.
            self.counters.duty_queued += 1;
        }
    }

    /// Tries RX1 then RX2 after the device's last uplink, on the gateways that heard it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_in_rx_windows(
        &mut self,
        now: UnixMs,
        i: usize,
        phy: &[u8],
        rx1_us: u32,
        rx2_us: u32,
        priority: Priority,
        what: TxKind,
    ) -> bool {
        let path = self.devices[i].path.clone();
        for meta in &path {
            let windows = [
                (
                    meta.tmst.wrapping_add(rx1_us),
                    meta.freq_hz,
                    meta.datr,
                    rx1_us,
                ),
                (
                    meta.tmst.wrapping_add(rx2_us),
                    self.config.rx2_freq_hz,
                    self.config.rx2_dr,
                    rx2_us,
                ),
            ];
            for (tmst, freq, dr, delay_us) in windows {
                let air = dr.time_on_air_us(phy.len(), false);
                let gw = self.gateways.entry(meta.gateway).or_default();
                if !gw.duty_fits(now, freq, air, priority) {
                    continue;
                }
                gw.duty.record(now, freq, air);
                let start = now.plus_ms(u64::from(delay_us) / 1000);
                gw.busy_until = gw.busy_until.max(start.plus_ms(air / 1000 + 1));
                let txpk = Txpk::new(
                    phy,
                    TxTiming::AtTmst(tmst),
                    freq,
                    dr,
                    self.config.tx_power_dbm,
                );
                self.push_tx(meta.gateway, txpk, air, what.clone());
                return true;
            }
        }
        false
    }

    /// The application frame re-framed into the device's radio session.
    fn radio_frame(&mut self, i: usize, frame: &DataFrame) -> Option<Vec<u8>> {
        let device = &self.devices[i];
        let keys = device.session.as_ref()?.keys;
        match lorawan::encode_data_frame(frame, &keys) {
            Ok(phy) => Some(phy),
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-frame a downlink");
                *self
                    .counters
                    .downlinks_refused
                    .entry("reframe")
                    .or_default() += 1;
                None
            }
        }
    }

    fn expire(&mut self, now: UnixMs, i: usize) {
        let ttl = self.config.downlink_ttl_ms;
        let q = &mut self.devices[i].queue;
        let before = q.len();
        q.retain(|d| now.since(d.enqueued) < ttl);
        self.counters.expired += (before - q.len()) as u64;
    }
}
