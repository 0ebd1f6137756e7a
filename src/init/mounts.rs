//! Mount tables of both stages, the mounts already in place read from
//! `/proc/self/mountinfo`, and the unmount order at shutdown.

use std::path::Path;

use nix::mount::{self, MntFlags, MsFlags};

/// When a mount is attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// Only when this directory exists, for kernel features that may be
    /// absent (EFI variables, security modules).
    IfExists(&'static str),
}

/// One filesystem to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
    /// A required mount that fails fails the phase; an optional one is logged.
    pub required: bool,
    pub condition: Condition,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

const PROC: MountSpec = MountSpec {
    source: "proc",
    target: "/proc",
    fstype: "proc",
    flags: NOSUID_NODEV_NOEXEC,
    data: None,
    required: true,
    condition: Condition::Always,
};

const SYS: MountSpec = MountSpec {
    source: "sysfs",
    target: "/sys",
    fstype: "sysfs",
    flags: NOSUID_NODEV_NOEXEC,
    data: None,
    required: true,
    condition: Condition::Always,
};

const DEV: MountSpec = MountSpec {
    source: "devtmpfs",
    target: "/dev",
    fstype: "devtmpfs",
    flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
    data: Some("mode=0755"),
    required: true,
    condition: Condition::Always,
};

/// `/run` contains sockets and generated files, never programs.
const RUN: MountSpec = MountSpec {
    source: "tmpfs",
    target: "/run",
    fstype: "tmpfs",
    flags: NOSUID_NODEV_NOEXEC,
    data: Some("mode=0755"),
    required: true,
    condition: Condition::Always,
};

/// Mounts of stage 1; stage 2 receives them moved below the new root.
pub const STAGE1: [MountSpec; 4] = [PROC, SYS, DEV, RUN];

/// Mounts of stage 2 in order. Those that stage 1 moved into the new root
/// are already mounted and skipped.
pub const STAGE2: [MountSpec; 11] = [
    PROC,
    SYS,
    DEV,
    RUN,
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("mode=0620,ptmxmode=0666,gid=5"),
        required: true,
        condition: Condition::Always,
    },
    MountSpec {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
        required: true,
        condition: Condition::Always,
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
        required: true,
        condition: Condition::Always,
    },
    MountSpec {
        source: "securityfs",
        target: "/sys/kernel/security",
        fstype: "securityfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        required: false,
        condition: Condition::IfExists("/sys/kernel/security"),
    },
    // Read-only: ztms-init only reads the boot loader's variables, and a
    // stray write to some firmware variables can brick a machine.
    MountSpec {
        source: "efivarfs",
        target: "/sys/firmware/efi/efivars",
        fstype: "efivarfs",
        flags: NOSUID_NODEV_NOEXEC.union(MsFlags::MS_RDONLY),
        data: None,
        required: false,
        condition: Condition::IfExists("/sys/firmware/efi/efivars"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
        required: true,
        condition: Condition::Always,
    },
    MountSpec {
        source: "tmpfs",
        target: "/var",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=0755"),
        required: true,
        condition: Condition::Always,
    },
];

/// Directories created on the fresh tmpfs mounts, with their modes.
pub const STAGE2_DIRECTORIES: [(&str, u32); 6] = [
    ("/run/ztms", 0o755),
    ("/run/lock", 0o755),
    ("/var/tmp", 0o1777),
    ("/var/log", 0o755),
    ("/var/lib", 0o755),
    ("/var/cache", 0o755),
];

/// Links (path, target) that udev or systemd would create: devtmpfs has no
/// `/dev/fd`, and the tmpfs on `/var` hides the image's `/var/run`.
pub const SYMLINKS: [(&str, &str); 6] = [
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/var/run", "/run"),
    ("/var/lock", "/run/lock"),
];

/// Mount points that stay mounted at shutdown: the root and the API
/// filesystems below which the kernel keeps its own state.
const KEPT_AT_SHUTDOWN: [&str; 4] = ["/", "/proc", "/sys", "/dev"];

/// A mount that failed.
#[derive(Debug, thiserror::Error)]
#[error("mounting {fstype} on {target} failed: {source}")]
pub struct MountError {
    pub fstype: &'static str,
    pub target: &'static str,
    pub source: nix::Error,
}

/// Returns the mount points listed in `/proc/self/mountinfo`, in mount
/// order, with the octal escapes (`\040` for a space) decoded.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[index], octal) {
            (b'\\', Some(value)) => {
                out.push(value);
                index += 4;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Returns the mount points to unmount at shutdown, innermost first:
/// the reverse mount order, without the root and the API filesystems.
pub fn unmount_order(mountinfo: &str) -> Vec<String> {
    let mut points = mount_points(mountinfo);
    points.reverse();
    points.dedup();
    points
        .into_iter()
        .filter(|point| {
            !KEPT_AT_SHUTDOWN
                .iter()
                .any(|kept| point == kept || (*kept != "/" && point.starts_with(&format!("{kept}/"))))
        })
        .collect()
}

fn read_mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| mount_points(&text))
        .unwrap_or_default()
}

/// Mounts `spec`, creating its target directory first.
pub fn mount_one(spec: &MountSpec) -> Result<(), MountError> {
    if !Path::new(spec.target).exists() {
        // A read-only parent makes this fail; mount(2) then reports ENOENT.
        let _ = std::fs::create_dir_all(spec.target);
    }
    mount::mount(Some(spec.source), spec.target, Some(spec.fstype), spec.flags, spec.data).map_err(|source| {
        MountError {
            fstype: spec.fstype,
            target: spec.target,
            source,
        }
    })
}

/// Mounts each entry of `table` that is not mounted yet and whose
/// condition holds. Optional failures are logged; the required ones are
/// returned.
pub fn mount_table(table: &[MountSpec]) -> Vec<MountError> {
    let mounted = read_mount_points();
    let mut failures = Vec::new();
    for spec in table {
        if mounted.iter().any(|point| point == spec.target) {
            log::debug!("{} is already mounted", spec.target);
            continue;
        }
        if let Condition::IfExists(path) = spec.condition {
            if !Path::new(path).exists() {
                log::debug!("skipping {}: {path} does not exist", spec.target);
                continue;
            }
        }
        match mount_one(spec) {
            Ok(()) => log::debug!("mounted {} on {}", spec.fstype, spec.target),
            Err(error) if spec.required => failures.push(error),
            Err(error) => log::warn!("{error}; going on without it"),
        }
    }
    failures
}

/// Creates [`STAGE2_DIRECTORIES`] and [`SYMLINKS`], logging failures.
pub fn populate() {
    use std::os::unix::fs::PermissionsExt;

    for (path, mode) in STAGE2_DIRECTORIES {
        let created = std::fs::create_dir_all(path)
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)));
        if let Err(error) = created {
            log::warn!("creating directory {path} failed: {error}");
        }
    }
    for (link, target) in SYMLINKS {
        match std::os::unix::fs::symlink(target, link) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => log::warn!("creating symlink {link} -> {target} failed: {error}"),
        }
    }
}

/// Unmounts everything but the root and the API filesystems, innermost
/// first. A busy filesystem is remounted read-only instead.
pub fn unmount_all() {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        log::warn!("cannot read /proc/self/mountinfo; nothing unmounted");
        return;
    };
    for point in unmount_order(&mountinfo) {
        match mount::umount2(point.as_str(), MntFlags::empty()) {
            Ok(()) => log::debug!("unmounted {point}"),
            Err(error) => {
                let remount = mount::mount(
                    None::<&str>,
                    point.as_str(),
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
                match remount {
                    Ok(()) => log::warn!("unmounting {point} failed: {error}; remounted it read-only"),
                    Err(remount_error) => log::warn!(
                        "unmounting {point} failed: {error}, and remounting it read-only failed: {remount_error}"
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / ro,relatime - erofs /dev/mapper/root ro
23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw
24 22 0:20 / /proc rw - proc proc rw
25 22 0:21 / /sys rw - sysfs sysfs rw
26 22 0:22 / /run rw - tmpfs tmpfs rw
27 23 0:23 / /dev/pts rw - devpts devpts rw
28 25 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
29 22 0:25 / /tmp rw - tmpfs tmpfs rw
30 22 0:26 / /var rw - tmpfs tmpfs rw
31 22 8:1 / /efi\\040dir rw - vfat /dev/vda1 rw
";

    #[test]
    fn mount_points_are_in_mount_order() {
        let points = mount_points(MOUNTINFO);
        assert_eq!(points[0], "/");
        assert_eq!(points[4], "/run");
        assert_eq!(points.len(), 10);
    }

    #[test]
    fn mount_points_decode_octal_escapes() {
        assert_eq!(mount_points(MOUNTINFO)[9], "/efi dir");
    }

    #[test]
    fn unmount_order_is_reverse_without_api_filesystems() {
        assert_eq!(unmount_order(MOUNTINFO), ["/efi dir", "/var", "/tmp", "/run"]);
    }

    #[test]
    fn stage1_table_moves_into_stage2() {
        for spec in STAGE1 {
            assert!(STAGE2.iter().any(|later| later.target == spec.target), "{}", spec.target);
        }
    }

    #[test]
    fn writable_mounts_forbid_execution() {
        for spec in STAGE2.iter().filter(|s| s.fstype == "tmpfs") {
            assert!(spec.flags.contains(MsFlags::MS_NOEXEC), "{}", spec.target);
            assert!(spec.flags.contains(MsFlags::MS_NOSUID), "{}", spec.target);
            assert!(spec.flags.contains(MsFlags::MS_NODEV), "{}", spec.target);
        }
    }

    #[test]
    fn parents_mount_before_children() {
        for (index, spec) in STAGE2.iter().enumerate() {
            for later in &STAGE2[index + 1..] {
                assert!(
                    !spec.target.starts_with(&format!("{}/", later.target)),
                    "{} comes before its parent {}",
                    spec.target,
                    later.target
                );
            }
        }
    }
}
