use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use super::{import, ImageConfig, OciError};

// ---- archive builders -------------------------------------------------

/// One member of a test layer. Names are written into the header verbatim,
/// so tests can build the malicious paths that `tar::Builder` rejects.
enum Member<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    FileWithMode(&'a str, &'a [u8], u32),
    FileOwnedBy(&'a str, &'a [u8], u64, u64),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Fifo(&'a str),
}

fn current_ids() -> (u64, u64) {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    (u64::from(uid), u64::from(gid))
}

/// Assembles an uncompressed layer tar. Members belong to the user running
/// the test, so the import needs no root unless a test asks for other IDs.
fn layer_tar(members: &[Member]) -> Vec<u8> {
    let (uid, gid) = current_ids();
    let mut builder = tar::Builder::new(Vec::new());
    for member in members {
        let mut header = tar::Header::new_ustar();
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(0);
        let (name, link, data): (&str, &str, &[u8]) = match *member {
            Member::Dir(name) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                (name, "", &[])
            }
            Member::File(name, data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                (name, "", data)
            }
            Member::FileWithMode(name, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode);
                (name, "", data)
            }
            Member::FileOwnedBy(name, data, uid, gid) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_uid(uid);
                header.set_gid(gid);
                (name, "", data)
            }
            Member::Symlink(name, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                (name, target, &[])
            }
            Member::HardLink(name, target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                (name, target, &[])
            }
            Member::Fifo(name) => {
                header.set_entry_type(tar::EntryType::Fifo);
                header.set_mode(0o644);
                (name, "", &[])
            }
        };
        let raw = header.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A layer as stored in the image: its blob, maybe compressed, and the
/// digest of its uncompressed tar.
struct Layer {
    blob: Vec<u8>,
    diff_id: String,
}

fn plain(members: &[Member]) -> Layer {
    let tar = layer_tar(members);
    Layer {
        diff_id: format!("sha256:{}", sha256_hex(&tar)),
        blob: tar,
    }
}

fn gzipped(members: &[Member]) -> Layer {
    let tar = layer_tar(members);
    Layer {
        diff_id: format!("sha256:{}", sha256_hex(&tar)),
        blob: gzip(&tar),
    }
}

fn image_config(layers: &[Layer]) -> Vec<u8> {
    let diff_ids: Vec<&str> = layers.iter().map(|layer| layer.diff_id.as_str()).collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "1000:1000",
            "Env": ["PATH=/usr/bin:/bin", "HOME=/srv"],
            "Entrypoint": ["/usr/bin/app"],
            "Cmd": ["--serve"],
            "WorkingDir": "/srv",
            "ExposedPorts": {"8096/tcp": {}, "1900/udp": {}}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

/// Packs `files` (path, contents) into a tar archive.
fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, path, data.as_slice())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

/// Builds a docker-save archive in the format written before Docker 25.
fn docker_save(layers: &[Layer]) -> Vec<u8> {
    let config = image_config(layers);
    let config_name = format!("{}.json", sha256_hex(&config));
    let mut files = vec![(config_name.clone(), config)];
    let mut layer_names = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let name = format!("layer{index}/layer.tar");
        files.push((name.clone(), layer.blob.clone()));
        layer_names.push(name);
    }
    let manifest = json!([{"Config": config_name, "RepoTags": ["app:1"], "Layers": layer_names}]);
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    tar_of(&files)
}

fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", sha256_hex(data)),
        "size": data.len(),
    })
}

fn blob_entry(data: Vec<u8>) -> (String, Vec<u8>) {
    (format!("blobs/sha256/{}", sha256_hex(&data)), data)
}

/// Files of an OCI image layout whose index.json points at one manifest.
fn oci_files(layers: &[Layer]) -> Vec<(String, Vec<u8>)> {
    let (manifest, mut files) = oci_manifest(layers);
    let manifest_descriptor = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    let index = json!({"schemaVersion": 2, "manifests": [manifest_descriptor]});
    files.push(blob_entry(manifest));
    files.push((
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    files
}

/// Returns a manifest for `layers` and the blobs it references.
fn oci_manifest(layers: &[Layer]) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let config = image_config(layers);
    let layer_descriptors: Vec<_> = layers
        .iter()
        .map(|layer| descriptor("application/vnd.oci.image.layer.v1.tar", &layer.blob))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layer_descriptors,
    });
    let mut files = vec![blob_entry(config)];
    files.extend(layers.iter().map(|layer| blob_entry(layer.blob.clone())));
    (serde_json::to_vec(&manifest).unwrap(), files)
}

fn write_layout(files: &[(String, Vec<u8>)], directory: &Path) {
    for (path, data) in files {
        let path = directory.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
}

/// A temporary directory with the archive written as `image.tar` and an
/// unused destination `rootfs`.
struct Fixture {
    directory: TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            directory: TempDir::new().unwrap(),
        }
    }

    fn write_archive(&self, bytes: &[u8]) -> PathBuf {
        let path = self.directory.path().join("image.tar");
        fs::write(&path, bytes).unwrap();
        path
    }

    fn dest(&self) -> PathBuf {
        self.directory.path().join("rootfs")
    }

    fn import_docker(&self, layers: &[Layer]) -> Result<ImageConfig, OciError> {
        import(&self.write_archive(&docker_save(layers)), &self.dest())
    }
}

// ---- formats ------------------------------------------------------------

fn base_layer() -> Layer {
    plain(&[
        Member::Dir("usr/"),
        Member::Dir("usr/bin/"),
        Member::File("usr/bin/app", b"#!/bin/sh\n"),
        Member::Dir("etc/"),
        Member::File("etc/hostname", b"media\n"),
    ])
}

fn assert_base_tree(dest: &Path) {
    assert_eq!(fs::read(dest.join("usr/bin/app")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(fs::read(dest.join("etc/hostname")).unwrap(), b"media\n");
}

#[test]
fn docker_save_archive_imports() {
    let fixture = Fixture::new();
    fixture.import_docker(&[base_layer()]).unwrap();
    assert_base_tree(&fixture.dest());
}

#[test]
fn oci_archive_imports() {
    let fixture = Fixture::new();
    let archive = fixture.write_archive(&tar_of(&oci_files(&[base_layer()])));
    import(&archive, &fixture.dest()).unwrap();
    assert_base_tree(&fixture.dest());
}

#[test]
fn oci_layout_directory_imports() {
    let fixture = Fixture::new();
    let layout = fixture.directory.path().join("layout");
    write_layout(&oci_files(&[base_layer()]), &layout);
    import(&layout, &fixture.dest()).unwrap();
    assert_base_tree(&fixture.dest());
}

#[test]
fn docker_save_with_oci_layout_uses_index() {
    // Docker 25 and later write both; the manifest.json here is broken, so
    // success shows that the OCI index was used.
    let fixture = Fixture::new();
    let mut files = oci_files(&[base_layer()]);
    files.push(("manifest.json".into(), b"not json".to_vec()));
    import(&fixture.write_archive(&tar_of(&files)), &fixture.dest()).unwrap();
    assert_base_tree(&fixture.dest());
}

#[test]
fn gzip_layer_imports() {
    let fixture = Fixture::new();
    let layout = fixture.directory.path().join("layout");
    let layers = [gzipped(&[Member::File("data.txt", b"compressed")])];
    write_layout(&oci_files(&layers), &layout);
    import(&layout, &fixture.dest()).unwrap();
    assert_eq!(
        fs::read(fixture.dest().join("data.txt")).unwrap(),
        b"compressed"
    );
}

#[test]
fn gzip_layer_in_docker_save_checks_diff_id() {
    let fixture = Fixture::new();
    fixture
        .import_docker(&[gzipped(&[Member::File("data.txt", b"compressed")])])
        .unwrap();
    assert_eq!(
        fs::read(fixture.dest().join("data.txt")).unwrap(),
        b"compressed"
    );
}

#[test]
fn zstd_layer_rejected_with_fix() {
    let fixture = Fixture::new();
    let layer = Layer {
        blob: vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0],
        diff_id: format!("sha256:{}", "0".repeat(64)),
    };
    let error = fixture.import_docker(&[layer]).unwrap_err();
    assert!(
        matches!(
            error,
            OciError::UnsupportedCompression {
                compression: "zstd",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("zstd layers are not supported yet; re-save with gzip"),
        "{error}"
    );
}

#[test]
fn config_fields_parsed() {
    let fixture = Fixture::new();
    let config = fixture.import_docker(&[base_layer()]).unwrap();
    assert_eq!(config.entrypoint, ["/usr/bin/app"]);
    assert_eq!(config.cmd, ["--serve"]);
    assert_eq!(config.env, ["PATH=/usr/bin:/bin", "HOME=/srv"]);
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(config.exposed_ports, ["1900/udp", "8096/tcp"]);
}

#[test]
fn multi_platform_index_picks_amd64() {
    let fixture = Fixture::new();
    let (arm_manifest, mut files) = oci_manifest(&[plain(&[Member::File("arch", b"arm64")])]);
    let (amd_manifest, amd_files) = oci_manifest(&[plain(&[Member::File("arch", b"amd64")])]);
    files.extend(amd_files);
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let mut arm = descriptor(manifest_type, &arm_manifest);
    arm["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    let mut amd = descriptor(manifest_type, &amd_manifest);
    amd["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let nested = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [arm, amd]})).unwrap();
    let nested_descriptor = descriptor("application/vnd.oci.image.index.v1+json", &nested);
    let index = json!({"schemaVersion": 2, "manifests": [nested_descriptor]});
    files.push(blob_entry(arm_manifest));
    files.push(blob_entry(amd_manifest));
    files.push(blob_entry(nested));
    files.push((
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));

    import(&fixture.write_archive(&tar_of(&files)), &fixture.dest()).unwrap();
    assert_eq!(fs::read(fixture.dest().join("arch")).unwrap(), b"amd64");
}

#[test]
fn missing_amd64_lists_platforms() {
    let fixture = Fixture::new();
    let (manifest, mut files) = oci_manifest(&[base_layer()]);
    let mut arm = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    arm["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    files.push(blob_entry(manifest));
    files.push((
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    files.push((
        "index.json".into(),
        serde_json::to_vec(&json!({"manifests": [arm]})).unwrap(),
    ));

    let error = import(&fixture.write_archive(&tar_of(&files)), &fixture.dest()).unwrap_err();
    assert!(
        matches!(error, OciError::PlatformNotFound { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("linux/arm64/v8"), "{error}");
}

#[test]
fn unknown_format_rejected() {
    let fixture = Fixture::new();
    let archive = fixture.write_archive(&tar_of(&[("hello.txt".into(), b"hi".to_vec())]));
    let error = import(&archive, &fixture.dest()).unwrap_err();
    assert!(matches!(error, OciError::UnknownFormat { .. }), "{error}");
}

#[test]
fn nonempty_destination_rejected() {
    let fixture = Fixture::new();
    fs::create_dir_all(fixture.dest().join("leftover")).unwrap();
    let error = fixture.import_docker(&[base_layer()]).unwrap_err();
    assert!(
        matches!(error, OciError::DestinationNotEmpty { .. }),
        "{error}"
    );
}

// ---- layer semantics ----------------------------------------------------

#[test]
fn whiteout_deletes_lower_file() {
    let fixture = Fixture::new();
    let upper = plain(&[Member::File("etc/.wh.hostname", b"")]);
    fixture.import_docker(&[base_layer(), upper]).unwrap();
    let dest = fixture.dest();
    assert!(!dest.join("etc/hostname").exists());
    assert!(!dest.join("etc/.wh.hostname").exists());
    assert!(dest.join("usr/bin/app").exists());
}

#[test]
fn whiteout_deletes_lower_directory() {
    let fixture = Fixture::new();
    let upper = plain(&[Member::File(".wh.usr", b"")]);
    fixture.import_docker(&[base_layer(), upper]).unwrap();
    assert!(!fixture.dest().join("usr").exists());
}

#[test]
fn opaque_directory_hides_lower_contents() {
    let fixture = Fixture::new();
    let lower = plain(&[
        Member::Dir("srv/"),
        Member::File("srv/old", b"old"),
        Member::Dir("srv/sub/"),
        Member::File("srv/sub/old", b"old"),
        Member::File("keep", b"keep"),
    ]);
    // The marker comes last, as some tools write it, so the new files of
    // the same layer must survive it.
    let upper = plain(&[
        Member::Dir("srv/"),
        Member::File("srv/new", b"new"),
        Member::Dir("srv/sub/"),
        Member::File("srv/sub/new", b"new"),
        Member::File("srv/.wh..wh..opq", b""),
    ]);
    fixture.import_docker(&[lower, upper]).unwrap();
    let dest = fixture.dest();
    assert!(!dest.join("srv/old").exists());
    assert!(!dest.join("srv/sub/old").exists());
    assert!(!dest.join("srv/.wh..wh..opq").exists());
    assert_eq!(fs::read(dest.join("srv/new")).unwrap(), b"new");
    assert_eq!(fs::read(dest.join("srv/sub/new")).unwrap(), b"new");
    assert!(dest.join("keep").exists());
}

#[test]
fn upper_file_replaces_lower_directory() {
    let fixture = Fixture::new();
    let upper = plain(&[Member::File("usr", b"now a file")]);
    fixture.import_docker(&[base_layer(), upper]).unwrap();
    assert_eq!(fs::read(fixture.dest().join("usr")).unwrap(), b"now a file");
}

#[test]
fn modes_kept_and_setuid_removed() {
    let fixture = Fixture::new();
    let layer = plain(&[
        Member::FileWithMode("bin/su", b"", 0o4755),
        Member::FileWithMode("bin/wall", b"", 0o2755),
        Member::FileWithMode("secret", b"", 0o600),
        Member::FileWithMode("tmp", b"", 0o1777),
    ]);
    fixture.import_docker(&[layer]).unwrap();
    let mode = |path: &str| {
        fs::metadata(fixture.dest().join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("bin/su"), 0o755);
    assert_eq!(mode("bin/wall"), 0o755);
    assert_eq!(mode("secret"), 0o600);
    assert_eq!(mode("tmp"), 0o1777);
}

#[test]
fn fifo_skipped() {
    let fixture = Fixture::new();
    fixture
        .import_docker(&[plain(&[Member::Fifo("run/pipe"), Member::File("ok", b"")])])
        .unwrap();
    assert!(fs::symlink_metadata(fixture.dest().join("run/pipe")).is_err());
    assert!(fixture.dest().join("ok").exists());
}

#[test]
fn hard_link_shares_inode() {
    let fixture = Fixture::new();
    let layer = plain(&[
        Member::File("bin/busybox", b"elf"),
        Member::HardLink("bin/sh", "bin/busybox"),
    ]);
    fixture.import_docker(&[layer]).unwrap();
    let dest = fixture.dest();
    let original = fs::metadata(dest.join("bin/busybox")).unwrap();
    let link = fs::metadata(dest.join("bin/sh")).unwrap();
    assert_eq!(original.ino(), link.ino());
}

#[test]
fn hard_link_to_missing_target_rejected() {
    let fixture = Fixture::new();
    let error = fixture
        .import_docker(&[plain(&[Member::HardLink("bin/sh", "bin/busybox")])])
        .unwrap_err();
    assert!(matches!(error, OciError::InvalidMember { .. }), "{error}");
    assert!(error.to_string().contains("bin/sh"), "{error}");
}

#[test]
fn ownership_copied_from_layer() {
    let fixture = Fixture::new();
    let result = fixture.import_docker(&[plain(&[Member::FileOwnedBy("owned", b"", 4321, 8765)])]);
    if current_ids().0 == 0 {
        result.unwrap();
        let metadata = fs::metadata(fixture.dest().join("owned")).unwrap();
        assert_eq!(metadata.uid(), 4321);
        assert_eq!(metadata.gid(), 8765);
    } else {
        let error = result.unwrap_err();
        assert!(
            matches!(
                error,
                OciError::Ownership {
                    uid: 4321,
                    gid: 8765,
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            error.to_string().contains("run the build as root"),
            "{error}"
        );
    }
}

// ---- escapes --------------------------------------------------------------

/// Returns a directory next to `rootfs` that must stay empty.
fn sentinel(fixture: &Fixture) -> PathBuf {
    let path = fixture.directory.path().join("sentinel");
    fs::create_dir(&path).unwrap();
    path
}

fn assert_empty(directory: &Path) {
    let entries: Vec<_> = fs::read_dir(directory).unwrap().collect();
    assert!(
        entries.is_empty(),
        "{} was written to: {entries:?}",
        directory.display()
    );
}

#[test]
fn dotdot_member_rejected() {
    let fixture = Fixture::new();
    let outside = sentinel(&fixture);
    let error = fixture
        .import_docker(&[plain(&[Member::File("../sentinel/evil", b"x")])])
        .unwrap_err();
    assert!(matches!(error, OciError::UnsafeMember { .. }), "{error}");
    assert!(error.to_string().contains("../sentinel/evil"), "{error}");
    assert_empty(&outside);
}

#[test]
fn dotdot_inside_path_rejected() {
    let fixture = Fixture::new();
    let outside = sentinel(&fixture);
    let error = fixture
        .import_docker(&[plain(&[Member::File("etc/../../sentinel/evil", b"x")])])
        .unwrap_err();
    assert!(matches!(error, OciError::UnsafeMember { .. }), "{error}");
    assert_empty(&outside);
}

#[test]
fn absolute_member_lands_inside() {
    let fixture = Fixture::new();
    fixture
        .import_docker(&[plain(&[Member::File("/etc/motd", b"hi")])])
        .unwrap();
    assert_eq!(fs::read(fixture.dest().join("etc/motd")).unwrap(), b"hi");
}

#[test]
fn write_through_absolute_symlink_stays_inside() {
    let fixture = Fixture::new();
    let outside = sentinel(&fixture);
    let target = outside.to_str().unwrap();
    let layer = plain(&[
        Member::Symlink("link", target),
        Member::File("link/file", b"x"),
    ]);
    fixture.import_docker(&[layer]).unwrap();
    assert_empty(&outside);
    // The link resolves as it would inside the container.
    let inside = fixture
        .dest()
        .join(target.trim_start_matches('/'))
        .join("file");
    assert_eq!(fs::read(inside).unwrap(), b"x");
}

#[test]
fn write_through_symlink_in_lower_layer_stays_inside() {
    let fixture = Fixture::new();
    let outside = sentinel(&fixture);
    let lower = plain(&[Member::Symlink("link", outside.to_str().unwrap())]);
    let upper = plain(&[Member::File("link/file", b"x")]);
    fixture.import_docker(&[lower, upper]).unwrap();
    assert_empty(&outside);
}

#[test]
fn write_through_relative_symlink_stays_inside() {
    let fixture = Fixture::new();
    let outside = sentinel(&fixture);
    let layer = plain(&[
        Member::Dir("a/"),
        Member::Symlink("a/up", "../../../../../.."),
        Member::File("a/up/sentinel/file", b"x"),
    ]);
    fixture.import_docker(&[layer]).unwrap();
    assert_empty(&outside);
    assert_eq!(
        fs::read(fixture.dest().join("sentinel/file")).unwrap(),
        b"x"
    );
}

#[test]
fn file_over_symlink_replaces_link() {
    let fixture = Fixture::new();
    let outside = sentinel(&fixture);
    let victim = outside.join("victim");
    fs::write(&victim, b"host").unwrap();
    let layer = plain(&[
        Member::Symlink("etc-passwd", victim.to_str().unwrap()),
        Member::File("etc-passwd", b"image"),
    ]);
    fixture.import_docker(&[layer]).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"host");
    let replaced = fs::symlink_metadata(fixture.dest().join("etc-passwd")).unwrap();
    assert!(replaced.is_file());
}

#[test]
fn hard_link_escape_rejected() {
    let fixture = Fixture::new();
    let outside = sentinel(&fixture);
    fs::write(outside.join("host-file"), b"host").unwrap();
    let layer = plain(&[Member::HardLink("stolen", "../sentinel/host-file")]);
    let error = fixture.import_docker(&[layer]).unwrap_err();
    assert!(matches!(error, OciError::UnsafeMember { .. }), "{error}");
    assert!(!fixture.dest().join("stolen").exists());
}

#[test]
fn hard_link_through_symlink_stays_inside() {
    let fixture = Fixture::new();
    let outside = sentinel(&fixture);
    fs::write(outside.join("host-file"), b"host").unwrap();
    let layer = plain(&[
        Member::Symlink("link", outside.to_str().unwrap()),
        Member::HardLink("stolen", "link/host-file"),
    ]);
    let error = fixture.import_docker(&[layer]).unwrap_err();
    assert!(matches!(error, OciError::InvalidMember { .. }), "{error}");
    assert_eq!(fs::metadata(outside.join("host-file")).unwrap().nlink(), 1);
}

#[test]
fn absolute_symlink_target_stored_as_is() {
    let fixture = Fixture::new();
    fixture
        .import_docker(&[plain(&[Member::Symlink("bin/sh", "/usr/bin/busybox")])])
        .unwrap();
    let target = fs::read_link(fixture.dest().join("bin/sh")).unwrap();
    assert_eq!(target, Path::new("/usr/bin/busybox"));
}

// ---- corruption -------------------------------------------------------------

#[test]
fn truncated_archive_rejected() {
    let fixture = Fixture::new();
    let mut bytes = docker_save(&[base_layer()]);
    bytes.truncate(bytes.len() / 2);
    let error = import(&fixture.write_archive(&bytes), &fixture.dest()).unwrap_err();
    assert!(
        matches!(error, OciError::TruncatedArchive { .. }),
        "{error}"
    );
    assert!(
        error.to_string().starts_with("truncated archive"),
        "{error}"
    );
}

#[test]
fn archive_without_end_marker_rejected() {
    // Cut exactly after a member, where a tar reader sees a clean end.
    let fixture = Fixture::new();
    let mut bytes = tar_of(&[("manifest.json".into(), b"[]".to_vec())]);
    bytes.truncate(1024);
    let error = import(&fixture.write_archive(&bytes), &fixture.dest()).unwrap_err();
    assert!(
        matches!(error, OciError::TruncatedArchive { .. }),
        "{error}"
    );
}

#[test]
fn truncated_layer_rejected() {
    let fixture = Fixture::new();
    let layout = fixture.directory.path().join("layout");
    let layer = base_layer();
    let digest = sha256_hex(&layer.blob);
    write_layout(&oci_files(&[layer]), &layout);
    let blob = layout.join("blobs/sha256").join(&digest);
    let mut bytes = fs::read(&blob).unwrap();
    bytes.truncate(1024 + 100);
    fs::write(&blob, bytes).unwrap();

    let error = import(&layout, &fixture.dest()).unwrap_err();
    assert!(matches!(error, OciError::TruncatedLayer { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains(&format!("truncated layer sha256:{digest}")),
        "{error}"
    );
}

#[test]
fn layer_without_end_marker_rejected() {
    // The digests match the cut blob, so only the missing end-of-archive
    // blocks show that the layer is incomplete.
    let fixture = Fixture::new();
    let mut tar = layer_tar(&[Member::File("a", b"a"), Member::File("b", b"b")]);
    tar.truncate(tar.len() - 1024);
    let layer = Layer {
        diff_id: format!("sha256:{}", sha256_hex(&tar)),
        blob: tar,
    };
    let error = fixture.import_docker(&[layer]).unwrap_err();
    assert!(matches!(error, OciError::TruncatedLayer { .. }), "{error}");
}

#[test]
fn truncated_gzip_layer_rejected() {
    let fixture = Fixture::new();
    let layout = fixture.directory.path().join("layout");
    let big: Vec<u8> = (0..200_000u32).flat_map(|n| n.to_le_bytes()).collect();
    let layer = gzipped(&[Member::File("big", &big)]);
    let digest = sha256_hex(&layer.blob);
    write_layout(&oci_files(&[layer]), &layout);
    let blob = layout.join("blobs/sha256").join(&digest);
    let bytes = fs::read(&blob).unwrap();
    fs::write(&blob, &bytes[..bytes.len() / 2]).unwrap();

    let error = import(&layout, &fixture.dest()).unwrap_err();
    assert!(matches!(error, OciError::TruncatedLayer { .. }), "{error}");
}

#[test]
fn layer_digest_mismatch_rejected() {
    let fixture = Fixture::new();
    let layout = fixture.directory.path().join("layout");
    let layer = base_layer();
    let digest = sha256_hex(&layer.blob);
    write_layout(&oci_files(&[layer]), &layout);
    let blob = layout.join("blobs/sha256").join(&digest);
    let mut bytes = fs::read(&blob).unwrap();
    // The first member's data starts after its 512-byte header; changing
    // it keeps the tar valid.
    let position = bytes
        .windows(9)
        .position(|window| window == b"#!/bin/sh")
        .unwrap();
    bytes[position] = b'X';
    fs::write(&blob, bytes).unwrap();

    let error = import(&layout, &fixture.dest()).unwrap_err();
    assert!(matches!(error, OciError::DigestMismatch { .. }), "{error}");
    assert!(
        error.to_string().contains(&format!("blob sha256:{digest}")),
        "{error}"
    );
}

#[test]
fn diff_id_mismatch_rejected() {
    let fixture = Fixture::new();
    let mut layer = base_layer();
    layer.diff_id = format!("sha256:{}", "a".repeat(64));
    let error = fixture.import_docker(&[layer]).unwrap_err();
    assert!(matches!(error, OciError::DigestMismatch { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("layer0/layer.tar (uncompressed)"),
        "{error}"
    );
}

#[test]
fn config_digest_mismatch_rejected() {
    let fixture = Fixture::new();
    let layout = fixture.directory.path().join("layout");
    let files = oci_files(&[base_layer()]);
    write_layout(&files, &layout);
    // The config is the first blob that oci_manifest returns.
    let config_path = layout.join(&files[0].0);
    let mut config = fs::read(&config_path).unwrap();
    let position = config
        .windows(5)
        .position(|window| window == b"1000:")
        .unwrap();
    config[position] = b'2';
    fs::write(&config_path, config).unwrap();

    let error = import(&layout, &fixture.dest()).unwrap_err();
    assert!(matches!(error, OciError::DigestMismatch { .. }), "{error}");
}
