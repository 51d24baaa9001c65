//! What the server keeps per gateway: its duty-cycle budget, when its one radio is free
//! again, and the multicast frames waiting for it.

use std::collections::VecDeque;

use lamplighter_protocol::{DevAddr, UnixMs};

use super::config::Priority;
use crate::dutycycle::{DutyCycle, Refusal};

#[derive(Debug)]
pub(super) struct Gateway {
    pub(super) duty: DutyCycle,
    /// The end of its last scheduled transmission (one radio, one frame at a time).
    pub(super) busy_until: UnixMs,
    /// Multicast frames waiting for this gateway.
    pub(super) mcast: VecDeque<(Vec<u8>, DevAddr, u32, Priority, UnixMs)>,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            duty: DutyCycle::default(),
            busy_until: UnixMs(0),
            mcast: VecDeque::new(),
        }
    }
}

impl Gateway {
    pub(super) fn duty_fits(
        &mut self,
        now: UnixMs,
        freq_hz: u32,
        air_us: u64,
        priority: Priority,
    ) -> bool {
        self.duty
            .fits_share(now, freq_hz, air_us, priority.budget_share_permille())
    }
    pub(super) fn duty_retry_at(
        &mut self,
        now: UnixMs,
        freq_hz: u32,
        air_us: u64,
        priority: Priority,
    ) -> UnixMs {
        match self
            .duty
            .retry_at(now, freq_hz, air_us, priority.budget_share_permille())
        {
            Ok(t) => t,
            Err(Refusal::NoSubBand) => now.plus_ms(crate::dutycycle::WINDOW_MS),
            Err(Refusal::OverBudget { retry_at, .. }) => retry_at,
        }
    }
}
