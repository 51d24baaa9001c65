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
