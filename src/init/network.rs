//! The network phase: the loopback interface now; later the uplink, one
//! bridge per segment, a network namespace per service, the nftables
//! ruleset and WireGuard.
//!
//! NOTE: only loopback is configured in this build. Services share
//! ztms-init's network namespace and health checks go to 127.0.0.1 until
//! this phase gives each service its own address.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::plan::AppliancePlan;

/// Brings up the networks of `plan`.
pub fn run(plan: &AppliancePlan) -> Result<(), String> {
    set_up("lo").map_err(|error| format!("bringing up the loopback interface lo failed: {error}"))?;
    log::info!("loopback interface lo is up");
    log::info!(
        "network: segments are not configured in this build; {} services share the loopback network",
        plan.services.len()
    );
    Ok(())
}

/// Sets IFF_UP on the interface `name`, as `ip link set <name> up` does.
fn set_up(name: &str) -> io::Result<()> {
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: ifreq is a C struct of integers, arrays and a union of those;
    // all zero bytes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }

    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags inside
    // `request`, which lives across the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads `request`, which lives across the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
