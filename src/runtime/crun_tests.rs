//! Runs a generated spec with the host's crun and checks the process from
//! the host's `/proc`: the one test here where the kernel, not the spec
//! text, shows the policy. It needs root, crun, a statically linked
//! busybox at /bin/busybox (Debian's busybox-static) and `ip`, and skips
//! with a message when one is missing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::*;
use crate::config::Service;

const BUSYBOX: &str = "/bin/busybox";

/// Checks run inside the container; each prints `NAME ok` on success.
const CHECKS: &str = r#"
touch /root-file 2>/dev/null || echo root-read-only ok
touch /tmp/file && echo tmp-writable ok
cp /bin/busybox /tmp/busybox && { /tmp/busybox true 2>/dev/null || echo tmp-noexec ok; }
touch /run/file && echo run-writable ok
cat /run/secrets/token | grep -q s3cret && echo secret-readable ok
[ "$(stat -c '%a %u' /run/secrets/token)" = "400 1000" ] && echo secret-owner ok
echo x 2>/dev/null > /run/secrets/token || echo secret-not-writable ok
[ ! -e /run/secrets/other ] && echo other-secret-absent ok
touch /config/file && echo volume-writable ok
[ "$(id -u):$(id -g)" = 1000:1000 ] && echo user ok
unshare -n true 2>/dev/null || echo unshare-denied ok
mount -t tmpfs none /tmp 2>/dev/null || echo mount-denied ok
grep -qx 'nameserver 10.64.0.1' /etc/resolv.conf && echo resolver-bound ok
echo x 2>/dev/null >> /etc/resolv.conf || echo resolver-not-writable ok
"#;

fn missing_requirement() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for program in ["crun", "ip"] {
        let found = Command::new(program).arg("--version").output().is_ok_and(|output| output.status.success())
            || Command::new(program).arg("-V").output().is_ok_and(|output| output.status.success());
        if !found {
            return Some(format!("{program} not found"));
        }
    }
    let busybox = Command::new("file").arg(BUSYBOX).output();
    let static_busybox = match busybox {
        Ok(output) => String::from_utf8_lossy(&output.stdout).contains("statically linked"),
        // Without file(1), accept any busybox at the path.
        Err(_) => Path::new(BUSYBOX).exists(),
    };
    if !static_busybox {
        return Some(format!("{BUSYBOX} is not a statically linked busybox (install busybox-static)"));
    }
    None
}

/// Everything the test creates, removed on drop even when an assert fails.
struct Sandbox {
    directory: tempfile::TempDir,
    crun_root: PathBuf,
    container: String,
    netns: String,
    cgroup_parent: String,
}

/// Mounts the cgroup v1 controllers alone on a private /sys/fs/cgroup, then
/// runs crun. crun 1.8 rejects the hybrid layout (v1 controllers plus a v2
/// hierarchy with controllers) that some test hosts have. The appliance
/// itself uses cgroup v2 alone, and the private mount namespace leaves the
/// host's view unchanged.
const LEGACY_CGROUP_WRAPPER: &str = r#"
set -e
mount -t tmpfs ztms-test-cgroup /sys/fs/cgroup
for controller in cpu cpuacct cpuset memory devices freezer blkio pids; do
    mkdir /sys/fs/cgroup/$controller
    mount -t cgroup -o $controller cgroup /sys/fs/cgroup/$controller
done
exec crun "$@"
"#;

/// Returns whether the host mounts cgroup v1 controllers beside a v2 hierarchy.
fn hybrid_cgroups() -> bool {
    Path::new("/sys/fs/cgroup/unified").is_dir() && Path::new("/sys/fs/cgroup/memory").is_dir()
}

impl Sandbox {
    fn crun(&self, args: &[&str]) -> Output {
        let mut command = if hybrid_cgroups() {
            let mut command = Command::new("unshare");
            command.args(["--mount", "--propagation", "private", "sh", "-c", LEGACY_CGROUP_WRAPPER, "sh"]);
            command
        } else {
            Command::new("crun")
        };
        command.arg("--root").arg(&self.crun_root).args(args);
        if args.contains(&"--detach") {
            // The container inherits crun's stdio, so a pipe would stay
            // open until it exits; a file lets crun return at once.
            let log = self.directory.path().join("crun-detach.log");
            let file = fs::File::create(&log).unwrap();
            command.stdout(file.try_clone().unwrap()).stderr(file);
            let status = command.status().expect("crun runs");
            return Output {
                status,
                stdout: Vec::new(),
                stderr: fs::read(&log).unwrap_or_default(),
            };
        }
        command.output().expect("crun runs")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.crun(&["kill", &self.container, "KILL"]);
        let _ = self.crun(&["delete", "--force", &self.container]);
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).output();
        // crun removes the service's cgroup on delete; the parent is ours.
        if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
            for hierarchy in hierarchies.flatten() {
                let _ = fs::remove_dir(hierarchy.path().join(&self.cgroup_parent));
            }
        }
        let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.cgroup_parent));
        let _ = &self.directory;
    }
}

fn service() -> Service {
    let text = r#"
name = "probe"
segment = "backend"
command = ["/bin/busybox", "sh", "-c", "exit 0"]
volumes = [{ source = "config/probe", target = "/config" }]
secrets = ["token"]
"#;
    toml::from_str(text).unwrap()
}

/// Writes the bundle: busybox in a rootfs with its mount points, the data
/// directory, a secrets directory with a secret the service lists and one
/// it does not, a resolver file, and `config.json` for `command`.
fn write_bundle(sandbox: &Sandbox, service: &Service, command: &[&str]) -> PathBuf {
    let base = sandbox.directory.path();
    let rootfs = base.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "touch", "cp", "cat", "grep", "id", "unshare", "mount", "true", "sleep", "echo", "stat"] {
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    for directory in ["proc", "dev", "sys", "tmp", "run", "etc"] {
        fs::create_dir_all(rootfs.join(directory)).unwrap();
    }
    fs::create_dir_all(rootfs.join("var")).unwrap();
    let _ = std::os::unix::fs::symlink("/run", rootfs.join("var/run"));

    let data = base.join("data");
    let config = data.join("config/probe");
    fs::create_dir_all(&config).unwrap();
    std::os::unix::fs::chown(&config, Some(1000), Some(1000)).unwrap();
    let secrets = base.join("secrets");
    fs::create_dir_all(&secrets).unwrap();
    fs::write(secrets.join("token"), "s3cret").unwrap();
    fs::set_permissions(secrets.join("token"), fs::Permissions::from_mode(0o400)).unwrap();
    std::os::unix::fs::chown(secrets.join("token"), Some(1000), Some(1000)).unwrap();
    fs::write(secrets.join("other"), "not for this service").unwrap();
    let resolver = base.join("resolv.conf");
    fs::write(&resolver, "nameserver 10.64.0.1\n").unwrap();
    // The image's own file, which the bind covers.
    fs::write(rootfs.join("etc/resolv.conf"), "nameserver 192.0.2.1\n").unwrap();

    let mut definition = service.clone();
    definition.command = command.iter().map(|arg| arg.to_string()).collect();
    // Raising the hard limit needs CAP_SYS_RESOURCE, which a test host
    // (such as a sandbox) may lack; ztms-init as PID 1 has it.
    definition.limits.nofile = definition.limits.nofile.min(hard_nofile_limit());
    let mut input = ServiceInput::new(&definition);
    input.rootfs = rootfs.clone();
    input.netns = Some(Path::new("/run/netns").join(&sandbox.netns));
    input.cgroup = Path::new("/").join(&sandbox.cgroup_parent).join("probe");
    input.data_dir = data;
    input.secrets = Some(secrets);
    input.resolv_conf = Some(resolver);

    let mut spec = bundle_spec(&input, &RootfsDir(rootfs.clone())).expect("spec builds");
    // crun fails on a profile that the host has not loaded, so the spec
    // runs without one here. tests/runtime.rs checks the profile in a VM.
    if let Some(process) = spec.process_mut() {
        process.set_apparmor_profile(None);
    }
    for point in mount_points(&spec) {
        let target = rootfs.join(point.strip_prefix("/").unwrap());
        if !target.exists() {
            fs::create_dir_all(target).unwrap();
        }
    }
    spec.save(base.join("config.json")).unwrap();
    base.to_path_buf()
}

/// Returns this process's hard RLIMIT_NOFILE from `/proc/self/limits`.
fn hard_nofile_limit() -> u64 {
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|line| line.starts_with("Max open files")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    fields[4].parse().unwrap_or(u64::MAX)
}

fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

#[test]
fn crun_runs_spec_with_default_policy() {
    if let Some(reason) = missing_requirement() {
        eprintln!("skipping crun_runs_spec_with_default_policy: {reason}");
        return;
    }

    let id = std::process::id();
    let directory = tempfile::tempdir().unwrap();
    let sandbox = Sandbox {
        crun_root: directory.path().join("crun-state"),
        directory,
        container: format!("ztms-runtime-test-{id}"),
        netns: format!("ztms-runtime-test-{id}"),
        cgroup_parent: format!("ztms-runtime-test-{id}"),
    };
    let added = Command::new("ip").args(["netns", "add", &sandbox.netns]).output().unwrap();
    assert!(added.status.success(), "ip netns add: {}", String::from_utf8_lossy(&added.stderr));

    // Behaviour inside the container, in the foreground.
    let service = service();
    let bundle = write_bundle(&sandbox, &service, &["/bin/busybox", "sh", "-c", CHECKS]);
    let bundle_text = bundle.to_str().unwrap();
    let output = sandbox.crun(&["run", "--bundle", bundle_text, &sandbox.container]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for check in [
        "root-read-only",
        "tmp-writable",
        "tmp-noexec",
        "run-writable",
        "secret-readable",
        "secret-owner",
        "secret-not-writable",
        "other-secret-absent",
        "volume-writable",
        "user",
        "unshare-denied",
        "mount-denied",
        "resolver-bound",
        "resolver-not-writable",
    ] {
        assert!(
            stdout.lines().any(|line| line == format!("{check} ok")),
            "check {check} failed; stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    let _ = sandbox.crun(&["delete", "--force", &sandbox.container]);

    // Credentials of the running process, read from the host.
    write_bundle(&sandbox, &service, &["/bin/busybox", "sleep", "60"]);
    let started = sandbox.crun(&["run", "--detach", "--bundle", bundle_text, &sandbox.container]);
    assert!(started.status.success(), "crun run --detach: {}", String::from_utf8_lossy(&started.stderr));
    let state = sandbox.crun(&["state", &sandbox.container]);
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).expect("crun state prints JSON");
    let pid = state["pid"].as_u64().expect("crun state has a pid");

    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        // Until crun has executed the program, the process is crun's init.
        if status_field(&status, "Name") == Some("busybox") || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status_field(&status, "Name"), Some("busybox"), "{status}");
    assert_eq!(status_field(&status, "CapEff"), Some("0000000000000000"));
    assert_eq!(status_field(&status, "CapPrm"), Some("0000000000000000"));
    assert_eq!(status_field(&status, "CapBnd"), Some("0000000000000000"));
    assert_eq!(status_field(&status, "CapAmb"), Some("0000000000000000"));
    assert_eq!(status_field(&status, "NoNewPrivs"), Some("1"));
    assert_eq!(status_field(&status, "Seccomp"), Some("2"));
    let uid = status_field(&status, "Uid").unwrap();
    assert!(uid.split_whitespace().all(|field| field == "1000"), "Uid: {uid}");
    let gid = status_field(&status, "Gid").unwrap();
    assert!(gid.split_whitespace().all(|field| field == "1000"), "Gid: {gid}");
    assert_eq!(status_field(&status, "Groups"), Some(""));

    let netns = fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let host_netns = fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(netns, host_netns, "the container shares the host's network namespace");
}
