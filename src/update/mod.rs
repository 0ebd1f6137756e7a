//! Update bundles: what `ztms build` signs and what the appliance checks
//! before it writes a byte to the inactive slot.

pub mod bundle;
pub mod client;
pub mod esp;
pub mod keys;
pub mod plan;
pub mod protocol;
pub mod relabel;
pub mod version;

use std::path::PathBuf;

/// A bundle that must not be applied, or an update that cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an update bundle: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("the signature of {path} does not match the update key; the bundle was changed or signed with another key")]
    BadSignature { path: PathBuf },
    #[error("{file} in {path} has sha256 {actual}, but the signed manifest says {expected}; the bundle was changed after signing")]
    HashMismatch {
        path: PathBuf,
        file: String,
        expected: String,
        actual: String,
    },
    #[error("bundle version {offered} is not newer than the running version {current}; pass --allow-downgrade to install it anyway")]
    NotNewer { current: String, offered: String },
    #[error("bundle is for appliance {offered:?}, but this appliance is {current:?}")]
    WrongAppliance { current: String, offered: String },
    #[error("the ESP has {free_mib} MiB free and the update needs {needed_mib} MiB; remove an unused UKI from /EFI/Linux or build with a larger disk.esp")]
    EspFull { needed_mib: u64, free_mib: u64 },
    #[error("invalid update key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the signed manifest lists no {file}; the bundle was built by an older ztms, rebuild it")]
    MissingArtifact { file: String },
    #[error("the root image needs {} MiB but partition {label} has {} MiB; reinstall the appliance from an image built with this disk.root", .needed.div_ceil(1 << 20), .available >> 20)]
    SlotTooSmall { label: String, needed: u64, available: u64 },
    #[error("no UKI on the ESP boots the running root (root hash {root_hash}); the ESP was changed by hand, reinstall the appliance")]
    RunningUkiNotFound { root_hash: String },
    #[error("the running boot entry {file} is not blessed yet, and its slot is the only fallback; wait until every service is healthy (`ztms status` says ready) and retry")]
    NotBlessed { file: String },
    #[error("version {version} is the running version; build a bundle with a new version")]
    AlreadyRunning { version: String },
}

/// Checks that an ESP with `free` bytes can take `needed` bytes, keeping
/// one MiB for FAT metadata.
pub fn check_esp_space(needed: u64, free: u64) -> Result<(), UpdateError> {
    let mib = |bytes: u64| bytes.div_ceil(1 << 20);
    if needed + (1 << 20) <= free {
        Ok(())
    } else {
        Err(UpdateError::EspFull { needed_mib: mib(needed) + 1, free_mib: free >> 20 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_check_names_both_sizes() {
        assert!(check_esp_space(10 << 20, 64 << 20).is_ok());
        let error = check_esp_space(30 << 20, 20 << 20).unwrap_err().to_string();
        assert!(error.contains("20 MiB free"), "{error}");
        assert!(error.contains("needs 31 MiB"), "{error}");
    }
}
