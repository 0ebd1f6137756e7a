//! The OCI runtime spec (`config.json`) of one service.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder,
    Spec, SpecBuilder, UserBuilder,
};

use super::apparmor::profile_name;
use super::devices::DEVICE_GRANTS_ANNOTATION;
use super::policy::{container_path, parse_exceptions, Policy};
use super::resolve::{resolve_in_rootfs, RootfsTree};
use super::seccomp::default_profile;
use super::secrets::valid_secret_name;
use super::{RuntimeError, ServiceInput, SECRETS_TARGET};
use crate::config::Limits;

/// OCI runtime spec version written to `config.json`.
const OCI_VERSION: &str = "1.0.2";

/// `PATH` of every service unless the image sets its own.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `HOME` of every service unless the image sets its own: the user has no
/// home directory on a read-only root, and `/tmp` is always writable.
const DEFAULT_HOME: &str = "/tmp";

/// OOM score adjustment of every service process, so that under memory
/// pressure the kernel kills a service before ztms-init or its helpers.
const OOM_SCORE_ADJ: i32 = 500;

/// cgroup CPU period in microseconds; the quota is this times `cpus`.
const CPU_PERIOD_US: u64 = 100_000;

/// Masked paths: replaced by an empty file or directory, as runc and
/// Docker do, because they expose host kernel state or hardware.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Read-only paths of `/proc` that would let a process change the host kernel.
const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Default tmpfs mounts that every image gets.
const DEFAULT_TMPFS: &[&str] = &["/tmp", "/run"];

/// Default tmpfs mounts made only when the image has the path, because a
/// mount point cannot be created on the read-only root. Most images link
/// them to `/run` and `/tmp`; the resolver then merges the mounts.
const OPTIONAL_TMPFS: &[&str] = &["/var/run", "/var/tmp"];

/// Builds the OCI spec of `input.service` with the default policy and the
/// service's exceptions. `tree` is the service's image (its rootfs
/// directory at build time or boot); symlinks in mount targets are
/// resolved inside it.
///
/// Device grants are stored in the [`DEVICE_GRANTS_ANNOTATION`] annotation
/// and filled at boot by [`super::fill_device_grants`].
pub fn bundle_spec(input: &ServiceInput<'_>, tree: &dyn RootfsTree) -> Result<Spec, RuntimeError> {
    let service = input.service;
    let name = input.name();
    let oci_error = |source| RuntimeError::Oci {
        service: name.into(),
        source,
    };

    if service.command.is_empty() {
        return Err(RuntimeError::EmptyCommand { service: name.into() });
    }
    let (uid, gid) = parse_user(name, &service.user)?;
    check_limits(name, &service.limits)?;
    let policy = parse_exceptions(service)?;

    let capabilities: Vec<Capability> = policy.capabilities.iter().map(|grant| grant.capability).collect();
    let capability_set: Capabilities = capabilities.iter().copied().collect();
    let process_capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(capability_set.clone())
        .effective(capability_set.clone())
        .inheritable(capability_set.clone())
        .permitted(capability_set.clone())
        .ambient(capability_set)
        .build()
        .map_err(oci_error)?;

    // Additional groups come only from device grants, filled at boot.
    let user = UserBuilder::default()
        .uid(uid)
        .gid(gid)
        .additional_gids(Vec::<u32>::new())
        .build()
        .map_err(oci_error)?;

    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(service.limits.nofile)
        .hard(service.limits.nofile)
        .build()
        .map_err(oci_error)?;

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(service.command.clone())
        .env(environment(input, uid, gid))
        .cwd("/")
        .capabilities(process_capabilities)
        .rlimits(vec![nofile])
        .no_new_privileges(true)
        .apparmor_profile(profile_name(name))
        .oom_score_adj(OOM_SCORE_ADJ)
        .build()
        .map_err(oci_error)?;

    let root = RootBuilder::default()
        .path(input.rootfs.clone())
        .readonly(true)
        .build()
        .map_err(oci_error)?;

    let mut mounts = system_mounts(name)?;
    mounts.extend(service_mounts(input, tree, &policy, uid, gid)?);

    let linux = LinuxBuilder::default()
        .namespaces(namespaces(input, &policy).map_err(oci_error)?)
        .cgroups_path(input.cgroup.clone())
        .resources(resources(&service.limits).map_err(oci_error)?)
        .seccomp(default_profile(&capabilities))
        .masked_paths(MASKED_PATHS.iter().map(|path| path.to_string()).collect::<Vec<_>>())
        .readonly_paths(READONLY_PATHS.iter().map(|path| path.to_string()).collect::<Vec<_>>())
        .rootfs_propagation("rprivate")
        .build()
        .map_err(oci_error)?;

    let mut annotations = HashMap::new();
    if !policy.devices.is_empty() {
        let grants = serde_json::to_string(&policy.devices).map_err(|source| RuntimeError::Annotation {
            service: name.into(),
            source,
        })?;
        annotations.insert(DEVICE_GRANTS_ANNOTATION.to_string(), grants);
    }

    SpecBuilder::default()
        .version(OCI_VERSION)
        .root(root)
        .mounts(mounts)
        .process(process)
        .hostname(name)
        .annotations(annotations)
        .linux(linux)
        .build()
        .map_err(oci_error)
}

/// Returns the mount points that must exist in the image: the targets of
/// every tmpfs and bind mount that is not inside another tmpfs. crun cannot
/// create a missing one on the read-only root, so the builder creates them
/// in the rootfs before sealing it.
pub fn mount_points(spec: &Spec) -> Vec<PathBuf> {
    let Some(mounts) = spec.mounts() else { return Vec::new() };
    let service_mounts: Vec<&Mount> = mounts
        .iter()
        .filter(|mount| !is_system_target(mount.destination()))
        .collect();
    let tmpfs: Vec<&Path> = service_mounts
        .iter()
        .filter(|mount| mount.typ().as_deref() == Some("tmpfs"))
        .map(|mount| mount.destination().as_path())
        .collect();
    service_mounts
        .iter()
        .map(|mount| mount.destination())
        .filter(|target| !tmpfs.iter().any(|parent| target != parent && target.starts_with(parent)))
        .cloned()
        .collect()
}

fn parse_user(service: &str, text: &str) -> Result<(u32, u32), RuntimeError> {
    let invalid = || RuntimeError::InvalidUser {
        service: service.into(),
        user: text.into(),
    };
    let (uid, gid) = text.split_once(':').ok_or_else(invalid)?;
    Ok((uid.parse().map_err(|_| invalid())?, gid.parse().map_err(|_| invalid())?))
}

fn check_limits(service: &str, limits: &Limits) -> Result<(), RuntimeError> {
    let invalid = |key, value: String, fix| RuntimeError::InvalidLimit {
        service: service.into(),
        key,
        value,
        fix,
    };
    if limits.memory.bytes() < 4 << 20 {
        return Err(invalid("memory", limits.memory.to_string(), "use at least 4M"));
    }
    if !(limits.cpus.is_finite() && limits.cpus >= 0.01 && limits.cpus <= 1024.0) {
        return Err(invalid("cpus", limits.cpus.to_string(), "use a number of CPUs from 0.01 to 1024"));
    }
    if limits.pids == 0 {
        return Err(invalid("pids", limits.pids.to_string(), "use at least 1"));
    }
    // The kernel rejects an RLIMIT_NOFILE above fs.nr_open, 1048576 by default.
    if limits.nofile < 16 || limits.nofile > 1 << 20 {
        return Err(invalid("nofile", limits.nofile.to_string(), "use a value from 16 to 1048576"));
    }
    Ok(())
}

/// PATH, HOME and TZ, overridden by the image's own variables, then PUID
/// and PGID for images that switch user from them.
fn environment(input: &ServiceInput<'_>, uid: u32, gid: u32) -> Vec<String> {
    let mut variables: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), DEFAULT_HOME.into()),
        ("TZ".into(), input.timezone.clone()),
    ];
    let mut set = |key: &str, value: &str| match variables.iter_mut().find(|(existing, _)| existing == key) {
        Some(entry) => entry.1 = value.into(),
        None => variables.push((key.into(), value.into())),
    };
    for entry in &input.image_env {
        if let Some((key, value)) = entry.split_once('=') {
            set(key, value);
        }
    }
    if input.puid_pgid {
        set("PUID", &uid.to_string());
        set("PGID", &gid.to_string());
    }
    variables.into_iter().map(|(key, value)| format!("{key}={value}")).collect()
}

fn namespaces(input: &ServiceInput<'_>, policy: &Policy) -> Result<Vec<LinuxNamespace>, oci_spec::OciSpecError> {
    let mut namespaces = Vec::new();
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ] {
        if typ == LinuxNamespaceType::Pid && policy.host_pid.is_some() {
            continue;
        }
        namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
    }
    let mut network = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    if let Some(path) = &input.netns {
        network = network.path(path.clone());
    }
    namespaces.push(network.build()?);
    Ok(namespaces)
}

fn resources(limits: &Limits) -> Result<oci_spec::runtime::LinuxResources, oci_spec::OciSpecError> {
    let memory = limits.memory.bytes() as i64;
    let quota = (limits.cpus * CPU_PERIOD_US as f64).round() as i64;
    LinuxResourcesBuilder::default()
        // Deny every device; the runtime adds its standard nodes (null,
        // zero, random, tty, ...) and fill_device_grants adds the grants.
        .devices(vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?])
        // swap is memory plus swap, so equal values mean no swap.
        .memory(LinuxMemoryBuilder::default().limit(memory).swap(memory).build()?)
        .cpu(LinuxCpuBuilder::default().quota(quota).period(CPU_PERIOD_US).build()?)
        .pids(LinuxPidsBuilder::default().limit(limits.pids as i64).build()?)
        .build()
}

/// `/proc`, `/dev` and `/sys`, as runc and Docker mount them, but with
/// `/sys` read-only and no cgroup filesystem.
fn system_mounts(service: &str) -> Result<Vec<Mount>, RuntimeError> {
    let table: [(&str, &str, &str, &[&str]); 6] = [
        ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        ("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        ("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]),
        ("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        ("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        ("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
    ];
    table
        .iter()
        .map(|(target, typ, source, options)| mount(service, target, typ, source, options))
        .collect()
}

fn is_system_target(target: &Path) -> bool {
    ["/proc", "/dev", "/sys"].iter().any(|system| target.starts_with(system))
}

/// A planned tmpfs at a resolved path.
struct TmpfsPlan {
    exec: bool,
    /// `/tmp`-like: sticky and writable by everyone.
    shared: bool,
}

/// Plans the tmpfs, volume and secrets mounts, parents before children.
fn service_mounts(
    input: &ServiceInput<'_>,
    tree: &dyn RootfsTree,
    policy: &Policy,
    uid: u32,
    gid: u32,
) -> Result<Vec<Mount>, RuntimeError> {
    let name = input.name();
    let resolve = |path: &Path| {
        resolve_in_rootfs(tree, path).map_err(|error| RuntimeError::Resolve {
            service: name.into(),
            path: path.to_path_buf(),
            reason: error.to_string(),
        })
    };

    // Keyed by the resolved path, so /var/run -> /run gives one tmpfs.
    let mut tmpfs: BTreeMap<PathBuf, TmpfsPlan> = BTreeMap::new();
    for path in DEFAULT_TMPFS {
        let resolved = resolve(Path::new(path))?;
        tmpfs.entry(resolved.path).or_insert(TmpfsPlan {
            exec: false,
            shared: path.ends_with("tmp"),
        });
    }
    for path in OPTIONAL_TMPFS {
        let resolved = resolve(Path::new(path))?;
        if resolved.exists {
            tmpfs.entry(resolved.path).or_insert(TmpfsPlan {
                exec: false,
                shared: path.ends_with("tmp"),
            });
        }
    }
    for grant in &policy.tmpfs {
        let resolved = resolve(&grant.path)?;
        let plan = tmpfs.entry(resolved.path).or_insert(TmpfsPlan {
            exec: false,
            shared: false,
        });
        plan.exec |= grant.exec;
    }

    let mut planned: Vec<(PathBuf, String, Mount)> = Vec::new();
    for (target, plan) in &tmpfs {
        let mut options = vec!["nosuid", "nodev"];
        if !plan.exec {
            options.push("noexec");
        }
        let owner = format!("uid={uid}");
        let group = format!("gid={gid}");
        if plan.shared {
            options.push("mode=1777");
        } else {
            options.extend(["mode=0755", owner.as_str(), group.as_str()]);
        }
        let target_text = target.to_string_lossy();
        planned.push((target.clone(), format!("tmpfs {target_text}"), mount(name, &target_text, "tmpfs", "tmpfs", &options)?));
    }

    for volume in &input.service.volumes {
        let source = volume_source(name, &volume.source)?;
        let target = container_path(name, "volume target", &volume.target)?;
        let resolved = resolve(&target)?;
        let mut options = vec!["rbind", "rprivate", "nosuid", "nodev", "noexec"];
        if volume.read_only {
            options.push("ro");
        }
        let host = input.data_dir.join(&source);
        let label = format!("volume {}", volume.source);
        planned.push((resolved.path.clone(), label, bind(name, &resolved.path, &host, &options)?));
    }

    // One file bind per secret, so a container contains only the secrets
    // its service lists. The targets lie in the `/run` tmpfs, where crun creates the
    // mount points, and the sort below puts them after that tmpfs.
    if let Some(secrets) = &input.secrets {
        for secret in &input.service.secrets {
            if !valid_secret_name(secret) {
                return Err(RuntimeError::InvalidSecretName {
                    service: name.into(),
                    secret: secret.clone(),
                });
            }
            let resolved = resolve(&Path::new(SECRETS_TARGET).join(secret))?;
            let options = ["rbind", "rprivate", "nosuid", "nodev", "noexec", "ro"];
            let host = secrets.join(secret);
            let label = format!("secret {secret}");
            planned.push((resolved.path.clone(), label, bind(name, &resolved.path, &host, &options)?));
        }
    }

    // The target is usually a file of the read-only root, which the
    // builder creates when the image lacks it.
    if let Some(host) = &input.resolv_conf {
        let resolved = resolve(Path::new(crate::net::resolv::RESOLV_TARGET))?;
        let options = ["rbind", "rprivate", "nosuid", "nodev", "noexec", "ro"];
        planned.push((resolved.path.clone(), "resolver file".into(), bind(name, &resolved.path, host, &options)?));
    }

    for (index, (target, label, _)) in planned.iter().enumerate() {
        if let Some((_, other, _)) = planned[..index].iter().find(|(earlier, _, _)| earlier == target) {
            return Err(RuntimeError::MountConflict {
                service: name.into(),
                first: other.clone(),
                second: label.clone(),
                target: target.clone(),
            });
        }
    }

    // A parent directory's mount must come before its children's, or it
    // would hide them.
    planned.sort_by_key(|(target, _, _)| target.components().count());
    Ok(planned.into_iter().map(|(_, _, mount)| mount).collect())
}

/// Checks that a volume source stays inside the data directory.
fn volume_source(service: &str, source: &str) -> Result<PathBuf, RuntimeError> {
    let path = Path::new(source);
    let inside = !source.is_empty()
        && path
            .components()
            .all(|component| matches!(component, std::path::Component::Normal(_)));
    if !inside {
        return Err(RuntimeError::InvalidVolumeSource {
            service: service.into(),
            volume: source.into(),
        });
    }
    Ok(path.to_path_buf())
}

fn mount(service: &str, target: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, RuntimeError> {
    MountBuilder::default()
        .destination(target)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|option| option.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|source| RuntimeError::Oci {
            service: service.into(),
            source,
        })
}

fn bind(service: &str, target: &Path, host: &Path, options: &[&str]) -> Result<Mount, RuntimeError> {
    MountBuilder::default()
        .destination(target)
        .typ("bind")
        .source(host)
        .options(options.iter().map(|option| option.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|source| RuntimeError::Oci {
            service: service.into(),
            source,
        })
}
