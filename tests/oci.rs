//! QEMU test of a service imported from an OCI archive that follows the
//! linuxserver.io conventions (PUID and PGID, state in /config, a web UI).
//! The test writes the archive itself: a docker-save tar with the host's
//! static busybox, as `docker save` would lay it out.

mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{boot, image_with_inputs, output_of, repo, TestVm, BOOT_TIMEOUT};
use sha2::Digest;

/// The static busybox of Debian's busybox-static package.
const HOST_BUSYBOX: &str = "/bin/busybox";

/// Applets the service's script calls, linked to busybox in /bin.
const APPLETS: &[&str] = &["sh", "id", "stat", "mkdir", "httpd", "echo"];

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// Returns a header with fixed owner and time, so the same inputs give
/// the same archive and the image is not rebuilt.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Returns the layer: /bin/busybox, its applet links and an empty /tmp.
fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read(HOST_BUSYBOX)
        .unwrap_or_else(|e| panic!("reading {HOST_BUSYBOX} failed: {e}; install busybox-static (.ci/packages)"));
    let mut builder = tar::Builder::new(Vec::new());
    for dir in ["bin/", "tmp/"] {
        let mut entry = header(tar::EntryType::Directory, 0o755, 0);
        builder.append_data(&mut entry, dir, std::io::empty()).unwrap();
    }
    let mut entry = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    builder.append_data(&mut entry, "bin/busybox", busybox.as_slice()).unwrap();
    for applet in APPLETS {
        let mut entry = header(tar::EntryType::Symlink, 0o777, 0);
        builder.append_link(&mut entry, format!("bin/{applet}"), "busybox").unwrap();
    }
    builder.into_inner().unwrap()
}

/// Returns a tar archive of regular files.
fn archive_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut entry = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        builder.append_data(&mut entry, path, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Writes the docker-save archive that images/test-oci.toml imports and
/// returns its path. The image sets PUID=911 as linuxserver.io images do,
/// which the service's own user must replace.
fn write_busybox_archive() -> PathBuf {
    let layer = busybox_layer();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin", "PUID=911", "PGID=911", "HOME=/config"],
            "ExposedPorts": { "8096/tcp": {} },
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", hex_sha256(&layer))] },
    })
    .to_string();
    let config_name = format!("{}.json", hex_sha256(config.as_bytes()));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["ztms-test/busybox:latest"],
        "Layers": ["layer0/layer.tar"],
    }])
    .to_string();
    let archive = archive_of(&[
        ("manifest.json", manifest.as_bytes()),
        (&config_name, config.as_bytes()),
        ("layer0/layer.tar", &layer),
    ]);

    // images/oci/.gitignore keeps the archive out of git.
    let path = repo().join("images/oci/test-busybox.tar");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if std::fs::read(&path).ok().as_deref() != Some(archive.as_slice()) {
        std::fs::write(&path, &archive).unwrap_or_else(|e| panic!("writing {} failed: {e}", path.display()));
    }
    path
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

#[test]
fn oci_service_follows_linuxserver_conventions() {
    let archive = write_busybox_archive();
    let image = image_with_inputs("test-oci", &[Path::new(&archive)]);
    let mut vm = boot("oci_service_follows_linuxserver_conventions", &image);
    vm.wait_for_console("service lsio is healthy", BOOT_TIMEOUT).unwrap();
    service_line(&vm, "lsio", "facts-done");

    let status = vm.status(Duration::from_secs(10)).expect("status over virtio-serial");
    let lsio = status
        .services
        .iter()
        .find(|service| service.name == "lsio")
        .unwrap_or_else(|| panic!("lsio missing from the status: {status:?}"));
    assert!(lsio.healthy, "{lsio:?}");
    let security = lsio.security.clone().unwrap_or_else(|| panic!("lsio has no security facts: {lsio:?}"));
    assert_eq!(security.uid, [1000; 4], "{security:?}");
    assert_eq!(security.gid, [1000; 4], "{security:?}");
    assert_eq!(security.cap_eff, 0, "CapEff {security:?}");

    assert_eq!(service_line(&vm, "lsio", "puid: "), "1000");
    assert_eq!(service_line(&vm, "lsio", "pgid: "), "1000");
    let id = service_line(&vm, "lsio", "id: ");
    assert!(id.starts_with("uid=1000 gid=1000"), "id output: {id}");
    assert_eq!(service_line(&vm, "lsio", "config-file: "), "1000:1000", "/config/written is not the service's");
    assert_eq!(service_line(&vm, "lsio", "config-dir: "), "1000:1000", "/config is not owned by the service's user");

    let lines = output_of(&vm.console(), "lsio");
    assert!(lines.iter().any(|line| line == "root-read-only"), "the root filesystem took a write: {lines:?}");
}
