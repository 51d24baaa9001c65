//! Keys and the AES-128 / AES-CMAC primitives behind every LoRaWAN frame.
//!
//! [`RustCryptoFactory`] plugs `aes` 0.8 and `cmac` 0.7 into lorawan-encoding, whose own
//! default crypto depends on yanked crates. [`derive_session_keys`] is the LoRaWAN 1.0.x
//! session-key derivation.

use std::fmt;
use std::str::FromStr;

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;
use generic_array::typenum::U16;
use generic_array::GenericArray;
use lorawan_encoding::keys::{CryptoFactory, Decrypter, Encrypter, Mac, AES128};
use serde::{Deserialize, Serialize};

/// An AES-128 key, written as displayed by ChirpStack and The Things Stack: 32 hex digits,
/// most significant byte first. Keys go into the algorithms in this order (unlike DevAddr and
/// EUIs, which are reversed on the wire).
///
/// `Display` prints lower-case hex, `FromStr` takes either case, serde uses the hex string.
/// `Debug` never prints the key, so keys cannot leak through `{:?}` in logs.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct AesKey(pub [u8; 16]);

impl AesKey {
    /// The key's 16 bytes, as displayed.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub(crate) fn to_aes128(self) -> AES128 {
        AES128(self.0)
    }
}

/// Why a string is not an [`AesKey`]. The message never echoes the input: a mistyped key is
/// still mostly a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AesKeyError {
    #[error("an AES-128 key is 32 hex digits, got {len} characters")]
    BadLength { len: usize },
    #[error("an AES-128 key is 32 hex digits, found a character that is not a hex digit")]
    NotHex,
}

impl fmt::Display for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey(..)")
    }
}

impl FromStr for AesKey {
    type Err = AesKeyError;
    fn from_str(s: &str) -> Result<Self, AesKeyError> {
        if s.len() != 32 {
            return Err(AesKeyError::BadLength {
                len: s.chars().count(),
            });
        }
        let mut key = [0u8; 16];
        hex::decode_to_slice(s, &mut key).map_err(|_| AesKeyError::NotHex)?;
        Ok(AesKey(key))
    }
}

impl From<AesKey> for String {
    fn from(k: AesKey) -> String {
        k.to_string()
    }
}

impl TryFrom<String> for AesKey {
    type Error = AesKeyError;
    fn try_from(s: String) -> Result<Self, AesKeyError> {
        s.parse()
    }
}

/// The two LoRaWAN 1.0.x session keys of one device session.
///
/// `nwk_s_key` (NwkSKey) computes and checks every frame's MIC and encrypts FPort 0 payloads
/// (MAC commands); `app_s_key` (AppSKey) encrypts the application payload (FPort 1..=255).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionKeys {
    pub nwk_s_key: AesKey,
    pub app_s_key: AesKey,
}

/// LoRaWAN 1.0.x session keys from a join:
/// `NwkSKey = aes128_encrypt(AppKey, 0x01 | JoinNonce | NetID | DevNonce | pad16)`,
/// `AppSKey` the same with `0x02`. All three inputs in wire order (as they appear in the
/// join-request and join-accept).
pub fn derive_session_keys(
    app_key: &AesKey,
    join_nonce: [u8; 3],
    net_id: [u8; 3],
    dev_nonce: [u8; 2],
) -> SessionKeys {
    let cipher = Aes128::new(GenericArray::from_slice(&app_key.0));
    let derive = |first: u8| {
        let mut block = GenericArray::from([0u8; 16]);
        block[0] = first;
        block[1..4].copy_from_slice(&join_nonce);
        block[4..7].copy_from_slice(&net_id);
        block[7..9].copy_from_slice(&dev_nonce);
        cipher.encrypt_block(&mut block);
        AesKey(block.into())
    };
    SessionKeys {
        nwk_s_key: derive(0x01),
        app_s_key: derive(0x02),
    }
}

/// lorawan-encoding's [`CryptoFactory`] built on the RustCrypto `aes` 0.8 and `cmac` 0.7
/// crates. Pass it to the `*_with_factory` / `with_options` functions of lorawan-encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RustCryptoFactory;

/// AES-128 block cipher for [`RustCryptoFactory`].
#[derive(Clone)]
pub struct Aes128Block(Aes128);

/// AES-CMAC for [`RustCryptoFactory`].
#[derive(Clone)]
pub struct Aes128Cmac(cmac::Cmac<Aes128>);

impl Encrypter for Aes128Block {
    fn encrypt_block(&self, block: &mut GenericArray<u8, U16>) {
        BlockEncrypt::encrypt_block(&self.0, block);
    }
}

impl Decrypter for Aes128Block {
    fn decrypt_block(&self, block: &mut GenericArray<u8, U16>) {
        BlockDecrypt::decrypt_block(&self.0, block);
    }
}

impl Mac for Aes128Cmac {
    fn input(&mut self, data: &[u8]) {
        cmac::Mac::update(&mut self.0, data);
    }

    fn reset(&mut self) {
        cmac::Mac::reset(&mut self.0);
    }

    fn result(self) -> GenericArray<u8, U16> {
        cmac::Mac::finalize(self.0).into_bytes()
    }
}

impl CryptoFactory for RustCryptoFactory {
    type E = Aes128Block;
    type D = Aes128Block;
    type M = Aes128Cmac;

    fn new_enc(&self, key: &AES128) -> Aes128Block {
        Aes128Block(Aes128::new(GenericArray::from_slice(&key.0)))
    }

    fn new_dec(&self, key: &AES128) -> Aes128Block {
        Aes128Block(Aes128::new(GenericArray::from_slice(&key.0)))
    }

    fn new_mac(&self, key: &AES128) -> Aes128Cmac {
        Aes128Cmac(<cmac::Cmac<Aes128> as KeyInit>::new(
            GenericArray::from_slice(&key.0),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_displays_lower_hex_parses_either_case_and_hides_in_debug() {
        let k: AesKey = "44024241ED4CE9A68C6A8BC055233FD3".parse().unwrap();
        assert_eq!(k.to_string(), "44024241ed4ce9a68c6a8bc055233fd3");
        assert_eq!(k.0[0], 0x44);
        assert_eq!(format!("{k:?}"), "AesKey(..)");
        let keys = SessionKeys {
            nwk_s_key: k,
            app_s_key: k,
        };
        assert!(!format!("{keys:?}").contains("4402"));
    }

    #[test]
    fn bad_keys_are_refused_without_echo() {
        let short = "44024241ed4ce9a68c6a8bc055233fd".parse::<AesKey>();
        assert_eq!(short, Err(AesKeyError::BadLength { len: 31 }));
        let bad = "44024241ed4ce9a68c6a8bc055233fdz".parse::<AesKey>();
        assert_eq!(bad, Err(AesKeyError::NotHex));
        assert!(!bad.unwrap_err().to_string().contains("4402"));
        // Multi-byte characters must not panic or pass.
        assert!("é".repeat(16).parse::<AesKey>().is_err());
    }

    #[test]
    fn keys_serialize_as_hex_strings() {
        let keys = SessionKeys {
            nwk_s_key: AesKey([0x02; 16]),
            app_s_key: AesKey([0xab; 16]),
        };
        let json = serde_json::to_string(&keys).unwrap();
        assert_eq!(
            json,
            r#"{"nwk_s_key":"02020202020202020202020202020202","app_s_key":"abababababababababababababababab"}"#
        );
        let back: SessionKeys = serde_json::from_str(&json).unwrap();
        assert_eq!(back, keys);
        assert!(serde_json::from_str::<AesKey>(r#""0202""#).is_err());
    }

    #[test]
    fn cmac_matches_rfc4493() {
        // RFC 4493 example 2: 16-byte message.
        let key = AES128(
            hex::decode("2b7e151628aed2a6abf7158809cf4f3c")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let mut mac = RustCryptoFactory.new_mac(&key);
        mac.input(&hex::decode("6bc1bee22e409f96e93d7e117393172a").unwrap());
        assert_eq!(
            hex::encode(mac.result()),
            "070a16b46b4d4144f79bdd9dd04a287c"
        );
    }
}
