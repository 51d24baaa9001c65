//! Uplinks in: the checks an uplink passes (topic, DevAddr, FCnt, MIC, port, payload) or the
//! typed [`Rejection`] it gets, and what an accepted report changes: the node's counters and
//! meter, the zone's demand, the presence bubble at the lamp and its neighbours, and the
//! decisions those call for.

use lamplighter_protocol::lorawan::{self, FrameError, MType};
use lamplighter_protocol::payload::{NodeMode, PayloadError, StatusReport, FPORT_STATUS};
use lamplighter_protocol::topics::{self, Topic, TopicError};
use lamplighter_protocol::{DevAddr, DevEui, LampId, TenantId, UnixMs};

use super::policy;
use super::{ControllerCore, Event};

/// Why an uplink was refused. Each is counted under [`Rejection::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("topic: {0}")]
    Topic(#[from] TopicError),
    #[error("published on a downlink topic")]
    DownlinkTopic,
    #[error("frame: {0}")]
    Frame(FrameError),
    #[error("replayed frame: FCnt {got} after {last}")]
    Replay { last: u32, got: u32 },
    #[error("bad MIC for DevAddr {0}")]
    BadMic(DevAddr),
    #[error("unknown DevAddr {0}")]
    UnknownDevAddr(DevAddr),
    #[error("unknown lamp {0}")]
    UnknownLamp(LampId),
    #[error(
        "DevAddr {dev_addr} belongs to {owner}, not to the topic's {topic_tenant}/{topic_dev_eui}"
    )]
    TopicMismatch {
        dev_addr: DevAddr,
        owner: DevEui,
        topic_tenant: TenantId,
        topic_dev_eui: DevEui,
    },
    #[error("not an uplink data frame ({0:?})")]
    NotUplink(MType),
    #[error("FPort {0:?} is not the status port")]
    WrongPort(Option<u8>),
    #[error("payload: {0}")]
    Payload(#[from] PayloadError),
}

impl Rejection {
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Topic(_) | Rejection::DownlinkTopic => "topic",
            Rejection::Frame(_) => "malformed",
            Rejection::Replay { .. } => "replay",
            Rejection::BadMic(_) => "bad-mic",
            Rejection::UnknownDevAddr(_) => "unknown-devaddr",
            Rejection::UnknownLamp(_) => "unknown-lamp",
            Rejection::TopicMismatch { .. } => "topic-mismatch",
            Rejection::NotUplink(_) => "not-uplink",
            Rejection::WrongPort(_) => "wrong-port",
            Rejection::Payload(_) => "payload",
        }
    }
}

impl ControllerCore {
    /// An MQTT message arrived on `topic`. Accepted or rejected, never a panic.
    pub fn handle_uplink(
        &mut self,
        now: UnixMs,
        topic: &str,
        phy: &[u8],
    ) -> Result<LampId, Rejection> {
        let result = self.accept_uplink(now, topic, phy);
        self.count_outcome(now, &result);
        result
    }

    /// Counts an uplink accepted or rejected (by reason, with an event for the store).
    fn count_outcome(&mut self, now: UnixMs, result: &Result<LampId, Rejection>) {
        match result {
            Ok(_) => self.counters.uplinks += 1,
            Err(r) => {
                self.counters.rejected += 1;
                *self.rejected_by_kind.entry(r.kind()).or_default() += 1;
                self.events.push_back(Event::Rejected {
                    at: now,
                    kind: r.kind(),
                    detail: r.to_string(),
                });
            }
        }
    }

    fn accept_uplink(&mut self, now: UnixMs, topic: &str, phy: &[u8]) -> Result<LampId, Rejection> {
        let (topic_tenant, topic_dev_eui) = match topics::parse(topic)? {
            Topic::Uplink { tenant, dev_eui } => (tenant, dev_eui),
            Topic::Downlink { .. } | Topic::Ack { .. } | Topic::Multicast { .. } => {
                return Err(Rejection::DownlinkTopic)
            }
        };
        let header = lorawan::peek_header(phy).map_err(Rejection::Frame)?;
        if !header.mtype.is_uplink() || !header.mtype.is_data() {
            return Err(Rejection::NotUplink(header.mtype));
        }
        let &i = self
            .by_addr
            .get(&header.dev_addr)
            .ok_or(Rejection::UnknownDevAddr(header.dev_addr))?;
        let node = &self.lamps[i].node;
        if node.tenant != topic_tenant || node.dev_eui != topic_dev_eui {
            return Err(Rejection::TopicMismatch {
                dev_addr: header.dev_addr,
                owner: node.dev_eui,
                topic_tenant,
                topic_dev_eui,
            });
        }
        let fcnt = match lorawan::rebuild_fcnt(node.last_fcnt_up, header.fcnt16) {
            Ok(f) => f,
            Err(FrameError::Replay { last, got }) => return Err(Rejection::Replay { last, got }),
            Err(e) => return Err(Rejection::Frame(e)),
        };
        let frame = match lorawan::decode_data_frame(phy, &node.keys, fcnt) {
            Ok(f) => f,
            Err(FrameError::BadMic) => return Err(Rejection::BadMic(header.dev_addr)),
            Err(e) => return Err(Rejection::Frame(e)),
        };
        if frame.fport != Some(FPORT_STATUS) {
            return Err(Rejection::WrongPort(frame.fport));
        }
        let report = StatusReport::decode(&frame.frm_payload)?;
        Ok(self.accept_report(now, i, fcnt, &report))
    }

    /// A status report that arrived already opened: its frame's topic, MIC and payload
    /// checked. This is [`ControllerCore::handle_uplink`] past the codec, with the same
    /// counter rule (an `fcnt_up` that does not advance is a replay); the planning simulator
    /// drives the controller through it, since sealing and opening millions of frames a
    /// simulated day would tell it nothing the codec's own tests do not. The report is
    /// borrowed, so that a simulator passes it from where it waited rather than copying
    /// it just before the call (a copy the CPU stalled on, a tenth of a handled event).
    pub fn handle_report(
        &mut self,
        now: UnixMs,
        lamp: LampId,
        fcnt_up: u32,
        report: &StatusReport,
    ) -> Result<LampId, Rejection> {
        let result = match self.lamp_index(lamp) {
            None => Err(Rejection::UnknownLamp(lamp)),
            Some(i) => match self.lamps[i].node.last_fcnt_up {
                Some(last) if fcnt_up <= last => Err(Rejection::Replay { last, got: fcnt_up }),
                _ => Ok(self.accept_report(now, i, fcnt_up, report)),
            },
        };
        self.count_outcome(now, &result);
        result
    }

    /// Asks the CPU to fetch what [`ControllerCore::handle_report`] reads first of `lamp`'s
    /// state (a hint: no effect on state). A simulator driving thousands of lamps calls it
    /// a few events ahead of a report; otherwise every report waits on memory.
    pub fn prefetch_report(&self, lamp: LampId) {
        // The number as the index, as `lamp_index` tries first; a wrong guess only wastes
        // the hint.
        let i = lamp.0 as usize;
        if let Some(l) = self.lamps.get(i) {
            lamplighter_protocol::hint::prefetch_lines(l);
            // A presence report then reads its neighbours' list and their bubbles.
            lamplighter_protocol::hint::prefetch(self.hot.as_ptr().wrapping_add(i));
            self.neighbours.prefetch_of(i);
        }
    }

    /// The second half of [`ControllerCore::prefetch_report`], for once its lines have
    /// arrived (an event or so later): what `report` reaches through them, its zone's
    /// demand and, with presence, its neighbours' bubbles and what deciding them reads.
    pub fn prefetch_report_then(&self, lamp: LampId, report: &StatusReport) {
        use lamplighter_protocol::hint::{prefetch, prefetch_lines};
        let i = lamp.0 as usize;
        let Some(l) = self.lamps.get(i) else {
            return;
        };
        if let Some(z) = self.zones.get(l.zone) {
            prefetch_lines(z);
        }
        if report.presence.total() == 0 {
            return;
        }
        if let Some(ids) = self.neighbours.get(i) {
            for &j in ids {
                prefetch(self.hot.as_ptr().wrapping_add(j as usize));
                if let Some(n) = self.lamps.get(j as usize) {
                    prefetch(&n.node.lat);
                    prefetch(&n.dark);
                }
            }
        }
    }

    /// From here on the report counts: energy, presence, demand, and the decisions they call.
    fn accept_report(&mut self, now: UnixMs, i: usize, fcnt: u32, report: &StatusReport) -> LampId {
        let lamp = &mut self.lamps[i];
        lamp.node.last_fcnt_up = Some(fcnt);
        let energy_delta_dwh = lamp.node.last_energy_dwh.map_or(report.energy_dwh, |prev| {
            report.energy_dwh.wrapping_sub(prev)
        });
        lamp.node.last_energy_dwh = Some(report.energy_dwh);
        lamp.energy_wh += energy_delta_dwh as f64 / 10.0;
        lamp.presence_total += report.presence.total() as u64;
        lamp.last_report = Some((now, *report));
        let id = lamp.node.lamp;
        let class_changed = self.count_demand(now, i, report);
        self.events.push_back(Event::Reading {
            lamp: id,
            received: now,
            fcnt,
            report: *report,
            energy_delta_dwh,
        });

        if report.presence.total() > 0 {
            let zone = self.lamps[i].zone;
            let until = now.plus_ms(policy::bubble_hold_ms(&self.config.policy, report.presence));
            for k in 0..=self.neighbours.of(i).len() {
                let j = if k == 0 {
                    i
                } else {
                    self.neighbours.of(i)[k - 1] as usize
                };
                let h = &mut self.hot[j];
                // A lamp already in a bubble was decided in it, and nothing else it was
                // decided on has changed before its recheck time (unless its zone's class
                // just did): a longer bubble alone would decide it the same.
                let in_bubble = h.bubble_until.is_some_and(|t| now < t);
                h.bubble_until = Some(h.bubble_until.map_or(until, |t| t.max(until)));
                if !in_bubble
                    || h.recheck_at <= now
                    || (class_changed && self.lamps[j].zone == zone)
                {
                    self.decide_lamp(now, j);
                }
            }
        } else {
            self.reconcile(now, i, report);
        }
        if class_changed {
            self.decide_zone(now, self.lamps[i].zone);
        }
        id
    }

    /// Counts a report's presence into its zone's interval. Returns whether the class the
    /// zone's lamps are lit for changed (it rose, or the zone's demand became known).
    fn count_demand(&mut self, now: UnixMs, i: usize, report: &StatusReport) -> bool {
        let policy = &self.config.policy;
        let z = self.lamps[i].zone;
        let zone = &mut self.zones[z];
        if !zone.tracking {
            return false;
        }
        let was_known = zone.demand_known(now, policy);
        let mut changed = zone.advance(now, policy);
        let interval = zone.interval();
        let first = self.lamps[i].counted_interval != interval;
        self.lamps[i].counted_interval = interval;
        changed |= zone.count(now, report.presence, first, policy);
        changed || !was_known
    }

    /// A node that reports a target other than what we commanded, long enough after the
    /// command, missed it (lost, or the node restarted): send it again.
    fn reconcile(&mut self, now: UnixMs, i: usize, report: &StatusReport) {
        let Some(c) = self.lamps[i].commanded else {
            self.decide_lamp(now, i);
            return;
        };
        let stale = now.since(c.at) >= self.config.reconcile_after_s as u64 * 1000;
        let off_target =
            report.target_level_pct != c.level_pct || report.mode == NodeMode::FailSafe;
        if stale && off_target {
            self.lamps[i].commanded = None;
            self.decide_lamp(now, i);
        }
    }
}
