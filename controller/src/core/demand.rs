//! Demand per zone: presence counts into fixed intervals, one forecaster per road-user mode,
//! and the class the demand calls for.
//!
//! Every status report carries the pedestrians, cyclists and vehicles its node detected since
//! its previous report. A road user passes every lamp of a street, so the zone's demand is the
//! flow past one point: the interval's detections divided by the number of the zone's lamps
//! that reported in it, per hour. When an interval ends (the first `handle_*` call after its
//! end) each mode's flow feeds that mode's [`Forecaster`] (local wall-clock time in the zone's
//! time zone, so its daily profile moves with the clocks in summer), and the zone's
//! [`ClassSelector`] hears the classes down that the measured flow and the forecast's upper quantile over the lead time allow. The forecast of
//! the total is the sum of the modes' forecasts; summing 90th percentiles over-states the total's
//! 90th percentile, which errs on the side of light.
//!
//! The forecasters learn for days before their profiles mean much, so their state outlives a
//! restart: [`ControllerCore::forecaster_states`] is what the service saves (with the
//! store, `store::forecasts`), [`ControllerCore::restore_forecasters`] what a new core starts
//! from. Each zone shows how old what its forecasters learnt is (`forecaster_age_s`).

use lamplighter_forecast::{Forecaster, ForecasterConfig};
use lamplighter_protocol::payload::Presence;
use lamplighter_protocol::{LightingClass, TenantId, UnixMs, ZoneId};
use serde::{Deserialize, Serialize};

use super::classes::{self, ClassSelector};
use super::policy::{ClassInForce, PolicyConfig, Reason};
use super::ControllerCore;

/// A zone's road: the class its lamps are designed for at 100 % and the road users per hour
/// it carries at capacity (the denominator of the traffic weighting).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneRoad {
    pub design_class: LightingClass,
    pub capacity_per_h: f64,
}

impl Default for ZoneRoad {
    /// A residential street: P4, 600 road users per hour.
    fn default() -> Self {
        ZoneRoad {
            design_class: LightingClass::P(4),
            capacity_per_h: 600.0,
        }
    }
}

/// One zone's road in the controller's configuration (`[[controller.zones]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneParams {
    /// Only this tenant's zone of that number; every tenant's when absent.
    #[serde(default)]
    pub tenant: Option<TenantId>,
    pub zone: ZoneId,
    pub design_class: LightingClass,
    pub capacity_per_h: f64,
}

impl ZoneParams {
    pub fn road(&self) -> ZoneRoad {
        ZoneRoad {
            design_class: self.design_class,
            capacity_per_h: self.capacity_per_h,
        }
    }
}

/// Shortest span the flow within an interval is measured over before it can raise the class.
pub const RISE_WINDOW_S: f64 = 180.0;

/// Road-user modes, in the order of [`Presence`]'s fields.
pub const MODES: [&str; 3] = ["pedestrians", "cyclists", "vehicles"];

/// What the dashboard shows of a zone's demand.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ZoneDemandView {
    pub design_class: Option<LightingClass>,
    /// The class in force (the one the demand calls for, after the UNI 11248 steps).
    pub class: Option<LightingClass>,
    /// Why that class: `schedule` (demand for the period), `forecast` (raised ahead of
    /// demand), `fail-safe` (no demand data recently).
    pub class_reason: Option<Reason>,
    pub capacity_per_h: f64,
    /// Flow past a point in the last complete interval, all modes.
    pub demand_per_h: Option<f64>,
    /// The same per mode: pedestrians, cyclists, vehicles.
    pub demand_by_mode_per_h: Option<[f64; 3]>,
    /// The forecast's horizon: the end of the lead time.
    pub forecast_horizon_s: u32,
    pub forecast_per_h: Option<f64>,
    pub forecast_q10_per_h: Option<f64>,
    pub forecast_q90_per_h: Option<f64>,
    /// Highest upper quantile within the lead time: what the class rule compares.
    pub forecast_q90_peak_per_h: Option<f64>,
    /// Intervals the zone's forecasters have learnt from (per mode, the most), also before
    /// the last restart.
    pub forecaster_samples: u64,
    /// The end of the last interval they learnt from, ms since 1970.
    pub forecaster_learned_until_ms: Option<u64>,
    /// How long ago that was: a restart that kept the state shows the downtime here, one that
    /// lost it shows no age and no samples.
    pub forecaster_age_s: Option<u64>,
}

/// One zone's forecasters as saved across a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneForecasterState {
    pub tenant: TenantId,
    pub zone: ZoneId,
    /// The end of the last interval they learnt from.
    pub learned_until: Option<UnixMs>,
    /// Pedestrians, cyclists, vehicles.
    pub forecasters: Box<[Forecaster; 3]>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct TotalForecast {
    point: f64,
    q10: f64,
    q90: f64,
    q90_peak: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct ZoneState {
    pub road: ZoneRoad,
    /// Indices of this zone's lamps in the core.
    pub lamps: Vec<usize>,
    /// The interval being counted (ms since 1970 / interval length).
    interval: Option<u64>,
    counts: [u64; 3],
    reporters: u32,
    prev_reporters: u32,
    last_report: Option<UnixMs>,
    last_rates: Option<[f64; 3]>,
    /// Boxed: they are read once an interval, while the rest is read on every report, and
    /// inline they made a zone 2.5 kB, a cache miss or two for each report.
    forecasters: Box<[Forecaster; 3]>,
    /// Whether the zone tracks its demand (see `ControllerConfig::demand_every_zone`): if
    /// not, the core neither counts into it nor advances it, so its intervals never end,
    /// its forecasters stay idle, and it has no demand, class or forecast.
    pub tracking: bool,
    forecast: Option<TotalForecast>,
    selector: ClassSelector,
    /// The end of the last interval the forecasters learnt from.
    learned_until: Option<UnixMs>,
}

impl ZoneState {
    pub fn new(road: ZoneRoad, policy: &PolicyConfig, tracking: bool) -> ZoneState {
        let model = Forecaster::new(ForecasterConfig::for_step(policy.interval_s));
        ZoneState {
            road,
            lamps: Vec::new(),
            interval: None,
            counts: [0; 3],
            reporters: 0,
            prev_reporters: 0,
            last_report: None,
            last_rates: None,
            forecasters: Box::new([model.clone(), model.clone(), model]),
            tracking,
            forecast: None,
            selector: ClassSelector::default(),
            learned_until: None,
        }
    }

    fn interval_ms(policy: &PolicyConfig) -> u64 {
        policy.interval_s.max(1) as u64 * 1000
    }

    /// The index of the demand interval holding `now`.
    pub fn interval_of(now: UnixMs, policy: &PolicyConfig) -> u64 {
        now.0 / Self::interval_ms(policy)
    }

    /// The interval holding `now`; ends any interval before it. Returns whether the class in
    /// force changed.
    pub fn advance(&mut self, now: UnixMs, policy: &PolicyConfig) -> bool {
        let current = Self::interval_of(now, policy);
        let Some(open) = self.interval else {
            self.interval = Some(current);
            return false;
        };
        if current <= open {
            return false;
        }
        let mut changed = self.end_interval(open, policy);
        if current > open + 1 {
            // Whole intervals without a call: no data, nothing confirmed.
            changed |= self
                .selector
                .end_interval(None, None, policy.confirm_intervals);
            self.prev_reporters = 0;
        }
        self.interval = Some(current);
        changed
    }

    fn end_interval(&mut self, index: u64, policy: &PolicyConfig) -> bool {
        let per_h = 3600.0 / policy.interval_s.max(1) as f64;
        let rates = (self.reporters > 0).then(|| {
            self.counts
                .map(|c| c as f64 / self.reporters as f64 * per_h)
        });
        let start_local_s = policy
            .time_zone
            .local_epoch_s(UnixMs(index * Self::interval_ms(policy)));
        for (k, f) in self.forecasters.iter_mut().enumerate() {
            f.update(start_local_s, rates.map(|r| r[k]));
        }
        self.learned_until = Some(UnixMs((index + 1) * Self::interval_ms(policy)));
        self.forecast = self.total_forecast(policy);
        self.last_rates = rates;
        self.prev_reporters = self.reporters;
        self.reporters = 0;
        self.counts = [0; 3];

        let capacity = self.road.capacity_per_h.max(1e-9);
        let measured = rates.map(|r| {
            classes::classes_down(&policy.traffic_steps, r.iter().sum::<f64>() / capacity)
        });
        let forecast = self
            .forecast
            .filter(|_| policy.forecast_lead_s > 0)
            .map(|f| classes::classes_down(&policy.traffic_steps, f.q90_peak / capacity));
        self.selector
            .end_interval(measured, forecast, policy.confirm_intervals)
    }

    fn total_forecast(&self, policy: &PolicyConfig) -> Option<TotalForecast> {
        if self.forecasters.iter().all(|f| f.samples_seen() == 0) {
            return None;
        }
        let lead = lead_steps(policy);
        let mut total = TotalForecast {
            point: 0.0,
            q10: 0.0,
            q90: 0.0,
            q90_peak: 0.0,
        };
        for h in 1..=lead {
            let mut q90 = 0.0;
            for f in self.forecasters.iter() {
                let p = f.forecast(h);
                q90 += p.q90;
                if h == lead {
                    total.point += p.point;
                    total.q10 += p.q10;
                }
            }
            if h == lead {
                total.q90 = q90;
            }
            total.q90_peak = total.q90_peak.max(q90);
        }
        Some(total)
    }

    /// A report from one of this zone's lamps, first in the interval holding `now` when
    /// `first_in_interval`. Returns whether the class in force rose.
    pub fn count(
        &mut self,
        now: UnixMs,
        presence: Presence,
        first_in_interval: bool,
        policy: &PolicyConfig,
    ) -> bool {
        self.last_report = Some(now);
        if first_in_interval {
            self.reporters += 1;
        }
        for (c, n) in
            self.counts
                .iter_mut()
                .zip([presence.pedestrians, presence.cyclists, presence.vehicles])
        {
            *c += n as u64;
        }
        // Rise within the interval as soon as the flow so far calls for a brighter class:
        // waiting for the interval's end would leave road users under a dimmer class for up
        // to ten minutes after demand rose. The flow so far is the count over the time the
        // interval has run, at least `RISE_WINDOW_S` so that the first few detections of an
        // interval do not read as a flood.
        let lamps = self.reporters.max(self.prev_reporters).max(1) as f64;
        let elapsed_s = self.interval.map_or(0.0, |i| {
            now.0.saturating_sub(i * Self::interval_ms(policy)) as f64 / 1000.0
        });
        let window_s = elapsed_s
            .max(RISE_WINDOW_S.min(policy.interval_s as f64))
            .max(1.0);
        let so_far = self.counts.iter().sum::<u64>() as f64 / lamps * 3600.0 / window_s;
        let down = classes::classes_down(
            &policy.traffic_steps,
            so_far / self.road.capacity_per_h.max(1e-9),
        );
        self.selector.rise_to(down)
    }

    pub fn interval(&self) -> Option<u64> {
        self.interval
    }

    /// Whether the zone has reported within the policy's staleness limit.
    pub fn demand_known(&self, now: UnixMs, policy: &PolicyConfig) -> bool {
        self.last_report
            .is_some_and(|t| now.since(t) <= policy.demand_stale_s as u64 * 1000)
    }

    /// When [`ZoneState::demand_known`] turns false unless another report comes (`None`:
    /// not known now).
    pub fn demand_known_until(&self, now: UnixMs, policy: &PolicyConfig) -> Option<UnixMs> {
        self.last_report
            .map(|t| t.plus_ms(policy.demand_stale_s as u64 * 1000 + 1))
            .filter(|&until| until > now)
    }

    /// The class in force, or `None` when demand is unknown (no recent reports).
    pub fn class_in_force(&self, now: UnixMs, policy: &PolicyConfig) -> Option<ClassInForce> {
        if !self.demand_known(now, policy) {
            return None;
        }
        let design = self.road.design_class;
        Some(ClassInForce {
            design,
            class: classes::class_below(design, self.selector.down()),
            reason: if self.selector.by_forecast() {
                Reason::Forecast
            } else {
                Reason::Schedule
            },
        })
    }

    pub fn view(&self, now: UnixMs, policy: &PolicyConfig) -> ZoneDemandView {
        let class = self.class_in_force(now, policy);
        ZoneDemandView {
            design_class: Some(self.road.design_class),
            class: class.map(|c| c.class),
            class_reason: Some(class.map_or(Reason::FailSafe, |c| c.reason)),
            capacity_per_h: self.road.capacity_per_h,
            demand_per_h: self.last_rates.map(|r| r.iter().sum()),
            demand_by_mode_per_h: self.last_rates,
            forecast_horizon_s: lead_steps(policy) * policy.interval_s,
            forecast_per_h: self.forecast.map(|f| f.point),
            forecast_q10_per_h: self.forecast.map(|f| f.q10),
            forecast_q90_per_h: self.forecast.map(|f| f.q90),
            forecast_q90_peak_per_h: self.forecast.map(|f| f.q90_peak),
            forecaster_samples: self
                .forecasters
                .iter()
                .map(|f| f.samples_seen())
                .max()
                .unwrap_or(0),
            forecaster_learned_until_ms: self.learned_until.map(|t| t.0),
            forecaster_age_s: self.learned_until.map(|t| now.since(t) / 1000),
        }
    }

    /// Starts from saved forecasters if they were made for this zone's step; returns whether.
    fn restore(&mut self, saved: ZoneForecasterState, policy: &PolicyConfig) -> bool {
        if saved
            .forecasters
            .iter()
            .zip(self.forecasters.iter())
            .any(|(s, f)| s.config() != f.config())
        {
            return false;
        }
        self.forecasters = saved.forecasters;
        self.learned_until = saved.learned_until;
        self.forecast = self.total_forecast(policy);
        true
    }

    /// Bytes the zone's forecasters hold.
    #[cfg(test)]
    pub fn forecaster_bytes(&self) -> usize {
        self.forecasters.iter().map(|f| f.state_bytes()).sum()
    }
}

impl ControllerCore {
    /// Every zone's forecasters, to save.
    pub fn forecaster_states(&self) -> Vec<ZoneForecasterState> {
        self.zones
            .iter()
            .filter(|z| z.tracking)
            .filter_map(|z| {
                let node = &self.lamps.get(*z.lamps.first()?)?.node;
                Some(ZoneForecasterState {
                    tenant: node.tenant.clone(),
                    zone: node.zone,
                    learned_until: z.learned_until,
                    forecasters: z.forecasters.clone(),
                })
            })
            .collect()
    }

    /// Starts zones' forecasters from saved ones (at start, before the first report). A saved
    /// zone the core does not have, or made for another interval, is skipped. Returns how
    /// many zones were restored.
    pub fn restore_forecasters(
        &mut self,
        saved: impl IntoIterator<Item = ZoneForecasterState>,
    ) -> usize {
        let mut by_key: std::collections::HashMap<(TenantId, ZoneId), ZoneForecasterState> = saved
            .into_iter()
            .map(|s| ((s.tenant.clone(), s.zone), s))
            .collect();
        let mut restored = 0;
        for i in 0..self.zones.len() {
            let Some(&lamp) = self.zones[i].lamps.first() else {
                continue;
            };
            let node = &self.lamps[lamp].node;
            let Some(state) = by_key.remove(&(node.tenant.clone(), node.zone)) else {
                continue;
            };
            let policy = self
                .zone_policies
                .get(&i)
                .unwrap_or(&self.config.policy)
                .clone();
            let zone = &mut self.zones[i];
            if zone.tracking && zone.restore(state, &policy) {
                restored += 1;
            }
        }
        restored
    }
}

/// Forecast horizons (intervals) the lead time covers: at least the interval under way.
pub fn lead_steps(policy: &PolicyConfig) -> u32 {
    policy
        .forecast_lead_s
        .div_ceil(policy.interval_s.max(1))
        .max(1)
}
