//! The test probe: a TCP connect or a UDP exchange made from inside a
//! service's network namespace, requested over the status API of images
//! built with `[debug] probe = true`. Production images never enable it.
//!
//! Each probe runs on a thread of its own (see [`crate::init::netns::run_in`]),
//! and the status server reads its reply through a socket pair, so the main
//! loop neither enters a service namespace nor waits for a probe. A probe spawns no process, so it takes no exit status from the
//! supervisor's reaper.
//!
//! The same images take `delete-link INTERFACE`, which deletes a WireGuard
//! interface with `ip link delete`, so that a test can watch ztms-init
//! re-create it, and `firewall off|on`, which saves and deletes the
//! nftables table and loads it again, so that a benchmark can compare
//! forwarding with and without the ruleset in one boot.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::super::netns;
use super::isolate::{run_nft, run_unwaited};
use super::links::IP;
use super::postgres_login;
use crate::net::wireguard::{REMOTE_INTERFACE, VPN_INTERFACE};
use crate::net::nftables::TABLE;
use crate::net::NetworkPlan;
use crate::runtime::{secret_path, valid_secret_name};
use crate::status::{
    DeleteLinkReply, ErrorReply, FirewallReply, ProbeOutcome, ProbeReply, DELETE_LINK_REQUEST, FIREWALL_REQUEST, PROBE_REQUEST,
};

/// How long a probe waits for a connection or a UDP reply.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a `read` probe may wait for the next bytes, and how long the
/// whole transfer may take.
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
pub const READ_TOTAL_TIMEOUT: Duration = Duration::from_secs(180);
/// User, database and query of a `postgres` probe. The query returns the
/// client address that the server saw, which shows where the login came from.
const POSTGRES_USER: &str = "postgres";
const POSTGRES_DATABASE: &str = "postgres";
const POSTGRES_QUERY: &str = "SELECT host(inet_client_addr())";

/// Service name and namespace path of every service, set once the network
/// phase has created the namespaces of an image with the probe enabled.
static TARGETS: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();

/// The table as `nft list table` printed it before `firewall off` deleted
/// it. `firewall on` loads it again.
static SAVED_TABLE: Mutex<Option<String>> = Mutex::new(None);

/// Enables probe requests for the services of `plan`.
pub fn enable(plan: &NetworkPlan) {
    let targets = plan
        .services
        .iter()
        .map(|service| (service.name.clone(), netns::path_of(&service.netns)))
        .collect();
    if TARGETS.set(targets).is_ok() {
        log::warn!("test probe enabled: the status API runs connections from inside service namespaces");
    }
}

/// One parsed probe request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    pub service: String,
    pub udp: bool,
    pub target: SocketAddrV4,
    pub source: Option<Ipv4Addr>,
    /// TCP only: read until the peer closes and report the byte count.
    pub read: bool,
    /// TCP only: log in to PostgreSQL with the password in this secret of
    /// `/data/secrets` and run [`POSTGRES_QUERY`].
    pub postgres_secret: Option<String>,
}

/// Returns true when `line` is a probe request, valid or not.
pub fn is_probe(line: &str) -> bool {
    line.split_whitespace().next() == Some(PROBE_REQUEST)
}

/// Returns true when `line` is a `delete-link` request, valid or not.
pub fn is_delete_link(line: &str) -> bool {
    line.split_whitespace().next() == Some(DELETE_LINK_REQUEST)
}

/// Parses `delete-link INTERFACE`, and checks that test requests are
/// enabled and that the interface is one of the WireGuard interfaces.
pub fn parse_delete_link(line: &str) -> Result<String, String> {
    if TARGETS.get().is_none() {
        return Err("delete-link requests are disabled; build the image with [debug] probe = true".into());
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [_, interface] if [REMOTE_INTERFACE, VPN_INTERFACE].contains(interface) => Ok(interface.to_string()),
        [_, interface] => Err(format!("invalid interface {interface:?}; delete-link takes {REMOTE_INTERFACE} or {VPN_INTERFACE}")),
        _ => Err(format!("invalid request {:?}; write: {DELETE_LINK_REQUEST} INTERFACE", truncate(line))),
    }
}

/// Deletes `interface` and returns the reply line without its newline.
/// Runs `ip`, so call it off the main loop.
pub fn delete_link(interface: &str) -> String {
    log::warn!("test probe: deleting interface {interface} on request of the status API");
    let result = run_unwaited(IP, &["link", "delete", interface], "");
    let present = std::path::Path::new("/sys/class/net").join(interface).exists();
    match result {
        Ok((_, stderr)) if !stderr.trim().is_empty() => log::warn!("test probe: ip link delete {interface}: {}", stderr.trim()),
        Ok(_) => {}
        Err(error) => log::warn!("test probe: {error}"),
    }
    let reply = DeleteLinkReply { interface: interface.to_string(), present };
    serde_json::to_string(&reply).unwrap_or_else(|error| format!("{{\"error\": \"encoding the reply failed: {error}\"}}"))
}

/// Returns true when `line` is a `firewall` request, valid or not.
pub fn is_firewall(line: &str) -> bool {
    line.split_whitespace().next() == Some(FIREWALL_REQUEST)
}

/// Parses `firewall off|on` and checks that test requests are enabled.
/// Returns true for `on`.
pub fn parse_firewall(line: &str) -> Result<bool, String> {
    if TARGETS.get().is_none() {
        return Err("firewall requests are disabled; build the image with [debug] probe = true".into());
    }
    parse_firewall_words(line)
}

/// Parses the words of a `firewall` request.
fn parse_firewall_words(line: &str) -> Result<bool, String> {
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        [_, "on"] => Ok(true),
        [_, "off"] => Ok(false),
        _ => Err(format!("invalid request {:?}; write: {FIREWALL_REQUEST} off|on", truncate(line))),
    }
}

/// Saves and deletes the table (`load` false) or loads the saved table
/// (`load` true), and returns the reply line without its newline. Runs
/// `nft`, so call it off the main loop.
pub fn switch_firewall(load: bool) -> String {
    let reply = if load { load_saved_table() } else { save_and_delete_table() };
    let line = match reply {
        Ok(reply) => serde_json::to_string(&reply),
        Err(error) => {
            log::error!("test probe: firewall {}: {error}", if load { "on" } else { "off" });
            serde_json::to_string(&ErrorReply { error })
        }
    };
    line.unwrap_or_else(|error| format!("{{\"error\": \"encoding the reply failed: {error}\"}}"))
}

/// Lists the table, keeps the listing in [`SAVED_TABLE`] and deletes the table.
fn save_and_delete_table() -> Result<FirewallReply, String> {
    let mut saved = SAVED_TABLE.lock().map_err(|_| "the saved table is unreadable: a thread panicked holding it".to_string())?;
    if saved.is_some() {
        return Err("the firewall is already off; send firewall on first".into());
    }
    let (listing, errors) = run_nft(&["list", "table", "inet", TABLE], "")?;
    if listing.trim().is_empty() {
        return Err(format!("table inet {TABLE} is not loaded: {}", errors.trim()));
    }
    log::warn!("test probe: deleting table inet {TABLE} on request of the status API, so nothing is filtered until firewall on");
    let (_, errors) = run_nft(&["delete", "table", "inet", TABLE], "")?;
    // Report a table that is still there as an error, not as a firewall
    // that is off.
    if table_rules()?.is_some() {
        return Err(format!("nft did not delete table inet {TABLE}: {}", errors.trim()));
    }
    *saved = Some(listing);
    Ok(FirewallReply { loaded: false, rules: 0 })
}

/// Loads the table that [`save_and_delete_table`] kept. When nft rejects
/// it, the listing stays kept, so the request can be sent again.
fn load_saved_table() -> Result<FirewallReply, String> {
    let mut saved = SAVED_TABLE.lock().map_err(|_| "the saved table is unreadable: a thread panicked holding it".to_string())?;
    let Some(listing) = saved.as_ref() else {
        return Err("the firewall is not off; send firewall off first".into());
    };
    // As the boot's ruleset does, replace whatever table is there in the
    // same transaction, so that no rule is ever loaded twice.
    let replace = format!("add table inet {TABLE}\ndelete table inet {TABLE}\n{listing}");
    let (_, errors) = run_nft(&["-f", "-"], &replace)?;
    let Some(rules) = table_rules()? else {
        return Err(format!("nft did not load the saved table inet {TABLE}: {}", errors.trim()));
    };
    log::warn!("test probe: table inet {TABLE} loaded again on request of the status API");
    *saved = None;
    Ok(FirewallReply { loaded: true, rules })
}

/// Returns the number of rules in the table, or None when it is not loaded.
fn table_rules() -> Result<Option<usize>, String> {
    let (listing, errors) = run_nft(&["-j", "list", "table", "inet", TABLE], "")?;
    if listing.trim().is_empty() {
        return Ok(None);
    }
    count_rules(&listing)
        .map(Some)
        .map_err(|error| format!("listing table inet {TABLE} failed: {error}; nft printed: {}", errors.trim()))
}

/// Counts the rules in the output of `nft -j list table`.
fn count_rules(json: &str) -> Result<usize, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|error| format!("invalid JSON: {error}"))?;
    let items = value["nftables"].as_array().ok_or("no nftables array in the output")?;
    Ok(items.iter().filter(|item| item.get("rule").is_some()).count())
}

/// Parses `probe SERVICE tcp|udp IPV4 PORT [source IPV4] [read | postgres SECRET]`,
/// and checks that probes are enabled and that the service exists.
pub fn parse(line: &str) -> Result<(ProbeRequest, PathBuf), String> {
    let Some(targets) = TARGETS.get() else {
        return Err("probe requests are disabled; build the image with [debug] probe = true".into());
    };
    let (request, service) = parse_words(line)?;
    let Some((_, path)) = targets.iter().find(|(name, _)| *name == service) else {
        return Err(format!("service {service:?} not found; the plan has no network namespace for it"));
    };
    Ok((request, path.clone()))
}

/// Parses the words of a probe request without looking at the services.
fn parse_words(line: &str) -> Result<(ProbeRequest, String), String> {
    let usage = "write: probe SERVICE tcp|udp IPV4 PORT [source IPV4] [read | postgres SECRET]";
    let mut words: Vec<&str> = line.split_whitespace().collect();
    let read = words.last() == Some(&"read");
    if read {
        words.pop();
    }
    let mut postgres_secret = None;
    if !read && words.len() >= 2 && words[words.len() - 2] == "postgres" {
        let secret = words.pop().unwrap_or_default();
        words.pop();
        if !valid_secret_name(secret) {
            return Err(format!("invalid secret name {secret:?}; {usage}"));
        }
        postgres_secret = Some(secret.to_string());
    }
    let (service, proto, address, port, source) = match words.as_slice() {
        [_, service, proto, address, port] => (*service, *proto, *address, *port, None),
        [_, service, proto, address, port, "source", source] => (*service, *proto, *address, *port, Some(*source)),
        _ => return Err(format!("invalid probe request {:?}; {usage}", truncate(line))),
    };
    let udp = match proto {
        "tcp" => false,
        "udp" => true,
        _ => return Err(format!("invalid protocol {proto:?} in probe request; {usage}")),
    };
    if udp && (read || postgres_secret.is_some()) {
        return Err(format!("read and postgres work with tcp only; {usage}"));
    }
    let address: Ipv4Addr = address.parse().map_err(|_| format!("invalid IPv4 address {address:?}; {usage}"))?;
    let port: u16 = match port.parse() {
        Ok(port) if port > 0 => port,
        _ => return Err(format!("invalid port {port:?}; use 1 to 65535")),
    };
    let source = match source {
        Some(text) => Some(text.parse().map_err(|_| format!("invalid source address {text:?}; {usage}"))?),
        None => None,
    };
    let request = ProbeRequest {
        service: service.to_string(),
        udp,
        target: SocketAddrV4::new(address, port),
        source,
        read,
        postgres_secret,
    };
    Ok((request, service.to_string()))
}

/// Runs `request` inside the namespace at `path`. Blocks for about
/// [`PROBE_TIMEOUT`] at most, and longer for `read` and `postgres` probes,
/// so call it off the main loop.
pub fn run(request: ProbeRequest, path: PathBuf) -> ProbeReply {
    let started = Instant::now();
    let mut reply = ProbeReply {
        service: request.service.clone(),
        proto: if request.udp { "udp" } else { "tcp" }.into(),
        address: *request.target.ip(),
        port: request.target.port(),
        source: request.source,
        outcome: ProbeOutcome::Failed,
        detail: None,
        elapsed_ms: 0,
        bytes: None,
        query_result: None,
    };
    // The secret is read before the thread enters the namespace. The
    // password never appears in a reply or a log line.
    let password = match &request.postgres_secret {
        Some(secret) => match std::fs::read_to_string(secret_path(secret)) {
            Ok(text) => Some(text.trim_end_matches('\n').to_string()),
            Err(error) => {
                reply.detail = Some(format!("reading secret {secret} failed: {error}"));
                reply.elapsed_ms = started.elapsed().as_millis() as u64;
                return reply;
            }
        },
        None => None,
    };
    let result = netns::run_in(&path, move || {
        if request.udp {
            ProbeResult { observation: probe_udp(request.target, request.source), bytes: None, query_result: None }
        } else {
            probe_tcp(request.target, request.source, request.read, password.as_deref())
        }
    });
    let result = result.unwrap_or_else(|error| ProbeResult {
        observation: (ProbeOutcome::Failed, Some(error.to_string())),
        bytes: None,
        query_result: None,
    });
    (reply.outcome, reply.detail) = result.observation;
    reply.bytes = result.bytes;
    reply.query_result = result.query_result;
    reply.elapsed_ms = started.elapsed().as_millis() as u64;
    reply
}

type Observation = (ProbeOutcome, Option<String>);

/// The outcome of a probe, with the byte count of a `read` probe and the
/// query result of a `postgres` probe.
struct ProbeResult {
    observation: Observation,
    bytes: Option<u64>,
    query_result: Option<String>,
}

fn socket(kind: Type, protocol: Protocol, source: Option<Ipv4Addr>) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, kind, Some(protocol))?;
    if let Some(source) = source {
        // IP_TRANSPARENT (which needs CAP_NET_ADMIN) lets the probe bind
        // and route from an address that is not its own, which is how the
        // spoofed-source test forges a packet.
        socket.set_ip_transparent(true)?;
        socket.bind(&SocketAddr::from(SocketAddrV4::new(source, 0)).into())?;
    }
    Ok(socket)
}

/// Connects, and with `read` receives until the peer closes, or with a
/// `postgres_password` logs in and runs [`POSTGRES_QUERY`].
fn probe_tcp(target: SocketAddrV4, source: Option<Ipv4Addr>, read: bool, postgres_password: Option<&str>) -> ProbeResult {
    let observed = |observation| ProbeResult { observation, bytes: None, query_result: None };
    let socket = match socket(Type::STREAM, Protocol::TCP, source) {
        Ok(socket) => socket,
        Err(error) => return observed((ProbeOutcome::Failed, Some(format!("creating or binding the socket failed: {error}")))),
    };
    if let Err(error) = socket.connect_timeout(&SocketAddr::from(target).into(), PROBE_TIMEOUT) {
        return observed(classify(error));
    }
    if let Some(password) = postgres_password {
        return query_postgres(socket, password);
    }
    if !read {
        return observed((ProbeOutcome::Connected, None));
    }
    let (received, error) = read_to_end(socket);
    let observation = match error {
        None => (ProbeOutcome::Connected, None),
        Some(error) => (ProbeOutcome::Failed, Some(format!("the transfer stopped after {received} bytes: {error}"))),
    };
    ProbeResult { observation, bytes: Some(received), query_result: None }
}

/// Logs in to PostgreSQL on a connected socket and runs [`POSTGRES_QUERY`].
/// A failed login is `Failed`, with the server's message as detail.
fn query_postgres(socket: Socket, password: &str) -> ProbeResult {
    let failed = |detail: String| ProbeResult { observation: (ProbeOutcome::Failed, Some(detail)), bytes: None, query_result: None };
    let mut stream = std::net::TcpStream::from(socket);
    let timeouts = stream
        .set_read_timeout(Some(READ_IDLE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(READ_IDLE_TIMEOUT)));
    if let Err(error) = timeouts {
        return failed(format!("setting the socket timeouts failed: {error}"));
    }

    let mut nonce = [0u8; 18];
    if let Err(error) = getrandom::fill(&mut nonce) {
        return failed(format!("reading random bytes for the SCRAM nonce failed: {error}"));
    }
    let nonce = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, nonce);

    match postgres_login::login_and_query(&mut stream, POSTGRES_USER, POSTGRES_DATABASE, password, POSTGRES_QUERY, &nonce) {
        Ok(query_result) => ProbeResult { observation: (ProbeOutcome::Connected, None), bytes: None, query_result },
        Err(error) => failed(format!("PostgreSQL login or query failed: {error}")),
    }
}

/// Reads and discards until the peer closes the connection, and returns
/// the byte count with the error that ended the transfer early, if any.
fn read_to_end(socket: Socket) -> (u64, Option<String>) {
    use std::io::Read;

    let started = Instant::now();
    let mut stream = std::net::TcpStream::from(socket);
    if let Err(error) = stream.set_read_timeout(Some(READ_IDLE_TIMEOUT)) {
        return (0, Some(error.to_string()));
    }
    let mut buffer = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    loop {
        if started.elapsed() > READ_TOTAL_TIMEOUT {
            return (received, Some(format!("not finished after {} s", READ_TOTAL_TIMEOUT.as_secs())));
        }
        match stream.read(&mut buffer) {
            Ok(0) => return (received, None),
            Ok(count) => received += count as u64,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return (received, Some(error.to_string())),
        }
    }
}

fn probe_udp(target: SocketAddrV4, source: Option<Ipv4Addr>) -> Observation {
    let socket = match socket(Type::DGRAM, Protocol::UDP, source) {
        Ok(socket) => socket,
        Err(error) => return (ProbeOutcome::Failed, Some(format!("creating or binding the socket failed: {error}"))),
    };
    let exchange = || -> std::io::Result<()> {
        // A connected UDP socket reports an ICMP port unreachable as
        // ECONNREFUSED on the next receive.
        socket.connect(&SocketAddr::from(target).into())?;
        socket.set_read_timeout(Some(PROBE_TIMEOUT))?;
        socket.send(b"ztms probe\n")?;
        let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 512];
        socket.recv(&mut buffer)?;
        Ok(())
    };
    match exchange() {
        Ok(()) => (ProbeOutcome::Connected, None),
        Err(error) => classify(error),
    }
}

fn classify(error: std::io::Error) -> Observation {
    let outcome = match error.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => return (ProbeOutcome::Timeout, None),
        ErrorKind::ConnectionRefused => ProbeOutcome::Refused,
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => ProbeOutcome::Unreachable,
        _ => ProbeOutcome::Failed,
    };
    (outcome, Some(error.to_string()))
}

fn truncate(line: &str) -> String {
    line.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_maps_os_errors() {
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(classify(refused).0, ProbeOutcome::Refused);
        let timeout = std::io::Error::from(ErrorKind::TimedOut);
        assert_eq!(classify(timeout).0, ProbeOutcome::Timeout);
        let unreachable = std::io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert_eq!(classify(unreachable).0, ProbeOutcome::Unreachable);
    }

    #[test]
    fn postgres_option_names_a_secret() {
        let (request, service) = parse_words("probe postgres-exporter tcp 10.80.3.2 5432 postgres postgres-password").unwrap();
        assert_eq!(service, "postgres-exporter");
        assert_eq!(request.postgres_secret.as_deref(), Some("postgres-password"));
        assert!(!request.read);
        assert_eq!(request.target, SocketAddrV4::new(Ipv4Addr::new(10, 80, 3, 2), 5432));
    }

    #[test]
    fn postgres_option_rejects_path_as_secret() {
        let error = parse_words("probe web tcp 10.80.3.2 5432 postgres ../../etc/shadow").unwrap_err();
        assert!(error.contains("invalid secret name"), "{error}");
    }

    #[test]
    fn postgres_option_rejects_udp() {
        let error = parse_words("probe web udp 10.80.3.2 5432 postgres postgres-password").unwrap_err();
        assert!(error.contains("tcp only"), "{error}");
    }

    #[test]
    fn plain_probe_has_no_secret() {
        let (request, _) = parse_words("probe web tcp 10.80.3.2 5432 source 10.80.1.2").unwrap();
        assert_eq!(request.postgres_secret, None);
        assert_eq!(request.source, Some(Ipv4Addr::new(10, 80, 1, 2)));
    }

    #[test]
    fn firewall_request_is_recognised() {
        assert!(is_firewall("firewall off"));
        assert!(is_firewall("firewall"));
        assert!(!is_firewall("firewalls on"));
        assert!(!is_firewall("probe web tcp 10.80.1.2 80"));
        assert_eq!(parse_firewall_words("firewall on"), Ok(true));
        assert_eq!(parse_firewall_words("firewall  off "), Ok(false));
        for line in ["firewall", "firewall down", "firewall off now"] {
            assert!(parse_firewall_words(line).unwrap_err().contains("write: firewall off|on"), "{line}");
        }
    }

    #[test]
    fn rules_are_counted_in_a_table_listing() {
        let json = r#"{"nftables": [{"metainfo": {"json_schema_version": 1}}, {"table": {"family": "inet", "name": "ztms", "handle": 1}},
            {"chain": {"family": "inet", "table": "ztms", "name": "input", "handle": 1}},
            {"set": {"family": "inet", "name": "isolated", "table": "ztms", "type": "ipv4_addr", "handle": 3}},
            {"rule": {"family": "inet", "table": "ztms", "chain": "input", "handle": 4, "expr": []}},
            {"rule": {"family": "inet", "table": "ztms", "chain": "input", "handle": 5, "expr": []}}]}"#;
        assert_eq!(count_rules(json), Ok(2));
        assert!(count_rules("{}").unwrap_err().contains("no nftables array"));
        assert!(count_rules("not json").unwrap_err().contains("invalid JSON"));
    }

    #[test]
    fn delete_link_request_is_recognised() {
        assert!(is_delete_link("delete-link wg-vpn"));
        assert!(!is_delete_link("probe web tcp 10.80.1.2 80"));
        assert!(!is_delete_link("delete-links wg-vpn"));
    }

    #[test]
    fn probe_request_is_recognised() {
        assert!(is_probe("probe web tcp 10.80.1.2 80"));
        assert!(!is_probe("status"));
        assert!(!is_probe("prober"));
    }
}
