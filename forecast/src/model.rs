//! The per-series online forecaster. See the crate documentation for the model.

use crate::rls::{self, RlsBank, K};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

const DAY_S: i64 = 86_400;
const WEEK_S: i64 = 7 * DAY_S;
// The residual features, K of them: r(t) - level, r(t) - r(t-1), r(t-1) - r(t-2), level.
/// Index of the level in the feature vector.
const LEVEL: usize = 3;
/// Largest residual (in log space) the short-term model may add or remove.
const MAX_ADJUST: f64 = 3.0;
/// Smallest scale (mean absolute one-step error in log space).
const MIN_SCALE: f64 = 1e-3;
/// Smallest clipping threshold in log space (10 %), so that a near-perfect
/// fit (tiny scale) can still adapt its profiles.
const MIN_CLIP: f64 = 0.1;
/// Marks "no forecast pending" (serialisable, unlike NaN).
const NO_PRED: f32 = f32::MAX;

/// Settings of a [`Forecaster`]. Everything except `step_s` has a default
/// that was chosen on the development series; rates are given per visit or
/// per unit of time so that they mean the same at any step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecasterConfig {
    /// The series' interval in seconds (e.g. 300, 600, 1800, 3600).
    pub step_s: u32,
    /// Horizons (in steps) that get their own model and quantiles; longer
    /// horizons reuse the last one. Default: one hour, at most 12 steps.
    pub max_horizon_steps: u32,
    /// Offset `c` of the log transform `z = ln(y + c)` (keeps zero counts finite).
    pub log_offset: f64,
    /// Smoothing of the time-of-day profile, per day (per visit of a slot).
    pub day_alpha: f64,
    /// Smoothing of the day-of-week profile, per week (per visit of a slot).
    pub week_alpha: f64,
    /// Half-life of the slow "recent level" residual, in seconds.
    pub level_half_life_s: f64,
    /// Memory of the recursive least squares (1/(1-lambda) in seconds).
    pub rls_memory_s: f64,
    /// Smoothing of the per-hour error scale, per day.
    pub scale_alpha: f64,
    /// Step size of the online quantile trackers (in units of the scale).
    pub quantile_rate: f64,
    /// Errors beyond this many scales are clipped before they reach the
    /// profiles and the regression (robustness to outages and holidays).
    pub clip_scales: f64,
    /// A run of missing samples longer than this (seconds) resets the
    /// short-term state instead of imputing every slot.
    pub gap_reset_s: f64,
}

impl Default for ForecasterConfig {
    /// Ten-minute steps.
    fn default() -> Self {
        Self::for_step(600)
    }
}

impl ForecasterConfig {
    /// Defaults for a series with the given step in seconds (0 is treated as 1).
    pub fn for_step(step_s: u32) -> Self {
        let step_s = step_s.max(1);
        let per_hour = 3600u32.div_ceil(step_s);
        ForecasterConfig {
            step_s,
            max_horizon_steps: per_hour.clamp(1, 12),
            log_offset: 5.0,
            day_alpha: 0.10,
            week_alpha: 0.15,
            level_half_life_s: 6.0 * 3600.0,
            rls_memory_s: 60.0 * 86_400.0,
            scale_alpha: 0.05,
            quantile_rate: 0.02,
            clip_scales: 5.0,
            gap_reset_s: 86_400.0,
        }
    }
}

/// A forecast for one future slot, in the series' own units.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// Point forecast (the predicted median).
    pub point: f64,
    /// 10th percentile.
    pub q10: f64,
    /// 90th percentile.
    pub q90: f64,
}

/// One small online model for one series (zone x road-user mode).
///
/// Sans-IO: time is always an argument (local wall-clock seconds of the
/// slot's start). The whole state is a few kilobytes; see
/// [`Forecaster::state_bytes`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Forecaster {
    config: ForecasterConfig,
    step: i64,
    horizons: usize,
    /// Width of a time-of-day profile bin, a day-of-week profile bin and a scale bin.
    day_bin_s: i64,
    week_bin_s: i64,
    scale_bin_s: i64,
    lambda: f64,
    level_alpha: f64,
    scale_alpha_sample: f64,
    level_decay_missing: f64,

    first_slot: i64,
    last_slot: Option<i64>,
    n_obs: u64,

    /// Time-of-day profile of z (log counts).
    day: Vec<f32>,
    /// Day-of-week deviation from the time-of-day profile.
    week: Vec<f32>,
    /// Samples learnt per bin of `day` and `week` (saturating).
    day_n: Vec<u8>,
    week_n: Vec<u8>,
    /// Mean absolute one-step error in log space, per hour of the day.
    scale: Vec<f32>,

    /// r(t), r(t-1), r(t-2): residuals of z from the seasonal profile.
    lags: [f64; 3],
    /// Slow exponential average of the residuals.
    level: f64,
    rls: RlsBank,
    /// Feature vectors of the last `horizons` origins, row = slot mod horizons.
    feats: Array2<f64>,
    feats_valid: Vec<bool>,
    /// Pending log-space forecasts: row = target slot mod horizons, column = horizon - 1.
    preds: Array2<f32>,
    /// Standardised-error quantiles per horizon: columns q10, q50, q90.
    quant: Array2<f64>,
}

const TAUS: [f64; 3] = [0.1, 0.5, 0.9];

/// The per-sample smoothing rate equivalent to `alpha` per visit of a bin of
/// `bin_s` seconds sampled every `step` seconds.
fn per_sample(alpha: f64, step: i64, bin_s: i64) -> f64 {
    let samples = (bin_s / step.max(1)).max(1) as f64;
    if samples <= 1.0 {
        alpha
    } else {
        1.0 - (1.0 - alpha.clamp(0.0, 1.0)).powf(1.0 / samples)
    }
}

impl Forecaster {
    /// A fresh model; it forecasts zero until it has seen a sample.
    pub fn new(config: ForecasterConfig) -> Self {
        let mut config = config;
        config.step_s = config.step_s.max(1);
        let step = i64::from(config.step_s);
        let horizons = config.max_horizon_steps.clamp(1, 24) as usize;
        config.max_horizon_steps = horizons as u32;
        let day_bin_s = step.clamp(300, DAY_S);
        let week_bin_s = step.clamp(1800, DAY_S);
        let scale_bin_s = step.clamp(3600, DAY_S);
        let n_day = (DAY_S as u64).div_ceil(day_bin_s as u64) as usize;
        let n_week = 7 * (DAY_S as u64).div_ceil(week_bin_s as u64) as usize;
        let n_scale = (DAY_S as u64).div_ceil(scale_bin_s as u64) as usize;
        let stepf = step as f64;
        let lambda = (1.0 - stepf / config.rls_memory_s.max(stepf * 10.0)).clamp(0.9, 1.0);
        let level_alpha = 1.0 - 0.5f64.powf(stepf / config.level_half_life_s.max(1.0));
        let visits_per_day = (scale_bin_s / step).max(1) as f64;
        let scale_alpha_sample =
            1.0 - (1.0 - config.scale_alpha.clamp(1e-6, 1.0)).powf(1.0 / visits_per_day);
        let mut beta0 = Array2::zeros((horizons, K));
        for h in 0..horizons {
            beta0[[h, 0]] = 0.8f64.powi(h as i32 + 1);
        }
        let rls = RlsBank::new(horizons, beta0, lambda, 1.0, 1.0 - lambda);
        // Normal quantiles in units of the mean absolute error (sigma = 1.25 MAE).
        let mut quant = Array2::zeros((horizons, 3));
        for h in 0..horizons {
            let widen = ((h + 1) as f64).sqrt();
            quant[[h, 0]] = -1.6 * widen;
            quant[[h, 2]] = 1.6 * widen;
        }
        Forecaster {
            step,
            horizons,
            day_bin_s,
            week_bin_s,
            scale_bin_s,
            lambda,
            level_alpha,
            scale_alpha_sample,
            level_decay_missing: 1.0 - level_alpha,
            first_slot: 0,
            last_slot: None,
            n_obs: 0,
            day: vec![0.0; n_day],
            week: vec![0.0; n_week],
            scale: vec![0.3; n_scale],
            day_n: vec![0; n_day],
            week_n: vec![0; n_week],
            lags: [0.0; 3],
            level: 0.0,
            rls,
            feats: Array2::zeros((horizons, K)),
            feats_valid: vec![false; horizons],
            preds: Array2::from_elem((horizons, horizons), NO_PRED),
            quant,
            config,
        }
    }

    /// The configuration in force (with `step_s` and `max_horizon_steps` normalised).
    pub fn config(&self) -> &ForecasterConfig {
        &self.config
    }

    /// Wall-clock seconds of the last slot given to [`Forecaster::update`].
    pub fn last_time(&self) -> Option<i64> {
        self.last_slot.map(|s| s * self.step)
    }

    /// Number of (non-missing) samples learnt from.
    pub fn samples_seen(&self) -> u64 {
        self.n_obs
    }

    /// Bytes of memory the state uses (inline plus heap), excluding allocator overhead.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + (self.day.capacity() + self.week.capacity() + self.scale.capacity())
                * std::mem::size_of::<f32>()
            + self.rls.heap_bytes()
            + self.feats.len() * std::mem::size_of::<f64>()
            + self.feats_valid.capacity()
            + self.day_n.capacity()
            + self.week_n.capacity()
            + self.preds.len() * std::mem::size_of::<f32>()
            + self.quant.len() * std::mem::size_of::<f64>()
    }

    /// Feed the sample of the slot starting at `t_s` (local wall-clock
    /// seconds since 1970, as a `NaiveDateTime` gives). `None` is a missing
    /// sample. Slots skipped since the last update count as missing. A slot
    /// at or before the last one (a repeated hour at a clock change, a late
    /// sample) is ignored, unless it is more than a day back, which is taken
    /// as a clock reset: the short-term state restarts there.
    pub fn update(&mut self, t_s: i64, value: Option<f64>) {
        let value = value.filter(|v| v.is_finite());
        let slot = t_s.div_euclid(self.step);
        let spd = (DAY_S / self.step).max(1);
        match self.last_slot {
            None => {
                let Some(y) = value else { return };
                let z = self.z_of_y(y);
                self.day.iter_mut().for_each(|d| *d = z as f32);
                self.first_slot = slot;
            }
            Some(last) if slot <= last => {
                if last - slot < spd {
                    return;
                }
                self.reset_short_term();
            }
            Some(last) if slot > last + 1 => {
                let gap = slot - last - 1;
                if (gap * self.step) as f64 > self.config.gap_reset_s {
                    self.reset_short_term();
                } else {
                    for s in (last + 1)..slot {
                        self.process(s, None);
                    }
                }
            }
            Some(_) => {}
        }
        self.process(slot, value);
    }

    /// Forecast for the slot `horizon_steps` steps after the last update
    /// (0 is treated as 1). Before the first sample everything is zero.
    pub fn forecast(&self, horizon_steps: u32) -> Forecast {
        let Some(last) = self.last_slot else {
            return Forecast {
                point: 0.0,
                q10: 0.0,
                q90: 0.0,
            };
        };
        let h = horizon_steps.max(1) as i64;
        let hi = (h as usize).min(self.horizons) - 1;
        let target = last + h;
        let x = self.features();
        let zhat = self.base(target) + self.adjust(hi, &x);
        let s = self.scale_at(target);
        // Beyond the modelled horizons the spread keeps growing like sqrt(h).
        let widen = if (h as usize) > self.horizons {
            (h as f64 / self.horizons as f64).sqrt()
        } else {
            1.0
        };
        let point = self.y_of_z(zhat + self.quant[[hi, 1]] * s);
        let q10 = self
            .y_of_z(zhat + self.quant[[hi, 0]] * s * widen)
            .min(point);
        let q90 = self
            .y_of_z(zhat + self.quant[[hi, 2]] * s * widen)
            .max(point);
        Forecast { point, q10, q90 }
    }

    fn z_of_y(&self, y: f64) -> f64 {
        (y.max(0.0) + self.config.log_offset).max(1e-9).ln()
    }

    fn y_of_z(&self, z: f64) -> f64 {
        (z.min(700.0).exp() - self.config.log_offset).max(0.0)
    }

    fn features(&self) -> [f64; K] {
        let [r0, r1, r2] = self.lags;
        [r0 - self.level, r0 - r1, r1 - r2, self.level]
    }

    /// Predicted residual (log space) `hi + 1` steps after the origin whose
    /// features are `x`: the level persists, the regression adds the rest.
    fn adjust(&self, hi: usize, x: &[f64; K]) -> f64 {
        (x[LEVEL] + self.rls.predict(hi, x)).clamp(-MAX_ADJUST, MAX_ADJUST)
    }

    fn tod(&self, slot: i64) -> i64 {
        (slot * self.step).rem_euclid(DAY_S)
    }

    fn day_bin(&self, slot: i64) -> usize {
        (self.tod(slot) / self.day_bin_s) as usize
    }

    fn week_bin(&self, slot: i64) -> usize {
        // 1970-01-01 was a Thursday; shift so that bin 0 starts on Monday.
        let tow = (slot * self.step + 3 * DAY_S).rem_euclid(WEEK_S);
        let per_day = self.week.len() / 7;
        let dow = (tow / DAY_S) as usize;
        dow * per_day + ((tow % DAY_S) / self.week_bin_s) as usize
    }

    fn scale_bin(&self, slot: i64) -> usize {
        (self.tod(slot) / self.scale_bin_s) as usize
    }

    fn base(&self, slot: i64) -> f64 {
        f64::from(self.day[self.day_bin(slot)]) + f64::from(self.week[self.week_bin(slot)])
    }

    fn scale_at(&self, slot: i64) -> f64 {
        f64::from(self.scale[self.scale_bin(slot)]).max(MIN_SCALE)
    }

    /// Samples per visit of a bin `bin_s` wide.
    fn samples_per(&self, bin_s: i64) -> u32 {
        (bin_s / self.step).max(1) as u32
    }

    fn reset_short_term(&mut self) {
        self.lags = [0.0; 3];
        self.level = 0.0;
        self.feats_valid.iter_mut().for_each(|v| *v = false);
        self.preds.fill(NO_PRED);
    }

    fn process(&mut self, slot: i64, value: Option<f64>) {
        let hn = self.horizons as i64;
        let row = slot.rem_euclid(hn) as usize;
        let base = self.base(slot);
        let s = self.scale_at(slot);
        let sb = self.scale_bin(slot);
        let elapsed_s = ((slot - self.first_slot) * self.step) as f64;
        let days_seen = (elapsed_s / DAY_S as f64).floor();
        let weeks_seen = (elapsed_s / WEEK_S as f64).floor();
        let warm = weeks_seen >= 1.0;
        let clip = (self.config.clip_scales * s).max(MIN_CLIP);

        let r_now = match value {
            Some(y) => {
                let z = self.z_of_y(y);
                let r = z - base;
                self.n_obs += 1;
                // Quantile trackers and the regression learn from the
                // forecasts made 1..H steps ago for this slot.
                // Larger steps while young, so that the prior quantiles are
                // forgotten within days rather than weeks.
                let rate = self
                    .config
                    .quantile_rate
                    .max(2.0 / ((self.n_obs as f64) + 10.0).sqrt());
                for h in 1..=self.horizons {
                    let p = self.preds[[row, h - 1]];
                    if p != NO_PRED {
                        let p = f64::from(p);
                        let u = (z - p) / s;
                        for (qi, tau) in TAUS.iter().enumerate() {
                            let q = &mut self.quant[[h - 1, qi]];
                            let below = if u < *q { 1.0 } else { 0.0 };
                            *q += rate * (tau - below);
                        }
                    }
                    let origin = (slot - h as i64).rem_euclid(hn) as usize;
                    if self.feats_valid[origin] {
                        let x = *rls::row(&self.feats, origin);
                        // The regression explains what the persisting level does not.
                        let r = r - x[LEVEL];
                        let pred = self.rls.predict(h - 1, &x);
                        let target = if warm {
                            r.clamp(pred - clip, pred + clip)
                        } else {
                            r
                        };
                        self.rls.update(h - 1, &x, target, 1.0 / (s * s));
                    }
                }
                let p1 = self.preds[[row, 0]];
                let e1 = if p1 != NO_PRED { z - f64::from(p1) } else { r };
                let a_s = self.scale_alpha_sample.max(1.0 / (days_seen + 2.0));
                let e1c = if warm { e1.abs().min(clip) } else { e1.abs() };
                self.scale[sb] = ((1.0 - a_s) * s + a_s * e1c).max(MIN_SCALE) as f32;
                // Seasonal profiles: running means over a bin's first samples,
                // then EWMA. A bin wider than the step is visited several
                // times in a row: its per-visit rate is split over those
                // samples. Clipping starts once a bin has seen three visits.
                let db = self.day_bin(slot);
                let wb = self.week_bin(slot);
                let (nd, nw) = (self.day_n[db], self.week_n[wb]);
                let (spd, spw) = (
                    self.samples_per(self.day_bin_s),
                    self.samples_per(self.week_bin_s),
                );
                let a_d = per_sample(self.config.day_alpha, self.step, self.day_bin_s)
                    .max(1.0 / (f64::from(nd) + 1.0));
                let a_w = per_sample(self.config.week_alpha, self.step, self.week_bin_s)
                    .max(1.0 / (f64::from(nw) + 1.0));
                let rc = if u32::from(nd) >= 3 * spd {
                    r.clamp(-clip, clip)
                } else {
                    r
                };
                self.day[db] += (a_d * rc) as f32;
                let r2 = z - f64::from(self.day[db]) - f64::from(self.week[wb]);
                let r2 = if u32::from(nw) >= 3 * spw {
                    r2.clamp(-clip, clip)
                } else {
                    r2
                };
                self.week[wb] += (a_w * r2) as f32;
                self.day_n[db] = nd.saturating_add(1);
                self.week_n[wb] = nw.saturating_add(1);
                let r = if warm {
                    r.clamp(-MAX_ADJUST, MAX_ADJUST)
                } else {
                    r
                };
                self.level = (1.0 - self.level_alpha) * self.level + self.level_alpha * r;
                r
            }
            None => {
                // No news: hold the last residual, fading with the level's
                // half-life. (Iterating the one-step model instead shrinks
                // sparse series towards the profile and can run away on its
                // own output through long gaps.)
                self.level *= self.level_decay_missing;
                self.lags[0] * self.level_decay_missing
            }
        };
        self.lags = [r_now, self.lags[0], self.lags[1]];
        let x = self.features();
        *rls::row_mut(&mut self.feats, row) = x;
        self.feats_valid[row] = true;
        self.preds.row_mut(row).fill(NO_PRED);
        for h in 1..=self.horizons {
            let target = slot + h as i64;
            let adj = self.adjust(h - 1, &x);
            let trow = target.rem_euclid(hn) as usize;
            self.preds[[trow, h - 1]] = (self.base(target) + adj) as f32;
        }
        self.last_slot = Some(slot);
    }
}

impl Forecaster {
    #[doc(hidden)]
    /// Forgetting factor in use (for diagnostics).
    pub fn rls_lambda(&self) -> f64 {
        self.lambda
    }

    #[doc(hidden)]
    /// Internal state summary (for diagnostics).
    pub fn debug_summary(&self) -> String {
        format!(
            "lags {:?} level {:.4} beta {:.3} quant {:.3} scale {:?}",
            self.lags, self.level, self.rls.beta, self.quant, self.scale
        )
    }
}
