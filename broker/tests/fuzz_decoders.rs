//! Bounded fuzzing (proptest) of everything that reads bytes from the network: the GWMP
//! parser, the frame decoders, the payload codec and the external networks' JSON. Each must
//! return a typed error or a value, never panic. `cargo test` runs 2,000 cases of each;
//! `.ci/run` runs them again as a separate, longer smoke with `LAMPLIGHTER_FUZZ_CASES`.

use lamplighter_broker::external::{parse_uplink, NetworkKind};
use lamplighter_broker::gwmp;
use lamplighter_broker::gwmp::{GatewayEui, RxFrame};
use lamplighter_broker::netserver::{
    Activation, DeviceClass, DeviceProfile, NetworkServer, NsConfig,
};
use lamplighter_protocol::lorawan::radio::DataRate;
use lamplighter_protocol::lorawan::{self, AesKey, SessionKeys};
use lamplighter_protocol::payload::{Command, StatusReport};
use lamplighter_protocol::{DevAddr, DevEui, TenantId, UnixMs};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("LAMPLIGHTER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Mostly-valid datagrams: a right header with random tails, plus pure noise.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        (
            0u8..3,
            0u8..7,
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(v, t, tail)| {
                let mut d = vec![v, 1, 2, t];
                d.extend_from_slice(&[0xAA; 8]);
                d.extend(tail);
                d
            }),
        (0u8..7, "[\\[\\]{}\":,a-z0-9 ]{0,80}").prop_map(|(t, json)| {
            let mut d = vec![2, 1, 2, t];
            d.extend_from_slice(&[0xAA; 8]);
            d.extend_from_slice(format!("{{\"rxpk\":[{json}]}}").as_bytes());
            d
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn gwmp_parse_never_panics(d in datagram()) {
        let _ = gwmp::parse(&d);
    }

    #[test]
    fn frame_decoders_never_panic(phy in proptest::collection::vec(any::<u8>(), 0..300), fcnt in any::<u32>()) {
        let keys = SessionKeys { nwk_s_key: AesKey([1; 16]), app_s_key: AesKey([2; 16]) };
        let _ = lorawan::peek_header(&phy);
        let _ = lorawan::decode_data_frame(&phy, &keys, fcnt);
        let _ = lorawan::decrypt_join_accept(&phy, &AesKey([3; 16]));
        let _ = lorawan::decode_join_request(&phy, &AesKey([3; 16]));
    }

    #[test]
    fn data_frames_with_any_header_bytes_never_panic(mhdr in any::<u8>(), fctrl in any::<u8>(), rest in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut phy = vec![mhdr, 1, 2, 3, 4, fctrl, 0, 0];
        phy.extend(rest);
        let keys = SessionKeys { nwk_s_key: AesKey([1; 16]), app_s_key: AesKey([2; 16]) };
        let _ = lorawan::peek_header(&phy);
        let _ = lorawan::decode_data_frame(&phy, &keys, 0);
    }

    #[test]
    fn payload_codec_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = StatusReport::decode(&b);
        let _ = Command::decode(&b);
    }

    #[test]
    fn external_json_never_panics(s in "[\\[\\]{}\":,a-zA-Z0-9_ =+/]{0,200}") {
        let _ = parse_uplink(NetworkKind::Chirpstack, s.as_bytes());
        let _ = parse_uplink(NetworkKind::Tts, s.as_bytes());
    }

    #[test]
    fn external_json_of_almost_the_right_shape(eui in "[0-9a-fA-Fz]{0,17}", port in any::<i64>(), data in "[A-Za-z0-9+/=!]{0,40}", fcnt in any::<i64>()) {
        let cs = format!(r#"{{"deviceInfo":{{"devEui":"{eui}"}},"fCnt":{fcnt},"fPort":{port},"data":"{data}"}}"#);
        let _ = parse_uplink(NetworkKind::Chirpstack, cs.as_bytes());
        let tts = format!(r#"{{"end_device_ids":{{"dev_eui":"{eui}"}},"uplink_message":{{"f_cnt":{fcnt},"f_port":{port},"frm_payload":"{data}"}}}}"#);
        let _ = parse_uplink(NetworkKind::Tts, tts.as_bytes());
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn external_link_never_panics(
        topic in "(application/app/device/[0-9a-f]{16}/event/up|v3/app/devices/[a-z0-9-]{1,12}/up|lamplighter/t/down/[0-9A-F]{16}|[ -~]{0,40})",
        body in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        use lamplighter_broker::external_link::{ExternalAdapter, ExternalDevice, ExternalNetwork};
        for kind in [NetworkKind::Chirpstack, NetworkKind::Tts] {
            let mut a = ExternalAdapter::new(
                ExternalNetwork {
                    tenant: TenantId::new("t").unwrap(),
                    kind,
                    host: "h".into(),
                    port: 1883,
                    username: None,
                    password: None,
                    application: "app".into(),
                },
                [ExternalDevice {
                    dev_eui: DevEui(0x0011_2233_4455_6677),
                    dev_addr: DevAddr(1),
                    keys: SessionKeys { nwk_s_key: AesKey([1; 16]), app_s_key: AesKey([2; 16]) },
                }],
            );
            let _ = a.handle_uplink(&topic, &body);
            let _ = a.handle_downlink(&topic, &body);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random frames into the network server: counted, never a panic, never an uplink.
    #[test]
    fn network_server_survives_garbage(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..60), 1..20)) {
        let d = DeviceProfile {
            tenant: TenantId::new("t").unwrap(),
            dev_eui: DevEui(1),
            class: DeviceClass::C,
            dev_addr: DevAddr(0x0403_0201),
            app_keys: SessionKeys { nwk_s_key: AesKey([1; 16]), app_s_key: AesKey([2; 16]) },
            activation: Activation::Otaa { join_eui: DevEui(2), app_key: AesKey([3; 16]) },
            last_fcnt_up: None,
        };
        let mut ns = NetworkServer::new(NsConfig::default(), vec![d]).unwrap();
        let t0 = UnixMs(1_000_000);
        for (i, phy) in frames.iter().enumerate() {
            ns.handle_rx(t0.plus_ms(i as u64), GatewayEui(9), RxFrame {
                phy: phy.clone(), tmst: 0, freq_hz: 868_100_000,
                datr: DataRate::eu868(5).unwrap(), rssi_dbm: -100, snr_db: 0.0,
            });
            let _ = ns.handle_downlink(t0, &TenantId::new("t").unwrap(), DevEui(1), phy, lamplighter_broker::netserver::Priority::Normal);
            let _ = ns.handle_multicast(t0, &TenantId::new("t").unwrap(), phy, lamplighter_broker::netserver::Priority::High);
        }
        ns.handle_timeout(t0.plus_ms(60_000));
        prop_assert!(ns.poll_uplink().is_none());
    }
}
