//! Zero-trust networking, planning half: addresses, links and routes
//! ([`plan`]), the nftables ruleset ([`nftables`]), the WireGuard devices
//! ([`wireguard`]) and each service's resolver file ([`resolv`]).
//! Everything here is pure, and ztms-init applies the result.

pub mod address;
pub mod hosts;
pub mod nftables;
pub mod plan;
pub mod resolv;
pub mod wireguard;

use std::net::Ipv4Addr;

pub use plan::{NetworkPlan, PlanError};

/// Path of the network file in the root filesystem, written by `ztms build`
/// and applied by ztms-init's network phase.
pub const NETWORK_PATH: &str = "/etc/ztms/network.json";

/// Path of the script that busybox `udhcpc` runs on a lease.
pub const UDHCPC_SCRIPT_PATH: &str = "/usr/lib/ztms/udhcpc-lease";

/// The `udhcpc` script: it configures nothing and prints the lease as one
/// line, `ztms-lease ADDRESS PREFIX ROUTER DNS...` (the first router and
/// every DNS server), for ztms-init to apply and log. A lease without a
/// router prints nothing, which ztms-init reports as an unusable lease. `/run` is mounted noexec, so the builder installs it in the
/// image.
pub const UDHCPC_SCRIPT: &str = "#!/bin/sh\n\
case \"$1\" in\n\
bound|renew) set -- $router; [ -n \"$1\" ] && echo \"ztms-lease $ip ${mask:-32} $1 $dns\" ;;\n\
esac\n\
exit 0\n";

/// The contents of [`NETWORK_PATH`]: the plan and the test-only switches.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceNetwork {
    pub plan: NetworkPlan,
    /// Serve `probe` requests on the status API (definition `[debug] probe`).
    pub probe: bool,
}

impl ApplianceNetwork {
    /// Computes the network file of `definition`.
    pub fn from_definition(definition: &crate::config::Definition) -> Result<Self, PlanError> {
        Ok(Self {
            plan: NetworkPlan::from_definition(definition)?,
            probe: definition.debug.probe,
        })
    }
}

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
