//! What a policy's run over one region yields, and how regions' outcomes add up.

use std::collections::BTreeMap;

use super::faults::InvariantReport;
use super::radio::RadioReport;

/// A zone's figures over time, for the charts.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ZoneSeries {
    pub zone: u32,
    pub name: String,
    pub road_kind: String,
    pub design_class: String,
    pub lamps: usize,
    /// Hours since the start of the run, one point per sample.
    pub t_h: Vec<f64>,
    /// Expected road users per hour past a point of the zone.
    pub demand_per_h: Vec<f64>,
    /// Passages past the zone's lamps in the sample interval.
    pub passages: Vec<u64>,
    pub mean_level_pct: Vec<f64>,
    pub required_level_pct: Vec<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Outcome {
    pub energy_wh: f64,
    pub energy_by_hour_wh: Vec<f64>,
    pub passages: u64,
    pub judged: BTreeMap<&'static str, u64>,
    pub underlit: BTreeMap<&'static str, u64>,
    pub underlit_by_cause: BTreeMap<&'static str, u64>,
    pub radio: Option<RadioReport>,
    pub late_rise_passages: u64,
    pub late_rise_s: f64,
    pub level_changes: u64,
    pub uplinks_sent: u64,
    pub downlinks_sent: u64,
    pub packets_lost: u64,
    pub packets_retransmitted: u64,
    pub uplinks_accepted: u64,
    pub uplinks_rejected: u64,
    pub uplinks_unheard: u64,
    pub downlinks_applied: u64,
    pub events_processed: u64,
    pub busy: ZoneSeries,
    pub quiet: ZoneSeries,
    pub invariants: InvariantReport,
}

impl Outcome {
    /// Adds another region's outcome of the same policy to this one.
    pub fn absorb(&mut self, o: Outcome) {
        for (a, b) in self.energy_by_hour_wh.iter_mut().zip(&o.energy_by_hour_wh) {
            *a += b;
        }
        self.energy_wh = self.energy_by_hour_wh.iter().sum();
        for (mine, theirs) in [
            (&mut self.judged, o.judged),
            (&mut self.underlit, o.underlit),
            (&mut self.underlit_by_cause, o.underlit_by_cause),
        ] {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
        // The radio is modelled over one region only.
        self.radio = self.radio.take().or(o.radio);
        self.passages += o.passages;
        self.late_rise_passages += o.late_rise_passages;
        self.late_rise_s += o.late_rise_s;
        self.level_changes += o.level_changes;
        self.uplinks_sent += o.uplinks_sent;
        self.downlinks_sent += o.downlinks_sent;
        self.packets_lost += o.packets_lost;
        self.packets_retransmitted += o.packets_retransmitted;
        self.uplinks_accepted += o.uplinks_accepted;
        self.uplinks_rejected += o.uplinks_rejected;
        self.uplinks_unheard += o.uplinks_unheard;
        self.downlinks_applied += o.downlinks_applied;
        self.events_processed += o.events_processed;
        // A zone is charted by the region that has it.
        if self.busy.t_h.is_empty() {
            self.busy = o.busy;
        }
        if self.quiet.t_h.is_empty() {
            self.quiet = o.quiet;
        }
        let (a, b) = (&mut self.invariants, o.invariants);
        a.floor_checks += b.floor_checks;
        a.below_floor_lamp_minutes += b.below_floor_lamp_minutes;
        a.longest_below_floor_s = a.longest_below_floor_s.max(b.longest_below_floor_s);
        // Every region sees the same heals.
        a.heals_checked = a.heals_checked.max(b.heals_checked);
        a.slowest_convergence_s = a.slowest_convergence_s.max(b.slowest_convergence_s);
        if a.violation.is_none() {
            a.violation = b.violation;
        }
    }
}
