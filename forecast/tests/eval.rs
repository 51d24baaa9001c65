//! Baselines, metrics and CSV handling of the evaluation on tiny hand-made data.

use lamplighter_forecast::{
    baseline_points, evaluate, evaluate_series, load_series, seasonal_naive_scale, EvalError,
    EvalOptions, ForecasterConfig, Series,
};
use std::path::{Path, PathBuf};

fn temp_csv(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lamplighter-forecast-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn opts(path: &Path) -> EvalOptions {
    EvalOptions {
        data: path.to_path_buf(),
        time_column: "time".into(),
        value_column: "count".into(),
        time_format: "%Y-%m-%d %H:%M".into(),
        horizons: vec![],
    }
}

/// Twelve-hour steps: a "day" is two slots, a "week" fourteen.
fn tiny_series() -> Series {
    Series {
        step_s: 43_200,
        first_slot: 0,
        values: [1.0, 3.0, 1.0, 3.0, 2.0, 4.0, 2.0, 4.0, 3.0, 5.0]
            .into_iter()
            .map(Some)
            .collect(),
        rows_read: 10,
        blank_values: 0,
        duplicate_slots: 0,
    }
}

#[test]
fn hand_computed_mase_of_the_baselines() {
    let s = tiny_series();
    // Test = last 20 % of 10 slots = slots 8 and 9 (values 3 and 5).
    // Scale: |v[i] - v[i-2]| for i in 2..8 = 0,0,1,1,0,0 -> 1/3.
    assert!((seasonal_naive_scale(&s.values, 8, 2).unwrap() - 1.0 / 3.0).abs() < 1e-12);
    let r = evaluate_series(
        &s,
        Path::new("tiny"),
        "v",
        &[1],
        &ForecasterConfig::for_step(43_200),
    )
    .unwrap();
    assert_eq!(r.horizons.len(), 1);
    let h = &r.horizons[0];
    assert_eq!(h.targets, 2);
    let by = |name: &str| h.methods.iter().find(|m| m.method == name).unwrap();
    // naive: forecasts 4 and 3 for 3 and 5 -> errors 1, 2 -> MAE 1.5 -> MASE 4.5, WAPE 3/8.
    assert!((by("naive_t-1").mase - 4.5).abs() < 1e-9);
    assert!((by("naive_t-1").wape - 0.375).abs() < 1e-9);
    // yesterday: forecasts 2 and 4 -> errors 1, 1 -> MASE 3.
    assert!((by("same_slot_yesterday").mase - 3.0).abs() < 1e-9);
    // No week of history: the weekly baselines fall back to naive.
    assert!((by("same_slot_last_week").mase - 4.5).abs() < 1e-9);
    assert!((by("mean_same_slot_4_weeks").mase - 4.5).abs() < 1e-9);
    assert_eq!(h.best_baseline, "same_slot_yesterday");
    assert!(r.mase_scale > 0.0);
}

#[test]
fn weekly_baselines_and_fallbacks() {
    // spd = 1: a week is 7 slots. values[i] = i, slot 20 missing.
    let mut v: Vec<Option<f64>> = (0..40).map(|i| Some(i as f64)).collect();
    v[20] = None;
    let p = baseline_points(&v, 33, 34, 1).unwrap();
    assert_eq!(p[0], 33.0); // naive
    assert_eq!(p[1], 33.0); // yesterday
    assert_eq!(p[2], 27.0); // last week
                            // mean of 27, 13, 6 (20 is missing)
    assert!((p[3] - (27.0 + 13.0 + 6.0) / 3.0).abs() < 1e-12);
    // last week missing -> naive at the origin
    let p = baseline_points(&v, 26, 27, 1).unwrap();
    assert_eq!(p[2], 26.0);
    // never peeks past the origin
    let p = baseline_points(&v, 30, 40 - 1, 7).unwrap();
    assert_eq!(p[1], 30.0);
}

#[test]
fn pinball_loss() {
    use lamplighter_forecast::pinball;
    assert!((pinball(10.0, 8.0, 0.9) - 1.8).abs() < 1e-12);
    assert!((pinball(10.0, 12.0, 0.9) - 0.2).abs() < 1e-12);
    assert!((pinball(10.0, 8.0, 0.1) - 0.2).abs() < 1e-12);
}

#[test]
fn csv_is_sorted_blanks_dropped_and_duplicates_keep_the_first() {
    let path = temp_csv(
        "dups.csv",
        "time,count,other\n\
         2024-01-01 02:00,5,x\n\
         2024-01-01 00:00,1,x\n\
         2024-01-01 01:00,,x\n\
         2024-01-01 03:00,7,x\n\
         2024-01-01 03:00,99,x\n\
         2024-01-01 04:00,9,x\n",
    );
    let s = load_series(&opts(&path)).unwrap();
    assert_eq!(s.step_s, 3600);
    assert_eq!(s.rows_read, 6);
    assert_eq!(s.blank_values, 1);
    assert_eq!(s.duplicate_slots, 1);
    assert_eq!(
        s.values,
        vec![Some(1.0), None, Some(5.0), Some(7.0), Some(9.0)]
    );
}

#[test]
fn missing_file_is_named() {
    let path = PathBuf::from("/nonexistent/where/demand.csv");
    let err = evaluate(&opts(&path)).unwrap_err();
    assert!(matches!(err, EvalError::MissingFile(_)));
    assert!(
        err.to_string().contains("/nonexistent/where/demand.csv"),
        "{err}"
    );
}

#[test]
fn missing_column_lists_the_available_ones() {
    let path = temp_csv("cols.csv", "when,total,west\n2024-01-01 00:00,1,2\n");
    let err = load_series(&opts(&path)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"time\"") && msg.contains("\"when\", \"total\", \"west\""),
        "{msg}"
    );
}

#[test]
fn unparseable_time_shows_the_line_and_value() {
    let path = temp_csv(
        "badtime.csv",
        "time,count\n2024-01-01 00:00,1\n01/02/2024 1am,2\n",
    );
    let err = load_series(&opts(&path)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("line 3") && msg.contains("01/02/2024 1am") && msg.contains("%Y-%m-%d %H:%M"),
        "{msg}"
    );
}

#[test]
fn non_numeric_value_is_reported() {
    let path = temp_csv(
        "badvalue.csv",
        "time,count\n2024-01-01 00:00,1\n2024-01-01 01:00,lots\n",
    );
    let msg = load_series(&opts(&path)).unwrap_err().to_string();
    assert!(msg.contains("line 3") && msg.contains("lots"), "{msg}");
}

#[test]
fn too_little_data_is_an_error_not_a_panic() {
    let path = temp_csv("one.csv", "time,count\n2024-01-01 00:00,1\n");
    assert!(matches!(
        load_series(&opts(&path)),
        Err(EvalError::TooLittleData { .. })
    ));
}

#[test]
fn evaluates_a_small_synthetic_file_end_to_end() {
    // Three weeks of 30-minute counts with a daily shape.
    let mut text = String::from("time,count\n");
    let start = chrono::NaiveDate::from_ymd_opt(2024, 3, 4)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    for i in 0..(21 * 48) {
        let t = start + chrono::Duration::minutes(30 * i);
        let tod = (i % 48) as f64 / 48.0;
        let jitter = ((i * 7919) % 5) as f64; // deterministic noise, 0..4
        let y = (50.0 + 40.0 * (2.0 * std::f64::consts::PI * tod).sin()).round() + jitter;
        text.push_str(&format!("{},{}\n", t.format("%Y-%m-%d %H:%M"), y));
    }
    let path = temp_csv("synthetic.csv", &text);
    let report = evaluate(&opts(&path)).unwrap();
    assert_eq!(report.step_s, 1800);
    let hs: Vec<u32> = report.horizons.iter().map(|h| h.horizon_steps).collect();
    assert_eq!(hs, vec![1, 2]);
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["horizons"][0]["methods"][0]["mase"].is_number());
    // A daily shape with small noise: the model is close to the noise floor.
    let model = &report.horizons[0].methods[0];
    assert!(model.mase < 1.0, "{model:?}");
    assert!(
        report.horizons[0].model_mase_improvement > 0.0,
        "{report:?}"
    );
}
