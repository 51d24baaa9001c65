//! The lighting policy: a lamp's situation in, a level and the reason for it out.
//!
//! One function, [`decide`], serves every policy; a [`PolicyConfig`] says which rules apply.
//! In order, the first that applies wins:
//!
//! 1. **Override**: an operator's level until it expires (even by day).
//! 2. **Daylight**: lamps off.
//! 3. **Presence** (when `reactive`): a road user detected at this lamp or a neighbour raises
//!    the lamp to the bubble level at once, held for `bubble_hold_s`, then released. Never
//!    below the class in force or the minimum.
//! 4. **Class** (when `adaptive`): the level at which the lamp, designed for its zone's design
//!    class at 100 %, meets the class the zone's demand calls for now ([`ClassInForce`], chosen
//!    by [`super::classes`] from measured demand and the forecast), reason `schedule` (the class
//!    for this period) or `forecast` (raised ahead of demand the forecast's upper quantile
//!    expects within the lead time). With presence sensing (`reactive`) that level is what
//!    road users near the lamp get (the bubble, reason `presence`: the class their demand
//!    calls for, not the design class), and a lamp with nobody near waits at
//!    `min_level_pct`; a bubble lasts as long as the slowest kind of road user detected needs
//!    to pass the next lamp ([`bubble_hold_ms`]). Without presence sensing every lamp holds
//!    the class's level. When the zone's demand is unknown (no report from its
//!    lamps for `demand_stale_s`), the fail-safe floor: the night profile, which for
//!    `adaptive` is the part-night profile the nodes themselves fall back to, reason
//!    `fail-safe`.
//! 5. **Schedule** (otherwise): the time-of-night profile.
//!
//! While dark nothing but an override goes below `min_level_pct`. Ramps are bounded rates:
//! a full 0-100 % rise takes `ramp_up_ms`, a full fall `ramp_down_ms`, and smaller changes
//! proportionally less ([`ramp_ms`]), so light rises fast and falls slowly and a road user never
//! walks into a lamp that is still dimming down.
//!
//! # Named policies
//!
//! [`POLICY_NAMES`], selectable by `name` in `[controller.policy]` (other keys there override
//! the named policy's values) and by the simulator's planning mode:
//!
//! | name | while dark |
//! |---|---|
//! | `profile-reactive` (default) | a dimmed night profile (70/50/30 %) with presence bubbles |
//! | `full` | 100 % dusk to dawn |
//! | `part-night` | 100 % to 22:00, 75 % to 00:00, 50 % to 05:30, 100 % to dawn |
//! | `reactive` | the minimum level, presence bubbles |
//! | `adaptive` | road users get the class their demand calls for (CEN/TR 13201-1, UNI 11248), raised ahead of forecast demand; empty streets wait at the minimum; bubbles held by road-user kind; part-night when demand is unknown |
//!
//! `profile-reactive` stays the default so that a deployment without zone parameters
//! (`[[controller.zones]]`: design class and capacity) keeps its behaviour; `adaptive` needs
//! them to be right.

//!
//! # Files
//!
//! - [`config`]: [`PolicyConfig`], the named policies, `[controller.policy]` as written and
//!   its validation.
//! - [`decision`]: [`decide`], the rules above in order, and the ramp ([`ramp_ms`]).
//! - [`schedule`]: the time-of-night profile: its level at a minute, its next step.
//! - [`presence`]: how long a presence bubble holds, by kind of road user.

mod config;
mod decision;
mod presence;
mod schedule;

pub use config::{PolicyConfig, PolicyError, POLICY_NAMES};
pub use decision::{decide, ramp_ms, ClassInForce, Decision, LampSituation, Override, Reason};
pub use presence::{bubble_hold_ms, ADAPTIVE_HOLD_BY_USER_S, HOLD_COVERS_GAP_M};
pub use schedule::next_profile_step;

#[cfg(test)]
mod tests;
