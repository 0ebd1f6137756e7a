//! Update benchmark: apply time against bundle size. It builds
//! `images/test-update-v1.toml`, and `images/test-update-v2.toml` once per
//! size with that many MiB of random bytes added to its root (random, so
//! EROFS cannot compress them). It boots v1 once, then sends each v2 bundle
//! over the status port without rebooting, and prints one row per bundle:
//! its size, the time to verify it, the raw write of the root image, the
//! read-back, and the whole apply.
//!
//! Run: cargo build --release && cargo run --release --example update -- [MIB...]
//! (default sizes 0 32 64; the 256 MiB root slot of the test images takes
//! about 90 MiB more at most).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ztms::run::vm::{Vm, VmConfig};

fn main() {
    let sizes: Vec<u64> = std::env::args().skip(1).map(|n| n.parse().expect("sizes are MiB numbers")).collect();
    let sizes = if sizes.is_empty() { vec![0, 32, 64] } else { sizes };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = repo.join("target/ztms-bench/update");
    std::fs::create_dir_all(&work).expect("create the work directory");
    let keys = work.join("keys");
    if !keys.join("update.pub").exists() {
        ztms::update::keys::generate(&keys).expect("generate update keys");
    }

    let v1 = build(&repo, &work, &keys, "test-update-v1", "1.0.0", 0);
    let bundles: Vec<(u64, PathBuf)> = sizes
        .iter()
        .enumerate()
        .map(|(index, &mib)| {
            let raw = build(&repo, &work, &keys, "test-update-v2", &format!("2.0.{index}"), mib);
            (mib, raw.with_file_name(format!("test-update-2.0.{index}.ztmsb")))
        })
        .collect();

    let (accel, reason) = ztms::run::accel::detect();
    println!("accelerator: {accel} ({reason})");
    let state_dir = work.join("vm");
    let _ = std::fs::remove_dir_all(&state_dir);
    let config = VmConfig::headless(&v1, state_dir, accel);
    let mut vm = Vm::start(&config, false).expect("start VM");
    vm.wait_for_console("^ztms-init: boot blessed", Duration::from_secs(600)).expect("v1 blessed");

    println!("added_mib  bundle_mib  verify_ms  root_mib  write_ms  write_mib_s  read_back_ms  apply_ms  apply_per_write");
    for (mib, bundle) in &bundles {
        let started = Instant::now();
        let reply = ztms::update::client::send(&vm.paths.status, bundle, false, false, &mut |_| {}).expect("send the bundle");
        let Some(report) = reply.report else {
            panic!("no report for the bundle with {mib} MiB added after {:?}: {}", started.elapsed(), reply.message);
        };
        let in_mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        let write_ms = report.root_write_ms.max(1);
        println!(
            "{mib:>9}  {:>10.1}  {:>9}  {:>8.1}  {:>8}  {:>11.1}  {:>12}  {:>8}  {:>15.2}",
            in_mib(report.bundle_bytes),
            report.verify_ms,
            in_mib(report.root_bytes),
            report.root_write_ms,
            in_mib(report.root_bytes) / (write_ms as f64 / 1000.0),
            report.read_back_ms,
            report.apply_ms,
            report.apply_ms as f64 / write_ms as f64
        );
    }
    vm.kill();
}

/// Builds `images/NAME.toml` as `version`, with `added_mib` MiB of random
/// bytes in an extra overlay, and returns the raw image. The definition is
/// rewritten into the work directory with absolute paths.
fn build(repo: &Path, work: &Path, keys: &Path, name: &str, version: &str, added_mib: u64) -> PathBuf {
    let images = repo.join("images");
    let text = std::fs::read_to_string(images.join(format!("{name}.toml"))).expect("read the definition");
    let mut definition: toml::Table = text.parse().expect("parse the definition");
    let dir = work.join(format!("{name}-{version}"));
    std::fs::create_dir_all(&dir).expect("create the build directory");

    let absolute = |value: &toml::Value| toml::Value::String(images.join(value.as_str().expect("a path")).display().to_string());
    let base = definition["base"].as_table_mut().expect("[base]");
    let mut overlays: Vec<toml::Value> = base["overlays"].as_array().expect("overlays").iter().map(absolute).collect();
    if added_mib > 0 {
        let fill = dir.join("fill");
        let file = fill.join("usr/share/ztms-bench/fill.bin");
        std::fs::create_dir_all(file.parent().unwrap()).expect("create the fill overlay");
        let mut bytes = vec![0u8; (added_mib << 20) as usize];
        getrandom::fill(&mut bytes).expect("random bytes");
        std::fs::write(&file, bytes).expect("write the fill file");
        overlays.push(toml::Value::String(fill.display().to_string()));
    }
    base.insert("overlays".into(), toml::Value::Array(overlays));
    definition["image"].as_table_mut().expect("[image]").insert("version".into(), toml::Value::String(version.into()));
    let update = definition["update"].as_table_mut().expect("[update]");
    update.insert("signing_key".into(), toml::Value::String(keys.join("update.key").display().to_string()));
    update.insert("public_key".into(), toml::Value::String(keys.join("update.pub").display().to_string()));

    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(&definition).expect("serialize the definition")).expect("write the definition");
    let loaded = ztms::config::load(&path).expect("load the rewritten definition");
    let init_binary = std::env::current_exe().expect("own path").parent().and_then(Path::parent).expect("target dir").join("ztms-init");
    let options = ztms::build::BuildOptions {
        out_dir: dir.join("out"),
        cache_dir: ztms::run::default_cache_dir(),
        init_binary,
        source_date_epoch: ztms::build::DEFAULT_EPOCH,
    };
    let started = Instant::now();
    ztms::build::build(&loaded, &options).unwrap_or_else(|error| panic!("building {name} {version} failed: {error}"));
    eprintln!("built {name} {version} (+{added_mib} MiB) in {:.1} s", started.elapsed().as_secs_f64());
    dir.join("out").join(format!("{}.raw", loaded.definition.image.name.get_ref()))
}
