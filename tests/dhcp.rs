//! QEMU test of DHCP lease renewal: the `test-dhcp` appliance's uplink is
//! a tap on a host LAN (a bridge at 192.168.77.1/24 in a network namespace
//! of its own), where dnsmasq serves 2-minute leases. The DNS server
//! option comes from a `--dhcp-optsfile`, which the test changes and
//! dnsmasq reads again on SIGHUP. After the next renewal, the resolver
//! file of the `egress = "internet"` service names the new server, seen
//! from inside its running container, and the service keeps its process.

mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::lan::HostLan;
use harness::{output_of, TestVm, BOOT_TIMEOUT};

/// DNS servers that the DHCP option names before and after the change.
const FIRST_DNS: &str = "192.168.77.53";
const SECOND_DNS: &str = "192.168.77.54";
/// Address of the host on the LAN, dnsmasq's address and the router that
/// its leases name.
const HOST_ADDRESS: &str = "192.168.77.1/24";
/// Bridge of the host LAN, inside its namespace.
const BRIDGE: &str = "br0";
/// Last byte of the appliance VM's MAC address on the LAN.
const MAC_SUFFIX: u8 = 10;
/// dnsmasq's minimum lease time; udhcpc renews after half of it.
const LEASE: &str = "2m";
/// Time from the option change to the renewal that carries it: at most
/// half the lease, plus the renewal's round trip and the service's poll.
const RENEWAL_TIMEOUT: Duration = Duration::from_secs(150);

/// dnsmasq serving DHCP on the host LAN, stopped on drop.
struct Dnsmasq {
    pid_file: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq on the bridge of `lan`, with the DNS option in
    /// `opts_file`. It serves DHCP only (`--port=0`), reads no
    /// configuration file of the host, and runs as a daemon with its own
    /// pid file.
    fn start(lan: &HostLan, directory: &Path, opts_file: &Path) -> Self {
        let pid_file = directory.join("dnsmasq.pid");
        let _ = std::fs::remove_file(&pid_file);
        let output = lan
            .command("dnsmasq", &[])
            .arg("--conf-file=/dev/null")
            .arg("--user=root")
            .arg("--port=0")
            .arg(format!("--interface={BRIDGE}"))
            .arg("--bind-interfaces")
            .arg(format!("--dhcp-range=192.168.77.100,192.168.77.150,255.255.255.0,{LEASE}"))
            .arg("--dhcp-authoritative")
            .arg(format!("--dhcp-optsfile={}", opts_file.display()))
            .arg(format!("--dhcp-leasefile={}", directory.join("dnsmasq.leases").display()))
            .arg(format!("--pid-file={}", pid_file.display()))
            .arg("--log-dhcp")
            .arg(format!("--log-facility={}", directory.join("dnsmasq.log").display()))
            .output()
            .expect("run dnsmasq");
        assert!(output.status.success(), "dnsmasq failed to start: {}", String::from_utf8_lossy(&output.stderr));
        let dnsmasq = Self { pid_file };
        assert!(dnsmasq.pid().is_some(), "dnsmasq wrote no pid file");
        dnsmasq
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }

    /// Sends SIGHUP, on which dnsmasq reads its `--dhcp-optsfile` again.
    fn reload(&self) {
        let pid = self.pid().expect("dnsmasq pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP).expect("SIGHUP to dnsmasq");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

fn write_dns_option(path: &Path, server: &str) {
    std::fs::write(path, format!("option:dns-server,{server}\n")).expect("write the dnsmasq options file");
}

/// Returns the `nameserver` lines that `fetch` printed, in order. A read
/// between the truncation and the write of the file prints no
/// `nameserver` line, and is left out.
fn printed_nameservers(vm: &TestVm) -> Vec<String> {
    output_of(&vm.console(), "fetch")
        .into_iter()
        .filter_map(|line| line.strip_prefix("resolv.conf: ").map(str::to_string))
        .filter(|line| line.starts_with("nameserver"))
        .collect()
}

/// Returns the process id and restart count of `service`.
fn service_run(vm: &TestVm, service: &str) -> (Option<i32>, u32) {
    let status = vm.status(Duration::from_secs(10)).expect("status of the VM");
    let entry = status.services.iter().find(|s| s.name == service).unwrap_or_else(|| panic!("no service {service}"));
    (entry.pid, entry.restarts)
}

#[test]
fn renewal_rewrites_resolv_conf_in_place() {
    let image = harness::image("test-dhcp");
    let lan = HostLan::new(HOST_ADDRESS);
    let directory = harness::scratch().join("dhcp");
    std::fs::create_dir_all(&directory).unwrap();
    let opts_file = directory.join("dhcp-opts");
    write_dns_option(&opts_file, FIRST_DNS);
    let dnsmasq = Dnsmasq::start(&lan, &directory, &opts_file);

    let mut vm = harness::boot_on_host_lan("dhcp_renewal", &image, &lan, MAC_SUFFIX);
    let bound = vm.wait_for_console("(?m)^ztms-init: uplink eth1: 192\\.168\\.77\\.\\d+/24, default gateway 192\\.168\\.77\\.1.*", BOOT_TIMEOUT).unwrap();
    eprintln!("{}", bound.trim());
    vm.wait_for_console("(?m)^ztms-init: ready:", BOOT_TIMEOUT).unwrap();

    // The boot's lease names the first server, and the running container
    // prints it.
    let started = Instant::now();
    while printed_nameservers(&vm).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "fetch did not print /etc/resolv.conf within 60 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(printed_nameservers(&vm), [format!("nameserver {FIRST_DNS}")], "fetch's /etc/resolv.conf at boot");
    let before = service_run(&vm, "fetch");
    assert!(before.0.is_some(), "fetch is running: {before:?}");

    // The DHCP server's option changes; the next renewal carries it.
    write_dns_option(&opts_file, SECOND_DNS);
    dnsmasq.reload();
    let changed = vm
        .wait_for_console(&format!("(?m)^ztms-init: uplink eth1: DNS servers of the lease changed from {FIRST_DNS} to {SECOND_DNS}"), RENEWAL_TIMEOUT)
        .unwrap();
    eprintln!("{}", changed.trim());
    let started = Instant::now();
    while printed_nameservers(&vm).len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "fetch did not print its new /etc/resolv.conf within 30 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        printed_nameservers(&vm),
        [format!("nameserver {FIRST_DNS}"), format!("nameserver {SECOND_DNS}")],
        "fetch's /etc/resolv.conf before and after the renewal"
    );
    assert_eq!(service_run(&vm, "fetch"), before, "fetch kept its process through the renewal");
    vm.kill();
}
