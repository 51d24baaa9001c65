//! Fault scenarios and the invariants every run checks.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One fault. Times are seconds from the start of the run; `until_s: None` lasts to the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// A share of the nodes (chosen by the seed) dies: no reports, no commands applied,
    /// lamp dark. A node that comes back restarts with its persisted FCnt and meter.
    NodesDown {
        share: f64,
        from_s: u64,
        until_s: Option<u64>,
    },
    /// The controller is gone; it restarts from its persisted session counters (a new core,
    /// so bubbles and command history are lost, as in a real restart).
    ControllerDown { from_s: u64, until_s: u64 },
    /// Packets on the IP link are lost for good (both directions) with this probability.
    PacketLoss {
        loss_pct: f64,
        from_s: u64,
        until_s: u64,
    },
    /// Packets take this much longer.
    PacketDelay {
        extra_ms: u64,
        from_s: u64,
        until_s: u64,
    },
    /// A share of node clocks runs off by up to `max_skew_s` either way for the whole run
    /// (schedules, holds and silence timeouts then run on the node's wrong clock).
    ClockSkew { share: f64, max_skew_s: u64 },
}

impl Fault {
    /// When the fault heals, if it does (convergence is checked from then).
    pub fn heals_at_s(&self) -> Option<u64> {
        match self {
            Fault::NodesDown { until_s, .. } => *until_s,
            Fault::ControllerDown { until_s, .. }
            | Fault::PacketLoss { until_s, .. }
            | Fault::PacketDelay { until_s, .. } => Some(*until_s),
            Fault::ClockSkew { .. } => None,
        }
    }
}

/// A set of faults and the limits the invariants allow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultScenario {
    pub faults: Vec<Fault>,
    /// How long a lamp may stay below its floor while dark (see the crate docs): a node that
    /// missed its lighting-up command waits for the controller's refresh (5 min) or, with
    /// the controller gone, for its silence timeout (15 min).
    pub floor_grace_s: u64,
    /// After a fault heals, every live node must have applied the controller's latest
    /// command within this long.
    pub converge_within_s: u64,
}

impl Default for FaultScenario {
    fn default() -> Self {
        FaultScenario::none()
    }
}

impl FaultScenario {
    pub fn none() -> Self {
        FaultScenario {
            faults: Vec::new(),
            floor_grace_s: 900 + 120,
            converge_within_s: 600,
        }
    }

    /// A scenario drawn from `seed` for a run of `days`: a controller outage, some nodes
    /// dying (half of them for good), a lossy spell, a slow spell and skewed clocks, each at
    /// a random time (often at night, when it matters).
    pub fn random(seed: u64, days: u32) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0FA0_17FA_u64);
        let span = days.max(1) as u64 * 86_400;
        let window = |rng: &mut ChaCha8Rng, max_len: u64| {
            let from = rng.gen_range(0..span.saturating_sub(max_len + 1200).max(1));
            let len = rng.gen_range(300..=max_len);
            (from, from + len)
        };
        let (c0, c1) = window(&mut rng, 3 * 3600);
        let (n0, n1) = window(&mut rng, 2 * 3600);
        let (l0, l1) = window(&mut rng, 3600);
        let (d0, d1) = window(&mut rng, 3600);
        let forever = rng.gen_bool(0.5);
        FaultScenario {
            faults: vec![
                Fault::ControllerDown {
                    from_s: c0,
                    until_s: c1,
                },
                Fault::NodesDown {
                    share: rng.gen_range(0.01..0.1),
                    from_s: n0,
                    until_s: (!forever).then_some(n1),
                },
                Fault::PacketLoss {
                    loss_pct: rng.gen_range(5.0..50.0),
                    from_s: l0,
                    until_s: l1,
                },
                Fault::PacketDelay {
                    extra_ms: rng.gen_range(500..10_000),
                    from_s: d0,
                    until_s: d1,
                },
                Fault::ClockSkew {
                    share: rng.gen_range(0.05..0.3),
                    max_skew_s: rng.gen_range(1..600),
                },
            ],
            ..FaultScenario::none()
        }
    }
}

/// What the invariant checks found in one policy's run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InvariantReport {
    /// Lamp-minutes checked against the floor while dark.
    pub floor_checks: u64,
    /// Lamp-minutes found below the floor (allowed while shorter than the grace).
    pub below_floor_lamp_minutes: u64,
    /// The longest a lamp stayed below its floor while dark (s).
    pub longest_below_floor_s: u64,
    /// Heals after which convergence was checked.
    pub heals_checked: u32,
    /// The slowest convergence after a heal (s).
    pub slowest_convergence_s: u64,
    /// The first violation, if any.
    pub violation: Option<String>,
}
