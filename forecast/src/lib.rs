//! Demand forecasting for Lamplighter: one small online model per series
//! (zone x road-user mode), simple baselines, and a rolling-origin evaluation.
//!
//! The controller feeds each [`Forecaster`] the count of every slot as it
//! arrives ([`Forecaster::update`]) and asks for [`Forecaster::forecast`] 1..H
//! steps ahead to brighten lamps before demand arrives. The crate is sans-IO:
//! it never reads a clock; time is an argument (local wall-clock seconds).
//!
//! # The model
//!
//! Counts `y` are modelled in log space, `z = ln(y + c)` (`c` =
//! [`ForecasterConfig::log_offset`], 5 by default), where daily and weekly
//! shapes and weather or event effects are multiplicative, and then
//!
//! `z(t+h) = D[time of day] + W[day of week, time of day] + level(t) + beta_h . x(t)`
//!
//! * **Seasonal profile** `D + W`: a time-of-day profile at the step's
//!   resolution (at most 288 bins, 5 min) plus a day-of-week deviation at
//!   30-minute (or the step's, if coarser) resolution, 336 bins at most. Each
//!   bin is a running mean over its first samples and then an exponential
//!   average (per visit 0.10 for `D`, 0.15 for `W`), with updates clipped at
//!   5 error scales once a bin is established, so that outages and holidays
//!   do not bend the profile. This is the double-seasonal part of a
//!   Holt-Winters model (Taylor 2003), but a full weekly profile at 5-minute
//!   resolution (2016 values) would not fit the 8 KB budget; the split into
//!   a fine daily and a coarse weekly profile does.
//! * **Recent level**: an exponential average of the residuals
//!   `r = z - D - W` (half-life 6 h). It persists at every horizon, like the
//!   level of Holt-Winters: a rainy day, an event or a new bike lane shifts
//!   all forecasts at once.
//! * **Residual regression**: per horizon `h` (1..H, H = one hour, at most 12
//!   steps) a direct linear model on `x = (r(t) - level, r(t) - r(t-1),
//!   r(t-1) - r(t-2), level)` fitted by weighted recursive least squares with
//!   forgetting (memory 60 days), weights `1/scale^2`, and a weak leak back
//!   to a damped-AR prior so that collinear directions cannot wind up. This
//!   is the "strong recent-level term": on the NYC taxi series the naive
//!   forecast already has MASE 0.48 at one step, and only a model that reads
//!   the last few residuals beats it. Direct models (one per horizon) avoid
//!   compounding the one-step model's errors over an hour.
//! * **Quantiles**: the errors of the forecasts actually made 1..H steps
//!   earlier are divided by an error scale for the hour of day (mean
//!   absolute one-step error in log space, 24 bins), and the 10th, 50th and
//!   90th percentiles of these standardised errors are tracked per horizon by
//!   stochastic gradient on the pinball loss (adaptive-conformal style: the
//!   long-run share of outcomes below each tracked quantile converges to its
//!   level, which is what the 75-85 % coverage target needs). The point
//!   forecast is the tracked median, which is what MASE/WAPE (absolute
//!   errors) reward. Mapping back through `exp(.) - c` keeps every quantile
//!   non-negative and the intervals skewed as counts are.
//!
//! Why not recursive least squares on Fourier time-of-day and day-of-week
//! terms? It would need many terms (or interactions) to capture sharp
//! commuter peaks that differ between weekdays and weekends, and its
//! covariance matrix grows with the square of the number of terms; the
//! profile bins are exact, cheap and small. The defaults were chosen on the
//! development series (`shared/data/demand`); the results barely move when
//! any of them is halved or doubled.
//!
//! # Gaps, clock changes and low counts
//!
//! * **Missing samples** (`None`, or slots skipped between two updates) do not
//!   touch the profiles, the regression or the quantiles. The residual is
//!   imputed with the one-step model, never growing and fading with the
//!   level's half-life, so that the model cannot run away on its own output.
//!   A gap longer than a day ([`ForecasterConfig::gap_reset_s`]) resets the
//!   short-term state and keeps the profiles.
//! * **Clock changes**: time is local wall-clock time, because people follow
//!   the local clock, so the profiles stay aligned with behaviour across
//!   daylight-saving changes. The spring-forward hour never arrives and is a
//!   one-hour gap; the repeated autumn hour arrives with timestamps at or
//!   before the last slot and is ignored. A jump back of more than a day is
//!   a clock reset: the short-term state restarts there. (The evaluation
//!   keeps the first row of a repeated timestamp; see [`load_series`].)
//! * **Low counts**: the log offset `c` keeps zeros finite and makes the model
//!   nearly additive when counts are a few per slot; forecasts and quantiles
//!   are clamped at zero, the error scale is per hour of day (nights are
//!   noisier in log space), and clipping has a floor so a near-perfect fit
//!   can still adapt.
//!
//! # Size and speed
//!
//! The state of one series is 7.4 KB at 5-minute (or shorter) steps, 4.8 KB
//! at 10-minute and 2.1 KB at hourly steps: see [`Forecaster::state_bytes`],
//! tested to stay under 8 KB. An update plus forecasts for all horizons costs a few microseconds
//! (criterion benchmark `benches/forecaster.rs`).
//!
//! # Evaluation
//!
//! [`evaluate`] reads a CSV, sorts it, drops blank values (counted in the
//! report), infers the step (the most common difference), puts the values on
//! a regular grid, trains the model online on the whole series and scores it
//! over the last 20 % of the slots against four baselines (naive t-1, same
//! slot yesterday, same slot last week, mean of the same slot over the last 4
//! weeks) with MASE (scaled by the in-sample daily seasonal naive), WAPE,
//! pinball loss and 80 % interval coverage. Baseline intervals are the
//! empirical 10th/90th percentiles of their last 4 weeks of errors (at most
//! 2000), using only errors known at the forecast origin.
//!
//! ```
//! use lamplighter_forecast::{Forecaster, ForecasterConfig};
//! let mut f = Forecaster::new(ForecasterConfig::for_step(600));
//! let t0 = 1_704_067_200; // 2024-01-01 00:00 local
//! for i in 0..(3 * 144) {
//!     f.update(t0 + i * 600, Some(20.0));
//! }
//! let next = f.forecast(1);
//! assert!(next.q10 <= next.point && next.point <= next.q90);
//! assert!((next.point - 20.0).abs() < 1.0);
//! ```

#![warn(missing_docs)]

mod eval;
mod model;
mod rls;

pub use eval::{
    baseline_points, evaluate, evaluate_series, evaluate_with, load_series, pinball,
    seasonal_naive_scale, EvalError, EvalOptions, EvalReport, HorizonReport, MethodScore, Series,
    METHODS,
};
pub use model::{Forecast, Forecaster, ForecasterConfig};
