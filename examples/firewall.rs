//! Prints the firewall of a definition, or measures how the plan and the
//! ruleset scale.
//!
//! ```text
//! cargo run --release --example firewall -- json images/media-server.toml
//! cargo run --release --example firewall -- bench        # needs root and nft
//! ```
//!
//! `bench` builds synthetic definitions with 10, 50 and 200 services,
//! times the plan and the ruleset, counts rules and set elements, and when
//! run as root with `nft` installed, times `nft -j -f -` in a fresh network
//! namespace (`unshare -n`).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use ztms::net::{nftables, NetworkPlan};

include!("../src/net/testdata/synthetic.rs");

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("json") if args.len() == 2 => print_json(Path::new(&args[1])),
        Some("bench") => bench(),
        _ => {
            eprintln!("usage: firewall json DEFINITION | firewall bench");
            std::process::exit(2);
        }
    }
}

fn print_json(path: &Path) {
    let loaded = ztms::config::load(path).unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(1);
    });
    let plan = NetworkPlan::from_definition(&loaded.definition).unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(1);
    });
    println!("{}", nftables::to_json(&nftables::ruleset(&plan, &[])));
}

fn bench() {
    let can_apply = nix::unistd::geteuid().is_root() && Command::new("nft").arg("--version").output().is_ok();
    println!("| services | flows | rules | set elements | plan | ruleset + JSON | JSON bytes | nft -j -f apply |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for count in [10, 50, 200] {
        let text = synthetic_definition(count);
        let loaded = ztms::config::parse(Path::new("synthetic.toml"), text).expect("synthetic definition is valid");

        let started = Instant::now();
        let plan = NetworkPlan::from_definition(&loaded.definition).expect("synthetic plan");
        let plan_time = started.elapsed();

        let started = Instant::now();
        let document = nftables::ruleset(&plan, &[]);
        let json = nftables::to_json(&document);
        let ruleset_time = started.elapsed();

        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let commands = value["nftables"].as_array().expect("nftables array");
        let rules = commands.iter().filter(|c| c["add"].get("rule").is_some()).count();
        let elements: usize = commands
            .iter()
            .filter_map(|c| c["add"]["set"]["elem"].as_array())
            .map(Vec::len)
            .sum();

        let apply = if can_apply { format!("{:.1} ms", apply_millis(&json)) } else { "skipped (needs root and nft)".into() };
        println!(
            "| {count} | {} | {rules} | {elements} | {:.2} ms | {:.2} ms | {} | {apply} |",
            plan.flows.len(),
            plan_time.as_secs_f64() * 1e3,
            ruleset_time.as_secs_f64() * 1e3,
            json.len(),
        );
    }
}

/// Applies the ruleset in a new network namespace and returns the time that
/// `nft` took, in milliseconds.
fn apply_millis(json: &str) -> f64 {
    let started = Instant::now();
    let mut child = Command::new("unshare")
        .args(["-n", "nft", "-j", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("unshare runs");
    child.stdin.take().expect("stdin is piped").write_all(json.as_bytes()).expect("nft reads the ruleset");
    let status = child.wait().expect("nft finishes");
    assert!(status.success(), "nft rejected the ruleset");
    started.elapsed().as_secs_f64() * 1e3
}
