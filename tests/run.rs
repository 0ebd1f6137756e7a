//! Tests of `ztms run` as a user runs it: the real binary, its exit status,
//! its messages, and the processes it leaves behind.

mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{image, scratch};

fn ztms() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ztms"))
}

#[test]
fn until_ready_passes_on_test_image() {
    let image = image("test-boot");
    let output = ztms()
        .args(["run", "--headless", "--until-ready", "--timeout", "240", "--forward", "18443:443"])
        .arg(&image)
        .stdin(Stdio::null())
        .output()
        .expect("run ztms");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ztms run failed:\n{stderr}");
    assert!(stderr.contains("ztms-init: phase services done"), "phases not printed:\n{stderr}");
    assert!(stderr.contains("appliance ready after"), "{stderr}");
}

#[test]
fn failed_boot_reports_console_tail() {
    let source = image("test-boot");
    let dir = scratch().join("failed-boot");
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.raw");
    std::fs::copy(&source, &broken).unwrap();
    // Zero the start of slot A's root partition: the EROFS superblock and
    // the first verity-protected blocks.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(source.with_file_name("manifest.json")).unwrap()).unwrap();
    let root_offset = manifest["partitions"]["partitions"][1]["offset"].as_u64().unwrap();
    let mut bytes = std::fs::read(&broken).unwrap();
    let start = root_offset as usize;
    bytes[start..start + 8192].fill(0);
    std::fs::write(&broken, bytes).unwrap();

    let output = ztms()
        .args(["run", "--headless", "--until-ready", "--timeout", "240", "--forward", "18444:443"])
        .arg(&broken)
        .stdin(Stdio::null())
        .output()
        .expect("run ztms");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a broken root booted:\n{stderr}");
    assert!(stderr.contains("boot failed"), "{stderr}");
    assert!(stderr.contains("verity"), "reason does not name verity:\n{stderr}");
    assert!(stderr.contains("Last console lines"), "{stderr}");
}

#[test]
fn missing_image_is_clear_error() {
    let output = ztms().args(["run", "--headless", "/nonexistent/image.raw"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("/nonexistent/image.raw"), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
}

#[test]
fn foreign_file_is_rejected() {
    let path = scratch().join("not-an-image.raw");
    std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
    let output = ztms().args(["run", "--headless"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("not a bootable ztms image"), "{stderr}");
    assert!(stderr.contains("no GPT"), "{stderr}");
}

#[test]
fn busy_port_is_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let image = image("test-boot");
    let output = ztms()
        .args(["run", "--headless", "--forward", &format!("{port}:443")])
        .arg(&image)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("port {port}")), "{stderr}");
}

#[test]
fn interrupted_run_leaves_no_processes() {
    let image = image("test-boot");
    let mut child = ztms()
        .args(["run", "--headless", "--forward", "18445:443"])
        .arg(&image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();

    // Wait until QEMU and swtpm run as children of this ztms.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut children = Vec::new();
    while Instant::now() < deadline {
        children = child_pids(pid);
        if children.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(children.len() >= 2, "QEMU and swtpm did not start: {children:?}");

    // SAFETY: kill(2) on the PID of a child this test spawned and has not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let _ = child.wait();
    std::thread::sleep(Duration::from_secs(2));
    for pid in children {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| !stat.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "process {pid} outlived the interrupted ztms run");
    }
}

/// Returns the PIDs whose parent is `parent`.
fn child_pids(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split(' ').collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn foreign_architecture_is_rejected() {
    // A GPT disk whose root partitions carry the arm64 root type GUID of
    // the Discoverable Partitions Specification.
    let mut layout = ztms::build::layout::plan("arm", "seed", 64 << 20, 16 << 20, 16 << 20);
    for partition in &mut layout.partitions {
        if partition.type_guid == ztms::build::layout::TYPE_ROOT_X86_64 {
            partition.type_guid = "b921b045-1df0-41c3-af44-4c6f280d3fae".into();
        }
    }
    let path = scratch().join("arm64.raw");
    let mut file = std::fs::File::create(&path).unwrap();
    file.set_len(layout.disk_size).unwrap();
    ztms::build::gpt::write(&mut file, &layout).unwrap();
    drop(file);

    let output = ztms().args(["run", "--headless"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("another architecture"), "{stderr}");
}
