//! The firewall: one `inet` table `ztms`, built as nftables JSON from a
//! [`NetworkPlan`] and applied with `nft -j -f -` in one transaction.
//!
//! The document first adds the table and then deletes it, so applying it
//! replaces any earlier version atomically: the kernel never runs a mix of
//! old and new rules, and a failed apply leaves the old ruleset in place.
//! Deleting the table resets its counters and empties the `isolated` and
//! `banned` sets, so [`ruleset`] takes the isolated addresses to carry
//! over. Bans are not carried over: they end when the table is replaced.
//!
//! Layout:
//! - `prerouting` (filter, priority raw): isolation, then banned clients,
//!   then source-address validation before conntrack tracks the packet. A packet that enters by a
//!   service's host link or `wg-remote` must carry an `(interface, address)`
//!   pair of the `sources` set; a packet from anywhere else must not carry an
//!   internal address.
//! - `input`, `forward`, `output` (filter, policy drop): isolation first,
//!   then conntrack state, then set lookups. The matrix is one lookup in the
//!   concatenated set `allowed` (`saddr . daddr . l4proto . dport`), so rule
//!   evaluation does not grow with the number of pairs.
//! - `dstnat` and `srcnat` (nat): published ports and masquerading.
//!
//! IPv6 is off, not filtered: every IPv6 packet except on loopback is
//! dropped in every chain, so services and peers have IPv4 only, with or
//! without an IPv6 uplink or tunnel. ztms-init also turns IPv6 off on the
//! uplink and on every interface that it creates.
//!
//! Interfaces are matched by name (`iifname`, `oifname`), never by index, so
//! the rules keep matching when `wg-vpn` is deleted and created again.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{self, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::schema::{self, Chain, Element, NfListObject, Nftables, Rule, SetType, SetTypeValue, Table};
use nftables::stmt::{self, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::plan::{NetworkPlan, UplinkIpv4, DNS_PORT};
use super::wireguard::{REMOTE_INTERFACE, VPN_INTERFACE};
use crate::config::{Egress, Proto};

/// Name of the table.
pub const TABLE: &str = "ztms";
/// Set of addresses cut off from every network (`ztms isolate`).
pub const ISOLATED_SET: &str = "isolated";
/// Set of client addresses banned for failed authentications, each with
/// its own timeout.
pub const BANNED_SET: &str = "banned";
/// Set of the tunnel's DNS servers (`vpn.dns`), the only DNS destinations
/// of egress=vpn services.
pub const VPN_DNS_SET: &str = "vpn_dns";
/// Named counters on the drop rules, read by the status API with
/// `nft -j list counters table inet ztms`.
pub const COUNTERS: &[&str] = &[
    "drop_isolated",
    "drop_banned",
    "drop_spoofed",
    "drop_martian",
    "drop_invalid",
    "drop_ipv6",
    "drop_vpn_leak",
    "drop_rate_limited",
    "drop_input",
    "drop_forward",
    "drop_output",
];

/// Priority of the `prerouting` filter chain: before conntrack (-200), so
/// spoofed packets never create conntrack entries.
const PRIORITY_RAW: i32 = -300;
const PRIORITY_FILTER: i32 = 0;
const PRIORITY_DSTNAT: i32 = -100;
const PRIORITY_SRCNAT: i32 = 100;
/// Burst of the per-source rate limit, as a multiple of the rate.
const RATE_BURST_FACTOR: u32 = 2;
/// DHCP server and client ports.
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;

/// Builds the complete ruleset of `plan`, with `isolated` already in the
/// `isolated` set.
pub fn ruleset(plan: &NetworkPlan, isolated: &[Ipv4Addr]) -> Nftables<'static> {
    let mut batch = Batch::new();
    let table = Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    };
    // `add` then `delete` works whether the table exists or not; the `add`
    // commands that follow rebuild it in the same transaction.
    batch.add(NfListObject::Table(table.clone()));
    batch.delete(NfListObject::Table(table.clone()));
    batch.add(NfListObject::Table(table));

    for name in COUNTERS {
        batch.add(NfListObject::Counter(schema::Counter {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: (*name).into(),
            handle: None,
            packets: None,
            bytes: Some(0),
        }));
    }
    add_sets(&mut batch, plan, isolated);

    let builder = Builder { plan };
    for (name, hook, kind, priority, policy, rules) in [
        ("prerouting", NfHook::Prerouting, NfChainType::Filter, PRIORITY_RAW, NfChainPolicy::Accept, builder.prerouting()),
        ("input", NfHook::Input, NfChainType::Filter, PRIORITY_FILTER, NfChainPolicy::Drop, builder.input()),
        ("forward", NfHook::Forward, NfChainType::Filter, PRIORITY_FILTER, NfChainPolicy::Drop, builder.forward()),
        ("output", NfHook::Output, NfChainType::Filter, PRIORITY_FILTER, NfChainPolicy::Drop, builder.output()),
        ("dstnat", NfHook::Prerouting, NfChainType::NAT, PRIORITY_DSTNAT, NfChainPolicy::Accept, builder.dstnat()),
        ("srcnat", NfHook::Postrouting, NfChainType::NAT, PRIORITY_SRCNAT, NfChainPolicy::Accept, builder.srcnat()),
    ] {
        batch.add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(priority),
            policy: Some(policy),
            ..Chain::default()
        }));
        for (statements, comment) in rules {
            batch.add(NfListObject::Rule(Rule {
                family: NfFamily::INet,
                table: TABLE.into(),
                chain: name.into(),
                expr: statements.into(),
                comment: Some(comment.into()),
                ..Rule::default()
            }));
        }
    }
    batch.to_nftables()
}

/// Returns the command that cuts `address` off from every network: one
/// element added to the `isolated` set, effective for open connections too.
pub fn isolate(address: Ipv4Addr) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Element(isolated_element(address)));
    batch.to_nftables()
}

/// Returns the command that lifts [`isolate`].
pub fn release(address: Ipv4Addr) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.delete(NfListObject::Element(isolated_element(address)));
    batch.to_nftables()
}

/// Returns the command that bans `address` for `seconds`: one element
/// added to the `banned` set, which the kernel deletes when its timeout
/// ends. Adding an address that is already in the set keeps its timeout.
pub fn ban(address: Ipv4Addr, seconds: u32) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Element(Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: BANNED_SET.into(),
        elem: vec![Expression::Named(NamedExpression::Elem(expr::Elem {
            val: Box::new(string(address.to_string())),
            timeout: Some(seconds),
            expires: None,
            comment: None,
            counter: None,
        }))]
        .into(),
    }));
    batch.to_nftables()
}

/// Serializes a document for `nft -j -f -`.
pub fn to_json(document: &Nftables<'_>) -> String {
    serde_json::to_string(document).expect("nftables documents serialize to JSON")
}

fn isolated_element(address: Ipv4Addr) -> Element<'static> {
    Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: ISOLATED_SET.into(),
        elem: vec![string(address.to_string())].into(),
    }
}

fn add_sets(batch: &mut Batch<'static>, plan: &NetworkPlan, isolated: &[Ipv4Addr]) {
    let address = || SetTypeValue::Single(SetType::Ipv4Addr);
    let endpoint = || SetTypeValue::Concatenated(vec![SetType::Ipv4Addr, SetType::InetProto, SetType::InetService].into());

    let mut isolated = isolated.to_vec();
    isolated.sort_unstable();
    isolated.dedup();
    let isolated = isolated.iter().map(|a| string(a.to_string())).collect();
    add_set(batch, ISOLATED_SET, address(), isolated);
    batch.add(NfListObject::Set(Box::new(schema::Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: BANNED_SET.into(),
        handle: None,
        set_type: address(),
        policy: None,
        flags: Some(HashSet::from([schema::SetFlag::Timeout])),
        elem: None,
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    })));

    // The plan's flows are sorted and unique, which keeps the JSON stable.
    let flows = plan
        .flows
        .iter()
        .map(|flow| concat(vec![
            string(flow.source.to_string()),
            string(flow.to.address.to_string()),
            proto(flow.to.proto),
            number(flow.to.port),
        ]))
        .collect();
    add_set(
        batch,
        "allowed",
        SetTypeValue::Concatenated(vec![SetType::Ipv4Addr, SetType::Ipv4Addr, SetType::InetProto, SetType::InetService].into()),
        flows,
    );

    let mut sources: Vec<Expression> = plan
        .services
        .iter()
        .map(|service| concat(vec![string(service.host_link.clone()), string(service.address.to_string())]))
        .collect();
    let service_links: Vec<Expression> = plan.services.iter().map(|service| string(service.host_link.clone())).collect();
    let mut guarded = service_links.clone();
    if let Some(remote) = &plan.remote {
        for (_, address) in &remote.peers {
            sources.push(concat(vec![string(REMOTE_INTERFACE), string(address.to_string())]));
        }
        guarded.push(string(REMOTE_INTERFACE));
    }
    add_set(batch, "sources", SetTypeValue::Concatenated(vec![SetType::Ifname, SetType::Ipv4Addr].into()), sources);
    add_set(batch, "guarded", SetTypeValue::Single(SetType::Ifname), guarded);
    add_set(batch, "service_links", SetTypeValue::Single(SetType::Ifname), service_links);

    for (name, egress) in [("egress_internet", Egress::Internet), ("egress_vpn", Egress::Vpn)] {
        let members = plan
            .services
            .iter()
            .filter(|service| service.egress == egress)
            .map(|service| string(service.address.to_string()))
            .collect();
        add_set(batch, name, address(), members);
    }

    let vpn_dns = plan
        .vpn
        .iter()
        .flat_map(|vpn| vpn.dns.iter())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|server| string(server.to_string()))
        .collect();
    add_set(batch, VPN_DNS_SET, address(), vpn_dns);

    let published = plan
        .published
        .iter()
        .map(|port| concat(vec![string(port.address.to_string()), proto(port.proto), number(port.port)]))
        .collect();
    add_set(batch, "published", endpoint(), published);

    let health = plan
        .health_checks
        .iter()
        .map(|check| concat(vec![string(check.address.to_string()), proto(check.proto), number(check.port)]))
        .collect();
    add_set(batch, "health", endpoint(), health);
}

fn add_set(batch: &mut Batch<'static>, name: &'static str, set_type: SetTypeValue<'static>, elements: Vec<Expression<'static>>) {
    batch.add(NfListObject::Set(Box::new(schema::Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        handle: None,
        set_type,
        policy: None,
        flags: None,
        elem: (!elements.is_empty()).then(|| elements.into()),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    })));
}

/// Statements of one rule and its comment.
type RuleSpec = (Vec<Statement<'static>>, &'static str);

struct Builder<'a> {
    plan: &'a NetworkPlan,
}

impl Builder<'_> {
    fn uplink(&self) -> Expression<'static> {
        string(self.plan.uplink.interface.clone())
    }

    /// Returns the first rules of every filter chain, which drop isolated
    /// addresses.
    fn isolation(&self) -> Vec<RuleSpec> {
        vec![
            (vec![matches(ip("saddr"), set_ref(ISOLATED_SET)), counter("drop_isolated"), drop_packet()], "isolated source"),
            (vec![matches(ip("daddr"), set_ref(ISOLATED_SET)), counter("drop_isolated"), drop_packet()], "isolated destination"),
        ]
    }

    /// Drops IPv6, except on loopback when `interface` names the key of the
    /// chain's interface.
    fn ipv6_off(&self, interface: Option<MetaKey>) -> RuleSpec {
        let mut statements = vec![matches(meta(MetaKey::Nfproto), string("ipv6"))];
        if let Some(key) = interface {
            statements.push(not_equal(meta(key), string("lo")));
        }
        statements.extend([counter("drop_ipv6"), drop_packet()]);
        (statements, "IPv6 is off")
    }

    fn conntrack(&self) -> Vec<RuleSpec> {
        vec![
            (vec![has_flags(ct("state"), string("invalid")), counter("drop_invalid"), drop_packet()], "invalid conntrack state"),
            (
                vec![
                    has_flags(ct("state"), Expression::List(vec![string("established"), string("related")])),
                    accept(),
                ],
                "replies and related packets",
            ),
        ]
    }

    fn prerouting(&self) -> Vec<RuleSpec> {
        let mut rules = self.isolation();
        // Before any accept, so that a ban cuts open connections too. Only
        // traffic from outside is dropped, so a service or the host itself
        // is never banned by an address it shares with a client.
        rules.push((
            vec![
                not_equal(meta(MetaKey::Iifname), string("lo")),
                not_equal(meta(MetaKey::Iifname), set_ref("service_links")),
                matches(ip("saddr"), set_ref(BANNED_SET)),
                counter("drop_banned"),
                drop_packet(),
            ],
            "banned client",
        ));
        rules.push((vec![matches(meta(MetaKey::Iifname), string("lo")), accept()], "loopback"));
        rules.push(self.ipv6_off(Some(MetaKey::Iifname)));
        rules.push((
            vec![matches(concat(vec![meta(MetaKey::Iifname), ip("saddr")]), set_ref("sources")), accept()],
            "source address planned for the input interface",
        ));
        rules.push((
            vec![matches(meta(MetaKey::Iifname), set_ref("guarded")), counter("drop_spoofed"), drop_packet()],
            "spoofed source address from a service or peer",
        ));
        let internal: Vec<Expression> = self.internal_subnets().into_iter().map(|(network, prefix)| prefix_expr(network, prefix)).collect();
        if !internal.is_empty() {
            rules.push((
                vec![matches(ip("saddr"), anonymous_set(internal)), counter("drop_martian"), drop_packet()],
                "internal source address from outside",
            ));
        }
        rules
    }

    fn internal_subnets(&self) -> Vec<(Ipv4Addr, u8)> {
        let mut subnets: Vec<(Ipv4Addr, u8)> = self.plan.segments.iter().map(|s| (s.subnet.network, s.subnet.prefix)).collect();
        if let Some(remote) = &self.plan.remote {
            subnets.push((remote.subnet.network, remote.subnet.prefix));
        }
        subnets.sort();
        subnets
    }

    fn input(&self) -> Vec<RuleSpec> {
        let mut rules = self.isolation();
        rules.push((vec![matches(meta(MetaKey::Iifname), string("lo")), accept()], "loopback"));
        rules.push(self.ipv6_off(Some(MetaKey::Iifname)));
        rules.extend(self.conntrack());
        if let Some(remote) = &self.plan.remote {
            let port = remote.device.listen_port.expect("wg-remote has a listen port");
            rules.push((
                vec![
                    matches(meta(MetaKey::Iifname), self.uplink()),
                    matches(meta(MetaKey::L4proto), string("udp")),
                    matches(th("dport"), number(port)),
                    accept(),
                ],
                "WireGuard remote access",
            ));
        }
        if let Some((endpoint, subnet)) = self.plan.metrics_endpoint() {
            rules.push((
                vec![
                    matches(ip("saddr"), prefix_expr(subnet.network, subnet.prefix)),
                    matches(ip("daddr"), string(endpoint.ip().to_string())),
                    matches(meta(MetaKey::L4proto), string("tcp")),
                    matches(th("dport"), number(endpoint.port())),
                    accept(),
                ],
                "metrics of ztms-init for the monitoring segment",
            ));
        }
        if self.plan.uplink.ipv4 == UplinkIpv4::Dhcp {
            rules.push((
                vec![
                    matches(meta(MetaKey::Iifname), self.uplink()),
                    matches(meta(MetaKey::L4proto), string("udp")),
                    matches(th("sport"), number(DHCP_SERVER_PORT)),
                    matches(th("dport"), number(DHCP_CLIENT_PORT)),
                    accept(),
                ],
                "DHCP replies",
            ));
        }
        rules.push((vec![counter("drop_input"), drop_packet()], "default drop"));
        rules
    }

    fn forward(&self) -> Vec<RuleSpec> {
        let mut rules = self.isolation();
        rules.push(self.ipv6_off(None));

        // The kill switch comes before the conntrack accept: a connection
        // that entered the tunnel must not continue by the uplink when the
        // tunnel disappears and the route falls back.
        rules.push((
            vec![
                matches(meta(MetaKey::Oifname), self.uplink()),
                matches(ip("saddr"), set_ref("egress_vpn")),
                counter("drop_vpn_leak"),
                drop_packet(),
            ],
            "kill switch: egress=vpn never leaves by the uplink",
        ));
        // The tunnel's routes may cover other resolvers, the uplink's
        // included. Those would see the service's queries, so DNS from an
        // egress=vpn service goes to the tunnel's DNS servers or nowhere.
        rules.push((
            vec![
                matches(ip("saddr"), set_ref("egress_vpn")),
                matches(meta(MetaKey::L4proto), anonymous_set(vec![string("tcp"), string("udp")])),
                matches(th("dport"), number(DNS_PORT)),
                not_equal(ip("daddr"), set_ref(VPN_DNS_SET)),
                counter("drop_vpn_leak"),
                drop_packet(),
            ],
            "DNS of egress=vpn only to the tunnel's DNS servers",
        ));
        rules.push((
            vec![
                matches(meta(MetaKey::Oifname), string(VPN_INTERFACE)),
                not_equal(ip("saddr"), set_ref("egress_vpn")),
                counter("drop_forward"),
                drop_packet(),
            ],
            "only egress=vpn services use the tunnel",
        ));
        // Clamping applies to SYN and SYN-ACK leaving by a tunnel, whose MTU
        // is below the veth's 1500: the route MTU of the output interface
        // bounds the MSS in both directions of the connection.
        for interface in [REMOTE_INTERFACE, VPN_INTERFACE] {
            rules.push((
                vec![
                    matches(meta(MetaKey::Oifname), string(interface)),
                    matches(meta(MetaKey::L4proto), string("tcp")),
                    Statement::Match(Match {
                        left: payload("tcp", "flags"),
                        right: string("syn"),
                        op: Operator::IN,
                    }),
                    Statement::Mangle(stmt::Mangle {
                        key: Expression::Named(NamedExpression::TcpOption(expr::TcpOption {
                            name: "maxseg".into(),
                            field: Some("size".into()),
                        })),
                        value: Expression::Named(NamedExpression::RT(expr::RT {
                            key: expr::RTKey::MTU,
                            family: None,
                        })),
                    }),
                ],
                "MSS clamping to the tunnel's MTU",
            ));
        }
        rules.extend(self.conntrack());

        rules.push((
            vec![
                matches(concat(vec![ip("saddr"), ip("daddr"), meta(MetaKey::L4proto), th("dport")]), set_ref("allowed")),
                accept(),
            ],
            "communication matrix",
        ));

        let limit = self.plan.new_connections_per_second;
        rules.push((
            vec![
                matches(meta(MetaKey::Iifname), self.uplink()),
                has_flags(ct("status"), string("dnat")),
                Statement::Meter(stmt::Meter {
                    name: "published_rate".into(),
                    key: ip("saddr"),
                    stmt: Box::new(Statement::Limit(stmt::Limit {
                        rate: limit,
                        rate_unit: None,
                        per: Some("second".into()),
                        burst: Some(limit.saturating_mul(RATE_BURST_FACTOR)),
                        burst_unit: None,
                        inv: Some(true),
                    })),
                }),
                counter("drop_rate_limited"),
                drop_packet(),
            ],
            "new connections per source to published ports",
        ));
        rules.push((
            vec![
                matches(meta(MetaKey::Iifname), self.uplink()),
                has_flags(ct("status"), string("dnat")),
                matches(concat(vec![ip("daddr"), meta(MetaKey::L4proto), th("dport")]), set_ref("published")),
                accept(),
            ],
            "published ports",
        ));

        rules.push((
            vec![
                matches(meta(MetaKey::Oifname), self.uplink()),
                matches(ip("saddr"), set_ref("egress_internet")),
                accept(),
            ],
            "egress=internet",
        ));
        if self.plan.vpn.is_some() {
            rules.push((
                vec![
                    matches(meta(MetaKey::Oifname), string(VPN_INTERFACE)),
                    matches(ip("saddr"), set_ref("egress_vpn")),
                    accept(),
                ],
                "egress=vpn through the tunnel",
            ));
        }
        rules.push((vec![counter("drop_forward"), drop_packet()], "default drop"));
        rules
    }

    fn output(&self) -> Vec<RuleSpec> {
        let mut rules = self.isolation();
        rules.push((vec![matches(meta(MetaKey::Oifname), string("lo")), accept()], "loopback"));
        rules.push(self.ipv6_off(Some(MetaKey::Oifname)));
        rules.extend(self.conntrack());
        rules.push((
            vec![
                matches(concat(vec![ip("daddr"), meta(MetaKey::L4proto), th("dport")]), set_ref("health")),
                accept(),
            ],
            "health checks of ztms-init",
        ));

        let uplink_udp = |port_field: &'static str, port: u16, comment: &'static str| -> RuleSpec {
            (
                vec![
                    matches(meta(MetaKey::Oifname), self.uplink()),
                    matches(meta(MetaKey::L4proto), string("udp")),
                    matches(th(port_field), number(port)),
                    accept(),
                ],
                comment,
            )
        };
        if self.plan.uplink.ipv4 == UplinkIpv4::Dhcp {
            rules.push(uplink_udp("dport", DHCP_SERVER_PORT, "DHCP requests"));
        }
        if let Some(remote) = &self.plan.remote {
            let port = remote.device.listen_port.expect("wg-remote has a listen port");
            rules.push(uplink_udp("sport", port, "WireGuard remote access"));
        }
        if let Some(vpn) = &self.plan.vpn {
            rules.push(uplink_udp("dport", vpn.endpoint_port, "WireGuard tunnel to the VPN provider"));
            // The host resolves the provider's endpoint name.
            rules.push((
                vec![
                    matches(meta(MetaKey::Oifname), self.uplink()),
                    matches(meta(MetaKey::L4proto), anonymous_set(vec![string("tcp"), string("udp")])),
                    matches(th("dport"), number(DNS_PORT)),
                    accept(),
                ],
                "DNS for the VPN endpoint",
            ));
        }
        // NOTE: the host itself reaches nothing else on the uplink: fetching
        // update bundles or NTP needs a rule here first.
        rules.push((vec![counter("drop_output"), drop_packet()], "default drop"));
        rules
    }

    fn dstnat(&self) -> Vec<RuleSpec> {
        let mut rules = Vec::new();
        for port in &self.plan.published {
            rules.push((
                vec![
                    matches(meta(MetaKey::Iifname), self.uplink()),
                    Statement::Match(Match {
                        left: Expression::Named(NamedExpression::Fib(expr::Fib {
                            result: expr::FibResult::Type,
                            flags: HashSet::from([expr::FibFlag::Daddr]),
                        })),
                        right: string("local"),
                        op: Operator::EQ,
                    }),
                    matches(meta(MetaKey::L4proto), proto(port.proto)),
                    matches(th("dport"), number(port.external_port)),
                    Statement::DNAT(Some(stmt::NAT {
                        addr: Some(string(port.address.to_string())),
                        family: Some(stmt::NATFamily::IP),
                        port: Some(number(port.port)),
                        flags: None,
                    })),
                ],
                "published port",
            ));
        }
        rules
    }

    fn srcnat(&self) -> Vec<RuleSpec> {
        vec![
            (
                vec![
                    matches(meta(MetaKey::Oifname), self.uplink()),
                    matches(ip("saddr"), set_ref("egress_internet")),
                    Statement::Masquerade(None),
                ],
                "egress=internet",
            ),
            (
                vec![
                    matches(meta(MetaKey::Oifname), string(VPN_INTERFACE)),
                    matches(ip("saddr"), set_ref("egress_vpn")),
                    Statement::Masquerade(None),
                ],
                "egress=vpn",
            ),
        ]
    }
}

fn string(text: impl Into<Cow<'static, str>>) -> Expression<'static> {
    Expression::String(text.into())
}

fn number(value: u16) -> Expression<'static> {
    Expression::Number(u32::from(value))
}

fn proto(proto: Proto) -> Expression<'static> {
    string(proto.to_string())
}

fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

fn anonymous_set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(items.into_iter().map(expr::SetItem::Element).collect()))
}

fn prefix_expr(network: Ipv4Addr, prefix: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(expr::Prefix {
        addr: Box::new(string(network.to_string())),
        len: u32::from(prefix),
    }))
}

fn set_ref(name: &str) -> Expression<'static> {
    string(format!("@{name}"))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: protocol.into(),
        field: field.into(),
    })))
}

fn ip(field: &'static str) -> Expression<'static> {
    payload("ip", field)
}

/// Returns a transport-header field such as a port, for TCP and UDP alike.
fn th(field: &'static str) -> Expression<'static> {
    payload("th", field)
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(expr::CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op: Operator::EQ })
}

/// Returns a bitmask match, as `ct state` and `ct status` take it.
fn has_flags(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op: Operator::IN })
}

fn not_equal(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op: Operator::NEQ })
}

fn counter(name: &'static str) -> Statement<'static> {
    Statement::Counter(stmt::Counter::Named(name.into()))
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop_packet() -> Statement<'static> {
    Statement::Drop(None)
}
