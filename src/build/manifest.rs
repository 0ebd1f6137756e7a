//! `manifest.json`: what was built, from what, with the hash of every
//! artifact.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::base::Package;
use super::layout::Layout;
use super::rootimg::Verity;
use super::BuildError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifact {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub ztms_version: &'static str,
    pub source_date_epoch: u64,
    pub kernel_release: &'a str,
    pub cmdline: &'a str,
    pub uki: &'a str,
    pub verity: &'a Verity,
    pub partitions: &'a Layout,
    pub packages: &'a [Package],
    pub artifacts: Vec<Artifact>,
}

/// Hashes `path` and describes it under its file name.
pub fn artifact(path: &Path) -> Result<Artifact, BuildError> {
    let mut file = std::fs::File::open(path).map_err(|e| BuildError::io("hash artifact", path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let count = file.read(&mut buffer).map_err(|e| BuildError::io("hash artifact", path, e))?;
        if count == 0 {
            break;
        }
        hasher.update(&buffer[..count]);
        size += count as u64;
    }
    Ok(Artifact {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}
