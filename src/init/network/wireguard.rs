//! WireGuard at boot: the appliance's private keys, the `wg-remote` and
//! `wg-vpn` interfaces, and the policy routing of services with
//! `egress = "vpn"`.
//!
//! Interfaces are created with `ip link add … type wireguard` and
//! configured with `wg set` from Debian's wireguard-tools, which reads the
//! private key from its file, so the key never appears on a command line or
//! in the log.
//!
//! The kill switch does not depend on anything here succeeding: the
//! nftables forward chain drops egress=vpn traffic on the uplink, and the
//! tunnel's routing table ends in `unreachable default`. A failed interface
//! is logged and shown by `ztms status`, and the services start without it.
//!
//! At run time, [`DeviceWatch`] re-creates an interface that disappeared or
//! failed at boot, with the same keys, peers, addresses, MTU and tunnel
//! routes; [`super::link_watch`] decides when.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::link_watch::{Decision, LinkWatch};
use super::links::{ip_batch, ip_batch_command};
use super::{run_bounded, run_with_input};
use crate::net::plan::NetworkPlan;
use crate::net::wireguard::{key, VpnRouting, WireguardDevice, INTERNAL_RULE_PRIORITY, VPN_INTERFACE, VPN_RULE_PRIORITY};
use crate::status::WireguardStatus;

/// `wg` from Debian's wireguard-tools package.
pub const WG: &str = "/usr/bin/wg";
/// Kernel module of WireGuard interfaces.
pub const MODULE: &str = "wireguard";
/// Metric of the `unreachable default` route of the tunnel table; the
/// highest value, so every route into `wg-vpn` wins over it.
const UNREACHABLE_METRIC: u32 = u32::MAX;
/// Time limit of one `ip` or `wg` command run from the main loop.
const RUNTIME_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a command with its standard input and returns its standard output.
type Runner<'a> = &'a dyn Fn(&mut Command, &str) -> Result<String, String>;

/// The interfaces that the network phase configured, for `ztms status`.
static STATUSES: Mutex<Vec<WireguardStatus>> = Mutex::new(Vec::new());

/// Returns the status of every WireGuard interface of the plan.
pub fn statuses() -> Vec<WireguardStatus> {
    STATUSES.lock().map(|statuses| statuses.clone()).unwrap_or_default()
}

/// Returns true when the plan has a WireGuard interface.
pub fn is_used(plan: &NetworkPlan) -> bool {
    plan.remote.is_some() || plan.vpn.is_some()
}

/// Adds the policy rules and the `unreachable default` route of the
/// tunnel table. Runs before any service starts and before `wg-vpn`
/// exists, so an egress=vpn service never has a route to the uplink.
pub fn apply_vpn_routing(routing: &VpnRouting) -> Result<(), String> {
    let mut commands = format!(
        "route add unreachable default table {} metric {UNREACHABLE_METRIC}\n",
        routing.table
    );
    for subnet in &routing.internal {
        commands.push_str(&format!("rule add to {subnet} lookup main priority {INTERNAL_RULE_PRIORITY}\n"));
    }
    for source in &routing.sources {
        commands.push_str(&format!("rule add from {source} lookup {} priority {VPN_RULE_PRIORITY}\n", routing.table));
    }
    ip_batch(None, &commands).map_err(|error| format!("VPN policy routing (table {}) failed: {error}", routing.table))?;
    log::info!(
        "VPN routing: {} services use table {}, which ends in unreachable default; {} internal subnets stay in the main table",
        routing.sources.len(),
        routing.table,
        routing.internal.len()
    );
    Ok(())
}

/// Configures every WireGuard interface of `plan` and records its status.
/// Errors are logged and recorded, not returned, as the module
/// documentation explains.
pub fn apply_devices(plan: &NetworkPlan) {
    let mut statuses = Vec::new();
    if let Some(remote) = &plan.remote {
        statuses.push(apply_device(&remote.device, None));
    }
    if let Some(vpn) = &plan.vpn {
        statuses.push(apply_device(&vpn.device, Some(&vpn.routing)));
    }
    if let Ok(mut shared) = STATUSES.lock() {
        *shared = statuses;
    }
}

fn new_status(device: &WireguardDevice) -> WireguardStatus {
    WireguardStatus {
        interface: device.name.clone(),
        public_key: None,
        listen_port: device.listen_port,
        peers: device.peers.iter().map(|peer| peer.name.clone()).collect(),
        error: None,
    }
}

fn apply_device(device: &WireguardDevice, routing: Option<&VpnRouting>) -> WireguardStatus {
    let mut status = new_status(device);
    let result = configure(device, routing, &run_with_input, &mut status);
    match result {
        Ok(()) => log::info!(
            "WireGuard {}: up with {} peers, MTU {}, listen port {}, public key {}",
            device.name,
            device.peers.len(),
            device.mtu,
            device.listen_port.map_or("chosen by the kernel".to_string(), |port| port.to_string()),
            status.public_key.as_deref().unwrap_or("-")
        ),
        Err(error) => {
            log::error!("WireGuard {}: {error}; services start without it, and ztms-init retries it", device.name);
            status.error = Some(error);
        }
    }
    status
}

/// Reads or generates the private key, then creates and configures the
/// interface with `run`. An interface left half configured by a failure is
/// deleted, so that the run-time watch finds it missing and retries it.
fn configure(device: &WireguardDevice, routing: Option<&VpnRouting>, run: Runner, status: &mut WireguardStatus) -> Result<(), String> {
    let public_key = ensure_private_key(&device.private_key_file)?;
    status.public_key = Some(key::encode(&public_key));
    let result = create_device(device, run).and_then(|()| match routing {
        Some(routing) => add_tunnel_routes(routing, run),
        None => Ok(()),
    });
    if result.is_err() && interface_exists(&device.name) {
        if let Err(error) = run(&mut ip_batch_command(None), &format!("link delete {}\n", device.name)) {
            log::warn!("WireGuard {}: deleting the half configured interface failed: {error}", device.name);
        }
    }
    result
}

/// Creates the interface, gives it its key, peers, addresses and MTU, and
/// brings it up.
fn create_device(device: &WireguardDevice, run: Runner) -> Result<(), String> {
    run(&mut ip_batch_command(None), &format!("link add {} type wireguard\n", device.name))
        .map_err(|error| format!("creating the interface failed: {error}"))?;
    run(Command::new(WG).arg("set").args(device.wg_set_args()), "").map_err(|error| format!("wg set failed: {error}"))?;
    let mut commands = String::new();
    for address in &device.addresses {
        commands.push_str(&format!("address add {address} dev {}\n", device.name));
    }
    commands.push_str(&format!("link set {} mtu {} up\n", device.name, device.mtu));
    run(&mut ip_batch_command(None), &commands).map_err(|error| format!("configuring the interface failed: {error}"))?;
    Ok(())
}

/// Routes the tunnel's allowed destinations into `wg-vpn` in the tunnel
/// table, above its `unreachable default`. The kernel deletes these routes
/// with the interface, so every re-creation adds them again.
fn add_tunnel_routes(routing: &VpnRouting, run: Runner) -> Result<(), String> {
    let commands: String = routing
        .routes
        .iter()
        .map(|subnet| format!("route add {subnet} dev {VPN_INTERFACE} table {}\n", routing.table))
        .collect();
    run(&mut ip_batch_command(None), &commands)
        .map_err(|error| format!("routes into the tunnel (table {}) failed: {error}", routing.table))?;
    Ok(())
}

fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Returns the names of the network interfaces of the root namespace.
fn present_interfaces() -> Result<BTreeSet<String>, String> {
    let entries = std::fs::read_dir("/sys/class/net").map_err(|error| format!("listing /sys/class/net failed: {error}"))?;
    Ok(entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect())
}

/// The WireGuard interfaces of the plan, checked from the main loop and
/// re-created when they are missing.
///
/// The commands run on the main loop's thread, which also runs the reaper,
/// so waiting for their exit status races nothing. Each command has
/// [`RUNTIME_COMMAND_TIMEOUT`].
///
/// NOTE: `wg set` resolves an endpoint given as a host name, so while the
/// uplink's DNS server does not answer, a re-creation can hold up the main
/// loop for up to that timeout, once per retry.
#[derive(Debug)]
pub struct DeviceWatch {
    devices: Vec<(WireguardDevice, Option<VpnRouting>)>,
    watch: LinkWatch,
}

impl DeviceWatch {
    /// Watches the interfaces of `plan` from `now`, after
    /// [`apply_devices`]. Returns None when the plan has none.
    pub fn new(plan: &NetworkPlan, now: Instant) -> Option<Self> {
        let mut devices = Vec::new();
        if let Some(remote) = &plan.remote {
            devices.push((remote.device.clone(), None));
        }
        if let Some(vpn) = &plan.vpn {
            devices.push((vpn.device.clone(), Some(vpn.routing.clone())));
        }
        if devices.is_empty() {
            return None;
        }
        let names: Vec<String> = devices.iter().map(|(device, _)| device.name.clone()).collect();
        let failed: Vec<String> = statuses()
            .into_iter()
            .filter(|status| status.error.is_some())
            .map(|status| status.interface)
            .collect();
        log::info!(
            "WireGuard: checking {} every {} s and re-creating what is missing",
            names.join(", "),
            super::link_watch::CHECK_INTERVAL.as_secs()
        );
        Some(Self { devices, watch: LinkWatch::new(&names, &failed, now) })
    }

    /// Returns the time of the next check.
    pub fn next_deadline(&self) -> Instant {
        self.watch.next_deadline()
    }

    /// Checks the interfaces when a check is due and re-creates each
    /// missing one.
    pub fn check(&mut self, now: Instant) {
        if now < self.watch.next_deadline() {
            return;
        }
        let present = match present_interfaces() {
            Ok(present) => present,
            Err(error) => {
                log::warn!("WireGuard: {error}; no interface is checked this time");
                return;
            }
        };
        for decision in self.watch.check(&present, now) {
            match decision {
                Decision::Returned { interface } => {
                    log::info!("WireGuard {interface}: present again; it was not re-created by ztms-init");
                    clear_error(&interface);
                }
                Decision::Recreate { interface, attempt, missing_for } => self.recreate(&interface, attempt, missing_for),
            }
        }
    }

    fn recreate(&mut self, interface: &str, attempt: u32, missing_for: Duration) {
        let Some((device, routing)) = self.devices.iter().find(|(device, _)| device.name == interface) else {
            return;
        };
        if attempt == 1 {
            log::warn!("WireGuard {interface}: the interface is missing; re-creating it");
        } else {
            log::info!("WireGuard {interface}: re-creating the interface, attempt {attempt}, missing for {} s", missing_for.as_secs());
        }
        let started = Instant::now();
        let run = |command: &mut Command, input: &str| run_bounded(command, input, RUNTIME_COMMAND_TIMEOUT);
        let mut status = new_status(device);
        let result = configure(device, routing.as_ref(), &run, &mut status);
        let now = Instant::now();
        match result {
            Ok(()) => {
                self.watch.record(interface, true, now);
                log::info!(
                    "WireGuard {interface}: re-created in {} ms with {} peers, MTU {}{}",
                    started.elapsed().as_millis(),
                    device.peers.len(),
                    device.mtu,
                    routing.as_ref().map_or(String::new(), |routing| format!(", {} routes in table {}", routing.routes.len(), routing.table))
                );
            }
            Err(error) => {
                let delay = self.watch.record(interface, false, now).unwrap_or_default();
                log::error!("WireGuard {interface}: re-creating the interface failed: {error}; retrying in {} s", delay.as_secs());
                status.error = Some(error);
            }
        }
        record_status(status);
    }
}

/// Replaces the entry of the same interface in the status that `ztms
/// status` shows.
fn record_status(status: WireguardStatus) {
    if let Ok(mut shared) = STATUSES.lock() {
        if let Some(entry) = shared.iter_mut().find(|entry| entry.interface == status.interface) {
            *entry = status;
        }
    }
}

fn clear_error(interface: &str) {
    if let Ok(mut shared) = STATUSES.lock() {
        if let Some(entry) = shared.iter_mut().find(|entry| entry.interface == interface) {
            entry.error = None;
        }
    }
}

/// Returns the public key of the private key at `path`, generating the key
/// first when the file does not exist: a new file with mode 0600 in a
/// directory with mode 0700, written only if no file appeared meanwhile.
pub fn ensure_private_key(path: &Path) -> Result<[u8; key::KEY_LEN], String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let private = key::decode(&text).map_err(|error| format!("private key file {}: {error}", path.display()))?;
            check_mode(path);
            return Ok(key::public_key(&private));
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("reading private key file {} failed: {error}", path.display())),
    }

    let private = key::generate_private_key().map_err(|error| format!("generating a private key failed: {error}"))?;
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|error| format!("creating key directory {} failed: {error}", parent.display()))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| format!("creating private key file {} failed: {error}", path.display()))?;
    file.write_all(format!("{}\n", key::encode(&private)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| format!("writing private key file {} failed: {error}", path.display()))?;
    let public = key::public_key(&private);
    log::info!("generated a WireGuard private key at {}; public key {}", path.display(), key::encode(&public));
    Ok(public)
}

/// Warns when a key file is readable by anyone but its owner.
fn check_mode(path: &Path) {
    let Ok(metadata) = std::fs::metadata(path) else { return };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        log::warn!(
            "private key file {} has mode {mode:o}; other users may read it; set it to 600",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_key_is_generated_with_mode_600() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("secrets/wireguard/remote.key");
        let public = ensure_private_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let parent_mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(parent_mode, 0o700);
        let private = key::decode(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(key::public_key(&private), public);
    }

    #[test]
    fn existing_key_is_kept() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("vpn.key");
        std::fs::write(&path, format!("{}\n", key::encode(&[5; 32]))).unwrap();
        let public = ensure_private_key(&path).unwrap();
        assert_eq!(public, key::public_key(&[5; 32]));
        assert_eq!(ensure_private_key(&path).unwrap(), public);
    }

    #[test]
    fn corrupt_key_file_is_an_error() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("vpn.key");
        std::fs::write(&path, "garbage\n").unwrap();
        let error = ensure_private_key(&path).unwrap_err();
        assert!(error.contains("vpn.key"), "{error}");
        assert!(error.contains("base64"), "{error}");
    }
}
