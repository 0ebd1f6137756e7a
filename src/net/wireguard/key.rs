//! WireGuard keys: Curve25519 private keys, the public keys derived from
//! them, and the base64 text form that `wg genkey` and `wg pubkey` print.

use base64::Engine;

/// Length of a WireGuard key in bytes.
pub const KEY_LEN: usize = 32;

/// A key that is not 32 bytes of standard base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is not base64; use the output of `wg genkey` or `wg pubkey`")]
    NotBase64,
    #[error("the key decodes to {0} bytes instead of 32; use the output of `wg genkey` or `wg pubkey`")]
    WrongLength(usize),
}

/// Decodes a key from base64; surrounding whitespace, such as the newline
/// at the end of a key file, is ignored.
pub fn decode(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| KeyError::NotBase64)?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength(bytes.len()))
}

/// Encodes a key in standard base64, as `wg` prints it.
pub fn encode(key: &[u8; KEY_LEN]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Returns the public key of `private`, as `wg pubkey` computes it: X25519
/// of the clamped private key and the base point.
pub fn public_key(private: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    curve25519_dalek::MontgomeryPoint::mul_base_clamped(*private).to_bytes()
}

/// Generates a private key from the kernel's random number generator and
/// clamps it as `wg genkey` does.
pub fn generate_private_key() -> Result<[u8; KEY_LEN], getrandom::Error> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key)?;
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(text: &str) -> [u8; KEY_LEN] {
        let bytes = hex::decode(text).unwrap();
        bytes.try_into().unwrap()
    }

    #[test]
    fn public_key_matches_rfc7748_vector() {
        // RFC 7748, section 6.1: Alice's private key and public key.
        let private = unhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = unhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(public_key(&private), public);
    }

    #[test]
    fn generated_key_is_clamped() {
        let key = generate_private_key().unwrap();
        assert_eq!(key[0] & 7, 0);
        assert_eq!(key[31] & 128, 0);
        assert_eq!(key[31] & 64, 64);
    }

    #[test]
    fn key_round_trips_through_base64() {
        let key = generate_private_key().unwrap();
        assert_eq!(decode(&format!("{}\n", encode(&key))).unwrap(), key);
    }

    #[test]
    fn short_key_is_rejected() {
        assert_eq!(decode("AQID"), Err(KeyError::WrongLength(3)));
        assert_eq!(decode("not a key"), Err(KeyError::NotBase64));
    }
}
