//! Tests of `ztms build` against the real tools: mmdebstrap, mkfs.erofs,
//! veritysetup, objcopy, qemu-img and sfdisk.

mod harness;

use std::path::Path;
use std::process::Command;

use harness::{build_into, image, repo, scratch};

fn sha256(path: &Path) -> String {
    ztms::build::manifest::artifact(path).expect("hash artifact").sha256
}

#[test]
fn image_has_four_gpt_partitions() {
    let raw = image("test-boot");
    let output = Command::new("sfdisk").arg("--json").arg(&raw).output().expect("run sfdisk");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let partitions = table["partitiontable"]["partitions"].as_array().expect("partitions");
    let names: Vec<&str> = partitions.iter().map(|p| p["name"].as_str().unwrap_or("")).collect();
    assert_eq!(names, ["test-boot-esp", "test-boot-root-a", "test-boot-root-b", "test-boot-data"]);
    assert_eq!(table["partitiontable"]["label"], "gpt");
}

#[test]
fn two_builds_are_byte_identical() {
    let first = image("test-boot");
    let second_dir = scratch().join("reproducible");
    let _ = std::fs::remove_dir_all(&second_dir);
    build_into("test-boot", &second_dir).expect("second build");
    let second = second_dir.join("test-boot.raw");
    assert_eq!(sha256(&first), sha256(&second), "raw images differ");
    assert_eq!(
        sha256(&first.with_extension("qcow2")),
        sha256(&second.with_extension("qcow2")),
        "qcow2 images differ"
    );
}

#[test]
fn manifest_lists_packages_and_hashes() {
    let raw = image("test-boot");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(raw.with_file_name("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["version"], "1.0.0");
    assert_eq!(manifest["verity"]["root_hash"].as_str().unwrap().len(), 64);
    let packages = manifest["packages"].as_array().unwrap();
    assert!(packages.iter().any(|p| p["name"] == "busybox"), "busybox missing from the package list");
    let raw_entry = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["file"] == "test-boot.raw")
        .expect("raw image in artifacts");
    assert_eq!(raw_entry["sha256"].as_str().unwrap(), sha256(&raw));
}

/// Writes a definition into a scratch directory and returns its path.
fn scratch_definition(test: &str, text: &str) -> std::path::PathBuf {
    let dir = scratch().join("bad-input").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("image.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes a definition with the test images' base (busybox and both
/// overlays, so the cached base tree is reused), a 64M ESP, the given root
/// size and `extra` TOML after the [disk] table.
fn busybox_definition(test: &str, name: &str, version: &str, root: &str, extra: &str) -> std::path::PathBuf {
    let overlays = repo().join("overlays");
    scratch_definition(
        test,
        &format!(
            r#"
[image]
name = "{name}"
version = "{version}"

[base]
packages = ["busybox"]
overlays = ["{}", "{}"]

[disk]
esp = "64M"
root = "{root}"
{extra}"#,
            overlays.join("common").display(),
            overlays.join("test").display()
        ),
    )
}

fn build_definition(path: &Path) -> Result<ztms::build::BuildReport, ztms::build::BuildError> {
    let loaded = ztms::config::load(path)?;
    let options = ztms::build::BuildOptions {
        out_dir: path.with_file_name("out"),
        cache_dir: ztms::run::default_cache_dir(),
        init_binary: harness::init_binary(),
        source_date_epoch: ztms::build::DEFAULT_EPOCH,
    };
    ztms::build::build(&loaded, &options)
}

fn assert_no_output(path: &Path) {
    let out = path.with_file_name("out");
    let leftovers: Vec<_> = std::fs::read_dir(&out).into_iter().flatten().flatten().map(|e| e.path()).collect();
    assert!(leftovers.is_empty(), "output left behind: {leftovers:?}");
}

#[test]
fn unknown_package_names_service() {
    let path = scratch_definition(
        "unknown-package",
        r#"
[image]
name = "bad"
version = "1"

[[service]]
name = "media"
segment = "frontend"
packages = ["no-such-package-ztms"]
command = ["/bin/true"]
"#,
    );
    let error = build_definition(&path).unwrap_err().to_string();
    assert!(error.contains("no-such-package-ztms"), "{error}");
    assert!(error.contains("service \"media\""), "{error}");
    assert_no_output(&path);
}

#[test]
fn root_too_small_says_needed_size() {
    let path = busybox_definition("root-too-small", "small", "1", "16M", "");
    let error = build_definition(&path).unwrap_err().to_string();
    assert!(error.contains("disk.root"), "{error}");
    assert!(error.contains("needs"), "{error}");
    assert_no_output(&path);
}

#[test]
fn default_image_has_no_debug_access() {
    let loaded = ztms::config::load(&repo().join("images/media-server.toml")).unwrap();
    assert!(!loaded.definition.debug.status_serial, "the status port is a test-image feature");
    assert!(!loaded.definition.debug.probe, "the test requests are a test-image feature");
    let plan = ztms::init::plan::from_definition(&loaded.definition).unwrap();
    assert!(!plan.status_serial);
}

/// Returns a tar archive of `files` (path, mode, content).
fn tar_of(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        // The name is written raw, because set_path rejects the ".." that
        // hostile archives carry.
        let name = &mut header.as_gnu_mut().unwrap().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Writes a docker-save archive with one layer holding `hello.txt`, the
/// kind of file `docker save` produces, and returns its path.
fn docker_archive(dir: &Path) -> std::path::PathBuf {
    let layer = tar_of(&[("hello.txt", 0o644, b"hello from an OCI layer\n")]);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": ["/hello"], "Env": ["PATH=/usr/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", hex_sha256(&layer))] },
    })
    .to_string();
    let config_name = format!("{}.json", hex_sha256(config.as_bytes()));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["ztms-test/hello:latest"],
        "Layers": ["layer0/layer.tar"],
    }])
    .to_string();
    let archive = tar_of(&[
        ("manifest.json", 0o644, manifest.as_bytes()),
        (&config_name, 0o644, config.as_bytes()),
        ("layer0/layer.tar", 0o644, &layer),
    ]);
    let path = dir.join("hello.tar");
    std::fs::write(&path, archive).unwrap();
    path
}

fn oci_definition(test: &str, archive_name: &str) -> std::path::PathBuf {
    let service = format!(
        "\n[[service]]\nname = \"hello\"\nsegment = \"frontend\"\noci = \"{archive_name}\"\ncommand = [\"/hello\"]\n"
    );
    busybox_definition(test, "oci", "1", "256M", &service)
}

#[test]
fn oci_image_lands_in_root_filesystem() {
    let path = oci_definition("oci-image", "hello.tar");
    docker_archive(path.parent().unwrap());
    build_definition(&path).expect("build with an OCI service");

    let out = path.with_file_name("out");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let root = &manifest["partitions"]["partitions"][1];
    let data_bytes = manifest["verity"]["data_blocks"].as_u64().unwrap() * 4096;
    let root_image = out.join("root.erofs");
    let status = Command::new("dd")
        .arg(format!("if={}", out.join("oci.raw").display()))
        .arg(format!("of={}", root_image.display()))
        .args(["bs=1M", "iflag=skip_bytes,count_bytes", "status=none"])
        .arg(format!("skip={}", root["offset"].as_u64().unwrap()))
        .arg(format!("count={data_bytes}"))
        .status()
        .unwrap();
    assert!(status.success());
    let output = Command::new("dump.erofs")
        .arg("--path=/usr/lib/ztms/services/hello/rootfs/hello.txt")
        .arg(&root_image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "hello.txt not in the root image: {}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("Size: 24"), "{text}");

    // crun cannot create these on the read-only root, and the archive
    // has none of them.
    for point in ["proc", "dev", "sys"] {
        let output = Command::new("dump.erofs")
            .arg(format!("--path=/usr/lib/ztms/services/hello/rootfs/{point}"))
            .arg(&root_image)
            .output()
            .unwrap();
        assert!(output.status.success(), "mount point /{point} missing from the image's rootfs");
    }
}

#[test]
fn truncated_oci_archive_is_rejected() {
    let path = oci_definition("oci-truncated", "truncated.tar");
    let dir = path.parent().unwrap();
    let whole = std::fs::read(docker_archive(dir)).unwrap();
    std::fs::write(dir.join("truncated.tar"), &whole[..whole.len() / 2]).unwrap();
    let error = build_definition(&path).unwrap_err().to_string();
    assert!(error.contains("service \"hello\""), "{error}");
    assert!(error.contains("truncated"), "{error}");
    assert_no_output(&path);
}

#[test]
fn escaping_oci_member_is_rejected() {
    let path = oci_definition("oci-escape", "escape.tar");
    let dir = path.parent().unwrap();
    let layer = tar_of(&[("../../escaped.txt", 0o644, b"x")]);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", hex_sha256(&layer))] },
    })
    .to_string();
    let config_name = format!("{}.json", hex_sha256(config.as_bytes()));
    let manifest = serde_json::json!([{ "Config": config_name, "Layers": ["l/layer.tar"] }]).to_string();
    let archive = tar_of(&[
        ("manifest.json", 0o644, manifest.as_bytes()),
        (&config_name, 0o644, config.as_bytes()),
        ("l/layer.tar", 0o644, &layer),
    ]);
    std::fs::write(dir.join("escape.tar"), archive).unwrap();
    let error = build_definition(&path).unwrap_err().to_string();
    assert!(error.contains("service \"hello\""), "{error}");
    assert!(error.contains("escaped.txt"), "{error}");
    assert_no_output(&path);
}

#[test]
fn killed_build_leaves_no_output_and_resumes() {
    // The base tree comes from the cache, so the build is in its image steps
    // when it is killed.
    image("test-boot");
    let out = scratch().join("killed-build");
    let _ = std::fs::remove_dir_all(&out);
    let definition = repo().join("images/test-boot.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ztms"))
        .arg("build")
        .arg(&definition)
        .arg("--out")
        .arg(&out)
        .arg("--init")
        .arg(harness::init_binary())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    child.kill().unwrap();
    child.wait().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&out).into_iter().flatten().flatten().map(|e| e.path()).collect();
    assert!(leftovers.is_empty(), "a killed build left {leftovers:?}");

    let status = Command::new(env!("CARGO_BIN_EXE_ztms"))
        .arg("build")
        .arg(&definition)
        .arg("--out")
        .arg(&out)
        .arg("--init")
        .arg(harness::init_binary())
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(out.join("test-boot.raw").exists());
    assert!(String::from_utf8_lossy(&status.stdout).contains("base tree from cache"));
}

#[test]
fn update_bundle_is_signed_and_verifies() {
    let path = busybox_definition(
        "update-bundle",
        "upd",
        "2.0.0",
        "256M",
        "\n[update]\nsigning_key = \"keys/update.key\"\npublic_key = \"keys/update.pub\"\n",
    );
    let key = ztms::update::keys::generate(&path.with_file_name("keys")).unwrap();
    build_definition(&path).expect("build with update keys");

    let out = path.with_file_name("out");
    let bundle = out.join("upd-2.0.0.ztmsb");
    let manifest = ztms::update::bundle::verify(&bundle, &key).expect("bundle verifies");
    let image_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.root_hash, image_manifest["verity"]["root_hash"].as_str().unwrap());
    assert_eq!(manifest.version, "2.0.0");

    let other = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]).verifying_key();
    assert!(ztms::update::bundle::verify(&bundle, &other).is_err(), "a foreign key verified the bundle");
}

#[test]
fn missing_oci_archive_names_service() {
    let path = oci_definition("oci-missing", "no-such-archive.tar");
    let error = build_definition(&path).unwrap_err().to_string();
    assert!(error.contains("service \"hello\""), "{error}");
    assert!(error.contains("no-such-archive.tar not found"), "{error}");
    assert!(error.contains("docker save"), "{error}");
    assert_no_output(&path);
}
