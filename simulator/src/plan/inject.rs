//! How each fault of a scenario ([`super::faults::Fault`]) acts on a run when it starts and
//! when it heals, and the convergence check a heal schedules.

use lamplighter_controller::ControllerCore;
use lamplighter_edge::core::NodeCore;

use super::engine::{Ev, Sim};
use super::faults::Fault;

impl Sim<'_, '_> {
    pub(super) fn fault_on(&mut self, now: u64, k: usize) {
        let f = self.sh.faults.faults[k].clone();
        if f.heals_at_s().is_some() {
            self.active += 1;
            self.pending_heal = None;
        }
        match f {
            Fault::NodesDown { .. } => {
                let region = self.region;
                for j in self.sh.fault_nodes[k]
                    .iter()
                    .filter_map(|&g| region.local_of(g))
                {
                    self.account(j, now);
                    let n = &mut self.nodes[j];
                    n.alive = false;
                    n.next_wake = u64::MAX;
                    n.below_since = None;
                }
            }
            Fault::ControllerDown { .. } => {
                if let Some(c) = self.ctrl.take() {
                    // What a real controller persists: the session counters.
                    for (p, (_, up, down, energy)) in
                        self.provisioned.iter_mut().zip(c.session_counters())
                    {
                        p.last_fcnt_up = up;
                        p.next_fcnt_down = down;
                        p.last_energy_dwh = energy;
                    }
                }
            }
            Fault::PacketLoss { loss_pct, .. } => self.fault_loss_pct += loss_pct,
            Fault::PacketDelay { extra_ms, .. } => self.fault_delay_ms += extra_ms,
            Fault::ClockSkew { .. } => {}
        }
    }

    pub(super) fn fault_off(&mut self, now: u64, k: usize) {
        match self.sh.faults.faults[k].clone() {
            Fault::NodesDown { .. } => {
                let region = self.region;
                for j in self.sh.fault_nodes[k]
                    .iter()
                    .filter_map(|&g| region.local_of(g))
                {
                    // Passages while it was down met a dark lamp.
                    self.judge_passages(j, now);
                    let g = self.lamp(j);
                    let nn = self.sh.node_now(g, now);
                    let old = &self.nodes[j].core;
                    let (fcnt, energy) = (old.fcnt_up(), old.energy_wh());
                    let core = NodeCore::new(self.sh.node_config(g), nn, fcnt, energy);
                    let n = &mut self.nodes[j];
                    n.core = core;
                    n.alive = true;
                    n.last_ms = now;
                    n.last_power_w = 0.0;
                    n.ramp_end_ms = now;
                    n.settled_power_w = self.sh.power[g].input_power_w(n.core.target_pct());
                    n.next_wake = now;
                    self.push(now, Ev::Wake(j as u32));
                }
            }
            Fault::ControllerDown { .. } => {
                self.ctrl = ControllerCore::new(
                    self.sh.controller_config(&self.policy, self.region),
                    self.provisioned.clone(),
                )
                .ok();
                self.last_cmd.iter_mut().for_each(|c| *c = None);
            }
            Fault::PacketLoss { loss_pct, .. } => {
                self.fault_loss_pct = (self.fault_loss_pct - loss_pct).max(0.0)
            }
            Fault::PacketDelay { extra_ms, .. } => {
                self.fault_delay_ms = self.fault_delay_ms.saturating_sub(extra_ms)
            }
            Fault::ClockSkew { .. } => {}
        }
        self.active = self.active.saturating_sub(1);
        if self.active == 0 {
            self.pending_heal = Some(now);
            for n in &mut self.nodes {
                n.converged = !n.alive;
            }
            self.out.invariants.heals_checked += 1;
            self.heals += 1;
            self.push(
                now + self.sh.faults.converge_within_s * 1000,
                Ev::ConvergeCheck(self.heals),
            );
        }
    }
}
