//! Evaluate the forecaster on a CSV series and print the JSON report.
//!
//! ```text
//! cargo run -p lamplighter-forecast --release --example eval -- \
//!     --data ../shared/data/demand/nyc_taxi.csv --time-column timestamp \
//!     --value-column value --time-format "%Y-%m-%d %H:%M:%S" [--horizon STEPS]...
//! ```
//! `--table` prints a compact table instead of JSON.

use lamplighter_forecast::{evaluate_with, EvalOptions, ForecasterConfig};
use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: eval --data FILE.csv [--time-column NAME] [--value-column NAME] \
         [--time-format FMT] [--horizon STEPS]... [--table]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut data = None;
    let mut time_column = "timestamp".to_string();
    let mut value_column = "value".to_string();
    let mut time_format = "%Y-%m-%d %H:%M:%S".to_string();
    let mut horizons = Vec::new();
    let mut table = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--table" {
            table = true;
            continue;
        }
        let Some(value) = args.next() else {
            return usage();
        };
        match flag.as_str() {
            "--data" => data = Some(PathBuf::from(value)),
            "--time-column" => time_column = value,
            "--value-column" => value_column = value,
            "--time-format" => time_format = value,
            "--horizon" => match value.parse() {
                Ok(h) => horizons.push(h),
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }
    let Some(data) = data else {
        return usage();
    };
    let opts = EvalOptions {
        data,
        time_column,
        value_column,
        time_format,
        horizons,
    };
    // Development knobs: FORECAST_<FIELD>=value overrides a config field.
    let config = |step: u32| {
        let mut c = ForecasterConfig::for_step(step);
        let get = |k: &str| {
            std::env::var(format!("FORECAST_{k}"))
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
        };
        if let Some(v) = get("LOG_OFFSET") {
            c.log_offset = v;
        }
        if let Some(v) = get("DAY_ALPHA") {
            c.day_alpha = v;
        }
        if let Some(v) = get("WEEK_ALPHA") {
            c.week_alpha = v;
        }
        if let Some(v) = get("LEVEL_HALF_LIFE_S") {
            c.level_half_life_s = v;
        }
        if let Some(v) = get("RLS_MEMORY_S") {
            c.rls_memory_s = v;
        }
        if let Some(v) = get("SCALE_ALPHA") {
            c.scale_alpha = v;
        }
        if let Some(v) = get("QUANTILE_RATE") {
            c.quantile_rate = v;
        }
        if let Some(v) = get("CLIP_SCALES") {
            c.clip_scales = v;
        }
        c
    };
    match evaluate_with(&opts, config) {
        Ok(report) => {
            if table {
                println!(
                    "{} step {} s, test from {}, scale {:.3}, blanks {}, dups {}, missing {}/{}",
                    report.data,
                    report.step_s,
                    report.test_start,
                    report.mase_scale,
                    report.blank_values_dropped,
                    report.duplicate_slots_dropped,
                    report.missing_slots,
                    report.slots
                );
                for h in &report.horizons {
                    println!(
                        "  h={} ({} s), {} targets, improvement vs {}: {:.1} %",
                        h.horizon_steps,
                        h.horizon_s,
                        h.targets,
                        h.best_baseline,
                        100.0 * h.model_mase_improvement
                    );
                    for m in &h.methods {
                        println!("    {:<24} MASE {:.3}  WAPE {:.3}  pinball {:.3} (scaled {:.3})  cov80 {:.3}",
                            m.method, m.mase, m.wape, m.pinball, m.pinball_scaled, m.coverage_80);
                    }
                }
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serialises")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
