//! The root partition: a compressed EROFS image of the tree followed by its
//! dm-verity hash tree, in one file.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use super::host::run;
use super::BuildError;

/// Block size of the data and of the hash tree.
pub const VERITY_BLOCK: u64 = 4096;

/// What stage 1 needs to open the root partition with dm-verity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verity {
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
    /// Block index (of `VERITY_BLOCK` bytes) where the hash tree starts,
    /// past the verity superblock.
    pub hash_start_block: u64,
    /// Bytes of the whole partition content: data, superblock and tree.
    pub total_size: u64,
}

impl Verity {
    /// Kernel command-line arguments that pass this to ztms-init.
    pub fn cmdline(&self) -> String {
        format!(
            "ztms.roothash={} ztms.verity={}:{}:{}",
            self.root_hash, self.data_blocks, self.hash_start_block, self.salt
        )
    }
}

/// Makes the EROFS image of `tree` at `image`, with every timestamp set to
/// `epoch` and the UUID given, so equal trees give equal images.
pub fn make_erofs(tree: &Path, image: &Path, epoch: u64, uuid: &str) -> Result<(), BuildError> {
    run(
        "erofs",
        Command::new("mkfs.erofs")
            .arg("-zlz4hc")
            .arg(format!("-T{epoch}"))
            .arg(format!("-U{uuid}"))
            .arg("--all-root")
            .arg("--quiet")
            .arg(image)
            .arg(tree),
    )?;
    Ok(())
}

/// Appends the dm-verity superblock and hash tree to `image` and returns the
/// parameters. The salt is given so that the root hash is reproducible.
pub fn append_verity(image: &Path, salt: &str, uuid: &str) -> Result<Verity, BuildError> {
    let data_size = std::fs::metadata(image)
        .map_err(|e| BuildError::io("read root image", image, e))?
        .len();
    let data_blocks = data_size.div_ceil(VERITY_BLOCK);
    let hash_offset = data_blocks * VERITY_BLOCK;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(|e| BuildError::io("open root image", image, e))?;
    file.set_len(hash_offset).map_err(|e| BuildError::io("pad root image", image, e))?;
    drop(file);

    let output = run(
        "verity",
        Command::new("veritysetup")
            .arg("format")
            .arg(format!("--data-blocks={data_blocks}"))
            .arg(format!("--hash-offset={hash_offset}"))
            .arg(format!("--salt={salt}"))
            .arg(format!("--uuid={uuid}"))
            .arg(image)
            .arg(image),
    )?;
    let root_hash = parse_root_hash(&output).ok_or_else(|| BuildError::Command {
        step: "verity".into(),
        command: "veritysetup format".into(),
        status: "success".into(),
        output: format!("no root hash in the output:\n{output}"),
    })?;
    let total_size = std::fs::metadata(image)
        .map_err(|e| BuildError::io("read root image", image, e))?
        .len();
    Ok(Verity {
        root_hash,
        salt: salt.to_string(),
        data_blocks,
        hash_start_block: hash_offset / VERITY_BLOCK + 1,
        total_size,
    })
}

fn parse_root_hash(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|line| line.strip_prefix("Root hash:"))
        .map(|hash| hash.trim().to_string())
        .filter(|hash| hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_hash_parsed_from_veritysetup_output() {
        let output = "VERITY header information for x\nSalt:            00\nRoot hash:      \t0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
        assert_eq!(
            parse_root_hash(output).unwrap(),
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        );
        assert_eq!(parse_root_hash("Root hash: zz"), None);
    }
}
