//! Forecaster behaviour on synthetic series with known answers.

use lamplighter_forecast::{Forecast, Forecaster, ForecasterConfig};

const DAY: i64 = 86_400;
/// 2024-01-01 00:00 local, a Monday.
const T0: i64 = 1_704_067_200;

/// Small deterministic generator (no dependency, reproducible).
struct Lcg(u64);
impl Lcg {
    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64) / ((1u64 << 53) as f64)
    }
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform().max(1e-12), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    fn poisson(&mut self, mean: f64) -> f64 {
        let l = (-mean).exp();
        let (mut k, mut p) = (0.0, 1.0);
        loop {
            p *= self.uniform();
            if p <= l {
                return k;
            }
            k += 1.0;
        }
    }
}

fn daily_sine(t: i64) -> f64 {
    let tod = t.rem_euclid(DAY) as f64 / DAY as f64;
    100.0 + 60.0 * (2.0 * std::f64::consts::PI * tod).sin()
}

fn rel_err(f: Forecast, y: f64) -> f64 {
    (f.point - y).abs() / y.abs().max(1.0)
}

#[test]
fn pure_daily_sine_is_learnt() {
    for step in [300u32, 600, 1800, 3600] {
        let mut m = Forecaster::new(ForecasterConfig::for_step(step));
        let step_i = i64::from(step);
        let n = 21 * DAY / step_i;
        let h_hour = (3600 / step) as i64;
        let mut worst: f64 = 0.0;
        for i in 0..n {
            let t = T0 + i * step_i;
            m.update(t, Some(daily_sine(t)));
            if i > 14 * DAY / step_i {
                for h in [1, h_hour] {
                    let target = t + h * step_i;
                    worst = worst.max(rel_err(m.forecast(h as u32), daily_sine(target)));
                }
            }
        }
        assert!(worst < 0.02, "step {step}: worst relative error {worst}");
    }
}

#[test]
fn quantiles_bracket_the_point_and_cover_about_80_percent() {
    let step = 600;
    let mut m = Forecaster::new(ForecasterConfig::for_step(step));
    let mut rng = Lcg(7);
    let (mut inside, mut total) = (0, 0);
    let n = 60 * DAY / 600;
    let mut prev: Option<Forecast> = None;
    for i in 0..n {
        let t = T0 + i * 600;
        let y = (daily_sine(t) * (1.0 + 0.1 * rng.normal())).max(0.0);
        if let Some(f) = prev {
            if i > 20 * DAY / 600 {
                total += 1;
                if y >= f.q10 && y <= f.q90 {
                    inside += 1;
                }
            }
        }
        m.update(t, Some(y));
        let f = m.forecast(1);
        assert!(f.q10 <= f.point && f.point <= f.q90, "{f:?}");
        prev = Some(f);
    }
    let coverage = inside as f64 / total as f64;
    assert!((0.75..=0.85).contains(&coverage), "coverage {coverage}");
}

#[test]
fn level_shift_is_tracked() {
    let step = 600i64;
    let mut m = Forecaster::new(ForecasterConfig::for_step(600));
    let shift_at = T0 + 21 * DAY;
    let y = |t: i64| {
        if t >= shift_at {
            2.0 * daily_sine(t)
        } else {
            daily_sine(t)
        }
    };
    let mut t = T0;
    while t < shift_at + 3 * 3600 {
        m.update(t, Some(y(t)));
        t += step;
    }
    // Three hours after doubling, the next slot is forecast within 10 %.
    let e = rel_err(m.forecast(1), y(t));
    assert!(e < 0.10, "3 h after the shift: relative error {e}");
    while t < shift_at + 3 * DAY {
        m.update(t, Some(y(t)));
        t += step;
    }
    let e1 = rel_err(m.forecast(1), y(t));
    let e6 = rel_err(m.forecast(6), y(t + 5 * step));
    assert!(e1 < 0.03 && e6 < 0.05, "3 days after: {e1} {e6}");
}

#[test]
fn missing_samples_and_long_holes_do_not_break_it() {
    let step = 300i64;
    let mut m = Forecaster::new(ForecasterConfig::for_step(300));
    let mut rng = Lcg(3);
    let n = 28 * DAY / step;
    let hole = (10 * DAY / step)..(13 * DAY / step + 40);
    let mut errors = Vec::new();
    for i in 0..n {
        let t = T0 + i * step;
        let missing = rng.uniform() < 0.5 || hole.contains(&i);
        // Missing samples arrive either as None or not at all.
        if missing {
            if i % 2 == 0 {
                m.update(t, None);
            }
        } else {
            m.update(t, Some(daily_sine(t)));
        }
        let f = m.forecast(12);
        assert!(
            f.point.is_finite() && f.q10.is_finite() && f.q90.is_finite(),
            "{f:?}"
        );
        assert!(f.q10 <= f.point && f.point <= f.q90);
        if i > 20 * DAY / step && !missing {
            errors.push(rel_err(m.forecast(1), daily_sine(t + step)));
        }
    }
    let mean = errors.iter().sum::<f64>() / errors.len() as f64;
    assert!(
        mean < 0.03,
        "mean relative error with half the samples missing: {mean}"
    );
}

#[test]
fn near_zero_counts_give_non_negative_forecasts_and_sane_quantiles() {
    let step = 600i64;
    let mut m = Forecaster::new(ForecasterConfig::for_step(600));
    let mut rng = Lcg(11);
    // Poisson counts with a mean between 0.2 (night) and 1.2 (day).
    let mean = |t: i64| 0.2 + (daily_sine(t) - 40.0) / 120.0;
    let (mut inside, mut total, mut abs_err) = (0usize, 0usize, 0.0);
    let mut prev: Option<Forecast> = None;
    for i in 0..(28 * DAY / step) {
        let t = T0 + i * step;
        let y = rng.poisson(mean(t));
        if let (Some(f), true) = (prev, i > 14 * DAY / step) {
            total += 1;
            inside += usize::from(y >= f.q10 && y <= f.q90);
            abs_err += (y - f.point).abs();
        }
        m.update(t, Some(y));
        for h in 1..=6 {
            let f = m.forecast(h);
            assert!(f.q10 >= 0.0 && f.point >= 0.0, "{f:?}");
            assert!(f.q10 <= f.point && f.point <= f.q90, "{f:?}");
            assert!(
                i < 7 * DAY / step || f.q90 < 10.0,
                "slot {i} h {h}: q90 too wide: {f:?}"
            );
        }
        prev = Some(m.forecast(1));
    }
    let coverage = inside as f64 / total as f64;
    // Discrete counts: many outcomes sit exactly on a bound, so "inside" runs high.
    assert!((0.75..=0.97).contains(&coverage), "coverage {coverage}");
    // The best possible MAE (the Poisson median) is about 0.6 here.
    let mae = abs_err / total as f64;
    assert!(mae < 0.8, "mean absolute error {mae}");
    // All-zero series: everything stays exactly at zero or a small positive upper quantile.
    let mut z = Forecaster::new(ForecasterConfig::for_step(600));
    for i in 0..(7 * DAY / step) {
        z.update(T0 + i * step, Some(0.0));
    }
    let f = z.forecast(1);
    assert_eq!(f.point, 0.0);
    assert_eq!(f.q10, 0.0);
    assert!(f.q90 < 1.0, "{f:?}");
}

#[test]
fn weekly_shape_is_learnt() {
    // Weekdays 100, weekends 30, at 30-minute steps.
    let step = 1800i64;
    let y = |t: i64| {
        let dow = ((t.div_euclid(DAY)) + 3).rem_euclid(7); // 0 = Monday
        if dow >= 5 {
            30.0
        } else {
            100.0
        }
    };
    let mut m = Forecaster::new(ForecasterConfig::for_step(1800));
    // Five weeks, stopping at Friday 23:30 before the weekend.
    let end = T0 + 4 * 7 * DAY + 5 * DAY - step;
    let mut t = T0;
    while t <= end {
        m.update(t, Some(y(t)));
        t += step;
    }
    // The forecast made at Friday 23:30 for Saturday 00:30 (2 steps) drops to the weekend level.
    let f = m.forecast(2);
    assert!((f.point - 30.0).abs() < 15.0, "Saturday forecast {f:?}");
}

#[test]
fn clock_changes_do_not_break_it() {
    let step = 600i64;
    let mut m = Forecaster::new(ForecasterConfig::for_step(600));
    let mut t = T0;
    let end = T0 + 14 * DAY;
    let spring = T0 + 10 * DAY + 2 * 3600; // local 02:00 jumps to 03:00
    let autumn = T0 + 12 * DAY + 2 * 3600; // local 02:00 goes back to 01:00
    let mut repeated = false;
    while t < end {
        if t == spring {
            t += 3600; // an hour that does not exist locally
        }
        m.update(t, Some(daily_sine(t)));
        if t + step == autumn && !repeated {
            repeated = true;
            t -= 3600; // the hour 01:00-02:00 comes again; ignored
        }
        t += step;
        let f = m.forecast(1);
        assert!(f.point.is_finite() && f.point >= 0.0);
    }
    assert!(rel_err(m.forecast(1), daily_sine(t)) < 0.05);
    assert_eq!(m.last_time(), Some(t - step));
}

#[test]
fn state_fits_in_8_kb_and_round_trips() {
    for step in [60u32, 300, 600, 900, 1800, 3600] {
        let mut m = Forecaster::new(ForecasterConfig::for_step(step));
        for i in 0..(3 * DAY / i64::from(step)) {
            let t = T0 + i * i64::from(step);
            m.update(t, Some(daily_sine(t)));
        }
        let bytes = m.state_bytes();
        eprintln!("step {step} s: state {bytes} bytes");
        assert!(bytes <= 8 * 1024, "step {step}: state is {bytes} bytes");
        let json = serde_json::to_string(&m).expect("serialises");
        let back: Forecaster = serde_json::from_str(&json).expect("deserialises");
        for h in 1..=12 {
            assert_eq!(back.forecast(h), m.forecast(h));
        }
        let mut a = m.clone();
        let mut b = back;
        a.update(T0 + 3 * DAY, Some(50.0));
        b.update(T0 + 3 * DAY, Some(50.0));
        assert_eq!(a.forecast(1), b.forecast(1));
    }
}

#[test]
fn no_data_means_zero_forecast_and_default_is_ten_minutes() {
    let m = Forecaster::new(ForecasterConfig::default());
    assert_eq!(m.config().step_s, 600);
    assert_eq!(m.config().max_horizon_steps, 6);
    assert_eq!(
        m.forecast(1),
        Forecast {
            point: 0.0,
            q10: 0.0,
            q90: 0.0
        }
    );
    let mut m = m;
    m.update(T0, None);
    assert_eq!(m.last_time(), None);
    m.update(T0, Some(f64::NAN));
    assert_eq!(m.samples_seen(), 0);
}
