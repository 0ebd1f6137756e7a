//! The supervisor: starts services in dependency order, checks their
//! health, restarts them with backoff, and owns the pid table that the
//! reaper dispatches exit statuses to.
//!
//! Everything here runs on the main loop's thread. The loop calls
//! [`Supervisor::tick`] after every wake-up, hands ready file descriptors to
//! [`Supervisor::on_fd_ready`] and exit statuses to
//! [`Supervisor::on_child_exit`].

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::backoff::Backoff;
use super::cgroups;
use super::health::{NetProbe, Progress};
use super::logger::SERVICE_OUTPUT;
use super::output::{LineBuffer, Tail};
use super::plan::{AppliancePlan, HealthPlan, ServicePlan};
use super::netns;
use super::spawn::{self, container, SpawnRequest};
use crate::status::{ContainerFacts, ServiceState, ServiceStatus};

/// Delay from a start to the first health check.
const FIRST_CHECK_DELAY: Duration = Duration::from_millis(200);
/// Interval of checks until a service is healthy for the first time.
const STARTUP_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Interval of checks of a healthy service.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Failed checks in a row that make a healthy service unhealthy.
const UNHEALTHY_AFTER: u32 = 3;
/// Exits in a row, without a long healthy run between them, that are
/// reported as a crash loop with the service's last output lines.
const CRASH_LOOP_EXITS: u32 = 3;
/// Interval of "still not healthy" log lines of a starting service.
const NOT_HEALTHY_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// Interval of the `/proc` checks for a container's main process after
/// `crun run` starts, which bounds the error of the measured exec time.
const EXEC_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Time after `crun run` starts during which the main process is polled for.
const EXEC_POLL_PERIOD: Duration = Duration::from_secs(10);
/// Lines of the watched service kept until the main loop takes them. The
/// loop takes them after every read, so only a stalled loop reaches it.
const MAX_WATCHED_LINES: usize = 4096;

/// Launcher of a service's process: crun, or a plain process in unit tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// As OCI containers with crun, from the bundles in the root image.
    Container,
    /// As plain processes with the service's uid and gid, for tests on a
    /// host that has no bundles.
    Process,
}

/// Owner of a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The main process of the service with this index.
    Service(usize),
    /// A health check command of the service with this index.
    HealthCommand(usize),
}

#[derive(Debug)]
enum Probe {
    Net(NetProbe),
    Command { pid: Pid, deadline: Instant, timeout: Duration },
}

#[derive(Debug)]
struct OutputPipe {
    service: usize,
    fd: OwnedFd,
    buffer: LineBuffer,
}

#[derive(Debug)]
struct Service {
    plan: ServicePlan,
    /// Indices of the services this one depends on.
    dependencies: Vec<usize>,
    state: ServiceState,
    pid: Option<Pid>,
    started_at: Option<Instant>,
    healthy: bool,
    healthy_since: Option<Instant>,
    restarts: u32,
    exits_in_a_row: u32,
    crash_loop_reported: bool,
    last_exit: Option<String>,
    backoff: Backoff,
    restart_at: Option<Instant>,
    next_check: Option<Instant>,
    probe: Option<Probe>,
    failed_checks: u32,
    last_check_error: Option<String>,
    last_not_healthy_log: Option<Instant>,
    tail: Tail,
    cgroup_procs: Option<File>,
    /// Milliseconds from the start until the container ran its program.
    exec_ms: Option<u64>,
    /// Milliseconds from the start until the first passing health check.
    healthy_ms: Option<u64>,
}

/// Every service and every child process of ztms-init.
#[derive(Debug)]
pub struct Supervisor {
    services: Vec<Service>,
    owners: HashMap<Pid, Owner>,
    pipes: Vec<OutputPipe>,
    use_cgroups: bool,
    runner: Runner,
    shutting_down: bool,
    /// Index of the service whose output lines are also kept for the main
    /// loop (the ban tracker's input), and those lines.
    watched: Option<usize>,
    watched_lines: Vec<String>,
}

fn since_start_ms(started_at: Option<Instant>, now: Instant) -> u64 {
    started_at.map_or(0, |at| now.saturating_duration_since(at).as_millis() as u64)
}

/// Describes how a process ended, for logs and the status API.
pub fn describe_exit(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, signal, true) => format!("killed by signal {signal} (core dumped)"),
        WaitStatus::Signaled(_, signal, false) => format!("killed by signal {signal}"),
        other => format!("ended with {other:?}"),
    }
}

impl Supervisor {
    /// Prepares the services of `plan`, which lists them in start order,
    /// to run as containers. `use_cgroups` lets the supervisor kill every
    /// process of a service through its cgroup.
    pub fn new(plan: &AppliancePlan, use_cgroups: bool) -> Self {
        Self::with_runner(plan, use_cgroups, Runner::Container)
    }

    /// Prepares the services of `plan` to run with `runner`.
    pub fn with_runner(plan: &AppliancePlan, use_cgroups: bool, runner: Runner) -> Self {
        let index_of: HashMap<&str, usize> = plan
            .services
            .iter()
            .enumerate()
            .map(|(index, service)| (service.name.as_str(), index))
            .collect();
        let services = plan
            .services
            .iter()
            .map(|service| Service {
                plan: service.clone(),
                dependencies: service
                    .depends_on
                    .iter()
                    .filter_map(|name| index_of.get(name.as_str()).copied())
                    .collect(),
                state: ServiceState::Waiting,
                pid: None,
                started_at: None,
                healthy: false,
                healthy_since: None,
                restarts: 0,
                exits_in_a_row: 0,
                crash_loop_reported: false,
                last_exit: None,
                backoff: Backoff::default(),
                restart_at: None,
                next_check: None,
                probe: None,
                failed_checks: 0,
                last_check_error: None,
                last_not_healthy_log: None,
                tail: Tail::default(),
                cgroup_procs: None,
                exec_ms: None,
                healthy_ms: None,
            })
            .collect();
        Self {
            services,
            owners: HashMap::new(),
            pipes: Vec::new(),
            use_cgroups,
            runner,
            shutting_down: false,
            watched: None,
            watched_lines: Vec::new(),
        }
    }

    /// Keeps the output lines of the service `name` for
    /// [`take_watched_lines`](Self::take_watched_lines). Returns false
    /// when no service has that name.
    pub fn watch_output(&mut self, name: &str) -> bool {
        self.watched = self.services.iter().position(|service| service.plan.name == name);
        self.watched.is_some()
    }

    /// Returns the watched service's lines read since the last call.
    pub fn take_watched_lines(&mut self) -> Vec<String> {
        std::mem::take(&mut self.watched_lines)
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    pub fn name(&self, index: usize) -> &str {
        &self.services[index].plan.name
    }

    /// True when every service is healthy at this moment.
    pub fn all_healthy(&self) -> bool {
        self.services.iter().all(|service| service.healthy)
    }

    /// Returns the names of the services that are not healthy now.
    pub fn unhealthy_names(&self) -> Vec<String> {
        self.services.iter().filter(|service| !service.healthy).map(|service| service.plan.name.clone()).collect()
    }

    /// Returns the status of each service in start order.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        self.services
            .iter()
            .map(|service| ServiceStatus {
                name: service.plan.name.clone(),
                state: service.state,
                healthy: service.healthy,
                restarts: service.restarts,
                last_exit: service.last_exit.clone(),
                pid: service.pid.map(Pid::as_raw),
                security: self.main_pid(service).and_then(container::security),
                container: (self.runner == Runner::Container).then(|| ContainerFacts {
                    crun_rss_kib: service.pid.and_then(|pid| container::rss_kib(pid.as_raw())),
                    exec_ms: service.exec_ms,
                    healthy_ms: service.healthy_ms,
                }),
                memory_bytes: self.use_cgroups.then(|| super::cgroups::service_memory(&service.plan.name)).flatten(),
            })
            .collect()
    }

    /// Returns the container's main process of a running service.
    fn main_pid(&self, service: &Service) -> Option<i32> {
        if self.runner != Runner::Container {
            return None;
        }
        container::main_pid(service.pid?.as_raw())
    }

    /// Returns true while a started container's main process is polled for.
    fn exec_pending(&self, service: &Service, now: Instant) -> bool {
        self.runner == Runner::Container
            && service.pid.is_some()
            && service.exec_ms.is_none()
            && service.started_at.is_some_and(|at| now.saturating_duration_since(at) < EXEC_POLL_PERIOD)
    }

    /// Records when a container started by `crun run` began to run its
    /// program, and logs the time with crun's memory.
    fn poll_exec(&mut self, index: usize, now: Instant) {
        if !self.exec_pending(&self.services[index], now) {
            return;
        }
        let Some(main) = self.main_pid(&self.services[index]) else { return };
        let service = &mut self.services[index];
        let exec_ms = since_start_ms(service.started_at, now);
        service.exec_ms = Some(exec_ms);
        let rss = service
            .pid
            .and_then(|pid| container::rss_kib(pid.as_raw()))
            .map_or("unknown".to_string(), |kib| format!("{kib} KiB"));
        log::info!(
            "service {}: container process {main} runs its program {exec_ms} ms after crun run started; crun RSS {rss}",
            service.plan.name
        );
    }

    /// Starts what is due: services whose dependencies are healthy,
    /// restarts whose backoff ended, and health checks.
    pub fn tick(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        for index in 0..self.services.len() {
            match self.services[index].state {
                ServiceState::Waiting => {
                    let ready = self.services[index]
                        .dependencies
                        .iter()
                        .all(|&dependency| self.services[dependency].healthy);
                    if ready {
                        self.start(index, now);
                    }
                }
                ServiceState::Backoff | ServiceState::SpawnFailed => {
                    if self.services[index].restart_at.is_some_and(|at| at <= now) {
                        self.start(index, now);
                    }
                }
                ServiceState::Starting | ServiceState::Running | ServiceState::Unhealthy => {
                    self.poll_exec(index, now);
                    self.check_due(index, now);
                }
                ServiceState::Stopping | ServiceState::Stopped => {}
            }
        }
    }

    /// Returns the earliest time at which [`tick`](Self::tick) has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines = Vec::new();
        for service in &self.services {
            match service.state {
                ServiceState::Backoff | ServiceState::SpawnFailed => deadlines.extend(service.restart_at),
                ServiceState::Starting | ServiceState::Running | ServiceState::Unhealthy => match &service.probe {
                    Some(Probe::Net(probe)) => deadlines.push(probe.deadline),
                    Some(Probe::Command { deadline, .. }) => deadlines.push(*deadline),
                    None => deadlines.extend(service.next_check),
                },
                _ => {}
            }
            let now = Instant::now();
            if self.exec_pending(service, now) {
                deadlines.push(now + EXEC_POLL_INTERVAL);
            }
        }
        deadlines.into_iter().min()
    }

    /// Returns the file descriptors to poll, with their poll(2) events.
    pub fn poll_fds(&self) -> Vec<(RawFd, i16)> {
        let mut fds: Vec<(RawFd, i16)> = self.pipes.iter().map(|pipe| (pipe.fd.as_raw_fd(), libc::POLLIN)).collect();
        for service in &self.services {
            if let Some(Probe::Net(probe)) = &service.probe {
                fds.push((probe.fd(), probe.events()));
            }
        }
        fds
    }

    /// Handles a ready file descriptor from [`poll_fds`](Self::poll_fds).
    pub fn on_fd_ready(&mut self, fd: RawFd, now: Instant) {
        if let Some(position) = self.pipes.iter().position(|pipe| pipe.fd.as_raw_fd() == fd) {
            self.read_pipe(position);
            return;
        }
        let probing = self
            .services
            .iter()
            .position(|service| matches!(&service.probe, Some(Probe::Net(probe)) if probe.fd() == fd));
        if let Some(index) = probing {
            let progress = match &mut self.services[index].probe {
                Some(Probe::Net(probe)) => probe.step(),
                _ => Progress::Pending,
            };
            if progress != Progress::Pending {
                self.finish_check(index, progress, now);
            }
        }
    }

    /// Dispatches an exit status from the reaper. Children that no entry
    /// owns are orphans adopted by PID 1 and need nothing beyond the reap.
    pub fn on_child_exit(&mut self, status: WaitStatus, now: Instant) {
        let Some(pid) = status.pid() else {
            return;
        };
        match self.owners.remove(&pid) {
            Some(Owner::Service(index)) if self.services[index].pid == Some(pid) => {
                self.service_exited(index, &status, now);
            }
            Some(Owner::HealthCommand(index)) => {
                let current = matches!(self.services[index].probe, Some(Probe::Command { pid: probe_pid, .. }) if probe_pid == pid);
                if current {
                    let progress = match status {
                        WaitStatus::Exited(_, 0) => Progress::Healthy,
                        other => Progress::Unhealthy(format!("health check command {}", describe_exit(&other))),
                    };
                    self.finish_check(index, progress, now);
                }
            }
            Some(Owner::Service(_)) | None => log::debug!("reaped orphan process {pid}: {}", describe_exit(&status)),
        }
    }

    fn start(&mut self, index: usize, now: Instant) {
        if self.runner == Runner::Container {
            let name = self.services[index].plan.name.clone();
            match container::prepare(&name) {
                Ok(bundle) => {
                    let argv = container::run_argv(&name, &bundle);
                    self.launch(index, &argv, 0, 0, now);
                }
                Err(error) => self.start_failed(index, &error, now),
            }
            return;
        }

        if self.use_cgroups && self.services[index].cgroup_procs.is_none() {
            match cgroups::service_procs(&self.services[index].plan.name) {
                Ok(file) => self.services[index].cgroup_procs = Some(file),
                Err(error) => log::warn!(
                    "service {}: {error}; starting it without its own cgroup",
                    self.services[index].plan.name
                ),
            }
        }

        let plan = self.services[index].plan.clone();
        self.launch(index, &plan.command, plan.uid, plan.gid, now);
    }

    /// Starts the main process of service `index` with `argv`.
    fn launch(&mut self, index: usize, argv: &[String], uid: u32, gid: u32, now: Instant) {
        let service = &mut self.services[index];
        let request = SpawnRequest {
            argv,
            uid,
            gid,
            cgroup_procs: service.cgroup_procs.as_ref(),
            capture_output: true,
        };
        let restart = service.restart_at.take().is_some();
        match spawn::spawn(&request) {
            Ok(spawned) => {
                self.owners.insert(spawned.pid, Owner::Service(index));
                if let Some(fd) = spawned.output {
                    self.pipes.push(OutputPipe {
                        service: index,
                        fd,
                        buffer: LineBuffer::default(),
                    });
                }
                let service = &mut self.services[index];
                service.pid = Some(spawned.pid);
                service.started_at = Some(now);
                service.exec_ms = None;
                service.healthy_ms = None;
                service.failed_checks = 0;
                service.last_not_healthy_log = Some(now);
                let verb = if restart { "restarted" } else { "started" };
                log::info!("{verb} service {} (pid {})", service.plan.name, spawned.pid);
                if service.plan.health == HealthPlan::None {
                    service.state = ServiceState::Running;
                    service.healthy = true;
                    service.healthy_since = Some(now);
                    service.next_check = None;
                    log::info!("service {} is healthy (it has no health check)", service.plan.name);
                } else {
                    service.state = ServiceState::Starting;
                    service.next_check = Some(now + FIRST_CHECK_DELAY);
                }
            }
            Err(error) => {
                let error = format!("starting {:?} failed: {error}", argv[0]);
                self.start_failed(index, &error, now);
            }
        }
    }

    /// Schedules a retry of service `index` after a failed start.
    fn start_failed(&mut self, index: usize, error: &str, now: Instant) {
        let service = &mut self.services[index];
        let delay = service.backoff.next_delay(Duration::ZERO);
        service.state = ServiceState::SpawnFailed;
        service.restart_at = Some(now + delay);
        service.restarts += 1;
        log::error!("service {}: {error}; retrying in {} s", service.plan.name, delay.as_secs());
        service.last_exit = Some(format!("start failed: {error}"));
    }

    fn check_due(&mut self, index: usize, now: Instant) {
        let service = &mut self.services[index];
        let expired = match &service.probe {
            Some(Probe::Net(probe)) if now >= probe.deadline => Some(probe.expire()),
            Some(Probe::Command { pid, deadline, timeout }) if now >= *deadline => {
                // The owner entry stays, so the reaper collects the killed
                // check later without reporting it again.
                let _ = signal::kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
                let reason = format!("health check command timed out after {} ms", timeout.as_millis());
                Some(Progress::Unhealthy(reason))
            }
            Some(_) => None,
            None => {
                if service.next_check.is_some_and(|at| at <= now) {
                    self.start_check(index, now);
                }
                None
            }
        };
        if let Some(progress) = expired {
            self.finish_check(index, progress, now);
        }
    }

    fn start_check(&mut self, index: usize, now: Instant) {
        let runner = self.runner;
        let service = &mut self.services[index];
        service.next_check = None;
        let address = service.plan.address;
        // A container has only its own network namespace, so its probes
        // connect from inside that namespace.
        let namespace = (runner == Runner::Container).then(|| netns::path_of(&service.plan.name));
        let started = match &service.plan.health {
            HealthPlan::None => return,
            HealthPlan::Tcp { port, timeout_ms } => NetProbe::start(
                SocketAddrV4::new(address, *port),
                None,
                Duration::from_millis(*timeout_ms),
                namespace.as_deref(),
                now,
            )
            .map(Probe::Net),
            HealthPlan::Http { port, path, timeout_ms } => NetProbe::start(
                SocketAddrV4::new(address, *port),
                Some(path),
                Duration::from_millis(*timeout_ms),
                namespace.as_deref(),
                now,
            )
            .map(Probe::Net),
            HealthPlan::Command { command, timeout_ms } => {
                let (argv, uid, gid) = match runner {
                    Runner::Container => (
                        container::exec_argv(
                            &service.plan.name,
                            service.plan.uid,
                            service.plan.gid,
                            container::exec_apparmor_profile(&service.plan.name).as_deref(),
                            command,
                        ),
                        0,
                        0,
                    ),
                    Runner::Process => (command.clone(), service.plan.uid, service.plan.gid),
                };
                let request = SpawnRequest {
                    argv: &argv,
                    uid,
                    gid,
                    cgroup_procs: service.cgroup_procs.as_ref(),
                    capture_output: false,
                };
                let timeout = Duration::from_millis(*timeout_ms);
                spawn::spawn(&request).map(|spawned| Probe::Command {
                    pid: spawned.pid,
                    deadline: now + timeout,
                    timeout,
                })
            }
        };
        match started {
            Ok(probe) => {
                if let Probe::Command { pid, .. } = &probe {
                    self.owners.insert(*pid, Owner::HealthCommand(index));
                }
                self.services[index].probe = Some(probe);
            }
            Err(error) => {
                let reason = format!("starting the check failed: {error}");
                self.finish_check(index, Progress::Unhealthy(reason), now);
            }
        }
    }

    fn finish_check(&mut self, index: usize, progress: Progress, now: Instant) {
        let service = &mut self.services[index];
        service.probe = None;
        if service.pid.is_none() {
            return;
        }
        match progress {
            Progress::Pending => {}
            Progress::Healthy => {
                service.failed_checks = 0;
                service.last_check_error = None;
                if !service.healthy {
                    let since_start = service.started_at.map(|at| now - at).unwrap_or_default();
                    match service.state {
                        ServiceState::Unhealthy => log::info!("service {} is healthy again", service.plan.name),
                        _ => log::info!(
                            "service {} is healthy, {} ms after its start",
                            service.plan.name,
                            since_start.as_millis()
                        ),
                    }
                    service.healthy = true;
                    service.healthy_since = Some(now);
                    if service.healthy_ms.is_none() {
                        service.healthy_ms = Some(since_start_ms(service.started_at, now));
                    }
                }
                service.state = ServiceState::Running;
                service.next_check = Some(now + CHECK_INTERVAL);
            }
            Progress::Unhealthy(reason) => {
                service.failed_checks += 1;
                match service.state {
                    ServiceState::Starting => {
                        let log_due = service
                            .last_not_healthy_log
                            .map_or(true, |at| now - at >= NOT_HEALTHY_LOG_INTERVAL);
                        if log_due {
                            let since_start = service.started_at.map(|at| now - at).unwrap_or_default();
                            log::warn!(
                                "service {} is not healthy yet, {} s after its start: {reason}",
                                service.plan.name,
                                since_start.as_secs()
                            );
                            service.last_not_healthy_log = Some(now);
                        }
                        service.next_check = Some(now + STARTUP_CHECK_INTERVAL);
                    }
                    _ => {
                        if service.healthy && service.failed_checks >= UNHEALTHY_AFTER {
                            log::warn!(
                                "service {} is unhealthy after {} failed checks: {reason}",
                                service.plan.name,
                                service.failed_checks
                            );
                            service.healthy = false;
                            service.healthy_since = None;
                            service.state = ServiceState::Unhealthy;
                        }
                        service.next_check = Some(now + CHECK_INTERVAL);
                    }
                }
                service.last_check_error = Some(reason);
            }
        }
    }

    fn service_exited(&mut self, index: usize, status: &WaitStatus, now: Instant) {
        self.drain_pipes_of(index);

        let use_cgroups = self.use_cgroups;
        let shutting_down = self.shutting_down;
        let service = &mut self.services[index];
        let description = describe_exit(status);
        let pid = service.pid.take();
        service.last_exit = Some(description.clone());
        service.probe = None;
        let ran_for = service.started_at.map(|at| now - at).unwrap_or_default();
        let healthy_for = service.healthy_since.map(|at| now - at).unwrap_or_default();
        service.healthy = false;
        service.healthy_since = None;

        // Processes the service left behind would compete with the restarted
        // one for its ports and files.
        if let Some(pid) = pid {
            let _ = signal::kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
        }
        if use_cgroups && !shutting_down {
            if let Err(error) = cgroups::kill_service(&service.plan.name) {
                log::warn!("service {}: {error}", service.plan.name);
            }
        }

        if shutting_down || service.state == ServiceState::Stopping {
            service.state = ServiceState::Stopped;
            log::info!("service {} stopped: {description}", service.plan.name);
            return;
        }

        if healthy_for >= super::backoff::RESET_AFTER {
            service.exits_in_a_row = 0;
            service.crash_loop_reported = false;
        }
        service.exits_in_a_row += 1;
        let delay = service.backoff.next_delay(healthy_for);
        service.restarts += 1;
        service.state = ServiceState::Backoff;
        service.restart_at = Some(now + delay);
        log::warn!(
            "service {} {description} after {} s; restarting in {} s (restart {})",
            service.plan.name,
            ran_for.as_secs(),
            delay.as_secs(),
            service.restarts
        );

        if service.exits_in_a_row >= CRASH_LOOP_EXITS && !service.crash_loop_reported {
            service.crash_loop_reported = true;
            log::error!(
                "service {} is crash looping: {} exits in a row, the last {description}; its last output lines follow",
                service.plan.name,
                service.exits_in_a_row
            );
            if service.tail.is_empty() {
                log::error!("service {} wrote no output", service.plan.name);
            }
            for line in service.tail.lines() {
                log::error!("  {}: {line}", service.plan.name);
            }
        }
    }

    fn read_pipe(&mut self, position: usize) {
        let mut closed = false;
        let mut chunk = [0u8; 4096];
        // Bounded, so one chatty service cannot hold up the loop.
        for _ in 0..16 {
            let pipe = &mut self.pipes[position];
            match nix::unistd::read(pipe.fd.as_raw_fd(), &mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(count) => {
                    let lines = pipe.buffer.push(&chunk[..count]);
                    let service = pipe.service;
                    for line in lines {
                        self.record_line(service, line);
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(error) => {
                    let service = pipe.service;
                    log::warn!("reading the output of service {} failed: {error}", self.name(service));
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            let mut pipe = self.pipes.swap_remove(position);
            if let Some(rest) = pipe.buffer.finish() {
                self.record_line(pipe.service, rest);
            }
        }
    }

    fn drain_pipes_of(&mut self, index: usize) {
        let mut position = 0;
        while position < self.pipes.len() {
            let before = self.pipes.len();
            if self.pipes[position].service == index {
                self.read_pipe(position);
            }
            if self.pipes.len() == before {
                position += 1;
            }
        }
    }

    fn record_line(&mut self, index: usize, line: String) {
        if self.watched == Some(index) && self.watched_lines.len() < MAX_WATCHED_LINES {
            self.watched_lines.push(line.clone());
        }
        let service = &mut self.services[index];
        log::info!(target: SERVICE_OUTPUT, "{}: {line}", service.plan.name);
        service.tail.push(line);
    }

    /// Stops restarts and health checks for shutdown.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        for service in &mut self.services {
            if let Some(Probe::Command { pid, .. }) = service.probe.take() {
                let _ = signal::kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
            }
            service.restart_at = None;
            service.next_check = None;
            if service.pid.is_none() {
                service.state = ServiceState::Stopped;
            }
        }
    }

    /// Sends SIGTERM to the process group of service `index`. Returns true
    /// when a process is running and must be waited for.
    pub fn send_stop(&mut self, index: usize) -> bool {
        let service = &mut self.services[index];
        let Some(pid) = service.pid else {
            service.state = ServiceState::Stopped;
            return false;
        };
        service.state = ServiceState::Stopping;
        log::info!("stopping service {} (pid {pid})", service.plan.name);
        if self.runner == Runner::Container {
            let main = container::main_pid(pid.as_raw());
            if main.is_some_and(|main| !container::catches_sigterm(main)) {
                // The container's init has no SIGTERM handler, so the kernel
                // would drop the SIGTERM that crun forwards to it.
                log::info!(
                    "service {}: the container's main process has no SIGTERM handler; killing it",
                    self.services[index].plan.name
                );
                self.force_kill(index);
                return true;
            }
        }
        // crun run forwards the SIGTERM to the container's main process.
        if signal::kill(Pid::from_raw(-pid.as_raw()), Signal::SIGTERM).is_err() {
            let _ = signal::kill(pid, Signal::SIGTERM);
        }
        true
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.services[index].pid.is_some()
    }

    /// Sends SIGKILL to every process of service `index`. A container's
    /// processes are in their own session, so only its cgroup reaches them;
    /// the killed crun leaves a container state that the next start removes.
    pub fn force_kill(&mut self, index: usize) {
        let service = &self.services[index];
        if let Some(pid) = service.pid {
            log::warn!("killing service {} (pid {pid})", service.plan.name);
            let _ = signal::kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
            let _ = signal::kill(pid, Signal::SIGKILL);
        }
        if self.use_cgroups {
            if let Err(error) = cgroups::kill_service(&service.plan.name) {
                log::warn!("service {}: {error}", service.plan.name);
            }
        }
    }

    /// Reads what is left in the output pipes, during shutdown.
    pub fn drain_all_pipes(&mut self) {
        for index in 0..self.services.len() {
            self.drain_pipes_of(index);
        }
    }

    /// Returns the pids in the table, so tests can reap only their own
    /// children.
    #[cfg(test)]
    fn owned_pids(&self) -> Vec<Pid> {
        self.owners.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::plan::ServicePlan;
    use nix::sys::wait::waitpid;
    use std::net::{Ipv4Addr, TcpListener};

    fn service(name: &str, command: &[&str], health: HealthPlan, depends_on: &[&str]) -> ServicePlan {
        ServicePlan {
            name: name.into(),
            command: command.iter().map(|part| part.to_string()).collect(),
            uid: 0,
            gid: 0,
            depends_on: depends_on.iter().map(|part| part.to_string()).collect(),
            health,
            address: Ipv4Addr::LOCALHOST,
            exceptions: Vec::new(),
        }
    }

    fn plan(services: Vec<ServicePlan>) -> AppliancePlan {
        AppliancePlan {
            name: "test".into(),
            version: "1".into(),
            hostname: "test".into(),
            status_serial: false,
            ready_timeout_secs: 10,
            services,
            storage: Default::default(),
            ban: None,
            secrets: Vec::new(),
        }
    }

    /// Spawning drops privileges with setgroups(2), which needs root.
    fn can_spawn() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            eprintln!("skipped: spawning services needs root");
        }
        root
    }

    /// Runs the loop's steps for the supervisor's own children until
    /// `done` returns true or `timeout` passes. Reaps only pids from the table,
    /// because other tests of this process have children too.
    fn drive(supervisor: &mut Supervisor, timeout: Duration, done: impl Fn(&Supervisor) -> bool) -> bool {
        let started = Instant::now();
        while started.elapsed() < timeout {
            let mut poll_fds: Vec<libc::pollfd> = supervisor
                .poll_fds()
                .into_iter()
                .map(|(fd, events)| libc::pollfd { fd, events, revents: 0 })
                .collect();
            // SAFETY: a live, correctly sized pollfd array.
            unsafe { libc::poll(poll_fds.as_mut_ptr(), poll_fds.len() as libc::nfds_t, 10) };
            let now = Instant::now();
            for poll_fd in poll_fds.iter().filter(|p| p.revents != 0) {
                supervisor.on_fd_ready(poll_fd.fd, now);
            }
            for pid in supervisor.owned_pids() {
                if let Ok(status) = waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                    if status != WaitStatus::StillAlive {
                        supervisor.on_child_exit(status, now);
                    }
                }
            }
            supervisor.tick(now);
            if done(supervisor) {
                return true;
            }
        }
        false
    }

    /// Kills every service and reaps what the table owns.
    fn stop_all(supervisor: &mut Supervisor) {
        supervisor.begin_shutdown();
        for index in 0..supervisor.len() {
            supervisor.force_kill(index);
        }
        for pid in supervisor.owned_pids() {
            let _ = signal::kill(pid, Signal::SIGKILL);
            if let Ok(status) = waitpid(pid, None) {
                supervisor.on_child_exit(status, Instant::now());
            }
        }
    }

    #[test]
    fn crashing_service_backs_off() {
        if !can_spawn() {
            return;
        }
        let plan = plan(vec![service("crash", &["/bin/sh", "-c", "echo boom; exit 3"], HealthPlan::None, &[])]);
        let mut supervisor = Supervisor::with_runner(&plan, false, Runner::Process);
        supervisor.tick(Instant::now());

        let exited = drive(&mut supervisor, Duration::from_secs(5), |s| s.statuses()[0].state == ServiceState::Backoff);
        let status = supervisor.statuses()[0].clone();
        let tail: Vec<String> = supervisor.services[0].tail.lines().map(str::to_string).collect();
        stop_all(&mut supervisor);

        assert!(exited, "{status:?}");
        assert_eq!(status.restarts, 1);
        assert_eq!(status.last_exit.as_deref(), Some("exited with status 3"));
        assert!(!status.healthy);
        assert_eq!(tail, ["boom"]);
    }

    #[test]
    fn dependent_waits_for_health() {
        if !can_spawn() {
            return;
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let health = HealthPlan::Tcp { port, timeout_ms: 500 };
        let plan = plan(vec![
            service("db", &["/bin/sleep", "30"], health, &[]),
            service("web", &["/bin/sleep", "30"], HealthPlan::None, &["db"]),
        ]);
        let mut supervisor = Supervisor::with_runner(&plan, false, Runner::Process);
        supervisor.tick(Instant::now());
        drive(&mut supervisor, Duration::from_millis(800), |_| false);
        let before = supervisor.statuses();

        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let started = drive(&mut supervisor, Duration::from_secs(5), Supervisor::all_healthy);
        let after = supervisor.statuses();
        drop(listener);
        stop_all(&mut supervisor);

        assert_eq!(before[0].state, ServiceState::Starting);
        assert_eq!(before[1].state, ServiceState::Waiting);
        assert!(started, "{after:?}");
        assert_eq!(after[0].state, ServiceState::Running);
        assert_eq!(after[1].state, ServiceState::Running);
    }

    #[test]
    fn command_check_reports_failure_then_success() {
        if !can_spawn() {
            return;
        }
        let marker = tempfile::tempdir().unwrap();
        let flag = marker.path().join("up");
        let check = format!("test -e {}", flag.display());
        let health = HealthPlan::Command {
            command: vec!["/bin/sh".into(), "-c".into(), check],
            timeout_ms: 1000,
        };
        let plan = plan(vec![service("svc", &["/bin/sleep", "30"], health, &[])]);
        let mut supervisor = Supervisor::with_runner(&plan, false, Runner::Process);
        supervisor.tick(Instant::now());
        drive(&mut supervisor, Duration::from_millis(800), |_| false);
        let before = supervisor.statuses()[0].clone();
        let failure = supervisor.services[0].last_check_error.clone();

        std::fs::write(&flag, "").unwrap();
        let healthy = drive(&mut supervisor, Duration::from_secs(5), Supervisor::all_healthy);
        stop_all(&mut supervisor);

        assert!(!before.healthy);
        assert_eq!(failure.as_deref(), Some("health check command exited with status 1"));
        assert!(healthy);
    }

    #[test]
    fn missing_program_is_spawn_failed() {
        if !can_spawn() {
            return;
        }
        let plan = plan(vec![service("ghost", &["/nonexistent/program"], HealthPlan::None, &[])]);
        let mut supervisor = Supervisor::with_runner(&plan, false, Runner::Process);
        supervisor.tick(Instant::now());
        let status = supervisor.statuses()[0].clone();
        stop_all(&mut supervisor);

        assert_eq!(status.state, ServiceState::SpawnFailed);
        assert_eq!(status.restarts, 1);
        assert!(status.last_exit.unwrap().starts_with("start failed:"));
    }

    #[test]
    fn watched_service_lines_are_kept() {
        if !can_spawn() {
            return;
        }
        let plan = plan(vec![
            service("proxy", &["/bin/sh", "-c", "echo client=10.0.2.2 status=401; echo done"], HealthPlan::None, &[]),
            service("other", &["/bin/sh", "-c", "echo client=10.0.2.3 status=401"], HealthPlan::None, &[]),
        ]);
        let mut supervisor = Supervisor::with_runner(&plan, false, Runner::Process);
        assert!(supervisor.watch_output("proxy"));
        supervisor.tick(Instant::now());
        let mut lines = Vec::new();
        drive(&mut supervisor, Duration::from_secs(5), |s| s.statuses().iter().all(|status| status.restarts > 0));
        lines.extend(supervisor.take_watched_lines());
        stop_all(&mut supervisor);

        assert_eq!(lines, ["client=10.0.2.2 status=401", "done"]);
        assert!(supervisor.take_watched_lines().is_empty());
    }

    #[test]
    fn unknown_service_is_not_watched() {
        let mut supervisor = Supervisor::with_runner(&plan(Vec::new()), false, Runner::Process);
        assert!(!supervisor.watch_output("proxy"));
    }

    #[test]
    fn exit_descriptions_name_status_and_signal() {
        let pid = Pid::from_raw(7);
        assert_eq!(describe_exit(&WaitStatus::Exited(pid, 2)), "exited with status 2");
        assert_eq!(describe_exit(&WaitStatus::Signaled(pid, Signal::SIGSEGV, true)), "killed by signal SIGSEGV (core dumped)");
    }
}
