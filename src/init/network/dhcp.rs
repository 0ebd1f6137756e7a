//! The uplink's DHCP client at run time. After the boot's first lease,
//! busybox `udhcpc` runs in the foreground for as long as the appliance
//! runs, and renews the lease when half of it has passed (udhcpc's
//! schedule in busybox 1.35). Its script
//! prints each bound or renewed lease as a `ztms-lease` line on the
//! client's output, a pipe that the main loop polls.
//! [`super::lease::change`] decides what a lease changes, and this module
//! runs the `ip` commands and rewrites the resolver files.
//!
//! PID 1 stays the only reaper: the main loop passes every exit status to
//! [`DhcpClient::on_child_exit`] before the supervisor, and a client that
//! exits is started again with the services' restart backoff.
//!
//! NOTE: a lease that runs out without a renewal (udhcpc's `deconfig`)
//! leaves the address in place until the next lease replaces it, so the
//! uplink keeps an address that the DHCP server may give to another host.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::lease::{self, describe_servers};
use super::links::{ip_batch_command, parse_lease, Lease, BUSYBOX, DHCP_RETRY_SECS, DHCP_TRIES};
use super::{resolv, run_bounded};
use crate::init::backoff::Backoff;
use crate::init::output::LineBuffer;
use crate::init::spawn::{self, SpawnRequest};
use crate::init::supervisor::describe_exit;
use crate::net::plan::ServiceNetwork;
use crate::net::UDHCPC_SCRIPT_PATH;

/// Time limit of the `ip` commands that apply a lease.
const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds that udhcpc waits after a failed round of discover packets.
const DISCOVER_PAUSE_SECS: &str = "20";
/// A client that ran this long before it exited restarts after the first
/// backoff delay again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// A running udhcpc.
#[derive(Debug)]
struct Running {
    pid: Pid,
    output: OwnedFd,
    buffer: LineBuffer,
    started: Instant,
}

/// The uplink's DHCP client and the lease in use.
#[derive(Debug)]
pub struct DhcpClient {
    interface: String,
    /// Services whose resolver file names the lease's DNS servers.
    lease_services: Vec<ServiceNetwork>,
    lease: Option<Lease>,
    running: Option<Running>,
    backoff: Backoff,
    restart_at: Option<Instant>,
    /// Set at shutdown, after which the client is not restarted.
    shutting_down: bool,
}

impl DhcpClient {
    /// Starts the client on `interface`, which holds `lease` from the boot
    /// (None when the boot got no lease). `services` are every service of
    /// the plan.
    pub fn start(interface: &str, services: &[ServiceNetwork], lease: Option<Lease>, now: Instant) -> Self {
        let names = lease::services_using_lease_dns(services);
        let lease_services = services.iter().filter(|service| names.contains(&service.name)).cloned().collect();
        let mut client = Self {
            interface: interface.to_string(),
            lease_services,
            lease,
            running: None,
            backoff: Backoff::default(),
            restart_at: None,
            shutting_down: false,
        };
        client.spawn(now);
        client
    }

    fn spawn(&mut self, now: Instant) {
        let mut argv: Vec<String> = [BUSYBOX, "udhcpc", "-i", self.interface.as_str(), "-f", "-s", UDHCPC_SCRIPT_PATH]
            .iter()
            .map(|word| word.to_string())
            .collect();
        argv.extend(["-t", DHCP_TRIES, "-T", DHCP_RETRY_SECS, "-A", DISCOVER_PAUSE_SECS].map(String::from));
        if let Some(lease) = &self.lease {
            // Asks the server for the address in use.
            argv.extend(["-r".to_string(), lease.address.to_string()]);
        }
        let request = SpawnRequest { argv: &argv, uid: 0, gid: 0, cgroup_procs: None, capture_output: true };
        match spawn::spawn(&request) {
            Ok(spawned) => match spawned.output {
                Some(output) => {
                    log::info!("uplink {}: DHCP client udhcpc started (pid {}); it renews the lease", self.interface, spawned.pid);
                    self.running = Some(Running { pid: spawned.pid, output, buffer: LineBuffer::default(), started: now });
                    self.restart_at = None;
                }
                None => {
                    log::error!("uplink {}: udhcpc started without an output pipe; stopping it", self.interface);
                    let _ = signal::kill(spawned.pid, Signal::SIGKILL);
                    self.schedule_restart(now, Duration::ZERO);
                }
            },
            Err(error) => {
                log::error!("uplink {}: starting udhcpc failed: {error}", self.interface);
                self.schedule_restart(now, Duration::ZERO);
            }
        }
    }

    fn schedule_restart(&mut self, now: Instant, ran_for: Duration) {
        let healthy_for = if ran_for >= HEALTHY_RUN { ran_for } else { Duration::ZERO };
        let delay = self.backoff.next_delay(healthy_for);
        self.restart_at = Some(now + delay);
        log::warn!("uplink {}: restarting udhcpc in {} s; the lease in use stays until then", self.interface, delay.as_secs());
    }

    /// Returns the client's output pipe, for poll(2).
    pub fn poll_fd(&self) -> Option<RawFd> {
        self.running.as_ref().map(|running| running.output.as_raw_fd())
    }

    /// Returns the time of a pending restart.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.restart_at
    }

    /// Stops restarts: the shutdown ends the client with every other
    /// process.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        self.restart_at = None;
    }

    /// Restarts the client when its backoff ended.
    pub fn tick(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        if self.running.is_none() && self.restart_at.is_some_and(|at| at <= now) {
            self.spawn(now);
        }
    }

    /// Reads the client's output and applies each lease in it.
    pub fn on_fd_ready(&mut self) {
        let Some(running) = &mut self.running else { return };
        let mut chunk = [0u8; 4096];
        let mut lines = Vec::new();
        loop {
            match nix::unistd::read(running.output.as_raw_fd(), &mut chunk) {
                // End of file: the exit status arrives through the reaper.
                Ok(0) => break,
                Ok(count) => lines.extend(running.buffer.push(&chunk[..count])),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        for line in lines {
            self.handle_line(&line);
        }
    }

    fn handle_line(&mut self, line: &str) {
        if !line.starts_with("ztms-lease ") {
            log::info!("uplink {}: {line}", self.interface);
            return;
        }
        match parse_lease(line) {
            Some(lease) => self.apply(lease),
            None => log::warn!("uplink {}: udhcpc printed an unusable lease: {line:?}", self.interface),
        }
    }

    /// Applies `new` to the uplink and the resolver files.
    fn apply(&mut self, new: Lease) {
        let interface = self.interface.clone();
        let change = lease::change(&interface, self.lease.as_ref(), &new);
        if change.is_empty() {
            log::info!("uplink {interface}: lease of {}/{} renewed; nothing changed", new.address, new.prefix);
            self.lease = Some(new);
            return;
        }

        let mut applied = true;
        if !change.ip_commands.is_empty() {
            match run_bounded(&mut ip_batch_command(None), &change.ip_commands, IP_TIMEOUT) {
                Ok(_) => log::info!(
                    "uplink {interface}: new lease: {}/{}, default gateway {} (was {})",
                    new.address,
                    new.prefix,
                    new.router,
                    self.lease.as_ref().map_or("no lease".to_string(), |old| format!("{}/{} via {}", old.address, old.prefix, old.router))
                ),
                Err(error) => {
                    applied = false;
                    log::error!("uplink {interface}: applying the new lease {}/{} failed: {error}; the next lease tries again", new.address, new.prefix);
                }
            }
        }

        if change.dns_changed {
            log::info!(
                "uplink {interface}: DNS servers of the lease changed from {} to {}",
                self.lease.as_ref().map_or("none".to_string(), |old| describe_servers(&old.dns)),
                describe_servers(&new.dns)
            );
            for service in &self.lease_services {
                if let Err(error) = resolv::write_service(service, &new.dns) {
                    log::error!("{error}; the service keeps its old DNS servers");
                }
            }
        }
        // After a failed change the next lease is compared with no lease,
        // so it sets address and route again.
        self.lease = applied.then_some(new);
    }

    /// Takes the exit status of the client. Returns false when `status`
    /// belongs to another process.
    pub fn on_child_exit(&mut self, status: &WaitStatus, now: Instant) -> bool {
        let pid = self.running.as_ref().map(|running| running.pid);
        if pid.is_none() || status.pid() != pid {
            return false;
        }
        // Lines still in the pipe come first.
        self.on_fd_ready();
        let Some(mut running) = self.running.take() else { return true };
        if let Some(rest) = running.buffer.finish() {
            self.handle_line(&rest);
        }
        if self.shutting_down {
            log::info!("uplink {}: udhcpc {} at shutdown", self.interface, describe_exit(status));
            return true;
        }
        log::warn!("uplink {}: udhcpc {}", self.interface, describe_exit(status));
        self.schedule_restart(now, now.saturating_duration_since(running.started));
        true
    }
}
