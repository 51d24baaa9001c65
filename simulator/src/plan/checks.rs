//! The invariants a run checks as it goes: every live lamp at or above its floor while dark
//! (within a grace), every live lamp converged on the controller's latest command soon after
//! faults heal, and every passage judged against the level its class required.

use lamplighter_protocol::payload::NodeMode;
use lamplighter_protocol::UnixMs;

use super::engine::{Passage, Sim};
use super::road_users::user_index;

impl Sim<'_, '_> {
    pub(super) fn check_floor(&mut self, i: usize, now: u64) {
        if !self.nodes[i].alive || !self.sh.judged(now) {
            self.nodes[i].below_since = None;
            return;
        }
        let g = self.lamp(i);
        let nn = self.sh.node_now(g, now);
        let minute = (self.sh.time_zone.seconds_of_day(UnixMs(now)) / 60) as usize;
        let floor = self.floor_by_minute[minute.min(1439)] as f32;
        let n = &mut self.nodes[i];
        let level = n.core.level_pct(nn);
        let inv = &mut self.out.invariants;
        inv.floor_checks += 1;
        if level + 0.5 >= floor {
            n.below_since = None;
            return;
        }
        inv.below_floor_lamp_minutes += 1;
        let since = *n.below_since.get_or_insert(now);
        let for_s = (now - since) / 1000;
        inv.longest_below_floor_s = inv.longest_below_floor_s.max(for_s);
        // A node whose clock is off sees dusk that much late.
        let grace_s = self.sh.faults.floor_grace_s + self.sh.skew_ms[g].unsigned_abs() / 1000;
        if for_s > grace_s && inv.violation.is_none() {
            inv.violation = Some(format!(
                "lamp {g} stayed below its floor ({floor:.0} %) at {level:.1} % for {for_s} s \
                 while dark, at {} s into the run (allowed: {} s)",
                (now - self.sh.start) / 1000,
                grace_s
            ));
        }
    }

    pub(super) fn converge_check(&mut self) {
        let Some(heal) = self.pending_heal.take() else {
            return;
        };
        let stragglers: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive && !self.nodes[i].converged)
            .collect();
        if let (Some(&i), None) = (stragglers.first(), &self.out.invariants.violation) {
            self.out.invariants.violation = Some(format!(
                "{} live lamps had not applied the controller's latest command {} s after \
                 the faults healed at {} s into the run (e.g. lamp {}: node target {:.0} %, \
                 commanded {:?})",
                stragglers.len(),
                self.sh.faults.converge_within_s,
                (heal - self.sh.start) / 1000,
                self.lamp(i),
                self.nodes[i].core.target_pct(),
                self.last_cmd[i],
            ));
        }
    }

    /// Judges lamp `i`'s passages up to `upto` (inclusive) against its state now, which has
    /// been its state since its last change: call before the lamp's state changes.
    pub(super) fn judge_passages(&mut self, i: usize, upto: u64) {
        // Most calls find passages waiting but none due yet (the one a presence just
        // added, say): no need to go through them.
        if upto < self.nodes[i].first_passage_ms {
            return;
        }
        let mut pending = std::mem::take(&mut self.nodes[i].passages);
        let mut first_left = u64::MAX;
        pending.retain(|p| {
            let due = p.t <= upto;
            if due {
                self.judge(i, p);
            } else {
                first_left = first_left.min(p.t);
            }
            !due
        });
        let n = &mut self.nodes[i];
        n.passages = pending;
        n.first_passage_ms = first_left;
    }

    fn judge(&mut self, i: usize, p: &Passage) {
        let now = p.t;
        let required = p.required_pct;
        let who = user_index(p.who);
        self.judged_by_user[who] += 1;
        let nn = self.sh.node_now(self.lamp(i), now);
        let n = &self.nodes[i];
        let (level, target) = if n.alive {
            (n.core.level_pct(nn), n.core.target_pct())
        } else {
            (0.0, 0.0)
        };
        if level + 0.5 < required {
            self.underlit_by_user[who] += 1;
            // Why, so that a policy's exposure can be traced to its cause.
            let cause = if !n.alive {
                0
            } else if n.core.mode(nn) == NodeMode::FailSafe {
                1
            } else if target + 0.5 >= required {
                2
            } else {
                3
            };
            self.underlit_by_cause[cause] += 1;
        }
        if level + 0.01 < target {
            let later = n.core.level_pct(nn.plus_ms(100));
            let slope_per_s = (later - level) * 10.0;
            if slope_per_s > 0.0 {
                self.out.late_rise_passages += 1;
                self.out.late_rise_s += ((target - level) / slope_per_s) as f64;
            }
        }
    }
}
