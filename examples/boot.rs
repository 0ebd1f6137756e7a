//! Boot benchmark: boots an image headless twice per run. The first boot
//! provisions the data volume, the second one unlocks it on the same disk
//! and TPM. For each boot it prints the time from QEMU start to the first
//! ztms-init line, to stage 2 and to "ready", the duration of each stage 2
//! phase, and ztms-init's resident memory. It also prints init's own share
//! of the time to ready: init start to ready minus the slowest service's
//! time from `crun run` to healthy, an estimate that ignores dependency
//! chains.
//!
//! Run: cargo run --release --example boot -- out/test-boot.raw [RUNS]
//! (ZTMS_ACCEL=tcg or kvm to force the accelerator).

use std::path::PathBuf;
use std::time::Duration;

use ztms::run::vm::{Vm, VmConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let image = PathBuf::from(args.next().expect("usage: boot IMAGE [RUNS]"));
    let runs: usize = args.next().map(|n| n.parse().expect("RUNS is a number")).unwrap_or(3);
    let (accel, reason) = ztms::run::accel::detect();
    println!("accelerator: {accel} ({reason})");
    println!("run  boot   stage1_s  stage2_s  ready_s  init_to_ready_ms  init_share_ms  init_rss_kib  phases");
    for run in 1..=runs {
        let state_dir = std::env::temp_dir().join(format!("ztms-boot-bench-{run}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        let mut config = VmConfig::headless(&image, state_dir, accel);
        for boot in ["first", "again"] {
            let mut vm = Vm::start(&config, false).expect("start VM");
            measure(&mut vm, run, boot);
            vm.power_down(Duration::from_secs(120)).expect("power-off");
            config.keep_disk = true;
        }
    }
}

/// Waits for the milestones of one boot and prints its row.
fn measure(vm: &mut Vm, run: usize, boot: &str) {
    let timeout = Duration::from_secs(300);
    vm.wait_for_console("^ztms-init: stage 1 started", timeout).expect("stage 1");
    let stage1 = vm.started.elapsed();
    vm.wait_for_console("^ztms-init: phase plan done", timeout).expect("stage 2");
    let stage2 = vm.started.elapsed();
    let line = vm.wait_for_console("^ztms-init: ready:", timeout).expect("ready");
    let ready = vm.started.elapsed();

    let init_to_ready: u64 = line
        .split(" in ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|ms| ms.trim().parse().ok())
        .unwrap_or(0);
    // The services report their container facts a moment after they start.
    std::thread::sleep(Duration::from_secs(3));
    let status = vm.status(Duration::from_secs(10)).ok();

    let rss = status.as_ref().map(|s| s.init_rss_kib).unwrap_or(0);
    let slowest_service = status
        .iter()
        .flat_map(|s| s.services.iter())
        .filter_map(|service| service.container.as_ref().and_then(|facts| facts.healthy_ms))
        .max()
        .unwrap_or(0);
    let phases: Vec<String> = status
        .iter()
        .flat_map(|s| s.phases.iter())
        .map(|p| format!("{}={}", p.name, p.duration_ms.map(|ms| ms.to_string()).unwrap_or("-".into())))
        .collect();
    println!(
        "{run:<4} {boot:<6} {:>8.1}  {:>8.1}  {:>7.1}  {init_to_ready:>16}  {:>13}  {rss:>12}  {}",
        stage1.as_secs_f64(),
        stage2.as_secs_f64(),
        ready.as_secs_f64(),
        init_to_ready.saturating_sub(slowest_service),
        phases.join(" ")
    );
}
