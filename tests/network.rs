//! QEMU tests of the network phase on `images/test-net.toml`: the
//! communication matrix probed from inside every service's namespace, a
//! forged source address, and the ports that reply on the uplink.
//!
//! The expected matrix is computed from the definition's network plan, not
//! listed here, so a change to the definition changes the test with it.

mod harness;

use std::net::{Ipv4Addr, TcpListener};

use harness::{boot, boot_with_forwards, http_reply, image, probe, ProbeRequest, BOOT_TIMEOUT};
use ztms::config::Proto;
use ztms::net::NetworkPlan;
use ztms::run::vm::Forward;
use ztms::status::ProbeOutcome;

fn test_net_plan() -> NetworkPlan {
    let definition = harness::repo().join("images/test-net.toml");
    let loaded = ztms::config::load(&definition).expect("load test-net.toml");
    NetworkPlan::from_definition(&loaded.definition).expect("network plan of test-net")
}

/// Returns every declared port of every service as (service, proto, port).
fn declared_ports() -> Vec<(String, Proto, u16)> {
    let definition = harness::repo().join("images/test-net.toml");
    let loaded = ztms::config::load(&definition).expect("load test-net.toml");
    let mut ports = Vec::new();
    for service in &loaded.definition.services {
        for port in &service.ports {
            ports.push((service.name.get_ref().clone(), port.proto, port.port));
        }
    }
    ports
}

fn is_allowed(plan: &NetworkPlan, source: Ipv4Addr, target: Ipv4Addr, proto: Proto, port: u16) -> bool {
    plan.flows
        .iter()
        .any(|flow| flow.source == source && flow.to.address == target && flow.to.proto == proto && flow.to.port == port)
}

#[test]
fn matrix_holds_in_both_directions() {
    let plan = test_net_plan();
    let ports = declared_ports();
    let mut vm = boot("matrix_holds_in_both_directions", &image("test-net"));
    vm.wait_for_console("(?m)^ztms-init: firewall: table inet ztms applied", BOOT_TIMEOUT).unwrap();
    vm.wait_for_console("(?m)^ztms-init: phase services ", BOOT_TIMEOUT).unwrap();

    // Every service to every declared port of every other service.
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for source in &plan.services {
        for (target_name, proto, port) in &ports {
            if *target_name == source.name {
                continue;
            }
            let target = plan.service(target_name).expect("declared service in the plan");
            requests.push(ProbeRequest {
                service: source.name.clone(),
                udp: *proto == Proto::Udp,
                address: target.address,
                port: *port,
                source: None,
            });
            expected.push(is_allowed(&plan, source.address, target.address, *proto, *port));
        }
    }
    let allowed_count = expected.iter().filter(|allowed| **allowed).count();
    assert_eq!(allowed_count, plan.flows.len(), "every flow of the plan is probed once");

    let replies = probe(&vm, &requests);
    let mut wrong = Vec::new();
    for ((request, reply), allowed) in requests.iter().zip(&replies).zip(&expected) {
        // A reset or an ICMP port unreachable (refused) comes from the
        // target's own network stack, so it proves delivery as well as an
        // accepted connection does: the ruleset drops and never rejects.
        // UDP ports have no listener in test-net.
        let reached = matches!(reply.outcome, ProbeOutcome::Connected | ProbeOutcome::Refused);
        let dropped = reply.outcome == ProbeOutcome::Timeout;
        let correct = if *allowed { reached } else { dropped };
        if !correct {
            wrong.push(format!(
                "{} -> {}:{}/{}: expected {}, got {:?} ({:?})",
                request.service,
                request.address,
                request.port,
                reply.proto,
                if *allowed { "reached" } else { "dropped" },
                reply.outcome,
                reply.detail
            ));
        }
    }
    let connected = replies.iter().filter(|reply| reply.outcome == ProbeOutcome::Connected).count();
    eprintln!(
        "matrix: {} probes, {allowed_count} allowed ({connected} accepted by a listener), {} dropped",
        replies.len(),
        replies.len() - allowed_count
    );
    assert!(wrong.is_empty(), "matrix cells wrong:\n{}", wrong.join("\n"));

    // A probe that forges the address of a service with an allowed flow is
    // dropped. The same request from the address's owner gets through, so
    // the drop comes from the source check.
    let flow = plan.flows.iter().find(|flow| flow.to.proto == Proto::Tcp).expect("a TCP flow in test-net");
    let owner = plan.services.iter().find(|service| service.address == flow.source).unwrap();
    let forger = plan
        .services
        .iter()
        .find(|service| service.name != owner.name && service.name != flow.to_name)
        .expect("a third service");
    let forged = ProbeRequest {
        service: forger.name.clone(),
        udp: false,
        address: flow.to.address,
        port: flow.to.port,
        source: Some(owner.address),
    };
    let genuine = ProbeRequest { service: owner.name.clone(), ..forged.clone() };
    let replies = probe(&vm, &[forged, genuine]);
    assert_eq!(replies[0].outcome, ProbeOutcome::Timeout, "forged source from {}: {:?}", forger.name, replies[0]);
    assert!(
        matches!(replies[1].outcome, ProbeOutcome::Connected | ProbeOutcome::Refused),
        "genuine source from {}: {:?}",
        owner.name,
        replies[1]
    );

    vm.kill();
}

/// Returns a free TCP port on 127.0.0.1. Another process may take it
/// before QEMU binds it, which makes the VM fail to start, not the test
/// pass.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends an HTTP request to 127.0.0.1:`port` and returns what came back
/// within the timeout. QEMU accepts every forwarded connection itself, so
/// only a reply shows that the guest's service is reachable.
#[test]
fn uplink_answers_only_published_port() {
    let plan = test_net_plan();
    let published: Vec<u16> = plan.published.iter().map(|port| port.external_port).collect();
    assert_eq!(published, [443], "test-net publishes HTTPS only");

    // The published port, each service port as a guest port, and ports
    // that a default install often opens.
    let mut guest_ports: Vec<u16> = vec![443, 22, 80, 51820];
    guest_ports.extend(declared_ports().iter().filter(|(_, proto, _)| *proto == Proto::Tcp).map(|(_, _, port)| *port));
    guest_ports.sort();
    guest_ports.dedup();
    let forwards: Vec<Forward> = guest_ports
        .iter()
        .map(|guest| Forward { host: free_port(), guest: *guest, udp: false })
        .collect();

    let mut vm = boot_with_forwards("uplink_answers_only_published_port", &image("test-net"), forwards.clone());
    vm.wait_for_console("(?m)^ztms-init: uplink eth0: ", BOOT_TIMEOUT).unwrap();
    // QEMU's user network offers its DNS server 10.0.2.3 in the lease.
    let lease = vm.wait_for_console("(?m)^ztms-init: uplink eth0: DNS servers of the lease: ", BOOT_TIMEOUT).unwrap();
    assert!(lease.ends_with("DNS servers of the lease: 10.0.2.3"), "{lease}");
    vm.wait_for_console("(?m)^ztms-init: ready:", BOOT_TIMEOUT).unwrap();

    let mut answered = Vec::new();
    for forward in &forwards {
        let reply = http_reply(forward.host);
        if !reply.is_empty() {
            assert!(reply.starts_with("HTTP/1."), "guest port {} sent {reply:?}", forward.guest);
            answered.push(forward.guest);
        }
    }
    assert_eq!(answered, [443], "of guest ports {guest_ports:?}, only the published one answers");
    vm.kill();
}
