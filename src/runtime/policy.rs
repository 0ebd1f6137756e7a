//! Exceptions to the default container policy, parsed from a service's
//! `exceptions` and checked: each has a reason and a valid value.

use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::Capability;

use super::devices::DeviceGrant;
use super::RuntimeError;
use crate::config::Service;

/// The exceptions of one service, grouped by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Capabilities added to all five capability sets.
    pub capabilities: Vec<CapabilityGrant>,
    /// Device nodes allowed in the cgroup and created in the container.
    pub devices: Vec<DeviceGrant>,
    /// Writable tmpfs mounts beyond the default `/tmp` and `/run`, or a
    /// default one that allows execution.
    pub tmpfs: Vec<TmpfsGrant>,
    /// Reason of a `namespace:host-pid` exception: the service shares the
    /// appliance's PID namespace and can see and signal its processes.
    pub host_pid: Option<String>,
}

/// A capability granted by a `cap:NAME` exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityGrant {
    pub capability: Capability,
    pub reason: String,
}

/// A tmpfs granted by a `writable:PATH` or `exec-tmpfs:PATH` exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsGrant {
    /// Path in the container, before symlinks in the image are resolved.
    pub path: PathBuf,
    /// Programs on it may be executed (`exec-tmpfs`).
    pub exec: bool,
    pub reason: String,
}

/// Parses and checks the exceptions of `service`.
///
/// A `device:` path is only checked to be under `/dev` here, because the
/// builder cannot see the appliance's devices. Whether it is a device node
/// is checked at boot by [`super::fill_device_grants`].
pub fn parse_exceptions(service: &Service) -> Result<Policy, RuntimeError> {
    let name = service.name.get_ref();
    let mut policy = Policy::default();

    for exception in &service.exceptions {
        let allow = exception.allow.as_str();
        let reason = exception.reason.trim();
        if reason.is_empty() {
            return Err(RuntimeError::MissingReason {
                service: name.clone(),
                allow: allow.into(),
            });
        }

        let invalid = || RuntimeError::InvalidException {
            service: name.clone(),
            allow: allow.into(),
        };
        let (kind, value) = allow.split_once(':').ok_or_else(invalid)?;
        match kind {
            "cap" => {
                let capability = parse_capability(value).ok_or_else(|| RuntimeError::UnknownCapability {
                    service: name.clone(),
                    name: value.into(),
                    allow: allow.into(),
                })?;
                if !policy.capabilities.iter().any(|grant| grant.capability == capability) {
                    policy.capabilities.push(CapabilityGrant {
                        capability,
                        reason: reason.into(),
                    });
                }
            }
            "device" => {
                let path = container_path(name, "device grant", value)?;
                if !path.starts_with("/dev") || path == Path::new("/dev") {
                    return Err(RuntimeError::DeviceOutsideDev {
                        service: name.clone(),
                        path: value.into(),
                    });
                }
                policy.devices.push(DeviceGrant {
                    path,
                    reason: reason.into(),
                });
            }
            "exec-tmpfs" | "writable" => {
                let path = container_path(name, "tmpfs exception", value)?;
                policy.tmpfs.push(TmpfsGrant {
                    path,
                    exec: kind == "exec-tmpfs",
                    reason: reason.into(),
                });
            }
            "namespace" if value == "host-pid" => policy.host_pid = Some(reason.into()),
            _ => return Err(invalid()),
        }
    }
    Ok(policy)
}

/// Parses a Linux capability name, with or without the `CAP_` prefix and
/// in any case. Returns `None` for a name that capabilities(7) does not list.
pub fn parse_capability(name: &str) -> Option<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare.is_empty() {
        return None;
    }
    Capability::from_str(bare).ok()
}

/// Checks that `value` is an absolute path without `.` or `..` and returns it.
pub(super) fn container_path(service: &str, what: &'static str, value: &str) -> Result<PathBuf, RuntimeError> {
    let path = Path::new(value);
    let plain = path.is_absolute()
        && path
            .components()
            .all(|component| matches!(component, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(RuntimeError::InvalidPath {
            service: service.into(),
            what,
            path: value.into(),
        });
    }
    Ok(path.components().collect())
}
