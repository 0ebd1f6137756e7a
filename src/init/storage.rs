//! The storage phase: unlocking and mounting the encrypted data partition.
//!
//! NOTE: the encrypted data partition is not implemented in this build.
//! When services exist, a tmpfs on `/data` replaces it so that their
//! secrets and volume directories exist, and everything on it is lost at
//! power-off. Unlocking (TPM2-sealed key with the recovery key as fallback)
//! and mounting the partition replace [`mount_data_tmpfs`].

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::plan::AppliancePlan;
use crate::runtime::DATA_DIR;

/// Prepares the data partition for `plan`; `data_label` is the GPT label
/// from `ztms.data=` on the kernel command line, if given.
pub fn run(plan: &AppliancePlan, data_label: Option<&str>) -> Result<(), String> {
    let label = data_label.unwrap_or("(none on the kernel command line)");
    log::info!(
        "storage: not configured in this build; data partition {label} of {} left untouched",
        plan.name
    );
    if plan.services.is_empty() {
        return Ok(());
    }
    mount_data_tmpfs()
}

/// Mounts a tmpfs on `/data` unless something is mounted there already.
fn mount_data_tmpfs() -> Result<(), String> {
    let data = Path::new(DATA_DIR);
    let device = |path: &Path| std::fs::metadata(path).map(|metadata| metadata.dev());
    let data_device = device(data).map_err(|error| format!("{DATA_DIR} is missing from the root image: {error}"))?;
    let root_device = device(Path::new("/")).map_err(|error| format!("reading / failed: {error}"))?;
    if data_device != root_device {
        return Ok(());
    }
    mount(
        Some("tmpfs"),
        data,
        Some("tmpfs"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )
    .map_err(|error| format!("mounting a tmpfs on {DATA_DIR} failed: {error}"))?;
    log::warn!("data partition not configured: {DATA_DIR} is a tmpfs and is lost at power-off");
    Ok(())
}
