//! The dm-verity device of the root filesystem: its table, set up through
//! [`dm`](super::dm), and an early read that catches a wrong root hash
//! before the mount does.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use super::cmdline::BootParams;
use super::dm::{Control, DmError, Target};

/// Name of the device-mapper device of the root filesystem.
pub const ROOT_NAME: &str = "root";

/// Bytes per data and hash block; `ztms build` formats with this size.
const BLOCK_SIZE: u64 = 4096;
/// 512-byte sectors per block.
const SECTORS_PER_BLOCK: u64 = BLOCK_SIZE / 512;

/// A failed dm-verity setup.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error(transparent)]
    Dm(#[from] DmError),
    /// Reading the first block failed verification.
    #[error("verity check failed for {label}: root hash {root_hash} does not match")]
    HashMismatch { label: String, root_hash: String },
    #[error("reading the first block of {path} failed: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("creating device node {path} failed: {source}")]
    Node { path: PathBuf, source: nix::Error },
}

/// Returns the table of a dm-verity device over `device` (`major:minor`),
/// whose data and hash tree share the partition: format version 1, SHA-256,
/// 4096-byte data and hash blocks.
pub fn table(device: &str, params: &BootParams) -> Target {
    let verity = &params.verity;
    Target {
        start: 0,
        length: verity.data_blocks * SECTORS_PER_BLOCK,
        target_type: "verity".into(),
        params: format!(
            "1 {device} {device} {BLOCK_SIZE} {BLOCK_SIZE} {} {} sha256 {} {}",
            verity.data_blocks, verity.hash_start_block, params.root_hash, verity.salt
        ),
    }
}

/// Creates the `root` device over `device`, checks its first block and
/// returns the path of its device node.
pub fn open_root(device: &str, params: &BootParams) -> Result<PathBuf, VerityError> {
    let control = Control::open()?;
    let (major, minor) = control.create(ROOT_NAME)?;
    let target = table(device, params);
    log::info!("dm-verity table of {ROOT_NAME}: {target}");

    let activated = control
        .load_table(ROOT_NAME, &[target], true)
        .and_then(|()| control.resume(ROOT_NAME));
    if let Err(error) = activated {
        if let Err(remove_error) = control.remove(ROOT_NAME) {
            log::warn!("removing the half-created device {ROOT_NAME} failed: {remove_error}");
        }
        return Err(error.into());
    }

    let node = make_node(major, minor)?;
    check_first_block(&node, params)?;
    Ok(node)
}

/// Creates `/dev/mapper/root`, which udev would create on a full system;
/// devtmpfs only creates `/dev/dm-N`.
fn make_node(major: u32, minor: u32) -> Result<PathBuf, VerityError> {
    let path = PathBuf::from(format!("/dev/mapper/{ROOT_NAME}"));
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
    let device = nix::sys::stat::makedev(major.into(), minor.into());
    match nix::sys::stat::mknod(&path, nix::sys::stat::SFlag::S_IFBLK, mode, device) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(path),
        Err(source) => Err(VerityError::Node { path, source }),
    }
}

/// Reads the first 4 KiB. dm-verity checks that block against the hash
/// tree up to the root hash, so a wrong root hash fails here with EIO.
fn check_first_block(node: &PathBuf, params: &BootParams) -> Result<(), VerityError> {
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    let result = File::open(node).and_then(|mut file| file.read_exact(&mut block));
    match result {
        Ok(()) => Ok(()),
        Err(error) if error.raw_os_error() == Some(libc::EIO) => Err(VerityError::HashMismatch {
            label: params.root_label.clone(),
            root_hash: params.root_hash.clone(),
        }),
        Err(source) => Err(VerityError::Read {
            path: node.clone(),
            source,
        }),
    }
}

/// Removes the `root` device, which fails while it is mounted.
pub fn remove_root() -> Result<(), DmError> {
    Control::open()?.remove(ROOT_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::cmdline::VerityParams;

    fn params() -> BootParams {
        BootParams {
            slot: "a".into(),
            root_label: "media-root-a".into(),
            root_hash: "ab".repeat(32),
            verity: VerityParams {
                data_blocks: 1000,
                hash_start_block: 1001,
                salt: "00ff".into(),
            },
            data_label: None,
            log_level: None,
        }
    }

    #[test]
    fn table_matches_contract() {
        let target = table("254:2", &params());
        let expected = format!("0 8000 verity 1 254:2 254:2 4096 4096 1000 1001 sha256 {} 00ff", "ab".repeat(32));
        assert_eq!(target.to_string(), expected);
    }

    #[test]
    fn table_length_is_in_sectors() {
        assert_eq!(table("8:1", &params()).length, 8000);
    }
}
