//! Decisions and commands out: deciding a lamp with its zone's policy, noting when deciding
//! it again could change anything ([`ControllerCore::handle_tick`] passes over it until then),
//! and turning a decision into a command with its ramp and hold, queued for
//! [`ControllerCore::poll_command`] and sealed for the wire by [`ControllerCore::downlink`].

use lamplighter_protocol::lorawan::{self, DataFrame, FCtrl, FrameError, MType};
use lamplighter_protocol::payload::{Command, PayloadError, FPORT_COMMAND};
use lamplighter_protocol::topics;
use lamplighter_protocol::{LampId, UnixMs};

use super::policy::{self, Decision, LampSituation, Reason};
use super::{Commanded, ControllerCore, Event};

/// A command ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub lamp: LampId,
    /// What the node is told; [`ControllerCore::downlink`] seals it for the wire.
    pub command: Command,
    pub level_pct: u8,
    pub ramp_ms: u32,
    pub reason: Reason,
    pub fcnt_down: u32,
}

/// Why a command could not be sealed for the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("unknown lamp {0}")]
    UnknownLamp(LampId),
    #[error("command: {0}")]
    Payload(#[from] PayloadError),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
}

impl ControllerCore {
    pub(super) fn decide_zone(&mut self, now: UnixMs, z: usize) {
        for k in 0..self.zones[z].lamps.len() {
            let j = self.zones[z].lamps[k];
            self.decide_lamp(now, j);
        }
    }

    pub(super) fn decide_lamp(&mut self, now: UnixMs, i: usize) {
        let cfg = &self.config;
        let lamp = &self.lamps[i];
        let zone_policy = self.policy_of(lamp.zone);
        let situation = LampSituation {
            now,
            dark: lamp.dark.is_dark(lamp.node.lat, lamp.node.lon, now),
            bubble_until: self.hot[i].bubble_until,
            override_: lamp.override_,
            class: self.zones[lamp.zone].class_in_force(now, zone_policy),
        };
        let Decision { level_pct, reason } = policy::decide(zone_policy, &situation);
        // A presence command carries a hold (below) after which the node falls back to its
        // fail-safe profile; while the bubble lasts, send it again before that hold ends.
        let refresh_due = lamp.commanded.is_none_or(|c| {
            now.since(c.at) >= cfg.refresh_s as u64 * 1000
                || (reason == Reason::Presence
                    && c.reason == Reason::Presence
                    && now.since(c.at) >= zone_policy.bubble_hold_s as u64 * 1000)
        });
        let changed = lamp.commanded.is_none_or(|c| c.level_pct != level_pct);
        // Where the policy falls back on the night profile, its next step may change the level.
        let by_profile = situation.dark && !(zone_policy.adaptive && situation.class.is_some());
        if changed || refresh_due {
            self.command(now, i, level_pct, reason);
        }
        self.hot[i].recheck_at = self.recheck_at(now, i, by_profile);
    }

    /// The first instant at which deciding lamp `i` again may give another answer than now
    /// (or send again): dusk or dawn, a bubble or override ending, a refresh falling due, the
    /// zone's demand going stale, and the night profile's next step when it is in play.
    /// Early is harmless; late would miss a change.
    fn recheck_at(&self, now: UnixMs, i: usize, by_profile: bool) -> UnixMs {
        let lamp = &self.lamps[i];
        let zone_policy = self.policy_of(lamp.zone);
        let mut at = lamp.dark.spell_end(lamp.node.lat, lamp.node.lon, now);
        let mut upto = |t: UnixMs| {
            if t > now {
                at = at.min(t);
            }
        };
        if let Some(t) = self.hot[i].bubble_until {
            upto(t);
        }
        if let Some(o) = lamp.override_ {
            upto(o.until);
        }
        if let Some(c) = lamp.commanded {
            upto(c.at.plus_ms(self.config.refresh_s as u64 * 1000));
            if c.reason == Reason::Presence {
                upto(c.at.plus_ms(zone_policy.bubble_hold_s as u64 * 1000));
            }
        }
        if let Some(t) = self.zones[lamp.zone].demand_known_until(now, zone_policy) {
            upto(t);
        }
        if let Some(t) = by_profile
            .then(|| policy::next_profile_step(zone_policy, now))
            .flatten()
        {
            upto(t);
        }
        at
    }

    /// Sends lamp `i` the command for `level_pct`, with the ramp and hold that go with it.
    fn command(&mut self, now: UnixMs, i: usize, level_pct: u8, reason: Reason) {
        let lamp = &self.lamps[i];
        let zone_policy = self.policy_of(lamp.zone);
        let from = lamp
            .commanded
            .map(|c| c.level_pct)
            .or(lamp.last_report.map(|(_, r)| r.level_pct))
            .unwrap_or(0);
        // As the wire carries it, so what is recorded is what the node does.
        let ramp_ms = Command::wire_ramp_ms(policy::ramp_ms(zone_policy, from, level_pct));
        // A presence level carries its own hold, so a node drops back by itself should the
        // controller go away while the bubble is up.
        let hold_s = match reason {
            Reason::Presence => (zone_policy.bubble_hold_s + 60).min(u16::MAX as u32) as u16,
            _ => 0,
        };
        let command = Command::SetLevel {
            level_pct,
            ramp_ms,
            hold_s,
        };
        self.send(now, i, command, level_pct, ramp_ms, reason);
    }

    fn send(
        &mut self,
        now: UnixMs,
        i: usize,
        command: Command,
        level_pct: u8,
        ramp_ms: u32,
        reason: Reason,
    ) {
        let lamp = &mut self.lamps[i];
        let fcnt_down = lamp.node.next_fcnt_down;
        lamp.node.next_fcnt_down = fcnt_down.wrapping_add(1);
        lamp.commanded = Some(Commanded {
            level_pct,
            reason,
            at: now,
        });
        let id = lamp.node.lamp;
        self.outbox.push_back(Outgoing {
            lamp: id,
            command,
            level_pct,
            ramp_ms,
            reason,
            fcnt_down,
        });
        self.events.push_back(Event::CommandSent {
            lamp: id,
            at: now,
            level_pct,
            ramp_ms,
            reason,
            fcnt_down,
        });
        self.counters.commands += 1;
    }

    /// The topic and LoRaWAN frame that carry a command to its node (sealed in the node's
    /// session under the command's `fcnt_down`).
    pub fn downlink(&self, o: &Outgoing) -> Result<(String, Vec<u8>), SealError> {
        let node = self.node(o.lamp).ok_or(SealError::UnknownLamp(o.lamp))?;
        let frame = DataFrame {
            mtype: MType::UnconfirmedDataDown,
            dev_addr: node.dev_addr,
            fctrl: FCtrl::default(),
            fcnt: o.fcnt_down,
            fopts: Vec::new(),
            fport: Some(FPORT_COMMAND),
            frm_payload: o.command.encode()?,
        };
        let phy = lorawan::encode_data_frame(&frame, &node.keys)?;
        Ok((topics::downlink(&node.tenant, node.dev_eui), phy))
    }

    pub fn poll_command(&mut self) -> Option<Outgoing> {
        self.outbox.pop_front()
    }
}
