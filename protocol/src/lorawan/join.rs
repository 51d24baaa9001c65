//! The device side of an OTAA join: opening a join-accept (LoRaWAN 1.0.x).

use lorawan_encoding::parser::{AsPhyPayloadBytes, EncryptedJoinAcceptPayload};

use super::crypto::{AesKey, RustCryptoFactory};
use super::{FrameError, MType};
use crate::ids::DevAddr;

/// Length of a join-accept without CFList.
pub const JOIN_ACCEPT_LEN: usize = 17;
/// Length of a join-accept with a 16-byte CFList.
pub const JOIN_ACCEPT_CF_LIST_LEN: usize = 33;

/// The fields of a decrypted, MIC-checked join-accept. Multi-byte fields are in wire order
/// (little-endian), as [`super::derive_session_keys`] takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinAccept {
    /// JoinNonce (called AppNonce in LoRaWAN 1.0.0-1.0.2), wire order.
    pub join_nonce: [u8; 3],
    /// NetID, wire order.
    pub net_id: [u8; 3],
    pub dev_addr: DevAddr,
    /// DLSettings: RX1DRoffset in bits 6:4, RX2DataRate in bits 3:0.
    pub dl_settings: u8,
    /// The RxDelay byte as sent: Del in bits 3:0 (0 and 1 both mean 1 s), bits 7:4 RFU.
    pub rx_delay: u8,
    /// The optional 16-byte CFList (EU868: five 24-bit frequencies and a CFListType byte).
    pub cf_list: Option<[u8; 16]>,
}

/// Decrypts a join-accept PHYPayload with the device's AppKey and checks its MIC.
///
/// Errors: `TooShort`/`TooLong`/`Malformed` when the length is not 17 or 33 bytes,
/// `NotJoinAccept` for another MType, `UnsupportedMajor`, `BadMic`.
pub fn decrypt_join_accept(phy: &[u8], app_key: &AesKey) -> Result<JoinAccept, FrameError> {
    let len = phy.len();
    let mhdr = *phy.first().ok_or(FrameError::TooShort { len })?;
    let mtype = MType::from_mhdr(mhdr);
    if mtype != MType::JoinAccept {
        return Err(FrameError::NotJoinAccept(mtype));
    }
    if mhdr & 0x03 != 0 {
        return Err(FrameError::UnsupportedMajor(mhdr & 0x03));
    }
    if len < JOIN_ACCEPT_LEN {
        return Err(FrameError::TooShort { len });
    }
    if len > JOIN_ACCEPT_CF_LIST_LEN {
        return Err(FrameError::TooLong { len });
    }
    if len != JOIN_ACCEPT_LEN && len != JOIN_ACCEPT_CF_LIST_LEN {
        return Err(FrameError::Malformed(format!(
            "a join-accept is {JOIN_ACCEPT_LEN} or {JOIN_ACCEPT_CF_LIST_LEN} bytes, got {len}"
        )));
    }
    let encrypted = EncryptedJoinAcceptPayload::new_with_factory(phy.to_vec(), RustCryptoFactory)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let key = app_key.to_aes128();
    let decrypted = encrypted.decrypt(&key);
    if !decrypted.validate_mic(&key) {
        return Err(FrameError::BadMic);
    }
    let d = decrypted.as_bytes();
    let field = |range: std::ops::Range<usize>| {
        d.get(range)
            .ok_or_else(|| FrameError::Malformed("join-accept field out of range".into()))
    };
    let array3 = |r| -> Result<[u8; 3], FrameError> {
        let mut out = [0u8; 3];
        out.copy_from_slice(field(r)?);
        Ok(out)
    };
    let mut dev_addr = [0u8; 4];
    dev_addr.copy_from_slice(field(7..11)?);
    let cf_list = if len == JOIN_ACCEPT_CF_LIST_LEN {
        let mut list = [0u8; 16];
        list.copy_from_slice(field(13..29)?);
        Some(list)
    } else {
        None
    };
    Ok(JoinAccept {
        join_nonce: array3(1..4)?,
        net_id: array3(4..7)?,
        dev_addr: DevAddr::from_wire(dev_addr),
        dl_settings: field(11..12)?[0],
        rx_delay: field(12..13)?[0],
        cf_list,
    })
}

/// Length of a join-request: MHDR, JoinEUI (8), DevEUI (8), DevNonce (2), MIC (4).
pub const JOIN_REQUEST_LEN: usize = 23;

/// The fields of a join-request (LoRaWAN 1.0.x). EUIs and the nonce in wire order
/// (little-endian), as [`super::derive_session_keys`] takes the nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    /// JoinEUI (AppEUI in LoRaWAN 1.0.0-1.0.2).
    pub join_eui: crate::DevEui,
    pub dev_eui: crate::DevEui,
    /// DevNonce, wire order.
    pub dev_nonce: [u8; 2],
}

fn cmac4(key: &AesKey, parts: &[&[u8]]) -> [u8; 4] {
    use aes::Aes128;
    use cmac::{Cmac, Mac};
    let mut mac = <Cmac<Aes128> as cmac::digest::KeyInit>::new(
        generic_array::GenericArray::from_slice(key.as_bytes()),
    );
    for p in parts {
        mac.update(p);
    }
    let full = mac.finalize().into_bytes();
    [full[0], full[1], full[2], full[3]]
}

/// Builds a join-request PHYPayload, MIC computed with AppKey.
pub fn encode_join_request(req: &JoinRequest, app_key: &AesKey) -> Vec<u8> {
    let mut phy = Vec::with_capacity(JOIN_REQUEST_LEN);
    phy.push(MType::JoinRequest.mhdr());
    phy.extend_from_slice(&req.join_eui.to_wire());
    phy.extend_from_slice(&req.dev_eui.to_wire());
    phy.extend_from_slice(&req.dev_nonce);
    let mic = cmac4(app_key, &[&phy]);
    phy.extend_from_slice(&mic);
    phy
}

/// Reads a join-request without keys (the network server needs the DevEUI to find the
/// AppKey). Checks MType, Major and the exact length of 23 bytes.
pub fn peek_join_request(phy: &[u8]) -> Result<JoinRequest, FrameError> {
    let len = phy.len();
    let mhdr = *phy.first().ok_or(FrameError::TooShort { len })?;
    let mtype = MType::from_mhdr(mhdr);
    if mtype != MType::JoinRequest {
        return Err(FrameError::Malformed(format!(
            "{mtype:?} is not a join-request"
        )));
    }
    if mhdr & 0x03 != 0 {
        return Err(FrameError::UnsupportedMajor(mhdr & 0x03));
    }
    if len < JOIN_REQUEST_LEN {
        return Err(FrameError::TooShort { len });
    }
    if len > JOIN_REQUEST_LEN {
        return Err(FrameError::TooLong { len });
    }
    let eui = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&phy[r]);
        crate::DevEui::from_wire(b)
    };
    Ok(JoinRequest {
        join_eui: eui(1..9),
        dev_eui: eui(9..17),
        dev_nonce: [phy[17], phy[18]],
    })
}

/// Checks a join-request's shape and MIC (AES-CMAC with AppKey over MHDR..DevNonce).
pub fn decode_join_request(phy: &[u8], app_key: &AesKey) -> Result<JoinRequest, FrameError> {
    let req = peek_join_request(phy)?;
    let mic = cmac4(app_key, &[&phy[..19]]);
    if mic != phy[19..23] {
        return Err(FrameError::BadMic);
    }
    Ok(req)
}

/// Builds a join-accept PHYPayload as a network server sends it: MIC = AES-CMAC(AppKey,
/// MHDR | JoinNonce | NetID | DevAddr | DLSettings | RxDelay | CFList), then everything after
/// MHDR (fields and MIC) run through AES-128 *decryption* with AppKey, block by block, so the
/// device only needs AES encryption to open it (LoRaWAN 1.0.x, 6.2.5).
pub fn encode_join_accept(ja: &JoinAccept, app_key: &AesKey) -> Vec<u8> {
    use aes::cipher::{BlockDecrypt, KeyInit};
    let mut plain = Vec::with_capacity(JOIN_ACCEPT_CF_LIST_LEN);
    plain.push(MType::JoinAccept.mhdr());
    plain.extend_from_slice(&ja.join_nonce);
    plain.extend_from_slice(&ja.net_id);
    plain.extend_from_slice(&ja.dev_addr.to_wire());
    plain.push(ja.dl_settings);
    plain.push(ja.rx_delay);
    if let Some(cf) = &ja.cf_list {
        plain.extend_from_slice(cf);
    }
    let mic = cmac4(app_key, &[&plain]);
    plain.extend_from_slice(&mic);
    let cipher = aes::Aes128::new(generic_array::GenericArray::from_slice(app_key.as_bytes()));
    for chunk in plain[1..].chunks_exact_mut(16) {
        cipher.decrypt_block(generic_array::GenericArray::from_mut_slice(chunk));
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DevEui;

    fn app_key() -> AesKey {
        "00112233445566778899aabbccddeeff".parse().unwrap()
    }

    #[test]
    fn join_accept_builds_the_published_vector_and_opens_again() {
        // shared/lorawan/vectors.json "lorawan-encoding-join-accept".
        let ja = JoinAccept {
            join_nonce: [0xc7, 0x0b, 0x57],
            net_id: [0x01, 0x11, 0x22],
            dev_addr: "02031980".parse().unwrap(),
            dl_settings: 0,
            rx_delay: 0,
            cf_list: None,
        };
        let phy = encode_join_accept(&ja, &app_key());
        assert_eq!(hex::encode(&phy), "20493eeb51fba2116f810edb3742975142");
        assert_eq!(decrypt_join_accept(&phy, &app_key()).unwrap(), ja);

        let with_cf = JoinAccept {
            cf_list: Some([7u8; 16]),
            ..ja
        };
        let phy = encode_join_accept(&with_cf, &app_key());
        assert_eq!(phy.len(), JOIN_ACCEPT_CF_LIST_LEN);
        assert_eq!(decrypt_join_accept(&phy, &app_key()).unwrap(), with_cf);
        let other: AesKey = "00112233445566778899aabbccddeefe".parse().unwrap();
        assert_eq!(decrypt_join_accept(&phy, &other), Err(FrameError::BadMic));
    }

    #[test]
    fn join_request_round_trips_and_checks_its_mic() {
        let req = JoinRequest {
            join_eui: DevEui(0x70B3_D57E_D000_0001),
            dev_eui: DevEui(0x0004_A30B_001C_0530),
            dev_nonce: [0x2d, 0x10],
        };
        let phy = encode_join_request(&req, &app_key());
        assert_eq!(phy.len(), JOIN_REQUEST_LEN);
        assert_eq!(phy[0], 0x00);
        assert_eq!(peek_join_request(&phy).unwrap(), req);
        assert_eq!(decode_join_request(&phy, &app_key()).unwrap(), req);
        let mut bad = phy.clone();
        bad[17] ^= 1;
        assert_eq!(
            decode_join_request(&bad, &app_key()),
            Err(FrameError::BadMic)
        );
        assert!(peek_join_request(&phy[..22]).is_err());
        assert!(peek_join_request(&[phy.clone(), vec![0]].concat()).is_err());
        assert!(peek_join_request(&[]).is_err());
        let mut data = phy;
        data[0] = 0x40;
        assert!(peek_join_request(&data).is_err());
    }
}
