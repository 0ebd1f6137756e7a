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

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use super::links::ip_batch;
use super::run_with_input;
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

fn apply_device(device: &WireguardDevice, routing: Option<&VpnRouting>) -> WireguardStatus {
    let mut status = WireguardStatus {
        interface: device.name.clone(),
        public_key: None,
        listen_port: device.listen_port,
        peers: device.peers.iter().map(|peer| peer.name.clone()).collect(),
        error: None,
    };
    let result = ensure_private_key(&device.private_key_file).and_then(|public_key| {
        status.public_key = Some(key::encode(&public_key));
        create_device(device)?;
        if let Some(routing) = routing {
            add_tunnel_routes(routing)?;
        }
        Ok(())
    });
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
            log::error!("WireGuard {}: {error}; services start without it", device.name);
            status.error = Some(error);
        }
    }
    status
}

/// Creates the interface, gives it its key, peers, addresses and MTU, and
/// brings it up.
fn create_device(device: &WireguardDevice) -> Result<(), String> {
    ip_batch(None, &format!("link add {} type wireguard\n", device.name))
        .map_err(|error| format!("creating the interface failed: {error}"))?;
    run_with_input(Command::new(WG).arg("set").args(device.wg_set_args()), "")
        .map_err(|error| format!("wg set failed: {error}"))?;
    let mut commands = String::new();
    for address in &device.addresses {
        commands.push_str(&format!("address add {address} dev {}\n", device.name));
    }
    commands.push_str(&format!("link set {} mtu {} up\n", device.name, device.mtu));
    ip_batch(None, &commands).map_err(|error| format!("configuring the interface failed: {error}"))
}

/// Routes the tunnel's allowed destinations into `wg-vpn` in the tunnel
/// table, above its `unreachable default`.
///
/// NOTE: the kernel deletes these routes with the interface, and nothing
/// re-creates `wg-vpn` at run time. If it is deleted, egress=vpn services
/// reach nothing (the `unreachable default` remains) until the next boot.
fn add_tunnel_routes(routing: &VpnRouting) -> Result<(), String> {
    let commands: String = routing
        .routes
        .iter()
        .map(|subnet| format!("route add {subnet} dev {VPN_INTERFACE} table {}\n", routing.table))
        .collect();
    ip_batch(None, &commands).map_err(|error| format!("routes into the tunnel (table {}) failed: {error}", routing.table))
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
