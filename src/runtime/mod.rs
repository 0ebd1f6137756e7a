//! The planning half of the hardened service runtime: the OCI `config.json`
//! of each service and the CIS Docker Benchmark audit of those specs.
//!
//! [`bundle_spec`] turns a service of the definition, plus the paths the
//! appliance plan decides (rootfs, network namespace, cgroup, data and
//! secrets), into an [`oci_spec::runtime::Spec`] with the default policy:
//! read-only root, tmpfs `/tmp` and `/run`, an unprivileged user, no
//! capabilities, `no_new_privileges`, a seccomp allowlist, an AppArmor
//! profile ([`profile_text`]), masked kernel paths, cgroup limits and no
//! host namespaces. Each exception comes from
//! the service's `exceptions`, which carry a reason.
//!
//! Nothing here touches the kernel. Two parts read the filesystem because
//! they must: [`RootfsDir`] reads symlinks inside an image directory, and
//! [`DeviceNode::stat`] reads a device node at boot so that
//! [`fill_device_grants`] can write its numbers into the spec. ztms-init
//! writes the bundle and runs crun.

mod apparmor;
mod audit;
mod devices;
mod policy;
mod resolve;
mod seccomp;
mod secrets;
mod spec;

#[cfg(test)]
mod crun_tests;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use apparmor::{profile_name, profile_text, PROFILE_FILE, PROFILE_PREFIX};
pub use audit::{audit, audit_definition, AppArmorFacts, render_table, AuditInput, AuditRow, Outcome, RestartFacts, ServiceFacts};
pub use devices::{fill_device_grants, DeviceGrant, DeviceKind, DeviceNode, DEVICE_GRANTS_ANNOTATION};
pub use policy::{parse_capability, parse_exceptions, CapabilityGrant, Policy, TmpfsGrant};
pub use resolve::{resolve_in_rootfs, Entry, NoImage, Resolved, RootfsDir, RootfsTree};
pub use seccomp::{default_profile, DENIED_SYSCALLS, ENOSYS, EPERM};
pub use secrets::{plan_secrets, secret_path, valid_secret_name, SecretPlan, SecretsError, SECRET_MODE};
pub use spec::{bundle_spec, mount_points};

use crate::config::Service;

/// Directory of the root image with the rootfs of each OCI-imported image.
pub const SERVICES_DIR: &str = "/usr/lib/ztms/services";
/// Directory of the root image with each service's `config.json`, one
/// directory per service. ztms-init copies it to `/run` at boot.
pub const BUNDLES_DIR: &str = "/usr/lib/ztms/bundles";
/// Directory of the named network namespaces, one per service.
pub const NETNS_DIR: &str = "/run/netns";
/// Parent cgroup of every service, relative to the cgroup root.
pub const CGROUP_PARENT: &str = "/ztms";
/// Data filesystem that volumes are bound from.
pub const DATA_DIR: &str = "/data";
/// Directory on the data filesystem with one file per secret.
pub const SECRETS_DIR: &str = "/data/secrets";
/// Directory inside a container where each of its secrets is bound
/// read-only as a file of the same name.
pub const SECRETS_TARGET: &str = "/run/secrets";

/// One service and the facts of the appliance plan that its spec needs.
#[derive(Debug, Clone)]
pub struct ServiceInput<'a> {
    /// The service as the definition declares it.
    pub service: &'a Service,
    /// Root directory of the container inside the appliance's root image:
    /// `/` for services installed from Debian packages.
    pub rootfs: PathBuf,
    /// Network namespace to join, such as `/run/netns/<name>`. `None`
    /// creates a new, empty network namespace.
    pub netns: Option<PathBuf>,
    /// cgroup of the container, relative to the cgroup root.
    pub cgroup: PathBuf,
    /// Host directory that volume sources are relative to.
    pub data_dir: PathBuf,
    /// Host directory with one file per secret. Each name in the
    /// service's `secrets` is bound read-only from here to
    /// `/run/secrets/<name>`. `None` binds no secret.
    pub secrets: Option<PathBuf>,
    /// Resolver file on the appliance that is bound read-only at
    /// `/etc/resolv.conf` in the container (see [`crate::net::resolv`]).
    /// `None` leaves the image's own file.
    pub resolv_conf: Option<PathBuf>,
    /// `KEY=value` entries of the image's own configuration (OCI images);
    /// they override the default PATH, HOME and TZ.
    pub image_env: Vec<String>,
    /// Set `PUID` and `PGID` to the service's user, as linuxserver.io
    /// images read them.
    pub puid_pgid: bool,
    /// Value of `TZ`.
    pub timezone: String,
}

impl<'a> ServiceInput<'a> {
    /// Builds the input with the appliance's standard layout: the rootfs
    /// under [`SERVICES_DIR`] for OCI images and `/` otherwise, the
    /// namespace under [`NETNS_DIR`], the cgroup under [`CGROUP_PARENT`],
    /// the secret files in [`SECRETS_DIR`] and the resolver file under
    /// [`crate::net::resolv::RESOLV_DIR`].
    pub fn new(service: &'a Service) -> Self {
        let name = service.name.get_ref();
        let rootfs = if service.oci.is_some() {
            Path::new(SERVICES_DIR).join(name).join("rootfs")
        } else {
            PathBuf::from("/")
        };
        Self {
            service,
            rootfs,
            netns: Some(Path::new(NETNS_DIR).join(name)),
            cgroup: Path::new(CGROUP_PARENT).join(name),
            data_dir: PathBuf::from(DATA_DIR),
            secrets: Some(PathBuf::from(SECRETS_DIR)),
            resolv_conf: Some(crate::net::resolv::resolv_conf_path(name)),
            image_env: Vec::new(),
            puid_pgid: false,
            timezone: "UTC".into(),
        }
    }

    /// Returns the service name.
    pub fn name(&self) -> &str {
        self.service.name.get_ref()
    }
}

/// A service whose definition does not give a safe, runnable spec, or a
/// device grant that cannot be filled at boot.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// An exception without a reason.
    #[error("service {service:?}: exception {allow:?} has no reason; say why the service needs it in reason = \"...\"")]
    MissingReason { service: String, allow: String },
    /// An exception of an unknown kind.
    #[error("service {service:?}: invalid exception {allow:?}; use cap:NAME, device:PATH, exec-tmpfs:PATH, writable:PATH or namespace:host-pid")]
    InvalidException { service: String, allow: String },
    /// A `cap:` exception that names no Linux capability.
    #[error("service {service:?}: unknown capability {name:?} in exception {allow:?}; use a name from capabilities(7) such as NET_BIND_SERVICE")]
    UnknownCapability { service: String, name: String, allow: String },
    /// A `device:` exception outside `/dev`.
    #[error("service {service:?}: device grant {path:?} is not under /dev; name a device node such as /dev/dri/renderD128")]
    DeviceOutsideDev { service: String, path: String },
    /// A container path that is relative or climbs with `..`.
    #[error("service {service:?}: {what} {path:?} is invalid; use an absolute path without `..`")]
    InvalidPath { service: String, what: &'static str, path: String },
    /// A volume source that leaves the data directory.
    #[error("service {service:?}: volume source {volume:?} is invalid; use a path relative to /data without `..`, for example \"config/{service}\"")]
    InvalidVolumeSource { service: String, volume: String },
    /// Two mounts at the same place in the container.
    #[error("service {service:?}: {first} and {second} both mount at {target}; give each volume its own target")]
    MountConflict { service: String, first: String, second: String, target: PathBuf },
    /// A secret name that is not one plain file name.
    #[error("service {service:?}: invalid secret name {secret:?}; use 1 to 63 lowercase letters, digits and '-', starting with a letter")]
    InvalidSecretName { service: String, secret: String },
    /// A `user` that is not `UID:GID`.
    #[error("service {service:?}: invalid user {user:?}; use UID:GID, for example \"1000:1000\"")]
    InvalidUser { service: String, user: String },
    /// A service without a program.
    #[error("service {service:?}: command is empty; set command = [\"/usr/bin/program\", ...]")]
    EmptyCommand { service: String },
    /// A limit outside the range the kernel accepts or a service can run in.
    #[error("service {service:?}: limits.{key} = {value} is invalid; {fix}")]
    InvalidLimit { service: String, key: &'static str, value: String, fix: &'static str },
    /// A path inside the image whose symlinks cannot be followed.
    #[error("service {service:?}: resolving {path} inside the image failed: {reason}")]
    Resolve { service: String, path: PathBuf, reason: String },
    /// oci-spec rejected a value (a builder without a required field).
    #[error("service {service:?}: building the OCI spec failed: {source}")]
    Oci { service: String, source: oci_spec::OciSpecError },
    /// A device grant that is not a device node on this machine.
    #[error("service {service:?}: device grant {path}: {reason}; check that the driver is loaded and the path names a character or block device")]
    Device { service: String, path: PathBuf, reason: String },
    /// The device grants annotation of a spec is not valid JSON.
    #[error("service {service:?}: invalid {DEVICE_GRANTS_ANNOTATION} annotation: {source}; regenerate the spec with bundle_spec")]
    Annotation { service: String, source: serde_json::Error },
}
