//! IPv4 subnets, address allocation and interface names.
//!
//! Addresses are allocated by hashing: each name starts at the host offset
//! `FNV-1a(name) mod capacity`, and names are placed in sorted order, each
//! taking the first free address from its start (linear probing). The result
//! depends only on the set of names, never on the order they are declared in,
//! and adding a name moves an existing one only when their probe runs meet.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Maximum length of an interface name (`IFNAMSIZ` minus the NUL).
pub const IFNAME_MAX: usize = 15;

/// An IPv4 network: the network address and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// Parses CIDR notation with any prefix length from 0 to 32; host bits
    /// must be zero.
    pub fn parse_any(text: &str) -> Result<Self, String> {
        let invalid = || format!("invalid subnet {text:?}: use IPv4 CIDR notation such as \"10.80.1.0/24\"");
        let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let network: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        if prefix > 32 {
            return Err(format!("invalid subnet {text:?}: the prefix length must be at most 32"));
        }
        let subnet = Subnet { network, prefix };
        if subnet.network != Ipv4Addr::from(u32::from(network) & subnet.mask()) {
            return Err(format!(
                "invalid subnet {text:?}: host bits are set; use {}/{prefix}",
                Ipv4Addr::from(u32::from(network) & subnet.mask())
            ));
        }
        Ok(subnet)
    }

    /// Parses a segment or remote-access subnet: prefix 8 to 29, no host bits.
    pub fn parse_segment(text: &str) -> Result<Self, String> {
        let (network, prefix) = super::parse_subnet(text)?;
        Ok(Subnet { network, prefix })
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// Returns true when `address` lies in this subnet.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask() == u32::from(self.network)
    }

    /// Returns true when the two subnets share at least one address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// Returns the first host address, which the appliance takes as gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Returns the number of addresses left for services or peers: all but
    /// the network address, the gateway and the broadcast address.
    pub fn capacity(&self) -> u32 {
        (1u32 << (32 - u32::from(self.prefix))).saturating_sub(3)
    }

    /// Returns the allocatable address at `offset`, counted from the one
    /// after the gateway.
    fn host(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 2 + offset)
    }

    /// Returns true when `address` may be given to a service or peer.
    pub fn is_allocatable(&self, address: Ipv4Addr) -> bool {
        let value = u32::from(address);
        let first = u32::from(self.network) + 2;
        self.contains(address) && value >= first && value - first < self.capacity()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl TryFrom<String> for Subnet {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Subnet::parse_any(&text)
    }
}

impl From<Subnet> for String {
    fn from(subnet: Subnet) -> String {
        subnet.to_string()
    }
}

/// An address with the prefix length of its subnet, as `ip address add`
/// takes it (`192.168.1.10/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceAddress {
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl InterfaceAddress {
    /// Parses `ADDRESS/PREFIX`, host bits allowed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("invalid address {text:?}: use an IPv4 address with its prefix length, such as \"192.168.1.10/24\"");
        let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        if prefix > 32 {
            return Err(invalid());
        }
        Ok(Self { address, prefix })
    }

    /// Returns the subnet the address lies in.
    pub fn subnet(&self) -> Subnet {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
        Subnet {
            network: Ipv4Addr::from(u32::from(self.address) & mask),
            prefix: self.prefix,
        }
    }
}

impl fmt::Display for InterfaceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// 32-bit FNV-1a. Its output is fixed by its definition, unlike the standard
/// library's hasher, so addresses stay the same across Rust releases.
fn fnv1a(text: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Gives every name an address in `subnet`, keeping the fixed addresses in
/// `fixed` and hashing the rest (see the module documentation). Returns
/// `None` when the names do not fit.
pub fn allocate<'a>(
    subnet: &Subnet,
    names: impl IntoIterator<Item = &'a str>,
    fixed: &BTreeMap<&'a str, Ipv4Addr>,
) -> Option<BTreeMap<&'a str, Ipv4Addr>> {
    let capacity = subnet.capacity();
    let mut sorted: Vec<&str> = names.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() as u64 > u64::from(capacity) {
        return None;
    }

    let mut taken: std::collections::HashSet<Ipv4Addr> = fixed.values().copied().collect();
    let mut result = BTreeMap::new();
    for name in sorted {
        if let Some(address) = fixed.get(name) {
            result.insert(name, *address);
            continue;
        }
        let start = fnv1a(name) % capacity;
        let free = (0..capacity)
            .map(|step| subnet.host((start + step) % capacity))
            .find(|address| !taken.contains(address))?;
        taken.insert(free);
        result.insert(name, free);
    }
    Some(result)
}

/// Returns the name of the host end of a service's veth pair: `zs` and the service
/// address in hex, 10 characters, unique because addresses are.
pub fn host_link_name(address: Ipv4Addr) -> String {
    format!("zs{:08x}", u32::from(address))
}

/// Returns the temporary name of the service end, for appliers that create
/// both ends in the host namespace before moving one. It is renamed `eth0`
/// in the service's namespace.
pub fn peer_link_name(address: Ipv4Addr) -> String {
    format!("zp{:08x}", u32::from(address))
}
