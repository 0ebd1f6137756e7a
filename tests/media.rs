//! The default appliance, `images/media-server.toml`, end to end under
//! QEMU: every request goes from the host through the forwarded uplink
//! port to nginx, as a user's browser would, with curl as the client.
//!
//! One boot serves every check of the default image, because the first
//! boot of the whole stack takes minutes under TCG. The ban comes last:
//! after it, the host can no longer reach the appliance.
//!
//! The checks from inside the services' network namespaces need the test
//! probe, which the default image must not carry. They boot a variant that
//! the test writes from `images/media-server.toml` with a `[debug]` table
//! added, so the services and the network plan are the default image's.
//!
//! QEMU's user network gives every host connection the one address
//! 10.0.2.2, so the test of a second client during a ban boots another
//! variant, whose uplink has a static address on a tap in a host network
//! namespace where the test adds two client addresses.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::lan::HostLan;
use harness::{boot, boot_on_lan, boot_with_forwards, free_port, http_reply, image, image_of_definition, postgres_login, probe, ProbeRequest};
use ztms::config::Proto;
use ztms::net::NetworkPlan;
use ztms::run::vm::Forward;
use ztms::status::ProbeOutcome;

/// First boot of the whole stack under TCG: provisioning the data volume,
/// creating the PostgreSQL cluster and the TLS certificates.
const READY_TIMEOUT: Duration = Duration::from_secs(900);

/// The reply of curl: its exit code, the HTTP status (0 without one) and
/// the body.
struct Reply {
    exit: i32,
    status: u16,
    body: String,
}

/// Fetches `https://127.0.0.1:PORT/PATH` with curl and the given extra
/// arguments. The certificate comes from the appliance's own local CA,
/// which is on its encrypted disk, so curl does not verify it.
fn curl(port: u16, path: &str, args: &[&str]) -> Reply {
    let url = format!("https://127.0.0.1:{port}{path}");
    let output = Command::new("curl")
        .args(["--silent", "--insecure", "--max-time", "20", "--write-out", "\n%{http_code}"])
        .args(args)
        .arg(&url)
        .output()
        .expect("run curl");
    reply_of(&output)
}

/// Returns the reply of a curl run with `--write-out "\n%{http_code}"`.
fn reply_of(output: &std::process::Output) -> Reply {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    Reply {
        exit: output.status.code().unwrap_or(-1),
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
    }
}

/// Reads the web password that ztms-init shows on the console at the boot
/// that generates it.
fn web_password(console: &str) -> String {
    let notice = console
        .split("Secret web-password of media-server")
        .nth(1)
        .unwrap_or_else(|| panic!("no web-password notice on the console"));
    // The header line, a blank line, then the value indented.
    notice
        .lines()
        .skip(1)
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("the web-password notice has no value: {notice:?}"))
}

/// Waits until every Prometheus target reports `up`, and returns the
/// targets' JSON; panics with the last reply after `timeout`.
fn wait_for_targets(port: u16, login: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let reply = curl(port, "/prometheus/api/v1/targets", &["--user", login]);
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&reply.body) {
            let targets = json["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
            if !targets.is_empty() && targets.iter().all(|target| target["health"] == "up") {
                return json;
            }
        }
        if Instant::now() > deadline {
            panic!("Prometheus targets not all up after {timeout:?}: {}", reply.body);
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

#[test]
fn media_stack_behind_tls_proxy() {
    let image = image("media-server");

    // The published port, every service port and ports that a default
    // install often opens, each forwarded from its own host port.
    let guest_ports: [u16; 12] = [443, 22, 80, 5432, 6379, 8080, 8200, 8443, 9090, 9100, 9187, 9310];
    let forwards: Vec<Forward> = guest_ports
        .iter()
        .map(|&guest| Forward { host: free_port(), guest, udp: false })
        .collect();
    let https = forwards[0].host;
    let mut vm = boot_with_forwards("media_server", &image, forwards.clone());
    vm.wait_for_console("(?m)^ztms-init: ready:", READY_TIMEOUT).unwrap();
    let login = format!("admin:{}", web_password(&vm.console()));

    // TLS 1.3 only, and HSTS on every reply.
    let landing = curl(https, "/", &["--tlsv1.3", "--user", &login, "--include"]);
    assert_eq!(landing.status, 200, "landing page over TLS 1.3: exit {} {}", landing.exit, landing.body);
    assert!(landing.body.contains("ztms media server"), "{}", landing.body);
    assert!(landing.body.to_lowercase().contains("strict-transport-security: max-age="), "{}", landing.body);
    let old_tls = curl(https, "/", &["--tlsv1.2", "--tls-max", "1.2"]);
    assert_eq!(old_tls.exit, 35, "TLS 1.2 handshake was not refused: status {}", old_tls.status);

    // No login, no page.
    let anonymous = curl(https, "/", &[]);
    assert_eq!(anonymous.status, 401);

    // The services reply through the proxy.
    let media = curl(https, "/media/", &["--user", &login]);
    assert_eq!(media.status, 200, "media server: {}", media.body);
    assert!(media.body.contains("MiniDLNA"), "{}", media.body);
    let torrents = curl(https, "/qbittorrent/", &["--user", &login]);
    assert_eq!(torrents.status, 200, "qBittorrent: {}", torrents.body);
    assert!(torrents.body.contains("qBittorrent"), "{}", torrents.body);

    // Only the proxy replies from outside.
    for forward in &forwards[1..] {
        let reply = http_reply(forward.host);
        assert!(reply.is_empty(), "guest port {} answered from outside: {reply:?}", forward.guest);
    }

    // Every Prometheus target is up: the node exporter, ztms-init, and the
    // PostgreSQL exporter, which the matrix lets reach PostgreSQL with the
    // generated password.
    let targets = wait_for_targets(https, &login, Duration::from_secs(180));
    let jobs: Vec<&str> = targets["data"]["activeTargets"]
        .as_array()
        .map(|targets| targets.iter().filter_map(|target| target["labels"]["job"].as_str()).collect())
        .unwrap_or_default();
    for job in ["prometheus", "node", "postgres", "ztms-init"] {
        assert!(jobs.contains(&job), "no {job} target in {jobs:?}");
    }
    let pg_up = curl(https, "/prometheus/api/v1/query?query=pg_up", &["--user", &login]);
    assert!(pg_up.body.contains(r#""value":["#), "pg_up: {}", pg_up.body);
    assert!(pg_up.body.contains(r#""1"]"#), "pg_up is not 1: {}", pg_up.body);

    // Memory of the stack, from the appliance's own metrics: each
    // service's cgroup, ztms-init, and the whole guest's used memory.
    for query in [
        "ztms_service_memory_bytes",
        "ztms_init_resident_memory_bytes",
        "node_memory_MemTotal_bytes-node_memory_MemAvailable_bytes",
        "ztms_boot_phase_duration_seconds",
    ] {
        let reply = curl(https, &format!("/prometheus/api/v1/query?query={query}"), &["--user", &login]);
        eprintln!("measured {query}: {}", reply.body);
    }
    let ban_metrics = curl(https, "/prometheus/api/v1/query?query=ztms_bans_total", &["--user", &login]);
    assert!(ban_metrics.body.contains(r#""0"]"#), "ztms_bans_total before any failed login: {}", ban_metrics.body);
    eprintln!("measured ready: {}", vm.console().lines().find(|line| line.contains("ztms-init: ready:")).unwrap_or(""));

    // Four failed logins ban the client, so the fifth request gets no reply.
    let wrong = "admin:not-the-password";
    for attempt in 1..=4 {
        let reply = curl(https, "/", &["--user", wrong]);
        assert_eq!(reply.status, 401, "failed login {attempt}");
    }
    vm.wait_for_console("ban: client 10.0.2.2 banned", Duration::from_secs(30)).unwrap();
    vm.wait_for_console("ban: client 10.0.2.2 added to set", Duration::from_secs(30)).unwrap();
    let banned = curl(https, "/", &["--user", &login, "--max-time", "10"]);
    assert_eq!(banned.status, 0, "a banned client got an answer");
    assert_eq!(banned.exit, 28, "curl should time out against the dropped connection");
    vm.kill();
}

/// Returns the network plan of the definition at `path`.
fn plan_of(path: &Path) -> NetworkPlan {
    let loaded = ztms::config::load(path).unwrap_or_else(|e| panic!("loading {} failed: {e}", path.display()));
    NetworkPlan::from_definition(&loaded.definition).unwrap_or_else(|e| panic!("network plan of {}: {e}", path.display()))
}

/// Writes the default appliance with the status port and the test probe
/// turned on, and returns the path of the written definition.
fn probe_definition() -> PathBuf {
    harness::derive_definition("media-server", "media-server-probe", |definition| {
        let mut debug = toml::Table::new();
        debug.insert("status_serial".into(), true.into());
        debug.insert("probe".into(), true.into());
        definition.insert("debug".into(), debug.into());
    })
}

/// Returns the declaration of `service` in the definition at `path`.
fn service_of(path: &Path, service: &str) -> ztms::config::Service {
    let loaded = ztms::config::load(path).unwrap_or_else(|e| panic!("loading {} failed: {e}", path.display()));
    loaded
        .definition
        .services
        .into_iter()
        .find(|candidate| candidate.name.get_ref() == service)
        .unwrap_or_else(|| panic!("no service {service} in {}", path.display()))
}

#[test]
fn postgres_reached_only_by_allowed_services() {
    let default = harness::repo().join("images/media-server.toml");
    let definition = probe_definition();
    let plan = plan_of(&definition);
    assert_eq!(plan, plan_of(&default), "the probe variant must have the default image's network plan");
    let postgres = plan.service("postgres").expect("a postgres service in the plan").clone();
    let declared = service_of(&default, "postgres");
    let ports: Vec<u16> = declared.ports.iter().filter(|port| port.proto == Proto::Tcp).map(|port| port.port).collect();
    assert!(!ports.is_empty(), "postgres declares no TCP port");
    // The superuser's password, which the cluster was created with.
    let password_secret = declared.secrets.first().expect("postgres has a password secret").clone();

    // Every other service to every port of PostgreSQL. The plan's matrix
    // decides which of these connections the firewall lets through.
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for source in plan.services.iter().filter(|service| service.name != postgres.name) {
        for &port in &ports {
            requests.push(ProbeRequest {
                service: source.name.clone(),
                udp: false,
                address: postgres.address,
                port,
                source: None,
            });
            let allowed = plan.flows.iter().any(|flow| {
                flow.source == source.address && flow.to.address == postgres.address && flow.to.proto == Proto::Tcp && flow.to.port == port
            });
            expected.push(allowed);
        }
    }
    let allowed_count = expected.iter().filter(|allowed| **allowed).count();
    assert!(allowed_count > 0, "the plan lets no service reach PostgreSQL, so the test shows no accepted connection");
    assert!(allowed_count < expected.len(), "the plan lets every service reach PostgreSQL, so the test shows no drop");

    let mut vm = boot("postgres_reached_only_by_allowed", &image_of_definition(&definition, &[]));
    vm.wait_for_console("(?m)^ztms-init: ready:", READY_TIMEOUT).unwrap();

    // PostgreSQL listens once the appliance is ready, so an allowed
    // connection must be accepted, and a reset would mean that it does not
    // listen. The ruleset drops and never rejects, so a denied one times out.
    let replies = probe(&vm, &requests);
    let mut wrong = Vec::new();
    for ((request, reply), allowed) in requests.iter().zip(&replies).zip(&expected) {
        let want = if *allowed { ProbeOutcome::Connected } else { ProbeOutcome::Timeout };
        eprintln!(
            "probe {} -> postgres {}:{}: {:?} after {} ms (plan: {})",
            request.service,
            request.address,
            request.port,
            reply.outcome,
            reply.elapsed_ms,
            if *allowed { "allowed" } else { "denied" }
        );
        if reply.outcome != want {
            wrong.push(format!("{} -> postgres:{}: expected {want:?}, got {:?} ({:?})", request.service, request.port, reply.outcome, reply.detail));
        }
    }
    assert!(wrong.is_empty(), "PostgreSQL connections wrong:\n{}", wrong.join("\n"));

    // A real login and query from each allowed service, with the password
    // that the appliance generated. PostgreSQL must name the service's own
    // address as the client.
    let mut logged_in = Vec::new();
    for (request, allowed) in requests.iter().zip(&expected) {
        if !*allowed {
            continue;
        }
        let source = plan.service(&request.service).expect("probed service in the plan");
        let reply = postgres_login(&vm, &source.name, postgres.address, request.port, &password_secret);
        eprintln!("login {} -> postgres:{}: {:?}, query result {:?}, detail {:?}", source.name, request.port, reply.outcome, reply.query_result, reply.detail);
        assert_eq!(reply.outcome, ProbeOutcome::Connected, "login from {}: {:?}", source.name, reply.detail);
        assert_eq!(reply.query_result, Some(source.address.to_string()), "client address that PostgreSQL saw for {}", source.name);
        logged_in.push((source.name.clone(), request.port));
    }

    // Another secret of the appliance is a wrong password, which the
    // server must reject, so the login above was really checked.
    let (service, port) = logged_in.first().expect("at least one allowed login").clone();
    let other_secret = other_secret_of(&default, &password_secret);
    let reply = postgres_login(&vm, &service, postgres.address, port, &other_secret);
    eprintln!("login {service} -> postgres:{port} with {other_secret}: {:?}, detail {:?}", reply.outcome, reply.detail);
    assert_eq!(reply.outcome, ProbeOutcome::Failed, "login with the wrong password: {reply:?}");
    // 28P01 is SQLSTATE invalid_password.
    assert!(reply.detail.as_deref().unwrap_or("").contains("28P01"), "wrong password not rejected as such: {:?}", reply.detail);

    // A denied service cannot even start a login.
    let (denied, _) = requests.iter().zip(&expected).find(|(_, allowed)| !**allowed).expect("a denied service");
    let reply = postgres_login(&vm, &denied.service, postgres.address, denied.port, &password_secret);
    assert_eq!(reply.outcome, ProbeOutcome::Timeout, "login from denied {}: {reply:?}", denied.service);
    vm.kill();
}

/// Returns a secret of the definition at `path` other than `secret`.
fn other_secret_of(path: &Path, secret: &str) -> String {
    let loaded = ztms::config::load(path).unwrap_or_else(|e| panic!("loading {} failed: {e}", path.display()));
    loaded
        .definition
        .services
        .iter()
        .flat_map(|service| service.secrets.iter())
        .find(|candidate| candidate.as_str() != secret)
        .unwrap_or_else(|| panic!("{} has no secret besides {secret}", path.display()))
        .clone()
}

/// The host end of the test LAN, the appliance's uplink on it, and the
/// uplink's address without its prefix length.
const LAN_HOST: &str = "192.168.77.1/24";
const LAN_GATEWAY: &str = "192.168.77.1";
const LAN_APPLIANCE: &str = "192.168.77.2/24";
const LAN_APPLIANCE_ADDRESS: &str = "192.168.77.2";
/// Two clients on the test LAN: A fails to log in, B does not.
const CLIENT_A: &str = "192.168.77.10";
const CLIENT_B: &str = "192.168.77.11";
/// Last byte of the MAC address of the appliance's LAN card.
const APPLIANCE_MAC_SUFFIX: u8 = 2;

/// Writes the default appliance with its uplink on the VM's second card
/// (the tap of the test LAN, which has no DHCP server) with a static
/// address, and returns the path of the written definition.
fn lan_definition() -> PathBuf {
    harness::derive_definition("media-server", "media-server-lan", |definition| {
        let mut network = toml::Table::new();
        network.insert("interface".into(), "eth1".into());
        network.insert("ipv4".into(), LAN_APPLIANCE.into());
        network.insert("gateway".into(), LAN_GATEWAY.into());
        network.insert("dns".into(), toml::Value::Array(vec![LAN_GATEWAY.into()]));
        definition.insert("network".into(), network.into());
    })
}

/// Fetches the appliance's landing page with curl from `client`'s address
/// inside the test LAN's namespace.
fn curl_from(lan: &HostLan, client: &str, args: &[&str]) -> Reply {
    let url = format!("https://{LAN_APPLIANCE_ADDRESS}/");
    let mut curl_args = vec!["--interface", client, "--silent", "--insecure", "--max-time", "20", "--write-out", "\n%{http_code}"];
    curl_args.extend_from_slice(args);
    curl_args.push(&url);
    let output = lan.command("curl", &curl_args).output().expect("run curl in the LAN namespace");
    reply_of(&output)
}

#[test]
fn ban_spares_second_client() {
    let default = harness::repo().join("images/media-server.toml");
    let definition = lan_definition();
    let plan = plan_of(&definition);
    let default_plan = plan_of(&default);
    assert_eq!(plan.services, default_plan.services, "the LAN variant must have the default image's services");
    assert_eq!(plan.flows, default_plan.flows, "the LAN variant must have the default image's matrix");
    assert_eq!(plan.published, default_plan.published, "the LAN variant must publish the default image's ports");

    let lan = HostLan::new(LAN_HOST);
    lan.add_address(&format!("{CLIENT_A}/24"));
    lan.add_address(&format!("{CLIENT_B}/24"));
    let image = image_of_definition(&definition, &[]);
    let mut vm = boot_on_lan("ban_spares_second_client", &image, lan.link(APPLIANCE_MAC_SUFFIX));
    lan.attach();
    vm.wait_for_console("(?m)^ztms-init: ready:", READY_TIMEOUT).unwrap();
    let login = format!("admin:{}", web_password(&vm.console()));

    let before = curl_from(&lan, CLIENT_B, &["--user", &login]);
    assert_eq!(before.status, 200, "client B before the ban: exit {} {}", before.exit, before.body);

    // Four failed logins from A get A banned, as in the test from the host.
    let wrong = "admin:not-the-password";
    for attempt in 1..=4 {
        let reply = curl_from(&lan, CLIENT_A, &["--user", wrong]);
        assert_eq!(reply.status, 401, "failed login {attempt} of client A: exit {}", reply.exit);
    }
    vm.wait_for_console(&format!("ban: client {CLIENT_A} banned"), Duration::from_secs(30)).unwrap();
    vm.wait_for_console(&format!("ban: client {CLIENT_A} added to set"), Duration::from_secs(30)).unwrap();

    let banned = curl_from(&lan, CLIENT_A, &["--user", &login, "--max-time", "10"]);
    eprintln!("client A after the ban: exit {}, status {}", banned.exit, banned.status);
    assert_eq!(banned.status, 0, "banned client A got an answer");
    assert_eq!(banned.exit, 28, "curl from client A should time out against the dropped connection");

    let spared = curl_from(&lan, CLIENT_B, &["--user", &login]);
    eprintln!("client B while A is banned: exit {}, status {}", spared.exit, spared.status);
    assert_eq!(spared.status, 200, "client B while A is banned: exit {} {}", spared.exit, spared.body);
    assert!(spared.body.contains("ztms media server"), "client B's landing page: {}", spared.body);
    assert!(!vm.console().contains(&format!("ban: client {CLIENT_B} ")), "client B was banned too");
    vm.kill();
}
