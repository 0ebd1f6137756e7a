//! Updates from removable media, for an appliance that has no shell: a
//! USB stick whose FAT or ext4 filesystem is labelled `ZTMS-UPDATE`, with
//! bundles (`NAME-VERSION.ztmsb`) in its top directory. Once every service
//! is healthy, ztms-init looks for the stick every few seconds. The newest
//! bundle of this appliance that is newer than the running version goes
//! through the same checks and writes as one sent by `ztms update`, and
//! the appliance reboots into it. A bundle is tried once per boot, so a
//! stick left in place after the update changes nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::umount;

use super::command::Run;
use crate::update::version::compare;

/// Filesystem label of an update stick (FAT allows 11 characters).
pub const LABEL: &str = "ZTMS-UPDATE";
/// Suffix of bundle files.
const BUNDLE_SUFFIX: &str = ".ztmsb";
/// Mount point of the stick, read-only, while a bundle is copied.
const MOUNT_POINT: &str = "/run/ztms/update-stick";
/// Time between two looks for the stick.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Returns the bundle of appliance `name` with the highest version above
/// `running` among `files`, with that version.
pub fn choose(files: &[String], name: &str, running: &str) -> Option<(String, String)> {
    let prefix = format!("{name}-");
    files
        .iter()
        .filter_map(|file| {
            let version = file.strip_prefix(&prefix)?.strip_suffix(BUNDLE_SUFFIX)?;
            Some((file.clone(), version.to_string()))
        })
        .filter(|(_, version)| compare(version, running).is_gt())
        .max_by(|(_, a), (_, b)| compare(a, b))
}

/// A bundle found on a mounted stick.
#[derive(Debug)]
pub struct Found {
    pub bundle: PathBuf,
    pub mount_point: PathBuf,
    pub size: u64,
}

/// The looks for an update stick during one boot.
#[derive(Debug)]
pub struct StickWatch {
    next_check: Instant,
    /// Devices and bundle names already tried or found wanting.
    tried: Vec<String>,
}

impl StickWatch {
    pub fn new(now: Instant) -> Self {
        Self { next_check: now, tried: Vec::new() }
    }

    /// Looks for the stick when it is time; returns a bundle to apply, on
    /// a stick that stays mounted until [`unmount`].
    pub fn check(&mut self, now: Instant, name: &str, running: &str) -> Option<Found> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + CHECK_INTERVAL;
        let device = match Run::new("blkid").args(["-L", LABEL]).code() {
            Ok((Some(0), output)) => output.trim().to_string(),
            _ => return None,
        };
        if self.tried.contains(&device) {
            return None;
        }
        // One try per device and boot, whatever it holds.
        self.tried.push(device.clone());
        if let Err(error) = mount_read_only(&device) {
            log::warn!("update: found the update stick, but {error}");
            return None;
        }
        let files: Vec<String> = std::fs::read_dir(MOUNT_POINT)
            .map(|entries| entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let Some((file, version)) = choose(&files, name, running) else {
            log::info!(
                "update: the update stick {device} holds no bundle of {name} newer than {running} (files: {})",
                if files.is_empty() { "none".to_string() } else { files.join(", ") }
            );
            unmount(Path::new(MOUNT_POINT));
            return None;
        };
        let bundle = Path::new(MOUNT_POINT).join(&file);
        match std::fs::metadata(&bundle) {
            Ok(metadata) if metadata.is_file() => {
                log::info!("update: the update stick {device} holds {file}; updating from {running} to {version}");
                Some(Found { bundle, mount_point: MOUNT_POINT.into(), size: metadata.len() })
            }
            _ => {
                log::warn!("update: {file} on the update stick {device} is not a readable file");
                unmount(Path::new(MOUNT_POINT));
                None
            }
        }
    }
}

fn mount_read_only(device: &str) -> Result<(), String> {
    std::fs::create_dir_all(MOUNT_POINT).map_err(|e| format!("creating {MOUNT_POINT} failed: {e}"))?;
    super::block::mount_removable(device, Path::new(MOUNT_POINT))
}

/// Unmounts the stick; a failure is logged, as the bundle is already in
/// memory or was not wanted.
pub fn unmount(mount_point: &Path) {
    if let Err(error) = umount(mount_point) {
        log::warn!("update: unmounting the update stick from {} failed: {error}", mount_point.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn newest_newer_bundle_of_this_appliance_is_chosen() {
        let stick = files(&["app-1.10.0.ztmsb", "app-1.9.0.ztmsb", "other-9.0.0.ztmsb", "app-2.0.0.txt", "README"]);
        assert_eq!(choose(&stick, "app", "1.2.0"), Some(("app-1.10.0.ztmsb".into(), "1.10.0".into())));
    }

    #[test]
    fn running_or_older_bundle_is_not_chosen() {
        assert_eq!(choose(&files(&["app-1.0.0.ztmsb", "app-0.9.0.ztmsb"]), "app", "1.0.0"), None);
        assert_eq!(choose(&files(&[]), "app", "1.0.0"), None);
    }
}
