//! The network phase: applies the network plan that `ztms build` wrote to
//! `/etc/ztms/network.json`, in this order:
//!
//! 1. loopback up, kernel modules (nf_tables and its expressions,
//!    conntrack, NAT, veth), IPv4 forwarding on;
//! 2. per service: the namespace `/run/netns/NAME` with IPv6 off and `lo`
//!    up, its veth pair, addresses and routes ([`links`]);
//! 3. the policy routing of egress=vpn services ([`wireguard`]);
//! 4. the complete nftables ruleset, applied atomically with `nft -j -f -`;
//! 5. the uplink: DHCP through busybox `udhcpc`, or the static address;
//!    after the boot, [`dhcp`] keeps renewing a DHCP lease;
//! 6. one resolver file per service under `/run/ztms/resolv` ([`resolv`]),
//!    after the uplink because DHCP may supply the DNS servers;
//! 7. the WireGuard interfaces, after the uplink because `wg` resolves the
//!    VPN endpoint's host name through it.
//!
//! The firewall is in place before the uplink has an address, and an error
//! in steps 1 to 4 or 6 fails the phase, so no service starts without its
//! firewall. An uplink error is logged with the interface, the setting and
//! the kernel's message, and the phase goes on: the services still run
//! behind the firewall, and the console shows why the appliance is not
//! reachable.
//!
//! Links are configured with the `ip` program of iproute2 rather than
//! rtnetlink from PID 1: it needs no async runtime inside ztms-init, each
//! step is one readable command in the log, and a failure carries the
//! kernel's own message ("RTNETLINK answers: File exists"). Commands run
//! here, before the main loop's reaper starts, so waiting for them takes no
//! exit status from the supervisor.
//!
//! NOTE: a service that runs as a plain process stays in the root
//! namespace. Loopback is open in the ruleset, so its health checks on
//! 127.0.0.1 keep working.

pub mod ban_set;
pub mod dhcp;
pub mod isolate;
pub mod lease;
pub mod link_watch;
pub mod links;
pub mod postgres_login;
pub mod probe;
pub mod resolv;
pub mod wireguard;

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::modules;
use super::plan::AppliancePlan;
use crate::net::{nftables, ApplianceNetwork, NetworkPlan, NETWORK_PATH};

/// `nft` from Debian's nftables package.
pub const NFT: &str = "/usr/sbin/nft";

/// Kernel modules the applied plan uses; `virtio_net` is the uplink's
/// driver under QEMU. Counters, sets, `exthdr` and `rt` are part of
/// nf_tables.ko in Debian's 6.1 kernel. Names that are built in or absent
/// are skipped with a log line. If the ruleset needs a missing module,
/// `nft` fails and names it.
const MODULES: &[&str] = &[
    "veth",
    "nf_tables",
    "nf_conntrack",
    "nf_nat",
    "nf_defrag_ipv4",
    "nft_ct",
    "nft_nat",
    "nft_masq",
    "nft_chain_nat",
    "nft_fib",
    "nft_fib_ipv4",
    "nft_fib_ipv6",
    "nft_fib_inet",
    "nft_limit",
    "nft_objref",
    "virtio_net",
];

/// Outcome of the network phase: the plan and the uplink's lease.
#[derive(Debug, Clone)]
pub struct Applied {
    pub plan: NetworkPlan,
    /// The uplink's DHCP lease; None for a static address or when DHCP
    /// gave no lease at boot.
    pub lease: Option<links::Lease>,
}

/// Brings up the networks of `plan` and returns what it applied, or None
/// when the image has no network file.
pub fn run(plan: &AppliancePlan) -> Result<Option<Applied>, String> {
    set_up("lo").map_err(|error| format!("bringing up the loopback interface lo failed: {error}"))?;
    log::info!("loopback interface lo is up");

    let path = Path::new(NETWORK_PATH);
    if !path.exists() {
        log::warn!(
            "network: {} not found; only loopback is configured and {} services share it",
            path.display(),
            plan.services.len()
        );
        return Ok(None);
    }
    let network = load(path)?;
    if network.probe {
        load_probe_modules();
    }
    let lease = apply(&network.plan)?;
    if network.probe {
        probe::enable(&network.plan);
    }
    Ok(Some(Applied { plan: network.plan, lease }))
}

/// Kernel modules that only test images load: `ss -i` reads socket
/// details such as the MSS through the sock_diag netlink family, and
/// the image has no `modprobe` for the kernel to load them on demand.
const PROBE_MODULES: &[&str] = &["inet_diag", "tcp_diag"];

fn load_probe_modules() {
    match modules::load_by_name(PROBE_MODULES) {
        Ok(failed) if failed.is_empty() => log::info!("test probe: loaded {}", PROBE_MODULES.join(", ")),
        Ok(failed) => log::warn!("test probe: modules not loaded (built in or absent): {}", failed.join(", ")),
        Err(error) => log::warn!("test probe: reading the module index failed: {error}; `ss -i` shows no socket details"),
    }
}

fn load(path: &Path) -> Result<ApplianceNetwork, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read network plan {}: {error}", path.display()))?;
    serde_json::from_str(&text).map_err(|error| format!("invalid network plan {}: {error}", path.display()))
}

/// Applies `plan` and returns the uplink's DHCP lease, if it has one.
fn apply(plan: &NetworkPlan) -> Result<Option<links::Lease>, String> {
    // The appliance is IPv4 only. Interfaces created from here on, the
    // uplink whose driver loads next included, get no IPv6 address, so the
    // kernel sends no router solicitations into a segment or onto the LAN,
    // even while the ruleset is not loaded.
    write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    match modules::load_by_name(MODULES) {
        Ok(failed) if failed.is_empty() => {}
        Ok(failed) => log::info!("network modules not loaded (built in or absent): {}", failed.join(", ")),
        Err(error) => log::warn!("reading the module index failed: {error}; loading no network modules"),
    }
    if wireguard::is_used(plan) {
        if let Ok(failed) = modules::load_by_name(&[wireguard::MODULE]) {
            if !failed.is_empty() {
                log::info!("kernel module {} not loaded (built in or absent)", wireguard::MODULE);
            }
        }
    }
    write_sysctl("net.ipv4.ip_forward", "1")?;

    let started = Instant::now();
    for service in &plan.services {
        links::create_service_link(service)?;
    }
    log::info!(
        "network: {} service namespaces with veth links in {} ms",
        plan.services.len(),
        started.elapsed().as_millis()
    );

    if let Some(vpn) = &plan.vpn {
        wireguard::apply_vpn_routing(&vpn.routing)?;
    }
    apply_firewall(plan)?;
    isolate::enable(plan);

    let lease = match links::bring_up_uplink(&plan.uplink) {
        Ok(lease) => lease,
        Err(error) => {
            log::error!("{error}; services start behind the firewall, but the appliance is not reachable");
            None
        }
    };
    let lease_dns = lease.as_ref().map(|lease| lease.dns.clone()).unwrap_or_default();
    resolv::write_all(plan, &lease_dns)?;
    if wireguard::is_used(plan) {
        wireguard::apply_devices(plan);
    }
    Ok(lease)
}

/// Applies the complete ruleset in one `nft` transaction and logs its size
/// and the time the kernel took.
fn apply_firewall(plan: &NetworkPlan) -> Result<(), String> {
    let document = nftables::ruleset(plan, &[]);
    let json = nftables::to_json(&document);
    let rules = json.matches("\"rule\":").count();
    let started = Instant::now();
    let output = run_with_input(Command::new(NFT).args(["-j", "-f", "-"]), &json)
        .map_err(|error| format!("applying the nftables ruleset failed: {error}"))?;
    log::info!(
        "firewall: table inet {} applied: {rules} rules, {} allowed flows, {} published ports, {} bytes of JSON in {} ms",
        nftables::TABLE,
        plan.flows.len(),
        plan.published.len(),
        json.len(),
        started.elapsed().as_millis()
    );
    if !output.trim().is_empty() {
        log::info!("nft: {}", output.trim());
    }
    Ok(())
}

/// Starts `command` with piped standard streams, writes `input` to its
/// standard input and closes it. Returns the child and the program's name
/// for messages.
pub fn spawn_with_input(command: &mut Command, input: &str) -> Result<(Child, String), String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("starting {program} failed: {error}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that exits early closes its input. Its exit status and
        // standard error give the reason.
        let _ = stdin.write_all(input.as_bytes());
    }
    Ok((child, program))
}

/// Reads the standard output and error of `child` until it closes them.
pub fn read_output(child: &mut Child) -> (String, String) {
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (stdout, stderr)
}

/// Runs `command` with `input` on its standard input and returns its
/// standard output, or an error with the program's standard error.
pub fn run_with_input(command: &mut Command, input: &str) -> Result<String, String> {
    let (child, program) = spawn_with_input(command, input)?;
    let output = child.wait_with_output().map_err(|error| format!("waiting for {program} failed: {error}"))?;
    if !output.status.success() {
        return Err(exit_error(&program, output.status, &String::from_utf8_lossy(&output.stderr)));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `command` like [`run_with_input`], from the main loop: it waits
/// for this child only, on the thread that runs the reaper, so the reaper
/// cannot take its exit status first. The command is killed after
/// `timeout`. Its output must fit in a pipe buffer (64 KiB), because it is
/// read after the exit.
pub fn run_bounded(command: &mut Command, input: &str, timeout: Duration) -> Result<String, String> {
    let (mut child, program) = spawn_with_input(command, input)?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < timeout => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} timed out after {} s and was killed", timeout.as_secs()));
            }
            Err(error) => return Err(format!("waiting for {program} failed: {error}")),
        }
    };
    let (stdout, stderr) = read_output(&mut child);
    if !status.success() {
        return Err(exit_error(&program, status, &stderr));
    }
    Ok(stdout)
}

/// Returns the error of a program that exited with `status`, with the
/// non-empty lines of its standard error.
fn exit_error(program: &str, status: ExitStatus, stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    format!("{program} exited with {status}: {}", lines.join("; "))
}

/// Writes `value` to the sysctl `key` of the calling thread's network
/// namespace.
pub fn write_sysctl(key: &str, value: &str) -> Result<(), String> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|error| format!("setting {key} = {value} failed: {error}"))
}

/// Sets IFF_UP on the interface `name`, as `ip link set <name> up` does.
pub fn set_up(name: &str) -> io::Result<()> {
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: ifreq is a C struct of integers, arrays and a union of those;
    // all zero bytes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }

    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags inside
    // `request`, which lives across the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads `request`, which lives across the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_run_returns_output() {
        let output = run_bounded(Command::new("/bin/sh").args(["-c", "cat; echo done"]), "input\n", Duration::from_secs(5));
        assert_eq!(output.as_deref(), Ok("input\ndone\n"));
    }

    #[test]
    fn bounded_run_reports_exit_status_and_stderr() {
        let error = run_bounded(Command::new("/bin/sh").args(["-c", "echo broken >&2; exit 3"]), "", Duration::from_secs(5)).unwrap_err();
        assert!(error.contains("exit status: 3: broken"), "{error}");
    }

    #[test]
    fn bounded_run_kills_at_timeout() {
        let started = Instant::now();
        let error = run_bounded(&mut Command::new("/bin/sleep").arg("30"), "", Duration::from_millis(200)).unwrap_err();
        assert!(error.contains("timed out"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }
}
