//! `lamplighter lorawan decode` and `lamplighter gateways add` as an engineer runs them.

use crate::util::{bin, one_system_at_a_time, output, Run};

/// The binary with its logging off, so stderr holds only what it prints for the user.
fn quiet(args: &[&str]) -> Run {
    output(bin().args(args).env("RUST_LOG", "off"))
}

#[test]
fn decode_a_published_uplink_with_keys() {
    let Run {
        code, stdout: out, ..
    } = quiet(&[
        "lorawan",
        "decode",
        "--phy",
        "40f17dbe4900020001954378762b11ff0d",
        "--nwkskey",
        "44024241ed4ce9a68c6a8bc055233fd3",
        "--appskey",
        "ec925802ae430ca77fd3dd73cb2cc588",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["mtype"], "UnconfirmedDataUp");
    assert_eq!(v["dev_addr"], "49BE7DF1");
    assert_eq!(
        (v["fcnt"].as_u64(), v["fport"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(v["mic_ok"], true);
    assert_eq!(v["payload_hex"], "74657374");
    // Same frame as base64, wrong key: mic_ok false, still exit 0.
    let Run {
        code, stdout: out, ..
    } = quiet(&[
        "lorawan",
        "decode",
        "--base64",
        "QPF9vkkAAgABlUN4disR/w0=",
        "--nwkskey",
        "00112233445566778899aabbccddeeff",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["mic_ok"], false);
}

#[test]
fn decode_a_join_accept_and_our_own_status_report() {
    let Run {
        code, stdout: out, ..
    } = quiet(&[
        "lorawan",
        "decode",
        "--phy",
        "20493eeb51fba2116f810edb3742975142",
        "--appkey",
        "00112233445566778899aabbccddeeff",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["dev_addr"].as_str(), v["mic_ok"].as_bool()),
        (Some("02031980"), Some(true))
    );
    assert_eq!(v["join_nonce"], "570bc7");

    use lamplighter_protocol::lorawan::*;
    use lamplighter_protocol::payload::*;
    let keys = SessionKeys {
        nwk_s_key: AesKey([1; 16]),
        app_s_key: AesKey([2; 16]),
    };
    // Whatever the codec's current fields, a status-port uplink comes back decoded (or
    // with the codec's error), under "decoded".
    let frm_payload = vec![1u8; 22];
    let phy = encode_data_frame(
        &DataFrame {
            mtype: MType::UnconfirmedDataUp,
            dev_addr: lamplighter_protocol::DevAddr(0x2600_0001),
            fctrl: FCtrl::default(),
            fcnt: 70_000,
            fopts: vec![],
            fport: Some(FPORT_STATUS),
            frm_payload,
        },
        &keys,
    )
    .unwrap();
    let Run {
        code,
        stdout: out,
        stderr: err,
        ..
    } = quiet(&[
        "lorawan",
        "decode",
        "--phy",
        &hex::encode(&phy),
        "--nwkskey",
        &"01".repeat(16),
        "--appskey",
        &"02".repeat(16),
        "--fcnt",
        "70000",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["mic_ok"], true);
    assert!(v["decoded"].is_object(), "{v}");
    assert_eq!(v["payload_hex"], "01".repeat(22));
}

#[test]
fn bad_input_is_one_line_and_exit_code_1() {
    for args in [
        &["lorawan", "decode", "--phy", "zz"][..],
        &[
            "lorawan",
            "decode",
            "--phy",
            "40f17dbe490f020001954378762b11ff0d",
        ],
        &["lorawan", "decode", "--phy", "40f1"],
        &["lorawan", "decode", "--phy", &"40".repeat(256)],
        &["lorawan", "decode", "--base64", "@@@"],
        &[
            "lorawan",
            "decode",
            "--phy",
            "40f17dbe4900020001954378762b11ff0d",
            "--nwkskey",
            "short",
        ],
        &[
            "lorawan",
            "decode",
            "--phy",
            "40f17dbe4900020001954378762b11ff0d",
            "--fcnt",
            "3",
        ],
    ] {
        let Run {
            code,
            stdout: out,
            stderr: err,
            ..
        } = quiet(args);
        assert_eq!(code, 1, "{args:?}: {out} {err}");
        assert!(out.is_empty());
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with("lamplighter: "), "{err}");
    }
}

#[test]
fn gateways_add_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let Run {
        code,
        stdout: out,
        stderr: err,
        ..
    } = quiet(&[
        "gateways",
        "add",
        "--eui",
        "aa555a0000000101",
        "--data-dir",
        d,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"added\":true"));
    let Run { stdout: out, .. } = quiet(&["gateways", "list", "--data-dir", d]);
    assert_eq!(out.trim(), "AA555A0000000101");
    let Run {
        code, stderr: err, ..
    } = quiet(&["gateways", "add", "--eui", "nope", "--data-dir", d]);
    assert_eq!(code, 1);
    assert!(err.contains("gateway EUI"), "{err}");
}

/// The whole LoRaWAN path in the demo: nodes' radio frames reach two simulated gateways,
/// which forward them over real UDP to the bridge; the network server checks and
/// de-duplicates them and the controller receives them; its commands go back as PULL_RESP
/// to the gateways and over the air to the nodes. At midnight `part-night` dims every lamp
/// of a zone alike, and the network server sends each zone one group frame.
#[test]
fn demo_over_lorawan_runs_the_town_through_simulated_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    // 23:59:00 UTC at the demo town (Bristol, UTC+0 in December); at 10x, every node has
    // reported and been commanded well before midnight comes, 6 s into the run.
    let _system = one_system_at_a_time();
    let Run {
        code,
        stdout: out,
        stderr: err,
        ..
    } = quiet(&[
        "demo",
        "--transport",
        "lorawan",
        "--gateways",
        "2",
        "--lamps",
        "120",
        "--policy",
        "part-night",
        "--mqtt-port",
        "0",
        "--http-port",
        "0",
        "--data-dir",
        data_dir,
        "--speed",
        "10",
        "--for",
        "12s",
        "--report-interval-s",
        "60",
        "--start",
        "1734825540",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert_eq!(
        v["lamps_online"], 120,
        "every node reached the controller by radio: {v}"
    );
    assert_eq!(v["rejected"], 0);
    let ns = &v["lorawan"]["bridge"]["network_server"];
    let accepted = ns["uplinks_accepted"].as_u64().unwrap();
    assert!(accepted >= 120, "{ns}");
    // A frame or two may still be in the de-duplication window when the run stops.
    let unique = ns["unique_frames"].as_u64().unwrap();
    assert!((accepted..=accepted + 5).contains(&unique), "{ns}");
    assert_eq!(
        ns["duplicates"].as_u64().unwrap(),
        unique,
        "each frame heard by both gateways, kept once: {ns}"
    );
    assert!(
        ns["coalesced_downlinks"].as_u64().unwrap() >= 120,
        "midnight by zone: {ns}"
    );
    assert!(ns["multicast_transmissions"].as_u64().unwrap() > 0, "{ns}");
    for g in v["lorawan"]["gateways"].as_array().unwrap() {
        assert!(g["frames_forwarded"].as_u64().unwrap() >= 120, "{g}");
        assert!(g["downlinks_received"].as_u64().unwrap() > 0, "{g}");
    }
    // The nodes applied the midnight step: part-night dims to 50 %.
    let mean = v["mean_level_pct"].as_f64().unwrap();
    assert!(
        (40.0..=60.0).contains(&mean),
        "mean level {mean} after midnight: {v}"
    );
}
