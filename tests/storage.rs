//! QEMU tests of the encrypted data partition with swtpm: provisioning at
//! first boot, unlocking by the TPM, the recovery key on another TPM, power
//! loss during provisioning, and a key file on removable media.

mod harness;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use harness::{fresh_config, image, output_of, scratch, start, TestVm, BOOT_TIMEOUT};
use ztms::build::layout::{TYPE_DATA_UNPROVISIONED, TYPE_LUKS};
use ztms::status::StorageStatus;

/// Prefix of every marker; the image contains it nowhere.
const MARKER_PREFIX: &str = "ztms-STORAGE-MARKER-";
/// Extra virtual disk space the first boot grows the data partition into.
const GROWTH: u64 = 64 << 20;

fn storage(vm: &TestVm) -> StorageStatus {
    let status = vm.status(Duration::from_secs(10)).expect("status over virtio-serial");
    status.storage.clone().unwrap_or_else(|| panic!("no storage in the status: {status:?}"))
}

/// Waits for a line of `service` that starts with `prefix`, anywhere on
/// this boot's console, and returns the rest of it.
fn service_line(vm: &TestVm, service: &str, prefix: &str) -> String {
    let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
    loop {
        let lines = output_of(&vm.console(), service);
        if let Some(rest) = lines.iter().find_map(|line| line.strip_prefix(prefix)) {
            return rest.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line {prefix:?} from {service} on the console:\n{}",
            vm.console_tail(40)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits for the marker service's line about the marker; returns the
/// marker and whether it was found (true) or written (false).
fn marker_line(vm: &TestVm) -> (String, bool) {
    let rest = service_line(vm, "marker", "marker ");
    let found = rest.starts_with("found");
    let marker = rest.split_once(": ").map(|(_, marker)| marker.trim().to_string()).unwrap_or_default();
    assert!(marker.starts_with(MARKER_PREFIX), "unexpected marker line {rest:?}");
    (marker, found)
}

/// Checks that the marker service found `marker` on this boot.
fn expect_marker(vm: &TestVm, marker: &str, when: &str) {
    let (found_marker, found) = marker_line(vm);
    assert!(found, "{when}: the marker service wrote a new marker");
    assert_eq!(found_marker, marker, "{when}: another marker");
}

fn raw_size(image: &Path) -> u64 {
    std::fs::metadata(image).unwrap().len()
}

/// GPT entry `index` (0-based) of a raw disk: type GUID, first and last byte.
fn gpt_entry(raw: &Path, index: u64) -> (String, u64, u64) {
    let mut disk = std::fs::File::open(raw).unwrap();
    let mut entry = [0u8; 128];
    disk.seek(SeekFrom::Start(1024 + index * 128)).unwrap();
    disk.read_exact(&mut entry).unwrap();
    let g = &entry[..16];
    let guid = format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{}",
        g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9],
        g[10..16].iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let first = u64::from_le_bytes(entry[32..40].try_into().unwrap()) * 512;
    let last = (u64::from_le_bytes(entry[40..48].try_into().unwrap()) + 1) * 512;
    (guid, first, last)
}

/// Returns true when `needle` occurs in bytes `first..last` of `raw`.
fn region_contains(raw: &Path, first: u64, last: u64, needle: &[u8]) -> bool {
    let mut disk = std::fs::File::open(raw).unwrap();
    disk.seek(SeekFrom::Start(first)).unwrap();
    let mut remaining = last - first;
    let mut carry: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 4 << 20];
    while remaining > 0 {
        let size = remaining.min(chunk.len() as u64) as usize;
        disk.read_exact(&mut chunk[..size]).unwrap();
        carry.extend_from_slice(&chunk[..size]);
        if carry.windows(needle.len()).any(|window| window == needle) {
            return true;
        }
        let keep = carry.len().saturating_sub(needle.len());
        carry.drain(..keep);
        remaining -= size as u64;
    }
    false
}

#[test]
fn region_scan_finds_a_marker_across_chunks() {
    let path = scratch().join("scan-check.bin");
    let mut data = vec![0u8; (4 << 20) + 100];
    let at = (4 << 20) - 5;
    data[at..at + MARKER_PREFIX.len()].copy_from_slice(MARKER_PREFIX.as_bytes());
    std::fs::write(&path, &data).unwrap();
    assert!(region_contains(&path, 0, data.len() as u64, MARKER_PREFIX.as_bytes()));
    assert!(!region_contains(&path, 0, at as u64, MARKER_PREFIX.as_bytes()));
    let _ = std::fs::remove_file(&path);
}

/// Boots one disk five times. The first boot provisions, and the data
/// survives a clean power-off and a power cut. The raw disk shows no
/// plaintext. A new TPM needs the recovery key, then the key is re-sealed.
#[test]
fn data_volume_lifecycle() {
    let test = "data_volume_lifecycle";
    let image = image("test-storage");
    let mut config = fresh_config(test, &image);
    config.disk_size = Some(raw_size(&image) + GROWTH);

    // First boot: provisioning.
    let mut vm = start(test, &config);
    let (marker, found) = marker_line(&vm);
    assert!(!found, "a fresh disk already had a marker");
    vm.wait_for_console("^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    let first = storage(&vm);
    assert_eq!(first.state, "unlocked", "{first:?}");
    assert!(first.provisioned, "{first:?}");
    assert!(!first.resumed, "{first:?}");
    assert_eq!(first.unlocked_by.as_deref(), Some("tpm2"), "{first:?}");
    assert!(first.grown_bytes >= GROWTH - (2 << 20), "the partition grew by {} bytes only", first.grown_bytes);
    let recovery_key = first.recovery_key.clone().expect("the first boot shows the recovery key");
    assert!(vm.console().contains(&recovery_key), "the recovery key is not on the console");
    let options = first.mount_options.clone().unwrap_or_default();
    for flag in ["nodev", "nosuid", "noexec"] {
        assert!(options.split(',').any(|option| option == flag), "/data mounted with {options}, without {flag}");
    }
    assert_eq!(service_line(&vm, "marker", "exec on data: "), "refused", "a program ran from /data");
    eprintln!("measured first boot: provisioning and unlock {} ms, cipher {:?}", first.unlock_ms.unwrap_or(0), first.cipher);
    let figures = first.throughput.expect("the test image measures throughput");
    let ratio = |encrypted: u64, raw: u64| encrypted as f64 / raw.max(1) as f64;
    eprintln!(
        "measured throughput of {} MiB in KiB/s: write raw {} encrypted {} (ratio {:.2}), read raw {} encrypted {} (ratio {:.2})",
        figures.mib,
        figures.raw_write_kib_s,
        figures.encrypted_write_kib_s,
        ratio(figures.encrypted_write_kib_s, figures.raw_write_kib_s),
        figures.raw_read_kib_s,
        figures.encrypted_read_kib_s,
        ratio(figures.encrypted_read_kib_s, figures.raw_read_kib_s)
    );
    assert!(figures.encrypted_write_kib_s > 0, "{figures:?}");
    assert!(figures.encrypted_read_kib_s > 0, "{figures:?}");
    vm.power_down(Duration::from_secs(90)).expect("clean power-off");

    // The raw disk: the partition is marked provisioned, and the marker is
    // nowhere in it.
    let raw = scratch().join("storage-lifecycle.raw");
    vm.read_disk_raw(&raw).unwrap();
    let (part_type, data_first, data_last) = gpt_entry(&raw, 3);
    assert_eq!(part_type, TYPE_LUKS, "the data partition type after provisioning");
    assert!(!region_contains(&raw, data_first, data_last, MARKER_PREFIX.as_bytes()), "plaintext marker on the raw disk");
    assert!(!region_contains(&raw, 0, raw_size(&raw), recovery_key.as_bytes()), "the recovery key is on the disk");
    let _ = std::fs::remove_file(&raw);
    drop(vm);

    // Second boot: the TPM unlocks, the marker is there, the filesystem
    // was clean. Then the power is cut.
    config.keep_disk = true;
    let mut vm = start(test, &config);
    expect_marker(&vm, &marker, "marker after reboot");
    vm.wait_for_console("^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    let boots = service_line(&vm, "marker", "boots in the persisted log: ");
    assert_eq!(boots, "2", "the persisted log does not record both boots");
    let second = storage(&vm);
    assert!(!second.provisioned, "{second:?}");
    assert_eq!(second.unlocked_by.as_deref(), Some("tpm2"), "{second:?}");
    assert_eq!(second.recovery_key, None, "the recovery key is shown again");
    assert_eq!(second.clean_at_boot, Some(true), "not clean after an orderly power-off: {second:?}");
    eprintln!("measured reboot: storage phase unlock {} ms", second.unlock_ms.unwrap_or(0));
    vm.kill();
    drop(vm);

    // Third boot after the power cut: the journal is replayed, data intact.
    let mut vm = start(test, &config);
    expect_marker(&vm, &marker, "marker after a power cut");
    vm.wait_for_console("^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    let third = storage(&vm);
    assert_eq!(third.clean_at_boot, Some(false), "a power cut left a clean filesystem? {third:?}");
    vm.power_down(Duration::from_secs(90)).expect("clean power-off");
    drop(vm);

    // Fourth boot on a new TPM, as when the disk moves to another machine.
    std::fs::remove_dir_all(config.state_dir.join("tpm")).unwrap();
    let mut vm = start(test, &config);
    vm.wait_for_prompt("Enter the recovery key of the data volume", BOOT_TIMEOUT).unwrap();
    vm.type_console(&format!("{}\n", "0".repeat(64))).unwrap();
    vm.wait_for_console("That key does not unlock the data volume", Duration::from_secs(120)).unwrap();
    vm.wait_for_prompt("Enter the recovery key of the data volume", Duration::from_secs(30)).unwrap();
    vm.type_console(&format!("{}\n", recovery_key.to_uppercase())).unwrap();
    vm.wait_for_console("Recovery key accepted", Duration::from_secs(120)).unwrap();
    vm.wait_for_prompt("Seal the data volume's key to this machine's TPM", Duration::from_secs(30)).unwrap();
    vm.type_console("y\n").unwrap();
    vm.wait_for_console("The key is sealed to this TPM", Duration::from_secs(120)).unwrap();
    expect_marker(&vm, &marker, "marker after recovery");
    vm.wait_for_console("^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    let fourth = storage(&vm);
    assert_eq!(fourth.unlocked_by.as_deref(), Some("recovery-key"), "{fourth:?}");
    assert!(fourth.resealed, "{fourth:?}");
    assert!(fourth.tpm_error.is_some(), "{fourth:?}");
    assert!(!vm.console().contains(&recovery_key.to_uppercase()), "the typed recovery key was echoed");
    vm.power_down(Duration::from_secs(90)).expect("clean power-off");
    drop(vm);

    // Fifth boot: the new TPM unlocks by itself.
    let mut vm = start(test, &config);
    expect_marker(&vm, &marker, "marker after re-sealing");
    let fifth = storage(&vm);
    assert_eq!(fifth.unlocked_by.as_deref(), Some("tpm2"), "{fifth:?}");
    assert!(!vm.console().contains("Enter the recovery key"), "asked for the recovery key after re-sealing");
    vm.power_down(Duration::from_secs(90)).expect("clean power-off");
}

/// Power is cut at three points of first-boot provisioning; each next boot
/// starts provisioning over, and the last one completes it.
#[test]
fn power_cut_during_provisioning() {
    let test = "power_cut_during_provisioning";
    let image = image("test-storage");
    let mut config = fresh_config(test, &image);
    config.disk_size = Some(raw_size(&image) + GROWTH);
    for step in [2, 4, 5] {
        let mut vm = start(test, &config);
        vm.wait_for_console(&format!("storage: provisioning step {step} of 5"), BOOT_TIMEOUT).unwrap();
        // Let the step's writes start before the cut.
        std::thread::sleep(Duration::from_millis(300));
        vm.kill();
        let raw = scratch().join("storage-cut.raw");
        vm.read_disk_raw(&raw).unwrap();
        let (part_type, _, _) = gpt_entry(&raw, 3);
        let _ = std::fs::remove_file(&raw);
        eprintln!("power cut at step {step}: data partition type {part_type}");
        config.keep_disk = true;
    }

    let mut vm = start(test, &config);
    let (_, found) = marker_line(&vm);
    assert!(!found, "a marker exists on a volume that never finished provisioning");
    vm.wait_for_console("^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    let status = storage(&vm);
    assert_eq!(status.state, "unlocked", "{status:?}");
    assert!(status.provisioned, "{status:?}");
    assert!(vm.console().contains("an earlier first boot stopped before the data volume was complete"));
    vm.power_down(Duration::from_secs(90)).expect("clean power-off");

    let raw = scratch().join("storage-cut.raw");
    vm.read_disk_raw(&raw).unwrap();
    assert_eq!(gpt_entry(&raw, 3).0, TYPE_LUKS);
    let _ = std::fs::remove_file(&raw);
}

/// Writes a FAT image labelled `ZTMSKEY` with `keys/data.key`.
fn key_media(path: &Path, key: &[u8]) {
    let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path).unwrap();
    file.set_len(8 << 20).unwrap();
    let options = fatfs::FormatVolumeOptions::new().volume_label(*b"ZTMSKEY    ");
    fatfs::format_volume(&file, options).unwrap();
    let filesystem = fatfs::FileSystem::new(&file, fatfs::FsOptions::new()).unwrap();
    let dir = filesystem.root_dir().create_dir("keys").unwrap();
    let mut key_file = dir.create_file("data.key").unwrap();
    std::io::Write::write_all(&mut key_file, key).unwrap();
}

/// Without a TPM, a key file on removable media unlocks the volume; without
/// the media, the recovery key is asked for.
#[test]
fn key_file_without_tpm() {
    let test = "key_file_without_tpm";
    let image = image("test-keyfile");
    let media = scratch().join("key-media.img");
    let mut key = [0u8; 64];
    getrandom::fill(&mut key).unwrap();
    key_media(&media, &key);

    let mut config = fresh_config(test, &image);
    config.tpm = false;
    config.extra_drives = vec![media.clone()];
    let mut vm = start(test, &config);
    let (marker, found) = marker_line(&vm);
    assert!(!found);
    vm.wait_for_console("^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    let first = storage(&vm);
    assert!(first.provisioned, "{first:?}");
    assert_eq!(first.unlocked_by.as_deref(), Some("key-file"), "{first:?}");
    vm.power_down(Duration::from_secs(90)).expect("clean power-off");
    drop(vm);

    config.keep_disk = true;
    let mut vm = start(test, &config);
    expect_marker(&vm, &marker, "marker after reboot with the key");
    assert_eq!(storage(&vm).unlocked_by.as_deref(), Some("key-file"));
    vm.power_down(Duration::from_secs(90)).expect("clean power-off");
    drop(vm);

    config.extra_drives.clear();
    let mut vm = start(test, &config);
    vm.wait_for_prompt("Enter the recovery key of the data volume", BOOT_TIMEOUT).unwrap();
    assert!(vm.console().contains("no removable media with the filesystem label \"ZTMSKEY\""));
    assert!(!output_of(&vm.console(), "marker").iter().any(|line| line.starts_with("marker")), "the service ran without /data");
    vm.kill();
    let _ = std::fs::remove_file(&media);
}

#[test]
fn fresh_image_marks_data_unprovisioned() {
    let image = image("test-storage");
    assert_eq!(gpt_entry(&image, 3).0, TYPE_DATA_UNPROVISIONED);
}
