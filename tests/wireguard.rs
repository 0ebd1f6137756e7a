//! QEMU tests of WireGuard between two appliances on one virtual LAN:
//! `test-wg` and `test-wg-peer`, each the other's remote-access peer and
//! VPN provider (see the comments in both definitions).
//!
//! What each side may reach is computed from the definitions' network
//! plans, not listed here. The run first checks the kill switch while the
//! VPN endpoint is down at boot, then the peer's matrix through wg-remote
//! and transfers of several megabytes both ways, `wg-vpn` deleted inside
//! the appliance and re-created by ztms-init, MTU and MSS clamping (with
//! the MSS of a SYN through wg-vpn read on the peer with `ss`), and
//! `wg-remote` deleted and re-created. Last come the tunnel going down and
//! up without a service restart, and `isolate`. DNS of the egress=vpn
//! service goes to the tunnel's DNS server only. A capture of the
//! appliance's LAN link over the whole run must contain WireGuard and ARP
//! only.
//!
//! It prints the throughput through both tunnels, and between two
//! segments of one appliance without a tunnel, with the ruleset loaded and
//! with its table deleted (`firewall off`, a request of test images),
//! alternating in the same boot.

mod harness;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{boot_on_lan, free_port, image, output_of, probe, request_reply, transfer, ProbeRequest, TestVm, BOOT_TIMEOUT};
use ztms::config::Proto;
use ztms::net::wireguard::{key, REMOTE_INTERFACE, VPN_INTERFACE};
use ztms::net::NetworkPlan;
use ztms::run::vm::{LanBackend, LanLink};
use ztms::status::{DeleteLinkReply, FirewallReply, ProbeOutcome, ProbeReply, DELETE_LINK_REQUEST, FIREWALL_REQUEST};

/// Last byte of the appliance VM's LAN MAC address.
const APPLIANCE_MAC_SUFFIX: u8 = 10;
/// UDP port of both VMs' wg-remote.
const WIREGUARD_PORT: u16 = 51820;
/// Bytes that the `bulk` and `mirror` services send per connection.
const TRANSFER_BYTES: u64 = 8 << 20;
/// Transfers with the ruleset loaded, and as many with its table deleted,
/// in the forwarding comparison.
const FORWARDING_ROUNDS: usize = 5;
/// Time allowed for a WireGuard handshake to complete and a probe through
/// the tunnel to connect, under TCG.
const TUNNEL_TIMEOUT: Duration = Duration::from_secs(90);

fn plan_of(name: &str) -> (ztms::config::Definition, NetworkPlan) {
    let path = harness::repo().join("images").join(format!("{name}.toml"));
    let loaded = ztms::config::load(&path).unwrap_or_else(|e| panic!("load {name}.toml: {e}"));
    let plan = NetworkPlan::from_definition(&loaded.definition).unwrap_or_else(|e| panic!("network plan of {name}: {e}"));
    (loaded.definition, plan)
}

/// Returns the public key of a test key file in overlays/test-wg.
fn test_public_key(file: &str) -> String {
    let path = harness::repo().join("overlays/test-wg/usr/share/ztms-test/wireguard").join(file);
    let private = key::decode(&std::fs::read_to_string(&path).unwrap()).unwrap();
    key::encode(&key::public_key(&private))
}

fn tcp(service: &str, address: Ipv4Addr, port: u16) -> ProbeRequest {
    ProbeRequest { service: service.into(), udp: false, address, port, source: None }
}

/// Returns a probe that sends a UDP datagram to port 53, as a DNS query.
fn dns(service: &str, address: Ipv4Addr) -> ProbeRequest {
    ProbeRequest { service: service.into(), udp: true, address, port: 53, source: None }
}

/// Returns the `nameserver` lines that `service` printed from its
/// `/etc/resolv.conf` at start, and whether it printed the file at all.
fn printed_nameservers(vm: &TestVm, service: &str) -> (Vec<String>, bool) {
    let lines: Vec<String> = output_of(&vm.console(), service)
        .into_iter()
        .filter_map(|line| line.strip_prefix("resolv.conf: ").map(str::to_string))
        .collect();
    let printed = !lines.is_empty();
    (lines.into_iter().filter(|line| line.starts_with("nameserver")).collect(), printed)
}

fn reached(reply: &ProbeReply) -> bool {
    matches!(reply.outcome, ProbeOutcome::Connected | ProbeOutcome::Refused)
}

/// Probes `request` until it connects or `timeout` passes, because the
/// first packets wait for a WireGuard handshake; returns the last reply.
fn probe_until_connected(vm: &TestVm, request: &ProbeRequest, timeout: Duration) -> ProbeReply {
    let started = Instant::now();
    loop {
        let reply = probe(vm, std::slice::from_ref(request)).remove(0);
        if reply.outcome == ProbeOutcome::Connected || started.elapsed() > timeout {
            return reply;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Runs a transfer, retrying while the connection is refused: the
/// streaming services listen again only after their previous connection
/// ended.
fn transfer_when_listening(vm: &TestVm, service: &str, address: Ipv4Addr, port: u16) -> ProbeReply {
    for _ in 0..10 {
        let reply = transfer(vm, service, address, port);
        if reply.outcome != ProbeOutcome::Refused {
            return reply;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    transfer(vm, service, address, port)
}

/// Transfers `TRANSFER_BYTES` three times, checks each count and prints
/// the throughput of each run with the median.
fn measure(vm: &TestVm, label: &str, service: &str, address: Ipv4Addr, port: u16) {
    let rates: Vec<f64> = (0..3).map(|_| transfer_rate(vm, service, address, port)).collect();
    let runs: Vec<String> = rates.iter().map(|rate| format!("{rate:.2}")).collect();
    eprintln!(
        "throughput {label}: {} MiB per run, runs {} MiB/s, median {:.2} MiB/s",
        TRANSFER_BYTES >> 20,
        runs.join(", "),
        median(&rates)
    );
}

fn megabytes_per_second(reply: &ProbeReply) -> f64 {
    reply.bytes.unwrap_or(0) as f64 / (1 << 20) as f64 / (reply.elapsed_ms.max(1) as f64 / 1000.0)
}

/// Runs the `ztms` binary with `args` followed by the VM's status socket,
/// in the repository, and returns its standard output; panics when it fails.
fn ztms_command(args: &[&str], vm: &TestVm) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ztms"))
        .args(args)
        .arg(&vm.paths.status)
        .current_dir(harness::repo())
        .output()
        .expect("run ztms");
    assert!(output.status.success(), "ztms {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What the appliance sent on the LAN, from a pcap capture.
#[derive(Debug, Default)]
struct Sent {
    /// Frames before Linux started, sent by the firmware.
    firmware: usize,
    wireguard: usize,
    arp: usize,
    /// Descriptions of every other frame.
    other: Vec<String>,
}

/// Reads a pcap file (microsecond format, Ethernet frames, as QEMU's
/// filter-dump writes it) and sorts the frames whose source MAC ends in
/// `mac_suffix`: from before `since` (Unix time), WireGuard (UDP from or
/// to its port), ARP, and the rest. QEMU stamps frames with its start
/// time plus the guest's virtual clock, which follows the host's clock
/// under TCG closely enough for a boundary seconds away from any frame.
fn frames_sent(pcap: &[u8], mac_suffix: u8, since: Duration) -> Sent {
    assert!(pcap.len() >= 24, "capture shorter than a pcap header");
    assert_eq!(&pcap[..4], &0xa1b2c3d4u32.to_le_bytes(), "little-endian pcap magic");
    let mut sent = Sent::default();
    let mut offset = 24;
    while offset + 16 <= pcap.len() {
        let seconds = u32::from_le_bytes(pcap[offset..offset + 4].try_into().unwrap());
        let micros = u32::from_le_bytes(pcap[offset + 4..offset + 8].try_into().unwrap());
        let stamp = Duration::from_secs(u64::from(seconds)) + Duration::from_micros(u64::from(micros));
        let captured = u32::from_le_bytes(pcap[offset + 8..offset + 12].try_into().unwrap()) as usize;
        let frame = &pcap[offset + 16..(offset + 16 + captured).min(pcap.len())];
        offset += 16 + captured;
        if frame.len() < 14 || frame[6..12] != [0x52, 0x54, 0x00, 0x12, 0x35, mac_suffix] {
            continue;
        }
        if stamp < since {
            sent.firmware += 1;
            continue;
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let ip = &frame[14..];
        match ethertype {
            0x0806 => sent.arp += 1,
            0x0800 if ip.len() >= 20 => {
                let header = usize::from(ip[0] & 0x0f) * 4;
                let source = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
                let destination = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
                let ports = (ip[9] == 17 && ip.len() >= header + 4).then(|| {
                    (u16::from_be_bytes([ip[header], ip[header + 1]]), u16::from_be_bytes([ip[header + 2], ip[header + 3]]))
                });
                match ports {
                    Some((from, to)) if from == WIREGUARD_PORT || to == WIREGUARD_PORT => sent.wireguard += 1,
                    _ => sent.other.push(format!("IPv4 protocol {} {source} -> {destination} ports {ports:?}", ip[9])),
                }
            }
            other => sent.other.push(format!("ethertype {other:#06x}")),
        }
    }
    sent
}

/// Sends `line`, a request that images with `[debug] probe = true`
/// serve, and returns the reply. Panics when the appliance rejects it.
fn debug_request<T: serde::de::DeserializeOwned>(vm: &TestVm, line: &str) -> T {
    request_reply(vm, line, Duration::from_secs(30), |_: &T| true)
}

/// Deletes `interface` inside the VM with a `delete-link` request.
fn delete_link(vm: &TestVm, interface: &str) -> DeleteLinkReply {
    let reply: DeleteLinkReply = debug_request(vm, &format!("{DELETE_LINK_REQUEST} {interface}"));
    assert_eq!(reply.interface, interface, "reply to delete-link {interface}");
    reply
}

/// Compares forwarding from `web` to `bulk`, two segments, with the
/// ruleset loaded and with its table deleted, alternating
/// [`FORWARDING_ROUNDS`] times in this boot, and prints both medians and
/// their ratio. Between the transfers it checks that the table went away
/// (web reaches db, which the matrix forbids) and came back whole
/// (`planned_rules` rules, and db unreachable again).
fn compare_forwarding(vm: &TestVm, bulk: Ipv4Addr, db: Ipv4Addr, planned_rules: usize) {
    let forbidden = tcp("web", db, 5432);
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..FORWARDING_ROUNDS {
        with.push(transfer_rate(vm, "web", bulk, 9000));
        let off: FirewallReply = debug_request(vm, &format!("{FIREWALL_REQUEST} off"));
        assert_eq!(off, FirewallReply { loaded: false, rules: 0 }, "reply to firewall off");
        let open = probe(vm, std::slice::from_ref(&forbidden)).remove(0);
        assert_eq!(open.outcome, ProbeOutcome::Connected, "web to db with the table deleted: {open:?}");
        without.push(transfer_rate(vm, "web", bulk, 9000));
        let on: FirewallReply = debug_request(vm, &format!("{FIREWALL_REQUEST} on"));
        assert_eq!(on, FirewallReply { loaded: true, rules: planned_rules }, "reply to firewall on");
        let closed = probe(vm, std::slice::from_ref(&forbidden)).remove(0);
        assert_eq!(closed.outcome, ProbeOutcome::Timeout, "web to db with the table loaded again: {closed:?}");
    }
    let with_median = median(&with);
    let without_median = median(&without);
    let runs = |rates: &[f64]| rates.iter().map(|rate| format!("{rate:.2}")).collect::<Vec<_>>().join(", ");
    eprintln!(
        "forwarding web to bulk, {} MiB per run: with the ruleset {} MiB/s (median {with_median:.2}), \
         without {} MiB/s (median {without_median:.2}), ratio {:.2}",
        TRANSFER_BYTES >> 20,
        runs(&with),
        runs(&without),
        with_median / without_median
    );
}

/// Counts the rules that the ruleset of `plan` adds.
fn planned_rule_count(plan: &NetworkPlan) -> usize {
    let json = ztms::net::nftables::to_json(&ztms::net::nftables::ruleset(plan, &[]));
    let document: serde_json::Value = serde_json::from_str(&json).expect("the planned ruleset is JSON");
    let commands = document["nftables"].as_array().expect("an nftables array in the planned ruleset");
    commands.iter().filter(|command| command.get("add").and_then(|add| add.get("rule")).is_some()).count()
}

/// Transfers `TRANSFER_BYTES` once, checks the count and returns the rate.
fn transfer_rate(vm: &TestVm, service: &str, address: Ipv4Addr, port: u16) -> f64 {
    let reply = transfer_when_listening(vm, service, address, port);
    assert_eq!(reply.bytes, Some(TRANSFER_BYTES), "{service} to {address}:{port}: {reply:?}");
    megabytes_per_second(&reply)
}

fn median(rates: &[f64]) -> f64 {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Returns the process id and restart count of `service`.
fn service_run(vm: &TestVm, service: &str) -> (Option<i32>, u32) {
    let status = vm.status(Duration::from_secs(10)).expect("status of the VM");
    let entry = status.services.iter().find(|s| s.name == service).unwrap_or_else(|| panic!("no service {service}"));
    (entry.pid, entry.restarts)
}

#[test]
fn wireguard_between_two_appliances() {
    let (_, appliance) = plan_of("test-wg");
    let (_, peer) = plan_of("test-wg-peer");
    let appliance_image = image("test-wg");
    let peer_image = image("test-wg-peer");

    let remote = appliance.remote.as_ref().expect("test-wg has remote access");
    let peer_address = remote.peers.iter().find(|(name, _)| name == "peer-vm").expect("peer-vm").1;
    let mirror = peer.service("mirror").expect("mirror service").clone();
    let lan_port = free_port();

    // The appliance boots alone: its VPN endpoint (the peer VM) is down.
    let mut vm = boot_on_lan("wireguard_appliance", &appliance_image, LanLink { backend: LanBackend::Socket { port: lan_port, listen: true }, mac_suffix: APPLIANCE_MAC_SUFFIX, capture: true });
    // The firmware's network driver sends IPv6 neighbour discovery and MLD
    // on the LAN before Linux starts. The capture check below skips frames
    // from before this point.
    vm.wait_for_console("(?m)^ztms-init: stage 1 started", BOOT_TIMEOUT).unwrap();
    let linux_started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    vm.wait_for_console("(?m)^ztms-init: WireGuard wg-vpn: up", BOOT_TIMEOUT).unwrap();
    vm.wait_for_console("(?m)^ztms-init: ready:", BOOT_TIMEOUT).unwrap();

    let status = vm.status(Duration::from_secs(10)).unwrap();
    let keys: Vec<(String, Option<String>)> =
        status.wireguard.iter().map(|w| (w.interface.clone(), w.public_key.clone())).collect();
    assert_eq!(
        keys,
        [
            (REMOTE_INTERFACE.to_string(), Some(test_public_key("appliance-remote.key"))),
            (VPN_INTERFACE.to_string(), Some(test_public_key("appliance-vpn.key"))),
        ],
        "status shows the public keys of both interfaces"
    );

    // Each container binds its resolver file: download (egress = "vpn")
    // names the tunnel's DNS server only, web (egress = "none") none.
    let vpn_dns = &appliance.vpn.as_ref().expect("test-wg has a tunnel").dns;
    assert_eq!(vpn_dns, &[mirror.address], "test-wg's vpn.dns is the peer's mirror service");
    // The containers print after ready, in any order, so the console is
    // read directly: waiting for a line moves past the lines before it.
    let started = Instant::now();
    while !(printed_nameservers(&vm, "download").1 && printed_nameservers(&vm, "web").1) {
        assert!(started.elapsed() < Duration::from_secs(60), "download and web did not print /etc/resolv.conf within 60 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (download_servers, _) = printed_nameservers(&vm, "download");
    assert_eq!(download_servers, [format!("nameserver {}", mirror.address)], "download's /etc/resolv.conf");
    let (web_servers, web_printed) = printed_nameservers(&vm, "web");
    assert!(web_printed, "web printed its /etc/resolv.conf");
    assert!(web_servers.is_empty(), "web has egress = \"none\" but its /etc/resolv.conf names {web_servers:?}");

    // Kill switch while the endpoint is unreachable: the download service
    // reaches neither the far side of the tunnel nor anything on the LAN,
    // and its DNS queries do not leave the appliance (the LAN capture
    // below contains WireGuard and ARP only).
    let endpoint_down = [
        tcp("download", mirror.address, 9000),
        tcp("download", Ipv4Addr::new(192, 168, 77, 20), 9000),
        tcp("download", Ipv4Addr::new(192, 168, 77, 1), 80),
        dns("download", mirror.address),
        dns("download", Ipv4Addr::new(192, 168, 77, 1)),
    ];
    for reply in probe(&vm, &endpoint_down) {
        assert!(!reached(&reply), "download reached {}:{} with the VPN endpoint down: {reply:?}", reply.address, reply.port);
    }

    let mut peer_vm = boot_on_lan("wireguard_peer", &peer_image, LanLink { backend: LanBackend::Socket { port: lan_port, listen: false }, mac_suffix: 20, capture: false });
    peer_vm.wait_for_console("(?m)^ztms-init: WireGuard wg-vpn: up", BOOT_TIMEOUT).unwrap();
    peer_vm.wait_for_console("(?m)^ztms-init: ready:", BOOT_TIMEOUT).unwrap();

    // The peer's matrix: from the peer VM's egress=vpn service, whose
    // traffic enters wg-remote as the peer's address, every declared port
    // of every appliance service, and the appliance's own tunnel address.
    let allowed_flow = appliance.flows.iter().find(|flow| flow.source == peer_address).expect("peer-vm has a flow");
    let warm_up = probe_until_connected(&peer_vm, &tcp("client", allowed_flow.to.address, allowed_flow.to.port), TUNNEL_TIMEOUT);
    assert_eq!(warm_up.outcome, ProbeOutcome::Connected, "first connection through the tunnel: {warm_up:?}");

    let (definition, _) = plan_of("test-wg");
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for service in &definition.services {
        let address = appliance.service(service.name.get_ref()).unwrap().address;
        for port in &service.ports {
            assert_eq!(port.proto, Proto::Tcp, "the test-wg matrix probes TCP ports only");
            requests.push(tcp("client", address, port.port));
            expected.push(appliance.flows.iter().any(|flow| {
                flow.source == peer_address && flow.to.address == address && flow.to.port == port.port && flow.to.proto == Proto::Tcp
            }));
        }
    }
    for port in [22, 80, 443] {
        requests.push(tcp("client", remote.subnet.gateway(), port));
        expected.push(false);
    }
    let replies = probe(&peer_vm, &requests);
    let mut wrong = Vec::new();
    for ((request, reply), allowed) in requests.iter().zip(&replies).zip(&expected) {
        let correct = if *allowed { reached(reply) } else { reply.outcome == ProbeOutcome::Timeout };
        if !correct {
            wrong.push(format!(
                "peer -> {}:{}: expected {}, got {:?} ({:?})",
                request.address,
                request.port,
                if *allowed { "reached" } else { "dropped" },
                reply.outcome,
                reply.detail
            ));
        }
    }
    let allowed_count = expected.iter().filter(|allowed| **allowed).count();
    eprintln!("peer matrix: {} probes, {allowed_count} allowed", requests.len());
    assert!(wrong.is_empty(), "peer matrix cells wrong:\n{}", wrong.join("\n"));

    // Several megabytes through wg-remote (MTU 1420 behind 1500-byte
    // links), and for comparison between two segments of the appliance
    // without a tunnel.
    let bulk = appliance.service("bulk").expect("bulk service").address;
    measure(&peer_vm, "peer to appliance through wg-remote", "client", bulk, 9000);
    let db = appliance.service("db").expect("db service").address;
    let planned_rules = planned_rule_count(&appliance);
    compare_forwarding(&vm, bulk, db, planned_rules);

    // The VPN direction: the download service through wg-vpn.
    let through_vpn = probe_until_connected(&vm, &tcp("download", mirror.address, 9000), TUNNEL_TIMEOUT);
    assert_eq!(through_vpn.outcome, ProbeOutcome::Connected, "download through the tunnel: {through_vpn:?}");
    measure(&vm, "download to mirror through wg-vpn", "download", mirror.address, 9000);

    // wg-vpn deleted inside the appliance: while it is gone, the tunnel
    // table's `unreachable default` rejects the download service's packets
    // and the firewall still drops them on the uplink. ztms-init checks the
    // interface every 5 s, so it may re-create it before the probes run.
    // The probes then reach the mirror through the tunnel, and the test
    // deletes the interface again.
    let before = service_run(&vm, "download");
    let mut observed_gone = None;
    for attempt in 1..=3 {
        let deleted = delete_link(&vm, VPN_INTERFACE);
        assert!(!deleted.present, "wg-vpn still exists after delete-link: {deleted:?}");
        let replies = probe(
            &vm,
            &[
                tcp("download", mirror.address, 9000),
                tcp("download", Ipv4Addr::new(192, 168, 77, 20), 9000),
                dns("download", mirror.address),
            ],
        );
        if replies[0].outcome == ProbeOutcome::Unreachable {
            observed_gone = Some(replies);
            break;
        }
        eprintln!("attempt {attempt}: wg-vpn was back before the probes ran ({:?}); deleting it again", replies[0]);
        vm.wait_for_console("(?m)^ztms-init: WireGuard wg-vpn: re-created", Duration::from_secs(60)).unwrap();
    }
    let probes_while_deleted = observed_gone.expect("the probes ran while wg-vpn was deleted in one of 3 attempts");
    for reply in &probes_while_deleted {
        assert!(!reached(reply), "download reached {}:{} with wg-vpn deleted: {reply:?}", reply.address, reply.port);
    }
    let recreated = vm.wait_for_console("(?m)^ztms-init: WireGuard wg-vpn: re-created.*", Duration::from_secs(60)).unwrap();
    eprintln!("{}", recreated.trim());
    let again = probe_until_connected(&vm, &tcp("download", mirror.address, 9000), TUNNEL_TIMEOUT);
    assert_eq!(again.outcome, ProbeOutcome::Connected, "download after wg-vpn was re-created: {again:?}");
    let query_again = probe(&vm, &[dns("download", mirror.address)]).remove(0);
    assert_eq!(query_again.outcome, ProbeOutcome::Refused, "DNS query through the re-created tunnel: {query_again:?}");
    assert_eq!(service_run(&vm, "download"), before, "the download service was not restarted");
    let status = vm.status(Duration::from_secs(10)).unwrap();
    let vpn_status = status.wireguard.iter().find(|w| w.interface == VPN_INTERFACE).expect("wg-vpn in the status");
    assert_eq!(vpn_status.error, None, "status of the re-created wg-vpn");

    // MSS clamping: the SYN that left the appliance by wg-vpn carried an
    // MSS that fits the tunnel's MTU (less 20 bytes of IPv4 and 20 of TCP
    // header). mirror's sending MSS is that value less 12 bytes of TCP
    // timestamps; without clamping it would come from download's
    // 1500-byte link and be 1448.
    let vpn_mtu = u32::from(appliance.vpn.as_ref().unwrap().device.mtu);
    let line = peer_vm.wait_for_console(r"(?m)mirror: mss-check: mss:\d+", Duration::from_secs(30)).unwrap();
    let mss: u32 = line
        .rsplit("mss:")
        .next()
        .and_then(|digits| digits.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MSS in {line:?}"));
    eprintln!("MSS of the first connection through wg-vpn (MTU {vpn_mtu}): {mss} at mirror, so {} or less in the SYN", vpn_mtu - 40);
    assert!(mss + 40 <= vpn_mtu, "mirror sends segments of {mss} bytes, more than wg-vpn's MTU {vpn_mtu} allows");
    assert!(mss >= vpn_mtu - 40 - 12, "MSS {mss} is lower than clamping to MTU {vpn_mtu} gives");

    // DNS through the tunnel: a query to the tunnel's DNS server reaches
    // it, and nothing listens there, so the ICMP port unreachable comes
    // back as "refused". The uplink's resolver stays out of reach.
    let query = probe(&vm, &[dns("download", mirror.address)]).remove(0);
    assert_eq!(query.outcome, ProbeOutcome::Refused, "DNS query to the tunnel's DNS server: {query:?}");
    let uplink_query = probe(&vm, &[dns("download", Ipv4Addr::new(192, 168, 77, 1))]).remove(0);
    assert_eq!(uplink_query.outcome, ProbeOutcome::Timeout, "DNS query to the uplink's resolver: {uplink_query:?}");
    let leak = probe(&vm, &[tcp("download", Ipv4Addr::new(192, 168, 77, 20), 9000)]).remove(0);
    assert!(!reached(&leak), "download reached the provider's LAN address outside the tunnel: {leak:?}");

    // wg-remote deleted inside the appliance: ztms-init re-creates it with
    // the same key and peer, and the peer's next handshake reaches web again.
    let web = appliance.service("web").expect("web service").address;
    let deleted = delete_link(&vm, REMOTE_INTERFACE);
    assert!(!deleted.present, "wg-remote still exists after delete-link: {deleted:?}");
    let recreated = vm.wait_for_console("(?m)^ztms-init: WireGuard wg-remote: re-created.*", Duration::from_secs(60)).unwrap();
    eprintln!("{}", recreated.trim());
    let web_again = probe_until_connected(&peer_vm, &tcp("client", web, 8080), TUNNEL_TIMEOUT);
    assert_eq!(web_again.outcome, ProbeOutcome::Connected, "peer to web after wg-remote was re-created: {web_again:?}");
    let status = vm.status(Duration::from_secs(10)).unwrap();
    let remote_status = status.wireguard.iter().find(|w| w.interface == REMOTE_INTERFACE).expect("wg-remote in the status");
    assert_eq!(remote_status.error, None, "status of the re-created wg-remote");

    // The tunnel goes down (the LAN cable is pulled) and comes back; the
    // download service gets its connectivity back with the same process.
    let before = service_run(&vm, "download");
    vm.monitor("set_link lan0 off").unwrap();
    let down = probe(&vm, &[tcp("download", mirror.address, 9000)]).remove(0);
    assert!(!reached(&down), "download reached the mirror with the tunnel down: {down:?}");
    let query_down = probe(&vm, &[dns("download", mirror.address)]).remove(0);
    assert!(!reached(&query_down), "a DNS query reached the tunnel's DNS server with the tunnel down: {query_down:?}");
    vm.monitor("set_link lan0 on").unwrap();
    let back = probe_until_connected(&vm, &tcp("download", mirror.address, 9000), TUNNEL_TIMEOUT);
    assert_eq!(back.outcome, ProbeOutcome::Connected, "download after the tunnel came back: {back:?}");
    assert_eq!(service_run(&vm, "download"), before, "the download service was not restarted");

    // The client configuration of the peer, with the appliance's public
    // key read from its status.
    let config = ztms_command(&["wg", "peer", "images/test-wg.toml", "peer-vm", "--no-qr", "--status"], &vm);
    assert!(config.contains(&format!("PublicKey = {}\n", test_public_key("appliance-remote.key"))), "{config}");
    assert!(config.contains(&format!("Address = {peer_address}/32\n")), "{config}");

    // Incident containment with `ztms isolate`: the isolated service drops
    // the peer's connections, and the undo restores them.
    let web = appliance.service("web").expect("web service").address;
    let isolated = ztms_command(&["isolate", "web", "--socket"], &vm);
    assert!(isolated.contains("is isolated from every network"), "{isolated}");
    let cut = probe(&peer_vm, &[tcp("client", web, 8080)]).remove(0);
    assert_eq!(cut.outcome, ProbeOutcome::Timeout, "peer to isolated web: {cut:?}");
    let released = ztms_command(&["isolate", "web", "--undo", "--socket"], &vm);
    assert!(released.contains("is not isolated"), "{released}");
    let restored = probe(&peer_vm, &[tcp("client", web, 8080)]).remove(0);
    assert_eq!(restored.outcome, ProbeOutcome::Connected, "peer to released web: {restored:?}");
    vm.wait_for_console("(?m)service web .* isolated from every network", Duration::from_secs(10)).unwrap();
    vm.wait_for_console("(?m)service web .* released from isolation", Duration::from_secs(10)).unwrap();

    peer_vm.kill();
    vm.kill();

    // The capture of the appliance's LAN link covers the boot with the
    // endpoint down, both tunnels, and the link going down and up. Every
    // IPv4 packet that the appliance sent is WireGuard, so nothing of the
    // download service left outside the tunnel, and Linux sent no IPv6.
    let pcap = std::fs::read(&vm.paths.lan_capture).expect("read the LAN capture");
    let sent = frames_sent(&pcap, APPLIANCE_MAC_SUFFIX, linux_started);
    eprintln!(
        "appliance on the LAN: {} frames from the firmware, then {} WireGuard packets, {} ARP frames, {} others",
        sent.firmware,
        sent.wireguard,
        sent.arp,
        sent.other.len()
    );
    assert!(sent.wireguard > 0, "the capture has the tunnels' packets");
    assert!(sent.other.is_empty(), "frames outside the tunnel:\n{}", sent.other.join("\n"));
}
