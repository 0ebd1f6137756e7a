//! The service runtime: QEMU tests of services run by crun under the
//! default policy, and `ztms audit` run as a program.

mod harness;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{boot, fresh_config, image, output_of, scratch, start, TestVm, BOOT_TIMEOUT};
use ztms::status::{PhaseState, ServiceStatus, Status};

fn service<'a>(status: &'a Status, name: &str) -> &'a ServiceStatus {
    status
        .services
        .iter()
        .find(|service| service.name == name)
        .unwrap_or_else(|| panic!("{name} missing from the status: {status:?}"))
}

#[test]
fn containers_run_under_default_policy() {
    let image = image("test-runtime");
    let mut vm = boot("containers_run_under_default_policy", &image);
    vm.wait_for_console("(?m)^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    // The services write their lines right after they start.
    std::thread::sleep(Duration::from_secs(3));
    assert!(vm.console().contains("service checked is healthy"), "the crun exec health check never passed");

    let status = vm.status(Duration::from_secs(10)).expect("status over virtio-serial");
    let web = service(&status, "web");
    let security = web.security.clone().unwrap_or_else(|| panic!("web has no security facts: {web:?}"));
    assert_eq!(security.cap_eff, 0, "CapEff {security:?}");
    assert_eq!(security.cap_prm, 0, "CapPrm {security:?}");
    assert_eq!(security.cap_bnd, 0, "CapBnd {security:?}");
    assert_eq!(security.cap_amb, 0, "CapAmb {security:?}");
    assert_eq!(security.no_new_privs, 1, "{security:?}");
    assert_eq!(security.seccomp, 2, "{security:?}");
    assert_eq!(security.uid, [1000; 4], "{security:?}");
    assert_eq!(security.gid, [1000; 4], "{security:?}");
    assert_ne!(Some(security.pid), web.pid, "the main process is crun's child, not crun");
    // The guest's kernel (Debian 12) has AppArmor, and crun applies the
    // profile that ztms-init loaded.
    assert_eq!(security.apparmor.as_deref(), Some("ztms-web (enforce)"), "{security:?}");

    for service in &status.services {
        eprintln!("measured {}: {:?}", service.name, service.container);
    }

    let console = vm.console();
    let rootwriter = output_of(&console, "rootwriter");
    assert!(
        rootwriter.iter().any(|line| line.contains("Read-only file system")),
        "rootwriter output: {rootwriter:?}"
    );
    assert!(rootwriter.iter().any(|line| line == "write-to-root-failed"), "{rootwriter:?}");

    let escaper = output_of(&console, "escaper");
    assert!(
        escaper.iter().any(|line| line.starts_with("unshare:") && line.contains("Operation not permitted")),
        "escaper output: {escaper:?}"
    );
    // busybox mount prints this message for EPERM from mount(2).
    assert!(
        escaper.iter().any(|line| line.starts_with("mount:") && line.contains("permission denied")),
        "escaper output: {escaper:?}"
    );
    assert!(escaper.iter().any(|line| line == "unshare-failed"), "{escaper:?}");
    assert!(escaper.iter().any(|line| line == "mount-failed"), "{escaper:?}");

    // Errno of each forbidden syscall, as the kernel's seccomp filter
    // returns it: EPERM (1) for the dangerous ones, ENOSYS (38) for clone3
    // so that glibc falls back to clone.
    // The line may have come before the ready line, which wait_for_console
    // has already passed, so the whole console is searched.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !vm.console().contains("syscalls: checks-done") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let syscalls = output_of(&vm.console(), "syscalls");
    for (name, errno) in [("keyctl", 1), ("bpf", 1), ("mount", 1), ("unshare", 1), ("clone3", 38)] {
        let expected = format!("syscall {name} errno {errno}");
        assert!(syscalls.contains(&expected), "expected {expected:?} in {syscalls:?}");
    }

    // What only the AppArmor profile denies fails with EACCES (13), and
    // a write the profile allows still succeeds. The health check, run by
    // crun exec, is confined by the same profile.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !vm.console().contains("confined: checks-done") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let confined = output_of(&vm.console(), "confined");
    for expected in [
        "label ztms-confined (enforce)",
        "socket alg errno 13",
        "create /dev/mqueue/probe errno 13",
        "create /tmp/probe errno 0",
        "check label ztms-confined (enforce)",
    ] {
        assert!(confined.iter().any(|line| line == expected), "expected {expected:?} in {confined:?}");
    }
    let console = vm.console();
    let load = console.lines().find(|line| line.contains("apparmor: loaded"));
    assert!(load.is_some(), "no profile load line:\n{}", vm.console_tail(40));
    eprintln!("measured profile load: {}", load.unwrap_or_default());
}

#[test]
fn memory_hog_is_killed_and_backs_off() {
    let image = image("test-runtime");
    let mut vm = boot("memory_hog_is_killed_and_backs_off", &image);
    vm.wait_for_console("service web is healthy", BOOT_TIMEOUT).unwrap();
    vm.wait_for_console("service hog .* restarting in", Duration::from_secs(60)).unwrap();

    // Backoff doubles from one second, so in 20 s the hog restarts a few
    // times but not once per kill.
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let status = vm.status(Duration::from_secs(10)).expect("status");
    let hog = service(&status, "hog");
    assert!(hog.restarts >= 2, "{hog:?}");
    assert!(hog.restarts <= 10, "hog restarts without backoff after {:?}: {hog:?}", started.elapsed());
    let last_exit = hog.last_exit.clone().unwrap_or_default();
    // crun reports a container killed by SIGKILL as exit status 137.
    assert!(last_exit.contains("137") || last_exit.contains("SIGKILL"), "{hog:?}");

    let web = service(&status, "web");
    assert!(web.healthy, "web was affected by the memory hog: {web:?}");
    assert_eq!(web.restarts, 0, "{web:?}");
    // The count covers every zombie, and the hog's killed processes are
    // zombies for a moment until crun reaps them. Zombies that PID 1
    // leaves pile up, so they show in every sample.
    let mut samples = vec![status.zombies];
    while samples.last() != Some(&0) && samples.len() < 5 {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(vm.status(Duration::from_secs(10)).expect("status").zombies);
    }
    assert_eq!(samples.last(), Some(&0), "PID 1 left zombies: {samples:?} in samples one second apart");
}

/// Waits for the line of `service` that starts with `prefix` and returns
/// the rest of it.
fn service_line(vm: &TestVm, service: &str, prefix: &str) -> String {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let lines = output_of(&vm.console(), service);
        if let Some(rest) = lines.iter().find_map(|line| line.strip_prefix(prefix)) {
            return rest.to_string();
        }
        assert!(Instant::now() < deadline, "no line {prefix:?} from {service}:\n{}", vm.console_tail(40));
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Checks the secrets of one boot and returns the SHA-256 of the shared
/// secret as the services print it.
fn check_secrets(vm: &TestVm, boot: &str) -> String {
    // Each service prints this line after its checks.
    service_line(vm, "secret-reader", "checks-done");
    service_line(vm, "secret-peer", "checks-done");

    let reader_hash = service_line(vm, "secret-reader", "secret-sha256: ");
    let peer_hash = service_line(vm, "secret-peer", "secret-sha256: ");
    assert_eq!(reader_hash.len(), 64, "{boot}: {reader_hash:?}");
    assert_eq!(reader_hash, peer_hash, "{boot}: the two services read different secrets");
    // The service's own user reads it: 1000:1000 is the default user.
    assert_eq!(service_line(vm, "secret-reader", "secret-mode: "), "400 1000:1000", "{boot}");
    // 32 random bytes as base64 without padding or newline.
    assert_eq!(service_line(vm, "secret-reader", "secret-bytes: "), "43", "{boot}");

    let reader = output_of(&vm.console(), "secret-reader");
    assert!(reader.iter().any(|line| line == "secret-not-in-env"), "{boot}: {reader:?}");
    assert!(!reader.iter().any(|line| line == "secret-in-env"), "{boot}: {reader:?}");
    assert!(reader.iter().any(|line| line == "secret-not-writable"), "{boot}: {reader:?}");
    let peer = output_of(&vm.console(), "secret-peer");
    assert!(peer.iter().any(|line| line == "other-secret-absent"), "{boot}: {peer:?}");

    let status = vm.status(Duration::from_secs(10)).expect("status over virtio-serial");
    let phase = status.phases.iter().find(|phase| phase.name == "secrets").expect("secrets phase in the status");
    assert_eq!(phase.state, PhaseState::Done, "{boot}: {phase:?}");
    reader_hash
}

#[test]
fn secrets_generated_once_and_kept() {
    let test = "secrets_generated_once_and_kept";
    let image = image("test-runtime");
    let mut config = fresh_config(test, &image);

    let mut vm = start(test, &config);
    vm.wait_for_console("(?m)^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    let first = check_secrets(&vm, "first boot");
    let console = vm.console();
    assert!(
        console.contains("secrets: generated test-token for secret-reader, secret-peer"),
        "no generation line on the first boot"
    );
    vm.power_down(Duration::from_secs(90)).expect("clean power-off");
    drop(vm);

    // Second boot on the same disk and TPM: the secret is kept.
    config.keep_disk = true;
    let mut vm = start(test, &config);
    vm.wait_for_console("(?m)^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    let second = check_secrets(&vm, "second boot");
    assert_eq!(first, second, "the secret changed across a reboot");
    assert!(!vm.console().contains("secrets: generated"), "a secret was generated again");
    vm.power_down(Duration::from_secs(90)).expect("clean power-off");
}

fn ztms(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ztms")).args(args).output().expect("run ztms")
}

fn definition(test: &str, service: &str) -> PathBuf {
    let dir = scratch().join("audit").join(test);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("image.toml");
    let text = format!("[image]\nname = \"audit\"\nversion = \"1\"\n\n[[service]]\nname = \"app\"\nsegment = \"backend\"\ncommand = [\"/bin/app\"]\n{service}");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn audit_passes_default_image() {
    let path = harness::repo().join("images/media-server.toml");
    let output = ztms(&["audit", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn audit_shows_capability_reason() {
    let path = definition(
        "audit_shows_capability_reason",
        "exceptions = [{ allow = \"cap:SYS_ADMIN\", reason = \"mounts FUSE filesystems\" }]\n",
    );
    let output = ztms(&["audit", path.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&output.stdout);
    let row = table.lines().find(|line| line.starts_with("5.3")).unwrap_or_else(|| panic!("no 5.3 row:\n{table}"));
    assert!(row.contains("pass"), "{row}");
    assert!(row.contains("mounts FUSE filesystems"), "{row}");
    // SYS_ADMIN still makes the container privileged (5.4), reason or not.
    let privileged = table.lines().find(|line| line.starts_with("5.4")).unwrap_or_else(|| panic!("no 5.4 row:\n{table}"));
    assert!(privileged.contains("FAIL"), "{privileged}");
    assert!(privileged.contains("SYS_ADMIN"), "{privileged}");
    assert!(!output.status.success(), "{table}");
}

#[test]
fn audit_fails_root_user() {
    let path = definition("audit_fails_root_user", "user = \"0:0\"\n");
    let output = ztms(&["audit", path.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{table}");
    let row = table.lines().find(|line| line.starts_with("4.1")).unwrap_or_else(|| panic!("no 4.1 row:\n{table}"));
    assert!(row.contains("FAIL"), "{row}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("audit items failed"));
}

/// Returns the (item, service) pairs of the FAIL rows of an audit table.
fn failed_rows(table: &str) -> Vec<(String, String)> {
    let mut failed: Vec<(String, String)> = table
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            match cells.as_slice() {
                [item, service, "FAIL", ..] => Some((item.to_string(), service.to_string())),
                _ => None,
            }
        })
        .collect();
    failed.sort();
    failed
}

#[test]
fn audit_through_status_socket() {
    let test = "audit_through_status_socket";
    let definition = harness::repo().join("images/test-runtime.toml");
    let offline = ztms(&["audit", definition.to_str().unwrap()]);
    let offline_table = String::from_utf8_lossy(&offline.stdout).into_owned();

    let image = image("test-runtime");
    let mut vm = boot(test, &image);
    vm.wait_for_console("(?m)^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    let socket = vm.paths.status.clone();
    let online = ztms(&["audit", "--socket", socket.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&online.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&online.stderr).into_owned();

    assert!(table.starts_with("ITEM"), "no table header:\n{table}\nstderr: {stderr}");
    for item in ["5.1", "5.3", "5.25"] {
        let row = table
            .lines()
            .find(|line| line.split_whitespace().take(2).eq([item, "web"]))
            .unwrap_or_else(|| panic!("no {item} row for web:\n{table}"));
        assert!(row.contains(" pass "), "{row}");
    }
    assert!(!stderr.contains("was not audited"), "{stderr}");

    // The specs that run carry the same policy as the planned ones, so
    // both audits fail the same rows and exit alike.
    assert_eq!(failed_rows(&table), failed_rows(&offline_table), "online:\n{table}\noffline:\n{offline_table}");
    assert_eq!(table.lines().last(), offline_table.lines().last(), "summary lines differ");
    assert_eq!(online.status.success(), failed_rows(&table).is_empty(), "{table}\nstderr: {stderr}");
    assert_eq!(online.status.code(), offline.status.code(), "stderr: {stderr}");
}
