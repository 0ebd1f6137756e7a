//! Links and addresses: one namespace and veth pair per service, and the
//! uplink, configured with `ip` from iproute2 and busybox `udhcpc`.

use std::net::Ipv4Addr;
use std::process::Command;

use super::{run_with_input, set_up, write_sysctl};
use crate::init::netns;
use crate::net::plan::{ServiceNetwork, Uplink, UplinkIpv4};
use crate::net::UDHCPC_SCRIPT_PATH;

/// `ip` from Debian's iproute2 package.
pub const IP: &str = "/usr/sbin/ip";
/// busybox, whose `udhcpc` applet is the DHCP client.
pub const BUSYBOX: &str = "/bin/busybox";
/// DHCP discover attempts and seconds between them before `udhcpc` gives up.
pub const DHCP_TRIES: &str = "5";
pub const DHCP_RETRY_SECS: &str = "1";
/// How long the uplink may take to appear after its driver loads.
const INTERFACE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Creates the namespace of `service` and wires it as its
/// [`ServiceNetwork`] documentation describes.
pub fn create_service_link(service: &ServiceNetwork) -> Result<(), String> {
    let path = netns::create(&service.netns).map_err(|error| error.to_string())?;
    let inside = netns::run_in(&path, || -> Result<(), String> {
        // With IPv6 off before eth0 arrives, the link never gets an IPv6
        // address, link-local included.
        write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        set_up("lo").map_err(|error| format!("bringing up lo failed: {error}"))
    });
    inside
        .map_err(|error| error.to_string())?
        .map_err(|error| format!("network namespace {}: {error}", service.netns))?;

    let host = format!(
        "link add {host} type veth peer name {peer}\n\
         link set {peer} netns {netns}\n\
         address add {gateway}/32 dev {host}\n\
         link set {host} up\n\
         route add {address}/32 dev {host}\n",
        host = service.host_link,
        peer = service.peer_link,
        netns = service.netns,
        gateway = service.gateway,
        address = service.address,
    );
    ip_batch(None, &host).map_err(|error| format!("service {}: host end {}: {error}", service.name, service.host_link))?;

    let namespace = format!(
        "link set {peer} name {link}\n\
         address add {address}/32 dev {link}\n\
         link set {link} up\n\
         route add {gateway}/32 dev {link}\n\
         route add default via {gateway} dev {link}\n",
        peer = service.peer_link,
        link = service.service_link,
        address = service.address,
        gateway = service.gateway,
    );
    ip_batch(Some(&service.netns), &namespace)
        .map_err(|error| format!("service {}: {} in namespace {}: {error}", service.name, service.service_link, service.netns))?;
    log::info!(
        "service {}: {} {} in /run/netns/{}, gateway {} on {}",
        service.name,
        service.service_link,
        service.address,
        service.netns,
        service.gateway,
        service.host_link
    );
    Ok(())
}

/// Runs `commands`, one `ip` command a line, in one `ip -batch` call,
/// inside the named namespace when `netns` is set. `ip` stops at the first
/// failing line and names it.
pub fn ip_batch(netns: Option<&str>, commands: &str) -> Result<(), String> {
    run_with_input(&mut ip_batch_command(netns), commands).map(drop)
}

/// Returns the `ip -batch -` command of [`ip_batch`], which reads its
/// commands from standard input.
pub fn ip_batch_command(netns: Option<&str>) -> Command {
    let mut command = Command::new(IP);
    if let Some(name) = netns {
        command.args(["-n", name]);
    }
    command.args(["-batch", "-"]);
    command
}

/// Brings up the uplink with its address and default route, and returns
/// its DHCP lease (None for a static address). Every error names the
/// interface, the setting and the kernel's or the DHCP client's message.
pub fn bring_up_uplink(uplink: &Uplink) -> Result<Option<Lease>, String> {
    let interface = &uplink.interface;
    let setting = match &uplink.ipv4 {
        UplinkIpv4::Dhcp => "ipv4 = \"dhcp\"".to_string(),
        UplinkIpv4::Static { address, gateway } => format!("ipv4 = \"{address}\", gateway = {gateway}"),
    };
    let failed = |error: String| format!("uplink {interface} ({setting}) failed: {error}");

    wait_for_interface(interface).map_err(failed)?;
    // For a driver built into the kernel, the uplink existed before the
    // network phase set IPv6's default off. A path, not a dotted key,
    // because an interface name may contain a dot.
    let ipv6_switch = format!("/proc/sys/net/ipv6/conf/{interface}/disable_ipv6");
    std::fs::write(&ipv6_switch, "1").map_err(|error| failed(format!("writing 1 to {ipv6_switch} failed: {error}")))?;
    ip_batch(None, &format!("link set {interface} up\n")).map_err(failed)?;
    let lease = match &uplink.ipv4 {
        UplinkIpv4::Static { address, gateway } => Lease {
            address: address.address,
            prefix: address.prefix,
            router: *gateway,
            dns: Vec::new(),
        },
        UplinkIpv4::Dhcp => dhcp_lease(interface).map_err(failed)?,
    };
    let Lease { address, prefix, router: gateway, ref dns } = lease;
    let commands = format!(
        "address add {address}/{prefix} dev {interface}\n\
         route add default via {gateway} dev {interface}\n"
    );
    ip_batch(None, &commands).map_err(failed)?;
    log::info!("uplink {interface}: {address}/{prefix}, default gateway {gateway} ({setting})");
    if uplink.ipv4 == UplinkIpv4::Dhcp {
        let servers: Vec<String> = dns.iter().map(Ipv4Addr::to_string).collect();
        log::info!("uplink {interface}: DNS servers of the lease: {}", if servers.is_empty() { "none".into() } else { servers.join(", ") });
        return Ok(Some(lease));
    }
    Ok(None)
}

/// Waits until the kernel has created `interface`: its driver's module
/// loads in this phase and the device registers asynchronously.
fn wait_for_interface(interface: &str) -> Result<(), String> {
    let path = std::path::Path::new("/sys/class/net").join(interface);
    let started = std::time::Instant::now();
    while !path.exists() {
        if started.elapsed() > INTERFACE_WAIT {
            let present: Vec<String> = std::fs::read_dir("/sys/class/net")
                .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            return Err(format!(
                "interface not found after {} s; the kernel has: {}; set network.interface to one of them",
                INTERFACE_WAIT.as_secs(),
                present.join(", ")
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// Asks for the boot's DHCP lease on `interface`. This `udhcpc` exits once
/// it has the lease (`-q`); after the boot, [`super::dhcp`] runs the one
/// that renews it.
fn dhcp_lease(interface: &str) -> Result<Lease, String> {
    let output = run_with_input(
        Command::new(BUSYBOX).args([
            "udhcpc",
            "-i",
            interface,
            "-f",
            "-q",
            "-n",
            "-t",
            DHCP_TRIES,
            "-T",
            DHCP_RETRY_SECS,
            "-s",
            UDHCPC_SCRIPT_PATH,
        ]),
        "",
    )
    .map_err(|error| format!("no DHCP lease: {error}"))?;
    parse_lease(&output).ok_or_else(|| format!("udhcpc printed no usable lease: {:?}", output.trim()))
}

/// An IPv4 lease of the uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Ipv4Addr,
    /// DNS servers; words that are not IPv4 addresses are skipped.
    pub dns: Vec<Ipv4Addr>,
}

/// Parses the `ztms-lease ADDRESS PREFIX ROUTER DNS...` line that the
/// udhcpc script prints.
pub fn parse_lease(output: &str) -> Option<Lease> {
    let line = output.lines().rev().find_map(|line| line.strip_prefix("ztms-lease "))?;
    let mut words = line.split_whitespace();
    let address = words.next()?.parse().ok()?;
    let prefix: u8 = words.next()?.parse().ok()?;
    let router = words.next()?.parse().ok()?;
    let dns = words.filter_map(|word| word.parse().ok()).collect();
    (1..=32).contains(&prefix).then_some(Lease { address, prefix, router, dns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_line_parses() {
        let output = "udhcpc: started\nztms-lease 10.0.2.15 24 10.0.2.2\n";
        let lease = parse_lease(output).expect("a lease");
        assert_eq!((lease.address, lease.prefix, lease.router), (Ipv4Addr::new(10, 0, 2, 15), 24, Ipv4Addr::new(10, 0, 2, 2)));
        assert!(lease.dns.is_empty());
    }

    #[test]
    fn lease_line_carries_dns_servers() {
        let lease = parse_lease("ztms-lease 10.0.2.15 24 10.0.2.2 10.0.2.3 192.168.1.1\n").expect("a lease");
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(192, 168, 1, 1)]);
    }

    #[test]
    fn lease_without_router_is_rejected() {
        assert_eq!(parse_lease("ztms-lease 10.0.2.15 24 \n"), None);
    }
}
