//! Multicast: a group's frame (McAddr, group keys, group FCnt) checked and queued once per
//! gateway that is the best of at least one member, and zone coalescing, which turns the
//! same Class C command at the head of every member's queue into one such frame.

use lamplighter_protocol::lorawan::{self, DataFrame, FCtrl, FrameError, MType};
use lamplighter_protocol::{DevEui, TenantId, UnixMs};

use super::config::{DeviceClass, McGroup, Priority};
use super::counters::DownlinkRejection;
use super::events::TxKind;
use super::session::QueuedDownlink;
use super::NetworkServer;
use crate::gwmp::{GatewayEui, TxTiming, Txpk};

#[derive(Debug)]
pub(super) struct Group {
    pub(super) group: McGroup,
    pub(super) last_fcnt: Option<u32>,
}

impl NetworkServer {
    /// Checks a group's frame and queues it for its gateways; the caller then runs the
    /// scheduler ([`NetworkServer::service`]), which sends it.
    pub(super) fn accept_multicast(
        &mut self,
        now: UnixMs,
        tenant: &TenantId,
        phy: &[u8],
        priority: Priority,
    ) -> Result<usize, DownlinkRejection> {
        let header = lorawan::peek_header(phy).map_err(DownlinkRejection::Frame)?;
        match header.mtype {
            MType::UnconfirmedDataDown => {}
            MType::ConfirmedDataDown => return Err(DownlinkRejection::ConfirmedMulticast),
            t => return Err(DownlinkRejection::NotDownlink(t)),
        }
        let group = self
            .groups
            .get_mut(&header.dev_addr)
            .filter(|g| g.group.tenant == *tenant)
            .ok_or_else(|| DownlinkRejection::UnknownGroup(header.dev_addr, tenant.clone()))?;
        let fcnt = match lorawan::rebuild_fcnt(group.last_fcnt, header.fcnt16) {
            Ok(f) => f,
            Err(FrameError::Replay { last, got }) => {
                return Err(DownlinkRejection::Replay { last, got })
            }
            Err(e) => return Err(DownlinkRejection::Frame(e)),
        };
        lorawan::decode_data_frame(phy, &group.group.keys, fcnt).map_err(|e| match e {
            FrameError::BadMic => DownlinkRejection::BadMic,
            e => DownlinkRejection::Frame(e),
        })?;
        group.last_fcnt = Some(fcnt);
        // One transmission per gateway that is the best path of at least one member.
        let mut targets: Vec<GatewayEui> = group
            .group
            .members
            .iter()
            .filter_map(|eui| self.by_eui.get(eui))
            .filter_map(|&i| self.devices[i].path.first().map(|m| m.gateway))
            .collect();
        targets.sort();
        targets.dedup();
        let mc_addr = header.dev_addr;
        for gw in &targets {
            self.gateways.entry(*gw).or_default().mcast.push_back((
                phy.to_vec(),
                mc_addr,
                fcnt,
                priority,
                now,
            ));
        }
        Ok(targets.len())
    }

    /// Zone coalescing: when every member of a group has the same command at the head of
    /// its Class C queue, the heads leave as one multicast frame, sealed with the group's
    /// keys and counter. One frame on the air per gateway instead of one per lamp is what
    /// lets a gateway's downlink budget command a whole town at dusk.
    pub(super) fn coalesce(&mut self, now: UnixMs) {
        let mut frames = Vec::new();
        for (&mc_addr, group) in self.groups.iter_mut() {
            let members: Vec<usize> = group
                .group
                .members
                .iter()
                .filter_map(|eui| self.by_eui.get(eui).copied())
                .collect();
            if members.len() < 2 {
                continue;
            }
            // Members not heard since this server started have no path of their own; a
            // zone is a few streets, so the gateways that hear their neighbours reach them.
            if members.iter().all(|&i| self.devices[i].path.is_empty()) {
                continue;
            }
            let heads: Option<Vec<&QueuedDownlink>> = members
                .iter()
                .map(|&i| {
                    let d = &self.devices[i];
                    (d.profile.class == DeviceClass::C)
                        .then(|| d.queue.front())
                        .flatten()
                })
                .collect();
            let Some(heads) = heads else { continue };
            let first = &heads[0].frame;
            let alike = heads
                .iter()
                .all(|h| h.frame.fport == first.fport && h.frame.frm_payload == first.frm_payload);
            if !alike {
                continue;
            }
            let fcnt = group.last_fcnt.map_or(0, |f| f.wrapping_add(1));
            let frame = DataFrame {
                mtype: MType::UnconfirmedDataDown,
                dev_addr: mc_addr,
                fctrl: FCtrl::default(),
                fcnt,
                fopts: Vec::new(),
                fport: first.fport,
                frm_payload: first.frm_payload.clone(),
            };
            let priority = heads
                .iter()
                .map(|h| h.priority)
                .max()
                .unwrap_or(Priority::Normal);
            let Ok(phy) = lorawan::encode_data_frame(&frame, &group.group.keys) else {
                continue;
            };
            group.last_fcnt = Some(fcnt);
            frames.push((mc_addr, fcnt, phy, priority, members));
        }
        for (mc_addr, fcnt, phy, priority, members) in frames {
            let mut targets: Vec<GatewayEui> = Vec::new();
            for &i in &members {
                self.devices[i].queue.pop_front();
                self.devices[i].not_before = now;
                if let Some(m) = self.devices[i].path.first() {
                    targets.push(m.gateway);
                }
            }
            self.counters.coalesced_downlinks += members.len() as u64;
            targets.sort();
            targets.dedup();
            for gw in targets {
                self.gateways.entry(gw).or_default().mcast.push_back((
                    phy.clone(),
                    mc_addr,
                    fcnt,
                    priority,
                    now,
                ));
            }
        }
    }

    /// Sends the multicast frames waiting for each gateway, within budget.
    pub(super) fn send_multicast(&mut self, now: UnixMs) {
        let rx2_freq = self.config.rx2_freq_hz;
        let rx2_dr = self.config.rx2_dr;
        let power = self.config.tx_power_dbm;
        let ttl = self.config.downlink_ttl_ms;
        let euis: Vec<GatewayEui> = self
            .gateways
            .iter()
            .filter(|(_, g)| !g.mcast.is_empty())
            .map(|(e, _)| *e)
            .collect();
        for eui in euis {
            while let Some(gw) = self.gateways.get_mut(&eui) {
                let Some((phy, mc_addr, fcnt, priority, enqueued)) = gw.mcast.front().cloned()
                else {
                    break;
                };
                if now.since(enqueued) >= ttl {
                    gw.mcast.pop_front();
                    self.counters.expired += 1;
                    continue;
                }
                if gw.busy_until > now {
                    break;
                }
                let air = rx2_dr.time_on_air_us(phy.len(), false);
                if !gw.duty_fits(now, rx2_freq, air, priority) {
                    if priority == Priority::Low {
                        gw.mcast.pop_front();
                        self.counters.duty_dropped += 1;
                        continue;
                    }
                    self.counters.duty_queued += 1;
                    gw.busy_until = gw.duty_retry_at(now, rx2_freq, air, priority);
                    break;
                }
                gw.duty.record(now, rx2_freq, air);
                gw.busy_until = now.plus_ms(air / 1000 + 1);
                gw.mcast.pop_front();
                let txpk = Txpk::new(&phy, TxTiming::Immediately, rx2_freq, rx2_dr, power);
                self.push_tx(eui, txpk, air, TxKind::Multicast { mc_addr, fcnt });
            }
        }
    }

    pub(super) fn in_a_group(&self, dev_eui: DevEui) -> bool {
        self.groups
            .values()
            .any(|g| g.group.members.contains(&dev_eui))
    }
}
