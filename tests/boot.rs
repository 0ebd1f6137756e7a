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
