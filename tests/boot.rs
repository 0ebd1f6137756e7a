//! QEMU tests of the boot chain and of ztms-init as PID 1: OVMF, systemd-boot,
//! the UKI, stage 1 with dm-verity, stage 2 phases, supervision and power-off.

mod harness;

use std::time::Duration;

use harness::{boot, image, BOOT_TIMEOUT};

#[test]
fn boot_reaches_ready_and_powers_off() {
    let image = image("test-boot");
    let mut vm = boot("boot_reaches_ready_and_powers_off", &image);

    vm.wait_for_console("(?m)^ztms-init: stage 1", BOOT_TIMEOUT).unwrap();
    for phase in ["mounts", "sysctl", "cgroups", "services"] {
        let line = vm
            .wait_for_console(&format!("^ztms-init: phase {phase} done in [0-9]+ ms"), BOOT_TIMEOUT)
            .unwrap();
        assert!(line.contains(phase), "{line}");
    }
    vm.wait_for_console("(?m)^ztms-init: ready:", BOOT_TIMEOUT).unwrap();

    let status = vm.status(Duration::from_secs(10)).expect("status over virtio-serial");
    assert_eq!(status.name, "test-boot");
    assert!(status.ready, "{status:?}");
    let web = status.services.iter().find(|s| s.name == "web").expect("web in status");
    assert!(web.healthy, "{web:?}");

    let console = vm.console();
    assert!(console.contains("ztms-init: boot blessed"), "the counted UKI was not blessed");

    vm.power_down(Duration::from_secs(60)).expect("clean power-off after the power button");
    assert!(vm.console().contains("ztms-init: powering off"));

    // The blessing renamed the UKI on the disk itself: read the disk as the
    // guest left it and list the ESP's EFI/Linux directory.
    let raw = harness::scratch().join("blessed-disk.raw");
    vm.read_disk_raw(&raw).expect("read the VM's disk");
    let names = esp_uki_names(&raw);
    assert!(names.iter().any(|n| n == "test-boot-1.0.0.efi"), "no blessed UKI on the ESP: {names:?}");
    assert!(!names.iter().any(|n| n.contains('+')), "a boot counter is left: {names:?}");
    let _ = std::fs::remove_file(&raw);
}

/// Returns the file names in EFI/Linux of the ESP (the first partition).
fn esp_uki_names(raw: &std::path::Path) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut disk = std::fs::File::open(raw).unwrap();
    let mut entry = [0u8; 128];
    disk.seek(SeekFrom::Start(1024)).unwrap();
    disk.read_exact(&mut entry).unwrap();
    let first = u64::from_le_bytes(entry[32..40].try_into().unwrap()) * 512;
    let last = (u64::from_le_bytes(entry[40..48].try_into().unwrap()) + 1) * 512;
    let mut esp = vec![0u8; (last - first) as usize];
    disk.seek(SeekFrom::Start(first)).unwrap();
    disk.read_exact(&mut esp).unwrap();
    let filesystem = fatfs::FileSystem::new(std::io::Cursor::new(esp), fatfs::FsOptions::new()).unwrap();
    let directory = filesystem.root_dir().open_dir("EFI/Linux").unwrap();
    directory.iter().map(|e| e.unwrap().file_name()).filter(|n| n != "." && n != "..").collect()
}

#[test]
fn default_image_boots_and_powers_off() {
    let image = image("media-server");
    let mut vm = boot("default_image_boots_and_powers_off", &image);
    vm.wait_for_console("^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    vm.power_down(Duration::from_secs(60)).expect("clean power-off after the power button");
    assert!(vm.console().contains("ztms-init: powering off"));
}

#[test]
fn sigterm_to_pid1_powers_off_in_order() {
    let image = image("test-sigterm");
    let mut vm = boot("sigterm_to_pid1_powers_off_in_order", &image);
    vm.wait_for_console("sending SIGTERM to PID 1", BOOT_TIMEOUT).unwrap();
    vm.wait_for_console("^ztms-init: powering off", Duration::from_secs(60)).unwrap();
    vm.wait_exit(Duration::from_secs(60)).expect("QEMU exits after the power-off");

    // terminator depends on web, so it stops first.
    let console = vm.console();
    let stop_of = |service: &str| {
        console
            .lines()
            .position(|line| line.contains("ztms-init: stopping") && line.contains(service))
            .unwrap_or_else(|| panic!("no stop line for {service}"))
    };
    assert!(stop_of("terminator") < stop_of("web"), "services stopped out of order");
}

#[test]
fn ctrl_alt_del_reboots() {
    let image = image("test-boot");
    let mut vm = boot("ctrl_alt_del_reboots", &image);
    vm.wait_for_console("^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    vm.monitor("sendkey ctrl-alt-delete").unwrap();
    vm.wait_for_console("^ztms-init: rebooting", Duration::from_secs(60)).unwrap();
    vm.wait_for_console("^ztms-init: stage 1 started", BOOT_TIMEOUT).unwrap();
}

#[test]
fn crash_loop_backs_off_and_orphans_are_reaped() {
    let image = image("test-boot");
    let mut vm = boot("crash_loop_backs_off_and_orphans_are_reaped", &image);
    vm.wait_for_console("(?m)^ztms-init: ready:", BOOT_TIMEOUT).unwrap();

    // The crasher exits after one second each time; with backoff doubling
    // from one second, it restarts several times in 20 s but not 20 times.
    std::thread::sleep(Duration::from_secs(20));
    let status = vm.status(Duration::from_secs(10)).expect("status");
    let crasher = status.services.iter().find(|s| s.name == "crasher").expect("crasher in status");
    assert!(crasher.restarts >= 2, "crasher restarts: {crasher:?}");
    assert!(crasher.restarts <= 10, "crasher restarts without backoff: {crasher:?}");
    assert!(crasher.last_exit.as_deref().unwrap_or_default().contains('3'), "{crasher:?}");
    assert!(vm.console().contains("crasher failing"), "service output is not logged with its name");

    let web = status.services.iter().find(|s| s.name == "web").expect("web in status");
    assert!(web.healthy, "web was affected by the crash loop: {web:?}");
    assert_eq!(web.restarts, 0, "{web:?}");

    assert!(vm.console().contains("orphan left"));
    let zombies = status.zombies;
    assert_eq!(zombies, 0, "PID 1 left zombies");
}
