//! Rolling-origin evaluation of the forecaster against simple baselines on a CSV series.

use crate::model::{Forecaster, ForecasterConfig};
use chrono::{NaiveDate, NaiveDateTime};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What to evaluate: one value column of one CSV file.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// The CSV file (with a header row).
    pub data: PathBuf,
    /// Name of the timestamp column.
    pub time_column: String,
    /// Name of the value column.
    pub value_column: String,
    /// strftime format of the timestamps (chrono syntax), e.g. `%Y-%m-%d %H:%M:%S`.
    pub time_format: String,
    /// Horizons in steps; empty means `[1, steps per hour]`.
    pub horizons: Vec<u32>,
}

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The data file does not exist.
    #[error("data file not found: {0}")]
    MissingFile(PathBuf),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CSV is malformed.
    #[error("malformed CSV in {path}: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: csv::Error,
    },
    /// A requested column is not in the header.
    #[error("column {column:?} not found in {path}; available columns: {available}")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column asked for.
        column: String,
        /// The header, quoted and comma-separated.
        available: String,
    },
    /// A timestamp does not match the format.
    #[error("line {line} of {path}: cannot parse time {value:?} with format {format:?}")]
    BadTime {
        /// The file.
        path: PathBuf,
        /// 1-based line number in the file (the header is line 1).
        line: u64,
        /// The text found.
        value: String,
        /// The format given.
        format: String,
    },
    /// A non-blank value is not a number.
    #[error("line {line} of {path}: value {value:?} is not a number")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// 1-based line number in the file.
        line: u64,
        /// The text found.
        value: String,
    },
    /// Not enough data to evaluate.
    #[error("{path}: {reason}")]
    TooLittleData {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
}

/// A series on a regular grid of slots (`slot * step_s` = local wall-clock seconds).
#[derive(Clone, Debug)]
pub struct Series {
    /// The inferred step in seconds.
    pub step_s: u32,
    /// Slot index of `values[0]`.
    pub first_slot: i64,
    /// One entry per slot; `None` = missing.
    pub values: Vec<Option<f64>>,
    /// Data rows in the file.
    pub rows_read: usize,
    /// Rows whose value was blank (dropped).
    pub blank_values: usize,
    /// Rows dropped because an earlier row already filled their slot (kept the first).
    pub duplicate_slots: usize,
}

/// Scores of one method at one horizon over the test targets.
#[derive(Clone, Debug, Serialize)]
pub struct MethodScore {
    /// `model`, `naive_t-1`, `same_slot_yesterday`, `same_slot_last_week`, `mean_same_slot_4_weeks`.
    pub method: String,
    /// Mean absolute error divided by the in-sample daily seasonal naive MAE.
    pub mase: f64,
    /// Sum of absolute errors / sum of absolute actuals.
    pub wape: f64,
    /// Mean pinball loss of q10 and q90 (series units).
    pub pinball: f64,
    /// `pinball` divided by the MASE scale.
    pub pinball_scaled: f64,
    /// Share of actuals inside [q10, q90].
    pub coverage_80: f64,
}

/// All methods at one horizon.
#[derive(Clone, Debug, Serialize)]
pub struct HorizonReport {
    /// Horizon in steps.
    pub horizon_steps: u32,
    /// Horizon in seconds.
    pub horizon_s: u64,
    /// Test targets scored (the same for every method).
    pub targets: usize,
    /// The model first, then the baselines.
    pub methods: Vec<MethodScore>,
    /// The baseline with the lowest MASE.
    pub best_baseline: String,
    /// 1 - model MASE / best baseline MASE (0.2 = 20 % lower).
    pub model_mase_improvement: f64,
}

/// The result of [`evaluate`]; serialises to one JSON object.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// The file evaluated.
    pub data: String,
    /// The value column.
    pub value_column: String,
    /// Data rows in the file.
    pub rows_read: usize,
    /// Rows with a blank value, dropped.
    pub blank_values_dropped: usize,
    /// Rows whose slot was already filled (clock-change repeats, sub-step samples): the first was kept.
    pub duplicate_slots_dropped: usize,
    /// The inferred step (most common difference between consecutive timestamps).
    pub step_s: u32,
    /// Slots from the first to the last timestamp.
    pub slots: usize,
    /// Slots without a value.
    pub missing_slots: usize,
    /// First slot of the test part (the last 20 % of the slots).
    pub test_start: String,
    /// Last slot of the series.
    pub test_end: String,
    /// In-sample mean absolute error of the daily seasonal naive (the MASE scale).
    pub mase_scale: f64,
    /// One entry per horizon asked.
    pub horizons: Vec<HorizonReport>,
}

/// Evaluate the model with default settings for the series' step.
pub fn evaluate(opts: &EvalOptions) -> Result<EvalReport, EvalError> {
    evaluate_with(opts, ForecasterConfig::for_step)
}

/// Evaluate with a model configuration derived from the inferred step.
pub fn evaluate_with(
    opts: &EvalOptions,
    config: impl Fn(u32) -> ForecasterConfig,
) -> Result<EvalReport, EvalError> {
    let series = load_series(opts)?;
    evaluate_series(
        &series,
        &opts.data,
        &opts.value_column,
        &opts.horizons,
        &config(series.step_s),
    )
}

fn parse_time(text: &str, format: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
        return Some(t.and_utc().timestamp());
    }
    NaiveDate::parse_from_str(text, format)
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp())
}

/// Read the CSV into a regular series: sort by time, drop blank values, infer
/// the step (the most common difference between consecutive distinct
/// timestamps), and put each row in the slot `floor(t / step)`. When two rows
/// fall in the same slot (the repeated hour when clocks go back, or irregular
/// sub-step samples) the first in time order is kept and the rest are
/// counted in `duplicate_slots`.
pub fn load_series(opts: &EvalOptions) -> Result<Series, EvalError> {
    let path = &opts.data;
    if !path.exists() {
        return Err(EvalError::MissingFile(path.clone()));
    }
    let file = std::fs::File::open(path).map_err(|source| EvalError::Io {
        path: path.clone(),
        source,
    })?;
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
    let csv_err = |source| EvalError::Csv {
        path: path.clone(),
        source,
    };
    let headers = reader.headers().map_err(csv_err)?.clone();
    let find = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name.trim())
            .ok_or_else(|| EvalError::MissingColumn {
                path: path.clone(),
                column: name.to_string(),
                available: headers
                    .iter()
                    .map(|h| format!("{h:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    };
    let ti = find(&opts.time_column)?;
    let vi = find(&opts.value_column)?;
    let mut rows: Vec<(i64, f64)> = Vec::new();
    let mut rows_read = 0;
    let mut blank_values = 0;
    for record in reader.records() {
        let record = record.map_err(csv_err)?;
        let line = record.position().map_or(0, |p| p.line());
        rows_read += 1;
        let time_text = record.get(ti).unwrap_or("");
        if time_text.trim().is_empty() && record.iter().all(|f| f.trim().is_empty()) {
            rows_read -= 1; // an empty line
            continue;
        }
        let t = parse_time(time_text, &opts.time_format).ok_or_else(|| EvalError::BadTime {
            path: path.clone(),
            line,
            value: time_text.to_string(),
            format: opts.time_format.clone(),
        })?;
        let value_text = record.get(vi).unwrap_or("").trim();
        if value_text.is_empty() {
            blank_values += 1;
            continue;
        }
        let v: f64 = value_text
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| EvalError::BadValue {
                path: path.clone(),
                line,
                value: value_text.to_string(),
            })?;
        rows.push((t, v));
    }
    rows.sort_by_key(|r| r.0); // stable: the first of equal timestamps stays first
    let mut diffs: HashMap<i64, usize> = HashMap::new();
    for w in rows.windows(2) {
        let d = w[1].0 - w[0].0;
        if d > 0 {
            *diffs.entry(d).or_default() += 1;
        }
    }
    let step = diffs
        .iter()
        .max_by_key(|(d, n)| (**n, std::cmp::Reverse(**d)))
        .map(|(d, _)| *d)
        .ok_or_else(|| EvalError::TooLittleData {
            path: path.clone(),
            reason: format!(
                "needs at least two distinct timestamps with values ({} rows read, {} blank)",
                rows_read, blank_values
            ),
        })?;
    let step_s = u32::try_from(step).map_err(|_| EvalError::TooLittleData {
        path: path.clone(),
        reason: format!("inferred step of {step} s is too large"),
    })?;
    let first_slot = rows[0].0.div_euclid(step);
    let last_slot = rows[rows.len() - 1].0.div_euclid(step);
    let n_slots = (last_slot - first_slot + 1) as usize;
    if n_slots > 20_000_000 {
        return Err(EvalError::TooLittleData {
            path: path.clone(),
            reason: format!("{n_slots} slots of {step} s: timestamps span too long a time"),
        });
    }
    let mut values = vec![None; n_slots];
    let mut duplicate_slots = 0;
    for (t, v) in rows {
        let i = (t.div_euclid(step) - first_slot) as usize;
        if values[i].is_some() {
            duplicate_slots += 1;
        } else {
            values[i] = Some(v);
        }
    }
    Ok(Series {
        step_s,
        first_slot,
        values,
        rows_read,
        blank_values,
        duplicate_slots,
    })
}

/// Method names, in report order (the model first).
pub const METHODS: [&str; 5] = [
    "model",
    "naive_t-1",
    "same_slot_yesterday",
    "same_slot_last_week",
    "mean_same_slot_4_weeks",
];

/// Rolling window of recent errors giving empirical quantiles (baseline intervals).
struct ErrorWindow {
    cap: usize,
    fifo: std::collections::VecDeque<f64>,
    sorted: Vec<f64>,
}

impl ErrorWindow {
    fn new(cap: usize) -> Self {
        ErrorWindow {
            cap,
            fifo: Default::default(),
            sorted: Vec::new(),
        }
    }
    fn push(&mut self, e: f64) {
        if self.fifo.len() == self.cap {
            if let Some(old) = self.fifo.pop_front() {
                let i = self.sorted.partition_point(|x| *x < old);
                self.sorted.remove(i);
            }
        }
        self.fifo.push_back(e);
        let i = self.sorted.partition_point(|x| *x < e);
        self.sorted.insert(i, e);
    }
    fn quantile(&self, q: f64) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        let pos = q * (self.sorted.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = pos.ceil() as usize;
        let f = pos - lo as f64;
        self.sorted[lo] * (1.0 - f) + self.sorted[hi] * f
    }
}

#[derive(Default, Clone)]
struct Acc {
    abs: f64,
    actual: f64,
    pinball: f64,
    covered: usize,
    n: usize,
}

impl Acc {
    fn add(&mut self, y: f64, point: f64, q10: f64, q90: f64) {
        self.abs += (y - point).abs();
        self.actual += y.abs();
        self.pinball += 0.5 * (pinball(y, q10, 0.1) + pinball(y, q90, 0.9));
        if y >= q10 && y <= q90 {
            self.covered += 1;
        }
        self.n += 1;
    }
}

/// Pinball (quantile) loss of quantile `q` at level `tau` for outcome `y`.
pub fn pinball(y: f64, q: f64, tau: f64) -> f64 {
    if y >= q {
        tau * (y - q)
    } else {
        (1.0 - tau) * (q - y)
    }
}

/// Point forecasts of the baselines for target index `target` made at origin
/// index `origin` (`origin < target`), in [`METHODS`] order without the model.
/// When a needed value is missing the baseline falls back to the last
/// observed value at the origin (naive).
pub fn baseline_points(
    values: &[Option<f64>],
    origin: usize,
    target: usize,
    spd: usize,
) -> Option<[f64; 4]> {
    let naive = values[..=origin].iter().rev().find_map(|v| *v)?;
    let back = |lag: usize| -> Option<f64> {
        let i = target.checked_sub(lag)?;
        if i > origin {
            return None;
        }
        values[i]
    };
    let yesterday = back(spd).unwrap_or(naive);
    let week = back(7 * spd).unwrap_or(naive);
    let past: Vec<f64> = (1..=4).filter_map(|k| back(7 * spd * k)).collect();
    let mean4 = if past.is_empty() {
        naive
    } else {
        past.iter().sum::<f64>() / past.len() as f64
    };
    Some([naive, yesterday, week, mean4])
}

/// In-sample mean absolute error of the daily seasonal naive over `values[..end]`.
pub fn seasonal_naive_scale(values: &[Option<f64>], end: usize, spd: usize) -> Option<f64> {
    let mut sum = 0.0;
    let mut n = 0usize;
    for i in spd..end.min(values.len()) {
        if let (Some(a), Some(b)) = (values[i], values[i - spd]) {
            sum += (a - b).abs();
            n += 1;
        }
    }
    (n > 0 && sum > 0.0).then(|| sum / n as f64)
}

fn format_slot(slot: i64, step: u32) -> String {
    chrono::DateTime::from_timestamp(slot * i64::from(step), 0)
        .map(|d| d.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Evaluate on an already loaded series.
pub fn evaluate_series(
    series: &Series,
    data: &Path,
    value_column: &str,
    horizons: &[u32],
    config: &ForecasterConfig,
) -> Result<EvalReport, EvalError> {
    let values = &series.values;
    let n = values.len();
    let step = series.step_s;
    let spd = ((86_400 / u64::from(step)).max(1)) as usize;
    let per_hour = (3600u32.div_ceil(step)).max(1);
    let mut horizons: Vec<u32> = if horizons.is_empty() {
        vec![1, per_hour]
    } else {
        horizons.iter().map(|h| (*h).max(1)).collect()
    };
    horizons.dedup();
    let too_little = |reason: String| EvalError::TooLittleData {
        path: data.to_path_buf(),
        reason,
    };
    // The test part: the last 20 % of the slots (of the regular grid).
    let observed = values.iter().filter(|v| v.is_some()).count();
    if observed < 10 {
        return Err(too_little(format!("only {observed} observations")));
    }
    let test_start = (n * 4) / 5;
    let scale = seasonal_naive_scale(values, test_start, spd).ok_or_else(|| {
        too_little(
            "the MASE scale is undefined: no pair of values one day apart before the test \
             part, or the daily seasonal naive is exact there"
                .into(),
        )
    })?;
    let max_h = *horizons.iter().max().unwrap_or(&1) as usize;
    let window = (28 * spd).clamp(50, 2000);
    // errors[h][method] and accumulators.
    let mut windows: Vec<Vec<ErrorWindow>> = horizons
        .iter()
        .map(|_| (0..4).map(|_| ErrorWindow::new(window)).collect())
        .collect();
    let mut accs: Vec<Vec<Acc>> = vec![vec![Acc::default(); METHODS.len()]; horizons.len()];
    // pending baseline forecasts: by target index, per horizon, per method.
    let mut pending: Vec<std::collections::VecDeque<(usize, [f64; 4])>> =
        vec![Default::default(); horizons.len()];
    let mut model = Forecaster::new(config.clone());
    for origin in 0..n {
        let t_s = (series.first_slot + origin as i64) * i64::from(step);
        model.update(t_s, values[origin]);
        // Reveal baseline errors for forecasts whose target is this slot.
        for (hi, queue) in pending.iter_mut().enumerate() {
            while let Some((target, pts)) = queue.front() {
                if *target > origin {
                    break;
                }
                if *target == origin {
                    if let Some(y) = values[origin] {
                        for (m, p) in pts.iter().enumerate() {
                            windows[hi][m].push(y - p);
                        }
                    }
                }
                queue.pop_front();
            }
        }
        if values[..=origin].iter().all(|v| v.is_none()) {
            continue;
        }
        for (hi, &h) in horizons.iter().enumerate() {
            let target = origin + h as usize;
            if target >= n {
                continue;
            }
            let Some(pts) = baseline_points(values, origin, target, spd) else {
                continue;
            };
            pending[hi].push_back((target, pts));
            if target < test_start {
                continue;
            }
            let Some(y) = values[target] else { continue };
            let f = model.forecast(h);
            accs[hi][0].add(y, f.point, f.q10, f.q90);
            for (m, p) in pts.iter().enumerate() {
                let w = &windows[hi][m];
                accs[hi][m + 1].add(y, *p, p + w.quantile(0.1), p + w.quantile(0.9));
            }
        }
    }
    let _ = max_h;
    let mut reports = Vec::new();
    for (hi, &h) in horizons.iter().enumerate() {
        let methods: Vec<MethodScore> = accs[hi]
            .iter()
            .zip(METHODS)
            .map(|(a, name)| {
                let nn = a.n.max(1) as f64;
                MethodScore {
                    method: name.to_string(),
                    mase: a.abs / nn / scale,
                    wape: if a.actual > 0.0 {
                        a.abs / a.actual
                    } else {
                        f64::NAN
                    },
                    pinball: a.pinball / nn,
                    pinball_scaled: a.pinball / nn / scale,
                    coverage_80: a.covered as f64 / nn,
                }
            })
            .collect();
        let best = methods[1..]
            .iter()
            .min_by(|a, b| a.mase.total_cmp(&b.mase))
            .expect("four baselines");
        reports.push(HorizonReport {
            horizon_steps: h,
            horizon_s: u64::from(h) * u64::from(step),
            targets: accs[hi][0].n,
            best_baseline: best.method.clone(),
            model_mase_improvement: 1.0 - methods[0].mase / best.mase,
            methods,
        });
    }
    let missing = values.iter().filter(|v| v.is_none()).count();
    Ok(EvalReport {
        data: data.display().to_string(),
        value_column: value_column.to_string(),
        rows_read: series.rows_read,
        blank_values_dropped: series.blank_values,
        duplicate_slots_dropped: series.duplicate_slots,
        step_s: step,
        slots: n,
        missing_slots: missing,
        test_start: format_slot(series.first_slot + test_start as i64, step),
        test_end: format_slot(series.first_slot + n as i64 - 1, step),
        mase_scale: scale,
        horizons: reports,
    })
}
