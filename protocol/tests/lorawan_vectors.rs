//! Published LoRaWAN 1.0.x vectors (`shared/lorawan/vectors.json`) through the public API.

use lamplighter_protocol::lorawan::{
    decode_data_frame, decrypt_join_accept, derive_session_keys, encode_data_frame, peek_header,
    AesKey, DataFrame, FCtrl, FrameError, MType, RustCryptoFactory, SessionKeys,
    MAX_PHY_PAYLOAD_LEN,
};
use lamplighter_protocol::DevAddr;
use lorawan_encoding::parser::{DataHeader, EncryptedDataPayload};
use serde_json::Value;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/lorawan/vectors.json"
);

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(VECTORS).unwrap_or_else(|e| {
        panic!("these tests need the LoRaWAN vectors file {VECTORS} (shared/lorawan/vectors.json next to the workspace): {e}")
    });
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{VECTORS} is not valid JSON: {e}"));
    v.as_array()
        .unwrap_or_else(|| panic!("{VECTORS} must hold a JSON array"))
        .clone()
}

fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("vector {}: field {field} missing", v["id"]))
}

fn bytes(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(s(v, field)).unwrap_or_else(|e| panic!("vector {}: {field}: {e}", v["id"]))
}

fn key(v: &Value, field: &str) -> AesKey {
    s(v, field)
        .parse()
        .unwrap_or_else(|e| panic!("vector {}: {field}: {e}", v["id"]))
}

fn mtype(name: &str) -> MType {
    match name {
        "UnconfirmedDataUp" => MType::UnconfirmedDataUp,
        "UnconfirmedDataDown" => MType::UnconfirmedDataDown,
        "ConfirmedDataUp" => MType::ConfirmedDataUp,
        "ConfirmedDataDown" => MType::ConfirmedDataDown,
        "JoinAccept" => MType::JoinAccept,
        other => panic!("unknown mtype {other}"),
    }
}

/// Reversed hex: the vectors show multi-byte ids big-endian; the API takes wire order.
fn wire<const N: usize>(v: &Value, field: &str) -> [u8; N] {
    let mut b = bytes(v, field);
    b.reverse();
    b.try_into()
        .unwrap_or_else(|_| panic!("vector {}: {field} is not {N} bytes", v["id"]))
}

struct DataVector {
    id: String,
    keys: SessionKeys,
    frame: DataFrame,
    phy: Vec<u8>,
}

fn data_vector(v: &Value) -> DataVector {
    let fctrl = bytes(v, "fctrl");
    assert_eq!(fctrl.len(), 1);
    assert_eq!(fctrl[0] & 0x0f, 0, "FOptsLen comes from fopts_hex");
    let fcnt = v["fcnt"].as_u64().expect("fcnt") as u32;
    let fport = v["fport"].as_u64().map(|p| p as u8);
    let phy = bytes(v, "phy_hex");
    assert_eq!(
        hex::encode(&phy[phy.len() - 4..]),
        s(v, "mic_hex"),
        "vector {}: mic_hex is the PHYPayload's last 4 bytes",
        v["id"]
    );
    DataVector {
        id: s(v, "id").to_string(),
        keys: SessionKeys {
            nwk_s_key: key(v, "nwkskey"),
            app_s_key: key(v, "appskey"),
        },
        frame: DataFrame {
            mtype: mtype(s(v, "mtype")),
            dev_addr: s(v, "devaddr").parse().expect("devaddr"),
            fctrl: FCtrl::from_byte(fctrl[0]),
            fcnt,
            fopts: bytes(v, "fopts_hex"),
            fport,
            frm_payload: bytes(v, "payload_hex"),
        },
        phy,
    }
}

fn check_on_air_vector(d: &DataVector) {
    let DataVector {
        id,
        keys,
        frame,
        phy,
    } = d;
    let header = peek_header(phy).unwrap_or_else(|e| panic!("{id}: peek: {e}"));
    assert_eq!(header.mtype, frame.mtype, "{id}");
    assert_eq!(header.dev_addr, frame.dev_addr, "{id}");
    assert_eq!(header.fcnt16, frame.fcnt as u16, "{id}");
    assert_eq!(usize::from(header.fopts_len), frame.fopts.len(), "{id}");

    let decoded =
        decode_data_frame(phy, keys, frame.fcnt).unwrap_or_else(|e| panic!("{id}: decode: {e}"));
    assert_eq!(decoded.mtype, frame.mtype, "{id}: mtype");
    assert_eq!(decoded.dev_addr, frame.dev_addr, "{id}: devaddr");
    assert_eq!(decoded.fcnt, frame.fcnt, "{id}: fcnt");
    assert_eq!(decoded.fport, frame.fport, "{id}: fport");
    assert_eq!(decoded.fopts, frame.fopts, "{id}: fopts");
    assert_eq!(decoded.fctrl, frame.fctrl, "{id}: fctrl");
    assert_eq!(
        hex::encode(&decoded.frm_payload),
        hex::encode(&frame.frm_payload),
        "{id}: payload"
    );
    assert_eq!(&decoded, frame, "{id}");

    let encoded = encode_data_frame(frame, keys).unwrap_or_else(|e| panic!("{id}: encode: {e}"));
    assert_eq!(hex::encode(&encoded), hex::encode(phy), "{id}: encode");

    for bit in 0..32 {
        let mut bad = phy.clone();
        let i = bad.len() - 4 + bit / 8;
        bad[i] ^= 1 << (bit % 8);
        assert_eq!(
            decode_data_frame(&bad, keys, frame.fcnt),
            Err(FrameError::BadMic),
            "{id}: MIC bit {bit} flipped"
        );
    }
    for high in [0x0001_0000u32, 0x8000_0000, 0xFFFF_0000] {
        assert_eq!(
            decode_data_frame(phy, keys, frame.fcnt ^ high),
            Err(FrameError::BadMic),
            "{id}: FCnt high bits {:#x}",
            frame.fcnt ^ high
        );
    }
    let mut bad_payload = phy.clone();
    bad_payload[1] ^= 0x80; // DevAddr
    assert_eq!(
        decode_data_frame(&bad_payload, keys, frame.fcnt),
        Err(FrameError::BadMic),
        "{id}: DevAddr altered"
    );
}

/// The 256-byte vector cannot go on air; the API refuses it both ways. Its crypto is still
/// checked with lorawan-encoding and this crate's [`RustCryptoFactory`].
fn check_oversized_vector(d: &DataVector) {
    let DataVector {
        id,
        keys,
        frame,
        phy,
    } = d;
    assert_eq!(
        peek_header(phy),
        Err(FrameError::TooLong { len: phy.len() }),
        "{id}"
    );
    assert_eq!(
        decode_data_frame(phy, keys, frame.fcnt),
        Err(FrameError::TooLong { len: phy.len() }),
        "{id}"
    );
    assert_eq!(
        encode_data_frame(frame, keys),
        Err(FrameError::PayloadTooLong {
            len: frame.frm_payload.len()
        }),
        "{id}"
    );
    let nwk = lorawan_encoding::keys::AES128(keys.nwk_s_key.0);
    let app = lorawan_encoding::keys::AES128(keys.app_s_key.0);
    let enc = EncryptedDataPayload::new_with_factory(phy.clone(), RustCryptoFactory)
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    assert!(enc.validate_mic(&nwk, frame.fcnt), "{id}: MIC");
    let dec = enc
        .decrypt(Some(&nwk), Some(&app), frame.fcnt)
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    let plain = dec.as_data_bytes();
    assert_eq!(
        hex::encode(&plain[9..plain.len() - 4]),
        hex::encode(&frame.frm_payload),
        "{id}: multi-block decryption"
    );
}

#[test]
fn every_data_vector() {
    let all = vectors();
    let mut on_air = 0;
    let mut oversized = 0;
    for v in all.iter().filter(|v| v["kind"] == "data") {
        let d = data_vector(v);
        if d.phy.len() > MAX_PHY_PAYLOAD_LEN {
            check_oversized_vector(&d);
            oversized += 1;
        } else {
            check_on_air_vector(&d);
            on_air += 1;
        }
    }
    assert!(
        on_air >= 7,
        "expected at least 7 on-air data vectors in {VECTORS}, found {on_air}"
    );
    assert!(oversized >= 1, "expected the 256-byte vector in {VECTORS}");
}

#[test]
fn join_accept_vector() {
    let all = vectors();
    let mut seen = 0;
    for v in all.iter().filter(|v| v["kind"] == "join_accept") {
        let id = s(v, "id");
        assert_eq!(mtype(s(v, "mtype")), MType::JoinAccept);
        let app_key = key(v, "appkey");
        let phy = bytes(v, "phy_hex");
        let ja = decrypt_join_accept(&phy, &app_key).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(
            ja.join_nonce,
            wire::<3>(v, "join_nonce"),
            "{id}: join_nonce"
        );
        assert_eq!(ja.net_id, wire::<3>(v, "net_id"), "{id}: net_id");
        let dev_addr: DevAddr = s(v, "devaddr").parse().expect("devaddr");
        assert_eq!(ja.dev_addr, dev_addr, "{id}: devaddr");
        assert_eq!(ja.dl_settings, bytes(v, "dl_settings")[0], "{id}");
        assert_eq!(
            u64::from(ja.rx_delay),
            v["rx_delay"].as_u64().expect("rx_delay")
        );
        assert_eq!(ja.cf_list, None, "{id}");

        // The decrypted PHYPayload shows the same fields in wire order.
        let plain = bytes(v, "payload_hex");
        assert_eq!(&plain[1..4], &ja.join_nonce);
        assert_eq!(&plain[4..7], &ja.net_id);
        assert_eq!(&plain[7..11], &ja.dev_addr.to_wire());

        let dev_nonce: [u8; 2] = bytes(v, "dev_nonce_wire").try_into().expect("dev nonce");
        let keys = derive_session_keys(&app_key, ja.join_nonce, ja.net_id, dev_nonce);
        assert_eq!(keys.nwk_s_key.to_string(), s(v, "nwkskey"), "{id}: NwkSKey");
        assert_eq!(keys.app_s_key.to_string(), s(v, "appskey"), "{id}: AppSKey");

        let mut bad = phy.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert_eq!(decrypt_join_accept(&bad, &app_key), Err(FrameError::BadMic));
        let wrong_key = AesKey([0; 16]);
        assert_eq!(
            decrypt_join_accept(&phy, &wrong_key),
            Err(FrameError::BadMic)
        );
        assert_eq!(
            decrypt_join_accept(&phy[..16], &app_key),
            Err(FrameError::TooShort { len: 16 })
        );
        assert!(matches!(
            peek_header(&phy),
            Err(FrameError::NotDataFrame(MType::JoinAccept))
        ));
        seen += 1;
    }
    assert!(seen >= 1, "no join_accept vector in {VECTORS}");
}
