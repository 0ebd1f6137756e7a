//! The AppArmor profile of every service, written from the service's OCI
//! spec so that the profile and the mounts it describes cannot disagree.
//!
//! The profile allows what the spec already grants and nothing more. The
//! service may read the container's tree, and write only its writable
//! tmpfs mounts, read-write volumes, `/dev/shm` and its granted devices.
//! It may execute and map programs only from the read-only root or an
//! `exec-tmpfs` mount. It gets the capabilities of its bounding set, and
//! TCP, UDP, Unix and netlink sockets (raw and packet sockets only with
//! `CAP_NET_RAW`).
//! Mounts, `pivot_root`, tracing another process, writes to `/proc/sys`
//! and `/sys` and every other socket family are denied. AppArmor
//! mediates path names as the container sees them, after `pivot_root`,
//! so the rules use container paths.
//!
//! The builder writes the text next to `config.json` in the bundle
//! directory; ztms-init loads it with `apparmor_parser` before any
//! service starts, and crun confines the service's process with it at
//! exec because the spec names it in `process.apparmorProfile`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxNamespaceType, Mount, Spec};

use super::devices::device_grants;
use super::RuntimeError;

/// File name of the profile text in a service's bundle directory.
pub const PROFILE_FILE: &str = "apparmor.profile";

/// Prefix of every service's profile name.
pub const PROFILE_PREFIX: &str = "ztms-";

/// Device nodes that crun creates in every container (the OCI runtime
/// spec's default devices), plus `/dev/tty`'s pseudo-terminals, which a
/// process may read and write.
const DEFAULT_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts/*",
];

/// Kernel filesystems of every container: nothing on them is executed.
const KERNEL_FILESYSTEMS: &[&str] = &["/proc", "/sys", "/dev"];

/// Returns the profile name of service `service`.
pub fn profile_name(service: &str) -> String {
    format!("{PROFILE_PREFIX}{service}")
}

/// A writable place of the container and whether programs on it may run.
struct Writable {
    path: PathBuf,
    exec: bool,
}

/// Writes the AppArmor profile of service `service` from its spec: the
/// profile name is [`profile_name`], and the rules follow the spec's
/// mounts, capabilities and device grants.
pub fn profile_text(service: &str, spec: &Spec) -> Result<String, RuntimeError> {
    let name = profile_name(service);
    let mounts = spec.mounts().as_deref().unwrap_or(&[]);
    let writable = writable_places(mounts);
    let capabilities = bounding_capabilities(spec);
    let devices = device_grants(spec, service)?;

    let mut text = String::new();
    let mut line = |rule: String| {
        text.push_str("  ");
        text.push_str(&rule);
        text.push('\n');
    };

    line("# Read the container's tree. Programs and libraries run only from".into());
    line("# the read-only root; the kernel filesystems and every writable".into());
    line("# place without an exec grant are denied below.".into());
    line("/{,**} r,".into());
    line("/** mix,".into());
    for system in KERNEL_FILESYSTEMS {
        line(format!("audit deny {system}/** mx,"));
    }

    line("# Writable tmpfs mounts and read-write volumes.".into());
    for place in &writable {
        line(format!("{} rwlk,", path_pattern(&place.path, "/{,**}")));
        if !place.exec {
            line(format!("audit deny {} mx,", path_pattern(&place.path, "/**")));
        }
    }

    // A read-only bind inside a writable mount (a secret in the /run
    // tmpfs) would otherwise be covered by that mount's write rule.
    for target in read_only_binds(mounts) {
        if writable.iter().any(|place| target.starts_with(&place.path)) {
            line(format!("audit deny {} wl,", path_pattern(&target, "{,/**}")));
        }
    }

    line("# Devices: the default nodes, POSIX shared memory and the granted devices.".into());
    for device in DEFAULT_DEVICES {
        line(format!("{device} rw,"));
    }
    line("/dev/shm/{,**} rwlk,".into());
    for grant in &devices {
        line(format!("{} rw,", path_pattern(&grant.path, "")));
    }

    line("# The processes of this container may change their own /proc files".into());
    line("# (comm, oom_score_adj), but no kernel setting.".into());
    line("owner /proc/[0-9]*/** w,".into());
    line("audit deny /proc/sys/** w,".into());
    line("audit deny /proc/sysrq-trigger rw,".into());
    line("audit deny /sys/** w,".into());
    line("audit deny /sys/kernel/security/** rw,".into());
    line("audit deny /sys/firmware/** r,".into());

    line("# Capabilities of the bounding set; any other is denied.".into());
    for capability in &capabilities {
        line(format!("capability {},", capability_rule_name(*capability)));
    }

    line("# TCP, UDP, Unix and netlink sockets; raw sockets only with NET_RAW.".into());
    for family in ["inet", "inet6"] {
        line(format!("network {family} stream,"));
        line(format!("network {family} dgram,"));
    }
    line("network unix,".into());
    line("network netlink dgram,".into());
    line("network netlink raw,".into());
    if capabilities.contains(&Capability::NetRaw) {
        line("network inet raw,".into());
        line("network inet6 raw,".into());
        line("network packet,".into());
    } else {
        // A bare `deny network raw` would also deny netlink's raw sockets
        // (ss, ip), since deny rules win over the allow rules above.
        line("audit deny network inet raw,".into());
        line("audit deny network inet6 raw,".into());
        line("audit deny network packet,".into());
    }

    line("# No mount, pivot_root or tracing. The container's own processes".into());
    line("# may read each other's /proc files and signal each other, and".into());
    line("# ztms-init and crun, which run unconfined, may signal them.".into());
    line("audit deny mount,".into());
    line("audit deny remount,".into());
    line("audit deny umount,".into());
    line("audit deny pivot_root,".into());
    line("audit deny ptrace (trace, tracedby),".into());
    line(format!("ptrace (read, readby) peer={name},"));
    line(format!("signal (send, receive) peer={name},"));
    line("signal (receive) peer=unconfined,".into());
    if shares_host_pid_namespace(spec) {
        line("# namespace:host-pid: the service may signal the appliance's processes.".into());
        line("signal (send) peer=unconfined,".into());
    }

    let mut profile = String::new();
    let _ = writeln!(profile, "# AppArmor profile of service {service}, written by ztms from the service's OCI spec.");
    let _ = writeln!(profile, "abi <abi/3.0>,");
    let _ = writeln!(profile);
    // attach_disconnected: files that crun opened before pivot_root (the
    // standard streams) lie outside the container's root, and AppArmor
    // denies a path it cannot name unless it attaches it to `/`.
    let _ = writeln!(profile, "profile {name} flags=(attach_disconnected) {{");
    profile.push_str(&text);
    profile.push_str("}\n");
    Ok(profile)
}

/// Returns true when the spec creates no PID namespace, which a
/// `namespace:host-pid` exception allows.
fn shares_host_pid_namespace(spec: &Spec) -> bool {
    let namespaces = spec.linux().as_ref().and_then(|linux| linux.namespaces().as_ref());
    !namespaces.is_some_and(|namespaces| namespaces.iter().any(|namespace| namespace.typ() == LinuxNamespaceType::Pid))
}

/// Returns the tmpfs mounts and read-write bind mounts of `mounts`
/// outside the kernel filesystems, with whether programs may run from them.
fn writable_places(mounts: &[Mount]) -> Vec<Writable> {
    mounts
        .iter()
        .filter(|mount| !KERNEL_FILESYSTEMS.iter().any(|system| mount.destination().starts_with(system)))
        .filter(|mount| {
            let tmpfs = mount.typ().as_deref() == Some("tmpfs");
            tmpfs || (is_bind(mount) && !has_option(mount, "ro"))
        })
        .map(|mount| Writable {
            path: mount.destination().clone(),
            exec: !has_option(mount, "noexec"),
        })
        .collect()
}

/// Returns the targets of the read-only bind mounts.
fn read_only_binds(mounts: &[Mount]) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|mount| is_bind(mount) && has_option(mount, "ro"))
        .map(|mount| mount.destination().clone())
        .collect()
}

fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind") || has_option(mount, "bind") || has_option(mount, "rbind")
}

fn has_option(mount: &Mount, option: &str) -> bool {
    mount.options().as_ref().is_some_and(|options| options.iter().any(|value| value == option))
}

/// Returns the capabilities of the process's bounding set, which contains
/// every capability the process can ever have.
fn bounding_capabilities(spec: &Spec) -> Vec<Capability> {
    let mut capabilities: Vec<Capability> = spec
        .process()
        .as_ref()
        .and_then(|process| process.capabilities().as_ref())
        .and_then(|sets| sets.bounding().as_ref())
        .map(|set| set.iter().copied().collect())
        .unwrap_or_default();
    capabilities.sort_by_key(|capability| capability.to_string());
    capabilities
}

/// Returns the capability's name in an AppArmor `capability` rule:
/// lowercase, without `CAP_` (`CAP_NET_BIND_SERVICE` is `net_bind_service`).
fn capability_rule_name(capability: Capability) -> String {
    let text = capability.to_string().to_ascii_lowercase();
    text.strip_prefix("cap_").unwrap_or(&text).to_string()
}

/// Writes `path` followed by the glob `suffix` as an AppArmor path
/// pattern: the glob characters of `path` are escaped so that it matches
/// literally, and a pattern with whitespace is quoted.
fn path_pattern(path: &Path, suffix: &str) -> String {
    let text = path.to_string_lossy();
    let mut escaped = String::with_capacity(text.len());
    for character in text.trim_end_matches('/').chars() {
        if matches!(character, '*' | '?' | '[' | ']' | '{' | '}' | '^' | '\\' | '"' | ',') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped.push_str(suffix);
    if escaped.chars().any(char::is_whitespace) {
        format!("\"{escaped}\"")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Service;
    use crate::runtime::{bundle_spec, NoImage, ServiceInput};

    const TYPICAL: &str = r#"
name = "jellyfin"
segment = "frontend"
command = ["/usr/bin/jellyfin"]
volumes = [
    { source = "config/jellyfin", target = "/config" },
    { source = "media", target = "/media", read_only = true },
]
secrets = ["api-key"]
"#;

    fn profile_of(text: &str) -> String {
        let service: Service = toml::from_str(text).expect("test service parses");
        let spec = bundle_spec(&ServiceInput::new(&service), &NoImage).expect("spec builds");
        profile_text(service.name.get_ref(), &spec).expect("profile builds")
    }

    fn with_exceptions(exceptions: &str) -> String {
        profile_of(&format!("{TYPICAL}exceptions = [{exceptions}]\n"))
    }

    /// Returns the rules (lines without comments) that are not deny rules.
    fn allow_rules(profile: &str) -> Vec<&str> {
        profile
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#') && !line.contains("deny "))
            .collect()
    }

    #[test]
    fn spec_names_profile() {
        let service: Service = toml::from_str(TYPICAL).unwrap();
        let spec = bundle_spec(&ServiceInput::new(&service), &NoImage).unwrap();
        let profile = spec.process().as_ref().unwrap().apparmor_profile().clone();
        assert_eq!(profile.as_deref(), Some("ztms-jellyfin"));
    }

    #[test]
    fn profile_header_and_flags() {
        let profile = profile_of(TYPICAL);
        assert!(profile.contains("abi <abi/3.0>,\n"), "{profile}");
        assert!(profile.contains("profile ztms-jellyfin flags=(attach_disconnected) {\n"), "{profile}");
        assert!(profile.ends_with("}\n"), "{profile}");
    }

    #[test]
    fn volume_read_write_gets_write_rule() {
        let profile = profile_of(TYPICAL);
        assert!(allow_rules(&profile).contains(&"/config/{,**} rwlk,"), "{profile}");
        assert!(profile.contains("audit deny /config/** mx,"), "{profile}");
    }

    #[test]
    fn volume_read_only_gets_no_write_rule() {
        let profile = profile_of(TYPICAL);
        let writes: Vec<&str> = allow_rules(&profile)
            .into_iter()
            .filter(|rule| rule.starts_with("/media"))
            .collect();
        assert!(writes.is_empty(), "rules for the read-only volume: {writes:?}");
    }

    #[test]
    fn default_tmpfs_writable_without_exec() {
        let profile = profile_of(TYPICAL);
        let allowed = allow_rules(&profile);
        for tmpfs in ["/tmp", "/run"] {
            assert!(allowed.contains(&format!("{tmpfs}/{{,**}} rwlk,").as_str()), "{profile}");
            assert!(profile.contains(&format!("audit deny {tmpfs}/** mx,")), "{profile}");
        }
    }

    #[test]
    fn exec_tmpfs_may_run_programs() {
        let profile = with_exceptions(r#"{ allow = "exec-tmpfs:/cache", reason = "JIT" }"#);
        assert!(allow_rules(&profile).contains(&"/cache/{,**} rwlk,"), "{profile}");
        assert!(!profile.contains("deny /cache/** mx"), "{profile}");
    }

    #[test]
    fn secret_inside_run_is_not_writable() {
        let profile = profile_of(TYPICAL);
        assert!(profile.contains("audit deny /run/secrets/api-key{,/**} wl,"), "{profile}");
    }

    #[test]
    fn root_tree_read_and_exec() {
        let profile = profile_of(TYPICAL);
        let allowed = allow_rules(&profile);
        assert!(allowed.contains(&"/{,**} r,"), "{profile}");
        assert!(allowed.contains(&"/** mix,"), "{profile}");
        for system in ["/proc", "/sys", "/dev"] {
            assert!(profile.contains(&format!("audit deny {system}/** mx,")), "{profile}");
        }
    }

    #[test]
    fn kernel_settings_not_writable() {
        let profile = profile_of(TYPICAL);
        assert!(profile.contains("audit deny /proc/sys/** w,"), "{profile}");
        assert!(profile.contains("audit deny /sys/** w,"), "{profile}");
        assert!(!allow_rules(&profile).iter().any(|rule| rule.starts_with("/sys") || rule.starts_with("/proc/sys")), "{profile}");
    }

    #[test]
    fn mount_and_trace_denied() {
        let profile = profile_of(TYPICAL);
        for rule in ["mount", "remount", "umount", "pivot_root", "ptrace (trace, tracedby)"] {
            assert!(profile.contains(&format!("audit deny {rule},\n")), "no deny for {rule}: {profile}");
        }
        assert!(profile.contains("ptrace (read, readby) peer=ztms-jellyfin,"), "{profile}");
        assert!(profile.contains("signal (send, receive) peer=ztms-jellyfin,"), "{profile}");
        assert!(profile.contains("signal (receive) peer=unconfined,"), "{profile}");
        assert!(!profile.contains("change_profile"), "{profile}");
    }

    #[test]
    fn host_pid_may_signal_appliance() {
        assert!(!profile_of(TYPICAL).contains("signal (send) peer=unconfined,"));
        let profile = with_exceptions(r#"{ allow = "namespace:host-pid", reason = "signals PID 1" }"#);
        assert!(profile.contains("signal (send) peer=unconfined,\n"), "{profile}");
    }

    #[test]
    fn no_capability_by_default() {
        let profile = profile_of(TYPICAL);
        assert!(!allow_rules(&profile).iter().any(|rule| rule.starts_with("capability")), "{profile}");
    }

    #[test]
    fn granted_capability_only() {
        let profile = with_exceptions(r#"{ allow = "cap:NET_BIND_SERVICE", reason = "port 80" }"#);
        let capabilities: Vec<&str> = allow_rules(&profile)
            .into_iter()
            .filter(|rule| rule.starts_with("capability"))
            .collect();
        assert_eq!(capabilities, ["capability net_bind_service,"]);
    }

    #[test]
    fn raw_sockets_need_net_raw() {
        let profile = profile_of(TYPICAL);
        assert!(profile.contains("audit deny network inet raw,"), "{profile}");
        assert!(profile.contains("audit deny network inet6 raw,"), "{profile}");
        assert!(profile.contains("audit deny network packet,"), "{profile}");
        assert!(!profile.contains("deny network raw,"), "a deny of every raw socket also denies netlink: {profile}");
        assert!(!allow_rules(&profile).iter().any(|rule| rule.contains(" raw,") && rule.contains("inet")), "{profile}");

        let granted = with_exceptions(r#"{ allow = "cap:NET_RAW", reason = "ping" }"#);
        let allowed = allow_rules(&granted);
        assert!(allowed.contains(&"network inet raw,"), "{granted}");
        assert!(allowed.contains(&"network packet,"), "{granted}");
        assert!(!granted.contains("deny network raw"), "{granted}");
    }

    #[test]
    fn socket_families_listed() {
        let profile = profile_of(TYPICAL);
        let networks: Vec<&str> = allow_rules(&profile)
            .into_iter()
            .filter(|rule| rule.starts_with("network"))
            .collect();
        assert_eq!(
            networks,
            [
                "network inet stream,",
                "network inet dgram,",
                "network inet6 stream,",
                "network inet6 dgram,",
                "network unix,",
                "network netlink dgram,",
                "network netlink raw,",
            ]
        );
    }

    #[test]
    fn device_grant_gets_rule() {
        let profile = with_exceptions(r#"{ allow = "device:/dev/dri/renderD128", reason = "transcoding" }"#);
        assert!(allow_rules(&profile).contains(&"/dev/dri/renderD128 rw,"), "{profile}");
    }

    #[test]
    fn glob_characters_escaped() {
        let text = format!("{TYPICAL}").replace("target = \"/config\"", "target = \"/my config*\"");
        let profile = profile_of(&text);
        assert!(profile.contains("\"/my config\\*/{,**}\" rwlk,"), "{profile}");
    }
}
