//! Update signing keys: ed25519, stored as hex text files (the private key
//! as its 32-byte seed, mode 0600).

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::UpdateError;

/// Writes a new key pair as `DIR/update.key` and `DIR/update.pub`.
/// Refuses to overwrite an existing private key.
pub fn generate(dir: &Path) -> Result<VerifyingKey, UpdateError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| UpdateError::Io { action, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| UpdateError::Io {
        action: "get random bytes for",
        path: dir.join("update.key"),
        source: std::io::Error::other(e.to_string()),
    })?;
    let key = SigningKey::from_bytes(&seed);

    let private = dir.join("update.key");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .map_err(io("create", &private))?;
    std::io::Write::write_all(&mut file, format!("{}\n", hex::encode(seed)).as_bytes())
        .map_err(io("write", &private))?;
    let public = dir.join("update.pub");
    let verifying = key.verifying_key();
    std::fs::write(&public, format!("{}\n", hex::encode(verifying.as_bytes()))).map_err(io("write", &public))?;
    Ok(verifying)
}

fn read_32(path: &Path) -> Result<[u8; 32], UpdateError> {
    let text = std::fs::read_to_string(path).map_err(|source| UpdateError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = hex::decode(text.trim()).map_err(|e| UpdateError::Key {
        path: path.to_path_buf(),
        reason: format!("not hex: {e}; create keys with `ztms keygen DIR`"),
    })?;
    bytes.try_into().map_err(|_| UpdateError::Key {
        path: path.to_path_buf(),
        reason: "expected 32 bytes (64 hex digits); create keys with `ztms keygen DIR`".into(),
    })
}

pub fn load_signing(path: &Path) -> Result<SigningKey, UpdateError> {
    Ok(SigningKey::from_bytes(&read_32(path)?))
}

pub fn load_verifying(path: &Path) -> Result<VerifyingKey, UpdateError> {
    VerifyingKey::from_bytes(&read_32(path)?).map_err(|e| UpdateError::Key {
        path: path.to_path_buf(),
        reason: format!("not an ed25519 public key: {e}"),
    })
}
