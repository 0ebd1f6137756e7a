//! Client configurations for remote-access peers, in the `wg-quick` format
//! that the WireGuard apps import from a file or a QR code.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::key;
use crate::config::Definition;
use crate::net::NetworkPlan;

/// Seconds between keepalive packets that a client sends, so the NAT of a
/// phone's mobile network keeps its mapping open.
pub const CLIENT_KEEPALIVE_SECS: u16 = 25;

/// Input of `ztms wg peer` besides the definition.
#[derive(Debug, Clone, Default)]
pub struct ClientRequest<'a> {
    /// Peer name from `[[wireguard.peer]]`.
    pub peer: &'a str,
    /// Public key of the appliance's `wg-remote`, as `ztms status` shows it.
    pub server_public_key: &'a str,
    /// Host that the client connects to; overrides `wireguard.endpoint`.
    pub endpoint: Option<&'a str>,
    /// The peer's private key; without it the configuration has a
    /// placeholder comment, because the definition holds only public keys.
    pub private_key: Option<&'a str>,
}

/// A client configuration that cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("the definition declares no [[wireguard.peer]]; add one with the device's public key")]
    NoRemoteAccess,
    #[error("peer {name:?} not found; the definition declares: {known}")]
    PeerNotFound { name: String, known: String },
    #[error("no endpoint for the client: set wireguard.endpoint in the definition or pass --endpoint HOST")]
    NoEndpoint,
    #[error("invalid endpoint: {0}")]
    InvalidEndpoint(String),
    #[error("invalid public key of the appliance: {0}; copy it from `ztms status`")]
    InvalidServerKey(key::KeyError),
    #[error("invalid private key of peer {peer:?}: {error}")]
    InvalidPrivateKey { peer: String, error: key::KeyError },
    #[error("the private key does not belong to peer {peer:?}: its public key is {actual}, the definition has {expected}; pass the key of that device or update its public_key")]
    KeyMismatch { peer: String, actual: String, expected: String },
    #[error("peer {0:?} may reach no service; add allow entries such as \"jellyfin:8096/tcp\" to it")]
    NothingAllowed(String),
}

/// Writes the client configuration of a remote-access peer. `AllowedIPs`
/// lists only the addresses of the services that the peer's `allow`
/// entries name, so the client routes nothing else into the tunnel.
pub fn render(definition: &Definition, plan: &NetworkPlan, request: &ClientRequest<'_>) -> Result<String, ClientError> {
    let remote = plan.remote.as_ref().ok_or(ClientError::NoRemoteAccess)?;
    let Some(address) = remote.peers.iter().find(|(name, _)| name == request.peer).map(|(_, address)| *address) else {
        let known: Vec<&str> = remote.peers.iter().map(|(name, _)| name.as_str()).collect();
        return Err(ClientError::PeerNotFound {
            name: request.peer.to_string(),
            known: known.join(", "),
        });
    };
    let expected = remote
        .device
        .peers
        .iter()
        .find(|peer| peer.name == request.peer)
        .map(|peer| peer.public_key.clone())
        .unwrap_or_default();

    let host = request
        .endpoint
        .or(definition.wireguard.endpoint.as_deref())
        .ok_or(ClientError::NoEndpoint)?;
    super::check_host(host).map_err(ClientError::InvalidEndpoint)?;
    let server_key = key::decode(request.server_public_key).map_err(ClientError::InvalidServerKey)?;

    let private_line = match request.private_key {
        Some(text) => {
            let private = key::decode(text).map_err(|error| ClientError::InvalidPrivateKey {
                peer: request.peer.to_string(),
                error,
            })?;
            let actual = key::encode(&key::public_key(&private));
            if actual != expected {
                return Err(ClientError::KeyMismatch {
                    peer: request.peer.to_string(),
                    actual,
                    expected,
                });
            }
            format!("PrivateKey = {}", key::encode(&private))
        }
        None => format!("# PrivateKey = the private key of this device, whose public key is {expected}"),
    };

    let targets: BTreeSet<Ipv4Addr> = plan
        .flows
        .iter()
        .filter(|flow| flow.source == address)
        .map(|flow| flow.to.address)
        .collect();
    if targets.is_empty() {
        return Err(ClientError::NothingAllowed(request.peer.to_string()));
    }
    let allowed: Vec<String> = targets.iter().map(|target| format!("{target}/32")).collect();
    let port = remote.device.listen_port.unwrap_or(definition.wireguard.listen_port);

    let mut text = String::new();
    let _ = writeln!(text, "# WireGuard client for peer {:?} of appliance {:?}", request.peer, definition.image.name.get_ref());
    let _ = writeln!(text, "[Interface]");
    let _ = writeln!(text, "{private_line}");
    let _ = writeln!(text, "Address = {address}/32");
    let _ = writeln!(text, "MTU = {}", remote.device.mtu);
    let _ = writeln!(text);
    let _ = writeln!(text, "[Peer]");
    let _ = writeln!(text, "PublicKey = {}", key::encode(&server_key));
    let _ = writeln!(text, "Endpoint = {host}:{port}");
    let _ = writeln!(text, "AllowedIPs = {}", allowed.join(", "));
    let _ = writeln!(text, "PersistentKeepalive = {CLIENT_KEEPALIVE_SECS}");
    Ok(text)
}

/// Renders `text` as a QR code of Unicode half blocks for a terminal with
/// a dark background, or returns why it cannot.
pub fn qr_code(text: &str) -> Result<String, String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|error| format!("encoding the QR code failed: {error}"))?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Private key of the test peer "laptop", whose public key is in the
    /// definition below.
    const LAPTOP_PRIVATE: [u8; 32] = [7; 32];

    fn definition() -> Definition {
        let laptop = key::encode(&key::public_key(&LAPTOP_PRIVATE));
        let text = format!(
            "[image]\nname = \"home\"\nversion = \"1\"\n\n\
             [wireguard]\nendpoint = \"home.example.net\"\n\n\
             [[wireguard.peer]]\nname = \"laptop\"\npublic_key = \"{laptop}\"\naddress = \"10.80.100.7\"\nallow = [\"web:8080/tcp\"]\n\n\
             [[wireguard.peer]]\nname = \"idle\"\npublic_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"\n\n\
             [[service]]\nname = \"web\"\nsegment = \"frontend\"\ncommand = [\"/bin/web\"]\nports = [{{ port = 8080 }}]\n\n\
             [[service]]\nname = \"db\"\nsegment = \"database\"\ncommand = [\"/bin/db\"]\nports = [{{ port = 5432 }}]\n"
        );
        crate::config::parse(Path::new("home.toml"), text).expect("valid definition").definition
    }

    fn server_key() -> String {
        key::encode(&key::public_key(&[9; 32]))
    }

    fn render_for(peer: &str, private_key: Option<&str>) -> Result<String, ClientError> {
        let definition = definition();
        let plan = NetworkPlan::from_definition(&definition).expect("plan");
        let server = server_key();
        let request = ClientRequest {
            peer,
            server_public_key: &server,
            endpoint: None,
            private_key,
        };
        render(&definition, &plan, &request)
    }

    #[test]
    fn client_routes_only_allowed_services() {
        let definition = definition();
        let plan = NetworkPlan::from_definition(&definition).unwrap();
        let web = plan.service("web").unwrap().address;
        let text = render_for("laptop", None).unwrap();
        assert!(text.contains(&format!("AllowedIPs = {web}/32\n")), "{text}");
        let db = plan.service("db").unwrap().address;
        assert!(!text.contains(&db.to_string()), "{text}");
    }

    #[test]
    fn client_uses_peer_address_and_endpoint() {
        let text = render_for("laptop", None).unwrap();
        assert!(text.contains("Address = 10.80.100.7/32\n"), "{text}");
        assert!(text.contains("Endpoint = home.example.net:51820\n"), "{text}");
        assert!(text.contains(&format!("PublicKey = {}\n", server_key())), "{text}");
        assert!(text.contains("MTU = 1420\n"), "{text}");
    }

    #[test]
    fn client_without_private_key_has_placeholder() {
        let text = render_for("laptop", None).unwrap();
        assert!(text.contains("# PrivateKey = "), "{text}");
        assert!(!text.lines().any(|line| line.starts_with("PrivateKey")), "{text}");
    }

    #[test]
    fn client_with_matching_private_key_includes_it() {
        let private = key::encode(&LAPTOP_PRIVATE);
        let text = render_for("laptop", Some(&private)).unwrap();
        assert!(text.contains(&format!("\nPrivateKey = {private}\n")), "{text}");
    }

    #[test]
    fn client_rejects_private_key_of_other_device() {
        let other = key::encode(&[3; 32]);
        let error = render_for("laptop", Some(&other)).unwrap_err();
        assert!(matches!(error, ClientError::KeyMismatch { .. }), "{error}");
    }

    #[test]
    fn client_of_unknown_peer_lists_known_ones() {
        let error = render_for("phone", None).unwrap_err().to_string();
        assert!(error.contains("\"phone\" not found"), "{error}");
        assert!(error.contains("idle, laptop"), "{error}");
    }

    #[test]
    fn client_of_peer_without_allow_is_rejected() {
        let error = render_for("idle", None).unwrap_err();
        assert_eq!(error, ClientError::NothingAllowed("idle".into()));
    }

    #[test]
    fn client_rejects_invalid_server_key() {
        let definition = definition();
        let plan = NetworkPlan::from_definition(&definition).unwrap();
        let request = ClientRequest { peer: "laptop", server_public_key: "abc", ..Default::default() };
        let error = render(&definition, &plan, &request).unwrap_err();
        assert!(matches!(error, ClientError::InvalidServerKey(_)), "{error}");
    }

    #[test]
    fn qr_code_renders_half_blocks() {
        let text = render_for("laptop", None).unwrap();
        let code = qr_code(&text).unwrap();
        assert!(code.lines().count() > 20, "{code}");
        assert!(code.contains('▀') || code.contains('▄'), "{code}");
    }
}
