//! Named boot phases of stage 2: their order, what a failure of each means,
//! and the timing log lines and records the status API shows.

use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use crate::status::{PhaseState, PhaseStatus};

/// Consequence of a failed phase for the rest of the boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Later phases run, but services do not start: the appliance stays up
    /// without them, serves its status and never blesses the boot.
    BlockServices,
    /// The failure is logged and the boot goes on.
    Continue,
}

/// One phase of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseSpec {
    pub name: &'static str,
    pub on_failure: OnFailure,
}

/// Phases of stage 2 in order. `services` starts the supervisor; readiness
/// and the boot blessing follow in the main loop.
pub const STAGE2: [PhaseSpec; 13] = [
    PhaseSpec { name: "plan", on_failure: OnFailure::BlockServices },
    PhaseSpec { name: "mounts", on_failure: OnFailure::BlockServices },
    PhaseSpec { name: "sysctl", on_failure: OnFailure::BlockServices },
    PhaseSpec { name: "cgroups", on_failure: OnFailure::Continue },
    PhaseSpec { name: "hostname", on_failure: OnFailure::Continue },
    PhaseSpec { name: "clock-entropy", on_failure: OnFailure::Continue },
    PhaseSpec { name: "modules", on_failure: OnFailure::Continue },
    PhaseSpec { name: "storage", on_failure: OnFailure::BlockServices },
    // NOTE: a secret that cannot be ensured stops every service, not only
    // those that list it.
    PhaseSpec { name: "secrets", on_failure: OnFailure::BlockServices },
    PhaseSpec { name: "network", on_failure: OnFailure::BlockServices },
    // A service whose profile failed to load does not start; the others do.
    PhaseSpec { name: "apparmor", on_failure: OnFailure::Continue },
    PhaseSpec { name: "services", on_failure: OnFailure::BlockServices },
    PhaseSpec { name: "bless", on_failure: OnFailure::Continue },
];

/// Records of every phase, in plan order.
#[derive(Debug, Clone)]
pub struct PhaseLog {
    specs: Vec<PhaseSpec>,
    records: Vec<PhaseStatus>,
    /// Set once a phase with [`OnFailure::BlockServices`] failed.
    pub services_blocked: bool,
}

impl Default for PhaseLog {
    fn default() -> Self {
        Self::new(&STAGE2)
    }
}

impl PhaseLog {
    pub fn new(specs: &[PhaseSpec]) -> Self {
        let records = specs
            .iter()
            .map(|spec| PhaseStatus {
                name: spec.name.to_string(),
                state: PhaseState::Pending,
                duration_ms: None,
                error: None,
            })
            .collect();
        Self {
            specs: specs.to_vec(),
            records,
            services_blocked: false,
        }
    }

    pub fn statuses(&self) -> Vec<PhaseStatus> {
        self.records.clone()
    }

    fn record(&mut self, name: &str) -> Option<&mut PhaseStatus> {
        self.records.iter_mut().find(|record| record.name == name)
    }

    /// Marks a phase as not run, with the reason.
    pub fn skip(&mut self, name: &str, reason: &str) {
        log::warn!("phase {name} skipped: {reason}");
        if let Some(record) = self.record(name) {
            record.state = PhaseState::Skipped;
            record.error = Some(reason.to_string());
        }
    }

    /// Runs `body` as the phase `name`: logs its duration and result,
    /// catches a panic as a failure, and records the outcome. Returns true
    /// when the phase succeeded.
    pub fn run(&mut self, name: &str, body: impl FnOnce() -> Result<(), String>) -> bool {
        let started = Instant::now();
        if let Some(record) = self.record(name) {
            record.state = PhaseState::Running;
        }

        let outcome = match panic::catch_unwind(AssertUnwindSafe(body)) {
            Ok(result) => result,
            Err(payload) => Err(format!("panicked: {}", panic_message(payload.as_ref()))),
        };
        let elapsed = started.elapsed().as_millis() as u64;
        self.finish(name, elapsed, outcome)
    }

    /// Records the end of a phase that ran outside [`run`](Self::run).
    pub fn finish(&mut self, name: &str, elapsed_ms: u64, outcome: Result<(), String>) -> bool {
        let on_failure = self
            .specs
            .iter()
            .find(|spec| spec.name == name)
            .map_or(OnFailure::Continue, |spec| spec.on_failure);
        let succeeded = outcome.is_ok();
        match &outcome {
            Ok(()) => log::info!("{}", done_line(name, elapsed_ms)),
            Err(reason) => {
                log::error!("{}", failed_line(name, elapsed_ms, reason));
                if on_failure == OnFailure::BlockServices {
                    self.services_blocked = true;
                }
            }
        }
        if let Some(record) = self.record(name) {
            record.duration_ms = Some(elapsed_ms);
            match outcome {
                Ok(()) => record.state = PhaseState::Done,
                Err(reason) => {
                    record.state = PhaseState::Failed;
                    record.error = Some(reason);
                }
            }
        }
        succeeded
    }
}

/// Returns the log line of a phase that succeeded.
pub fn done_line(name: &str, elapsed_ms: u64) -> String {
    format!("phase {name} done in {elapsed_ms} ms")
}

/// Returns the log line of a phase that failed.
pub fn failed_line(name: &str, elapsed_ms: u64, reason: &str) -> String {
    format!("phase {name} failed after {elapsed_ms} ms: {reason}")
}

/// Returns the message of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_the_contract() {
        assert_eq!(done_line("mounts", 12), "phase mounts done in 12 ms");
        assert_eq!(failed_line("sysctl", 3, "boom"), "phase sysctl failed after 3 ms: boom");
    }

    #[test]
    fn plan_runs_services_after_setup() {
        let names: Vec<&str> = STAGE2.iter().map(|spec| spec.name).collect();
        let position = |name| names.iter().position(|n| *n == name).unwrap();
        assert!(position("mounts") < position("sysctl"));
        assert!(position("modules") < position("storage"));
        assert!(position("storage") < position("secrets"));
        assert!(position("secrets") < position("services"));
        assert!(position("storage") < position("network"));
        assert!(position("network") < position("services"));
        assert!(position("apparmor") < position("services"));
        assert_eq!(names.last(), Some(&"bless"));
    }

    #[test]
    fn successful_phase_is_done() {
        let mut log = PhaseLog::default();
        assert!(log.run("hostname", || Ok(())));
        let record = &log.statuses()[4];
        assert_eq!(record.name, "hostname");
        assert_eq!(record.state, PhaseState::Done);
        assert!(record.duration_ms.is_some());
        assert!(!log.services_blocked);
    }

    #[test]
    fn failed_blocking_phase_blocks_services() {
        let mut log = PhaseLog::default();
        assert!(!log.run("mounts", || Err("no /tmp".into())));
        assert!(log.services_blocked);
        let record = &log.statuses()[1];
        assert_eq!(record.state, PhaseState::Failed);
        assert_eq!(record.error.as_deref(), Some("no /tmp"));
    }

    #[test]
    fn failed_optional_phase_does_not_block() {
        let mut log = PhaseLog::default();
        log.run("modules", || Err("evdev missing".into()));
        assert!(!log.services_blocked);
    }

    #[test]
    fn panicking_phase_is_a_failure() {
        let mut log = PhaseLog::default();
        let succeeded = log.run("cgroups", || panic!("bad index"));
        assert!(!succeeded);
        assert_eq!(log.statuses()[3].error.as_deref(), Some("panicked: bad index"));
    }
}
