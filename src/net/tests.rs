//! Plan and ruleset tests; pure, no root needed.

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{json, Value};

use super::address::IFNAME_MAX;
use super::plan::{Endpoint, NetworkPlan};
use super::nftables;
use crate::config::{self, Definition, Egress, Proto};

include!("testdata/synthetic.rs");

const MEDIA_STACK: &str = include_str!("testdata/media-stack.toml");

fn definition(text: &str) -> Definition {
    config::parse(Path::new("net-test.toml"), text.to_string())
        .unwrap_or_else(|error| panic!("definition rejected: {error}"))
        .definition
}

fn media_plan() -> NetworkPlan {
    NetworkPlan::from_definition(&definition(MEDIA_STACK)).expect("media stack plan")
}

fn config_error(text: &str) -> String {
    match config::parse(Path::new("images/t.toml"), text.to_string()) {
        Ok(_) => panic!("definition was accepted:\n{text}"),
        Err(error) => error.to_string(),
    }
}

fn address_of(plan: &NetworkPlan, name: &str) -> Ipv4Addr {
    plan.service(name).unwrap_or_else(|| panic!("no service {name}")).address
}

/// Returns the rules of `chain` in the ruleset JSON, as arrays of statements.
fn chain_rules(document: &Value, chain: &str) -> Vec<Value> {
    document["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|command| command["add"].get("rule"))
        .filter(|rule| rule["chain"] == chain)
        .map(|rule| rule["expr"].clone())
        .collect()
}

fn set_elements(document: &Value, set: &str) -> Vec<Value> {
    document["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|command| command["add"].get("set"))
        .find(|candidate| candidate["name"] == set)
        .unwrap_or_else(|| panic!("no set {set}"))
        .get("elem")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn ruleset_json(plan: &NetworkPlan) -> Value {
    serde_json::from_str(&nftables::to_json(&nftables::ruleset(plan, &[]))).expect("valid JSON")
}

fn is_accept(rule: &Value) -> bool {
    rule.as_array().expect("statements").iter().any(|statement| statement.get("accept").is_some())
}

fn matches_value(rule: &Value, left: &Value, right: &Value) -> bool {
    rule.as_array()
        .expect("statements")
        .iter()
        .any(|statement| statement["match"]["left"] == *left && statement["match"]["right"] == *right)
}

#[test]
fn addresses_ignore_declaration_order() {
    let forward = definition(MEDIA_STACK);
    let mut reversed = forward.clone();
    reversed.services.reverse();

    let first = NetworkPlan::from_definition(&forward).unwrap();
    let second = NetworkPlan::from_definition(&reversed).unwrap();
    assert_eq!(first.services, second.services);
    assert_eq!(first.flows, second.flows);
}

#[test]
fn ruleset_json_is_deterministic() {
    let first = nftables::to_json(&nftables::ruleset(&media_plan(), &[]));
    let second = nftables::to_json(&nftables::ruleset(&media_plan(), &[]));
    assert_eq!(first, second);
}

#[test]
fn addresses_are_in_segment_and_unique() {
    let plan = media_plan();
    let mut seen = HashSet::new();
    for service in &plan.services {
        let segment = plan.segments.iter().find(|s| s.name == service.segment).unwrap();
        assert!(segment.subnet.is_allocatable(service.address), "{} has {}", service.name, service.address);
        assert_eq!(service.gateway, segment.gateway);
        assert!(seen.insert(service.address), "{} reuses {}", service.name, service.address);
    }
}

#[test]
fn interface_names_fit_and_are_unique() {
    let text = synthetic_definition(200);
    let plan = NetworkPlan::from_definition(&definition(&text)).unwrap();
    assert_eq!(plan.services.len(), 200);

    let mut names = HashSet::new();
    for service in &plan.services {
        for name in [&service.host_link, &service.peer_link] {
            assert!(name.len() <= IFNAME_MAX, "{name} is longer than {IFNAME_MAX}");
            assert!(names.insert(name.clone()), "{name} is used twice");
        }
        assert_eq!(service.netns, service.name);
    }
}

#[test]
fn segment_gateway_is_first_address() {
    let plan = media_plan();
    let frontend = plan.segments.iter().find(|s| s.name == "frontend").unwrap();
    assert_eq!(frontend.gateway, Ipv4Addr::new(10, 80, 1, 1));
}

#[test]
fn matrix_set_holds_exactly_declared_pairs() {
    let plan = media_plan();
    let remote = plan.remote.as_ref().unwrap();
    let peer = |name: &str| remote.peers.iter().find(|(n, _)| n == name).unwrap().1;
    let service = |name: &str| address_of(&plan, name);
    let tcp = |source: Ipv4Addr, target: &str, port: u16| {
        json!({"concat": [source.to_string(), service(target).to_string(), "tcp", port]})
    };
    let expected: BTreeSet<String> = [
        tcp(service("proxy"), "jellyfin", 8096),
        tcp(service("proxy"), "sonarr", 8989),
        tcp(service("proxy"), "qbittorrent", 8080),
        tcp(service("proxy"), "grafana", 3000),
        tcp(service("jellyfin"), "postgres", 5432),
        tcp(service("sonarr"), "qbittorrent", 8080),
        tcp(service("sonarr"), "sabnzbd", 8080),
        tcp(service("sonarr"), "postgres", 5432),
        tcp(service("prometheus"), "jellyfin", 8096),
        tcp(service("prometheus"), "sonarr", 8989),
        tcp(service("prometheus"), "postgres", 5432),
        tcp(service("grafana"), "prometheus", 9090),
        tcp(peer("phone"), "proxy", 443),
        tcp(peer("laptop"), "jellyfin", 8096),
        tcp(peer("laptop"), "grafana", 3000),
    ]
    .iter()
    .map(Value::to_string)
    .collect();

    let actual: BTreeSet<String> = set_elements(&ruleset_json(&plan), "allowed").iter().map(Value::to_string).collect();
    assert_eq!(actual, expected);
}

#[test]
fn matrix_denies_download_to_database() {
    let plan = media_plan();
    let qbittorrent = address_of(&plan, "qbittorrent");
    let postgres = address_of(&plan, "postgres");
    assert!(!plan.flows.iter().any(|flow| flow.source == qbittorrent));
    assert!(!plan.flows.iter().any(|flow| flow.source == postgres));
}

#[test]
fn matrix_is_one_set_lookup() {
    let document = ruleset_json(&media_plan());
    let lookups: Vec<Value> = chain_rules(&document, "forward")
        .into_iter()
        .filter(|rule| rule.to_string().contains("@allowed"))
        .collect();
    assert_eq!(lookups.len(), 1);
}

#[test]
fn ruleset_size_does_not_grow_with_pairs() {
    let small = ruleset_json(&NetworkPlan::from_definition(&definition(&synthetic_definition(10))).unwrap());
    let large = ruleset_json(&NetworkPlan::from_definition(&definition(&synthetic_definition(200))).unwrap());
    for chain in ["prerouting", "input", "forward", "output", "srcnat"] {
        assert_eq!(chain_rules(&small, chain).len(), chain_rules(&large, chain).len(), "chain {chain}");
    }
    assert_eq!(set_elements(&large, "allowed").len(), 600);
}

#[test]
fn no_rule_accepts_vpn_service_on_uplink() {
    let plan = media_plan();
    let document = ruleset_json(&plan);
    let uplink = json!("up0");
    let oifname = json!({"meta": {"key": "oifname"}});
    let forward = chain_rules(&document, "forward");

    // Every accept towards the uplink is restricted to egress=internet
    // (or to published replies, which conntrack accepts).
    for rule in forward.iter().filter(|rule| is_accept(rule) && matches_value(rule, &oifname, &uplink)) {
        assert!(rule.to_string().contains("@egress_internet"), "rule {rule} accepts more than egress=internet");
    }

    // The kill switch drops before conntrack accepts anything.
    let kill_switch = forward
        .iter()
        .position(|rule| matches_value(rule, &oifname, &uplink) && rule.to_string().contains("@egress_vpn"))
        .expect("kill switch rule");
    let established = forward
        .iter()
        .position(|rule| rule.to_string().contains("established"))
        .expect("conntrack rule");
    assert!(kill_switch < established);
    assert!(!is_accept(&forward[kill_switch]));

    let vpn: HashSet<Value> = set_elements(&document, "egress_vpn").into_iter().collect();
    let internet: HashSet<Value> = set_elements(&document, "egress_internet").into_iter().collect();
    assert_eq!(vpn.len(), 2);
    assert!(vpn.is_disjoint(&internet));
}

#[test]
fn vpn_services_resolve_through_tunnel() {
    let plan = media_plan();
    let qbittorrent = plan.service("qbittorrent").unwrap();
    assert_eq!(qbittorrent.egress, Egress::Vpn);
    assert_eq!(
        qbittorrent.dns,
        super::plan::ServiceDns::Vpn { servers: vec![Ipv4Addr::new(10, 64, 0, 1)] }
    );
    let routing = &plan.vpn.as_ref().unwrap().routing;
    assert!(routing.sources.contains(&qbittorrent.address));
    assert!(!routing.sources.contains(&address_of(&plan, "jellyfin")));
}

#[test]
fn vpn_dns_goes_only_to_tunnel_servers() {
    let plan = media_plan();
    let document = ruleset_json(&plan);
    let forward = chain_rules(&document, "forward");
    let dport = json!({"payload": {"protocol": "th", "field": "dport"}});
    let daddr = json!({"payload": {"protocol": "ip", "field": "daddr"}});
    let saddr = json!({"payload": {"protocol": "ip", "field": "saddr"}});

    let dns_rule = forward
        .iter()
        .position(|rule| matches_value(rule, &saddr, &json!("@egress_vpn")) && matches_value(rule, &dport, &json!(53)))
        .expect("DNS rule of egress=vpn services");
    let rule = &forward[dns_rule];
    assert!(!is_accept(rule), "{rule}");
    assert!(rule.to_string().contains("\"drop\""), "{rule}");
    let excluded = rule
        .as_array()
        .unwrap()
        .iter()
        .any(|statement| statement["match"]["left"] == daddr && statement["match"]["right"] == json!("@vpn_dns") && statement["match"]["op"] == "!=");
    assert!(excluded, "the rule spares the tunnel's DNS servers only: {rule}");

    // Before any accept, so neither conntrack nor the tunnel's accept lets
    // a query to another resolver through.
    let first_accept = forward.iter().position(is_accept).expect("an accept rule");
    assert!(dns_rule < first_accept, "DNS rule at {dns_rule}, first accept at {first_accept}");

    let servers = set_elements(&document, "vpn_dns");
    assert_eq!(servers, [json!("10.64.0.1")]);
}

#[test]
fn vpn_dns_set_is_empty_without_tunnel() {
    let text = MEDIA_STACK.split("\n[vpn]").next().unwrap().to_string();
    let tail = MEDIA_STACK.split("\n[vpn]").nth(1).unwrap();
    let after = tail.find("\n[").map(|start| &tail[start..]).unwrap_or("");
    let plan = NetworkPlan::from_definition(&definition(&(text + after))).expect("plan without [vpn]");
    assert!(plan.vpn.is_none());
    assert!(set_elements(&ruleset_json(&plan), "vpn_dns").is_empty());
}

#[test]
fn vpn_service_allow_to_dns_port_is_rejected() {
    let text = MEDIA_STACK
        .replace("ports = [{ port = 8096 }]", "ports = [{ port = 8096 }, { port = 53, proto = \"udp\" }]")
        .replace(
            "ports = [{ port = 8080 }, { port = 6881, proto = \"udp\" }]\negress = \"vpn\"",
            "ports = [{ port = 8080 }, { port = 6881, proto = \"udp\" }]\negress = \"vpn\"\nallow = [\"jellyfin:53/udp\"]",
        );
    assert!(text.contains("jellyfin:53/udp"), "the test definition has the allow entry");
    let error = config_error(&text);
    assert!(error.contains("egress = \"vpn\""), "{error}");
    assert!(error.contains("port 53"), "{error}");
}

#[test]
fn uplink_accepts_only_https_and_wireguard() {
    let plan = media_plan();
    let document = ruleset_json(&plan);
    let iifname = json!({"meta": {"key": "iifname"}});
    let uplink = json!("up0");
    let dport = json!({"payload": {"protocol": "th", "field": "dport"}});

    let input_ports: Vec<Value> = chain_rules(&document, "input")
        .into_iter()
        .filter(|rule| is_accept(rule) && matches_value(rule, &iifname, &uplink))
        .map(|rule| {
            rule.as_array().unwrap().iter().find(|s| s["match"]["left"] == dport).unwrap()["match"]["right"].clone()
        })
        .collect();
    // DHCP replies (port 68) come back to the client; WireGuard listens.
    assert_eq!(input_ports, vec![json!(51820), json!(68)]);

    let dnat = chain_rules(&document, "dstnat");
    assert_eq!(dnat.len(), 1);
    assert!(dnat[0].to_string().contains(&address_of(&plan, "proxy").to_string()));
    let published = set_elements(&document, "published");
    assert_eq!(published, vec![json!({"concat": [address_of(&plan, "proxy").to_string(), "tcp", 443]})]);
}

#[test]
fn health_checks_reach_declared_ports() {
    let plan = media_plan();
    assert_eq!(
        plan.health_checks,
        vec![
            Endpoint { address: address_of(&plan, "proxy"), proto: Proto::Tcp, port: 443 },
            Endpoint { address: address_of(&plan, "jellyfin"), proto: Proto::Tcp, port: 8096 },
        ]
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
}

#[test]
fn isolate_adds_and_release_deletes() {
    let address = Ipv4Addr::new(10, 80, 2, 5);
    let added: Value = serde_json::from_str(&nftables::to_json(&nftables::isolate(address))).unwrap();
    let deleted: Value = serde_json::from_str(&nftables::to_json(&nftables::release(address))).unwrap();
    let element = json!({"family": "inet", "table": "ztms", "name": "isolated", "elem": ["10.80.2.5"]});
    assert_eq!(added, json!({"nftables": [{"add": {"element": element}}]}));
    assert_eq!(deleted, json!({"nftables": [{"delete": {"element": element}}]}));
}

#[test]
fn isolation_is_first_in_every_filter_chain() {
    let document = ruleset_json(&media_plan());
    for chain in ["prerouting", "input", "forward", "output"] {
        let rules = chain_rules(&document, chain);
        assert!(rules[0].to_string().contains("@isolated"), "chain {chain}");
        assert!(rules[1].to_string().contains("@isolated"), "chain {chain}");
    }
}

#[test]
fn reapply_keeps_isolated_addresses() {
    let plan = media_plan();
    let postgres = address_of(&plan, "postgres");
    let document: Value =
        serde_json::from_str(&nftables::to_json(&nftables::ruleset(&plan, &[postgres]))).unwrap();
    assert_eq!(set_elements(&document, "isolated"), vec![json!(postgres.to_string())]);

    let commands = document["nftables"].as_array().unwrap();
    assert!(commands[0]["add"]["table"].is_object());
    assert!(commands[1]["delete"]["table"].is_object());
}

#[test]
fn sources_pair_each_link_with_its_address() {
    let plan = media_plan();
    let document = ruleset_json(&plan);
    let sources = set_elements(&document, "sources");
    for service in &plan.services {
        let pair = json!({"concat": [service.host_link, service.address.to_string()]});
        assert!(sources.contains(&pair), "{} missing from sources", service.name);
    }
    assert_eq!(sources.len(), plan.services.len() + 2);
}

#[test]
fn remote_peer_keeps_declared_address() {
    let plan = media_plan();
    let remote = plan.remote.unwrap();
    assert!(remote.peers.contains(&("laptop".into(), Ipv4Addr::new(10, 80, 100, 10))));
    assert_eq!(remote.device.name, "wg-remote");
    assert_eq!(remote.device.listen_port, Some(51820));
    assert_eq!(remote.device.addresses[0].to_string(), "10.80.100.1/24");
}

#[test]
fn vpn_device_args_name_endpoint_and_key_file() {
    let plan = media_plan();
    let args = plan.vpn.unwrap().device.wg_set_args();
    assert_eq!(
        args,
        [
            "wg-vpn",
            "private-key",
            "/data/config/wireguard/vpn.key",
            "peer",
            "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
            "endpoint",
            "vpn.example.net:51820",
            "persistent-keepalive",
            "25",
            "allowed-ips",
            "0.0.0.0/0",
        ]
    );
}

#[test]
fn no_services_means_empty_sets() {
    let plan = NetworkPlan::from_definition(&definition("[image]\nname = \"t\"\nversion = \"1\"\n")).unwrap();
    assert!(plan.remote.is_none());
    assert!(plan.vpn.is_none());
    let document = ruleset_json(&plan);
    assert!(set_elements(&document, "allowed").is_empty());
    assert!(chain_rules(&document, "dstnat").is_empty());
}

const MINIMAL: &str = "[image]\nname = \"t\"\nversion = \"1.0\"\n";

fn with_service(extra: &str) -> String {
    format!("{MINIMAL}\n[[service]]\nname = \"app\"\nsegment = \"backend\"\ncommand = [\"/bin/app\"]\nports = [{{ port = 80 }}]\n{extra}")
}

#[test]
fn vpn_service_cannot_publish() {
    let text = format!(
        "{MINIMAL}\n[vpn]\nendpoint = \"192.0.2.1:51820\"\npublic_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"\n\
         private_key_file = \"/data/vpn.key\"\naddresses = [\"10.64.0.2/32\"]\ndns = [\"10.64.0.1\"]\n\n\
         [[service]]\nname = \"app\"\nsegment = \"download\"\ncommand = [\"/bin/app\"]\negress = \"vpn\"\n\
         ports = [{{ port = 80, publish = 8080 }}]\n"
    );
    let error = config_error(&text);
    assert!(error.contains("publishes port 80/tcp"), "{error}");
}

#[test]
fn allow_to_unknown_service_is_rejected() {
    let error = config_error(&with_service("allow = [\"nobody:80/tcp\"]\n"));
    assert!(error.contains("\"nobody\""), "{error}");
    assert!(error.contains("not declared"), "{error}");
    assert!(error.starts_with("images/t.toml:10:"), "{error}");
}

#[test]
fn allow_to_undeclared_port_is_rejected() {
    let error = config_error(&with_service("allow = [\"app:81/tcp\"]\n"));
    assert!(error.contains("81/tcp"), "{error}");
    assert!(error.contains("add it to that service's ports"), "{error}");
}

#[test]
fn malformed_allow_is_rejected() {
    let error = config_error(&with_service("allow = [\"app-80\"]\n"));
    assert!(error.contains("service:port/proto"), "{error}");
}

#[test]
fn static_uplink_needs_gateway() {
    let error = config_error(&format!("{MINIMAL}\n[network]\nipv4 = \"192.168.1.10/24\"\ndns = [\"192.168.1.1\"]\n"));
    assert!(error.contains("network.gateway"), "{error}");
    assert!(error.starts_with("images/t.toml:6:"), "{error}");
}

#[test]
fn static_gateway_outside_subnet_is_rejected() {
    let error = config_error(&format!(
        "{MINIMAL}\n[network]\nipv4 = \"192.168.1.10/24\"\ngateway = \"192.168.2.1\"\ndns = [\"192.168.1.1\"]\n"
    ));
    assert!(error.contains("192.168.2.1"), "{error}");
    assert!(error.contains("192.168.1.0/24"), "{error}");
}

#[test]
fn static_uplink_parses() {
    let plan = NetworkPlan::from_definition(&definition(&format!(
        "{MINIMAL}\n[network]\ninterface = \"enp1s0\"\nipv4 = \"192.168.1.10/24\"\ngateway = \"192.168.1.1\"\ndns = [\"192.168.1.1\"]\n"
    )))
    .unwrap();
    assert_eq!(plan.uplink.interface, "enp1s0");
    assert!(matches!(plan.uplink.ipv4, super::plan::UplinkIpv4::Static { .. }));
}

#[test]
fn overlapping_uplink_is_rejected() {
    let error = config_error(&format!(
        "{MINIMAL}\n[network]\nipv4 = \"10.80.0.10/16\"\ngateway = \"10.80.0.1\"\ndns = [\"10.80.0.1\"]\n"
    ));
    assert!(error.contains("overlaps"), "{error}");
}

#[test]
fn full_segment_suggests_prefix() {
    let mut text = format!("{MINIMAL}\n[[segment]]\nname = \"tiny\"\nsubnet = \"10.9.0.0/29\"\n");
    for index in 0..6 {
        text += &format!("\n[[service]]\nname = \"s{index}\"\nsegment = \"tiny\"\ncommand = [\"/bin/true\"]\n");
    }
    let error = config_error(&text);
    assert!(error.contains("holds 5"), "{error}");
    assert!(error.contains("/29"), "{error}");
}

#[test]
fn uplink_name_too_long_is_rejected() {
    let error = config_error(&format!("{MINIMAL}\n[network]\ninterface = \"averyverylongname0\"\n"));
    assert!(error.contains("network.interface"), "{error}");
}

#[test]
fn bad_peer_key_is_rejected() {
    let error = config_error(&format!(
        "{MINIMAL}\n[[wireguard.peer]]\nname = \"phone\"\npublic_key = \"not-a-key\"\n"
    ));
    assert!(error.contains("wg pubkey"), "{error}");
    assert!(error.starts_with("images/t.toml:7:"), "{error}");
}

#[test]
fn vpn_dns_outside_tunnel_is_rejected() {
    let text = format!(
        "{MINIMAL}\n[vpn]\nendpoint = \"192.0.2.1:51820\"\npublic_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"\n\
         private_key_file = \"/data/vpn.key\"\naddresses = [\"10.64.0.2/32\"]\ndns = [\"1.1.1.1\"]\nallowed_ips = [\"10.0.0.0/8\"]\n"
    );
    let error = config_error(&text);
    assert!(error.contains("allowed_ips"), "{error}");
}

#[test]
fn bad_endpoint_is_rejected() {
    for endpoint in ["vpn.example.net", "vpn.example.net:0", "[2001:db8::1]:51820", ":51820"] {
        assert!(super::wireguard::check_endpoint(endpoint).is_err(), "{endpoint} was accepted");
    }
    assert!(super::wireguard::check_endpoint("198.51.100.7:1194").is_ok());
}

#[test]
fn vpn_services_without_a_tunnel_have_no_way_out() {
    let mut untunnelled = definition(MEDIA_STACK);
    untunnelled.vpn = None;
    let plan = NetworkPlan::from_definition(&untunnelled).expect("plan without [vpn]");
    assert!(plan.vpn.is_none());

    let document = ruleset_json(&plan);
    let forward = chain_rules(&document, "forward");
    let oifname = json!({"meta": {"key": "oifname"}});
    let kill_switch = forward
        .iter()
        .find(|rule| matches_value(rule, &oifname, &json!("up0")) && rule.to_string().contains("@egress_vpn"))
        .expect("kill switch rule");
    assert!(!is_accept(kill_switch));
    assert!(!forward.iter().any(|rule| is_accept(rule) && rule.to_string().contains("@egress_vpn")));
    assert_eq!(set_elements(&document, "egress_vpn").len(), 2);
}

#[test]
fn remote_endpoint_with_port_is_rejected() {
    let error = config_error(&format!(
        "{MINIMAL}\n[wireguard]\nendpoint = \"home.example.net:51820\"\n\n[[wireguard.peer]]\nname = \"phone\"\npublic_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"\n"
    ));
    assert!(error.contains("wireguard.endpoint"), "{error}");
    assert!(error.contains("without a port"), "{error}");
}

#[test]
fn appliance_keys_default_to_data_secrets() {
    let plan = media_plan();
    let remote = plan.remote.expect("media stack has remote access");
    assert_eq!(remote.device.private_key_file, Path::new("/data/secrets/wireguard/remote.key"));
}

#[test]
fn banned_clients_dropped_before_any_accept() {
    let document = ruleset_json(&media_plan());
    let rules = chain_rules(&document, "prerouting");
    let banned = rules
        .iter()
        .position(|rule| rule.to_string().contains("@banned"))
        .expect("a prerouting rule looks up @banned");
    let first_accept = rules.iter().position(is_accept).expect("prerouting accepts loopback");
    assert!(banned < first_accept, "banned rule {banned} comes after accept {first_accept}");

    let rule = rules[banned].as_array().unwrap();
    let iifname = json!({"meta": {"key": "iifname"}});
    let saddr = json!({"payload": {"protocol": "ip", "field": "saddr"}});
    assert!(rule.contains(&json!({"match": {"op": "!=", "left": iifname, "right": "lo"}})));
    assert!(rule.contains(&json!({"match": {"op": "!=", "left": iifname, "right": "@service_links"}})));
    assert!(rule.contains(&json!({"match": {"op": "==", "left": saddr, "right": "@banned"}})));
    assert!(rule.contains(&json!({"counter": "drop_banned"})));
    assert!(rule.contains(&json!({"drop": null})));
}

#[test]
fn banned_set_has_timeout_flag() {
    let document = ruleset_json(&media_plan());
    let set = document["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|command| command["add"].get("set"))
        .find(|set| set["name"] == "banned")
        .expect("set banned")
        .clone();
    assert_eq!(set["type"], "ipv4_addr");
    assert_eq!(set["flags"], json!(["timeout"]));
    assert!(set.get("elem").is_none());
}

#[test]
fn service_links_set_lists_host_links_only() {
    let plan = media_plan();
    let document = ruleset_json(&plan);
    let links: Vec<Value> = plan.services.iter().map(|service| json!(service.host_link)).collect();
    assert_eq!(set_elements(&document, "service_links"), links);
}

#[test]
fn ban_adds_element_with_timeout() {
    let document: Value =
        serde_json::from_str(&nftables::to_json(&nftables::ban(Ipv4Addr::new(10, 0, 2, 2), 600))).unwrap();
    let commands = document["nftables"].as_array().unwrap();
    assert_eq!(commands.len(), 1);
    let element = &commands[0]["add"]["element"];
    assert_eq!(element["table"], "ztms");
    assert_eq!(element["name"], "banned");
    // The crate writes the element's other keys as null, which nft 1.0.6
    // accepts as absent.
    assert_eq!(element["elem"][0]["elem"]["val"], "10.0.2.2");
    assert_eq!(element["elem"][0]["elem"]["timeout"], 600);
}

#[test]
fn metrics_port_open_to_monitoring_segment_only() {
    let plan = media_plan();
    let (endpoint, subnet) = plan.metrics_endpoint().expect("prometheus is in the monitoring segment");
    assert_eq!(endpoint.to_string(), "10.80.4.1:9310");
    assert_eq!(subnet.to_string(), "10.80.4.0/24");

    let document = ruleset_json(&plan);
    let dport = json!({"payload": {"protocol": "th", "field": "dport"}});
    let rules: Vec<Value> = chain_rules(&document, "input")
        .into_iter()
        .filter(|rule| matches_value(rule, &dport, &json!(9310)))
        .collect();
    assert_eq!(rules.len(), 1);
    let saddr = json!({"payload": {"protocol": "ip", "field": "saddr"}});
    let daddr = json!({"payload": {"protocol": "ip", "field": "daddr"}});
    assert!(matches_value(&rules[0], &saddr, &json!({"prefix": {"addr": "10.80.4.0", "len": 24}})));
    assert!(matches_value(&rules[0], &daddr, &json!("10.80.4.1")));
    assert!(is_accept(&rules[0]));
}

#[test]
fn metrics_closed_without_monitoring_service() {
    let plan = NetworkPlan::from_definition(&definition(&with_service(""))).unwrap();
    assert_eq!(plan.metrics_endpoint(), None);
    let document = ruleset_json(&plan);
    let dport = json!({"payload": {"protocol": "th", "field": "dport"}});
    let opened = chain_rules(&document, "input").iter().any(|rule| matches_value(rule, &dport, &json!(9310)));
    assert!(!opened);
}
