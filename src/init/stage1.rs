//! Stage 1, run from the initramfs: load the storage modules, open the
//! slot's root partition through dm-verity, mount it and hand over to
//! stage 2 in it.

use std::convert::Infallible;
use std::ffi::{CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{self, MsFlags};

use super::cmdline::{self, BootParams, CmdlineError};
use super::block::{self, BlockError};
use super::mounts::{self, MountError};
use super::verity::{self, VerityError};
use super::{logger, modules, STARTED_ENV};

/// Mount point of the root filesystem before the switch.
const SYSROOT: &str = "/sysroot";
/// Stage 2 inside the root filesystem.
pub const STAGE2_PATH: &str = "/usr/lib/ztms/ztms-init";
const STAGE2_PATH_C: &CStr = c"/usr/lib/ztms/ztms-init";
/// How long stage 1 waits for the root partition to appear.
const PARTITION_TIMEOUT: Duration = Duration::from_secs(10);
/// `statfs` magic numbers of the filesystems an initramfs unpacks into.
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// An error that stops stage 1 before it hands over to stage 2.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("cannot read /proc/cmdline: {0}")]
    ReadCmdline(std::io::Error),
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    #[error(transparent)]
    Partition(#[from] BlockError),
    #[error(transparent)]
    Verity(#[from] VerityError),
    #[error("mounting {device} as EROFS on {SYSROOT} failed: {source}")]
    MountRoot { device: PathBuf, source: nix::Error },
    #[error("the root filesystem of slot {slot} has no {STAGE2_PATH}; the image is incomplete")]
    NoStage2 { slot: String },
    #[error("moving {from} to {to} failed: {source}; the root filesystem lacks the directory")]
    Move { from: String, to: String, source: nix::Error },
    #[error("switching the root to {SYSROOT} failed at {step}: {source}")]
    SwitchRoot { step: &'static str, source: nix::Error },
    #[error("starting stage 2 ({STAGE2_PATH}) failed: {0}")]
    Exec(nix::Error),
}

/// Runs stage 1. It returns only with the error that stopped it, because a
/// successful run ends in exec(2) of stage 2.
pub fn run(started_ms: u64) -> Result<Infallible, BootError> {
    for spec in &mounts::STAGE1 {
        mounts::mount_one(spec)?;
    }
    logger::open_console(true);
    attach_console();
    log::info!("stage 1 started");

    let text = std::fs::read_to_string("/proc/cmdline").map_err(BootError::ReadCmdline)?;
    let params = cmdline::parse(&text)?;
    if let Some(level) = params.log_level {
        logger::set_level(level);
    }
    log::info!("booting slot {} from partition {}", params.slot, params.root_label);

    load_initramfs_modules();

    let partition = block::wait_for_label(&params.root_label, PARTITION_TIMEOUT)?;
    let device = verity::open_root(&partition.numbers(), &params)?;
    mount_root(&device, &params)?;
    switch_root()?;

    logger::close_kmsg();
    exec_stage2(started_ms)
}

/// Points stdin, stdout and stderr at `/dev/console`, so stage 2 and every
/// panic message inherit it.
fn attach_console() {
    let Ok(console) = nix::fcntl::open(
        "/dev/console",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    ) else {
        return;
    };
    for target in 0..=2 {
        if console != target {
            let _ = nix::unistd::dup2(console, target);
        }
    }
    if console > 2 {
        let _ = nix::unistd::close(console);
    }
}

fn load_initramfs_modules() {
    let release = match modules::kernel_release() {
        Ok(release) => release,
        Err(error) => {
            log::warn!("cannot read the kernel release: {error}; loading no modules");
            return;
        }
    };
    let list = match std::fs::read_to_string(modules::INITRAMFS_LIST) {
        Ok(text) => modules::parse_list(&text),
        Err(error) => {
            log::warn!("cannot read {}: {error}; loading no modules", modules::INITRAMFS_LIST);
            return;
        }
    };
    let base = Path::new("/lib/modules").join(&release);
    let failures = modules::load_all(&base, &list);
    log::info!("loaded {} of {} initramfs modules", list.len() - failures, list.len());
}

fn mount_root(device: &Path, params: &BootParams) -> Result<(), BootError> {
    let _ = std::fs::create_dir_all(SYSROOT);
    mount::mount(
        Some(device),
        SYSROOT,
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|source| BootError::MountRoot {
        device: device.to_path_buf(),
        source,
    })?;

    let stage2 = Path::new(SYSROOT).join(STAGE2_PATH.trim_start_matches('/'));
    if !stage2.is_file() {
        return Err(BootError::NoStage2 {
            slot: params.slot.clone(),
        });
    }
    log::info!("mounted root filesystem of slot {} read-only on {SYSROOT}", params.slot);
    Ok(())
}

/// Moves the API filesystems into the new root, frees the initramfs and
/// makes `/sysroot` the root, as util-linux switch_root does.
fn switch_root() -> Result<(), BootError> {
    for spec in &mounts::STAGE1 {
        let to = format!("{SYSROOT}{}", spec.target);
        mount::mount(Some(spec.target), to.as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(
            |source| BootError::Move {
                from: spec.target.to_string(),
                to: to.clone(),
                source,
            },
        )?;
    }

    free_initramfs();

    let step = |step| move |source| BootError::SwitchRoot { step, source };
    nix::unistd::chdir(SYSROOT).map_err(step("chdir"))?;
    // Moving the new root over "/" works on rootfs, where pivot_root(2)
    // does not.
    mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(step("mount --move"))?;
    nix::unistd::chroot(".").map_err(step("chroot"))?;
    nix::unistd::chdir("/").map_err(step("chdir /"))?;
    log::info!("switched root to the slot's filesystem");
    Ok(())
}

/// Deletes the initramfs files so their memory is freed. Only runs on
/// ramfs or tmpfs, and never crosses into another filesystem, which keeps
/// `/sysroot` and the moved mounts untouched.
fn free_initramfs() {
    let Ok(stats) = nix::sys::statfs::statfs("/") else {
        return;
    };
    let magic = stats.filesystem_type().0;
    if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
        log::debug!("the old root is not ramfs or tmpfs; leaving it in place");
        return;
    }
    let Ok(root) = std::fs::symlink_metadata("/") else {
        return;
    };
    remove_tree(Path::new("/"), root.dev());
}

fn remove_tree(directory: &Path, root_device: u64) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if metadata.dev() != root_device {
            continue;
        }
        if metadata.is_dir() {
            remove_tree(&path, root_device);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn exec_stage2(started_ms: u64) -> Result<Infallible, BootError> {
    let arguments = [STAGE2_PATH_C];
    let mut environment: Vec<CString> = CString::new(format!("{STARTED_ENV}={started_ms}")).into_iter().collect();
    for (key, value) in std::env::vars() {
        if key != STARTED_ENV {
            if let Ok(variable) = CString::new(format!("{key}={value}")) {
                environment.push(variable);
            }
        }
    }
    log::info!("starting stage 2");
    let error = match nix::unistd::execve(STAGE2_PATH_C, &arguments, &environment) {
        Err(error) => error,
        Ok(never) => match never {},
    };
    Err(BootError::Exec(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage2_path_constants_agree() {
        assert_eq!(STAGE2_PATH_C.to_str().unwrap(), STAGE2_PATH);
    }
}
