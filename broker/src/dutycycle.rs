//! Per-gateway duty-cycle accounting for the EU868 sub-bands.
//!
//! The rule implemented: in any sliding window of one hour, a gateway's time on air in a
//! sub-band stays within that sub-band's share (1 % of 3600 s = 36 s in g1, 10 % = 360 s in g3,
//! 0.1 % = 3.6 s in g2 and h1.3). A downlink that would exceed it is refused; the network
//! server then tries the device's other window or another gateway, queues it until the
//! budget frees ([`DutyCycle::available_at`]), or drops it, by priority.
//!
//! Sans-IO: every method takes `now`.

use std::collections::{BTreeMap, VecDeque};

use lamplighter_protocol::lorawan::radio::{DataRate, SubBand};
use lamplighter_protocol::UnixMs;
use serde::Serialize;

/// The accounting window.
pub const WINDOW_MS: u64 = 3_600_000;

/// One sub-band's transmissions in the last window.
#[derive(Debug, Clone, Default)]
struct Band {
    /// (start, airtime µs), oldest first.
    sent: VecDeque<(UnixMs, u64)>,
    used_us: u64,
    sent_total: u64,
    refused_total: u64,
}

impl Band {
    fn expire(&mut self, now: UnixMs) {
        while let Some(&(t, us)) = self.sent.front() {
            if now.since(t) >= WINDOW_MS {
                self.sent.pop_front();
                self.used_us -= us;
            } else {
                break;
            }
        }
    }
}

/// Budget of one gateway, every sub-band.
#[derive(Debug, Clone, Default)]
pub struct DutyCycle {
    bands: BTreeMap<SubBand, Band>,
}

/// Airtime budget per hour of a sub-band, µs.
pub fn budget_us(band: SubBand) -> u64 {
    WINDOW_MS * 1000 * u64::from(band.duty_permille()) / 1000
}

/// How many downlinks of `len` bytes at `dr` fit in one hour of `band`'s budget.
pub fn downlinks_per_hour(band: SubBand, dr: DataRate, len: usize) -> u64 {
    budget_us(band) / dr.time_on_air_us(len, false).max(1)
}

/// Why a transmission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The frequency is in no EU868 sub-band.
    NoSubBand,
    /// Over budget; it fits again from this instant.
    OverBudget { band: SubBand, retry_at: UnixMs },
}

/// What the report shows per sub-band.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BandReport {
    pub band: &'static str,
    pub duty_pct: f64,
    pub used_ms_last_hour: u64,
    pub budget_ms_per_hour: u64,
    pub sent: u64,
    pub refused: u64,
}

impl DutyCycle {
    /// Records the transmission if it fits the budget, else says why not.
    pub fn try_send(
        &mut self,
        now: UnixMs,
        freq_hz: u32,
        airtime_us: u64,
    ) -> Result<SubBand, Refusal> {
        let band_id = SubBand::of_hz(freq_hz).ok_or(Refusal::NoSubBand)?;
        let budget = budget_us(band_id);
        let band = self.bands.entry(band_id).or_default();
        band.expire(now);
        if band.used_us + airtime_us <= budget {
            band.sent.push_back((now, airtime_us));
            band.used_us += airtime_us;
            band.sent_total += 1;
            return Ok(band_id);
        }
        band.refused_total += 1;
        // The earliest instant enough old transmissions have left the window.
        let mut freed = budget.saturating_sub(band.used_us);
        let mut retry_at = now.plus_ms(WINDOW_MS);
        for &(t, us) in &band.sent {
            freed += us;
            if freed >= airtime_us {
                retry_at = t.plus_ms(WINDOW_MS);
                break;
            }
        }
        Err(Refusal::OverBudget {
            band: band_id,
            retry_at,
        })
    }

    /// Whether `airtime_us` fits within `share_permille` of the sub-band's budget now.
    /// A refusal is counted in the report.
    pub fn fits_share(
        &mut self,
        now: UnixMs,
        freq_hz: u32,
        airtime_us: u64,
        share_permille: u64,
    ) -> bool {
        let Some(band_id) = SubBand::of_hz(freq_hz) else {
            return false;
        };
        let limit = budget_us(band_id) * share_permille.min(1000) / 1000;
        let band = self.bands.entry(band_id).or_default();
        band.expire(now);
        let ok = band.used_us + airtime_us <= limit;
        if !ok {
            band.refused_total += 1;
        }
        ok
    }

    /// Records a transmission (after [`Self::fits_share`] said yes).
    pub fn record(&mut self, now: UnixMs, freq_hz: u32, airtime_us: u64) {
        let Some(band_id) = SubBand::of_hz(freq_hz) else {
            return;
        };
        let band = self.bands.entry(band_id).or_default();
        band.expire(now);
        band.sent.push_back((now, airtime_us));
        band.used_us += airtime_us;
        band.sent_total += 1;
    }

    /// The earliest instant `airtime_us` fits within `share_permille` of the budget.
    pub fn retry_at(
        &mut self,
        now: UnixMs,
        freq_hz: u32,
        airtime_us: u64,
        share_permille: u64,
    ) -> Result<UnixMs, Refusal> {
        let band_id = SubBand::of_hz(freq_hz).ok_or(Refusal::NoSubBand)?;
        let limit = budget_us(band_id) * share_permille.min(1000) / 1000;
        let band = self.bands.entry(band_id).or_default();
        band.expire(now);
        if band.used_us + airtime_us <= limit {
            return Ok(now);
        }
        let mut used = band.used_us;
        for &(t, us) in &band.sent {
            used -= us;
            if used + airtime_us <= limit {
                return Ok(t.plus_ms(WINDOW_MS));
            }
        }
        // Longer than the whole share: never fits.
        Err(Refusal::OverBudget {
            band: band_id,
            retry_at: now.plus_ms(WINDOW_MS),
        })
    }

    /// Whether `airtime_us` would fit now, without recording anything.
    pub fn fits(&mut self, now: UnixMs, freq_hz: u32, airtime_us: u64) -> bool {
        let Some(band_id) = SubBand::of_hz(freq_hz) else {
            return false;
        };
        let band = self.bands.entry(band_id).or_default();
        band.expire(now);
        band.used_us + airtime_us <= budget_us(band_id)
    }

    pub fn report(&mut self, now: UnixMs) -> Vec<BandReport> {
        self.bands
            .iter_mut()
            .map(|(id, b)| {
                b.expire(now);
                BandReport {
                    band: id.name(),
                    duty_pct: f64::from(id.duty_permille()) / 10.0,
                    used_ms_last_hour: b.used_us / 1000,
                    budget_ms_per_hour: budget_us(*id) / 1000,
                    sent: b.sent_total,
                    refused: b.refused_total,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lamplighter_protocol::lorawan::radio::RX2_FREQ_HZ;

    #[test]
    fn refuses_beyond_the_budget_and_frees_after_an_hour() {
        let mut d = DutyCycle::default();
        let dr = DataRate::eu868(0).unwrap();
        let air = dr.time_on_air_us(20, false);
        let per_hour = downlinks_per_hour(SubBand::G3, dr, 20);
        let t0 = UnixMs(1_000_000);
        for i in 0..per_hour {
            assert!(d.try_send(t0.plus_ms(i), RX2_FREQ_HZ, air).is_ok(), "{i}");
        }
        let Err(Refusal::OverBudget { band, retry_at }) =
            d.try_send(t0.plus_ms(per_hour), RX2_FREQ_HZ, air)
        else {
            panic!("should be over budget")
        };
        assert_eq!(band, SubBand::G3);
        assert_eq!(retry_at, t0.plus_ms(WINDOW_MS));
        assert!(d.try_send(retry_at, RX2_FREQ_HZ, air).is_ok());
        // g1 is a separate budget.
        assert!(d.try_send(retry_at, 868_100_000, air).is_ok());
        assert_eq!(d.try_send(t0, 915_000_000, air), Err(Refusal::NoSubBand));
        let r = d.report(retry_at);
        assert_eq!(r.len(), 2);
        assert_eq!(r.iter().map(|b| b.refused).sum::<u64>(), 1);
    }
}
