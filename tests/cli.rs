//! The `lamplighter` binary as a user runs it: exit codes, the one clear line on failure,
//! the demo's JSON line, and `nodes export` against a store the running demo is using.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{bin, one_system_at_a_time};

fn lamplighter() -> Command {
    let mut c = bin();
    c.env("RUST_LOG", "warn");
    c
}

#[test]
fn demo_runs_a_town_and_nodes_export_works_while_it_runs() {
    let _system = one_system_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut demo = lamplighter()
        .args([
            "demo",
            "--lamps",
            "60",
            "--mqtt-port",
            "0",
            "--http-port",
            "0",
        ])
        .args(["--speed", "30", "--for", "12s", "--start", "1734818400"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // While the demo runs, an installer exports the provisioned nodes.
    let start = Instant::now();
    let csv = loop {
        let out = lamplighter()
            .args(["nodes", "export", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        if out.status.success() && text.lines().count() == 61 {
            break text;
        }
        let demo_ended = demo.try_wait().unwrap().is_some();
        if demo_ended || start.elapsed() > Duration::from_secs(60) {
            let _ = demo.kill();
            let demo_out = demo.wait_with_output().unwrap();
            panic!(
                "export never saw 60 nodes (demo ended by itself: {demo_ended}): {text}{}\n\
                 demo's stderr: {}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&demo_out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let header = csv.lines().next().unwrap();
    for column in [
        "node_id",
        "dev_eui",
        "dev_addr",
        "zone",
        "latitude",
        "longitude",
        "mqtt_username",
        "mqtt_password",
        "nwk_s_key",
        "app_s_key",
        "uplink_topic",
        "command_topic",
    ] {
        assert!(
            header.split(',').any(|c| c == column),
            "missing {column}: {header}"
        );
    }

    let out = demo.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["lamps"], 60);
    assert!(line["lamps_online"].as_u64().unwrap() >= 55, "{line}");
    assert!(line["uplinks"].as_u64().unwrap() >= 60, "{line}");
    assert!(line["commands"].as_u64().unwrap() >= 60, "{line}");
    assert_eq!(line["rejected"], 0, "{line}");
    assert!(line["energy_wh"].as_f64().unwrap() > 0.0, "{line}");
}

#[test]
fn failures_print_one_clear_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(
        &bad_config,
        "mqtt_listen = \"127.0.0.1:1883\"\nno_such_key = 1\n",
    )
    .unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "nodes".into(),
                "export".into(),
                "--data-dir".into(),
                dir.path().join("none").display().to_string(),
            ],
            "no store in",
        ),
        (
            vec![
                "serve".into(),
                "--config".into(),
                bad_config.display().to_string(),
            ],
            "no_such_key",
        ),
        (
            vec![
                "forecast".into(),
                "eval".into(),
                "--data".into(),
                "/nonexistent/series.csv".into(),
                "--time-column".into(),
                "t".into(),
                "--value-column".into(),
                "v".into(),
                "--time-format".into(),
                "%Y".into(),
            ],
            "/nonexistent/series.csv",
        ),
        (vec!["demo".into(), "--lamps".into(), "0".into()], "--lamps"),
        (
            vec![
                "demo".into(),
                "--speed".into(),
                "0".into(),
                "--lamps".into(),
                "1".into(),
            ],
            "--speed",
        ),
    ];
    for (args, expect) in cases {
        let out = lamplighter().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or("");
        assert!(
            last.starts_with("lamplighter: ") && last.contains(expect),
            "{args:?}: {stderr}"
        );
    }
}
