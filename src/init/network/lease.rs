//! Decides what a new DHCP lease changes on the uplink: the `ip` commands
//! for a new address or router, and whether the resolver files of
//! `egress = "internet"` services need rewriting. Pure, so the apply
//! layer ([`super::dhcp`]) only runs what this returns.
//!
//! The nftables ruleset does not depend on the uplink's address: its rules
//! match the uplink by interface name, and outgoing connections use
//! `masquerade`, which takes the interface's current address. When an
//! address is deleted, the kernel drops the conntrack entries that were
//! masqueraded to it (`nf_nat_masquerade.c` in Linux 6.1), so a new
//! address needs no change to the ruleset.

use std::net::Ipv4Addr;

use super::links::Lease;
use crate::net::plan::{ServiceDns, ServiceNetwork};

/// Changes that a new lease makes, relative to the lease in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseChange {
    /// Commands for `ip -batch -`, empty when address and router stay.
    pub ip_commands: String,
    pub address_changed: bool,
    pub router_changed: bool,
    /// The lease names other DNS servers, in another order included.
    pub dns_changed: bool,
}

impl LeaseChange {
    /// Returns true when the lease changes nothing on the appliance.
    pub fn is_empty(&self) -> bool {
        !self.address_changed && !self.router_changed && !self.dns_changed
    }
}

/// Compares `new` with `current`, the lease configured on `interface`
/// (None when the uplink has no address yet), and returns the change.
pub fn change(interface: &str, current: Option<&Lease>, new: &Lease) -> LeaseChange {
    let address_changed = current.map_or(true, |lease| (lease.address, lease.prefix) != (new.address, new.prefix));
    let router_changed = current.map_or(true, |lease| lease.router != new.router);
    let dns_changed = current.map_or(true, |lease| lease.dns != new.dns);

    let mut ip_commands = String::new();
    if address_changed {
        // The old address goes first: deleting it later could remove the
        // new one too, as a secondary address of the same subnet.
        if let Some(old) = current {
            ip_commands.push_str(&format!("address del {}/{} dev {interface}\n", old.address, old.prefix));
        }
        // `replace` also succeeds when the address is there already, after
        // a change that failed half way.
        ip_commands.push_str(&format!("address replace {}/{} dev {interface}\n", new.address, new.prefix));
    }
    // Deleting the address also deleted the default route through it.
    if address_changed || router_changed {
        ip_commands.push_str(&format!("route replace default via {} dev {interface}\n", new.router));
    }
    LeaseChange { ip_commands, address_changed, router_changed, dns_changed }
}

/// Returns the names of the services whose resolver file names the DNS
/// servers of the uplink's lease: `egress = "internet"` on an uplink
/// without `network.dns`.
pub fn services_using_lease_dns(services: &[ServiceNetwork]) -> Vec<String> {
    services
        .iter()
        .filter(|service| matches!(&service.dns, ServiceDns::Uplink { servers } if servers.is_empty()))
        .map(|service| service.name.clone())
        .collect()
}

/// Formats DNS servers for a log line.
pub fn describe_servers(servers: &[Ipv4Addr]) -> String {
    if servers.is_empty() {
        return "none".into();
    }
    servers.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Egress;

    fn lease(address: [u8; 4], router: [u8; 4], dns: &[[u8; 4]]) -> Lease {
        Lease {
            address: Ipv4Addr::from(address),
            prefix: 24,
            router: Ipv4Addr::from(router),
            dns: dns.iter().map(|octets| Ipv4Addr::from(*octets)).collect(),
        }
    }

    #[test]
    fn renewal_of_the_same_lease_changes_nothing() {
        let current = lease([192, 168, 77, 50], [192, 168, 77, 1], &[[192, 168, 77, 1]]);
        let change = change("eth1", Some(&current), &current.clone());
        assert!(change.is_empty(), "{change:?}");
        assert_eq!(change.ip_commands, "");
    }

    #[test]
    fn new_dns_server_needs_no_ip_command() {
        let current = lease([192, 168, 77, 50], [192, 168, 77, 1], &[[192, 168, 77, 1]]);
        let new = lease([192, 168, 77, 50], [192, 168, 77, 1], &[[192, 168, 77, 53]]);
        let change = change("eth1", Some(&current), &new);
        assert!(change.dns_changed);
        assert!(!change.address_changed);
        assert!(!change.router_changed);
        assert_eq!(change.ip_commands, "");
    }

    #[test]
    fn reordered_dns_servers_are_a_change() {
        let current = lease([192, 168, 77, 50], [192, 168, 77, 1], &[[10, 0, 0, 1], [10, 0, 0, 2]]);
        let new = lease([192, 168, 77, 50], [192, 168, 77, 1], &[[10, 0, 0, 2], [10, 0, 0, 1]]);
        assert!(change("eth1", Some(&current), &new).dns_changed);
    }

    #[test]
    fn new_address_replaces_the_old_one() {
        let current = lease([192, 168, 77, 50], [192, 168, 77, 1], &[]);
        let new = lease([192, 168, 77, 51], [192, 168, 77, 1], &[]);
        let change = change("eth1", Some(&current), &new);
        assert!(change.address_changed);
        assert_eq!(
            change.ip_commands,
            "address del 192.168.77.50/24 dev eth1\n\
             address replace 192.168.77.51/24 dev eth1\n\
             route replace default via 192.168.77.1 dev eth1\n"
        );
    }

    #[test]
    fn new_prefix_is_an_address_change() {
        let current = lease([192, 168, 77, 50], [192, 168, 77, 1], &[]);
        let mut new = current.clone();
        new.prefix = 16;
        assert!(change("eth1", Some(&current), &new).address_changed);
    }

    #[test]
    fn new_router_replaces_the_default_route_only() {
        let current = lease([192, 168, 77, 50], [192, 168, 77, 1], &[]);
        let new = lease([192, 168, 77, 50], [192, 168, 77, 254], &[]);
        let change = change("eth1", Some(&current), &new);
        assert_eq!(change.ip_commands, "route replace default via 192.168.77.254 dev eth1\n");
    }

    #[test]
    fn first_lease_adds_address_and_route() {
        let new = lease([192, 168, 77, 50], [192, 168, 77, 1], &[[192, 168, 77, 1]]);
        let change = change("eth1", None, &new);
        assert!(change.dns_changed);
        assert_eq!(
            change.ip_commands,
            "address replace 192.168.77.50/24 dev eth1\n\
             route replace default via 192.168.77.1 dev eth1\n"
        );
    }

    #[test]
    fn lease_dns_goes_to_internet_services() {
        let service = |name: &str, dns: ServiceDns| ServiceNetwork {
            name: name.into(),
            segment: "frontend".into(),
            address: Ipv4Addr::new(10, 80, 1, 2),
            gateway: Ipv4Addr::new(10, 80, 1, 1),
            netns: name.into(),
            host_link: format!("h-{name}"),
            service_link: "eth0".into(),
            peer_link: format!("p-{name}"),
            egress: match dns {
                ServiceDns::None => Egress::None,
                ServiceDns::Uplink { .. } => Egress::Internet,
                ServiceDns::Vpn { .. } => Egress::Vpn,
            },
            dns,
        };
        let services = vec![
            service("leased", ServiceDns::Uplink { servers: Vec::new() }),
            service("fixed", ServiceDns::Uplink { servers: vec![Ipv4Addr::new(192, 168, 1, 1)] }),
            service("tunnel", ServiceDns::Vpn { servers: vec![Ipv4Addr::new(10, 64, 0, 1)] }),
            service("none", ServiceDns::None),
        ];
        assert_eq!(services_using_lease_dns(&services), ["leased"]);
    }
}
