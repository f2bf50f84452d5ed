//! OwnTracks payload encryption: libsodium `crypto_secretbox`
//! (XSalsa20-Poly1305), as the apps do it.
//!
//! The key is the secret's UTF-8 bytes cut or zero-padded to 32 bytes (the
//! apps do exactly that, so a long passphrase loses its tail); the `data`
//! member of an `encrypted` message is base64(nonce[24] ‖ tag[16] ‖ ciphertext),
//! libsodium's `crypto_secretbox_easy` layout.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use crypto_secretbox::aead::{Aead, AeadCore, KeyInit, OsRng};
use crypto_secretbox::{Key, Nonce, XSalsa20Poly1305};
use thiserror::Error;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Standard alphabet; padding optional, since some senders strip it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    #[error("data is not valid base64")]
    Base64,
    #[error("data is {0} bytes, shorter than nonce and tag (40)")]
    TooShort(usize),
    /// Wrong secret, or the data was altered: the MAC does not verify.
    #[error("authentication failed (wrong secret or corrupted data)")]
    Authentication,
}

/// Decodes standard base64 (padding optional); used to vet card faces too.
pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok()
}

/// Derives the secretbox key the way the apps do: UTF-8 bytes, cut or
/// zero-padded to 32.
fn key(secret: &str) -> Key {
    let mut key = [0u8; KEY_LEN];
    let bytes = secret.as_bytes();
    let n = bytes.len().min(KEY_LEN);
    key[..n].copy_from_slice(&bytes[..n]);
    Key::from(key)
}

/// Decrypts the `data` member of an `encrypted` message.
pub fn decrypt(data_b64: &str, secret: &str) -> Result<Vec<u8>, CryptoError> {
    // Tolerate line-wrapped base64 (some encoders wrap at 76 columns).
    let compact: String = data_b64
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let raw = B64.decode(compact).map_err(|_| CryptoError::Base64)?;
    if raw.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::TooShort(raw.len()));
    }
    let (nonce, boxed) = raw.split_at(NONCE_LEN);
    XSalsa20Poly1305::new(&key(secret))
        .decrypt(Nonce::from_slice(nonce), boxed)
        .map_err(|_| CryptoError::Authentication)
}

/// Encrypts `plaintext` under a fresh random nonce and returns the `data`
/// member for an `encrypted` message (used to send commands to phones).
pub fn encrypt(plaintext: &[u8], secret: &str) -> String {
    let nonce = XSalsa20Poly1305::generate_nonce(&mut OsRng);
    let boxed = XSalsa20Poly1305::new(&key(secret))
        .encrypt(&nonce, plaintext)
        // Only fails when the length overflows the cipher's counter (256 GiB).
        .expect("secretbox encryption of an in-memory buffer");
    let mut raw = Vec::with_capacity(NONCE_LEN + boxed.len());
    raw.extend_from_slice(&nonce);
    raw.extend_from_slice(&boxed);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data = encrypt(b"{\"_type\":\"lwt\"}", "s3cret");
        assert_eq!(decrypt(&data, "s3cret").unwrap(), b"{\"_type\":\"lwt\"}");
        assert_eq!(decrypt(&data, "other"), Err(CryptoError::Authentication));
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(encrypt(b"x", "k"), encrypt(b"x", "k"));
    }

    #[test]
    fn key_is_cut_at_32_bytes() {
        let long = "0123456789abcdef0123456789abcdefTAIL";
        let data = encrypt(b"x", long);
        assert_eq!(decrypt(&data, &long[..32]).unwrap(), b"x");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decrypt("abcd!?&%", "k"), Err(CryptoError::Base64));
        assert_eq!(decrypt("YWJjZGUK", "k"), Err(CryptoError::TooShort(6)));
        assert_eq!(decrypt("", "k"), Err(CryptoError::TooShort(0)));
    }
}
