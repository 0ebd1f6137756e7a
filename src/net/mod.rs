//! Zero-trust networking, planning half: addresses, links and routes
//! ([`plan`]), the nftables ruleset ([`nftables`]) and the WireGuard devices
//! ([`wireguard`]). Everything here is pure, and ztms-init applies the result.

pub mod address;
pub mod nftables;
pub mod plan;
pub mod wireguard;

use std::net::Ipv4Addr;

pub use plan::{NetworkPlan, PlanError};

/// Parses an IPv4 subnet in CIDR notation into its network address and
/// prefix length, rejecting host bits and prefixes too long for services.
pub fn parse_subnet(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let invalid = || format!("invalid subnet {text:?}: use IPv4 CIDR notation such as \"10.80.1.0/24\"");
    let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
    let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
    let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
    if !(8..=29).contains(&prefix) {
        return Err(format!(
            "invalid subnet {text:?}: the prefix length must be between 8 and 29"
        ));
    }
    let mask = u32::MAX << (32 - prefix);
    if u32::from(address) & !mask != 0 {
        return Err(format!(
            "invalid subnet {text:?}: host bits are set; use {}/{prefix}",
            Ipv4Addr::from(u32::from(address) & mask)
        ));
    }
    Ok((address, prefix))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod subnet_tests {
    use super::*;

    #[test]
    fn subnet_parses_cidr() {
        assert_eq!(parse_subnet("10.80.1.0/24").unwrap(), (Ipv4Addr::new(10, 80, 1, 0), 24));
    }

    #[test]
    fn subnet_rejects_host_bits() {
        let error = parse_subnet("10.80.1.5/24").unwrap_err();
        assert!(error.contains("10.80.1.0/24"), "{error}");
    }
}
