//! Presence bubbles: how long a bubble holds after a detection, by the kind of road user
//! detected (the slowest of them must pass the next lamp before it ends).

use lamplighter_protocol::payload::Presence;

use super::PolicyConfig;

/// `adaptive`'s bubble holds (pedestrians, cyclists, vehicles), seconds: at least the time
/// the slowest of each (0.8 times 1.4, 5 and 12 m/s) takes from its detection, the sensor's
/// 20 m before a lamp, to the next lamp up to [`HOLD_COVERS_GAP_M`] further on (street lights
/// stand 25-40 m apart), so that a road user whose detection at the next lamp is missed still
/// finds it lit by the bubble of the lamp before.
pub const ADAPTIVE_HOLD_BY_USER_S: [u32; 3] = [60, 25, 12];

/// The lamp spacing [`ADAPTIVE_HOLD_BY_USER_S`] covers.
pub const HOLD_COVERS_GAP_M: f64 = 45.0;

/// How long a bubble started by a report with these presence counts holds: the longest hold
/// of the kinds of road user it counts (a report with no counts: `bubble_hold_s`).
pub fn bubble_hold_ms(cfg: &PolicyConfig, presence: Presence) -> u64 {
    let Some(by_user) = cfg.bubble_hold_by_user_s else {
        return cfg.bubble_hold_s as u64 * 1000;
    };
    let counts = [presence.pedestrians, presence.cyclists, presence.vehicles];
    // A plain loop: every presence report comes here, and the zip of two arrays built
    // on the stack cost a stalled load each time (a store read back misaligned).
    let mut hold_s: Option<u32> = None;
    for (k, &n) in counts.iter().enumerate() {
        if n > 0 {
            let h = by_user[k];
            hold_s = Some(hold_s.map_or(h, |m| m.max(h)));
        }
    }
    hold_s.unwrap_or(cfg.bubble_hold_s).min(cfg.bubble_hold_s) as u64 * 1000
}
