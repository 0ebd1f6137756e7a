//! Services as OCI containers run by crun: the bundle prepared at boot from
//! the spec that the builder wrote into the image, the crun command lines,
//! and the facts read back from `/proc` about the running container.
//!
//! `crun run` runs in the foreground as the supervised child, so its exit
//! status is the container's, and it forwards the signals it receives
//! (SIGTERM included) to the container's main process (checked with
//! crun 1.8.1).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Spec;

use crate::init::{apparmor, netns};
use crate::runtime::{self, DeviceNode};
use crate::status::SecurityFacts;

/// The OCI runtime in the root image.
pub const CRUN: &str = "/usr/bin/crun";
/// State directory of crun (`crun --root`).
pub const CRUN_ROOT: &str = "/run/crun";
/// Bundles written at boot, one directory per service.
pub const RUN_BUNDLES: &str = "/run/ztms/bundles";
/// Root of the services installed from Debian packages: a non-recursive
/// bind mount of `/`. crun cannot pivot_root into `/` itself (EBUSY), and
/// the bind leaves out the mounts under `/`, such as `/data` and `/run`.
pub const ROOT_BIND: &str = "/run/ztms/rootfs";
/// Time allowed for `crun delete --force` of a stale container.
const DELETE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bit of SIGTERM in the `SigCgt` mask of `/proc/<pid>/status`.
const SIGTERM_BIT: u64 = 1 << (libc::SIGTERM - 1);

/// Prepares everything `crun run` needs for service `name` and returns the
/// bundle directory: the service's network namespace with `lo` up, its
/// volume directories on `/data`, its resolver file, a stale container of
/// the same name removed, and `config.json` with the device grants filled
/// in and its AppArmor profile checked to be in force.
pub fn prepare(name: &str) -> Result<PathBuf, String> {
    let namespace = netns::create(name).map_err(|error| error.to_string())?;
    netns::run_in(&namespace, || crate::init::network::set_up("lo"))
        .map_err(|error| error.to_string())?
        .map_err(|error| format!("bringing up lo in network namespace {name} failed: {error}"))?;

    let source = Path::new(runtime::BUNDLES_DIR).join(name).join("config.json");
    let mut spec = Spec::load(&source).map_err(|error| format!("reading the bundle spec {} failed: {error}", source.display()))?;
    runtime::fill_device_grants(&mut spec, name, DeviceNode::stat).map_err(|error| error.to_string())?;
    apparmor::prepare_spec(name, &mut spec)?;
    if let Some(root) = spec.root_mut() {
        if root.path() == Path::new("/") {
            bind_root()?;
            root.set_path(PathBuf::from(ROOT_BIND));
        }
    }
    create_host_directories(name, &spec)?;
    let binds_resolver = spec.mounts().iter().flatten().any(|mount| {
        mount.source().as_ref().is_some_and(|source| source.starts_with(crate::net::resolv::RESOLV_DIR))
    });
    if binds_resolver {
        crate::init::network::resolv::ensure(name)?;
    }

    let bundle = Path::new(RUN_BUNDLES).join(name);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&bundle)
        .map_err(|error| format!("creating {} failed: {error}", bundle.display()))?;
    let target = bundle.join("config.json");
    spec.save(&target).map_err(|error| format!("writing {} failed: {error}", target.display()))?;

    remove_stale(name)?;
    Ok(bundle)
}

/// Bind-mounts `/` read-only on [`ROOT_BIND`] unless that is done already.
fn bind_root() -> Result<(), String> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted = mounts.lines().any(|line| line.split(' ').nth(4) == Some(ROOT_BIND));
    if mounted {
        return Ok(());
    }
    let failed = |error: nix::Error| format!("bind-mounting / on {ROOT_BIND} failed: {error}");
    fs::create_dir_all(ROOT_BIND).map_err(|error| format!("creating {ROOT_BIND} failed: {error}"))?;
    mount(Some("/"), ROOT_BIND, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(failed)?;
    let read_only = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(None::<&str>, ROOT_BIND, None::<&str>, read_only, None::<&str>).map_err(failed)?;
    mount(None::<&str>, ROOT_BIND, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>).map_err(failed)?;
    Ok(())
}

/// Creates the host side of the volume bind mounts; a new directory
/// belongs to the service's user. A missing secret file, deleted to rotate
/// the secret, is generated again.
fn create_host_directories(name: &str, spec: &Spec) -> Result<(), String> {
    let (uid, gid) = spec
        .process()
        .as_ref()
        .map(|process| (process.user().uid(), process.user().gid()))
        .unwrap_or((0, 0));
    let data = Path::new(runtime::DATA_DIR);
    let secrets = Path::new(runtime::SECRETS_DIR);
    for mount in spec.mounts().iter().flatten() {
        let Some(host) = mount.source() else { continue };
        if mount.typ().as_deref() != Some("bind") || !host.starts_with(data) || host.exists() {
            continue;
        }
        if host.starts_with(secrets) {
            crate::init::secrets::ensure_for_service(host, name, uid, gid)?;
            continue;
        }
        fs::create_dir_all(host).map_err(|error| format!("creating {} failed: {error}", host.display()))?;
        std::os::unix::fs::chown(host, Some(uid), Some(gid))
            .and_then(|()| fs::set_permissions(host, fs::Permissions::from_mode(0o750)))
            .map_err(|error| format!("setting the owner of {} failed: {error}", host.display()))?;
    }
    Ok(())
}

/// Removes a container state of `name` that a killed `crun run` left,
/// which would make the next `crun run` of the same name fail.
fn remove_stale(name: &str) -> Result<(), String> {
    if !Path::new(CRUN_ROOT).join(name).exists() {
        return Ok(());
    }
    log::info!("removing the stale container state of {name} with crun delete --force");
    run_to_completion(&[CRUN, "--root", CRUN_ROOT, "delete", "--force", name], DELETE_TIMEOUT)
        .map_err(|error| format!("crun delete --force {name} failed: {error}"))
}

/// Runs a short command and waits for it, killing it after `timeout`.
/// Waiting here cannot race PID 1's reaper, because the reaper runs on this
/// same thread only between calls.
fn run_to_completion(argv: &[&str], timeout: Duration) -> Result<(), String> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| error.to_string())?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut message = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = io::Read::read_to_string(&mut stderr, &mut message);
                }
                return Err(format!("{status}: {}", message.trim()));
            }
            Ok(None) if started.elapsed() < timeout => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {} s", timeout.as_secs()));
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// Returns the command line that runs service `name` from `bundle`.
pub fn run_argv(name: &str, bundle: &Path) -> Vec<String> {
    vec![
        CRUN.into(),
        "--root".into(),
        CRUN_ROOT.into(),
        "run".into(),
        "--bundle".into(),
        bundle.to_string_lossy().into_owned(),
        name.into(),
    ]
}

/// Returns the command line that runs `command` inside the running
/// container `name` as `uid:gid`, under the container's policy and, when
/// `apparmor_profile` is set, under that AppArmor profile.
pub fn exec_argv(name: &str, uid: u32, gid: u32, apparmor_profile: Option<&str>, command: &[String]) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        CRUN.into(),
        "--root".into(),
        CRUN_ROOT.into(),
        "exec".into(),
        "--user".into(),
        format!("{uid}:{gid}"),
    ];
    if let Some(profile) = apparmor_profile {
        argv.push(format!("--apparmor={profile}"));
    }
    argv.push(name.into());
    argv.extend(command.iter().cloned());
    argv
}

/// Returns the AppArmor profile that a `crun exec` in container `name`
/// runs under: the service's own, or none on a kernel without AppArmor.
pub fn exec_apparmor_profile(name: &str) -> Option<String> {
    apparmor::kernel_has_apparmor().then(|| runtime::profile_name(name))
}

/// Returns the container's main process: the child of the `crun run`
/// process `crun_pid`, once it runs the service's program (before that,
/// the child is still crun preparing the container).
pub fn main_pid(crun_pid: i32) -> Option<i32> {
    let tasks = fs::read_dir(format!("/proc/{crun_pid}/task")).ok()?;
    for task in tasks.flatten() {
        let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|pid| pid.parse::<i32>().ok()) {
            let comm = fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if !comm.is_empty() && comm.trim_end() != "crun" {
                return Some(child);
            }
        }
    }
    None
}

/// Returns the value of `key` in the text of `/proc/<pid>/status`.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix(':')))
        .map(str::trim)
}

/// Parses the four ids of a `Uid:` or `Gid:` line: real, effective, saved, filesystem.
fn ids(value: &str) -> Option<[u32; 4]> {
    let parsed: Vec<u32> = value.split_whitespace().filter_map(|id| id.parse().ok()).collect();
    parsed.try_into().ok()
}

/// Parses the security facts from the text of `/proc/<pid>/status`.
pub fn parse_security(pid: i32, status: &str) -> Option<SecurityFacts> {
    let mask = |key| status_field(status, key).and_then(|value| u64::from_str_radix(value, 16).ok());
    let number = |key| status_field(status, key).and_then(|value| value.parse::<u32>().ok());
    Some(SecurityFacts {
        pid,
        cap_eff: mask("CapEff")?,
        cap_prm: mask("CapPrm")?,
        cap_bnd: mask("CapBnd")?,
        cap_amb: mask("CapAmb")?,
        no_new_privs: number("NoNewPrivs")?,
        seccomp: number("Seccomp")?,
        uid: ids(status_field(status, "Uid")?)?,
        gid: ids(status_field(status, "Gid")?)?,
        apparmor: None,
    })
}

/// Reads the security facts of process `pid`.
pub fn security(pid: i32) -> Option<SecurityFacts> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut facts = parse_security(pid, &status)?;
    facts.apparmor = apparmor_label(pid);
    Some(facts)
}

/// Returns the AppArmor label of process `pid`. Linux 5.1 and later have
/// `attr/apparmor/current`, which names AppArmor's label even when another
/// LSM owns `attr/current`.
fn apparmor_label(pid: i32) -> Option<String> {
    if !apparmor::kernel_has_apparmor() {
        return None;
    }
    ["attr/apparmor/current", "attr/current"].iter().find_map(|file| {
        let text = fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
        let label = text.trim_end_matches(['\n', '\0']).trim();
        (!label.is_empty()).then(|| label.to_string())
    })
}

/// Returns VmRSS of process `pid` in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "VmRSS")?.trim_end_matches("kB").trim().parse().ok()
}

/// Returns true when process `pid` has a SIGTERM handler. The kernel drops
/// a SIGTERM to a PID namespace's init that has none, so stopping such a
/// container needs SIGKILL.
pub fn catches_sigterm(pid: i32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status_field(&status, "SigCgt")
        .and_then(|value| u64::from_str_radix(value, 16).ok())
        .is_some_and(|mask| mask & SIGTERM_BIT != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tbusybox\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n\
        SigCgt:\t0000000000004002\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
        CapEff:\t0000000000000000\nCapBnd:\t0000000000000400\nCapAmb:\t0000000000000000\n\
        NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";

    #[test]
    fn security_facts_are_parsed() {
        let facts = parse_security(42, STATUS).unwrap();
        assert_eq!(facts.cap_bnd, 0x400);
        assert_eq!(facts.cap_eff, 0);
        assert_eq!(facts.no_new_privs, 1);
        assert_eq!(facts.seccomp, 2);
        assert_eq!(facts.uid, [1000; 4]);
        assert_eq!(facts.gid, [1000; 4]);
    }

    #[test]
    fn security_facts_need_every_field() {
        assert_eq!(parse_security(42, "Uid:\t0\t0\t0\t0\n"), None);
    }

    #[test]
    fn exec_runs_as_service_user() {
        let argv = exec_argv("web", 1000, 1001, None, &["/bin/true".into()]);
        assert_eq!(argv[3..], ["exec", "--user", "1000:1001", "web", "/bin/true"]);
    }

    #[test]
    fn exec_names_apparmor_profile() {
        let argv = exec_argv("web", 1000, 1001, Some("ztms-web"), &["/bin/true".into()]);
        assert_eq!(argv[3..], ["exec", "--user", "1000:1001", "--apparmor=ztms-web", "web", "/bin/true"]);
    }
}
