//! A LAN on the host for one VM: a network namespace with a bridge, into
//! which the VM's tap device is moved once QEMU has created it. The test then
//! plays the LAN's hosts (clients, a DHCP server) with real programs run
//! inside that namespace, each from an address of its own on the bridge.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ztms::run::vm::{LanBackend, LanLink};

/// Name of the bridge inside the namespace.
const BRIDGE: &str = "br0";

/// Time QEMU may take to create its tap device after it was started.
const TAP_WAIT: Duration = Duration::from_secs(20);

/// A network namespace with a bridge that a VM's tap device joins.
/// Dropping it kills what still runs in the namespace and deletes it,
/// which also deletes the tap device and the bridge.
pub struct HostLan {
    pub namespace: String,
    pub tap: String,
}

impl HostLan {
    /// Creates the namespace and its bridge, up, with `address` (CIDR,
    /// such as `192.168.77.1/24`) on the bridge.
    pub fn new(address: &str) -> HostLan {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let index = COUNT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let lan = HostLan { namespace: format!("ztms-lan-{pid}-{index}"), tap: format!("zt{}t{index}", pid % 1_000_000) };
        run_checked(Command::new("ip").args(["netns", "add", &lan.namespace]));
        lan.ip(&["link", "set", "lo", "up"]);
        lan.ip(&["link", "add", BRIDGE, "type", "bridge"]);
        lan.ip(&["link", "set", BRIDGE, "up"]);
        lan.add_address(address);
        lan
    }

    /// Returns the VM side of this LAN: a tap device named [`Self::tap`].
    pub fn link(&self, mac_suffix: u8) -> LanLink {
        LanLink { backend: LanBackend::Tap { name: self.tap.clone() }, mac_suffix, capture: false }
    }

    /// Moves the VM's tap device into the namespace and onto the bridge.
    /// Call it right after QEMU started.
    pub fn attach(&self) {
        let path = std::path::Path::new("/sys/class/net").join(&self.tap);
        let started = Instant::now();
        while !path.exists() {
            assert!(started.elapsed() < TAP_WAIT, "QEMU created no tap device {} within {} s", self.tap, TAP_WAIT.as_secs());
            std::thread::sleep(Duration::from_millis(50));
        }
        run_checked(Command::new("ip").args(["link", "set", &self.tap, "netns", &self.namespace]));
        self.ip(&["link", "set", &self.tap, "master", BRIDGE]);
        self.ip(&["link", "set", &self.tap, "up"]);
    }

    /// Adds `address` (CIDR) to the bridge, so a program in the namespace
    /// can send from it as one more host of the LAN.
    pub fn add_address(&self, address: &str) {
        self.ip(&["address", "add", address, "dev", BRIDGE]);
    }

    /// Runs `program` inside the namespace and returns its output,
    /// whatever its exit status.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args).output().unwrap_or_else(|e| panic!("running {program} in {} failed: {e}", self.namespace))
    }

    /// Starts `program` inside the namespace with its output piped.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Child {
        self.command(program, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program} in {} failed: {e}", self.namespace))
    }

    /// Returns a command that runs `program` inside the namespace.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace, program]).args(args);
        command
    }

    fn ip(&self, args: &[&str]) {
        run_checked(Command::new("ip").arg("-n").arg(&self.namespace).args(args));
    }
}

impl Drop for HostLan {
    fn drop(&mut self) {
        if let Ok(output) = Command::new("ip").args(["netns", "pids", &self.namespace]).output() {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.namespace]).status();
    }
}

fn run_checked(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?} failed to start: {e}"));
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
}
