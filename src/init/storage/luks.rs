//! The LUKS2 volume on the data partition, through cryptsetup. Keys reach
//! cryptsetup on its standard input or on `/dev/fd/3`, never in a file.

use super::plan::{self, Cipher, Header, TpmToken};
use crate::init::command::Run;

const CRYPTSETUP: &str = "cryptsetup";

/// Key derivation function of a keyslot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    /// For secrets a person types or keeps (the recovery key, a key file):
    /// argon2id, memory-hard, tuned by cryptsetup to about two seconds.
    Argon2id,
    /// For random 256-bit keys that only the TPM releases: hardening adds
    /// nothing, so PBKDF2 with the minimum cost keeps unlocking fast.
    Fast,
}

impl Kdf {
    fn args(self) -> Vec<&'static str> {
        match self {
            Kdf::Argon2id => vec!["--pbkdf", "argon2id", "--iter-time", "2000", "--pbkdf-memory", "262144"],
            Kdf::Fast => vec!["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
        }
    }
}

/// Creates a LUKS2 header labelled [`plan::PROVISIONING_LABEL`] whose
/// keyslot 0 opens with `secret`.
pub fn format(device: &str, cipher: Cipher, secret: &[u8], kdf: Kdf) -> Result<(), String> {
    let key_size = cipher.key_bits.to_string();
    Run::new(CRYPTSETUP)
        .args(["luksFormat", "--batch-mode", "--type", "luks2", "--label", plan::PROVISIONING_LABEL])
        .args(["--cipher", cipher.name, "--key-size", &key_size, "--key-slot", "0"])
        .args(kdf.args())
        .args(["--key-file=-", device])
        .stdin(secret)
        .output()
        .map(drop)
}

/// Adds a keyslot for `new` in `slot`, authorised by `existing`.
pub fn add_key(device: &str, existing: &[u8], new: &[u8], slot: u32, kdf: Kdf) -> Result<(), String> {
    let slot = slot.to_string();
    Run::new(CRYPTSETUP)
        .args(["luksAddKey", "--batch-mode", "--key-file=-", "--new-keyfile=/dev/fd/3", "--new-key-slot", &slot])
        .args(kdf.args())
        .args([device])
        .stdin(existing)
        .fd3(new)
        .output()
        .map(drop)
}

/// Removes a keyslot.
pub fn kill_slot(device: &str, slot: u32) -> Result<(), String> {
    Run::new(CRYPTSETUP)
        .args(["luksKillSlot", "--batch-mode", device, &slot.to_string()])
        .output()
        .map(drop)
}

/// Stores `token`, replacing the token `replace` when given.
pub fn import_token(device: &str, token: &TpmToken, replace: Option<u32>) -> Result<(), String> {
    let json = serde_json::to_vec(token).map_err(|e| format!("encoding the TPM token failed: {e}"))?;
    let mut run = Run::new(CRYPTSETUP).args(["token", "import", "--json-file=-"]);
    if let Some(id) = replace {
        run = run.args(["--token-id".to_string(), id.to_string(), "--token-replace".to_string()]);
    }
    run.args([device]).stdin(&json).output().map(drop)
}

/// Reads the header's keyslots and TPM token.
pub fn header(device: &str) -> Result<Header, String> {
    let json = Run::new(CRYPTSETUP).args(["luksDump", "--dump-json-metadata", device]).output()?;
    plan::parse_header(&String::from_utf8_lossy(&json))
}

/// Sets the LUKS2 label.
pub fn set_label(device: &str, label: &str) -> Result<(), String> {
    Run::new(CRYPTSETUP)
        .args(["config", "--label", label, device])
        .output()
        .map(drop)
}

/// Opens the volume as `/dev/mapper/<name>` with `secret`.
pub fn open(device: &str, name: &str, secret: &[u8]) -> Result<(), String> {
    Run::new(CRYPTSETUP)
        .args(["open", "--type", "luks2", "--key-file=-", device, name])
        .stdin(secret)
        .output()
        .map(drop)
}

/// Returns the cipher of the volume's data segment.
pub fn cipher(device: &str) -> Result<String, String> {
    header(device)?.cipher.ok_or_else(|| "the header names no cipher".to_string())
}
