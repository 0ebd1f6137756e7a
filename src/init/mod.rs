//! ztms-init: the appliance's PID 1.
//!
//! Stage 1 runs from the initramfs (recognized by `/etc/initrd-release`):
//! it opens the slot's root filesystem through dm-verity and executes stage
//! 2 from it. Stage 2 runs the boot phases, supervises the services and
//! shuts the appliance down on request.
//!
//! PID 1 must not exit or panic, because the kernel panics when it does.
//! Stage 1 reboots on any error, so systemd-boot's boot counting can fall
//! back to the other slot. Stage 2 logs a failed phase and keeps running in
//! a safe state.

pub mod apparmor;
pub mod audit;
pub mod backoff;
pub mod ban;
pub mod bless;
pub mod block;
pub mod cgroups;
pub mod cmdline;
pub mod command;
pub mod dm;
pub mod health;
pub mod logfile;
pub mod logger;
pub mod metrics;
pub mod modules;
pub mod mounts;
pub mod netns;
pub mod network;
pub mod order;
pub mod output;
pub mod phases;
pub mod plan;
pub mod rollback;
pub mod secrets;
pub mod shutdown;
pub mod signals;
pub mod spawn;
pub mod stage1;
pub mod stage2;
pub mod status_server;
pub mod stick;
pub mod storage;
pub mod supervisor;
pub mod sysctl;
pub mod update;
pub mod verity;

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

pub use plan::{from_definition, AppliancePlan, HealthPlan, PlanError, ServicePlan};

/// Marker file that only the initramfs has.
const INITRD_RELEASE: &str = "/etc/initrd-release";
/// Environment variable through which stage 1 passes its start time
/// (CLOCK_MONOTONIC milliseconds) to stage 2.
pub const STARTED_ENV: &str = "ZTMS_INIT_STARTED_MS";
/// Pause between the failure message of stage 1 and the reboot, so the
/// message can be read on a screen.
const FAILURE_REBOOT_DELAY: Duration = Duration::from_secs(5);

/// Milliseconds of CLOCK_MONOTONIC, which counts from boot and excludes
/// suspend.
pub fn monotonic_ms() -> u64 {
    clock_ms(ClockId::CLOCK_MONOTONIC)
}

/// Milliseconds of CLOCK_BOOTTIME, which counts from boot and includes
/// suspend.
pub fn boottime_ms() -> u64 {
    clock_ms(ClockId::CLOCK_BOOTTIME)
}

fn clock_ms(clock: ClockId) -> u64 {
    clock_gettime(clock)
        .map(|time| time.tv_sec() as u64 * 1000 + time.tv_nsec() as u64 / 1_000_000)
        .unwrap_or_default()
}

/// The stage ztms-init runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// From the initramfs.
    One,
    /// From the root filesystem.
    Two,
}

/// Returns the stage, decided by the presence of `/etc/initrd-release`.
pub fn detect_stage(root: &Path) -> Stage {
    if root.join(INITRD_RELEASE.trim_start_matches('/')).exists() {
        Stage::One
    } else {
        Stage::Two
    }
}

/// Entry point of the `ztms-init` binary. Runs forever as PID 1; exits with
/// status 2 only when started as any other process.
pub fn main() {
    if nix::unistd::getpid().as_raw() != 1 {
        eprintln!(
            "ztms-init: error: ztms-init must run as PID 1 of the appliance (it mounts filesystems and reboots the machine); this process has pid {}",
            nix::unistd::getpid()
        );
        std::process::exit(2);
    }

    logger::install(log::LevelFilter::Info);
    panic::set_hook(Box::new(|info| {
        log::error!("panic: {info}");
    }));

    match detect_stage(Path::new("/")) {
        Stage::One => run_stage1(),
        Stage::Two => {
            logger::open_console(false);
            let started_ms = std::env::var(STARTED_ENV)
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or_else(monotonic_ms);
            stage2::run(started_ms)
        }
    }
}

fn run_stage1() -> ! {
    let started_ms = monotonic_ms();
    let reason = match panic::catch_unwind(AssertUnwindSafe(|| stage1::run(started_ms))) {
        Ok(Err(error)) => error.to_string(),
        Ok(Ok(never)) => match never {},
        Err(payload) => format!("panicked: {}", phases::panic_message(payload.as_ref())),
    };
    fail_boot(&reason)
}

/// Reports a stage 1 failure on the console and reboots, so the boot
/// counter of this slot goes down and systemd-boot can fall back.
fn fail_boot(reason: &str) -> ! {
    log::error!("boot failed: {reason}; rebooting in {} s", FAILURE_REBOOT_DELAY.as_secs());
    std::thread::sleep(FAILURE_REBOOT_DELAY);
    nix::unistd::sync();
    let error = match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
        Err(error) => error,
        Ok(never) => match never {},
    };
    log::error!("reboot(2) failed: {error}; waiting forever");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_release_means_stage_one() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/initrd-release"), "NAME=x\n").unwrap();
        assert_eq!(detect_stage(root.path()), Stage::One);
    }

    #[test]
    fn missing_initrd_release_means_stage_two() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(detect_stage(root.path()), Stage::Two);
    }

    #[test]
    fn clocks_are_running() {
        assert!(monotonic_ms() > 0);
        assert!(boottime_ms() >= monotonic_ms());
    }
}
