//! The LoRaWAN radio in planning mode: gateways over the town, airtime per spreading factor,
//! LoRaSim's collision and capture rules and the EU868 duty-cycle limits.
//!
//! Kept small, sans-IO and O(1)-ish per frame so that it does not cost the planning run its
//! speed:
//!
//! - **Gateways** stand on a square grid over the town's bounding box, `spacing_m` apart
//!   (default 2 km, about the reach of SF9-SF10 in a town). Each node talks through its
//!   nearest gateway (a simplification of LoRaWAN's any-gateway reception: the nearest one
//!   is the one that would hear it best).
//! - **Spreading factor** per node from its path loss (LoRaSim's log-distance model: 127.41 dB
//!   at 40 m, exponent 2.08, 14 dBm transmit power): the fastest SF whose sensitivity (LoRaSim's
//!   SX1272 table at 125 kHz: SF7 -124 dBm ... SF12 -137 dBm) leaves `margin_db` of margin; a
//!   node out of reach even at SF12 uses SF12 and its uplinks are lost.
//! - **Airtime** of each frame from the Semtech formula
//!   ([`DataRate::time_on_air_us`]: explicit header, CR 4/5, 8 preamble symbols; uplinks with
//!   a CRC, downlinks without).
//! - **Collisions** (LoRaSim): two uplinks collide at a gateway when they share the spreading
//!   factor and the channel (one of EU868's three default channels, picked at random per
//!   frame) and overlap in time; the stronger survives when it is at least 6 dB above the
//!   other (capture), otherwise both are lost.
//! - **Duty cycle** (EU868): a node may use 1 % of the time on the default channels' sub-band,
//!   so after each uplink it waits 99 times its airtime before the next (a frame due sooner is
//!   sent when the node may: delayed, counted). A gateway sends Class C downlinks on RX2
//!   (869.525 MHz, the 10 % sub-band) one at a time, within 10 % of any hour; a downlink that
//!   would exceed the hour's budget is dropped (counted) — which is why a council dims zones by
//!   multicast rather than lamp by lamp.

use std::collections::VecDeque;

use lamplighter_protocol::lorawan::radio::DataRate;
use lamplighter_town::{distance_m, Town};
use serde::{Deserialize, Serialize};

/// Sensitivity at 125 kHz, SF7..SF12 (LoRaSim, SX1272 datasheet).
const SENSITIVITY_DBM: [f64; 6] = [-124.0, -127.0, -130.0, -133.0, -135.0, -137.0];
const TX_POWER_DBM: f64 = 14.0;
/// LoRaSim's log-distance path loss: `PL(d) = PL0 + 10 gamma log10(d / d0)`.
const PL0_DB: f64 = 127.41;
const D0_M: f64 = 40.0;
const GAMMA: f64 = 2.08;
/// A stronger frame survives a collision when it is this much above the other.
pub const CAPTURE_DB: f64 = 6.0;
/// EU868's three default uplink channels.
const CHANNELS: usize = 3;
const HOUR_MS: u64 = 3_600_000;

/// The radio a planning run models (`None` in [`super::PlanOptions::radio`]: IP nodes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RadioConfig {
    /// Distance between gateways on the grid.
    pub gateway_spacing_m: f64,
    /// Link margin kept when choosing a node's spreading factor.
    pub margin_db: f64,
    /// EU868 data rate of Class C downlinks on RX2 (DR3 = SF9, as The Things Network uses).
    pub rx2_dr: u8,
    /// Share of time a node may transmit (1 % on the default channels' sub-band).
    pub node_duty_cycle: f64,
    /// Share of any hour a gateway may transmit on RX2 (10 % sub-band).
    pub gateway_duty_cycle: f64,
    /// Gateway to network server to controller and back, each way.
    pub backhaul_ms: u64,
}

impl Default for RadioConfig {
    fn default() -> Self {
        RadioConfig {
            gateway_spacing_m: 2_000.0,
            margin_db: 10.0,
            rx2_dr: 3,
            node_duty_cycle: 0.01,
            gateway_duty_cycle: 0.10,
            backhaul_ms: 50,
        }
    }
}

/// What the radio did, for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RadioReport {
    pub gateways: usize,
    pub gateway_spacing_m: f64,
    /// Nodes per spreading factor, SF7..SF12.
    pub nodes_by_sf: [u64; 6],
    pub nodes_out_of_reach: u64,
    pub uplinks: u64,
    /// Lost to a collision (same SF and channel, overlapping, not captured).
    pub uplinks_collided: u64,
    /// Survived an overlap by the 6 dB capture rule.
    pub uplinks_captured: u64,
    /// From nodes out of reach.
    pub uplinks_out_of_reach: u64,
    /// Sent later than the node wanted because of its duty cycle.
    pub uplinks_delayed_by_duty_cycle: u64,
    /// Not sent: another frame was already waiting for the node's duty cycle.
    pub uplinks_dropped_duty_cycle: u64,
    pub uplink_airtime_s: f64,
    pub downlinks: u64,
    /// Dropped because the gateway's hour of RX2 airtime was spent.
    pub downlinks_dropped_duty_cycle: u64,
    /// Each gateway's downlink airtime over the run, seconds.
    pub downlink_airtime_s_per_gateway: Vec<f64>,
    /// The most any gateway used of its RX2 budget in one hour window (share, 0-1).
    pub busiest_gateway_hour_duty: f64,
}

#[derive(Debug, Clone, Copy)]
struct NodeRadio {
    gateway: u32,
    /// 0 = SF7 .. 5 = SF12.
    sf_index: u8,
    rssi_dbm: f32,
    in_reach: bool,
    /// The node may transmit again from then (its duty cycle).
    free_at_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    end_us: u64,
    rssi_dbm: f32,
    slot: u32,
}

#[derive(Debug, Default)]
struct GatewayState {
    /// Uplinks on air per (channel, SF), for the collision test.
    on_air: Vec<Vec<InFlight>>,
    /// RX2 transmissions in the last hour: (start ms, airtime ms).
    sent: VecDeque<(u64, u64)>,
    sent_ms_in_window: u64,
    busy_until_ms: u64,
    downlink_airtime_us: u64,
}

/// The radio's state for one policy run.
pub(crate) struct Radio {
    cfg: RadioConfig,
    nodes: Vec<NodeRadio>,
    gateways: Vec<GatewayState>,
    /// Whether each uplink still on its way was lost, by slot (uplink number modulo the
    /// ring's length: a frame is decided within seconds, long before its slot comes round).
    lost: Vec<bool>,
    next_slot: u32,
    pub report: RadioReport,
}

const LOST_RING: usize = 1 << 16;

/// An uplink put on air: when the controller gets it (if it is not lost on the way) and the
/// slot that says whether it was.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UplinkOnAir {
    pub arrives_ms: u64,
    pub slot: u32,
}

impl Radio {
    pub fn new(cfg: &RadioConfig, town: &Town) -> Radio {
        let (mut lat0, mut lat1, mut lon0, mut lon1) = (90.0f64, -90.0f64, 180.0f64, -180.0f64);
        for l in &town.lamps {
            lat0 = lat0.min(l.lat);
            lat1 = lat1.max(l.lat);
            lon0 = lon0.min(l.lon);
            lon1 = lon1.max(l.lon);
        }
        if town.lamps.is_empty() {
            (lat0, lat1, lon0, lon1) = (0.0, 0.0, 0.0, 0.0);
        }
        let spacing = cfg.gateway_spacing_m.max(100.0);
        let height_m = distance_m((lat0, lon0), (lat1, lon0));
        let width_m = distance_m((lat0, lon0), (lat0, lon1));
        let rows = ((height_m / spacing).ceil() as usize).max(1);
        let cols = ((width_m / spacing).ceil() as usize).max(1);
        // Gateways at the centres of the grid's cells.
        let mut gw = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                gw.push((
                    lat0 + (lat1 - lat0) * (r as f64 + 0.5) / rows as f64,
                    lon0 + (lon1 - lon0) * (c as f64 + 0.5) / cols as f64,
                ));
            }
        }
        let mut report = RadioReport {
            gateways: gw.len(),
            gateway_spacing_m: spacing,
            downlink_airtime_s_per_gateway: vec![0.0; gw.len()],
            ..RadioReport::default()
        };
        let nodes = town
            .lamps
            .iter()
            .map(|l| {
                let p = l.position();
                // The grid is regular: the nearest gateway is the one of the lamp's cell.
                let r = if lat1 > lat0 {
                    (((l.lat - lat0) / (lat1 - lat0) * rows as f64) as usize).min(rows - 1)
                } else {
                    0
                };
                let c = if lon1 > lon0 {
                    (((l.lon - lon0) / (lon1 - lon0) * cols as f64) as usize).min(cols - 1)
                } else {
                    0
                };
                let g = r * cols + c;
                let d = distance_m(p, gw[g]).max(1.0);
                let rssi = TX_POWER_DBM - (PL0_DB + 10.0 * GAMMA * (d / D0_M).log10());
                let sf = SENSITIVITY_DBM
                    .iter()
                    .position(|s| rssi - cfg.margin_db >= *s);
                let in_reach = rssi >= SENSITIVITY_DBM[5];
                let sf_index = sf.unwrap_or(5) as u8;
                report.nodes_by_sf[sf_index as usize] += 1;
                if !in_reach {
                    report.nodes_out_of_reach += 1;
                }
                NodeRadio {
                    gateway: g as u32,
                    sf_index,
                    rssi_dbm: rssi as f32,
                    in_reach,
                    free_at_ms: 0,
                }
            })
            .collect();
        let gateways = (0..gw.len())
            .map(|_| GatewayState {
                on_air: vec![Vec::new(); CHANNELS * 6],
                ..GatewayState::default()
            })
            .collect();
        Radio {
            cfg: cfg.clone(),
            nodes,
            gateways,
            lost: vec![false; LOST_RING],
            next_slot: 0,
            report,
        }
    }

    /// Node `i` wants to send a `len`-byte uplink at `now_ms` on `channel` (0-2): when it goes
    /// on air, when it reaches the controller, and the slot to ask [`Radio::uplink_lost`].
    pub fn send_uplink(
        &mut self,
        i: usize,
        now_ms: u64,
        len: usize,
        channel: usize,
    ) -> UplinkOnAir {
        let n = self.nodes[i];
        let dr = DataRate {
            sf: 7 + n.sf_index,
            bw_khz: 125,
        };
        let airtime_us = dr.time_on_air_us(len, true);
        let start_ms = now_ms.max(n.free_at_ms);
        let off_ms = ((airtime_us as f64 / self.cfg.node_duty_cycle.clamp(1e-4, 1.0)) as u64
            / 1000)
            .max(airtime_us / 1000);
        self.report.uplinks += 1;
        let slot = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1);
        let ring = slot as usize % LOST_RING;
        // A node's radio holds one frame waiting for its duty cycle; a frame due while one
        // already waits is dropped (it would only grow a backlog of stale reports).
        if start_ms > now_ms + off_ms {
            self.report.uplinks_dropped_duty_cycle += 1;
            self.lost[ring] = true;
            return UplinkOnAir {
                arrives_ms: now_ms,
                slot,
            };
        }
        if start_ms > now_ms {
            self.report.uplinks_delayed_by_duty_cycle += 1;
        }
        self.nodes[i].free_at_ms = start_ms + off_ms;
        self.report.uplink_airtime_s += airtime_us as f64 / 1e6;
        self.lost[ring] = !n.in_reach;
        if !n.in_reach {
            self.report.uplinks_out_of_reach += 1;
        }
        let start_us = start_ms * 1000;
        let end_us = start_us + airtime_us;
        let key = channel.min(CHANNELS - 1) * 6 + n.sf_index as usize;
        let on_air = &mut self.gateways[n.gateway as usize].on_air[key];
        on_air.retain(|f| f.end_us > start_us);
        for other in on_air.iter() {
            let diff = n.rssi_dbm - other.rssi_dbm;
            let other_ring = other.slot as usize % LOST_RING;
            if diff >= CAPTURE_DB as f32 {
                // The new frame captures the receiver; the one on air is lost.
                if !self.lost[other_ring] {
                    self.lost[other_ring] = true;
                    self.report.uplinks_collided += 1;
                }
                self.report.uplinks_captured += 1;
            } else if -diff >= CAPTURE_DB as f32 {
                if !self.lost[ring] {
                    self.lost[ring] = true;
                    self.report.uplinks_collided += 1;
                }
                self.report.uplinks_captured += 1;
            } else {
                for r in [ring, other_ring] {
                    if !self.lost[r] {
                        self.lost[r] = true;
                        self.report.uplinks_collided += 1;
                    }
                }
            }
        }
        on_air.push(InFlight {
            end_us,
            rssi_dbm: n.rssi_dbm,
            slot,
        });
        UplinkOnAir {
            arrives_ms: end_us.div_ceil(1000) + self.cfg.backhaul_ms,
            slot,
        }
    }

    /// Whether the uplink in `slot` was lost (to a collision, or out of reach).
    pub fn uplink_lost(&self, slot: u32) -> bool {
        self.lost[slot as usize % LOST_RING]
    }

    /// A `len`-byte Class C downlink for node `i` reaches its gateway at `now_ms`: when the
    /// node receives it, or `None` when the gateway's duty cycle drops it.
    pub fn send_downlink(&mut self, i: usize, now_ms: u64, len: usize) -> Option<u64> {
        let n = self.nodes[i];
        let dr = DataRate::eu868(self.cfg.rx2_dr).unwrap_or(DataRate { sf: 9, bw_khz: 125 });
        let airtime_us = dr.time_on_air_us(len, false);
        let airtime_ms = airtime_us.div_ceil(1000);
        let budget_ms = (HOUR_MS as f64 * self.cfg.gateway_duty_cycle.clamp(0.0, 1.0)) as u64;
        let g = &mut self.gateways[n.gateway as usize];
        let arrive_gw = now_ms + self.cfg.backhaul_ms;
        let start = arrive_gw.max(g.busy_until_ms);
        while let Some(&(t, a)) = g.sent.front() {
            if t + HOUR_MS <= start {
                g.sent.pop_front();
                g.sent_ms_in_window -= a;
            } else {
                break;
            }
        }
        self.report.downlinks += 1;
        if g.sent_ms_in_window + airtime_ms > budget_ms {
            self.report.downlinks_dropped_duty_cycle += 1;
            return None;
        }
        g.sent.push_back((start, airtime_ms));
        g.sent_ms_in_window += airtime_ms;
        g.busy_until_ms = start + airtime_ms;
        g.downlink_airtime_us += airtime_us;
        let duty = g.sent_ms_in_window as f64 / HOUR_MS as f64;
        if duty > self.report.busiest_gateway_hour_duty {
            self.report.busiest_gateway_hour_duty = duty;
        }
        if !n.in_reach {
            return None;
        }
        Some(start + airtime_ms)
    }

    /// The report, with each gateway's downlink airtime.
    pub fn finish(mut self) -> RadioReport {
        for (k, g) in self.gateways.iter().enumerate() {
            self.report.downlink_airtime_s_per_gateway[k] =
                (g.downlink_airtime_us as f64 / 1e3).round() / 1e3;
        }
        self.report.uplink_airtime_s = (self.report.uplink_airtime_s * 1e3).round() / 1e3;
        self.report.busiest_gateway_hour_duty =
            (self.report.busiest_gateway_hour_duty * 1e6).round() / 1e6;
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn town(lamps: usize) -> Town {
        Town::procedural(lamps, 1, (52.2, 0.12))
    }

    #[test]
    fn airtime_grows_with_the_spreading_factor() {
        let at = |sf| DataRate { sf, bw_khz: 125 }.time_on_air_us(36, true);
        assert!((50_000..80_000).contains(&at(7)), "{}", at(7));
        assert!(at(8) > at(7) && at(12) > 20 * at(7));
    }

    #[test]
    fn overlapping_frames_on_one_sf_and_channel_collide_unless_captured() {
        let t = town(200);
        let mut r = Radio::new(&RadioConfig::default(), &t);
        // Two nodes on the same gateway and SF, forced to equal power: both lost.
        let (a, b) = (0, 1);
        r.nodes[b] = NodeRadio {
            free_at_ms: 0,
            ..r.nodes[a]
        };
        let x = r.send_uplink(a, 1_000, 36, 0);
        let y = r.send_uplink(b, 1_010, 36, 0);
        assert!(r.uplink_lost(x.slot) && r.uplink_lost(y.slot));
        // Another channel: no collision.
        let z = r.send_uplink(b, 5_000, 36, 1);
        assert!(!r.uplink_lost(z.slot));
        // 6 dB stronger: the stronger is captured, the weaker lost.
        r.nodes[b].rssi_dbm = r.nodes[a].rssi_dbm + 7.0;
        r.nodes[b].free_at_ms = 0;
        r.nodes[a].free_at_ms = 0;
        let weak = r.send_uplink(a, 100_000, 36, 2);
        let strong = r.send_uplink(b, 100_020, 36, 2);
        assert!(r.uplink_lost(weak.slot) && !r.uplink_lost(strong.slot));
        // After the first frame ends, the channel is free again.
        r.nodes[a].free_at_ms = 0;
        let later = r.send_uplink(a, 200_000, 36, 2);
        assert!(!r.uplink_lost(later.slot));
    }

    #[test]
    fn the_node_duty_cycle_spaces_uplinks_by_99_airtimes() {
        let t = town(50);
        let mut r = Radio::new(&RadioConfig::default(), &t);
        let a = r.send_uplink(0, 0, 36, 0);
        let b = r.send_uplink(0, 10, 36, 1);
        assert!(b.arrives_ms >= a.arrives_ms + 99 * 50, "{a:?} {b:?}");
        assert_eq!(r.report.uplinks_delayed_by_duty_cycle, 1);
        // A third while the second still waits: dropped, not queued behind it.
        let c = r.send_uplink(0, 20, 36, 2);
        assert!(r.uplink_lost(c.slot) && !r.uplink_lost(b.slot));
        assert_eq!(r.report.uplinks_dropped_duty_cycle, 1);
    }

    #[test]
    fn a_gateway_drops_downlinks_beyond_its_hour_of_rx2() {
        let t = town(50);
        let cfg = RadioConfig {
            rx2_dr: 0,
            ..RadioConfig::default()
        };
        let mut r = Radio::new(&cfg, &t);
        // SF12 downlinks of 20 bytes: about 1.2 s each, 360 s of airtime an hour at 10 %.
        let mut sent = 0;
        for k in 0..1_000u64 {
            if r.send_downlink(0, k * 1_000, 20).is_some() {
                sent += 1;
            }
        }
        assert!((250..=330).contains(&sent), "{sent}");
        assert_eq!(r.report.downlinks_dropped_duty_cycle, 1_000 - sent);
        let report = r.finish();
        assert!(report.busiest_gateway_hour_duty <= 0.1 + 1e-9);
        let total: f64 = report.downlink_airtime_s_per_gateway.iter().sum();
        assert!((300.0..=360.0).contains(&total), "{total}");
    }
}
