//! Finding partitions by GPT label through sysfs, without udev: each block
//! device's `uevent` file carries `PARTNAME=` for GPT partitions.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Sysfs directory that lists the block devices.
pub const SYS_CLASS_BLOCK: &str = "/sys/class/block";

/// A block device found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name, for example `vda2`; devtmpfs creates `/dev/<name>`.
    pub name: String,
    pub major: u32,
    pub minor: u32,
}

impl BlockDevice {
    /// Returns the device node path.
    pub fn node(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }

    /// Returns `major:minor`, the form device-mapper tables accept.
    pub fn numbers(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

/// A partition that did not appear.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("partition with GPT label {label:?} not found after {} s; the disk or its driver module is missing", .waited.as_secs())]
    NotFound { label: String, waited: Duration },
}

/// The fields of a block device's `uevent` file that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uevent {
    pub devname: Option<String>,
    pub partname: Option<String>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
}

/// Parses a sysfs `uevent` file (`KEY=value` lines).
pub fn parse_uevent(text: &str) -> Uevent {
    let mut event = Uevent::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "DEVNAME" => event.devname = Some(value.to_string()),
            "PARTNAME" => event.partname = Some(value.to_string()),
            "MAJOR" => event.major = value.parse().ok(),
            "MINOR" => event.minor = value.parse().ok(),
            _ => {}
        }
    }
    event
}

/// Mounts removable media (FAT or ext4) read-only, without devices,
/// set-id programs or execution, on the existing directory `target`.
pub fn mount_removable(device: &str, target: &Path) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let mut errors = Vec::new();
    for fstype in ["vfat", "ext4"] {
        match mount(Some(device), target, Some(fstype), flags, None::<&str>) {
            Ok(()) => return Ok(()),
            Err(error) => errors.push(format!("{fstype}: {error}")),
        }
    }
    Err(format!("mounting {device} read-only failed ({})", errors.join(", ")))
}

/// Returns every block device whose GPT label is `label`, sorted by name.
pub fn find_by_label(sys_class_block: &Path, label: &str) -> Vec<BlockDevice> {
    let Ok(entries) = std::fs::read_dir(sys_class_block) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("uevent")) else {
            continue;
        };
        let event = parse_uevent(&text);
        if event.partname.as_deref() != Some(label) {
            continue;
        }
        let (Some(name), Some(major), Some(minor)) = (event.devname, event.major, event.minor) else {
            continue;
        };
        found.push(BlockDevice { name, major, minor });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// Polls sysfs until a partition labelled `label` appears or `timeout`
/// passes. When two partitions carry the label, the first by name is used
/// and a warning is logged.
pub fn wait_for_label(label: &str, timeout: Duration) -> Result<BlockDevice, BlockError> {
    let started = Instant::now();
    loop {
        let mut found = find_by_label(Path::new(SYS_CLASS_BLOCK), label);
        if !found.is_empty() {
            if found.len() > 1 {
                let names: Vec<&str> = found.iter().map(|d| d.name.as_str()).collect();
                log::warn!(
                    "{} partitions carry the label {label:?} ({}); using {}",
                    found.len(),
                    names.join(", "),
                    names[0]
                );
            }
            let device = found.swap_remove(0);
            log::info!(
                "found partition {label} at {} after {} ms",
                device.node().display(),
                started.elapsed().as_millis()
            );
            return Ok(device);
        }
        if started.elapsed() >= timeout {
            return Err(BlockError::NotFound {
                label: label.to_string(),
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uevent_fields_are_parsed() {
        let event = parse_uevent("MAJOR=259\nMINOR=3\nDEVNAME=nvme0n1p3\nDEVTYPE=partition\nPARTN=3\nPARTNAME=media-root-a\n");
        assert_eq!(event.devname.as_deref(), Some("nvme0n1p3"));
        assert_eq!(event.partname.as_deref(), Some("media-root-a"));
        assert_eq!(event.major, Some(259));
        assert_eq!(event.minor, Some(3));
    }

    #[test]
    fn uevent_without_partname() {
        let event = parse_uevent("MAJOR=8\nMINOR=0\nDEVNAME=sda\nDEVTYPE=disk\n");
        assert_eq!(event.partname, None);
    }

    #[test]
    fn find_by_label_reads_sysfs_tree() {
        let root = tempfile::tempdir().unwrap();
        for (name, label, minor) in [("vda1", "x-esp", 1), ("vda2", "x-root-a", 2), ("vda", "", 0)] {
            let directory = root.path().join(name);
            std::fs::create_dir(&directory).unwrap();
            let mut text = format!("MAJOR=254\nMINOR={minor}\nDEVNAME={name}\n");
            if !label.is_empty() {
                text.push_str(&format!("PARTNAME={label}\n"));
            }
            std::fs::write(directory.join("uevent"), text).unwrap();
        }
        let found = find_by_label(root.path(), "x-root-a");
        assert_eq!(
            found,
            vec![BlockDevice {
                name: "vda2".into(),
                major: 254,
                minor: 2
            }]
        );
        assert_eq!(found[0].numbers(), "254:2");
    }
}
