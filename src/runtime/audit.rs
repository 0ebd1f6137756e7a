//! `ztms audit`: the items of the CIS Docker Benchmark (v1.6.0, section 4
//! and 5, "Container Images" and "Container Runtime") that apply to a
//! crun spec, checked on the generated specs themselves.
//!
//! Each check reads the [`Spec`] that ztms-init will run, plus the facts
//! that a spec does not carry: health check, restart policy and exception
//! reasons, from the definition (`ztms audit FILE`) or from the appliance
//! plan (the `audit` request of the status API). A spec weakened by hand
//! or by a bug therefore fails the item it breaks. Items that need Docker (daemon flags, image
//! registries, `docker exec`) or SELinux (5.2, which ztms does not use)
//! are not listed. Item 5.1 (AppArmor) checks the profile the spec names
//! and, on the appliance, that the kernel has it loaded in enforce mode.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use oci_spec::runtime::{Capability, LinuxNamespaceType, LinuxSeccompAction, Spec};
use serde::{Deserialize, Serialize};

use super::apparmor::profile_name;
use super::devices::device_grants;
use super::policy::parse_capability;
use super::resolve::NoImage;
use super::spec::bundle_spec;
use super::{RuntimeError, ServiceInput, DATA_DIR, SECRETS_DIR, SECRETS_TARGET};
use crate::config::{Definition, Exception, Service};
use crate::init::{HealthPlan, ServicePlan};

/// Capabilities that give a process the host, as `--privileged` would.
const PRIVILEGED_CAPABILITIES: &[Capability] = &[
    Capability::SysAdmin,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysPtrace,
    Capability::SysBoot,
    Capability::DacReadSearch,
    Capability::MacAdmin,
    Capability::MacOverride,
    Capability::Bpf,
];

/// File names of container and init control sockets. Mounting one gives
/// the service control of other services.
const CONTROL_SOCKETS: &[&str] = &["docker.sock", "containerd.sock", "podman.sock", "crio.sock", "status.sock"];

/// Host directories under which control sockets and runtime state live.
const CONTROL_DIRS: &[&str] = &["/run/ztms", "/run/crun", "/run/docker", "/run/containerd", "/var/run"];

/// One service to audit.
#[derive(Debug, Clone, Copy)]
pub struct AuditInput<'a> {
    pub service: ServiceFacts<'a>,
    /// The spec ztms-init runs for the service.
    pub spec: &'a Spec,
    pub restart: RestartFacts,
    /// The AppArmor profiles the appliance's kernel has loaded; `None` in
    /// an audit of a definition, which checks only the spec.
    pub apparmor: Option<&'a AppArmorFacts>,
}

/// AppArmor as the appliance's kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppArmorFacts {
    /// True when the kernel runs AppArmor.
    pub enabled: bool,
    /// Loaded profiles and their modes (`enforce`, `complain`, ...).
    pub profiles: BTreeMap<String, String>,
}

/// Facts of a service that its spec does not carry.
#[derive(Debug, Clone, Copy)]
pub struct ServiceFacts<'a> {
    pub name: &'a str,
    /// True when the service has a health check.
    pub health_check: bool,
    /// Exceptions to the default policy, each with its reason.
    pub exceptions: &'a [Exception],
}

impl<'a> From<&'a Service> for ServiceFacts<'a> {
    fn from(service: &'a Service) -> Self {
        Self {
            name: service.name.get_ref(),
            health_check: service.health.is_some(),
            exceptions: &service.exceptions,
        }
    }
}

impl<'a> From<&'a ServicePlan> for ServiceFacts<'a> {
    fn from(service: &'a ServicePlan) -> Self {
        Self {
            name: &service.name,
            health_check: service.health != HealthPlan::None,
            exceptions: &service.exceptions,
        }
    }
}

/// Restart behaviour of the supervisor for a service that exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartFacts {
    /// Restarts after which the service stays down, if any.
    pub max_restarts: Option<u32>,
    /// Maximum delay between two restarts.
    pub max_delay: Duration,
}

impl RestartFacts {
    /// Returns the facts of ztms-init's supervisor: unlimited restarts with
    /// an exponential delay capped at [`crate::init::backoff::MAX`].
    pub fn supervisor() -> Self {
        Self {
            max_restarts: None,
            max_delay: crate::init::backoff::MAX,
        }
    }
}

/// Result of one item for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
}

/// One line of the audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    /// CIS Docker Benchmark item, such as `5.12`.
    pub item: String,
    pub title: String,
    pub service: String,
    pub outcome: Outcome,
    /// The spec's value on a pass, or the problem and the fix on a
    /// failure.
    pub detail: String,
    /// On a failure, the fix alone: the part of `detail` after its last
    /// `"; "`, because every failure detail is written as `problem; fix`.
    #[serde(default)]
    pub fix: Option<String>,
    /// Exceptions of the definition that this item allows, as
    /// `allow: reason`.
    pub exceptions: Vec<String>,
}

/// Audits each service's spec; one row per item and service.
pub fn audit(inputs: &[AuditInput<'_>]) -> Vec<AuditRow> {
    let mut rows = Vec::new();
    for input in inputs {
        audit_service(input, &mut rows);
    }
    rows
}

/// Builds every service's spec the way the plan does and audits them,
/// without the images: symlinks inside images are not followed, which
/// changes no item.
pub fn audit_definition(definition: &Definition) -> Result<Vec<AuditRow>, RuntimeError> {
    let mut specs = Vec::new();
    for service in &definition.services {
        specs.push(bundle_spec(&ServiceInput::new(service), &NoImage)?);
    }
    let inputs: Vec<AuditInput<'_>> = definition
        .services
        .iter()
        .zip(&specs)
        .map(|(service, spec)| AuditInput {
            service: service.into(),
            spec,
            restart: RestartFacts::supervisor(),
            apparmor: None,
        })
        .collect();
    Ok(audit(&inputs))
}

/// Renders rows as an aligned text table, with a failure count at the end.
pub fn render_table(rows: &[AuditRow]) -> String {
    let header = ["ITEM", "SERVICE", "RESULT", "TITLE", "DETAIL"];
    let lines: Vec<[String; 5]> = rows
        .iter()
        .map(|row| {
            let mut detail = row.detail.clone();
            for exception in &row.exceptions {
                detail.push_str(&format!("; exception {exception}"));
            }
            [
                row.item.clone(),
                row.service.clone(),
                match row.outcome {
                    Outcome::Pass => "pass".to_string(),
                    Outcome::Fail => "FAIL".to_string(),
                },
                row.title.clone(),
                detail,
            ]
        })
        .collect();

    let mut widths = header.map(str::len);
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let mut table = String::new();
    let mut write_line = |cells: [&str; 5]| {
        let mut text = String::new();
        for (index, cell) in cells.iter().enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[index]);
            }
        }
        table.push_str(text.trim_end());
        table.push('\n');
    };
    write_line(header);
    for line in &lines {
        write_line([&line[0], &line[1], &line[2], &line[3], &line[4]]);
    }

    let failed = rows.iter().filter(|row| row.outcome == Outcome::Fail).count();
    let _ = writeln!(table, "{} checks, {failed} failed", rows.len());
    table
}

fn audit_service(input: &AuditInput<'_>, rows: &mut Vec<AuditRow>) {
    let service = input.service.name.to_string();
    let spec = input.spec;
    let linux = spec.linux().as_ref();
    let process = spec.process().as_ref();
    let resources = linux.and_then(|linux| linux.resources().as_ref());
    let mounts = spec.mounts().as_deref().unwrap_or(&[]);

    let mut row = |item: &str, title: &str, passed: bool, detail: String, exceptions: Vec<String>| {
        rows.push(AuditRow {
            item: item.to_string(),
            title: title.to_string(),
            service: service.clone(),
            outcome: if passed { Outcome::Pass } else { Outcome::Fail },
            fix: if passed { None } else { fix_of(&detail) },
            detail,
            exceptions,
        });
    };

    // 4.1: a user other than root.
    let uid = process.map(|process| process.user().uid());
    row(
        "4.1",
        "Run as a non-root user",
        matches!(uid, Some(uid) if uid != 0),
        match uid {
            Some(0) => "runs as uid 0; set user = \"1000:1000\" or another unprivileged UID:GID".into(),
            Some(uid) => format!("runs as uid {uid}"),
            None => "the spec has no process; regenerate it with bundle_spec".into(),
        },
        Vec::new(),
    );

    // 5.1: an AppArmor profile of the service's own, in force.
    let (passed, detail) = apparmor_check(input);
    row("5.1", "Enable an AppArmor profile", passed, detail, Vec::new());

    // 5.3: every capability named by an exception.
    let capability_exceptions: Vec<(Capability, String)> = input
        .service
        .exceptions
        .iter()
        .filter_map(|exception| {
            let name = exception.allow.strip_prefix("cap:")?;
            Some((parse_capability(name)?, format!("{}: {}", exception.allow, exception.reason)))
        })
        .collect();
    let held = held_capabilities(spec);
    let unexplained: Vec<String> = held
        .iter()
        .filter(|capability| !capability_exceptions.iter().any(|(granted, _)| granted == *capability))
        .map(|capability| capability.to_string())
        .collect();
    row(
        "5.3",
        "Restrict Linux kernel capabilities",
        unexplained.is_empty(),
        if unexplained.is_empty() {
            format!("{} capabilities held", held.len())
        } else {
            format!(
                "holds {} without an exception; remove them or add cap:NAME exceptions with a reason",
                unexplained.join(", ")
            )
        },
        capability_exceptions.iter().map(|(_, text)| text.clone()).collect(),
    );

    // 5.4: nothing that amounts to --privileged.
    let privileged: Vec<String> = held
        .iter()
        .filter(|capability| PRIVILEGED_CAPABILITIES.contains(capability))
        .map(|capability| capability.to_string())
        .collect();
    let all_devices = resources
        .and_then(|resources| resources.devices().as_ref())
        .is_some_and(|rules| {
            rules
                .iter()
                .any(|rule| rule.allow() && rule.major().is_none() && rule.minor().is_none())
        });
    let mut privileged_detail = Vec::new();
    if !privileged.is_empty() {
        privileged_detail.push(format!("holds {}", privileged.join(", ")));
    }
    if all_devices {
        privileged_detail.push("the device cgroup allows every device".to_string());
    }
    row(
        "5.4",
        "Do not use privileged containers",
        privileged_detail.is_empty(),
        if privileged_detail.is_empty() {
            "no host-level capability, device cgroup denies by default".into()
        } else {
            format!("{}; drop them and grant single devices with device:PATH", privileged_detail.join(" and "))
        },
        Vec::new(),
    );

    // 5.5: bind mounts only from the data filesystem, and the service's
    // read-only resolver file.
    let sensitive: Vec<String> = mounts
        .iter()
        .filter(|mount| is_bind(mount))
        .filter(|mount| !is_resolver_file(mount))
        .filter_map(|mount| mount.source().as_ref())
        .filter(|source| !source.starts_with(DATA_DIR) || *source == Path::new(DATA_DIR))
        .map(|source| source.display().to_string())
        .collect();
    row(
        "5.5",
        "Do not mount sensitive host system directories",
        sensitive.is_empty(),
        if sensitive.is_empty() {
            "bind mounts come only from subdirectories of /data, besides the read-only resolver file".into()
        } else {
            format!("binds {}; bind only directories under /data", sensitive.join(", "))
        },
        Vec::new(),
    );

    // 4.10: secrets reach the service only as read-only files from the
    // data volume, never through the image or the environment.
    let (passed, detail) = secrets_check(mounts, process.and_then(|process| process.env().as_deref()));
    row("4.10", "Do not store secrets in the image", passed, detail, Vec::new());

    // 5.9, 5.15, 5.16, 5.20: own namespaces.
    for (item, title, typ, fix) in [
        ("5.9", "Do not share the host's network namespace", LinuxNamespaceType::Network, "join the service's own /run/netns/<name>"),
        ("5.15", "Do not share the host's process namespace", LinuxNamespaceType::Pid, "create a new PID namespace"),
        ("5.16", "Do not share the host's IPC namespace", LinuxNamespaceType::Ipc, "create a new IPC namespace"),
        ("5.20", "Do not share the host's UTS namespace", LinuxNamespaceType::Uts, "create a new UTS namespace"),
    ] {
        let (passed, detail) = namespace_check(spec, typ, &service);
        let exceptions = if typ == LinuxNamespaceType::Pid {
            exception_texts(input.service.exceptions, &["namespace:host-pid"])
        } else {
            Vec::new()
        };
        // A namespace:host-pid exception always has a reason, or the spec
        // would not build.
        let passed = passed || !exceptions.is_empty();
        row(item, title, passed, if passed { detail } else { format!("{detail}; {fix}") }, exceptions);
    }

    // 5.10: memory limit.
    let memory = resources
        .and_then(|resources| resources.memory().as_ref())
        .and_then(|memory| memory.limit())
        .filter(|limit| *limit > 0);
    row(
        "5.10",
        "Limit memory usage",
        memory.is_some(),
        match memory {
            Some(limit) => format!("memory.max {} MiB", limit >> 20),
            None => "no memory limit; set limits.memory".into(),
        },
        Vec::new(),
    );

    // 5.11: CPU limit.
    let cpu = resources.and_then(|resources| resources.cpu().as_ref());
    let quota = cpu.and_then(|cpu| cpu.quota()).filter(|quota| *quota > 0);
    let period = cpu.and_then(|cpu| cpu.period()).unwrap_or(100_000);
    row(
        "5.11",
        "Limit CPU usage",
        quota.is_some(),
        match quota {
            Some(quota) => format!("cpu.max {quota} {period} ({:.2} CPUs)", quota as f64 / period as f64),
            None => "no CPU quota; set limits.cpus".into(),
        },
        Vec::new(),
    );

    // 5.12: read-only root.
    let readonly = spec.root().as_ref().and_then(|root| root.readonly()).unwrap_or(false);
    let writable_exceptions = exception_texts(input.service.exceptions, &["writable:", "exec-tmpfs:"]);
    row(
        "5.12",
        "Mount the root filesystem read-only",
        readonly,
        if readonly {
            "root is read-only; writable paths are tmpfs mounts and volumes".into()
        } else {
            "root is writable; set root.readonly and use writable:PATH exceptions for the paths that must be writable".into()
        },
        writable_exceptions,
    );

    // 5.14: restart policy.
    let bounded = input.restart.max_restarts.is_some() || input.restart.max_delay >= Duration::from_secs(10);
    row(
        "5.14",
        "Limit restarts of a failing container",
        bounded,
        match input.restart.max_restarts {
            Some(limit) => format!("stays down after {limit} restarts"),
            None if bounded => format!(
                "restarts back off exponentially up to {} s, so a crash loop costs little",
                input.restart.max_delay.as_secs()
            ),
            None => "unlimited restarts without back-off; cap the restarts or back off".into(),
        },
        Vec::new(),
    );

    // 5.17: devices only through grants.
    let grants = device_grants(spec, &service).unwrap_or_default();
    let device_exceptions = exception_texts(input.service.exceptions, &["device:"]);
    let ungranted: Vec<String> = linux
        .and_then(|linux| linux.devices().as_ref())
        .map(|devices| {
            devices
                .iter()
                .filter(|device| !grants.iter().any(|grant| &grant.path == device.path()))
                .map(|device| device.path().display().to_string())
                .collect()
        })
        .unwrap_or_default();
    row(
        "5.17",
        "Do not expose host devices directly",
        ungranted.is_empty(),
        if ungranted.is_empty() {
            format!("{} device grants", grants.len())
        } else {
            format!("exposes {} without a device: exception; remove them or add device:PATH with a reason", ungranted.join(", "))
        },
        device_exceptions,
    );

    // 5.19: no shared mount propagation.
    let shared: Vec<String> = mounts
        .iter()
        .filter(|mount| {
            mount
                .options()
                .as_ref()
                .is_some_and(|options| options.iter().any(|option| option == "shared" || option == "rshared"))
        })
        .map(|mount| mount.destination().display().to_string())
        .collect();
    let root_shared = linux
        .and_then(|linux| linux.rootfs_propagation().as_deref())
        .is_some_and(|propagation| propagation.contains("shared"));
    row(
        "5.19",
        "Do not set mount propagation to shared",
        shared.is_empty() && !root_shared,
        if shared.is_empty() && !root_shared {
            "every mount is private".into()
        } else {
            let mut places = shared;
            if root_shared {
                places.push("the root".into());
            }
            format!("shared propagation on {}; use rprivate", places.join(", "))
        },
        Vec::new(),
    );

    // 5.21: seccomp.
    let seccomp = linux.and_then(|linux| linux.seccomp().as_ref());
    let confined = seccomp.is_some_and(|profile| profile.default_action() != LinuxSeccompAction::ScmpActAllow);
    row(
        "5.21",
        "Do not disable the default seccomp profile",
        confined,
        match seccomp {
            Some(profile) if confined => format!(
                "allowlist, unknown syscalls return errno {}",
                profile.default_errno_ret().unwrap_or(1)
            ),
            Some(_) => "the seccomp profile allows every syscall by default; use the default profile".into(),
            None => "no seccomp profile; use the default profile".into(),
        },
        Vec::new(),
    );

    // 5.24: the service's own cgroup.
    let cgroup = linux.and_then(|linux| linux.cgroups_path().as_ref());
    let expected = Path::new(super::CGROUP_PARENT).join(&service);
    row(
        "5.24",
        "Confirm cgroup usage",
        cgroup == Some(&expected),
        match cgroup {
            Some(path) if *path == expected => format!("cgroup {}", path.display()),
            Some(path) => format!("cgroup {} instead of {}; use the service's own cgroup", path.display(), expected.display()),
            None => format!("no cgroup path; use {}", expected.display()),
        },
        Vec::new(),
    );

    // 5.25: no_new_privileges.
    let no_new_privileges = process.and_then(|process| process.no_new_privileges()).unwrap_or(false);
    row(
        "5.25",
        "Restrict acquiring additional privileges",
        no_new_privileges,
        if no_new_privileges {
            "no_new_privileges is set".into()
        } else {
            "no_new_privileges is not set, so setuid programs gain privileges; set it".into()
        },
        Vec::new(),
    );

    // 5.26: health check.
    row(
        "5.26",
        "Check container health at runtime",
        input.service.health_check,
        if input.service.health_check {
            "has a protocol-level health check".into()
        } else {
            "no health check, so a running but silent service counts as healthy; add health = { kind = \"http\", ... }".into()
        },
        Vec::new(),
    );

    // 5.28: pids limit.
    let pids = resources
        .and_then(|resources| resources.pids().as_ref())
        .map(|pids| pids.limit())
        .filter(|limit| *limit > 0);
    row(
        "5.28",
        "Use the PIDs cgroup limit",
        pids.is_some(),
        match pids {
            Some(limit) => format!("pids.max {limit}"),
            None => "no pids limit, so a fork bomb reaches the host; set limits.pids".into(),
        },
        Vec::new(),
    );

    // 5.30: the host's user namespace is not shared with root inside.
    let user_namespace = linux
        .and_then(|linux| linux.namespaces().as_ref())
        .and_then(|namespaces| namespaces.iter().find(|namespace| namespace.typ() == LinuxNamespaceType::User));
    let joins_other = user_namespace.is_some_and(|namespace| namespace.path().is_some());
    let host_root = user_namespace.is_none() && uid == Some(0);
    row(
        "5.30",
        "Do not share the host's user namespace",
        !joins_other && !host_root,
        if joins_other {
            "joins another user namespace; remove the path".into()
        } else if host_root {
            "uid 0 in the host's user namespace is host root; run as an unprivileged user".into()
        } else {
            "host user namespace with an unprivileged uid and no capabilities beyond the exceptions".into()
        },
        Vec::new(),
    );

    // 5.31: no control socket.
    let sockets: Vec<String> = mounts
        .iter()
        .filter(|mount| is_bind(mount))
        .filter(|mount| {
            let source = mount.source().as_deref();
            let is_socket = [source, Some(mount.destination().as_path())]
                .into_iter()
                .flatten()
                .any(|path| {
                    path.file_name()
                        .is_some_and(|name| CONTROL_SOCKETS.iter().any(|socket| name == *socket))
                });
            let in_control_dir = source.is_some_and(|path| CONTROL_DIRS.iter().any(|dir| path.starts_with(dir)))
                && !is_resolver_file(mount);
            is_socket || in_control_dir
        })
        .map(|mount| mount.destination().display().to_string())
        .collect();
    row(
        "5.31",
        "Do not mount container runtime or init control sockets",
        sockets.is_empty(),
        if sockets.is_empty() {
            "no control socket mounted".into()
        } else {
            format!("mounts a control socket at {}; remove the mount", sockets.join(", "))
        },
        Vec::new(),
    );
}

/// Union of the five capability sets of the spec's process.
fn held_capabilities(spec: &Spec) -> Vec<Capability> {
    let mut held = Vec::new();
    let Some(capabilities) = spec.process().as_ref().and_then(|process| process.capabilities().as_ref()) else {
        return held;
    };
    for set in [
        capabilities.bounding(),
        capabilities.effective(),
        capabilities.permitted(),
        capabilities.inheritable(),
        capabilities.ambient(),
    ]
    .into_iter()
    .flatten()
    {
        for capability in set {
            if !held.contains(capability) {
                held.push(*capability);
            }
        }
    }
    held.sort_by_key(|capability| capability.to_string());
    held
}

fn namespace_check(spec: &Spec, typ: LinuxNamespaceType, service: &str) -> (bool, String) {
    let namespace = spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.namespaces().as_ref())
        .and_then(|namespaces| namespaces.iter().find(|namespace| namespace.typ() == typ));
    match namespace {
        None => (false, format!("shares the host's {typ} namespace")),
        Some(namespace) => match namespace.path() {
            None => (true, format!("new {typ} namespace")),
            // The only namespace a service may join is its own network namespace.
            Some(path) if typ == LinuxNamespaceType::Network && path.file_name().is_some_and(|name| name == service) => {
                (true, format!("joins its own namespace {}", path.display()))
            }
            Some(path) => (false, format!("joins the {typ} namespace {}", path.display())),
        },
    }
}

/// Checks that every mount under `/run/secrets` is a read-only bind of a
/// file in `/data/secrets` and that no environment entry names one.
fn secrets_check(mounts: &[oci_spec::runtime::Mount], env: Option<&[String]>) -> (bool, String) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for mount in mounts.iter().filter(|mount| mount.destination().starts_with(SECRETS_TARGET)) {
        let target = mount.destination().display().to_string();
        let read_only = mount.options().as_ref().is_some_and(|options| options.iter().any(|option| option == "ro"));
        let from_secrets = mount.source().as_ref().is_some_and(|source| source.starts_with(SECRETS_DIR));
        if !is_bind(mount) || !read_only || !from_secrets {
            problems.push(format!("{target} is not a read-only bind from {SECRETS_DIR}"));
        }
        files.push(target);
    }
    for entry in env.unwrap_or(&[]) {
        if entry.contains(SECRETS_DIR) {
            problems.push(format!("environment entry {entry:?} names {SECRETS_DIR}"));
        }
    }

    if !problems.is_empty() {
        return (false, format!("{}; list secrets in secrets = [...] and read them from {SECRETS_TARGET}", problems.join(", ")));
    }
    if files.is_empty() {
        return (true, "no secrets; the image carries none".into());
    }
    (true, format!("secrets as read-only files: {}", files.join(", ")))
}

/// Returns the fix of a failure detail written as `problem; fix`.
fn fix_of(detail: &str) -> Option<String> {
    detail.rsplit_once("; ").map(|(_, fix)| fix.to_string())
}

/// Returns true for the read-only bind of a file from
/// [`crate::net::resolv::RESOLV_DIR`] at `/etc/resolv.conf`, which contains
/// DNS server addresses only.
fn is_resolver_file(mount: &oci_spec::runtime::Mount) -> bool {
    let read_only = mount.options().as_ref().is_some_and(|options| options.iter().any(|option| option == "ro"));
    let from_resolver_dir = mount.source().as_ref().is_some_and(|source| {
        source.parent() == Some(Path::new(crate::net::resolv::RESOLV_DIR))
    });
    read_only && from_resolver_dir && mount.destination().file_name() == Some(std::ffi::OsStr::new("resolv.conf"))
}

/// Checks that the spec names the service's own AppArmor profile and, when
/// the kernel's facts are known, that the profile is loaded in enforce mode.
fn apparmor_check(input: &AuditInput<'_>) -> (bool, String) {
    let expected = profile_name(input.service.name);
    let named = input
        .spec
        .process()
        .as_ref()
        .and_then(|process| process.apparmor_profile().clone())
        .filter(|profile| !profile.is_empty());
    let Some(profile) = named else {
        return (
            false,
            format!("the spec names no AppArmor profile; set process.apparmorProfile to {expected} (bundle_spec does)"),
        );
    };
    if profile != expected {
        return (
            false,
            format!("the spec names profile {profile}, not the service's own; set process.apparmorProfile to {expected}"),
        );
    }
    let Some(facts) = input.apparmor else {
        return (true, format!("profile {profile}"));
    };
    if !facts.enabled {
        return (
            false,
            format!("the kernel has no AppArmor, so {profile} is not applied; boot a kernel with AppArmor among its LSMs (lsm=...,apparmor)"),
        );
    }
    match facts.profiles.get(&profile).map(String::as_str) {
        Some("enforce") => (true, format!("profile {profile} loaded in enforce mode")),
        Some(mode) => (
            false,
            format!("profile {profile} is loaded in {mode} mode; load it in enforce mode with apparmor_parser -r"),
        ),
        None => (
            false,
            format!("profile {profile} is not loaded; check the apparmor phase in the appliance's log"),
        ),
    }
}

fn is_bind(mount: &oci_spec::runtime::Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .as_ref()
            .is_some_and(|options| options.iter().any(|option| option == "bind" || option == "rbind"))
}

fn exception_texts(exceptions: &[Exception], prefixes: &[&str]) -> Vec<String> {
    exceptions
        .iter()
        .filter(|exception| prefixes.iter().any(|prefix| exception.allow.starts_with(prefix)))
        .map(|exception| format!("{}: {}", exception.allow, exception.reason))
        .collect()
}
