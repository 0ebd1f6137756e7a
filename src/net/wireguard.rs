//! WireGuard devices: `wg-remote` for remote access and `wg-vpn` for the
//! tunnel to a VPN provider, as plans that the applier hands to `wg set`
//! (or to the WireGuard generic netlink family).

pub mod client;
pub mod key;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::address::{InterfaceAddress, Subnet};

/// Interface that remote peers connect to.
pub const REMOTE_INTERFACE: &str = "wg-remote";
/// Interface of the tunnel to the VPN provider.
pub const VPN_INTERFACE: &str = "wg-vpn";
/// Routing table that contains the tunnel's routes for services with
/// `egress = "vpn"`.
pub const VPN_ROUTE_TABLE: u32 = 51820;
/// Priority of the policy rules that send internal destinations to the main
/// table; the rules for the tunnel table come right after.
pub const INTERNAL_RULE_PRIORITY: u32 = 1000;
/// Priority of the `from SERVICE lookup VPN_ROUTE_TABLE` rules.
pub const VPN_RULE_PRIORITY: u32 = 1001;

/// A WireGuard interface with its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardDevice {
    /// Interface name.
    pub name: String,
    /// Absolute path, on the appliance, of the private key file.
    pub private_key_file: PathBuf,
    /// UDP port to listen on; `None` lets the kernel pick one.
    pub listen_port: Option<u16>,
    /// Interface MTU in bytes.
    pub mtu: u16,
    /// Addresses of the interface.
    pub addresses: Vec<InterfaceAddress>,
    pub peers: Vec<WireguardPeer>,
}

/// One peer of a WireGuard interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardPeer {
    /// Name from the definition, for logs; WireGuard itself has none.
    pub name: String,
    /// Public key in base64.
    pub public_key: String,
    /// `host:port` to send the handshake to; `None` for peers that connect
    /// to the appliance.
    pub endpoint: Option<String>,
    /// Source addresses accepted from the peer and destinations routed to it.
    pub allowed_ips: Vec<Subnet>,
    /// Seconds between keepalive packets; `None` sends none.
    pub persistent_keepalive: Option<u16>,
}

impl WireguardDevice {
    /// Returns the arguments of `wg set` that configure this device in one
    /// call, for example `["wg-vpn", "private-key", "/data/…", "peer", …]`.
    /// `wg` resolves a host name in an endpoint itself.
    pub fn wg_set_args(&self) -> Vec<String> {
        let mut args = vec![
            self.name.clone(),
            "private-key".into(),
            self.private_key_file.display().to_string(),
        ];
        if let Some(port) = self.listen_port {
            args.push("listen-port".into());
            args.push(port.to_string());
        }
        for peer in &self.peers {
            args.push("peer".into());
            args.push(peer.public_key.clone());
            if let Some(endpoint) = &peer.endpoint {
                args.push("endpoint".into());
                args.push(endpoint.clone());
            }
            if let Some(seconds) = peer.persistent_keepalive {
                args.push("persistent-keepalive".into());
                args.push(seconds.to_string());
            }
            args.push("allowed-ips".into());
            let allowed: Vec<String> = peer.allowed_ips.iter().map(Subnet::to_string).collect();
            args.push(allowed.join(","));
        }
        args
    }
}

/// Policy routing for services with `egress = "vpn"`: internal destinations
/// use the main table, everything else the tunnel table, whose last route is
/// `unreachable default`, so nothing falls back to the uplink's default
/// route while `wg-vpn` is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpnRouting {
    /// Routing table number.
    pub table: u32,
    /// Destinations routed into `wg-vpn` in `table` (the tunnel's allowed IPs).
    pub routes: Vec<Subnet>,
    /// Subnets looked up in the main table first (`ip rule add to SUBNET
    /// lookup main priority INTERNAL_RULE_PRIORITY`): segments and the
    /// remote-access subnet.
    pub internal: Vec<Subnet>,
    /// Service addresses sent to `table` (`ip rule add from ADDRESS lookup
    /// TABLE priority VPN_RULE_PRIORITY`).
    pub sources: Vec<Ipv4Addr>,
}

/// Checks a WireGuard key: 32 bytes in standard base64.
pub fn check_key(text: &str) -> Result<(), String> {
    key::decode(text).map(drop).map_err(|error| format!("invalid WireGuard key {text:?}: {error}"))
}

/// Checks an endpoint written as `host:port`, where host is an IPv4 address
/// or a DNS name. IPv6 endpoints are rejected because the appliance's
/// firewall drops IPv6.
pub fn check_endpoint(text: &str) -> Result<(), String> {
    let invalid = |why: &str| format!("invalid endpoint {text:?}: {why}; write host:port, for example \"vpn.example.net:51820\"");
    if text.starts_with('[') {
        return Err(invalid("IPv6 endpoints are not supported because the appliance runs IPv4 only"));
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(|| invalid("the port is missing"))?;
    let port: u16 = port.parse().map_err(|_| invalid("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(invalid("the port is 0"));
    }
    if !is_host(host) {
        return Err(invalid("the host is neither an IPv4 address nor a DNS name"));
    }
    Ok(())
}

/// Checks a host without a port: an IPv4 address or a DNS name.
pub fn check_host(text: &str) -> Result<(), String> {
    if !is_host(text) {
        return Err(format!(
            "invalid host {text:?}: write an IPv4 address or a DNS name without a port, for example \"home.example.net\""
        ));
    }
    Ok(())
}

fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}
