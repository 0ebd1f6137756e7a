//! Sealing the data volume's key to the TPM 2.0 with tpm2-tools.
//!
//! The key is sealed under the owner hierarchy's primary key, which the
//! TPM derives from its own seed: the sealed object loads only in the TPM
//! that made it. Its policy is PolicyPCR over [`SEAL_PCRS`], so it unseals
//! only while those PCRs hold the values they had when it was sealed. The
//! key moves through pipes; the files in the work directory hold only the
//! TPM's encrypted blobs and contexts, on the `/run` tmpfs.

use std::path::{Path, PathBuf};

use super::plan::SEAL_PCRS;
use crate::init::command::Run;

/// The TPM resource manager device; the kernel creates it for a TPM 2.0.
const TPM_DEVICE: &str = "/dev/tpmrm0";
/// Scratch directory for contexts and blobs.
const WORK_DIR: &str = "/run/ztms/tpm";
/// Object attributes of the sealed key: bound to this TPM and parent, no
/// dictionary-attack lockout, and usable only through its policy (no
/// `userwithauth`).
const SEAL_ATTRIBUTES: &str = "fixedtpm|fixedparent|noda|adminwithpolicy";
/// Object attributes of the primary key: tpm2-tools' default storage-key
/// template plus `noda`. Without `noda`, loading the sealed object uses a
/// dictionary-attack-protected authorization, and every power loss after
/// that counts as a failed try at the next startup. libtpms allows 3 tries
/// and forgives one per 1000 s, so the third power cut in a row locked the
/// TPM and the volume asked for its recovery key.
const PRIMARY_ATTRIBUTES: &str = "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda";

/// Returns true when the kernel has a TPM 2.0 resource manager device.
pub fn present() -> bool {
    Path::new(TPM_DEVICE).exists()
}

/// Returns the `sha256:7`-style PCR selection.
fn pcr_selection() -> String {
    let list: Vec<String> = SEAL_PCRS.iter().map(u32::to_string).collect();
    format!("sha256:{}", list.join(","))
}

fn tool(program: &str) -> Run<'static> {
    Run::new(program).env("TPM2TOOLS_TCTI", &format!("device:{TPM_DEVICE}"))
}

/// A fresh work directory, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<Self, String> {
        let path = PathBuf::from(WORK_DIR);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| format!("creating {WORK_DIR} failed: {e}"))?;
        Ok(Self(path))
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates the primary key of the owner hierarchy in `work`.
fn create_primary(work: &WorkDir) -> Result<String, String> {
    let context = work.file("primary.ctx");
    tool("tpm2_createprimary")
        .args(["-Q", "-C", "o", "-g", "sha256", "-G", "ecc256:aes128cfb", "-a", PRIMARY_ATTRIBUTES, "-c", &context])
        .output()?;
    // The key's name identifies the TPM's storage seed. When unsealing
    // fails, a name that differs from the one logged at sealing points to
    // another TPM rather than changed PCRs.
    match tool("tpm2_readpublic").args(["-c", &context]).output() {
        Ok(text) => {
            let text = String::from_utf8_lossy(&text);
            let name = text.lines().find_map(|line| line.strip_prefix("name: ")).unwrap_or("?");
            log::info!("storage: TPM storage key {name}");
        }
        Err(error) => log::warn!("storage: reading the TPM storage key failed: {error}"),
    }
    Ok(context)
}

/// Seals `secret` to the current values of [`SEAL_PCRS`]; returns the
/// public and private parts of the sealed object.
pub fn seal(secret: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let work = WorkDir::new()?;
    let primary = create_primary(&work)?;
    let policy = work.file("pcr.policy");
    tool("tpm2_createpolicy")
        .args(["-Q", "--policy-pcr", "-l", &pcr_selection(), "-L", &policy])
        .output()?;
    let (public, private) = (work.file("seal.pub"), work.file("seal.priv"));
    tool("tpm2_create")
        .args(["-Q", "-C", &primary, "-L", &policy, "-a", SEAL_ATTRIBUTES, "-i", "-", "-u", &public, "-r", &private])
        .stdin(secret)
        .output()?;
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("reading {path} failed: {e}"));
    Ok((read(&public)?, read(&private)?))
}

/// Unseals the secret of a sealed object; fails in another TPM or when
/// the PCRs changed.
pub fn unseal(public: &[u8], private: &[u8]) -> Result<Vec<u8>, String> {
    let work = WorkDir::new()?;
    let (public_path, private_path) = (work.file("seal.pub"), work.file("seal.priv"));
    std::fs::write(&public_path, public).map_err(|e| format!("writing {public_path} failed: {e}"))?;
    std::fs::write(&private_path, private).map_err(|e| format!("writing {private_path} failed: {e}"))?;
    let primary = create_primary(&work)?;
    let object = work.file("seal.ctx");
    tool("tpm2_load")
        .args(["-Q", "-C", &primary, "-u", &public_path, "-r", &private_path, "-c", &object])
        .output()?;
    tool("tpm2_unseal")
        .args(["-c", &object, "-p", &format!("pcr:{}", pcr_selection())])
        .output()
}
