//! The update that failed: after systemd-boot fell back to the running
//! version, the ESP still contains the other version's UKI with its boot
//! counter used up (`NAME-VERSION+0-DONE.efi`). The persisted log gives
//! the reason its boots failed, when they got far enough to write it.

use std::path::Path;
use std::time::Duration;

use std::cmp::Ordering;

use super::{block, bless};
use crate::update::version::compare;
use crate::build::layout::{self, Role};
use crate::status::FailedUpdate;

/// Directory of the UKIs on the ESP.
const UKI_DIRECTORY: &str = "EFI/Linux";
/// Mount point of the ESP while its file names are read.
const ESP_MOUNT: &str = "/run/ztms/esp-rollback";
/// Log lines that explain a failed boot, most telling first.
const REASON_MARKERS: &[&str] = &["not every service is healthy", "verity", "failed"];

/// Returns the version and the number of tries of a UKI of `name` whose
/// boot counter is used up, other than `running`. With several, the
/// highest version wins: it is the most recent update.
pub fn exhausted_version(name: &str, running: &str, uki_names: &[String]) -> Option<(String, u32)> {
    let prefix = format!("{name}-");
    let mut found: Option<(String, u32)> = None;
    for file in uki_names {
        if bless::tries_left(file) != Some(0) {
            continue;
        }
        let Some(plain) = bless::strip_boot_counter(file) else { continue };
        let Some(version) = plain.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(".efi")) else { continue };
        if version == running {
            continue;
        }
        let done = file.rsplit_once('-').and_then(|(_, tail)| tail.trim_end_matches(".efi").parse().ok()).unwrap_or(0);
        if done == 0 {
            // `+0-0`: a newer version put behind a blessed downgrade.
            continue;
        }
        if found.as_ref().map_or(true, |(best, _)| compare(version, best) == Ordering::Greater) {
            found = Some((version.to_string(), done));
        }
    }
    found
}

/// Returns the line of the persisted log `text` that best explains why
/// the boots of `version` of `name` failed, without its time stamp.
///
/// A boot's lines follow its `appliance NAME VERSION with N services`
/// line; a boot that stopped before /data was mounted wrote none.
pub fn failure_reason(text: &str, name: &str, version: &str) -> Option<String> {
    let header = format!("appliance {name} ");
    let mut in_version = false;
    let mut best: Option<(usize, &str)> = None;
    for line in text.lines() {
        let message = line.split_once(' ').map_or(line, |(_, rest)| rest);
        if let Some(rest) = message.strip_prefix("ztms-init: ").and_then(|m| m.strip_prefix(&header)) {
            in_version = rest.split(' ').next() == Some(version);
            continue;
        }
        if !in_version {
            continue;
        }
        if let Some(rank) = REASON_MARKERS.iter().position(|marker| message.contains(marker)) {
            // The latest line of the best rank wins: it is from the last try.
            if best.map_or(true, |(best_rank, _)| rank <= best_rank) {
                best = Some((rank, message));
            }
        }
    }
    best.map(|(_, message)| message.trim_start_matches("ztms-init: ").to_string())
}

/// Reads the persisted log, the oldest rotated file first.
fn read_log(data_dir: &Path) -> String {
    let current = data_dir.join(super::storage::LOG_FILE);
    let mut files: Vec<_> = (1..=super::logfile::KEEP)
        .rev()
        .map(|number| current.with_extension(format!("log.{number}")))
        .collect();
    files.push(current);
    files.iter().filter_map(|path| std::fs::read_to_string(path).ok()).collect::<Vec<_>>().join("")
}

/// Lists the UKIs on the ESP of appliance `name`.
fn uki_names(name: &str) -> Result<Vec<String>, String> {
    let label = layout::label(name, Role::Esp);
    let partition = block::wait_for_label(&label, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(ESP_MOUNT).map_err(|e| format!("creating {ESP_MOUNT} failed: {e}"))?;
    bless::mount_esp_at(&partition.node(), ESP_MOUNT).map_err(|e| e.to_string())?;
    let names = std::fs::read_dir(Path::new(ESP_MOUNT).join(UKI_DIRECTORY))
        .map(|entries| entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect())
        .map_err(|e| format!("reading {UKI_DIRECTORY} on the ESP failed: {e}"));
    if let Err(error) = nix::mount::umount(ESP_MOUNT) {
        log::warn!("unmounting the ESP from {ESP_MOUNT} failed: {error}");
    }
    names
}

/// Finds an update that systemd-boot gave up on, and why it failed; logs
/// it. `data_dir` is where /data is mounted, or `None` without it.
pub fn detect(name: &str, running: &str, data_dir: Option<&Path>) -> Option<FailedUpdate> {
    if !Path::new(bless::EFIVARS).is_dir() {
        return None;
    }
    let names = match uki_names(name) {
        Ok(names) => names,
        Err(error) => {
            log::warn!("update: cannot look for a failed update: {error}");
            return None;
        }
    };
    let (version, tries) = exhausted_version(name, running, &names)?;
    let reason = data_dir.and_then(|dir| failure_reason(&read_log(dir), name, &version)).unwrap_or_else(|| {
        "its boots left no log: they stopped before /data was mounted, for example when the root's verity check failed"
            .to_string()
    });
    log::warn!("update: version {version} failed {tries} tries and systemd-boot went back to {running}: {reason}");
    Some(FailedUpdate { version, tries, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn used_up_counter_names_the_failed_version() {
        let esp = names(&["app-2.0.0.efi", "app-3.0.0+0-3.efi"]);
        assert_eq!(exhausted_version("app", "2.0.0", &esp), Some(("3.0.0".into(), 3)));
    }

    #[test]
    fn tries_left_or_running_version_is_not_a_failure() {
        assert_eq!(exhausted_version("app", "2.0.0", &names(&["app-2.0.0.efi", "app-3.0.0+2-1.efi"])), None);
        assert_eq!(exhausted_version("app", "3.0.0", &names(&["app-3.0.0+0-3.efi"])), None);
        assert_eq!(exhausted_version("app", "2.0.0", &names(&["other-3.0.0+0-3.efi"])), None);
        assert_eq!(exhausted_version("app", "1.0.0", &names(&["app-1.0.0.efi", "app-2.0.0+0-0.efi"])), None);
    }

    #[test]
    fn newest_failed_version_wins() {
        let esp = names(&["app-1.10.0+0-3.efi", "app-1.9.0+0-3.efi", "app-1.2.0.efi"]);
        assert_eq!(exhausted_version("app", "1.2.0", &esp), Some(("1.10.0".into(), 3)));
    }

    const LOG: &str = "\
2026-12-05T05:00:00Z ztms-init: appliance app 2.0.0 with 1 services
2026-12-05T05:00:01Z ztms-init: phase services failed: web exited
2026-12-05T05:01:00Z ztms-init: appliance app 3.0.0 with 1 services
2026-12-05T05:01:01Z ztms-init: phase network done in 3 ms
2026-12-05T05:01:31Z ztms-init: not every service is healthy 30 s after init start (unhealthy: web); the boot stays unblessed
2026-12-05T05:01:31Z ztms-init: rebooting the unhealthy trial boot (2 tries left, 2 boot entries)
2026-12-05T05:02:00Z ztms-init: appliance app 3.0.0 with 1 services
2026-12-05T05:02:10Z ztms-init: health check of web failed: connection refused
2026-12-05T05:02:31Z ztms-init: not every service is healthy 30 s after init start (unhealthy: web, db); the boot stays unblessed
2026-12-05T05:03:00Z ztms-init: appliance app 2.0.0 with 1 services
2026-12-05T05:03:01Z ztms-init: not every service is healthy 30 s after init start (unhealthy: other); the boot stays unblessed
";

    #[test]
    fn reason_comes_from_the_last_try_of_the_failed_version() {
        assert_eq!(
            failure_reason(LOG, "app", "3.0.0").as_deref(),
            Some("not every service is healthy 30 s after init start (unhealthy: web, db); the boot stays unblessed")
        );
    }

    #[test]
    fn version_without_log_lines_has_no_reason() {
        assert_eq!(failure_reason(LOG, "app", "4.0.0"), None);
        assert_eq!(failure_reason(LOG, "other", "3.0.0"), None);
    }
}
