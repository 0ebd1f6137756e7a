//! Writes each service's resolver file under [`RESOLV_DIR`], which the
//! service's container binds read-only at `/etc/resolv.conf`.

use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::net::plan::{ServiceDns, ServiceNetwork};
use crate::net::resolv::{render, resolv_conf_path, RESOLV_DIR};
use crate::net::NetworkPlan;

/// Writes the resolver file of every service of `plan`. `uplink_lease`
/// holds the DNS servers of the uplink's DHCP lease.
pub fn write_all(plan: &NetworkPlan, uplink_lease: &[Ipv4Addr]) -> Result<(), String> {
    for service in &plan.services {
        write_service(service, uplink_lease)?;
    }
    Ok(())
}

/// Writes the resolver file of `service` and logs the servers it names.
/// `uplink_lease` holds the DNS servers of the uplink's DHCP lease.
pub fn write_service(service: &ServiceNetwork, uplink_lease: &[Ipv4Addr]) -> Result<(), String> {
    let text = render(&service.dns, uplink_lease);
    write(&service.name, &text)?;
    let servers: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("nameserver ")).collect();
    log::info!(
        "service {}: /etc/resolv.conf names {}",
        service.name,
        if servers.is_empty() { "no DNS server".to_string() } else { servers.join(", ") }
    );
    if servers.is_empty() && matches!(service.dns, ServiceDns::Uplink { .. }) {
        log::warn!("service {}: egress = \"internet\" but no DNS server is known: set network.dns, or check the uplink's DHCP lease", service.name);
    }
    Ok(())
}

/// Writes a resolver file without a DNS server for `service` unless it has
/// one already, so that its container can start on an image whose network
/// phase wrote no resolver files.
pub fn ensure(service: &str) -> Result<(), String> {
    if resolv_conf_path(service).exists() {
        return Ok(());
    }
    log::warn!("service {service}: no resolver file was planned; its container gets no DNS server");
    write(service, &render(&ServiceDns::None, &[]))
}

/// Writes the file in place: a running container binds this inode, so a
/// new file renamed over it would stay unseen there. A reader can find the
/// file empty for the moment between truncation and write.
fn write(service: &str, text: &str) -> Result<(), String> {
    let directory = Path::new(RESOLV_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(directory)
        .map_err(|error| format!("creating {} failed: {error}", directory.display()))?;
    let path = resolv_conf_path(service);
    std::fs::write(&path, text)
        .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)))
        .map_err(|error| format!("service {service}: writing {} failed: {error}", path.display()))
}
