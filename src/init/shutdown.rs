//! Shutdown: services stop in reverse start order while the main loop keeps
//! reaping, then the remaining processes are killed, filesystems are
//! unmounted and the kernel powers off, reboots or halts.

use std::time::{Duration, Instant};

use nix::sys::reboot::{self, RebootMode};
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::signals::Action;
use super::supervisor::Supervisor;
use super::verity;

/// Time a service has between SIGTERM and SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to wait for a killed service's exit before going on without it.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// Time the processes left after the services get between SIGTERM and
/// SIGKILL.
const REMAINING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
struct Stopping {
    service: usize,
    deadline: Instant,
    killed: bool,
}

/// Progress of stopping the services.
#[derive(Debug)]
pub struct Shutdown {
    pub action: Action,
    /// Services still to stop; popped from the end, so the last started
    /// stops first.
    queue: Vec<usize>,
    current: Option<Stopping>,
}

impl Shutdown {
    /// Announces the shutdown and stops all restarts and health checks.
    pub fn begin(action: Action, supervisor: &mut Supervisor) -> Self {
        log::info!("{}", action.announcement());
        supervisor.begin_shutdown();
        Self {
            action,
            queue: (0..supervisor.len()).collect(),
            current: None,
        }
    }

    /// Stops the next services as far as possible without waiting. Returns
    /// true once every service has stopped.
    pub fn advance(&mut self, supervisor: &mut Supervisor, now: Instant) -> bool {
        loop {
            if let Some(stopping) = &mut self.current {
                if !supervisor.is_running(stopping.service) {
                    self.current = None;
                    continue;
                }
                if now < stopping.deadline {
                    return false;
                }
                if !stopping.killed {
                    supervisor.force_kill(stopping.service);
                    stopping.killed = true;
                    stopping.deadline = now + KILL_WAIT;
                    return false;
                }
                log::warn!(
                    "service {} is still running after SIGKILL; going on without it",
                    supervisor.name(stopping.service)
                );
                self.current = None;
                continue;
            }
            let Some(service) = self.queue.pop() else {
                return true;
            };
            if supervisor.send_stop(service) {
                self.current = Some(Stopping {
                    service,
                    deadline: now + STOP_TIMEOUT,
                    killed: false,
                });
            }
        }
    }

    /// Returns when [`advance`](Self::advance) has work next.
    pub fn deadline(&self) -> Option<Instant> {
        self.current.map(|stopping| stopping.deadline)
    }
}

/// Returns the reboot(2) mode of an action.
pub fn reboot_mode(action: Action) -> RebootMode {
    match action {
        Action::PowerOff => RebootMode::RB_POWER_OFF,
        Action::Reboot => RebootMode::RB_AUTOBOOT,
        Action::Halt => RebootMode::RB_HALT_SYSTEM,
    }
}

/// Kills what is left, unmounts, syncs and calls reboot(2). Never returns:
/// if reboot(2) fails, PID 1 waits forever, since exiting would panic the
/// kernel.
pub fn finish(action: Action) -> ! {
    kill_remaining();

    super::logger::stop_persisting();
    nix::unistd::sync();
    super::mounts::unmount_all();
    super::storage::close();
    match verity::remove_root() {
        Ok(()) => log::info!("removed device-mapper device {}", verity::ROOT_NAME),
        // The root filesystem is still mounted from it, so EBUSY is the
        // expected result. The kernel drops the mapping at power-off.
        Err(error) => log::info!("device-mapper device {} stays: {error}", verity::ROOT_NAME),
    }
    nix::unistd::sync();

    log::info!("{}", match action {
        Action::PowerOff => "power off",
        Action::Reboot => "reboot",
        Action::Halt => "halt",
    });
    let error = match reboot::reboot(reboot_mode(action)) {
        Err(error) => error,
        Ok(never) => match never {},
    };
    log::error!("reboot(2) failed: {error}; waiting forever");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Sends SIGTERM, then SIGKILL, to every process but PID 1, reaping them.
fn kill_remaining() {
    if signal::kill(Pid::from_raw(-1), Signal::SIGTERM).is_err() {
        // ESRCH: no process is left.
        return;
    }
    if reap_until_none(REMAINING_TIMEOUT) {
        return;
    }
    log::warn!("processes left after SIGTERM; sending SIGKILL");
    let _ = signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
    reap_until_none(KILL_WAIT);
}

/// Reaps children until none is left (true) or `timeout` passes (false).
fn reap_until_none(timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => continue,
            Err(nix::errno::Errno::ECHILD) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => {
                log::warn!("waitpid failed: {error}");
                return false;
            }
        }
        if started.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::plan::AppliancePlan;

    #[test]
    fn actions_map_to_reboot_modes() {
        assert_eq!(reboot_mode(Action::PowerOff), RebootMode::RB_POWER_OFF);
        assert_eq!(reboot_mode(Action::Reboot), RebootMode::RB_AUTOBOOT);
        assert_eq!(reboot_mode(Action::Halt), RebootMode::RB_HALT_SYSTEM);
    }

    #[test]
    fn shutdown_without_running_services_finishes_at_once() {
        let plan = AppliancePlan {
            name: "x".into(),
            version: "1".into(),
            hostname: "x".into(),
            status_serial: false,
            ready_timeout_secs: 1,
            services: Vec::new(),
            storage: Default::default(),
            ban: None,
            secrets: Vec::new(),
        };
        let mut supervisor = Supervisor::new(&plan, false);
        let mut shutdown = Shutdown::begin(Action::PowerOff, &mut supervisor);
        assert!(shutdown.advance(&mut supervisor, Instant::now()));
        assert_eq!(shutdown.deadline(), None);
    }
}
