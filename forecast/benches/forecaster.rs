//! Cost of one update plus the forecasts the controller asks for, per series.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use lamplighter_forecast::{Forecaster, ForecasterConfig};

fn warmed(step: u32) -> (Forecaster, i64) {
    let mut m = Forecaster::new(ForecasterConfig::for_step(step));
    let mut t = 1_704_067_200i64;
    for i in 0..(14 * 86_400 / i64::from(step)) {
        let tod = (t % 86_400) as f64 / 86_400.0;
        let y = 50.0 + 40.0 * (std::f64::consts::TAU * tod).sin() + (i % 7) as f64;
        m.update(t, Some(y));
        t += i64::from(step);
    }
    (m, t)
}

fn bench(c: &mut Criterion) {
    for step in [300u32, 600, 3600] {
        let (mut m, mut t) = warmed(step);
        let horizons = m.config().max_horizon_steps;
        c.bench_function(
            &format!("update+forecast 1..={horizons} steps, step {step} s"),
            |b| {
                b.iter(|| {
                    m.update(black_box(t), black_box(Some(42.0)));
                    t += i64::from(step);
                    let mut acc = 0.0;
                    for h in 1..=horizons {
                        acc += m.forecast(h).point;
                    }
                    black_box(acc)
                })
            },
        );
        let (m, _) = warmed(step);
        c.bench_function(&format!("forecast 1 step, step {step} s"), |b| {
            b.iter(|| black_box(m.forecast(black_box(1))))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
