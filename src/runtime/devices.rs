//! Device grants: planned by path, filled with device numbers at boot.
//!
//! The builder cannot know the major and minor numbers, owner group or
//! even the existence of the appliance's device nodes, so [`super::bundle_spec`]
//! stores the grants in a spec annotation and the cgroup denies every device.
//! At boot, ztms-init calls [`fill_device_grants`] with [`DeviceNode::stat`]
//! to create the nodes in the container, allow them in the cgroup and add
//! each node's group to the process.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, Spec};
use serde::{Deserialize, Serialize};

use super::RuntimeError;

/// Spec annotation that stores the device grants as a JSON list.
pub const DEVICE_GRANTS_ANNOTATION: &str = "org.ztms.device-grants";

/// A device node that a service may open, from a `device:PATH` exception.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGrant {
    /// Path of the node, the same on the host and in the container.
    pub path: PathBuf,
    pub reason: String,
}

/// Character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// A device node as the running appliance has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNode {
    pub kind: DeviceKind,
    pub major: u64,
    pub minor: u64,
    /// Permission bits of the node.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl DeviceNode {
    /// Reads the node at `path`, following symlinks such as
    /// `/dev/dri/by-path/...`. Fails with `InvalidInput` when the path is
    /// not a character or block device.
    pub fn stat(path: &Path) -> io::Result<DeviceNode> {
        let metadata = std::fs::metadata(path)?;
        let file_type = metadata.file_type();
        let kind = if file_type.is_char_device() {
            DeviceKind::Char
        } else if file_type.is_block_device() {
            DeviceKind::Block
        } else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a device node"));
        };
        let rdev = metadata.rdev();
        Ok(DeviceNode {
            kind,
            major: nix::sys::stat::major(rdev),
            minor: nix::sys::stat::minor(rdev),
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
        })
    }
}

/// Reads the device grants that [`super::bundle_spec`] stored in `spec`.
pub fn device_grants(spec: &Spec, service: &str) -> Result<Vec<DeviceGrant>, RuntimeError> {
    let Some(text) = spec.annotations().as_ref().and_then(|map| map.get(DEVICE_GRANTS_ANNOTATION)) else {
        return Ok(Vec::new());
    };
    serde_json::from_str(text).map_err(|source| RuntimeError::Annotation {
        service: service.into(),
        source,
    })
}

/// Fills the device grants of `spec` with the nodes that `stat` returns
/// (use [`DeviceNode::stat`] at boot): each node is created in the
/// container with its host mode and owner, allowed `rwm` in the cgroup
/// after the deny-all rule, and its group added to the process's
/// additional groups unless it is the primary group.
pub fn fill_device_grants(
    spec: &mut Spec,
    service: &str,
    stat: impl Fn(&Path) -> io::Result<DeviceNode>,
) -> Result<(), RuntimeError> {
    let grants = device_grants(spec, service)?;
    if grants.is_empty() {
        return Ok(());
    }

    let mut nodes = Vec::new();
    for grant in &grants {
        let node = stat(&grant.path).map_err(|error| RuntimeError::Device {
            service: service.into(),
            path: grant.path.clone(),
            reason: error.to_string(),
        })?;
        nodes.push((grant, node));
    }

    let mut devices = Vec::new();
    let mut rules = Vec::new();
    let mut groups = Vec::new();
    for (grant, node) in &nodes {
        let typ = match node.kind {
            DeviceKind::Char => LinuxDeviceType::C,
            DeviceKind::Block => LinuxDeviceType::B,
        };
        let mut device = LinuxDevice::default();
        device.set_path(grant.path.clone());
        device.set_typ(typ);
        device.set_major(node.major as i64);
        device.set_minor(node.minor as i64);
        device.set_file_mode(Some(node.mode));
        device.set_uid(Some(node.uid));
        device.set_gid(Some(node.gid));
        devices.push(device);

        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true);
        rule.set_typ(Some(typ));
        rule.set_major(Some(node.major as i64));
        rule.set_minor(Some(node.minor as i64));
        rule.set_access(Some("rwm".into()));
        rules.push(rule);

        groups.push(node.gid);
    }

    if let Some(linux) = spec.linux_mut() {
        linux.devices_mut().get_or_insert_with(Vec::new).extend(devices);
        if let Some(resources) = linux.resources_mut() {
            resources.devices_mut().get_or_insert_with(Vec::new).extend(rules);
        }
    }
    if let Some(process) = spec.process_mut() {
        let user = process.user_mut();
        let primary = user.gid();
        let additional = user.additional_gids_mut().get_or_insert_with(Vec::new);
        for gid in groups {
            if gid != primary && !additional.contains(&gid) {
                additional.push(gid);
            }
        }
    }
    Ok(())
}
