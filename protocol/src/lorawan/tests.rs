use proptest::prelude::*;

use super::*;

fn keys() -> SessionKeys {
    SessionKeys {
        nwk_s_key: AesKey([0x02; 16]),
        app_s_key: AesKey([0x01; 16]),
    }
}

fn frame() -> DataFrame {
    DataFrame {
        mtype: MType::ConfirmedDataUp,
        dev_addr: DevAddr(0x0102_0304),
        fctrl: FCtrl {
            adr: true,
            ..FCtrl::default()
        },
        fcnt: 0x0001_2345,
        fopts: vec![0x02],
        fport: Some(10),
        frm_payload: b"lamp 42 on".to_vec(),
    }
}

// ---- rebuild_fcnt ----

#[test]
fn rebuild_fcnt_table() {
    use FrameError::Replay;
    let cases: &[(Option<u32>, u16, Result<u32, FrameError>)] = &[
        // fresh session: take the counter as it is
        (None, 0, Ok(0)),
        (None, 7, Ok(7)),
        (None, 0xFFFF, Ok(0xFFFF)),
        // advance
        (Some(0), 1, Ok(1)),
        (Some(5), 6, Ok(6)),
        (Some(5), 0x2000, Ok(0x2000)),
        (Some(0x0001_2AFE), 0x2AFF, Ok(76_543)),
        // equal = replay
        (Some(5), 5, Err(Replay { last: 5, got: 5 })),
        (
            Some(0x0003_0000),
            0,
            Err(Replay {
                last: 0x0003_0000,
                got: 0x0003_0000,
            }),
        ),
        // older, within the gap = replay
        (Some(100), 99, Err(Replay { last: 100, got: 99 })),
        (
            Some(16_383),
            0,
            Err(Replay {
                last: 16_383,
                got: 0,
            }),
        ),
        // exactly MAX_FCNT_GAP behind: rollover
        (Some(16_384), 0, Ok(0x0001_0000)),
        // rollover of the 16 bits
        (Some(0xFFFF), 0, Ok(0x0001_0000)),
        (Some(0xFFF0), 3, Ok(0x0001_0003)),
        (Some(0x0002_FFFE), 1, Ok(0x0003_0001)),
        // rollover past u32::MAX is refused
        (
            Some(0xFFFF_FFFF),
            0,
            Err(Replay {
                last: 0xFFFF_FFFF,
                got: 0xFFFF_0000,
            }),
        ),
    ];
    for (last, fcnt16, want) in cases {
        assert_eq!(
            &rebuild_fcnt(*last, *fcnt16),
            want,
            "last {last:?}, fcnt16 {fcnt16:#x}"
        );
    }
}

// ---- MType, FCtrl ----

#[test]
fn mtype_round_trips_mhdr_and_classifies() {
    for b in 0..8u8 {
        let t = MType::from_mhdr(b << 5);
        assert_eq!(t.mhdr(), b << 5);
        assert_eq!(MType::from_mhdr((b << 5) | 0x1f), t);
    }
    assert!(MType::UnconfirmedDataUp.is_uplink() && MType::UnconfirmedDataUp.is_data());
    assert!(MType::ConfirmedDataUp.is_uplink() && MType::ConfirmedDataUp.is_data());
    assert!(!MType::UnconfirmedDataDown.is_uplink() && MType::UnconfirmedDataDown.is_data());
    assert!(!MType::ConfirmedDataDown.is_uplink() && MType::ConfirmedDataDown.is_data());
    assert!(MType::JoinRequest.is_uplink() && !MType::JoinRequest.is_data());
    assert!(!MType::JoinAccept.is_uplink() && !MType::JoinAccept.is_data());
    assert!(MType::RejoinRequest.is_uplink() && !MType::RejoinRequest.is_data());
    assert!(!MType::Proprietary.is_uplink() && !MType::Proprietary.is_data());
}

#[test]
fn fctrl_bits() {
    let all = FCtrl {
        adr: true,
        adr_ack_req: true,
        ack: true,
        f_pending: true,
    };
    assert_eq!(all.to_byte(), 0xf0);
    assert_eq!(FCtrl::from_byte(0xff), all);
    assert_eq!(FCtrl::from_byte(0x20).to_byte(), 0x20);
}

// ---- encode / decode ----

#[test]
fn encode_decode_known_frame() {
    let f = frame();
    let phy = encode_data_frame(&f, &keys()).unwrap();
    assert_eq!(phy.len(), 12 + 1 + 1 + 10);
    assert_eq!(phy[0], 0x80);
    assert_eq!(&phy[1..5], &[0x04, 0x03, 0x02, 0x01]);
    assert_eq!(phy[5], 0x81); // ADR + FOptsLen 1
    assert_eq!(&phy[6..8], &[0x45, 0x23]);
    assert_eq!(phy[8], 0x02); // FOpts in the clear
    assert_eq!(phy[9], 10); // FPort
    assert_ne!(&phy[10..20], b"lamp 42 on"); // encrypted
    assert_eq!(
        peek_header(&phy).unwrap(),
        FrameHeader {
            mtype: MType::ConfirmedDataUp,
            dev_addr: DevAddr(0x0102_0304),
            fcnt16: 0x2345,
            fopts_len: 1,
        }
    );
    assert_eq!(decode_data_frame(&phy, &keys(), f.fcnt).unwrap(), f);
}

#[test]
fn decode_refuses_wrong_keys_counter_and_tampering() {
    let f = frame();
    let phy = encode_data_frame(&f, &keys()).unwrap();
    let other = SessionKeys {
        nwk_s_key: AesKey([0x03; 16]),
        ..keys()
    };
    assert_eq!(
        decode_data_frame(&phy, &other, f.fcnt),
        Err(FrameError::BadMic)
    );
    // A wrong AppSKey passes the MIC but yields other plaintext: the MIC is NwkSKey's job.
    let wrong_app = SessionKeys {
        app_s_key: AesKey([0x03; 16]),
        ..keys()
    };
    let opened = decode_data_frame(&phy, &wrong_app, f.fcnt).unwrap();
    assert_ne!(opened.frm_payload, f.frm_payload);
    assert_eq!(
        decode_data_frame(&phy, &keys(), f.fcnt + 0x1_0000),
        Err(FrameError::BadMic)
    );
    assert!(matches!(
        decode_data_frame(&phy, &keys(), f.fcnt + 1),
        Err(FrameError::Malformed(_))
    ));
    for i in 0..phy.len() {
        let mut bad = phy.clone();
        bad[i] ^= 0x01;
        assert!(
            decode_data_frame(&bad, &keys(), f.fcnt).is_err(),
            "bit flip at byte {i} accepted"
        );
    }
}

#[test]
fn fport_with_empty_payload_round_trips() {
    let f = DataFrame {
        mtype: MType::UnconfirmedDataDown,
        fctrl: FCtrl {
            ack: true,
            ..FCtrl::default()
        },
        fopts: vec![],
        fport: Some(1),
        frm_payload: vec![],
        ..frame()
    };
    let phy = encode_data_frame(&f, &keys()).unwrap();
    assert_eq!(phy.len(), 13);
    assert_eq!(decode_data_frame(&phy, &keys(), f.fcnt).unwrap(), f);
    let no_port = DataFrame { fport: None, ..f };
    let phy = encode_data_frame(&no_port, &keys()).unwrap();
    assert_eq!(phy.len(), 12);
    assert_eq!(
        decode_data_frame(&phy, &keys(), no_port.fcnt).unwrap(),
        no_port
    );
}

#[test]
fn port_zero_payload_is_encrypted_with_nwk_s_key() {
    let f = DataFrame {
        fopts: vec![],
        fport: Some(0),
        frm_payload: vec![0x02, 0x03, 0x05],
        ..frame()
    };
    let phy = encode_data_frame(&f, &keys()).unwrap();
    assert_eq!(decode_data_frame(&phy, &keys(), f.fcnt).unwrap(), f);
    // Decrypting with another AppSKey changes nothing for port 0.
    let other_app = SessionKeys {
        app_s_key: AesKey([0x09; 16]),
        ..keys()
    };
    assert_eq!(decode_data_frame(&phy, &other_app, f.fcnt).unwrap(), f);
}

#[test]
fn encode_refuses_invalid_frames() {
    let k = keys();
    let f = |g: fn(&mut DataFrame)| {
        let mut fr = frame();
        g(&mut fr);
        encode_data_frame(&fr, &k)
    };
    assert_eq!(
        f(|fr| fr.mtype = MType::JoinAccept),
        Err(FrameError::NotDataFrame(MType::JoinAccept))
    );
    assert_eq!(
        f(|fr| fr.fopts = vec![0; 16]),
        Err(FrameError::FOptsTooLong { len: 16 })
    );
    assert!(f(|fr| fr.fopts = vec![0; 15]).is_ok());
    assert!(matches!(
        f(|fr| fr.fport = None),
        Err(FrameError::Malformed(_))
    ));
    assert_eq!(
        f(|fr| fr.fport = Some(0)),
        Err(FrameError::FOptsWithPortZero { fopts_len: 1 })
    );
    // 12 + 1 (FOpts) + 1 (FPort) + 241 = 255: the largest frame.
    let max = f(|fr| fr.frm_payload = vec![0xaa; 241]).unwrap();
    assert_eq!(max.len(), 255);
    assert_eq!(
        f(|fr| fr.frm_payload = vec![0xaa; 242]),
        Err(FrameError::PayloadTooLong { len: 242 })
    );
    assert_eq!(
        f(|fr| {
            fr.fopts.clear();
            fr.frm_payload = vec![0xaa; 243];
        }),
        Err(FrameError::PayloadTooLong { len: 243 })
    );
}

#[test]
fn peek_header_checks_shape() {
    let phy = encode_data_frame(&frame(), &keys()).unwrap();
    assert_eq!(peek_header(&[]), Err(FrameError::TooShort { len: 0 }));
    assert_eq!(
        peek_header(&phy[..11]),
        Err(FrameError::TooShort { len: 11 })
    );
    let mut long = phy.clone();
    long.resize(256, 0);
    assert_eq!(peek_header(&long), Err(FrameError::TooLong { len: 256 }));
    let mut overrun = vec![0x40, 1, 2, 3, 4, 0x01, 0, 0, 9, 9, 9, 9];
    assert_eq!(
        peek_header(&overrun),
        Err(FrameError::FOptsOverrun {
            fopts_len: 1,
            len: 12
        })
    );
    overrun[5] = 0x0f;
    overrun.resize(26, 0);
    assert_eq!(
        peek_header(&overrun),
        Err(FrameError::FOptsOverrun {
            fopts_len: 15,
            len: 26
        })
    );
    overrun.push(0);
    assert_eq!(peek_header(&overrun).unwrap().fopts_len, 15);
    let mut join_request = vec![0u8; 23];
    join_request[0] = 0x00;
    assert_eq!(
        peek_header(&join_request),
        Err(FrameError::NotDataFrame(MType::JoinRequest))
    );
    let mut major = phy.clone();
    major[0] |= 0x01;
    assert_eq!(peek_header(&major), Err(FrameError::UnsupportedMajor(1)));
}

#[test]
fn decode_refuses_fopts_with_port_zero() {
    // FOptsLen 1 and FPort 0 with one payload byte; refused before any key is used.
    let phy = [0x40, 4, 3, 2, 1, 0x01, 0, 0, 0x02, 0x00, 0xaa, 1, 2, 3, 4];
    assert_eq!(
        decode_data_frame(&phy, &keys(), 0),
        Err(FrameError::FOptsWithPortZero { fopts_len: 1 })
    );
}

#[test]
fn errors_have_messages() {
    let e = FrameError::FOptsOverrun {
        fopts_len: 3,
        len: 13,
    };
    assert_eq!(
        e.to_string(),
        "FOptsLen 3 does not fit a PHYPayload of 13 bytes (MHDR + FHDR + FOpts + MIC = 15 bytes)"
    );
    assert!(FrameError::Replay { last: 5, got: 5 }
        .to_string()
        .contains("replayed"));
}

// ---- property tests ----

fn data_mtype() -> impl Strategy<Value = MType> {
    prop_oneof![
        Just(MType::UnconfirmedDataUp),
        Just(MType::UnconfirmedDataDown),
        Just(MType::ConfirmedDataUp),
        Just(MType::ConfirmedDataDown),
    ]
}

/// Any valid data frame: FOpts 0..=15 bytes, FRMPayload 0..=222 bytes, any FPort (no FOpts
/// with port 0, no payload without a port), any 32-bit FCnt.
fn any_frame() -> impl Strategy<Value = DataFrame> {
    (
        data_mtype(),
        any::<u32>(),
        any::<[bool; 4]>(),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..=15),
        prop::option::of(any::<u8>()),
        prop::collection::vec(any::<u8>(), 0..=222),
    )
        .prop_map(
            |(mtype, addr, [adr, adr_ack_req, ack, f_pending], fcnt, fopts, fport, payload)| {
                DataFrame {
                    mtype,
                    dev_addr: DevAddr(addr),
                    fctrl: FCtrl {
                        adr,
                        adr_ack_req,
                        ack,
                        f_pending,
                    },
                    fcnt,
                    fopts: if fport == Some(0) { vec![] } else { fopts },
                    fport,
                    frm_payload: if fport.is_some() { payload } else { vec![] },
                }
            },
        )
}

fn any_keys() -> impl Strategy<Value = SessionKeys> {
    (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(n, a)| SessionKeys {
        nwk_s_key: AesKey(n),
        app_s_key: AesKey(a),
    })
}

proptest! {
    #[test]
    fn round_trip(f in any_frame(), k in any_keys()) {
        let phy = encode_data_frame(&f, &k).unwrap();
        prop_assert!(phy.len() <= MAX_PHY_PAYLOAD_LEN);
        let h = peek_header(&phy).unwrap();
        prop_assert_eq!(h.mtype, f.mtype);
        prop_assert_eq!(h.dev_addr, f.dev_addr);
        prop_assert_eq!(h.fcnt16, f.fcnt as u16);
        prop_assert_eq!(usize::from(h.fopts_len), f.fopts.len());
        prop_assert_eq!(decode_data_frame(&phy, &k, f.fcnt).unwrap(), f.clone());
        // The receiver's rebuilt counter opens it when the previous frame was just before.
        if f.fcnt > 0 {
            let fcnt = rebuild_fcnt(Some(f.fcnt - 1), h.fcnt16).unwrap();
            prop_assert_eq!(fcnt, f.fcnt);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        fcnt in any::<u32>(),
        k in any_keys(),
    ) {
        let _ = peek_header(&bytes);
        let _ = decode_data_frame(&bytes, &k, fcnt);
        let _ = decrypt_join_accept(&bytes, &k.app_s_key);
    }

    #[test]
    fn data_shaped_bytes_never_panic(
        mhdr in prop_oneof![Just(0x40u8), Just(0x60), Just(0x80), Just(0xa0)],
        rest in prop::collection::vec(any::<u8>(), 0..260),
        fcnt16 in any::<u16>(),
        k in any_keys(),
    ) {
        let mut bytes = vec![mhdr];
        bytes.extend(rest);
        let fcnt = match peek_header(&bytes) {
            Ok(h) => u32::from(h.fcnt16),
            Err(_) => u32::from(fcnt16),
        };
        let _ = decode_data_frame(&bytes, &k, fcnt);
    }

    #[test]
    fn truncated_frames_are_refused(f in any_frame(), k in any_keys(), cut in any::<prop::sample::Index>()) {
        let phy = encode_data_frame(&f, &k).unwrap();
        let short = &phy[..cut.index(phy.len())];
        let _ = peek_header(short);
        prop_assert!(decode_data_frame(short, &k, f.fcnt).is_err());
    }

    #[test]
    fn corrupted_fopts_len_is_refused(f in any_frame(), k in any_keys(), fopts_len in 0u8..16) {
        let mut phy = encode_data_frame(&f, &k).unwrap();
        prop_assume!(usize::from(fopts_len) != f.fopts.len());
        phy[5] = (phy[5] & 0xf0) | fopts_len;
        match peek_header(&phy) {
            Ok(h) => prop_assert_eq!(h.fopts_len, fopts_len),
            Err(e) => prop_assert_eq!(e, FrameError::FOptsOverrun { fopts_len, len: phy.len() }),
        }
        prop_assert!(decode_data_frame(&phy, &k, f.fcnt).is_err());
    }

    #[test]
    fn replays_never_pass(last in any::<u32>(), back in 0u32..MAX_FCNT_GAP) {
        let Some(old) = last.checked_sub(back) else { return Ok(()) };
        let r = rebuild_fcnt(Some(last), old as u16);
        prop_assert!(r.is_err() || r.clone().unwrap() > last, "{:?}", r);
        if (old & 0xFFFF_0000) == (last & 0xFFFF_0000) {
            prop_assert_eq!(r, Err(FrameError::Replay { last, got: old }));
        }
    }

    #[test]
    fn rebuilt_counter_always_advances(last in any::<u32>(), fcnt16 in any::<u16>()) {
        match rebuild_fcnt(Some(last), fcnt16) {
            Ok(n) => {
                prop_assert!(n > last);
                prop_assert_eq!(n as u16, fcnt16);
            }
            Err(FrameError::Replay { last: l, got }) => {
                prop_assert_eq!(l, last);
                prop_assert_eq!(got as u16, fcnt16);
            }
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }
}
