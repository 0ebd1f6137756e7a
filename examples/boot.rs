//! Boot benchmark: boots an image headless and prints the time from QEMU
//! start to the first ztms-init line, to stage 2 and to "ready", the
//! duration of each stage 2 phase, and ztms-init's resident memory.
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
    println!("run  stage1_s  stage2_s  ready_s  init_rss_kib  phases");

    for run in 1..=runs {
        let state_dir = std::env::temp_dir().join(format!("ztms-boot-bench-{run}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        let config = VmConfig::headless(&image, state_dir, accel);
        let mut vm = Vm::start(&config, false).expect("start VM");
        let timeout = Duration::from_secs(300);
        vm.wait_for_console("^ztms-init: stage 1 started", timeout).expect("stage 1");
        let stage1 = vm.started.elapsed();
        vm.wait_for_console("^ztms-init: phase plan done", timeout).expect("stage 2");
        let stage2 = vm.started.elapsed();
        vm.wait_for_console("^ztms-init: ready:", timeout).expect("ready");
        let ready = vm.started.elapsed();

        let status = vm.status(Duration::from_secs(10)).ok();
        let rss = status.as_ref().map(|s| s.init_rss_kib).unwrap_or(0);
        let phases: Vec<String> = status
            .iter()
            .flat_map(|s| s.phases.iter())
            .map(|p| format!("{}={}", p.name, p.duration_ms.map(|ms| ms.to_string()).unwrap_or("-".into())))
            .collect();
        println!(
            "{run:<4} {:>8.1}  {:>8.1}  {:>7.1}  {rss:>12}  {}",
            stage1.as_secs_f64(),
            stage2.as_secs_f64(),
            ready.as_secs_f64(),
            phases.join(" ")
        );
        vm.kill();
    }
}
