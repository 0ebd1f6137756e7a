//! Stage 2, PID 1 in the root filesystem: the boot phases in order, then
//! one poll(2) loop that supervises services, reaps every child, serves
//! the status and waits for a shutdown request.

use std::os::fd::{AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::metrics::MetricsServer;
use super::network::ban_set::BanSet;
use super::phases::{panic_message, PhaseLog};
use super::plan::{AppliancePlan, PLAN_PATH};
use super::shutdown::{self, Shutdown};
use super::signals::{self, Action, PowerButton};
use super::status_server::StatusServer;
use super::supervisor::Supervisor;
use super::{apparmor, cgroups, cmdline, logger, modules, mounts, network, secrets, storage, sysctl};
use super::{boottime_ms, monotonic_ms};
use crate::status::{self, Status, StorageStatus};
use crate::update::protocol::UpdateRequest;

/// Modules stage 2 loads: input devices for the power button, the
/// virtio-serial status port, and VFAT with its code pages for the ESP.
const MODULES: [&str; 6] = ["evdev", "button", "virtio_console", "vfat", "nls_cp437", "nls_iso8859_1"];
/// Maximum poll(2) wait, so housekeeping runs even without events.
const MAX_POLL_WAIT: Duration = Duration::from_secs(1);
/// How long stage 2 keeps looking for power buttons and the status port,
/// whose devices appear asynchronously after their modules load.
const DEVICE_SCAN_PERIOD: Duration = Duration::from_secs(60);
const DEVICE_SCAN_INTERVAL: Duration = Duration::from_secs(2);

/// Owner of a polled file descriptor.
#[derive(Debug, Clone, Copy)]
enum Source {
    Signals,
    Button(usize),
    Supervisor,
    Status,
    Metrics,
    Dhcp,
}

/// The state of PID 1 after the switch to the root filesystem.
struct Init {
    /// CLOCK_MONOTONIC milliseconds at the start of stage 1.
    init_started_ms: u64,
    started: Instant,
    slot: String,
    data_label: Option<String>,
    plan: Option<AppliancePlan>,
    phases: PhaseLog,
    supervisor: Supervisor,
    supervising: bool,
    cgroups_enabled: bool,
    /// Outcome of the storage phase, for the status API.
    storage: Option<StorageStatus>,
    /// The update systemd-boot gave up on before this boot.
    failed_update: Option<status::FailedUpdate>,
    signals: Option<SignalFd>,
    buttons: Vec<PowerButton>,
    status_server: StatusServer,
    /// The `GET /metrics` listener on the monitoring segment, when the
    /// network plan has one.
    metrics: Option<MetricsServer>,
    /// The ban tracker of the service that `[ban]` names.
    ban: Option<BanSet>,
    /// The check of the WireGuard interfaces, when the plan has any.
    wireguard: Option<network::wireguard::DeviceWatch>,
    /// The uplink's DHCP client, on a DHCP uplink.
    dhcp: Option<network::dhcp::DhcpClient>,
    next_device_scan: Instant,
    ready: bool,
    ready_timeout_logged: bool,
    shutdown: Option<Shutdown>,
    /// The update thread while one runs; it has the serial port.
    update: Option<std::thread::JoinHandle<super::update::Finished>>,
    /// True while the update thread has the serial port.
    update_from_port: bool,
    /// The looks for an update stick.
    stick: super::stick::StickWatch,
}

/// Runs stage 2. Never returns.
pub fn run(init_started_ms: u64) -> ! {
    let mut init = Init::new(init_started_ms);
    init.boot();
    loop {
        let step = panic::catch_unwind(AssertUnwindSafe(|| init.iterate()));
        if let Err(payload) = step {
            log::error!("main loop panicked: {}; going on", panic_message(payload.as_ref()));
            std::thread::sleep(Duration::from_secs(1));
        }
        if let Some(action) = init.finished_shutdown() {
            // A bound socket keeps /run busy, so the status server closes
            // before the unmount.
            init.status_server = StatusServer::default();
            shutdown::finish(action);
        }
    }
}

impl Init {
    fn new(init_started_ms: u64) -> Self {
        let signals = match signals::open() {
            Ok(fd) => Some(fd),
            Err(error) => {
                log::error!("creating the signalfd failed: {error}; shutdown signals are not handled");
                None
            }
        };
        let (slot, data_label) = match std::fs::read_to_string("/proc/cmdline") {
            Ok(text) => match cmdline::parse(&text) {
                Ok(params) => {
                    if let Some(level) = params.log_level {
                        logger::set_level(level);
                    }
                    (params.slot, params.data_label)
                }
                Err(error) => {
                    log::warn!("{error}");
                    (String::new(), None)
                }
            },
            Err(error) => {
                log::warn!("cannot read /proc/cmdline: {error}");
                (String::new(), None)
            }
        };
        let empty = AppliancePlan {
            name: String::new(),
            version: String::new(),
            hostname: String::new(),
            status_serial: false,
            ready_timeout_secs: 0,
            services: Vec::new(),
            storage: Default::default(),
            ban: None,
            secrets: Vec::new(),
        };
        let now = Instant::now();
        Self {
            init_started_ms,
            started: now,
            slot,
            data_label,
            plan: None,
            phases: PhaseLog::default(),
            supervisor: Supervisor::new(&empty, false),
            supervising: false,
            cgroups_enabled: false,
            storage: None,
            failed_update: None,
            signals,
            buttons: Vec::new(),
            status_server: StatusServer::default(),
            metrics: None,
            ban: None,
            wireguard: None,
            dhcp: None,
            next_device_scan: now,
            ready: false,
            ready_timeout_logged: false,
            shutdown: None,
            update: None,
            update_from_port: false,
            stick: super::stick::StickWatch::new(now),
        }
    }

    /// Runs the phases up to and including `services`.
    fn boot(&mut self) {
        logger::buffer_for_persisting();
        log::info!("stage 2 started ({} ms since init start)", self.since_init_ms());

        let mut plan = None;
        self.phases.run("plan", || {
            let loaded = AppliancePlan::load(Path::new(PLAN_PATH)).map_err(|e| e.to_string())?;
            log::info!(
                "appliance {} {} with {} services",
                loaded.name,
                loaded.version,
                loaded.services.len()
            );
            plan = Some(loaded);
            Ok(())
        });
        self.plan = plan;
        if let Some(plan) = &self.plan {
            super::audit::enable(plan);
        }

        self.phases.run("mounts", || {
            let failures = mounts::mount_table(&mounts::STAGE2);
            mounts::populate();
            if failures.is_empty() {
                Ok(())
            } else {
                Err(join(&failures))
            }
        });
        if let Err(error) = self.status_server.bind(Path::new(status::SOCKET_PATH)) {
            log::error!("binding the status socket {} failed: {error}", status::SOCKET_PATH);
        }

        self.phases.run("sysctl", || {
            let (applied, failures) = sysctl::apply(sysctl::SETTINGS);
            log::info!("applied {applied} of {} sysctl settings", sysctl::SETTINGS.len());
            if failures.is_empty() {
                Ok(())
            } else {
                Err(join(&failures))
            }
        });

        let mut cgroups_enabled = false;
        self.phases.run("cgroups", || {
            let enabled = cgroups::enable_controllers().map_err(|e| e.to_string())?;
            log::info!("cgroup controllers enabled for services: {enabled}");
            cgroups_enabled = true;
            Ok(())
        });
        self.cgroups_enabled = cgroups_enabled;

        let hostname = self.plan.as_ref().map(|plan| plan.hostname.clone());
        self.phases.run("hostname", || {
            let hostname = hostname.ok_or("no appliance plan")?;
            nix::unistd::sethostname(&hostname).map_err(|e| format!("setting hostname {hostname:?} failed: {e}"))?;
            log::info!("hostname is {hostname}");
            Ok(())
        });

        self.phases.run("clock-entropy", || {
            log_clock_and_entropy();
            Ok(())
        });

        self.phases.run("modules", || {
            let failed = modules::load_by_name(&MODULES).map_err(|e| format!("reading the module index failed: {e}"))?;
            if !failed.is_empty() {
                log::warn!("modules not loaded: {}", failed.join(", "));
            }
            Ok(())
        });
        self.scan_devices(Instant::now());

        let data_label = self.data_label.clone();
        match &self.plan {
            Some(plan) => {
                let mut storage_status = StorageStatus::default();
                let mounted = self.phases.run("storage", || storage::run(plan, data_label.as_deref(), &mut storage_status));
                self.storage = Some(storage_status);
                let data_dir = mounted.then(|| Path::new(crate::runtime::DATA_DIR));
                self.failed_update = super::rollback::detect(&plan.name, &plan.version, data_dir);
                if mounted {
                    self.phases.run("secrets", || secrets::run(plan));
                } else {
                    self.phases.skip("secrets", "/data is not mounted");
                }
                let mut applied = None;
                self.phases.run("network", || {
                    applied = network::run(plan)?;
                    Ok(())
                });
                let network_plan = applied.as_ref().map(|applied| &applied.plan);
                self.metrics = network_plan.and_then(start_metrics);
                self.wireguard = network_plan.and_then(|plan| network::wireguard::DeviceWatch::new(plan, Instant::now()));
                self.dhcp = applied.and_then(start_dhcp);
            }
            None => {
                self.phases.skip("storage", "no appliance plan");
                self.phases.skip("secrets", "no appliance plan");
                self.phases.skip("network", "no appliance plan");
            }
        }

        let services: Vec<String> = self.plan.iter().flat_map(|plan| &plan.services).map(|service| service.name.clone()).collect();
        self.phases.run("apparmor", || apparmor::load_profiles(&services));

        self.start_services();
    }

    fn start_services(&mut self) {
        if self.phases.services_blocked {
            self.phases.skip("services", "an earlier phase failed; no service starts and the boot stays unblessed");
            self.phases.skip("bless", "services did not start");
            return;
        }
        let Some(plan) = self.plan.clone() else {
            self.phases.skip("services", "no appliance plan");
            self.phases.skip("bless", "no appliance plan");
            return;
        };
        let cgroups_enabled = self.cgroups_enabled;
        let mut supervisor = None;
        self.phases.run("services", || {
            let mut created = Supervisor::new(&plan, cgroups_enabled);
            created.tick(Instant::now());
            supervisor = Some(created);
            Ok(())
        });
        if let Some(supervisor) = supervisor {
            self.supervisor = supervisor;
            self.supervising = true;
        }
        if let Some(settings) = plan.ban {
            if self.supervisor.watch_output(&settings.service) {
                self.ban = Some(BanSet::start(settings));
            } else {
                log::error!("ban: service {} is not in the appliance plan; no client is banned", settings.service);
            }
        }
    }

    /// One round of the main loop: wait for events, handle them, run what
    /// is due.
    fn iterate(&mut self) {
        let now = Instant::now();
        let mut poll_fds: Vec<libc::pollfd> = Vec::new();
        let mut sources: Vec<Source> = Vec::new();
        let mut add = |fd: RawFd, events: i16, source: Source| {
            poll_fds.push(libc::pollfd { fd, events, revents: 0 });
            sources.push(source);
        };
        if let Some(signals) = &self.signals {
            add(signals.as_raw_fd(), libc::POLLIN, Source::Signals);
        }
        for (index, button) in self.buttons.iter().enumerate() {
            add(button.fd(), libc::POLLIN, Source::Button(index));
        }
        for (fd, events) in self.supervisor.poll_fds() {
            add(fd, events, Source::Supervisor);
        }
        for fd in self.status_server.poll_fds(now) {
            add(fd, libc::POLLIN, Source::Status);
        }
        for fd in self.metrics.iter().flat_map(MetricsServer::poll_fds) {
            add(fd, libc::POLLIN, Source::Metrics);
        }
        if let Some(fd) = self.dhcp.as_ref().and_then(network::dhcp::DhcpClient::poll_fd) {
            add(fd, libc::POLLIN, Source::Dhcp);
        }

        let timeout = self.poll_timeout(now);
        // SAFETY: `poll_fds` is a live, correctly sized array of pollfd for
        // the duration of the call.
        let count = unsafe { libc::poll(poll_fds.as_mut_ptr(), poll_fds.len() as libc::nfds_t, timeout) };
        if count < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                log::warn!("poll failed: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        let now = Instant::now();
        let mut requested = None;
        let mut gone_buttons = Vec::new();
        for (poll_fd, source) in poll_fds.iter().zip(&sources) {
            if poll_fd.revents == 0 {
                continue;
            }
            match *source {
                Source::Signals => requested = requested.or(self.read_signals()),
                Source::Button(index) => match self.buttons[index].read_press() {
                    Ok(true) => {
                        log::info!("power button pressed");
                        requested = requested.or(Some(Action::PowerOff));
                    }
                    Ok(false) => {}
                    Err(error) => {
                        log::warn!("power button {} failed: {error}", self.buttons[index].path.display());
                        gone_buttons.push(index);
                    }
                },
                Source::Supervisor => self.supervisor.on_fd_ready(poll_fd.fd, now),
                Source::Dhcp => {
                    if let Some(dhcp) = &mut self.dhcp {
                        dhcp.on_fd_ready();
                    }
                }
                Source::Status => {
                    let snapshot = self.status_snapshot();
                    self.status_server.on_fd_ready(poll_fd.fd, poll_fd.revents, now, &|| snapshot.clone());
                }
                Source::Metrics => {
                    // Taken out for the call, because the snapshot borrows
                    // the whole of `self`. The status is built only for a
                    // complete request.
                    if let Some(mut metrics) = self.metrics.take() {
                        metrics.on_fd_ready(poll_fd.fd, now, &|| self.status_snapshot());
                        self.metrics = Some(metrics);
                    }
                }
            }
        }
        self.read_watched_output();
        for index in gone_buttons.into_iter().rev() {
            self.buttons.remove(index);
        }

        self.check_update_stick(now);
        self.run_update();
        self.reap(now);
        self.supervisor.tick(now);
        if let Some(wireguard) = self.wireguard.as_mut().filter(|_| self.shutdown.is_none()) {
            wireguard.check(now);
        }
        if let Some(dhcp) = self.dhcp.as_mut().filter(|_| self.shutdown.is_none()) {
            dhcp.tick(now);
        }
        self.status_server.expire(now);
        if let Some(metrics) = &mut self.metrics {
            metrics.expire(now);
        }
        self.check_ready();
        if now >= self.next_device_scan {
            self.scan_devices(now);
        }

        if let Some(action) = requested {
            self.request_shutdown(action);
        }
        if let Some(shutdown) = &mut self.shutdown {
            shutdown.advance(&mut self.supervisor, now);
        }
    }

    /// Starts the update the status port received, and acts on the end of
    /// a running one: the port returns to the status server, and a reboot
    /// follows when the update asked for it.
    fn run_update(&mut self) {
        // A request that arrives while a stick's update runs waits on the
        // lent port until that one ends.
        let serial_update = if self.update.is_none() { self.status_server.take_update() } else { None };
        if let Some(serial_update) = serial_update {
            let (name, version) = self
                .plan
                .as_ref()
                .map(|plan| (plan.name.clone(), plan.version.clone()))
                .unwrap_or_default();
            let job = super::update::UpdateJob {
                request: serial_update.request,
                source: super::update::Source::Port { port: serial_update.port, initial: serial_update.initial },
                name,
                version,
                ready: self.ready && self.shutdown.is_none(),
            };
            self.update = super::update::start(job);
            self.update_from_port = self.update.is_some();
            if self.update.is_none() {
                self.status_server.return_serial();
            }
        }
        if !self.update.as_ref().is_some_and(|handle| handle.is_finished()) {
            return;
        }
        let Some(handle) = self.update.take() else { return };
        if std::mem::take(&mut self.update_from_port) {
            self.status_server.return_serial();
        }
        match handle.join() {
            Ok(finished) if finished.reboot => {
                log::info!("rebooting into the update");
                self.request_shutdown(Action::Reboot);
            }
            Ok(_) => {}
            Err(payload) => log::error!("the update thread panicked: {}", panic_message(payload.as_ref())),
        }
    }

    /// Starts an update from a stick once the appliance is ready and idle.
    fn check_update_stick(&mut self, now: Instant) {
        if !self.ready || self.update.is_some() || self.shutdown.is_some() {
            return;
        }
        let Some(plan) = &self.plan else { return };
        let (name, version) = (plan.name.clone(), plan.version.clone());
        let Some(found) = self.stick.check(now, &name, &version) else { return };
        let job = super::update::UpdateJob {
            request: UpdateRequest { size: found.size, allow_downgrade: false, reboot: true },
            source: super::update::Source::Stick { bundle: found.bundle, mount_point: found.mount_point.clone() },
            name,
            version,
            ready: true,
        };
        self.update = super::update::start(job);
        if self.update.is_none() {
            super::stick::unmount(&found.mount_point);
        }
    }

    fn poll_timeout(&self, now: Instant) -> i32 {
        let deadlines = [
            self.supervisor.next_deadline(),
            self.status_server.next_deadline(),
            self.metrics.as_ref().and_then(MetricsServer::next_deadline),
            self.shutdown.as_ref().and_then(Shutdown::deadline),
            self.wireguard.as_ref().map(network::wireguard::DeviceWatch::next_deadline),
            self.dhcp.as_ref().and_then(network::dhcp::DhcpClient::next_deadline),
        ];
        let wait = deadlines
            .into_iter()
            .flatten()
            .min()
            .map_or(MAX_POLL_WAIT, |deadline| deadline.saturating_duration_since(now))
            .min(MAX_POLL_WAIT);
        // Round up, so the loop does not wake just before a deadline.
        wait.as_millis() as i32 + i32::from(wait.subsec_nanos() % 1_000_000 != 0)
    }

    /// Passes the lines that the watched service wrote to the ban tracker.
    fn read_watched_output(&mut self) {
        let lines = self.supervisor.take_watched_lines();
        let Some(ban) = &mut self.ban else { return };
        let now_ms = monotonic_ms();
        for line in lines {
            ban.observe(&line, now_ms);
        }
    }

    fn read_signals(&mut self) -> Option<Action> {
        let signals = self.signals.as_mut().map(signals::drain).unwrap_or_default();
        let mut requested = None;
        for signal in signals {
            match signals::action_for(signal) {
                Some(action) => {
                    log::info!("received {signal}");
                    requested = requested.or(Some(action));
                }
                None if signal == Signal::SIGCHLD => {}
                None => log::info!("received {signal}; ignored"),
            }
        }
        requested
    }

    /// Collects every exited child and passes its status to the supervisor,
    /// whose pid table names the owner.
    fn reap(&mut self, now: Instant) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => {
                    let owned_by_dhcp = self.dhcp.as_mut().is_some_and(|dhcp| dhcp.on_child_exit(&status, now));
                    if !owned_by_dhcp {
                        self.supervisor.on_child_exit(status, now);
                    }
                }
                Err(nix::errno::Errno::ECHILD) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(error) => {
                    log::warn!("waitpid failed: {error}");
                    break;
                }
            }
        }
    }

    fn request_shutdown(&mut self, action: Action) {
        if let Some(shutdown) = &self.shutdown {
            log::info!("already {}; the new request is ignored", shutdown.action.announcement());
            return;
        }
        if let Some(dhcp) = &mut self.dhcp {
            dhcp.begin_shutdown();
        }
        self.shutdown = Some(Shutdown::begin(action, &mut self.supervisor));
    }

    /// Returns the action once every service has stopped.
    fn finished_shutdown(&mut self) -> Option<Action> {
        let shutdown = self.shutdown.as_mut()?;
        let done = shutdown.advance(&mut self.supervisor, Instant::now());
        if done {
            self.supervisor.drain_all_pipes();
        }
        done.then_some(shutdown.action)
    }

    /// Prints the ready line once every service is healthy, then blesses
    /// the boot if that happened within the plan's timeout.
    fn check_ready(&mut self) {
        if !self.supervising || self.ready || self.shutdown.is_some() {
            return;
        }
        let elapsed_ms = self.since_init_ms();
        let timeout_ms = self.plan.as_ref().map_or(0, |plan| plan.ready_timeout_secs * 1000);
        if !self.supervisor.all_healthy() {
            if elapsed_ms > timeout_ms && !self.ready_timeout_logged {
                self.ready_timeout_logged = true;
                log::warn!(
                    "not every service is healthy {} s after init start (unhealthy: {}); the boot stays unblessed",
                    timeout_ms / 1000,
                    self.supervisor.unhealthy_names().join(", ")
                );
                // A trial boot of a new version reboots, so systemd-boot
                // counts the try and falls back once none is left.
                if let Some((tries_left, entries)) = super::bless::trial_boot() {
                    if super::bless::reboot_unhealthy(tries_left, entries) {
                        log::warn!("rebooting the unhealthy trial boot ({} tries left, {entries} boot entries)", tries_left.map_or("unknown".to_string(), |n| n.to_string()));
                        self.request_shutdown(Action::Reboot);
                    }
                }
            }
            return;
        }

        self.ready = true;
        log::info!(
            "ready: {} services healthy in {elapsed_ms} ms since init start",
            self.supervisor.len()
        );

        if elapsed_ms > timeout_ms {
            self.phases.skip(
                "bless",
                &format!("ready after the {} s timeout; the boot stays unblessed", timeout_ms / 1000),
            );
            return;
        }
        let name = self.plan.as_ref().map(|plan| plan.name.clone()).unwrap_or_default();
        self.phases.run("bless", || {
            match super::bless::bless(&name).map_err(|e| e.to_string())? {
                super::bless::Outcome::Blessed { old, new } => log::info!("boot blessed: {old} -> {new}"),
                super::bless::Outcome::NotCounted(reason) => log::info!("nothing needs blessing: {reason}"),
            }
            Ok(())
        });
    }

    /// Opens power buttons and the status port, whose devices appear after
    /// their modules load.
    fn scan_devices(&mut self, now: Instant) {
        if now.duration_since(self.started) > DEVICE_SCAN_PERIOD {
            self.next_device_scan = now + Duration::from_secs(3600);
            return;
        }
        self.next_device_scan = now + DEVICE_SCAN_INTERVAL;
        if self.buttons.is_empty() {
            self.buttons = signals::open_power_buttons(Path::new("/sys/class/input"));
        }
        if self.plan.as_ref().is_some_and(|plan| plan.status_serial) {
            self.status_server.open_serial(status::SERIAL_PORT_NAME);
        }
    }

    fn since_init_ms(&self) -> u64 {
        monotonic_ms().saturating_sub(self.init_started_ms)
    }

    fn status_snapshot(&self) -> Status {
        let (name, version) = self
            .plan
            .as_ref()
            .map(|plan| (plan.name.clone(), plan.version.clone()))
            .unwrap_or_default();
        Status {
            name,
            version,
            slot: self.slot.clone(),
            phases: self.phases.statuses(),
            services: self.supervisor.statuses(),
            ready: self.ready,
            uptime_ms: boottime_ms(),
            zombies: count_zombies(),
            init_rss_kib: own_rss_kib(),
            storage: self.storage.clone(),
            wireguard: network::wireguard::statuses(),
            ban: self.ban.as_ref().map(|ban| ban.status(monotonic_ms())),
            failed_update: self.failed_update.clone(),
        }
    }
}

/// Binds the metrics listener of `plan`'s monitoring segment, if it has
/// one. A failure is logged, and the appliance runs without metrics.
fn start_metrics(plan: &crate::net::NetworkPlan) -> Option<MetricsServer> {
    let (address, subnet) = plan.metrics_endpoint()?;
    match MetricsServer::bind(address) {
        Ok(server) => {
            log::info!("metrics: serving GET /metrics on {address} to the monitoring segment {subnet}");
            Some(server)
        }
        Err(error) => {
            log::error!("metrics: binding {address} failed: {error}; Prometheus cannot scrape ztms-init");
            None
        }
    }
}

/// Starts the DHCP client that renews the uplink's lease, on a DHCP
/// uplink.
fn start_dhcp(applied: network::Applied) -> Option<network::dhcp::DhcpClient> {
    if applied.plan.uplink.ipv4 != crate::net::plan::UplinkIpv4::Dhcp {
        return None;
    }
    let interface = &applied.plan.uplink.interface;
    Some(network::dhcp::DhcpClient::start(interface, &applied.plan.services, applied.lease, Instant::now()))
}

/// Returns VmRSS of this process from `/proc/self/status`, in KiB.
fn own_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Counts processes whose state in `/proc/<pid>/stat` is `Z`.
fn count_zombies() -> u32 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let mut zombies = 0;
    for entry in entries.flatten() {
        let is_pid = entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit());
        if !is_pid {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The state follows the command name, which is in parentheses and
        // may itself contain spaces or parentheses.
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        if state == Some('Z') {
            zombies += 1;
        }
    }
    zombies
}

fn join<E: std::fmt::Display>(errors: &[E]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Logs the real-time clock, the system clock and the entropy estimate.
fn log_clock_and_entropy() {
    let rtc = Path::new("/sys/class/rtc/rtc0");
    let date = std::fs::read_to_string(rtc.join("date"));
    let time = std::fs::read_to_string(rtc.join("time"));
    match (date, time) {
        (Ok(date), Ok(time)) => log::info!("RTC time {} {} UTC", date.trim(), time.trim()),
        _ => log::info!("no RTC at {}", rtc.display()),
    }
    let system = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    log::info!("system clock at {system} s since the Unix epoch");
    match std::fs::read_to_string("/proc/sys/kernel/random/entropy_avail") {
        Ok(text) => log::info!("entropy_avail is {} bits", text.trim()),
        Err(error) => log::info!("cannot read entropy_avail: {error}"),
    }
}
