//! The network plan: every address, link, route, tunnel and allowed flow
//! of the appliance, computed from the definition without touching the
//! kernel.
//!
//! Each service gets its own network namespace with one veth pair. The host
//! end is a routed point-to-point link: it carries the segment's gateway
//! address as a /32, and the host routes the service's /32 address to it.
//! Segments are therefore address ranges, not Linux bridges. Frames between
//! two ports of a bridge skip the `inet` forward hook unless `br_netfilter`
//! is loaded, so with a bridge, traffic inside a segment would bypass the
//! communication matrix. With routed links every packet between services
//! passes the forward chain, and its input interface names the service that
//! sent it, which the source-address check relies on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use super::address::{self, InterfaceAddress, Subnet, IFNAME_MAX};
use super::wireguard::{self, VpnRouting, WireguardDevice, WireguardPeer};
use crate::config::{Definition, Egress, Health, Proto};

/// Name of the service's end of its veth pair inside its namespace.
pub const SERVICE_LINK_NAME: &str = "eth0";
/// Segment whose services may read ztms-init's metrics.
pub const MONITORING_SEGMENT: &str = "monitoring";
/// TCP port of ztms-init's metrics on the monitoring segment's gateway.
pub const METRICS_PORT: u16 = 9310;
/// DNS port, TCP and UDP.
pub const DNS_PORT: u16 = 53;

/// A definition that has no consistent network plan. Each message names the
/// value and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A key whose value is not allowed.
    #[error("invalid {key} = {value:?}: {fix}")]
    Invalid { key: String, value: String, fix: String },
    /// Two subnets share addresses.
    #[error("{first} ({first_subnet}) overlaps {second} ({second_subnet}); give each a subnet of its own")]
    Overlap {
        first: String,
        first_subnet: Subnet,
        second: String,
        second_subnet: Subnet,
    },
    /// More services or peers than addresses in a subnet.
    #[error("{owner} has {count} members but its subnet {subnet} holds {capacity}; use a shorter prefix, for example /{suggested}")]
    Full {
        owner: String,
        subnet: Subnet,
        count: usize,
        capacity: u32,
        suggested: u8,
    },
    /// An `allow` entry that does not name a declared port.
    #[error("{owner}: allow entry {entry:?} {problem}")]
    Allow { owner: String, entry: String, problem: String },
    /// A published port on a service whose traffic may only leave through
    /// the tunnel.
    #[error("service {service:?} has egress = \"vpn\" and publishes port {port}/{proto}; its replies would have to leave by the uplink, which the kill switch forbids; publish the port through the reverse proxy instead")]
    VpnPublished { service: String, port: u16, proto: Proto },
}

/// The appliance's network, ready to be applied. Besides the links, routes
/// and devices below, the applier sets `net.ipv4.ip_forward=1` on the host
/// and `net.ipv6.conf.all.disable_ipv6=1` in every service namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    pub uplink: Uplink,
    pub segments: Vec<SegmentPlan>,
    /// Services sorted by name.
    pub services: Vec<ServiceNetwork>,
    /// Ports forwarded from the uplink, sorted by protocol and port.
    pub published: Vec<PublishedPort>,
    /// The communication matrix, sorted and without duplicates.
    pub flows: Vec<Flow>,
    /// Ports that ztms-init's health checks connect to from the host.
    pub health_checks: Vec<Endpoint>,
    pub remote: Option<RemoteAccessPlan>,
    pub vpn: Option<VpnPlan>,
    /// New connections per second that one source may open to published ports.
    pub new_connections_per_second: u32,
}

/// The uplink interface and its IPv4 setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uplink {
    pub interface: String,
    pub ipv4: UplinkIpv4,
    /// DNS servers from the definition; empty means "use DHCP's".
    pub dns: Vec<Ipv4Addr>,
}

/// Address source of the uplink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum UplinkIpv4 {
    Dhcp,
    Static { address: InterfaceAddress, gateway: Ipv4Addr },
}

/// A segment: an address range with the gateway address that every host
/// end of its services' links carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentPlan {
    pub name: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
}

/// The network of one service.
///
/// The applier creates the namespace `netns`, a veth pair `host_link` ↔
/// `service_link` with the service end in the namespace, then:
/// - host: `ip address add GATEWAY/32 dev HOST_LINK`,
///   `ip route add ADDRESS/32 dev HOST_LINK`;
/// - namespace: `ip address add ADDRESS/32 dev eth0`,
///   `ip route add GATEWAY dev eth0`, `ip route add default via GATEWAY`,
///   and `lo` up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNetwork {
    pub name: String,
    pub segment: String,
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// Network namespace name under `/run/netns`: the service's name, which
    /// is the path the container runtime joins.
    pub netns: String,
    /// Host end of the veth pair.
    pub host_link: String,
    /// Service end of the veth pair inside `netns`.
    pub service_link: String,
    /// Name of the service end before it moves into `netns`.
    pub peer_link: String,
    pub egress: Egress,
    /// Resolvers for the service's `/etc/resolv.conf`: the uplink's for
    /// `internet`, the tunnel's for `vpn`, none for `none`.
    pub dns: ServiceDns,
}

/// Resolvers of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ServiceDns {
    /// No resolver: the service reaches only addresses that its
    /// configuration (rendered from this plan) names.
    None,
    /// The uplink's resolvers, from DHCP when `servers` is empty.
    Uplink { servers: Vec<Ipv4Addr> },
    /// The VPN provider's resolvers, reached through the tunnel.
    Vpn { servers: Vec<Ipv4Addr> },
}

/// A port forwarded from the uplink to a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishedPort {
    pub proto: Proto,
    /// Port on the uplink.
    pub external_port: u16,
    pub service: String,
    pub address: Ipv4Addr,
    /// Port inside the service's namespace.
    pub port: u16,
}

/// An address, protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub proto: Proto,
    pub port: u16,
}

/// One allowed flow of the matrix: `from` may open connections to `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Flow {
    /// Source address (a service or a remote peer).
    pub source: Ipv4Addr,
    pub to: Endpoint,
    /// `service` or `peer:NAME` that declared the entry, for messages.
    pub from_name: String,
    pub to_name: String,
}

/// Remote access through `wg-remote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteAccessPlan {
    pub subnet: Subnet,
    pub device: WireguardDevice,
    /// Peer names and their addresses, sorted by name.
    pub peers: Vec<(String, Ipv4Addr)>,
}

/// The tunnel to the VPN provider through `wg-vpn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpnPlan {
    pub device: WireguardDevice,
    /// UDP port of the provider's endpoint, which the host may send to.
    pub endpoint_port: u16,
    pub dns: Vec<Ipv4Addr>,
    pub routing: VpnRouting,
}

impl NetworkPlan {
    /// Computes the plan. Addresses follow the rule in
    /// [`super::address`], so they depend on the set of names only.
    pub fn from_definition(definition: &Definition) -> Result<Self, PlanError> {
        let uplink = plan_uplink(definition)?;
        let segments = plan_segments(definition)?;
        let remote_subnet = match definition.wireguard.peers.is_empty() {
            true => None,
            false => Some(parse(
                "wireguard.subnet",
                &definition.wireguard.subnet,
                Subnet::parse_segment,
            )?),
        };
        check_overlaps(&uplink, &segments, remote_subnet)?;

        let services = plan_services(definition, &segments, &uplink)?;
        let addresses: BTreeMap<&str, &ServiceNetwork> =
            services.iter().map(|s| (s.name.as_str(), s)).collect();
        let published = plan_published(definition, &addresses)?;
        let remote = match remote_subnet {
            Some(subnet) => Some(plan_remote(definition, subnet)?),
            None => None,
        };
        let flows = plan_flows(definition, &addresses, remote.as_ref())?;
        let vpn = plan_vpn(definition, &services, &segments, remote_subnet)?;

        let mut health_checks = Vec::new();
        for service in &definition.services {
            let port = match &service.health {
                Some(Health::Http { port, .. }) | Some(Health::Tcp { port, .. }) => *port,
                _ => continue,
            };
            let address = addresses[service.name.get_ref().as_str()].address;
            health_checks.push(Endpoint { address, proto: Proto::Tcp, port });
        }
        health_checks.sort();

        if definition.network.new_connections_per_second == 0 {
            return Err(invalid(
                "network.new_connections_per_second",
                "0",
                "use at least 1; 0 would drop every connection to the published ports",
            ));
        }
        Ok(NetworkPlan {
            uplink,
            segments,
            services,
            published,
            flows,
            health_checks,
            remote,
            vpn,
            new_connections_per_second: definition.network.new_connections_per_second,
        })
    }

    /// Returns the service with `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceNetwork> {
        self.services.iter().find(|service| service.name == name)
    }

    /// Returns the address that ztms-init's metrics listen on, the
    /// monitoring segment's gateway, with the subnet allowed to connect.
    /// None when no service is in the monitoring segment, because the
    /// gateway address exists only on its services' host links.
    pub fn metrics_endpoint(&self) -> Option<(SocketAddrV4, Subnet)> {
        let segment = self.segments.iter().find(|segment| segment.name == MONITORING_SEGMENT)?;
        if !self.services.iter().any(|service| service.segment == segment.name) {
            return None;
        }
        Some((SocketAddrV4::new(segment.gateway, METRICS_PORT), segment.subnet))
    }
}

/// Parses `service:port/proto`.
pub fn parse_allow(text: &str) -> Result<(&str, u16, Proto), String> {
    let invalid = || format!("invalid allow entry {text:?}: write service:port/proto, for example \"jellyfin:8096/tcp\"");
    let (service, rest) = text.split_once(':').ok_or_else(invalid)?;
    let (port, proto) = rest.split_once('/').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return Err(invalid()),
    };
    if service.is_empty() || port == 0 {
        return Err(invalid());
    }
    Ok((service, port, proto))
}

fn invalid(key: &str, value: &str, fix: &str) -> PlanError {
    PlanError::Invalid {
        key: key.into(),
        value: value.into(),
        fix: fix.into(),
    }
}

fn parse<T>(key: &str, text: &str, parser: impl Fn(&str) -> Result<T, String>) -> Result<T, PlanError> {
    parser(text).map_err(|fix| invalid(key, text, &fix))
}

fn check_interface_name(key: &str, name: &str) -> Result<(), PlanError> {
    let valid = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(invalid(
            key,
            name,
            "use 1 to 15 letters, digits, '-', '_' or '.', as the kernel names the interface",
        ));
    }
    let reserved = name.starts_with("zs") || name.starts_with("zp") || name.starts_with("wg-") || name == "lo";
    if reserved {
        return Err(invalid(
            key,
            name,
            "names starting with zs, zp or wg- and lo belong to the appliance's own interfaces; use the uplink's kernel name, for example \"eth0\"",
        ));
    }
    Ok(())
}

fn plan_uplink(definition: &Definition) -> Result<Uplink, PlanError> {
    let network = &definition.network;
    check_interface_name("network.interface", &network.interface)?;
    let ipv4 = if network.ipv4 == "dhcp" {
        if let Some(gateway) = network.gateway {
            return Err(invalid(
                "network.gateway",
                &gateway.to_string(),
                "a gateway needs a static network.ipv4; remove it, or set ipv4 to the appliance's address such as \"192.168.1.10/24\"",
            ));
        }
        UplinkIpv4::Dhcp
    } else {
        let address = parse("network.ipv4", &network.ipv4, |text| {
            InterfaceAddress::parse(text).map_err(|message| format!("{message}, or \"dhcp\""))
        })?;
        let Some(gateway) = network.gateway else {
            return Err(invalid(
                "network.ipv4",
                &network.ipv4,
                "a static address needs network.gateway; set it to the router's address in the same subnet",
            ));
        };
        if !address.subnet().contains(gateway) || gateway == address.address {
            return Err(invalid(
                "network.gateway",
                &gateway.to_string(),
                &format!("the gateway must be another address in {}", address.subnet()),
            ));
        }
        if network.dns.is_empty() {
            return Err(invalid(
                "network.dns",
                "[]",
                "a static address needs DNS servers; list at least one, for example [\"192.168.1.1\"]",
            ));
        }
        UplinkIpv4::Static { address, gateway }
    };
    Ok(Uplink {
        interface: network.interface.clone(),
        ipv4,
        dns: network.dns.clone(),
    })
}

fn plan_segments(definition: &Definition) -> Result<Vec<SegmentPlan>, PlanError> {
    let mut segments = Vec::new();
    for segment in &definition.segments {
        let key = format!("segment {:?} subnet", segment.name);
        let subnet = parse(&key, &segment.subnet, Subnet::parse_segment)?;
        segments.push(SegmentPlan {
            name: segment.name.clone(),
            subnet,
            gateway: subnet.gateway(),
        });
    }
    segments.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(segments)
}

fn check_overlaps(uplink: &Uplink, segments: &[SegmentPlan], remote: Option<Subnet>) -> Result<(), PlanError> {
    let mut ranges: Vec<(String, Subnet)> = segments
        .iter()
        .map(|segment| (format!("segment {:?}", segment.name), segment.subnet))
        .collect();
    if let Some(subnet) = remote {
        ranges.push(("wireguard.subnet".into(), subnet));
    }
    if let UplinkIpv4::Static { address, .. } = &uplink.ipv4 {
        ranges.push(("network.ipv4".into(), address.subnet()));
    }
    for (index, (first, first_subnet)) in ranges.iter().enumerate() {
        for (second, second_subnet) in &ranges[index + 1..] {
            if first_subnet.overlaps(second_subnet) {
                return Err(PlanError::Overlap {
                    first: first.clone(),
                    first_subnet: *first_subnet,
                    second: second.clone(),
                    second_subnet: *second_subnet,
                });
            }
        }
    }
    Ok(())
}

/// Returns the longest prefix whose subnet has room for `count` addresses.
fn prefix_for(count: usize) -> u8 {
    (8..=29u8)
        .rev()
        .find(|prefix| (1u64 << (32 - prefix)) - 3 >= count as u64)
        .unwrap_or(8)
}

fn plan_services(definition: &Definition, segments: &[SegmentPlan], uplink: &Uplink) -> Result<Vec<ServiceNetwork>, PlanError> {
    let vpn_dns = definition.vpn.as_ref().map(|vpn| vpn.dns.clone()).unwrap_or_default();
    let mut services = Vec::new();
    for segment in segments {
        let members: Vec<&crate::config::Service> = definition
            .services
            .iter()
            .filter(|service| service.segment == segment.name)
            .collect();
        let names = members.iter().map(|service| service.name.get_ref().as_str());
        let Some(addresses) = address::allocate(&segment.subnet, names, &BTreeMap::new()) else {
            return Err(PlanError::Full {
                owner: format!("segment {:?}", segment.name),
                subnet: segment.subnet,
                count: members.len(),
                capacity: segment.subnet.capacity(),
                suggested: prefix_for(members.len()),
            });
        };
        for service in members {
            let name = service.name.get_ref();
            let address = addresses[name.as_str()];
            let dns = match service.egress {
                Egress::None => ServiceDns::None,
                Egress::Internet => ServiceDns::Uplink { servers: uplink.dns.clone() },
                Egress::Vpn => ServiceDns::Vpn { servers: vpn_dns.clone() },
            };
            services.push(ServiceNetwork {
                name: name.clone(),
                segment: segment.name.clone(),
                address,
                gateway: segment.gateway,
                netns: name.clone(),
                host_link: address::host_link_name(address),
                service_link: SERVICE_LINK_NAME.into(),
                peer_link: address::peer_link_name(address),
                egress: service.egress,
                dns,
            });
        }
    }
    if let Some(service) = definition
        .services
        .iter()
        .find(|service| !segments.iter().any(|segment| segment.name == service.segment))
    {
        return Err(invalid(
            &format!("service {:?} segment", service.name.get_ref()),
            &service.segment,
            "declare the segment in a [[segment]] table or use a declared one",
        ));
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(services)
}

fn plan_published(
    definition: &Definition,
    addresses: &BTreeMap<&str, &ServiceNetwork>,
) -> Result<Vec<PublishedPort>, PlanError> {
    let mut published = Vec::new();
    for service in &definition.services {
        let name = service.name.get_ref();
        for port in &service.ports {
            let Some(external) = &port.publish else { continue };
            if service.egress == Egress::Vpn {
                return Err(PlanError::VpnPublished {
                    service: name.clone(),
                    port: port.port,
                    proto: port.proto,
                });
            }
            published.push(PublishedPort {
                proto: port.proto,
                external_port: *external.get_ref(),
                service: name.clone(),
                address: addresses[name.as_str()].address,
                port: port.port,
            });
        }
    }
    published.sort();
    Ok(published)
}

/// Resolves one `allow` entry of `owner` into the flow it opens.
fn resolve_allow(
    definition: &Definition,
    addresses: &BTreeMap<&str, &ServiceNetwork>,
    owner: &str,
    source: Ipv4Addr,
    entry: &str,
) -> Result<Flow, PlanError> {
    let allow_error = |problem: String| PlanError::Allow {
        owner: owner.into(),
        entry: entry.into(),
        problem,
    };
    let (target, port, proto) = parse_allow(entry).map_err(|message| allow_error(format!("is invalid: {message}")))?;
    let Some(service) = definition.services.iter().find(|s| s.name.get_ref() == target) else {
        return Err(allow_error(format!(
            "names service {target:?}, which is not declared; fix the name or declare the service"
        )));
    };
    if !service.ports.iter().any(|p| p.port == port && p.proto == proto) {
        return Err(allow_error(format!(
            "names port {port}/{proto}, which service {target:?} does not declare; add it to that service's ports"
        )));
    }
    Ok(Flow {
        source,
        to: Endpoint {
            address: addresses[target].address,
            proto,
            port,
        },
        from_name: owner.into(),
        to_name: target.into(),
    })
}

fn plan_flows(
    definition: &Definition,
    addresses: &BTreeMap<&str, &ServiceNetwork>,
    remote: Option<&RemoteAccessPlan>,
) -> Result<Vec<Flow>, PlanError> {
    let mut flows = BTreeSet::new();
    for service in &definition.services {
        let name = service.name.get_ref();
        let source = addresses[name.as_str()].address;
        for entry in &service.allow {
            let flow = resolve_allow(definition, addresses, &format!("service {name:?}"), source, entry)?;
            // The firewall drops DNS from egress=vpn services to anything
            // but the tunnel's DNS servers, so such a flow could never work.
            if service.egress == Egress::Vpn && flow.to.port == DNS_PORT {
                return Err(PlanError::Allow {
                    owner: format!("service {name:?}"),
                    entry: entry.clone(),
                    problem: "opens port 53 of another service, but a service with egress = \"vpn\" sends DNS only to the tunnel's DNS servers (vpn.dns); remove the entry or set the service's egress to \"internet\"".into(),
                });
            }
            flows.insert(flow);
        }
    }
    if let Some(remote) = remote {
        for peer in &definition.wireguard.peers {
            let source = remote
                .peers
                .iter()
                .find(|(name, _)| *name == peer.name)
                .map(|(_, address)| *address)
                .expect("every declared peer has an address in the remote-access plan");
            for entry in &peer.allow {
                let owner = format!("wireguard peer {:?}", peer.name);
                flows.insert(resolve_allow(definition, addresses, &owner, source, entry)?);
            }
        }
    }
    Ok(flows.into_iter().collect())
}

fn plan_remote(definition: &Definition, subnet: Subnet) -> Result<RemoteAccessPlan, PlanError> {
    let remote = &definition.wireguard;
    if remote.listen_port == 0 {
        return Err(invalid("wireguard.listen_port", "0", "use a UDP port from 1 to 65535, for example 51820"));
    }
    check_mtu("wireguard.mtu", remote.mtu)?;
    check_key_file("wireguard.private_key_file", &remote.private_key_file)?;
    if let Some(host) = &remote.endpoint {
        parse("wireguard.endpoint", host, wireguard::check_host)?;
    }

    let mut fixed = BTreeMap::new();
    let mut keys = BTreeSet::new();
    for peer in &remote.peers {
        let key = format!("wireguard.peer {:?}", peer.name);
        if !is_name(&peer.name) {
            return Err(invalid(&format!("{key} name"), &peer.name, "use 1 to 63 lowercase letters, digits and '-', starting with a letter"));
        }
        parse(&format!("{key} public_key"), &peer.public_key, wireguard::check_key)?;
        if !keys.insert(peer.public_key.trim()) {
            return Err(invalid(&format!("{key} public_key"), &peer.public_key, "another peer has the same key; give each device its own key pair"));
        }
        if let Some(address) = peer.address {
            if !subnet.is_allocatable(address) {
                return Err(invalid(
                    &format!("{key} address"),
                    &address.to_string(),
                    &format!("use an address from {} to {} in wireguard.subnet {subnet}", Ipv4Addr::from(u32::from(subnet.network) + 2), Ipv4Addr::from(u32::from(subnet.network) + 1 + subnet.capacity())),
                ));
            }
            if let Some((other, _)) = fixed.iter().find(|(_, taken)| **taken == address) {
                return Err(invalid(&format!("{key} address"), &address.to_string(), &format!("peer {other:?} has the same address; give each peer its own")));
            }
            fixed.insert(peer.name.as_str(), address);
        }
    }
    let names: BTreeSet<&str> = remote.peers.iter().map(|peer| peer.name.as_str()).collect();
    if names.len() != remote.peers.len() {
        let duplicate = remote
            .peers
            .iter()
            .find(|peer| remote.peers.iter().filter(|other| other.name == peer.name).count() > 1)
            .map(|peer| peer.name.clone())
            .unwrap_or_default();
        return Err(invalid("wireguard.peer name", &duplicate, "the name is declared twice; give each peer its own name"));
    }
    let Some(addresses) = address::allocate(&subnet, names.iter().copied(), &fixed) else {
        return Err(PlanError::Full {
            owner: "wireguard.subnet".into(),
            subnet,
            count: names.len(),
            capacity: subnet.capacity(),
            suggested: prefix_for(names.len()),
        });
    };

    let mut peers: Vec<WireguardPeer> = remote
        .peers
        .iter()
        .map(|peer| WireguardPeer {
            name: peer.name.clone(),
            public_key: peer.public_key.trim().to_string(),
            endpoint: None,
            allowed_ips: vec![Subnet {
                network: addresses[peer.name.as_str()],
                prefix: 32,
            }],
            persistent_keepalive: None,
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));

    Ok(RemoteAccessPlan {
        subnet,
        device: WireguardDevice {
            name: wireguard::REMOTE_INTERFACE.into(),
            private_key_file: remote.private_key_file.clone(),
            listen_port: Some(remote.listen_port),
            mtu: remote.mtu,
            addresses: vec![InterfaceAddress {
                address: subnet.gateway(),
                prefix: subnet.prefix,
            }],
            peers,
        },
        peers: addresses.into_iter().map(|(name, address)| (name.to_string(), address)).collect(),
    })
}

fn plan_vpn(
    definition: &Definition,
    services: &[ServiceNetwork],
    segments: &[SegmentPlan],
    remote: Option<Subnet>,
) -> Result<Option<VpnPlan>, PlanError> {
    let sources: Vec<Ipv4Addr> = services
        .iter()
        .filter(|service| service.egress == Egress::Vpn)
        .map(|service| service.address)
        .collect();
    // Without a tunnel the kill switch stays closed: egress=vpn services
    // reach nothing outside the appliance until a [vpn] table is added.
    let Some(vpn) = &definition.vpn else {
        return Ok(None);
    };

    parse("vpn.endpoint", &vpn.endpoint, wireguard::check_endpoint)?;
    let endpoint_port: u16 = vpn
        .endpoint
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("check_endpoint accepted the port");
    parse("vpn.public_key", &vpn.public_key, wireguard::check_key)?;
    check_key_file("vpn.private_key_file", &vpn.private_key_file)?;
    check_mtu("vpn.mtu", vpn.mtu)?;
    if vpn.addresses.is_empty() {
        return Err(invalid("vpn.addresses", "[]", "list the tunnel address the provider assigned, for example [\"10.64.12.3/32\"]"));
    }
    let addresses = vpn
        .addresses
        .iter()
        .map(|text| parse("vpn.addresses", text, InterfaceAddress::parse))
        .collect::<Result<Vec<_>, _>>()?;
    if vpn.allowed_ips.is_empty() {
        return Err(invalid("vpn.allowed_ips", "[]", "list the destinations to route into the tunnel, usually [\"0.0.0.0/0\"]"));
    }
    let allowed_ips = vpn
        .allowed_ips
        .iter()
        .map(|text| parse("vpn.allowed_ips", text, Subnet::parse_any))
        .collect::<Result<Vec<_>, _>>()?;
    if vpn.dns.is_empty() {
        return Err(invalid("vpn.dns", "[]", "list the provider's DNS servers; services with egress = \"vpn\" resolve names only through the tunnel"));
    }
    for server in &vpn.dns {
        if !allowed_ips.iter().any(|subnet| subnet.contains(*server)) {
            return Err(invalid(
                "vpn.dns",
                &server.to_string(),
                "the server is outside vpn.allowed_ips, so queries to it would not enter the tunnel; add its address to allowed_ips",
            ));
        }
    }

    let mut internal: Vec<Subnet> = segments.iter().map(|segment| segment.subnet).collect();
    internal.extend(remote);
    Ok(Some(VpnPlan {
        device: WireguardDevice {
            name: wireguard::VPN_INTERFACE.into(),
            private_key_file: vpn.private_key_file.clone(),
            listen_port: None,
            mtu: vpn.mtu,
            addresses,
            peers: vec![WireguardPeer {
                name: "provider".into(),
                public_key: vpn.public_key.trim().to_string(),
                endpoint: Some(vpn.endpoint.clone()),
                allowed_ips: allowed_ips.clone(),
                persistent_keepalive: (vpn.persistent_keepalive > 0).then_some(vpn.persistent_keepalive),
            }],
        },
        endpoint_port,
        dns: vpn.dns.clone(),
        routing: VpnRouting {
            table: wireguard::VPN_ROUTE_TABLE,
            routes: allowed_ips,
            internal,
            sources,
        },
    }))
}

fn check_mtu(key: &str, mtu: u16) -> Result<(), PlanError> {
    if !(1280..=9000).contains(&mtu) {
        return Err(invalid(key, &mtu.to_string(), "use an MTU from 1280 to 9000 bytes; 1420 fits a 1500-byte uplink"));
    }
    Ok(())
}

fn check_key_file(key: &str, path: &std::path::Path) -> Result<(), PlanError> {
    if !path.is_absolute() {
        return Err(invalid(
            key,
            &path.display().to_string(),
            "use an absolute path on the appliance, under /data, for example \"/data/config/wireguard/vpn.key\"",
        ));
    }
    Ok(())
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}
