//! LoRaWAN 1.0.x data frames, built and opened with per-device session keys.
//!
//! # Why every message is a LoRaWAN frame
//!
//! A lamp's uplinks and the controller's downlinks travel as LoRaWAN PHYPayloads, over a radio
//! or as the payload of an MQTT message. The protection is in the frame, not in the transport,
//! so it holds whoever runs the MQTT broker and whoever else can publish to it:
//!
//! - **Integrity and authenticity**: the 4-byte MIC is an AES-CMAC with the session's NwkSKey
//!   over a block B0 (direction, DevAddr, full 32-bit FCnt, length) and the whole frame. Without
//!   the key nobody can forge a frame, alter a bit, turn an uplink into a downlink, or move a
//!   frame to another device or counter.
//! - **Confidentiality**: the FRMPayload is encrypted with AES-128 in counter mode, the
//!   keystream derived from AppSKey (NwkSKey for FPort 0, MAC commands), direction, DevAddr and
//!   FCnt. The broker sees only ciphertext. The header (DevAddr, FCtrl, FCnt, and in 1.0.x the
//!   FOpts MAC commands) is authenticated but not encrypted.
//! - **Replay protection**: FCnt must strictly increase per session and direction. The receiver
//!   keeps the highest counter accepted and refuses anything that does not advance, so a frame
//!   captured from the radio or the broker cannot be played again.
//!
//! What frames cannot prevent: a broker or an attacker dropping or delaying frames. Those show
//! up as gaps and lateness, which the controller watches for.
//!
//! # The FCnt rule
//!
//! Only the low 16 bits of the 32-bit frame counter go on air; the MIC and the encryption use
//! all 32. The receiver rebuilds the high bits with [`rebuild_fcnt`] from the highest counter
//! accepted so far: same high half if that advances, else the next 16-bit window if the
//! counter went back by at least [`MAX_FCNT_GAP`] (a rollover), else it is a replay. Receiving
//! is then:
//!
//! 1. [`peek_header`] (no keys): check the shape, read DevAddr and the 16-bit FCnt;
//! 2. find the session by DevAddr, [`rebuild_fcnt`] from its last counter in that direction;
//! 3. [`decode_data_frame`] with the rebuilt counter: checks the MIC, decrypts;
//! 4. only now store the counter as the session's last: a frame that fails the MIC must never
//!    move the counter (else anyone could block a device by sending a high FCnt).
//!
//! # Size checks
//!
//! A data frame is MHDR (1) + FHDR (7 + FOptsLen) + optional FPort (1) + FRMPayload + MIC (4):
//! 12 to 255 bytes (a LoRa frame carries at most 255). [`peek_header`] checks the length and
//! that `1 + 7 + FOptsLen + 4 <= len` before lorawan-encoding sees the bytes: its `parse`
//! accepts frames whose FOptsLen does not fit and then panics in `fhdr()`. On the way out,
//! [`encode_data_frame`] refuses FOpts over 15 bytes and PHYPayloads over 255 bytes (the
//! lorawan-encoding creator would happily emit 256). No function here panics on any input.
//!
//! # FPort and an empty FRMPayload
//!
//! A frame may carry an FPort byte with an empty FRMPayload (e.g. an ACK on port 1).
//! lorawan-encoding then reports no FPort; this module reads the FPort itself, so such a frame
//! decodes to `fport: Some(p)` with an empty `frm_payload`, and encoding that gives back the
//! same bytes. `fport: None` means no FPort byte, and then `frm_payload` must be empty.
//!
//! # Example
//!
//! ```
//! use lamplighter_protocol::lorawan::*;
//! use lamplighter_protocol::DevAddr;
//!
//! let keys = SessionKeys {
//!     nwk_s_key: "44024241ed4ce9a68c6a8bc055233fd3".parse().unwrap(),
//!     app_s_key: "ec925802ae430ca77fd3dd73cb2cc588".parse().unwrap(),
//! };
//! let frame = DataFrame {
//!     mtype: MType::UnconfirmedDataUp,
//!     dev_addr: "49BE7DF1".parse().unwrap(),
//!     fctrl: FCtrl::default(),
//!     fcnt: 2,
//!     fopts: vec![],
//!     fport: Some(1),
//!     frm_payload: b"test".to_vec(),
//! };
//! let phy = encode_data_frame(&frame, &keys).unwrap();
//! assert_eq!(hex::encode(&phy), "40f17dbe4900020001954378762b11ff0d");
//!
//! // Receiving: header without keys, rebuild the counter, then check and decrypt.
//! let header = peek_header(&phy).unwrap();
//! assert_eq!(header.dev_addr, DevAddr(0x49BE7DF1));
//! let fcnt = rebuild_fcnt(Some(1), header.fcnt16).unwrap();
//! assert_eq!(decode_data_frame(&phy, &keys, fcnt).unwrap(), frame);
//!
//! // The same frame again is a replay once counter 2 has been accepted.
//! assert!(matches!(rebuild_fcnt(Some(2), header.fcnt16), Err(FrameError::Replay { .. })));
//! ```

mod crypto;
mod join;
pub mod radio;

pub use crypto::{
    derive_session_keys, Aes128Block, Aes128Cmac, AesKey, AesKeyError, RustCryptoFactory,
    SessionKeys,
};
pub use join::{
    decode_join_request, decrypt_join_accept, encode_join_accept, encode_join_request,
    peek_join_request, JoinAccept, JoinRequest, JOIN_ACCEPT_CF_LIST_LEN, JOIN_ACCEPT_LEN,
    JOIN_REQUEST_LEN,
};

use lorawan_encoding::creator::DataPayloadCreator;
use lorawan_encoding::maccommands::SerializableMacCommand;
use lorawan_encoding::parser::{self as le, DataHeader, EncryptedDataPayload};

use crate::ids::DevAddr;

/// The largest PHYPayload a LoRa frame carries.
pub const MAX_PHY_PAYLOAD_LEN: usize = 255;
/// The smallest data frame: MHDR, FHDR without FOpts, MIC.
pub const MIN_DATA_FRAME_LEN: usize = 12;
/// FOptsLen is 4 bits.
pub const MAX_FOPTS_LEN: usize = 15;
/// A 16-bit counter that goes back by less than this is a replay, not a rollover.
pub const MAX_FCNT_GAP: u32 = 16_384;

/// Message type, the top three bits of MHDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MType {
    JoinRequest,
    JoinAccept,
    UnconfirmedDataUp,
    UnconfirmedDataDown,
    ConfirmedDataUp,
    ConfirmedDataDown,
    /// 0b110: RFU in LoRaWAN 1.0.x, RejoinRequest in 1.1.
    RejoinRequest,
    Proprietary,
}

impl MType {
    /// The MType of an MHDR byte.
    pub fn from_mhdr(mhdr: u8) -> MType {
        match mhdr >> 5 {
            0 => MType::JoinRequest,
            1 => MType::JoinAccept,
            2 => MType::UnconfirmedDataUp,
            3 => MType::UnconfirmedDataDown,
            4 => MType::ConfirmedDataUp,
            5 => MType::ConfirmedDataDown,
            6 => MType::RejoinRequest,
            _ => MType::Proprietary,
        }
    }

    /// The MHDR byte for this type, LoRaWAN R1 (Major 0), RFU bits 0.
    pub fn mhdr(self) -> u8 {
        let bits = match self {
            MType::JoinRequest => 0,
            MType::JoinAccept => 1,
            MType::UnconfirmedDataUp => 2,
            MType::UnconfirmedDataDown => 3,
            MType::ConfirmedDataUp => 4,
            MType::ConfirmedDataDown => 5,
            MType::RejoinRequest => 6,
            MType::Proprietary => 7,
        };
        bits << 5
    }

    /// Sent by an end device. Proprietary frames have no defined direction: false.
    pub fn is_uplink(self) -> bool {
        matches!(
            self,
            MType::JoinRequest
                | MType::UnconfirmedDataUp
                | MType::ConfirmedDataUp
                | MType::RejoinRequest
        )
    }

    /// One of the four data-frame types.
    pub fn is_data(self) -> bool {
        matches!(
            self,
            MType::UnconfirmedDataUp
                | MType::UnconfirmedDataDown
                | MType::ConfirmedDataUp
                | MType::ConfirmedDataDown
        )
    }

    fn is_confirmed(self) -> bool {
        matches!(self, MType::ConfirmedDataUp | MType::ConfirmedDataDown)
    }
}

/// The FCtrl flags of a data frame (FOptsLen is derived from `DataFrame::fopts`).
///
/// Bits are carried as they are in both directions, so decoding and re-encoding is exact:
/// bit 7 `adr`, bit 6 `adr_ack_req` (uplink; RFU and to be left false on downlinks in
/// LoRaWAN 1.0.x), bit 5 `ack`, bit 4 `f_pending` (FPending on downlinks, ClassB on uplinks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FCtrl {
    pub adr: bool,
    pub adr_ack_req: bool,
    pub ack: bool,
    pub f_pending: bool,
}

impl FCtrl {
    /// The FCtrl byte with FOptsLen 0.
    pub fn to_byte(self) -> u8 {
        (u8::from(self.adr) << 7)
            | (u8::from(self.adr_ack_req) << 6)
            | (u8::from(self.ack) << 5)
            | (u8::from(self.f_pending) << 4)
    }

    /// The flags of an FCtrl byte (FOptsLen, the low four bits, is ignored).
    pub fn from_byte(b: u8) -> FCtrl {
        FCtrl {
            adr: b & 0x80 != 0,
            adr_ack_req: b & 0x40 != 0,
            ack: b & 0x20 != 0,
            f_pending: b & 0x10 != 0,
        }
    }
}

/// A LoRaWAN 1.0.x data frame in the clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFrame {
    /// One of the four data types.
    pub mtype: MType,
    pub dev_addr: DevAddr,
    pub fctrl: FCtrl,
    /// The full 32-bit counter; only the low 16 bits go on air.
    pub fcnt: u32,
    /// MAC commands piggybacked in FOpts: at most 15 bytes, plaintext in LoRaWAN 1.0.x.
    /// Must be empty when `fport` is `Some(0)`.
    pub fopts: Vec<u8>,
    /// `None`: no FPort byte, and `frm_payload` is empty. `Some(p)`: an FPort byte, with a
    /// possibly empty `frm_payload`. Port 0 carries MAC commands (encrypted with NwkSKey).
    pub fport: Option<u8>,
    /// The decrypted FRMPayload.
    pub frm_payload: Vec<u8>,
}

/// What can be read from a data-frame PHYPayload without keys, after checking its shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub mtype: MType,
    pub dev_addr: DevAddr,
    /// The low 16 bits of FCnt, as on air.
    pub fcnt16: u16,
    pub fopts_len: u8,
}

/// Why a frame could not be built, opened or accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("PHYPayload of {len} bytes is too short for this frame")]
    TooShort { len: usize },
    #[error("PHYPayload of {len} bytes is longer than this frame can be (a LoRa frame carries at most 255)")]
    TooLong { len: usize },
    #[error("FOptsLen {fopts_len} does not fit a PHYPayload of {len} bytes (MHDR + FHDR + FOpts + MIC = {} bytes)", 12 + *fopts_len as usize)]
    FOptsOverrun { fopts_len: u8, len: usize },
    #[error("{0:?} is not a data frame")]
    NotDataFrame(MType),
    #[error("{0:?} is not a join-accept")]
    NotJoinAccept(MType),
    #[error("unsupported LoRaWAN major version {0} (only 0, LoRaWAN R1, is known)")]
    UnsupportedMajor(u8),
    #[error("MIC check failed: wrong session keys, wrong FCnt high bits, or a tampered frame")]
    BadMic,
    #[error("FCnt {got} does not advance past {last}: a replayed or stale frame")]
    Replay { last: u32, got: u32 },
    #[error("FRMPayload of {len} bytes makes the PHYPayload longer than 255 bytes")]
    PayloadTooLong { len: usize },
    #[error("FOpts of {len} bytes is longer than the 15 bytes FOptsLen can express")]
    FOptsTooLong { len: usize },
    #[error("MAC commands both in FOpts ({fopts_len} bytes) and in an FPort 0 FRMPayload")]
    FOptsWithPortZero { fopts_len: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Reads the header of a data frame without keys, after checking its shape: a data MType,
/// Major 0, 12..=255 bytes, and FOptsLen fitting (`1 + 7 + FOptsLen + 4 <= len`).
pub fn peek_header(phy: &[u8]) -> Result<FrameHeader, FrameError> {
    let len = phy.len();
    let mhdr = *phy.first().ok_or(FrameError::TooShort { len })?;
    let mtype = MType::from_mhdr(mhdr);
    if !mtype.is_data() {
        return Err(FrameError::NotDataFrame(mtype));
    }
    if mhdr & 0x03 != 0 {
        return Err(FrameError::UnsupportedMajor(mhdr & 0x03));
    }
    if len < MIN_DATA_FRAME_LEN {
        return Err(FrameError::TooShort { len });
    }
    if len > MAX_PHY_PAYLOAD_LEN {
        return Err(FrameError::TooLong { len });
    }
    let fopts_len = phy[5] & 0x0f;
    if MIN_DATA_FRAME_LEN + usize::from(fopts_len) > len {
        return Err(FrameError::FOptsOverrun { fopts_len, len });
    }
    // The shape is checked: lorawan-encoding can now read the header without panicking.
    let parsed = EncryptedDataPayload::new_with_factory(phy, RustCryptoFactory)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let fhdr = parsed.fhdr();
    let dev_addr: [u8; 4] = fhdr
        .dev_addr()
        .as_ref()
        .try_into()
        .map_err(|_| FrameError::Malformed("DevAddr is not 4 bytes".into()))?;
    Ok(FrameHeader {
        mtype,
        dev_addr: DevAddr::from_wire(dev_addr),
        fcnt16: fhdr.fcnt(),
        fopts_len: fhdr.fctrl().f_opts_len(),
    })
}

/// Raw MAC-command bytes handed to the lorawan-encoding creator as one "command" (CID = first
/// byte, the rest its payload); the creator only concatenates CID and payload. Never empty.
struct RawMacCommands<'a>(&'a [u8]);

impl SerializableMacCommand for RawMacCommands<'_> {
    fn payload_bytes(&self) -> &[u8] {
        self.0.get(1..).unwrap_or_default()
    }
    fn cid(&self) -> u8 {
        self.0.first().copied().unwrap_or_default()
    }
    fn payload_len(&self) -> usize {
        self.0.len().saturating_sub(1)
    }
}

/// Builds the PHYPayload of a data frame: FRMPayload encrypted with AppSKey (NwkSKey when
/// `fport == Some(0)`), MIC with NwkSKey over the full 32-bit `fcnt`.
///
/// Errors: `NotDataFrame`, `FOptsTooLong` (over 15 bytes), `FOptsWithPortZero`,
/// `Malformed` (an FRMPayload without FPort), `PayloadTooLong` (PHYPayload over 255 bytes).
pub fn encode_data_frame(frame: &DataFrame, keys: &SessionKeys) -> Result<Vec<u8>, FrameError> {
    if !frame.mtype.is_data() {
        return Err(FrameError::NotDataFrame(frame.mtype));
    }
    if frame.fopts.len() > MAX_FOPTS_LEN {
        return Err(FrameError::FOptsTooLong {
            len: frame.fopts.len(),
        });
    }
    match frame.fport {
        None if !frame.frm_payload.is_empty() => {
            return Err(FrameError::Malformed(format!(
                "an FRMPayload of {} bytes needs an FPort",
                frame.frm_payload.len()
            )))
        }
        Some(0) if !frame.fopts.is_empty() => {
            return Err(FrameError::FOptsWithPortZero {
                fopts_len: frame.fopts.len(),
            })
        }
        _ => {}
    }
    let total = MIN_DATA_FRAME_LEN
        + frame.fopts.len()
        + usize::from(frame.fport.is_some())
        + frame.frm_payload.len();
    if total > MAX_PHY_PAYLOAD_LEN {
        return Err(FrameError::PayloadTooLong {
            len: frame.frm_payload.len(),
        });
    }

    let uplink = frame.mtype.is_uplink();
    let mut creator = DataPayloadCreator::with_options([0u8; 256], RustCryptoFactory)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    creator
        .set_confirmed(frame.mtype.is_confirmed())
        .set_uplink(uplink)
        .set_dev_addr(&frame.dev_addr.to_wire())
        .set_fctrl(&le::FCtrl::new(frame.fctrl.to_byte(), uplink))
        .set_fcnt(frame.fcnt);
    if let Some(port) = frame.fport {
        creator.set_f_port(port);
    }
    // The creator takes MAC commands, not bytes: FOpts for ports 1..=255 and no port, the
    // FRMPayload itself for port 0 (which it then encrypts with NwkSKey).
    let (mac_bytes, app_payload): (&[u8], &[u8]) = if frame.fport == Some(0) {
        (&frame.frm_payload, &[])
    } else {
        (&frame.fopts, &frame.frm_payload)
    };
    let raw = RawMacCommands(mac_bytes);
    let cmds: Vec<&dyn SerializableMacCommand> = if mac_bytes.is_empty() {
        Vec::new()
    } else {
        vec![&raw]
    };
    let phy = creator
        .build(
            app_payload,
            &cmds,
            &keys.nwk_s_key.to_aes128(),
            &keys.app_s_key.to_aes128(),
        )
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if phy.len() != total {
        return Err(FrameError::Malformed(format!(
            "built {} bytes, expected {total}",
            phy.len()
        )));
    }
    Ok(phy.to_vec())
}

/// Opens a data frame: checks its shape ([`peek_header`]), that the low 16 bits of `fcnt` are
/// the FCnt on air (else `Malformed`), the MIC with NwkSKey and the full `fcnt` (`BadMic`),
/// then decrypts the FRMPayload. Use [`rebuild_fcnt`] to get `fcnt`.
pub fn decode_data_frame(
    phy: &[u8],
    keys: &SessionKeys,
    fcnt: u32,
) -> Result<DataFrame, FrameError> {
    let header = peek_header(phy)?;
    if fcnt as u16 != header.fcnt16 {
        return Err(FrameError::Malformed(format!(
            "FCnt {fcnt} does not match the 16 bits on air ({})",
            header.fcnt16
        )));
    }
    let len = phy.len();
    let fhdr_end = 1 + 7 + usize::from(header.fopts_len);
    // len >= 12 after peek_header.
    let mic_start = len - 4;
    // lorawan-encoding reports no FPort when the FRMPayload is empty: read it here.
    let fport = if mic_start > fhdr_end {
        Some(phy[fhdr_end])
    } else {
        None
    };
    if fport == Some(0) && header.fopts_len > 0 {
        return Err(FrameError::FOptsWithPortZero {
            fopts_len: usize::from(header.fopts_len),
        });
    }

    let encrypted = EncryptedDataPayload::new_with_factory(phy.to_vec(), RustCryptoFactory)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let nwk_s_key = keys.nwk_s_key.to_aes128();
    let app_s_key = keys.app_s_key.to_aes128();
    if !encrypted.validate_mic(&nwk_s_key, fcnt) {
        return Err(FrameError::BadMic);
    }
    let decrypted = encrypted
        .decrypt(Some(&nwk_s_key), Some(&app_s_key), fcnt)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let plain = decrypted.as_data_bytes();
    let frm_payload = match fport {
        Some(_) => plain.get(fhdr_end + 1..mic_start).unwrap_or_default(),
        None => &[],
    };
    Ok(DataFrame {
        mtype: header.mtype,
        dev_addr: header.dev_addr,
        fctrl: FCtrl::from_byte(phy[5]),
        fcnt,
        fopts: phy[8..fhdr_end].to_vec(),
        fport,
        frm_payload: frm_payload.to_vec(),
    })
}

/// Rebuilds the 32-bit counter from the 16 bits on air. `last` is the highest counter accepted
/// so far in this session and direction (`None` for a fresh session).
///
/// `candidate = (last & 0xFFFF_0000) | fcnt16`. If it is above `last`, it is the counter. If it
/// is at most `last` and less than [`MAX_FCNT_GAP`] behind, the frame is a replay. Otherwise
/// the 16-bit counter rolled over: `candidate + 0x1_0000` (a replay if that overflows u32).
///
/// Store the result as the new `last` only after [`decode_data_frame`] accepted the MIC.
pub fn rebuild_fcnt(last: Option<u32>, fcnt16: u16) -> Result<u32, FrameError> {
    let Some(last) = last else {
        return Ok(u32::from(fcnt16));
    };
    let candidate = (last & 0xFFFF_0000) | u32::from(fcnt16);
    if candidate > last {
        return Ok(candidate);
    }
    if last - candidate < MAX_FCNT_GAP {
        return Err(FrameError::Replay {
            last,
            got: candidate,
        });
    }
    candidate.checked_add(0x1_0000).ok_or(FrameError::Replay {
        last,
        got: candidate,
    })
}

#[cfg(test)]
mod tests;
