//! Incident containment at run time. `isolate SERVICE` adds the service's
//! address to the ruleset's `isolated` set, whose packets the first rules of
//! every chain drop in both directions, open connections included.
//! `release SERVICE` removes it. Both requests come through the status API
//! and are logged.
//!
//! The main loop's reaper collects every exited child with `waitpid(-1)`,
//! so a request never waits for `nft`'s exit status: it reads `nft`'s
//! output to the end, then lists the set and reports what the kernel
//! holds. The isolation lasts until the next boot, which applies the
//! ruleset with an empty set.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::OnceLock;

use super::{read_output, spawn_with_input, NFT};
use crate::net::{nftables, NetworkPlan};
use crate::status::{IsolateReply, ISOLATE_REQUEST, RELEASE_REQUEST};

/// Every service's name and address, set once the ruleset is in place.
static SERVICES: OnceLock<Vec<(String, Ipv4Addr)>> = OnceLock::new();

/// Enables isolate requests for the services of `plan`.
pub fn enable(plan: &NetworkPlan) {
    let services = plan.services.iter().map(|service| (service.name.clone(), service.address)).collect();
    let _ = SERVICES.set(services);
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolateRequest {
    pub service: String,
    pub address: Ipv4Addr,
    /// True to isolate, false to release.
    pub isolate: bool,
}

/// Returns true when `line` is an isolate or release request, valid or not.
pub fn is_request(line: &str) -> bool {
    matches!(line.split_whitespace().next(), Some(ISOLATE_REQUEST | RELEASE_REQUEST))
}

/// Parses `isolate SERVICE` or `release SERVICE`.
pub fn parse(line: &str) -> Result<IsolateRequest, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [verb, service] = words.as_slice() else {
        return Err(format!("invalid request {:?}; write: {ISOLATE_REQUEST} SERVICE or {RELEASE_REQUEST} SERVICE", truncate(line)));
    };
    let Some(services) = SERVICES.get() else {
        return Err("the firewall is not in place, so there is nothing to isolate from".into());
    };
    let Some((_, address)) = services.iter().find(|(name, _)| name == service) else {
        let known: Vec<&str> = services.iter().map(|(name, _)| name.as_str()).collect();
        return Err(format!("service {service:?} not found; the network plan has: {}", known.join(", ")));
    };
    Ok(IsolateRequest {
        service: service.to_string(),
        address: *address,
        isolate: *verb == ISOLATE_REQUEST,
    })
}

/// Applies `request` and returns the reply line without its newline. Runs
/// `nft` twice, so call it off the main loop.
pub fn run(request: &IsolateRequest) -> String {
    let reply = match apply(request) {
        Ok(isolated) => {
            if isolated == request.isolate {
                let action = if isolated { "isolated from every network" } else { "released from isolation" };
                log::warn!("service {} ({}) {action} on request of the status API", request.service, request.address);
            } else {
                log::error!(
                    "service {} ({}): the isolated set does not match the request after nft ran",
                    request.service,
                    request.address
                );
            }
            serde_json::to_string(&IsolateReply {
                service: request.service.clone(),
                address: request.address,
                isolated,
            })
        }
        Err(error) => {
            let verb = if request.isolate { ISOLATE_REQUEST } else { RELEASE_REQUEST };
            log::error!("{verb} {}: {error}", request.service);
            serde_json::to_string(&crate::status::ErrorReply { error })
        }
    };
    reply.unwrap_or_else(|error| format!("{{\"error\": \"encoding the reply failed: {error}\"}}"))
}

/// Changes the set and returns whether the address is in it afterwards.
fn apply(request: &IsolateRequest) -> Result<bool, String> {
    let document = if request.isolate {
        nftables::isolate(request.address)
    } else {
        nftables::release(request.address)
    };
    let (_, stderr) = run_nft(&["-j", "-f", "-"], &nftables::to_json(&document))?;
    let (listing, list_errors) = run_nft(&["-j", "list", "set", "inet", nftables::TABLE, nftables::ISOLATED_SET], "")?;
    let members = parse_set_elements(&listing).map_err(|error| {
        format!("listing set {} failed: {error}; nft printed: {} {}", nftables::ISOLATED_SET, stderr.trim(), list_errors.trim())
    })?;
    Ok(members.contains(&request.address))
}

/// Runs `nft` with `input` and returns its standard output and error. It
/// does not wait for the exit status, which the main loop's reaper takes.
pub(super) fn run_nft(args: &[&str], input: &str) -> Result<(String, String), String> {
    run_unwaited(NFT, args, input)
}

/// Runs `program` with `input` and returns its standard output and error,
/// read until the program closes them. Like [`run_nft`], it leaves the
/// exit status to the main loop's reaper, so it is safe off the main loop.
pub(super) fn run_unwaited(program: &str, args: &[&str], input: &str) -> Result<(String, String), String> {
    let (mut child, _) = spawn_with_input(Command::new(program).args(args), input)?;
    Ok(read_output(&mut child))
}

/// Returns the addresses in the output of `nft -j list set`.
pub fn parse_set_elements(json: &str) -> Result<Vec<Ipv4Addr>, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|error| format!("invalid JSON: {error}"))?;
    let set = value["nftables"]
        .as_array()
        .and_then(|items| items.iter().find_map(|item| item.get("set")))
        .ok_or("no set in the output")?;
    let elements = match set.get("elem") {
        Some(serde_json::Value::Array(elements)) => elements.clone(),
        _ => Vec::new(),
    };
    elements
        .iter()
        .map(|element| {
            element
                .as_str()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| format!("unexpected set element {element}"))
        })
        .collect()
}

fn truncate(line: &str) -> String {
    line.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_listing_parses() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet", "name": "isolated", "table": "ztms", "type": "ipv4_addr", "handle": 3, "elem": ["10.80.1.7", "10.80.2.9"]}}]}"#;
        let members = parse_set_elements(json).unwrap();
        assert_eq!(members, [Ipv4Addr::new(10, 80, 1, 7), Ipv4Addr::new(10, 80, 2, 9)]);
    }

    #[test]
    fn empty_set_listing_parses() {
        let json = r#"{"nftables": [{"metainfo": {}}, {"set": {"family": "inet", "name": "isolated", "table": "ztms", "type": "ipv4_addr", "handle": 3}}]}"#;
        assert!(parse_set_elements(json).unwrap().is_empty());
    }

    #[test]
    fn isolate_request_is_recognised() {
        assert!(is_request("isolate web"));
        assert!(is_request("release web"));
        assert!(!is_request("status"));
        assert!(!is_request("isolated web"));
    }
}
