//! QEMU tests of A/B updates. A bundle sent over the virtio-serial status
//! port is verified and written to the inactive slot, and the new version
//! boots with a boot counter and is blessed. An unhealthy version falls
//! back by itself, bad bundles change nothing, and a power cut during the
//! write still boots a good version.
//!
//! The tests print `figure:` lines with the times that docs/benchmarks.md
//! records; run them with `--nocapture` to see them.

mod harness;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use harness::{boot, BOOT_TIMEOUT};
use ztms::update::protocol::{UpdateReply, UpdateRequest, UpdateState};

/// One VM at a time: the machine has two cores and TCG needs both.
static ONE_VM: Mutex<()> = Mutex::new(());

fn one_vm() -> std::sync::MutexGuard<'static, ()> {
    ONE_VM.lock().unwrap_or_else(|e| e.into_inner())
}

/// Returns the public key the test images embed, generating the pair under
/// target/ on first use. No private key is committed.
fn update_public_key() -> PathBuf {
    let dir = harness::repo().join("target/ztms-tests/update-keys");
    let public = dir.join("update.pub");
    if !public.exists() {
        ztms::update::keys::generate(&dir).expect("generate the test update keys");
    }
    public
}

/// Returns the raw image of `images/test-update-v<version>.toml`.
fn update_image(version: u32) -> PathBuf {
    let key = update_public_key();
    harness::image_with_inputs(&format!("test-update-v{version}"), &[&key])
}

/// Returns the bundle built beside the image of `version`.
fn bundle_of(version: u32) -> PathBuf {
    update_image(version).with_file_name(format!("test-update-{version}.0.0.ztmsb"))
}

fn send(vm: &harness::TestVm, bundle: &Path, reboot: bool) -> UpdateReply {
    let started = Instant::now();
    let mut progress = |reply: &UpdateReply| eprintln!("[{:>6.1} s] update: {}", started.elapsed().as_secs_f64(), reply.message);
    ztms::update::client::send(&vm.paths.status, bundle, false, reboot, &mut progress).expect("send the bundle")
}

fn print_figures(label: &str, reply: &UpdateReply) {
    let Some(report) = &reply.report else { return };
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "figure: {label}: bundle {:.1} MiB received in {} ms; verify {} ms; root {:.1} MiB written in {} ms ({:.1} MiB/s), read back in {} ms; apply {} ms",
        mib(report.bundle_bytes),
        report.receive_ms,
        report.verify_ms,
        mib(report.root_bytes),
        report.root_write_ms,
        mib(report.root_bytes) / (report.root_write_ms.max(1) as f64 / 1000.0),
        report.read_back_ms,
        report.apply_ms
    );
}

/// Returns the byte range of partition `number` (1-based) of a raw disk.
fn partition_range(raw: &Path, number: u64) -> (u64, u64) {
    let mut disk = std::fs::File::open(raw).unwrap();
    let mut entry = [0u8; 128];
    disk.seek(SeekFrom::Start(1024 + (number - 1) * 128)).unwrap();
    disk.read_exact(&mut entry).unwrap();
    let first = u64::from_le_bytes(entry[32..40].try_into().unwrap()) * 512;
    let last = (u64::from_le_bytes(entry[40..48].try_into().unwrap()) + 1) * 512;
    (first, last)
}

fn partition_sha256(raw: &Path, number: u64) -> String {
    use sha2::{Digest, Sha256};
    let (first, last) = partition_range(raw, number);
    let mut disk = std::fs::File::open(raw).unwrap();
    disk.seek(SeekFrom::Start(first)).unwrap();
    let mut hasher = Sha256::new();
    std::io::copy(&mut disk.take(last - first), &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

fn partition_label(raw: &Path, number: u32) -> String {
    let mut disk = std::fs::File::open(raw).unwrap();
    ztms::update::relabel::partition_label(&mut disk, number).unwrap()
}

/// Returns the sorted file names in EFI/Linux of the ESP (partition 1).
fn esp_uki_names(raw: &Path) -> Vec<String> {
    let (first, last) = partition_range(raw, 1);
    let mut disk = std::fs::File::open(raw).unwrap();
    let mut esp = vec![0u8; (last - first) as usize];
    disk.seek(SeekFrom::Start(first)).unwrap();
    disk.read_exact(&mut esp).unwrap();
    let filesystem = fatfs::FileSystem::new(std::io::Cursor::new(esp), fatfs::FsOptions::new()).unwrap();
    let directory = filesystem.root_dir().open_dir("EFI/Linux").unwrap();
    let mut names: Vec<String> = directory.iter().map(|e| e.unwrap().file_name()).filter(|n| n != "." && n != "..").collect();
    names.sort();
    names
}

/// Powers the VM off and returns its disk as a raw file.
fn disk_after_power_off(vm: &mut harness::TestVm, name: &str) -> PathBuf {
    vm.power_down(Duration::from_secs(90)).expect("clean power-off");
    let raw = harness::scratch().join(format!("{name}.raw"));
    vm.read_disk_raw(&raw).expect("read the VM's disk");
    raw
}

#[test]
fn update_to_v2_is_blessed_and_keeps_v1() {
    let _vm_slot = one_vm();
    let v1 = update_image(1);
    let bundle = bundle_of(2);
    let mut vm = boot("update_to_v2_is_blessed_and_keeps_v1", &v1);
    vm.wait_for_console("^ztms-init: boot blessed", BOOT_TIMEOUT).unwrap();

    let reply = send(&vm, &bundle, true);
    assert_eq!(reply.update, UpdateState::Applied, "{}", reply.message);
    print_figures("v1 -> v2", &reply);
    let applied = Instant::now();

    vm.wait_for_console("^ztms-init: rebooting", Duration::from_secs(60)).unwrap();
    vm.wait_for_console("^ztms-init: stage 1 started", BOOT_TIMEOUT).unwrap();
    vm.wait_for_console("^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    let blessed = vm.wait_for_console("^ztms-init: boot blessed", Duration::from_secs(60)).unwrap();
    eprintln!("figure: reboot to bless of v2: {:.1} s", applied.elapsed().as_secs_f64());
    assert!(blessed.contains("test-update-2.0.0"), "{blessed}");

    let status = vm.status(Duration::from_secs(10)).expect("status");
    assert_eq!(status.version, "2.0.0");
    assert_eq!(status.slot, "b");
    let web = status.services.iter().find(|s| s.name == "web").expect("web in status");
    assert!(web.healthy, "the health check that needs v2's overlay file fails: {web:?}");

    let raw = disk_after_power_off(&mut vm, "update-v2");
    let names = esp_uki_names(&raw);
    assert_eq!(names, ["test-update-1.0.0.efi", "test-update-2.0.0.efi"], "v1 is not kept as the blessed fallback");
    assert_eq!(partition_label(&raw, 3), "test-update-root-b");
    assert_eq!(partition_label(&raw, 2), "test-update-root-a");
    let _ = std::fs::remove_file(&raw);
}

#[test]
fn downgrade_to_v1_stays_after_reboot() {
    let _vm_slot = one_vm();
    let v2 = update_image(2);
    let bundle = bundle_of(1);
    let mut vm = boot("downgrade_to_v1_stays_after_reboot", &v2);
    vm.wait_for_console("^ztms-init: boot blessed", BOOT_TIMEOUT).unwrap();

    let refused = send(&vm, &bundle, false);
    assert_eq!(refused.update, UpdateState::Rejected, "a downgrade without allow-downgrade: {}", refused.message);
    let reply = ztms::update::client::send(&vm.paths.status, &bundle, true, true, &mut |_| {}).expect("send the bundle");
    assert_eq!(reply.update, UpdateState::Applied, "{}", reply.message);
    vm.wait_for_console("^ztms-init: rebooting", Duration::from_secs(60)).unwrap();
    let blessed = vm.wait_for_console("^ztms-init: boot blessed", BOOT_TIMEOUT).unwrap();
    assert!(blessed.contains("test-update-1.0.0"), "{blessed}");
    let demoted = "ztms-init: test-update-2.0.0.efi is newer than the blessed downgrade; renamed to test-update-2.0.0+0-0.efi";
    assert!(vm.console().contains(demoted), "v2 was not put behind the downgrade");

    // systemd-boot would boot the newest version; the blessed downgrade
    // put it last, so v1 boots again.
    vm.reset().expect("reset the VM");
    vm.wait_for_console("^ztms-init: stage 1 started", BOOT_TIMEOUT).unwrap();
    vm.wait_for_console("^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    let status = vm.status(Duration::from_secs(10)).expect("status");
    assert_eq!((status.version.as_str(), status.slot.as_str()), ("1.0.0", "b"), "the downgrade did not stay");
    assert_eq!(status.failed_update, None, "the version put behind the downgrade counts as failed");

    let raw = disk_after_power_off(&mut vm, "downgrade-v1");
    assert_eq!(esp_uki_names(&raw), ["test-update-1.0.0.efi", "test-update-2.0.0+0-0.efi"]);
    let _ = std::fs::remove_file(&raw);
}

/// Writes a FAT image labelled `ZTMS-UPDATE` holding `bundles`.
fn update_stick(path: &Path, bundles: &[&Path]) {
    let bytes: u64 = bundles.iter().map(|bundle| std::fs::metadata(bundle).unwrap().len()).sum();
    let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path).unwrap();
    file.set_len(bytes + (16 << 20)).unwrap();
    fatfs::format_volume(&file, fatfs::FormatVolumeOptions::new().volume_label(*b"ZTMS-UPDATE")).unwrap();
    let filesystem = fatfs::FileSystem::new(&file, fatfs::FsOptions::new()).unwrap();
    for bundle in bundles {
        let name = bundle.file_name().unwrap().to_string_lossy();
        let mut output = filesystem.root_dir().create_file(&name).unwrap();
        std::io::copy(&mut std::fs::File::open(bundle).unwrap(), &mut output).unwrap();
    }
}

/// An appliance without a shell updates from a USB stick: the newest
/// bundle that is newer than the running version is applied and booted,
/// and the stick left in place changes nothing afterwards.
#[test]
fn update_stick_applies_the_newest_bundle_once() {
    let _vm_slot = one_vm();
    let v1 = update_image(1);
    let stick = harness::scratch().join("update-stick.img");
    update_stick(&stick, &[&bundle_of(1), &bundle_of(2)]);
    let mut config = harness::fresh_config("update_stick_applies_the_newest_bundle_once", &v1);
    config.extra_drives = vec![stick.clone()];
    let mut vm = harness::start("update_stick_applies_the_newest_bundle_once", &config);

    vm.wait_for_console("^ztms-init: update: the update stick .* holds test-update-2.0.0.ztmsb", BOOT_TIMEOUT).unwrap();
    vm.wait_for_console("^ztms-init: rebooting into the update", Duration::from_secs(300)).unwrap();
    let blessed = vm.wait_for_console("^ztms-init: boot blessed", BOOT_TIMEOUT).unwrap();
    assert!(blessed.contains("test-update-2.0.0"), "{blessed}");
    vm.wait_for_console("^ztms-init: update: the update stick .* holds no bundle of test-update newer than 2.0.0", Duration::from_secs(30))
        .unwrap();
    let status = vm.status(Duration::from_secs(10)).expect("status");
    assert_eq!((status.version.as_str(), status.slot.as_str()), ("2.0.0", "b"));
    let _ = std::fs::remove_file(&stick);
}

#[test]
fn unhealthy_v3_falls_back_to_v2() {
    let _vm_slot = one_vm();
    let v2 = update_image(2);
    let bundle = bundle_of(3);
    let mut vm = boot("unhealthy_v3_falls_back_to_v2", &v2);
    vm.wait_for_console("^ztms-init: boot blessed", BOOT_TIMEOUT).unwrap();

    let reply = send(&vm, &bundle, true);
    assert_eq!(reply.update, UpdateState::Applied, "{}", reply.message);
    print_figures("v2 -> v3", &reply);
    let applied = Instant::now();

    // v3 never becomes ready; the next ready line is v2's after the
    // fallback. Each try is a boot plus v3's 30 s ready timeout.
    vm.wait_for_console("^ztms-init: ready:", Duration::from_secs(3 * 240 + 240)).unwrap();
    eprintln!("figure: v3 applied to v2 ready again after the fallback: {:.1} s", applied.elapsed().as_secs_f64());
    let status = vm.status(Duration::from_secs(10)).expect("status");
    assert_eq!(status.version, "2.0.0");
    assert_eq!(status.slot, "a");
    let tries = vm.console().matches("rebooting the unhealthy trial boot").count();
    assert_eq!(tries, 3, "v3 was tried {tries} times, not the 3 of its boot counter");
    // The status names the failed version and the reason its boots logged.
    let failed = status.failed_update.expect("the status does not report the failed update");
    assert_eq!((failed.version.as_str(), failed.tries), ("3.0.0", 3), "{failed:?}");
    assert!(failed.reason.contains("not every service is healthy"), "{failed:?}");
    assert!(failed.reason.contains("unhealthy: never-healthy"), "{failed:?}");

    let raw = disk_after_power_off(&mut vm, "update-v3-fallback");
    let names = esp_uki_names(&raw);
    assert!(names.contains(&"test-update-2.0.0.efi".to_string()), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("test-update-3.0.0+0-")), "v3's counter is not used up: {names:?}");
    let _ = std::fs::remove_file(&raw);
}

/// Returns the bundle with one byte flipped at `offset` inside member `file`.
fn tampered(bundle: &Path, file: &str, offset_in_member: fn(u64) -> u64, name: &str) -> PathBuf {
    let mut archive = tar::Archive::new(std::fs::File::open(bundle).unwrap());
    let mut position = None;
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == file {
            position = Some(entry.raw_file_position() + offset_in_member(entry.size()));
        }
    }
    let position = position.unwrap_or_else(|| panic!("{file} not in {}", bundle.display()));
    let mut bytes = std::fs::read(bundle).unwrap();
    bytes[position as usize] ^= 0x01;
    let out = harness::scratch().join(name);
    std::fs::write(&out, bytes).unwrap();
    out
}

#[test]
fn bad_bundles_are_rejected_before_writing() {
    let _vm_slot = one_vm();
    let v2 = update_image(2);
    let lower = bundle_of(1);
    let v3 = bundle_of(3);
    let bad_signature = tampered(&v3, "manifest.json", |size| size / 2, "bad-signature.ztmsb");
    let changed_byte = tampered(&v3, "root.img", |size| size / 2, "changed-byte.ztmsb");
    let mut vm = boot("bad_bundles_are_rejected_before_writing", &v2);
    vm.wait_for_console("^ztms-init: boot blessed", BOOT_TIMEOUT).unwrap();

    let cases = [
        (&lower, "not newer"),
        (&bad_signature, "signature"),
        (&changed_byte, "sha256"),
    ];
    for (bundle, expected) in cases {
        let reply = send(&vm, bundle, false);
        assert_eq!(reply.update, UpdateState::Rejected, "{}: {}", bundle.display(), reply.message);
        assert!(reply.message.contains(expected), "{}: {}", bundle.display(), reply.message);
    }
    let status = vm.status(Duration::from_secs(10)).expect("status after the rejected bundles");
    assert!(status.ready, "{status:?}");

    let raw = disk_after_power_off(&mut vm, "update-rejected");
    assert_eq!(partition_sha256(&raw, 3), partition_sha256(&v2, 3), "the inactive slot was written");
    assert_eq!(partition_label(&raw, 3), "test-update-root-b");
    assert_eq!(esp_uki_names(&raw), ["test-update-2.0.0.efi"]);
    let _ = std::fs::remove_file(&raw);
    for file in [bad_signature, changed_byte] {
        let _ = std::fs::remove_file(file);
    }
}

/// Where a power cut falls: after a console line of the update, plus a
/// delay in milliseconds.
struct Cut {
    after: &'static str,
    delay_ms: u64,
}

/// Returns a delay from 0 to `max_ms` ms that differs from run to run.
fn varying_delay(max_ms: u64) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    u64::from(nanos) % (max_ms + 1)
}

/// Cuts the power at varying points of an update, ten times on one
/// disk, and checks after each cut that a good version boots and that the
/// data volume made at the first boot unlocks by the TPM alone.
#[test]
fn power_cut_during_update_boots_good_version() {
    let _vm_slot = one_vm();
    let v1 = update_image(1);
    // The update goes from the running version to the other one. A cut
    // after the write is complete boots the other version, so the next
    // update goes back, as a downgrade.
    let bundles = [("1.0.0", bundle_of(1)), ("2.0.0", bundle_of(2))];
    let mut running = 0;
    let mut vm = boot("power_cut_during_update_boots_good_version", &v1);
    vm.wait_for_console("^ztms-init: boot blessed", BOOT_TIMEOUT).unwrap();

    // The cuts take turns: while the bundle arrives, while the root is
    // written, and during the read-back. A soak run sets
    // ZTMS_UPDATE_POWER_CUTS above the ten of a normal run.
    let count: usize = std::env::var("ZTMS_UPDATE_POWER_CUTS").ok().and_then(|text| text.parse().ok()).unwrap_or(10);
    let cuts: Vec<Cut> = (0..count)
        .map(|number| match number % 3 {
            0 => Cut { after: "update: receiving a bundle", delay_ms: 1000 + varying_delay(3000) },
            1 => Cut { after: "update: signature and hashes", delay_ms: varying_delay(8000) },
            _ => Cut { after: "update: wrote [0-9]+ bytes", delay_ms: varying_delay(2000) },
        })
        .collect();
    for (number, cut) in cuts.iter().enumerate() {
        let (target, bundle) = &bundles[1 - running];
        let stream = ztms::update::client::connect(&vm.paths.status).unwrap();
        let control = stream.try_clone().unwrap();
        let size = std::fs::metadata(bundle).unwrap().len();
        let request = UpdateRequest { size, allow_downgrade: running == 1, reboot: false };
        let mut input = std::fs::File::open(bundle).unwrap();
        let sender = std::thread::spawn(move || ztms::update::client::send_on(stream, &mut input, request, &mut |_| {}));

        vm.wait_for_console(cut.after, Duration::from_secs(300)).unwrap();
        std::thread::sleep(Duration::from_millis(cut.delay_ms));
        vm.reset().expect("reset the VM");
        eprintln!("power cut {} of {}: {} ms after {:?}, updating to {target}", number + 1, cuts.len(), cut.delay_ms, cut.after);
        let _ = control.shutdown(std::net::Shutdown::Both);
        let _ = sender.join();

        vm.wait_for_console("^ztms-init: stage 1 started", BOOT_TIMEOUT).unwrap();
        vm.wait_for_console("^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
        let status = vm.status(Duration::from_secs(10)).expect("status after the power cut");
        let storage = status.phases.iter().find(|p| p.name == "storage").expect("storage phase");
        assert_eq!(storage.state, ztms::status::PhaseState::Done, "/data after the cut: {storage:?}");
        let volume = status.storage.as_ref().expect("storage status");
        assert_eq!(volume.unlocked_by.as_deref(), Some("tpm2"), "the TPM did not unlock /data after the cut: {volume:?}");
        assert!(!volume.provisioned, "the cut made the volume be created again: {volume:?}");
        assert!(!volume.resumed, "the cut made the volume be provisioned again: {volume:?}");
        if status.version == *target {
            eprintln!("the cut came after the update to {target} was complete; {target} runs");
            running = 1 - running;
        } else {
            assert_eq!(status.version, bundles[running].0, "the cut after {:?} booted neither version", cut.after);
        }
        vm.wait_for_console("^ztms-init: (boot blessed|phase bless done)", Duration::from_secs(60)).unwrap();
    }

    // The interrupted writes leave nothing that stops a complete update.
    let (target, bundle) = &bundles[1 - running];
    let reply = ztms::update::client::send(&vm.paths.status, bundle, running == 1, true, &mut |_| {}).expect("send the bundle");
    assert_eq!(reply.update, UpdateState::Applied, "{}", reply.message);
    vm.wait_for_console("^ztms-init: rebooting", Duration::from_secs(60)).unwrap();
    vm.wait_for_console("^ztms-init: boot blessed", BOOT_TIMEOUT).unwrap();
    let status = vm.status(Duration::from_secs(10)).expect("status");
    assert_eq!(status.version, *target);
    let volume = status.storage.as_ref().expect("storage status");
    assert_eq!(volume.unlocked_by.as_deref(), Some("tpm2"), "{volume:?}");
}

/// Returns a copy of `bundle` whose root image has one byte flipped in the
/// EROFS superblock, signed again with the test key, so it passes every
/// check on the appliance and only dm-verity finds the damage at boot.
fn corrupted_root_bundle(bundle: &Path) -> PathBuf {
    let dir = harness::scratch().join("corrupted-bundle");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = ztms::update::keys::load_signing(&update_public_key().with_file_name("update.key")).unwrap();
    let verifying = key.verifying_key();
    let manifest = ztms::update::bundle::verify(bundle, &verifying).expect("the original bundle verifies");

    let mut files = Vec::new();
    let mut artifacts = Vec::new();
    for artifact in &manifest.artifacts {
        let path = dir.join(&artifact.file);
        let mut output = std::fs::File::create(&path).unwrap();
        ztms::update::bundle::extract(bundle, &artifact.file, &mut output).unwrap();
        drop(output);
        if artifact.file == ztms::update::bundle::ROOT_IMAGE {
            let mut bytes = std::fs::read(&path).unwrap();
            // The EROFS superblock starts at byte 1024 of the image.
            bytes[1024 + 8] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
        artifacts.push(ztms::update::bundle::describe(&artifact.file, &path).unwrap());
        files.push((artifact.file.clone(), path));
    }
    let corrupted = ztms::update::bundle::BundleManifest { artifacts, ..manifest };
    let out = dir.join("corrupted.ztmsb");
    ztms::update::bundle::write(&out, &corrupted, &key, &files).unwrap();
    for (_, path) in files {
        let _ = std::fs::remove_file(path);
    }
    out
}

#[test]
fn corrupted_v3_root_falls_back_to_v2() {
    let _vm_slot = one_vm();
    let v2 = update_image(2);
    let bundle = corrupted_root_bundle(&bundle_of(3));
    let mut vm = boot("corrupted_v3_root_falls_back_to_v2", &v2);
    vm.wait_for_console("^ztms-init: boot blessed", BOOT_TIMEOUT).unwrap();

    let reply = send(&vm, &bundle, true);
    assert_eq!(reply.update, UpdateState::Applied, "the signed, consistent bundle was not applied: {}", reply.message);
    let applied = Instant::now();

    // The console carries each failure twice, the plain line and the
    // kernel's copy with a time stamp, and the two can interleave. So the
    // pattern names "boot failed" (the harness stops at such a line
    // otherwise), and the tries are counted from the kernel's own line.
    loop {
        let line = vm.wait_for_console("^ztms-init: ready:|ztms-init: boot failed", BOOT_TIMEOUT).unwrap();
        if line.starts_with("ztms-init: ready:") {
            break;
        }
    }
    let console = vm.console();
    let tries = console.lines().filter(|line| line.contains("Command line:") && line.contains("ztms.slot=b")).count();
    assert_eq!(tries, 3, "the corrupted v3 was tried {tries} times, not the 3 of its boot counter");
    assert!(console.contains("verity check failed for test-update-root-b"), "no dm-verity failure on the console");
    eprintln!("figure: corrupted v3 applied to v2 ready again: {:.1} s", applied.elapsed().as_secs_f64());
    let status = vm.status(Duration::from_secs(10)).expect("status");
    assert_eq!(status.version, "2.0.0");
    assert_eq!(status.slot, "a");
    // The corrupted root never reached /data, so no log explains it.
    let failed = status.failed_update.expect("the status does not report the failed update");
    assert_eq!((failed.version.as_str(), failed.tries), ("3.0.0", 3), "{failed:?}");
    assert!(failed.reason.contains("before /data was mounted"), "{failed:?}");
    let _ = std::fs::remove_file(&bundle);
}
