//! The generated ruleset against the kernel: `nft --check` in a fresh
//! network namespace, and real TCP connections between namespaces wired
//! up the way the network plan describes.
//!
//! These tests need root, `ip` and `nft`; without them each prints why it
//! skipped and passes. They create network namespaces named `ztmsnet-*`
//! and delete them when they finish.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use ztms::net::{nftables, NetworkPlan};

include!("../src/net/testdata/synthetic.rs");

const MEDIA_STACK: &str = include_str!("../src/net/testdata/media-stack.toml");

/// How long a connection attempt that the firewall drops waits.
const DENIED_TIMEOUT: Duration = Duration::from_millis(700);

/// Returns why the host cannot run these tests, if it cannot.
fn missing_requirement() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root");
    }
    for tool in ["nft", "ip", "unshare"] {
        let found = Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
        if !found {
            return Some("needs nft, ip and unshare");
        }
    }
    None
}

macro_rules! require_host {
    () => {
        if let Some(reason) = missing_requirement() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

fn plan_of(text: &str) -> NetworkPlan {
    let loaded = ztms::config::parse(Path::new("net-test.toml"), text.to_string()).expect("valid definition");
    NetworkPlan::from_definition(&loaded.definition).expect("network plan")
}

/// Runs `command` with `input` on stdin and panics with its stderr on failure.
fn run_with_input(command: &mut Command, input: &str) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{command:?} failed to start: {error}"));
    child.stdin.take().expect("stdin is piped").write_all(input.as_bytes()).expect("write stdin");
    let output = child.wait_with_output().expect("wait for command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn run(args: &[&str]) {
    let output = Command::new(args[0]).args(&args[1..]).output().expect("command starts");
    assert!(output.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

fn nft_check(json: &str) {
    run_with_input(Command::new("unshare").args(["-n", "nft", "-c", "-j", "-f", "-"]), json);
}

#[test]
fn nft_accepts_media_stack_ruleset() {
    require_host!();
    let plan = plan_of(MEDIA_STACK);
    nft_check(&nftables::to_json(&nftables::ruleset(&plan, &[])));
}

#[test]
fn nft_accepts_default_image_ruleset() {
    require_host!();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/media-server.toml");
    let loaded = ztms::config::load(&path).expect("default image definition");
    let plan = NetworkPlan::from_definition(&loaded.definition).expect("network plan");
    nft_check(&nftables::to_json(&nftables::ruleset(&plan, &[])));
}

#[test]
fn nft_accepts_200_service_ruleset() {
    require_host!();
    let plan = plan_of(&synthetic_definition(200));
    nft_check(&nftables::to_json(&nftables::ruleset(&plan, &[])));
}

/// Network namespaces deleted on drop, so a failing test cleans up too.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn create(names: &[String]) -> Self {
        let namespaces = Namespaces(Vec::new());
        let mut namespaces = namespaces;
        for name in names {
            run(&["ip", "netns", "add", name]);
            namespaces.0.push(name.clone());
        }
        namespaces
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

/// Moves the current thread into network namespace `name`.
fn enter(name: &str) {
    let file = File::open(format!("/run/netns/{name}")).expect("namespace file");
    setns(file, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
}

/// A TCP listener in a namespace, stopped on drop.
struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(namespace: &str, address: SocketAddrV4) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, bound) = mpsc::channel();
        let namespace = namespace.to_string();
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            enter(&namespace);
            let listener = TcpListener::bind(address).expect("bind in the test namespace");
            listener.set_nonblocking(true).expect("nonblocking listener");
            ready.send(()).expect("signal ready");
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.write_all(b"ok");
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        bound.recv().expect("listener thread started");
        Listener { stop, thread: Some(thread) }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from inside `namespace` and reports whether the handshake
/// completed in time.
fn connects(namespace: &str, target: SocketAddrV4) -> bool {
    let namespace = namespace.to_string();
    thread::spawn(move || {
        enter(&namespace);
        TcpStream::connect_timeout(&target.into(), DENIED_TIMEOUT).is_ok()
    })
    .join()
    .expect("connect thread")
}

fn counter_packets(namespace: &str, counter: &str) -> u64 {
    let output = Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "-j", "list", "counter", "inet", "ztms", counter])
        .output()
        .expect("nft lists the counter");
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("nft JSON");
    value["nftables"]
        .as_array()
        .and_then(|items| items.iter().find_map(|item| item["counter"]["packets"].as_u64()))
        .unwrap_or_else(|| panic!("counter {counter} not found in {value}"))
}

/// Wires each service of `plan` as the plan documents: a routed veth pair
/// whose host end in `router` carries the segment gateway as a /32, and
/// whose service end is in the namespace `netns(service)`.
fn wire_services(plan: &NetworkPlan, router: &str, netns: &dyn Fn(&str) -> String) {
    run(&["ip", "-n", router, "link", "set", "lo", "up"]);
    run(&["ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    for service in &plan.services {
        let ns = netns(&service.name);
        let address = format!("{}/32", service.address);
        let gateway = service.gateway.to_string();
        run(&["ip", "-n", router, "link", "add", &service.host_link, "type", "veth", "peer", "name", &service.peer_link]);
        run(&["ip", "-n", router, "link", "set", &service.peer_link, "netns", &ns]);
        run(&["ip", "-n", &ns, "link", "set", &service.peer_link, "name", &service.service_link]);
        run(&["ip", "-n", router, "address", "add", &format!("{gateway}/32"), "dev", &service.host_link]);
        run(&["ip", "-n", router, "link", "set", &service.host_link, "up"]);
        run(&["ip", "-n", router, "route", "add", &address, "dev", &service.host_link]);
        run(&["ip", "-n", &ns, "address", "add", &address, "dev", &service.service_link]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        run(&["ip", "-n", &ns, "link", "set", &service.service_link, "up"]);
        run(&["ip", "-n", &ns, "route", "add", &gateway, "dev", &service.service_link]);
        run(&["ip", "-n", &ns, "route", "add", "default", "via", &gateway]);
    }
}

const TRAFFIC_DEFINITION: &str = r#"
[image]
name = "net-traffic"
version = "1.0"

[network]
interface = "up0"

[[service]]
name = "client"
segment = "backend"
command = ["/bin/true"]
ports = [{ port = 8080 }]
allow = ["server:5432/tcp"]

[[service]]
name = "server"
segment = "backend"
command = ["/bin/true"]
ports = [{ port = 5432 }, { port = 5433 }]
"#;

#[test]
fn matrix_allows_declared_pair_only() {
    require_host!();
    let plan = plan_of(TRAFFIC_DEFINITION);
    let prefix = format!("ztmsnet-{}", std::process::id());
    let router = format!("{prefix}-router");
    let netns = |service: &str| format!("{prefix}-{service}");
    let _namespaces = Namespaces::create(&[router.clone(), netns("client"), netns("server")]);

    // Both services share one segment and one gateway address.
    wire_services(&plan, &router, &netns);
    let json = nftables::to_json(&nftables::ruleset(&plan, &[]));
    run_with_input(Command::new("ip").args(["netns", "exec", &router, "nft", "-j", "-f", "-"]), &json);

    let client = plan.service("client").unwrap().address;
    let server = plan.service("server").unwrap().address;
    let _allowed = Listener::start(&netns("server"), SocketAddrV4::new(server, 5432));
    let _denied = Listener::start(&netns("server"), SocketAddrV4::new(server, 5433));
    let _reverse = Listener::start(&netns("client"), SocketAddrV4::new(client, 8080));

    assert!(connects(&netns("client"), SocketAddrV4::new(server, 5432)), "allowed pair did not connect");
    assert!(!connects(&netns("client"), SocketAddrV4::new(server, 5433)), "undeclared port connected");
    assert!(!connects(&netns("server"), SocketAddrV4::new(client, 8080)), "reverse direction connected");
    let forward_drops = counter_packets(&router, "drop_forward");
    assert!(forward_drops > 0, "drop_forward counted nothing");

    // A spoofed source address on the client's link is dropped before the
    // matrix, even towards the allowed port. The default route's `src`
    // makes the client use it.
    let spoofed = Ipv4Addr::new(10, 80, 2, 250);
    let gateway = plan.service("client").unwrap().gateway.to_string();
    run(&["ip", "-n", &netns("client"), "address", "add", &format!("{spoofed}/32"), "dev", "eth0"]);
    run(&["ip", "-n", &netns("client"), "route", "replace", "default", "via", &gateway, "src", &spoofed.to_string()]);
    assert!(!connects(&netns("client"), SocketAddrV4::new(server, 5432)), "spoofed source connected");
    assert!(counter_packets(&router, "drop_spoofed") > 0, "drop_spoofed counted nothing");
    run(&["ip", "-n", &netns("client"), "route", "replace", "default", "via", &gateway, "src", &client.to_string()]);

    // Isolating the server cuts the allowed pair; releasing restores it.
    run_with_input(
        Command::new("ip").args(["netns", "exec", &router, "nft", "-j", "-f", "-"]),
        &nftables::to_json(&nftables::isolate(server)),
    );
    assert!(!connects(&netns("client"), SocketAddrV4::new(server, 5432)), "isolated server connected");
    run_with_input(
        Command::new("ip").args(["netns", "exec", &router, "nft", "-j", "-f", "-"]),
        &nftables::to_json(&nftables::release(server)),
    );
    assert!(connects(&netns("client"), SocketAddrV4::new(server, 5432)), "released server did not connect");

    // Applying the same ruleset again replaces the table in one transaction.
    run_with_input(Command::new("ip").args(["netns", "exec", &router, "nft", "-j", "-f", "-"]), &json);
    assert!(connects(&netns("client"), SocketAddrV4::new(server, 5432)), "re-applied ruleset broke the allowed pair");
}

const BAN_DEFINITION: &str = r#"
[image]
name = "net-ban"
version = "1.0"

[network]
interface = "up0"

[[service]]
name = "web"
segment = "frontend"
command = ["/bin/true"]
ports = [{ port = 8080, publish = 80 }]
"#;

/// Connects from inside `namespace` with the source address `source` and
/// reports whether the handshake completed in time.
fn connects_from(namespace: &str, source: Ipv4Addr, target: SocketAddrV4) -> bool {
    let namespace = namespace.to_string();
    thread::spawn(move || {
        enter(&namespace);
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("TCP socket");
        socket.bind(&SocketAddrV4::new(source, 0).into()).expect("bind the source address");
        socket.connect_timeout(&target.into(), DENIED_TIMEOUT).is_ok()
    })
    .join()
    .expect("connect thread")
}

#[test]
fn banned_client_cannot_reach_published_port() {
    require_host!();
    let plan = plan_of(BAN_DEFINITION);
    let prefix = format!("ztmsnet-{}-ban", std::process::id());
    let router = format!("{prefix}-router");
    let outside = format!("{prefix}-outside");
    let web = format!("{prefix}-web");
    let _namespaces = Namespaces::create(&[router.clone(), outside.clone(), web.clone()]);

    // The router's uplink `up0` faces a client network with three client
    // addresses.
    let uplink = Ipv4Addr::new(192, 168, 50, 1);
    let banned = Ipv4Addr::new(192, 168, 50, 2);
    let other = Ipv4Addr::new(192, 168, 50, 3);
    let short = Ipv4Addr::new(192, 168, 50, 4);
    run(&["ip", "-n", &router, "link", "add", "up0", "type", "veth", "peer", "name", "client0"]);
    run(&["ip", "-n", &router, "link", "set", "client0", "netns", &outside]);
    run(&["ip", "-n", &router, "address", "add", &format!("{uplink}/24"), "dev", "up0"]);
    run(&["ip", "-n", &router, "link", "set", "up0", "up"]);
    run(&["ip", "-n", &outside, "link", "set", "lo", "up"]);
    for client in [banned, other, short] {
        run(&["ip", "-n", &outside, "address", "add", &format!("{client}/24"), "dev", "client0"]);
    }
    run(&["ip", "-n", &outside, "link", "set", "client0", "up"]);

    wire_services(&plan, &router, &|_| web.clone());
    let service = plan.service("web").unwrap();

    let json = nftables::to_json(&nftables::ruleset(&plan, &[]));
    let apply = |document: &str| run_with_input(Command::new("ip").args(["netns", "exec", &router, "nft", "-j", "-f", "-"]), document);
    apply(&json);
    let _listener = Listener::start(&web, SocketAddrV4::new(service.address, 8080));
    let published = SocketAddrV4::new(uplink, 80);

    assert!(connects_from(&outside, banned, published), "client did not connect before its ban");

    apply(&nftables::to_json(&nftables::ban(banned, 600)));
    assert!(!connects_from(&outside, banned, published), "banned client connected");
    assert!(connects_from(&outside, other, published), "another client did not connect");
    assert!(counter_packets(&router, "drop_banned") > 0, "drop_banned counted nothing");

    let listing = Command::new("ip")
        .args(["netns", "exec", &router, "nft", "list", "set", "inet", "ztms", "banned"])
        .output()
        .expect("nft lists the banned set");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains(&format!("{banned} timeout 10m")), "{listing}");

    // The kernel removes an element when its timeout ends.
    apply(&nftables::to_json(&nftables::ban(short, 1)));
    assert!(!connects_from(&outside, short, published), "client banned for 1 s connected at once");
    thread::sleep(Duration::from_millis(1500));
    assert!(connects_from(&outside, short, published), "client still banned after its timeout");
}

const METRICS_DEFINITION: &str = r#"
[image]
name = "net-metrics"
version = "1.0"

[network]
interface = "up0"

[[service]]
name = "prometheus"
segment = "monitoring"
command = ["/bin/true"]

[[service]]
name = "app"
segment = "backend"
command = ["/bin/true"]
"#;

#[test]
fn metrics_port_reachable_from_monitoring_only() {
    require_host!();
    let plan = plan_of(METRICS_DEFINITION);
    let prefix = format!("ztmsnet-{}-metrics", std::process::id());
    let router = format!("{prefix}-router");
    let netns = |service: &str| format!("{prefix}-{service}");
    let _namespaces = Namespaces::create(&[router.clone(), netns("prometheus"), netns("app")]);
    wire_services(&plan, &router, &netns);

    let json = nftables::to_json(&nftables::ruleset(&plan, &[]));
    run_with_input(Command::new("ip").args(["netns", "exec", &router, "nft", "-j", "-f", "-"]), &json);
    let (endpoint, _) = plan.metrics_endpoint().expect("a service is in the monitoring segment");
    let _listener = Listener::start(&router, endpoint);

    assert!(connects(&netns("prometheus"), endpoint), "monitoring service did not reach {endpoint}");
    assert!(!connects(&netns("app"), endpoint), "backend service reached {endpoint}");
    assert!(counter_packets(&router, "drop_input") > 0, "drop_input counted nothing");
}

const THROUGHPUT_DEFINITION: &str = r#"
[image]
name = "net-throughput"
version = "1.0"

[network]
interface = "up0"

[[service]]
name = "sender"
segment = "frontend"
command = ["/bin/true"]
allow = ["receiver:5432/tcp"]

[[service]]
name = "receiver"
segment = "backend"
command = ["/bin/true"]
ports = [{ port = 5432 }]
"#;

/// Bytes sent per transfer in the throughput measurement.
const THROUGHPUT_BYTES: u64 = 256 << 20;

/// Sends [`THROUGHPUT_BYTES`] from `sender` to a listener in `receiver`
/// and returns the bytes received and the time from accept to the end of
/// the stream.
fn transfer(sender: &str, receiver: &str, target: SocketAddrV4) -> (u64, Duration) {
    let (bound, ready) = mpsc::channel();
    let receiver = receiver.to_string();
    let reader = thread::spawn(move || {
        enter(&receiver);
        let listener = TcpListener::bind(target).expect("bind in the receiver namespace");
        bound.send(()).expect("signal ready");
        let (mut stream, _) = listener.accept().expect("accept the sender");
        let started = std::time::Instant::now();
        let mut buffer = vec![0u8; 1 << 20];
        let mut received = 0u64;
        loop {
            match std::io::Read::read(&mut stream, &mut buffer) {
                Ok(0) => break,
                Ok(count) => received += count as u64,
                Err(error) => panic!("reading the transfer failed: {error}"),
            }
        }
        (received, started.elapsed())
    });
    ready.recv().expect("receiver thread started");

    let sender = sender.to_string();
    thread::spawn(move || {
        enter(&sender);
        let mut stream = TcpStream::connect_timeout(&target.into(), Duration::from_secs(5)).expect("connect to the receiver");
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..THROUGHPUT_BYTES >> 20 {
            stream.write_all(&chunk).expect("send the transfer");
        }
    })
    .join()
    .expect("sender thread");
    reader.join().expect("receiver thread")
}

/// Forwarding throughput between two segments with the ruleset loaded and
/// with the table deleted, alternating, in host network namespaces. It
/// prints the figures for docs/benchmarks.md and checks only that every
/// transfer is complete.
#[test]
fn forwarding_throughput_with_and_without_ruleset() {
    require_host!();
    let plan = plan_of(THROUGHPUT_DEFINITION);
    let prefix = format!("ztmsnet-{}-tp", std::process::id());
    let router = format!("{prefix}-router");
    let netns = |service: &str| format!("{prefix}-{service}");
    let _namespaces = Namespaces::create(&[router.clone(), netns("sender"), netns("receiver")]);
    wire_services(&plan, &router, &netns);
    let json = nftables::to_json(&nftables::ruleset(&plan, &[]));
    let target = SocketAddrV4::new(plan.service("receiver").unwrap().address, 5432);

    let mut with_ruleset = Vec::new();
    let mut without_ruleset = Vec::new();
    for _ in 0..3 {
        run_with_input(Command::new("ip").args(["netns", "exec", &router, "nft", "-j", "-f", "-"]), &json);
        let (bytes, elapsed) = transfer(&netns("sender"), &netns("receiver"), target);
        assert_eq!(bytes, THROUGHPUT_BYTES, "transfer with the ruleset");
        with_ruleset.push(bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64());

        run(&["ip", "netns", "exec", &router, "nft", "delete", "table", "inet", nftables::TABLE]);
        let (bytes, elapsed) = transfer(&netns("sender"), &netns("receiver"), target);
        assert_eq!(bytes, THROUGHPUT_BYTES, "transfer without the ruleset");
        without_ruleset.push(bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64());
    }

    let median = |rates: &mut Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let runs = |rates: &[f64]| rates.iter().map(|rate| format!("{rate:.0}")).collect::<Vec<_>>().join(", ");
    let with_text = runs(&with_ruleset);
    let without_text = runs(&without_ruleset);
    let with_median = median(&mut with_ruleset);
    let without_median = median(&mut without_ruleset);
    eprintln!(
        "forwarding throughput, {} MiB per transfer: with the ruleset {with_text} MiB/s (median {with_median:.0}), \
         without {without_text} MiB/s (median {without_median:.0}), ratio {:.2}",
        THROUGHPUT_BYTES >> 20,
        with_median / without_median
    );
}
