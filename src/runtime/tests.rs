//! Tests of the generated specs and of the audit over them.

use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxSeccompAction, LinuxSyscall, Mount, MountBuilder, Spec,
};

use super::*;
use crate::config::Service;

const TYPICAL: &str = r#"
name = "jellyfin"
segment = "frontend"
command = ["/usr/bin/jellyfin", "--datadir", "/config"]
ports = [{ port = 8096 }]
volumes = [
    { source = "config/jellyfin", target = "/config" },
    { source = "media", target = "/media", read_only = true },
]
health = { kind = "http", port = 8096, path = "/health" }
"#;

fn service(text: &str) -> Service {
    toml::from_str(text).expect("test service parses")
}

fn with_exceptions(exceptions: &str) -> Service {
    service(&format!("{TYPICAL}exceptions = [{exceptions}]\n"))
}

/// Creates a minimal image directory without symlinks.
fn plain_image() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for directory in ["tmp", "run", "etc", "var", "config", "media"] {
        std::fs::create_dir_all(root.path().join(directory)).unwrap();
    }
    root
}

fn spec_in(service: &Service, image: &Path) -> Spec {
    bundle_spec(&ServiceInput::new(service), &RootfsDir(image.to_path_buf())).expect("spec builds")
}

fn spec_for(service: &Service) -> Spec {
    let image = plain_image();
    spec_in(service, image.path())
}

fn typical_spec() -> Spec {
    spec_for(&service(TYPICAL))
}

fn rules_for<'a>(spec: &'a Spec, name: &str) -> Vec<&'a LinuxSyscall> {
    let seccomp = spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
    seccomp
        .syscalls()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|rule| rule.names().iter().any(|listed| listed == name))
        .collect()
}

fn denied_with_eperm(spec: &Spec, name: &str) -> bool {
    let rules = rules_for(spec, name);
    !rules.is_empty()
        && rules
            .iter()
            .all(|rule| rule.action() == LinuxSeccompAction::ScmpActErrno && rule.errno_ret() == Some(EPERM))
}

fn mount_at<'a>(spec: &'a Spec, target: &str) -> Vec<&'a Mount> {
    spec.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|mount| mount.destination() == Path::new(target))
        .collect()
}

fn options(mount: &Mount) -> Vec<String> {
    mount.options().clone().unwrap_or_default()
}

fn audit_one(service: &Service, spec: &Spec) -> Vec<AuditRow> {
    audit(&[AuditInput {
        service: service.into(),
        spec,
        restart: RestartFacts::supervisor(),
        apparmor: None,
    }])
}

fn failed_items(rows: &[AuditRow]) -> Vec<String> {
    rows.iter().filter(|row| row.outcome == Outcome::Fail).map(|row| row.item.clone()).collect()
}

#[test]
fn default_spec_has_no_capabilities() {
    let spec = typical_spec();
    let capabilities = spec.process().as_ref().unwrap().capabilities().as_ref().unwrap();
    assert_eq!(capabilities.bounding().as_ref().map(|set| set.len()), Some(0));
    assert_eq!(capabilities.effective().as_ref().map(|set| set.len()), Some(0));
    assert_eq!(capabilities.permitted().as_ref().map(|set| set.len()), Some(0));
    assert_eq!(capabilities.inheritable().as_ref().map(|set| set.len()), Some(0));
    assert_eq!(capabilities.ambient().as_ref().map(|set| set.len()), Some(0));
}

#[test]
fn default_spec_process_policy() {
    let spec = typical_spec();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.no_new_privileges(), Some(true));
    assert_eq!(process.user().uid(), 1000);
    assert_eq!(process.user().gid(), 1000);
    assert_eq!(process.user().additional_gids().as_deref(), Some(&[][..]));
    assert_eq!(process.cwd(), Path::new("/"));
    assert_eq!(process.args().as_ref().unwrap()[0], "/usr/bin/jellyfin");
    let rlimits = process.rlimits().as_ref().unwrap();
    assert_eq!(rlimits.len(), 1);
    assert_eq!(rlimits[0].hard(), 65536);
    assert!(process.oom_score_adj().is_some_and(|score| score > 0));
    let env = process.env().as_ref().unwrap();
    assert!(env.iter().any(|entry| entry.starts_with("PATH=/usr/local/sbin:")));
    assert!(env.contains(&"TZ=UTC".to_string()));
    assert!(!env.iter().any(|entry| entry.starts_with("PUID=")));
    assert_eq!(spec.hostname().as_deref(), Some("jellyfin"));
}

#[test]
fn default_spec_root_is_read_only() {
    let spec = typical_spec();
    let root = spec.root().as_ref().unwrap();
    assert_eq!(root.readonly(), Some(true));
    assert_eq!(root.path(), Path::new("/"));
}

#[test]
fn oci_service_root_is_under_services_dir() {
    let service = service(&format!("{TYPICAL}oci = \"images/jellyfin.tar\"\n"));
    let spec = spec_for(&service);
    assert_eq!(
        spec.root().as_ref().unwrap().path(),
        Path::new("/usr/lib/ztms/services/jellyfin/rootfs")
    );
}

#[test]
fn default_seccomp_returns_enosys() {
    let spec = typical_spec();
    let seccomp = spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
    assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(seccomp.default_errno_ret(), Some(ENOSYS));
    assert!(seccomp.architectures().as_ref().is_some_and(|arches| !arches.is_empty()));
}

#[test]
fn seccomp_clone3_returns_enosys() {
    let spec = typical_spec();
    let rules = rules_for(&spec, "clone3");
    assert!(!rules.is_empty());
    for rule in rules {
        assert_eq!(rule.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(rule.errno_ret(), Some(ENOSYS));
    }
}

#[test]
fn seccomp_clone_needs_no_namespace_flags() {
    let spec = typical_spec();
    let rules = rules_for(&spec, "clone");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActAllow);
    let args = rules[0].args().as_ref().expect("clone has an argument filter");
    assert_eq!(args[0].index(), 0);
    assert_eq!(args[0].value(), 0x7e02_0000);
    assert_eq!(args[0].value_two(), Some(0));
}

#[test]
fn seccomp_dangerous_syscalls_return_eperm() {
    let spec = typical_spec();
    for name in [
        "mount", "umount2", "unshare", "setns", "keyctl", "add_key", "request_key", "bpf", "ptrace",
        "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "pivot_root",
        "swapon", "swapoff", "reboot", "open_by_handle_at", "userfaultfd", "perf_event_open",
    ] {
        assert!(denied_with_eperm(&spec, name), "{name} is not denied with EPERM");
    }
}

#[test]
fn seccomp_allows_common_syscalls() {
    let spec = typical_spec();
    for name in ["read", "openat", "futex", "epoll_wait", "socket", "execve", "rseq"] {
        let rules = rules_for(&spec, name);
        assert!(
            rules.iter().any(|rule| rule.action() == LinuxSeccompAction::ScmpActAllow),
            "{name} is not allowed"
        );
    }
}

#[test]
fn seccomp_capability_allows_its_syscalls() {
    let service = with_exceptions(r#"{ allow = "cap:SYS_TIME", reason = "NTP server sets the clock" }"#);
    let spec = spec_for(&service);
    let rules = rules_for(&spec, "settimeofday");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActAllow);
    assert!(denied_with_eperm(&spec, "mount"));
}

#[test]
fn default_spec_masks_kernel_paths() {
    let spec = typical_spec();
    let linux = spec.linux().as_ref().unwrap();
    let masked = linux.masked_paths().as_ref().unwrap();
    for path in ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"] {
        assert!(masked.iter().any(|listed| listed == path), "{path} is not masked");
    }
    let readonly = linux.readonly_paths().as_ref().unwrap();
    for path in ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"] {
        assert!(readonly.iter().any(|listed| listed == path), "{path} is not read-only");
    }
}

#[test]
fn default_spec_has_limits() {
    let spec = typical_spec();
    let resources = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
    let memory = resources.memory().as_ref().unwrap();
    assert_eq!(memory.limit(), Some(512 << 20));
    assert_eq!(memory.swap(), Some(512 << 20));
    let cpu = resources.cpu().as_ref().unwrap();
    assert_eq!(cpu.quota(), Some(100_000));
    assert_eq!(cpu.period(), Some(100_000));
    assert_eq!(resources.pids().as_ref().unwrap().limit(), 256);
}

#[test]
fn limits_table_sets_values() {
    let service = service(&format!(
        "{TYPICAL}limits = {{ memory = \"2G\", cpus = 0.5, pids = 1024, nofile = 4096 }}\n"
    ));
    let spec = spec_for(&service);
    let resources = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
    assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(2 << 30));
    assert_eq!(resources.cpu().as_ref().unwrap().quota(), Some(50_000));
    assert_eq!(resources.pids().as_ref().unwrap().limit(), 1024);
    let rlimits = spec.process().as_ref().unwrap().rlimits().clone().unwrap();
    assert_eq!(rlimits[0].soft(), 4096);
}

#[test]
fn limits_out_of_range_rejected() {
    for limits in ["{ memory = \"1M\" }", "{ cpus = 0.0 }", "{ pids = 0 }", "{ nofile = 4194304 }"] {
        let service = service(&format!("{TYPICAL}limits = {limits}\n"));
        let error = bundle_spec(&ServiceInput::new(&service), &NoImage).unwrap_err();
        assert!(matches!(error, RuntimeError::InvalidLimit { .. }), "{limits}: {error}");
    }
}

#[test]
fn default_spec_devices_denied() {
    let spec = typical_spec();
    let linux = spec.linux().as_ref().unwrap();
    let rules = linux.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(!rules[0].allow());
    assert_eq!(rules[0].access().as_deref(), Some("rwm"));
    assert!(linux.devices().as_ref().is_none_or(|devices| devices.is_empty()));
}

#[test]
fn default_spec_namespaces() {
    let spec = typical_spec();
    let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ] {
        let namespace = namespaces.iter().find(|namespace| namespace.typ() == typ);
        assert!(namespace.is_some_and(|namespace| namespace.path().is_none()), "{typ} is not a new namespace");
    }
    let network = namespaces.iter().find(|namespace| namespace.typ() == LinuxNamespaceType::Network).unwrap();
    assert_eq!(network.path().as_deref(), Some(Path::new("/run/netns/jellyfin")));
    assert!(!namespaces.iter().any(|namespace| namespace.typ() == LinuxNamespaceType::User));
    assert_eq!(
        spec.linux().as_ref().unwrap().cgroups_path().as_deref(),
        Some(Path::new("/ztms/jellyfin"))
    );
}

#[test]
fn default_tmpfs_is_noexec() {
    let spec = typical_spec();
    for target in ["/tmp", "/run"] {
        let mounts = mount_at(&spec, target);
        assert_eq!(mounts.len(), 1, "{target}");
        assert_eq!(mounts[0].typ().as_deref(), Some("tmpfs"));
        let options = options(mounts[0]);
        for option in ["noexec", "nosuid", "nodev"] {
            assert!(options.iter().any(|listed| listed == option), "{target} lacks {option}");
        }
    }
    assert!(options(mount_at(&spec, "/run")[0]).contains(&"uid=1000".to_string()));
}

#[test]
fn volumes_are_private_binds() {
    let spec = typical_spec();
    let config = mount_at(&spec, "/config");
    assert_eq!(config.len(), 1);
    assert_eq!(config[0].source().as_deref(), Some(Path::new("/data/config/jellyfin")));
    let config_options = options(config[0]);
    for option in ["rbind", "rprivate", "nosuid", "nodev", "noexec"] {
        assert!(config_options.iter().any(|listed| listed == option), "/config lacks {option}");
    }
    assert!(!config_options.contains(&"ro".to_string()));
    assert!(options(mount_at(&spec, "/media")[0]).contains(&"ro".to_string()));
    for mount in spec.mounts().as_ref().unwrap() {
        assert!(
            !options(mount).iter().any(|option| option.contains("shared")),
            "{} is shared",
            mount.destination().display()
        );
    }
}

fn with_secrets() -> Spec {
    spec_for(&service(&format!("{TYPICAL}secrets = [\"postgres-password\", \"api-key\"]\n")))
}

#[test]
fn secrets_bound_read_only_per_file() {
    let spec = with_secrets();
    for name in ["postgres-password", "api-key"] {
        let target = format!("/run/secrets/{name}");
        let mounts = mount_at(&spec, &target);
        assert_eq!(mounts.len(), 1, "{target}");
        assert_eq!(mounts[0].typ().as_deref(), Some("bind"), "{target}");
        let source = format!("/data/secrets/{name}");
        assert_eq!(mounts[0].source().as_deref(), Some(Path::new(&source)), "{target}");
        let listed = options(mounts[0]);
        for option in ["ro", "rbind", "nosuid", "nodev", "noexec"] {
            assert!(listed.iter().any(|listed| listed == option), "{target} lacks {option}: {listed:?}");
        }
    }
}

#[test]
fn secrets_follow_run_tmpfs() {
    let spec = with_secrets();
    let position = |target: &str| {
        spec.mounts().as_ref().unwrap().iter().position(|mount| mount.destination() == Path::new(target)).unwrap()
    };
    assert!(position("/run") < position("/run/secrets/postgres-password"));
    assert!(position("/run") < position("/run/secrets/api-key"));
}

#[test]
fn secrets_absent_without_list() {
    let spec = typical_spec();
    let under_secrets = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|mount| mount.destination().starts_with("/run/secrets"))
        .count();
    assert_eq!(under_secrets, 0);
}

#[test]
fn secrets_follow_var_run_symlink() {
    let image = plain_image();
    std::fs::remove_dir(image.path().join("var")).unwrap();
    std::fs::create_dir(image.path().join("var")).unwrap();
    symlink("/run", image.path().join("var/run")).unwrap();
    let spec = spec_in(&service(&format!("{TYPICAL}secrets = [\"token\"]\n")), image.path());
    assert_eq!(mount_at(&spec, "/run/secrets/token").len(), 1);
    assert_eq!(mount_at(&spec, "/run").len(), 1);
}

#[test]
fn secrets_stay_out_of_environment() {
    let spec = with_secrets();
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    for entry in &env {
        assert!(!entry.contains("secrets"), "secret path in the environment: {entry}");
        assert!(!entry.contains("postgres-password"), "secret name in the environment: {entry}");
    }
    let keys: Vec<&str> = env.iter().filter_map(|entry| entry.split_once('=').map(|(key, _)| key)).collect();
    assert_eq!(keys, ["PATH", "HOME", "TZ"]);
}

#[test]
fn invalid_secret_name_rejected_by_spec() {
    let service = service(&format!("{TYPICAL}secrets = [\"../etc/shadow\"]\n"));
    let error = bundle_spec(&ServiceInput::new(&service), &NoImage).unwrap_err();
    assert!(matches!(error, RuntimeError::InvalidSecretName { .. }), "{error}");
}

#[test]
fn system_mounts_present() {
    let spec = typical_spec();
    for target in ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"] {
        assert_eq!(mount_at(&spec, target).len(), 1, "{target}");
    }
    assert!(options(mount_at(&spec, "/sys")[0]).contains(&"ro".to_string()));
}

#[test]
fn var_run_symlink_gives_one_run_tmpfs() {
    let image = plain_image();
    symlink("/run", image.path().join("var/run")).unwrap();
    symlink("../tmp", image.path().join("var/tmp")).unwrap();
    let spec = spec_in(&service(TYPICAL), image.path());
    assert_eq!(mount_at(&spec, "/run").len(), 1);
    assert_eq!(mount_at(&spec, "/tmp").len(), 1);
    assert!(mount_at(&spec, "/var/run").is_empty());
    assert!(mount_at(&spec, "/var/tmp").is_empty());
}

#[test]
fn real_var_run_gets_its_own_tmpfs() {
    let image = plain_image();
    std::fs::create_dir(image.path().join("var/run")).unwrap();
    let spec = spec_in(&service(TYPICAL), image.path());
    assert_eq!(mount_at(&spec, "/var/run").len(), 1);
}

#[test]
fn exec_tmpfs_through_symlink_allows_exec() {
    let image = plain_image();
    symlink("/run", image.path().join("var/run")).unwrap();
    let service = with_exceptions(r#"{ allow = "exec-tmpfs:/var/run", reason = "s6-overlay runs its helpers from /run" }"#);
    let spec = spec_in(&service, image.path());
    let run = mount_at(&spec, "/run");
    assert_eq!(run.len(), 1);
    assert!(!options(run[0]).contains(&"noexec".to_string()));
    assert!(options(mount_at(&spec, "/tmp")[0]).contains(&"noexec".to_string()));
}

#[test]
fn writable_exception_adds_owned_tmpfs() {
    let service = with_exceptions(r#"{ allow = "writable:/run/postgresql", reason = "PostgreSQL socket directory" }"#);
    let spec = spec_for(&service);
    let mounts = mount_at(&spec, "/run/postgresql");
    assert_eq!(mounts.len(), 1);
    let options = options(mounts[0]);
    assert!(options.contains(&"noexec".to_string()));
    assert!(options.contains(&"uid=1000".to_string()));
}

#[test]
fn capability_exception_adds_exactly_it() {
    let service = with_exceptions(r#"{ allow = "cap:NET_BIND_SERVICE", reason = "serves HTTPS on port 443" }"#);
    let spec = spec_for(&service);
    let capabilities = spec.process().as_ref().unwrap().capabilities().clone().unwrap();
    for set in [
        capabilities.bounding(),
        capabilities.effective(),
        capabilities.permitted(),
        capabilities.inheritable(),
        capabilities.ambient(),
    ] {
        let set = set.as_ref().unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.contains(&Capability::NetBindService));
    }

    let rows = audit_one(&service, &spec);
    let capability_row = rows.iter().find(|row| row.item == "5.3").unwrap();
    assert_eq!(capability_row.outcome, Outcome::Pass);
    assert_eq!(capability_row.exceptions, ["cap:NET_BIND_SERVICE: serves HTTPS on port 443"]);
    assert!(render_table(&rows).contains("serves HTTPS on port 443"));
}

#[test]
fn capability_without_reason_rejected() {
    let service = with_exceptions(r#"{ allow = "cap:NET_BIND_SERVICE", reason = " " }"#);
    let error = bundle_spec(&ServiceInput::new(&service), &NoImage).unwrap_err();
    assert!(matches!(error, RuntimeError::MissingReason { .. }), "{error}");
    assert!(error.to_string().contains("jellyfin"));
}

#[test]
fn unknown_capability_rejected() {
    let service = with_exceptions(r#"{ allow = "cap:NET_SUPERPOWER", reason = "none" }"#);
    let error = bundle_spec(&ServiceInput::new(&service), &NoImage).unwrap_err();
    assert!(matches!(error, RuntimeError::UnknownCapability { .. }), "{error}");
    assert!(error.to_string().contains("NET_SUPERPOWER"));
}

#[test]
fn capability_names_parse_in_any_form() {
    assert_eq!(parse_capability("CAP_CHOWN"), Some(Capability::Chown));
    assert_eq!(parse_capability("net_raw"), Some(Capability::NetRaw));
    assert_eq!(parse_capability("CAP_"), None);
    assert_eq!(parse_capability(""), None);
}

#[test]
fn unknown_exception_kind_rejected() {
    let service = with_exceptions(r#"{ allow = "privileged:true", reason = "none" }"#);
    let error = bundle_spec(&ServiceInput::new(&service), &NoImage).unwrap_err();
    assert!(matches!(error, RuntimeError::InvalidException { .. }), "{error}");
}

#[test]
fn device_grant_outside_dev_rejected() {
    for path in ["/etc/shadow", "/dev", "/devices/x", "/dev/../etc/shadow", "dev/dri"] {
        let service = with_exceptions(&format!(r#"{{ allow = "device:{path}", reason = "transcoding" }}"#));
        let error = bundle_spec(&ServiceInput::new(&service), &NoImage).unwrap_err();
        assert!(
            matches!(error, RuntimeError::DeviceOutsideDev { .. } | RuntimeError::InvalidPath { .. }),
            "{path}: {error}"
        );
    }
}

fn render_node(path: &Path) -> io::Result<DeviceNode> {
    if path == Path::new("/dev/dri/renderD128") {
        Ok(DeviceNode {
            kind: DeviceKind::Char,
            major: 226,
            minor: 128,
            mode: 0o660,
            uid: 0,
            gid: 105,
        })
    } else {
        Err(io::Error::new(io::ErrorKind::NotFound, "no such device"))
    }
}

#[test]
fn device_grant_filled_at_boot() {
    let service = with_exceptions(r#"{ allow = "device:/dev/dri/renderD128", reason = "hardware transcoding" }"#);
    let mut spec = spec_for(&service);
    let grants = devices::device_grants(&spec, "jellyfin").unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].path, Path::new("/dev/dri/renderD128"));

    fill_device_grants(&mut spec, "jellyfin", render_node).unwrap();

    let linux = spec.linux().as_ref().unwrap();
    let device = &linux.devices().as_ref().unwrap()[0];
    assert_eq!(device.path(), Path::new("/dev/dri/renderD128"));
    assert_eq!((device.major(), device.minor()), (226, 128));
    let rules = linux.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert!(!rules[0].allow(), "deny-all rule must come first");
    assert!(rules[1].allow());
    assert_eq!((rules[1].major(), rules[1].minor()), (Some(226), Some(128)));
    let user = spec.process().as_ref().unwrap().user();
    assert_eq!(user.additional_gids().as_deref(), Some(&[105][..]));

    let rows = audit_one(&service, &spec);
    let device_row = rows.iter().find(|row| row.item == "5.17").unwrap();
    assert_eq!(device_row.outcome, Outcome::Pass);
    assert_eq!(device_row.exceptions, ["device:/dev/dri/renderD128: hardware transcoding"]);
}

#[test]
fn missing_device_fails_at_boot() {
    let service = with_exceptions(r#"{ allow = "device:/dev/dri/card0", reason = "display" }"#);
    let mut spec = spec_for(&service);
    let error = fill_device_grants(&mut spec, "jellyfin", render_node).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("/dev/dri/card0"), "{message}");
    assert!(message.contains("jellyfin"), "{message}");
}

#[test]
fn device_stat_rejects_regular_file() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let error = DeviceNode::stat(file.path()).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    let null = DeviceNode::stat(Path::new("/dev/null")).unwrap();
    assert_eq!((null.kind, null.major, null.minor), (DeviceKind::Char, 1, 3));
}

#[test]
fn volume_escaping_data_rejected() {
    for source in ["../etc", "/etc", "", "config/../../etc"] {
        let text = format!(
            "name = \"jellyfin\"\nsegment = \"frontend\"\ncommand = [\"/usr/bin/jellyfin\"]\nvolumes = [{{ source = {source:?}, target = \"/host\" }}]\n"
        );
        let error = bundle_spec(&ServiceInput::new(&service(&text)), &NoImage).unwrap_err();
        assert!(matches!(error, RuntimeError::InvalidVolumeSource { .. }), "{source:?}: {error}");
    }
}

#[test]
fn volume_target_conflict_rejected() {
    let text = TYPICAL.replace("target = \"/media\"", "target = \"/config\"");
    let error = bundle_spec(&ServiceInput::new(&service(&text)), &NoImage).unwrap_err();
    assert!(matches!(error, RuntimeError::MountConflict { .. }), "{error}");
}

#[test]
fn relative_volume_target_rejected() {
    let text = TYPICAL.replace("target = \"/media\"", "target = \"media\"");
    let error = bundle_spec(&ServiceInput::new(&service(&text)), &NoImage).unwrap_err();
    assert!(matches!(error, RuntimeError::InvalidPath { .. }), "{error}");
}

#[test]
fn environment_puid_and_image_env() {
    let service = service(TYPICAL);
    let mut input = ServiceInput::new(&service);
    input.puid_pgid = true;
    input.image_env = vec!["HOME=/config".into(), "LANG=C.UTF-8".into()];
    let spec = bundle_spec(&input, &NoImage).unwrap();
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    assert!(env.contains(&"HOME=/config".to_string()));
    assert!(env.contains(&"LANG=C.UTF-8".to_string()));
    assert!(env.contains(&"PUID=1000".to_string()));
    assert!(env.contains(&"PGID=1000".to_string()));
    assert_eq!(env.iter().filter(|entry| entry.starts_with("HOME=")).count(), 1);
}

#[test]
fn mount_points_exclude_tmpfs_children() {
    let spec = typical_spec();
    let points = mount_points(&spec);
    for expected in ["/tmp", "/run", "/config", "/media"] {
        assert!(points.contains(&PathBuf::from(expected)), "{expected} missing from {points:?}");
    }
    assert!(!points.iter().any(|point| point.starts_with("/run/secrets")));
    assert!(!points.iter().any(|point| point.starts_with("/proc")));
}

#[test]
fn spec_json_round_trip() {
    let spec = typical_spec();
    let json = serde_json::to_string_pretty(&spec).unwrap();
    let parsed: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, spec);

    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("config.json");
    spec.save(&path).unwrap();
    assert_eq!(Spec::load(&path).unwrap(), spec);
    assert!(json.contains("\"defaultErrnoRet\": 38"));
    assert!(json.contains("\"noNewPrivileges\": true"));
}

#[test]
fn audit_passes_default_spec() {
    let service = service(TYPICAL);
    let spec = spec_for(&service);
    let rows = audit_one(&service, &spec);
    assert!(failed_items(&rows).is_empty(), "{}", render_table(&rows));
    for item in [
        "4.1", "4.10", "5.3", "5.4", "5.5", "5.9", "5.10", "5.11", "5.12", "5.14", "5.15", "5.16", "5.17", "5.19",
        "5.20", "5.21", "5.24", "5.25", "5.26", "5.28", "5.30", "5.31",
    ] {
        assert!(rows.iter().any(|row| row.item == item), "item {item} missing");
    }
}

/// Audits the typical spec after `weaken` and returns the failed items.
fn audit_weakened(weaken: impl FnOnce(&mut Spec)) -> Vec<String> {
    let service = service(TYPICAL);
    let mut spec = spec_for(&service);
    weaken(&mut spec);
    failed_items(&audit_one(&service, &spec))
}

#[test]
fn audit_fails_privileged_capabilities() {
    let failed = audit_weakened(|spec| {
        let process = spec.process_mut().as_mut().unwrap();
        let mut capabilities = process.capabilities().clone().unwrap();
        let all: oci_spec::runtime::Capabilities = [Capability::SysAdmin, Capability::NetAdmin].into_iter().collect();
        capabilities.set_bounding(Some(all.clone()));
        capabilities.set_effective(Some(all));
        process.set_capabilities(Some(capabilities));
    });
    assert!(failed.iter().any(|item| item == "5.3"), "{failed:?}");
    assert!(failed.iter().any(|item| item == "5.4"), "{failed:?}");
}

#[test]
fn audit_fails_without_seccomp() {
    let failed = audit_weakened(|spec| {
        spec.linux_mut().as_mut().unwrap().set_seccomp(None);
    });
    assert_eq!(failed, ["5.21"]);
}

#[test]
fn audit_fails_host_pid_namespace() {
    let failed = audit_weakened(|spec| {
        let namespaces = spec.linux_mut().as_mut().unwrap().namespaces_mut().as_mut().unwrap();
        namespaces.retain(|namespace| namespace.typ() != LinuxNamespaceType::Pid);
    });
    assert_eq!(failed, ["5.15"]);
}

#[test]
fn audit_fails_joined_host_network() {
    let failed = audit_weakened(|spec| {
        let namespaces = spec.linux_mut().as_mut().unwrap().namespaces_mut().as_mut().unwrap();
        namespaces.retain(|namespace| namespace.typ() != LinuxNamespaceType::Network);
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path("/proc/1/ns/net")
                .build()
                .unwrap(),
        );
    });
    assert_eq!(failed, ["5.9"]);
}

#[test]
fn audit_fails_writable_root() {
    let failed = audit_weakened(|spec| {
        spec.root_mut().as_mut().unwrap().set_readonly(Some(false));
    });
    assert_eq!(failed, ["5.12"]);
}

#[test]
fn audit_fails_without_memory_limit() {
    let failed = audit_weakened(|spec| {
        let resources = spec.linux_mut().as_mut().unwrap().resources_mut().as_mut().unwrap();
        resources.set_memory(None);
    });
    assert_eq!(failed, ["5.10"]);
}

#[test]
fn audit_fails_shared_propagation() {
    let failed = audit_weakened(|spec| {
        let mounts = spec.mounts_mut().as_mut().unwrap();
        let config = mounts.iter_mut().find(|mount| mount.destination() == Path::new("/config")).unwrap();
        let options = config.options_mut().as_mut().unwrap();
        options.retain(|option| option != "rprivate");
        options.push("rshared".into());
    });
    assert_eq!(failed, ["5.19"]);
}

#[test]
fn audit_fails_docker_socket_mount() {
    let failed = audit_weakened(|spec| {
        let socket = MountBuilder::default()
            .destination("/var/run/docker.sock")
            .typ("bind")
            .source("/var/run/docker.sock")
            .options(vec!["rbind".to_string(), "rprivate".to_string()])
            .build()
            .unwrap();
        spec.mounts_mut().as_mut().unwrap().push(socket);
    });
    assert!(failed.iter().any(|item| item == "5.31"), "{failed:?}");
    assert!(failed.iter().any(|item| item == "5.5"), "{failed:?}");
}

#[test]
fn audit_fails_root_user_and_missing_health() {
    let text = TYPICAL.replace("health = { kind = \"http\", port = 8096, path = \"/health\" }\n", "user = \"0:0\"\n");
    let service = service(&text);
    let spec = spec_for(&service);
    let failed = failed_items(&audit_one(&service, &spec));
    assert_eq!(failed, ["4.1", "5.26", "5.30"]);
}

#[test]
fn audit_fails_unbounded_restarts() {
    let service = service(TYPICAL);
    let spec = spec_for(&service);
    let rows = audit(&[AuditInput {
        service: (&service).into(),
        spec: &spec,
        restart: RestartFacts {
            max_restarts: None,
            max_delay: std::time::Duration::ZERO,
        },
        apparmor: None,
    }]);
    assert_eq!(failed_items(&rows), ["5.14"]);
}

#[test]
fn audit_failures_carry_fix() {
    let text = TYPICAL.replace("health = { kind = \"http\", port = 8096, path = \"/health\" }\n", "user = \"0:0\"\n");
    let service = service(&text);
    let mut spec = spec_for(&service);
    spec.linux_mut().as_mut().unwrap().set_seccomp(None);
    let rows = audit_one(&service, &spec);
    for row in &rows {
        match row.outcome {
            Outcome::Fail => {
                let fix = row.fix.as_deref().unwrap_or_else(|| panic!("item {} has no fix: {}", row.item, row.detail));
                assert!(row.detail.ends_with(fix), "item {}: {fix:?} is not the end of {:?}", row.item, row.detail);
            }
            Outcome::Pass => assert_eq!(row.fix, None, "item {} passed", row.item),
        }
    }
    let seccomp = rows.iter().find(|row| row.item == "5.21").unwrap();
    assert_eq!(seccomp.fix.as_deref(), Some("use the default profile"));
}

#[test]
fn render_table_counts_failures() {
    let service = service(TYPICAL);
    let mut spec = spec_for(&service);
    spec.linux_mut().as_mut().unwrap().set_seccomp(None);
    let table = render_table(&audit_one(&service, &spec));
    assert!(table.starts_with("ITEM"));
    assert!(table.contains("FAIL"));
    assert!(table.trim_end().ends_with("1 failed"), "{table}");
}

#[test]
fn audit_definition_covers_each_service() {
    let text = format!(
        "[image]\nname = \"test\"\nversion = \"1.0\"\n\n[[service]]\n{TYPICAL}\n[[service]]\nname = \"web\"\nsegment = \"frontend\"\ncommand = [\"/bin/httpd\"]\n"
    );
    let definition: crate::config::Definition = toml::from_str(&text).unwrap();
    let rows = audit_definition(&definition).unwrap();
    assert!(rows.iter().any(|row| row.service == "jellyfin"));
    let web_failures: Vec<&str> = rows
        .iter()
        .filter(|row| row.service == "web" && row.outcome == Outcome::Fail)
        .map(|row| row.item.as_str())
        .collect();
    assert_eq!(web_failures, ["5.26"]);
}

#[test]
fn audit_lists_secret_files() {
    let service = service(&format!("{TYPICAL}secrets = [\"api-key\"]\n"));
    let spec = spec_for(&service);
    let rows = audit_one(&service, &spec);
    let row = rows.iter().find(|row| row.item == "4.10").expect("item 4.10");
    assert_eq!(row.outcome, Outcome::Pass, "{row:?}");
    assert!(row.detail.contains("/run/secrets/api-key"), "{row:?}");
}

#[test]
fn audit_fails_writable_secret() {
    let service = service(&format!("{TYPICAL}secrets = [\"api-key\"]\n"));
    let mut spec = spec_for(&service);
    for mount in spec.mounts_mut().as_mut().unwrap() {
        if mount.destination().starts_with("/run/secrets") {
            let options: Vec<String> = options(mount).into_iter().filter(|option| option != "ro").collect();
            mount.set_options(Some(options));
        }
    }
    let failed = failed_items(&audit_one(&service, &spec));
    assert!(failed.iter().any(|item| item == "4.10"), "{failed:?}");
}

#[test]
fn audit_fails_spec_without_apparmor_profile() {
    let service = service(TYPICAL);
    let mut spec = spec_for(&service);
    assert!(failed_items(&audit_one(&service, &spec)).is_empty());

    spec.process_mut().as_mut().unwrap().set_apparmor_profile(None);
    let rows = audit_one(&service, &spec);
    assert_eq!(failed_items(&rows), ["5.1"]);
    let row = rows.iter().find(|row| row.item == "5.1").unwrap();
    assert!(row.detail.contains("ztms-jellyfin"), "{row:?}");

    spec.process_mut().as_mut().unwrap().set_apparmor_profile(Some("unconfined".into()));
    assert_eq!(failed_items(&audit_one(&service, &spec)), ["5.1"]);
}
