//! The `/etc/resolv.conf` of each service: ztms-init writes one file per
//! service under [`RESOLV_DIR`] from the service's [`ServiceDns`], and the
//! container binds it read-only over the image's `/etc/resolv.conf`.
//!
//! A service with `egress = "vpn"` names only the tunnel's DNS servers, and
//! the firewall drops its DNS packets to any other address. A service with
//! `egress = "none"` gets a file without a `nameserver` line. glibc and
//! musl then query 127.0.0.1 in the service's own namespace, where nothing
//! answers, so the service has no resolver.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::plan::ServiceDns;

/// Directory on the appliance with one resolver file per service.
pub const RESOLV_DIR: &str = "/run/ztms/resolv";
/// Path of the resolver file inside every container.
pub const RESOLV_TARGET: &str = "/etc/resolv.conf";
/// glibc reads at most 3 `nameserver` lines (`MAXNS` in `resolv.h`).
pub const MAX_NAMESERVERS: usize = 3;

/// Returns the path on the appliance of the resolver file of `service`.
pub fn resolv_conf_path(service: &str) -> PathBuf {
    PathBuf::from(RESOLV_DIR).join(format!("{service}.conf"))
}

/// Renders the resolver file of a service. `uplink_lease` holds the DNS
/// servers of the uplink's DHCP lease, used by `egress = "internet"`
/// services when the definition lists none. Servers beyond the first
/// [`MAX_NAMESERVERS`] are left out, because resolvers ignore them.
pub fn render(dns: &ServiceDns, uplink_lease: &[Ipv4Addr]) -> String {
    let (comment, servers): (&str, &[Ipv4Addr]) = match dns {
        ServiceDns::None => ("egress = \"none\": no resolver", &[]),
        ServiceDns::Uplink { servers } if servers.is_empty() => {
            ("egress = \"internet\": the uplink's DNS servers from its DHCP lease", uplink_lease)
        }
        ServiceDns::Uplink { servers } => ("egress = \"internet\": the uplink's DNS servers (network.dns)", servers),
        ServiceDns::Vpn { servers } => ("egress = \"vpn\": the tunnel's DNS servers (vpn.dns)", servers),
    };
    let mut text = format!("# Written by ztms-init from the network plan. {comment}.\n");
    for server in servers.iter().take(MAX_NAMESERVERS) {
        text.push_str(&format!("nameserver {server}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nameservers(text: &str) -> Vec<&str> {
        text.lines().filter_map(|line| line.strip_prefix("nameserver ")).collect()
    }

    #[test]
    fn vpn_service_names_tunnel_servers_only() {
        let dns = ServiceDns::Vpn { servers: vec![Ipv4Addr::new(10, 64, 0, 1)] };
        let text = render(&dns, &[Ipv4Addr::new(192, 168, 1, 1)]);
        assert_eq!(nameservers(&text), ["10.64.0.1"], "{text}");
    }

    #[test]
    fn egress_none_has_no_nameserver() {
        let text = render(&ServiceDns::None, &[Ipv4Addr::new(192, 168, 1, 1)]);
        assert!(nameservers(&text).is_empty(), "{text}");
        assert!(text.starts_with('#'), "{text}");
    }

    #[test]
    fn internet_service_uses_definition_servers() {
        let dns = ServiceDns::Uplink { servers: vec![Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(192, 168, 1, 2)] };
        let text = render(&dns, &[Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(nameservers(&text), ["192.168.1.1", "192.168.1.2"], "{text}");
    }

    #[test]
    fn internet_service_falls_back_to_lease() {
        let dns = ServiceDns::Uplink { servers: Vec::new() };
        let text = render(&dns, &[Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(nameservers(&text), ["10.0.2.3"], "{text}");
    }

    #[test]
    fn nameservers_beyond_three_are_dropped() {
        let servers: Vec<Ipv4Addr> = (1..=5).map(|last| Ipv4Addr::new(10, 64, 0, last)).collect();
        let text = render(&ServiceDns::Vpn { servers }, &[]);
        assert_eq!(nameservers(&text), ["10.64.0.1", "10.64.0.2", "10.64.0.3"], "{text}");
    }

    #[test]
    fn path_is_per_service() {
        assert_eq!(resolv_conf_path("qbittorrent"), PathBuf::from("/run/ztms/resolv/qbittorrent.conf"));
    }
}
