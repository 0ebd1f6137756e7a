//! A PostgreSQL login and one query for the test probe's `postgres`
//! requests: protocol 3.0 over an open TCP stream, authenticated with
//! SCRAM-SHA-256 (RFC 5802 with the SHA-256 of RFC 7677), the method that
//! the media appliance's `pg_hba.conf` sets. It holds only what one login
//! and one simple query need: no TLS, no channel binding, no extended
//! query protocol.

use std::io::{Read, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Protocol version 3.0, as the startup message carries it.
const PROTOCOL_VERSION: i32 = 196_608;
/// Largest server message read, so that a peer that is no PostgreSQL
/// server cannot make the probe allocate much.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// `AuthenticationRequest` codes of the protocol.
const AUTH_OK: i32 = 0;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;
const MECHANISM: &str = "SCRAM-SHA-256";

/// A failed login or query.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("reading or writing the connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// An `ErrorResponse`, with its message field.
    #[error("the server sent an error: {0}")]
    Server(String),
    #[error("invalid reply from the server: {0}")]
    Protocol(String),
}

/// Logs in as `user` to `database` with `password`, runs `query` and
/// returns the first value of its first row (`None` for NULL or no row).
/// `client_nonce` must be printable ASCII without commas.
pub fn login_and_query<S: Read + Write>(
    stream: &mut S,
    user: &str,
    database: &str,
    password: &str,
    query: &str,
    client_nonce: &str,
) -> Result<Option<String>, LoginError> {
    let mut startup = Vec::new();
    startup.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    for text in ["user", user, "database", database] {
        startup.extend_from_slice(text.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    stream.write_all(&((startup.len() + 4) as i32).to_be_bytes())?;
    stream.write_all(&startup)?;

    // PostgreSQL takes the user from the startup message and ignores the
    // SCRAM user name, so it stays empty as libpq leaves it.
    let client_first_bare = format!("n=,r={client_nonce}");
    let mut server_signature = None;
    loop {
        let (kind, body) = read_message(stream)?;
        match kind {
            b'R' => {
                let code = read_i32(&body, 0)?;
                match code {
                    AUTH_OK => break,
                    AUTH_SASL => {
                        let offered: Vec<&[u8]> = body[4..].split(|byte| *byte == 0).filter(|name| !name.is_empty()).collect();
                        if !offered.contains(&MECHANISM.as_bytes()) {
                            return Err(LoginError::Protocol(format!("the server does not offer {MECHANISM}")));
                        }
                        let client_first = format!("n,,{client_first_bare}");
                        let mut payload = Vec::new();
                        payload.extend_from_slice(MECHANISM.as_bytes());
                        payload.push(0);
                        payload.extend_from_slice(&(client_first.len() as i32).to_be_bytes());
                        payload.extend_from_slice(client_first.as_bytes());
                        write_message(stream, b'p', &payload)?;
                    }
                    AUTH_SASL_CONTINUE => {
                        let server_first = String::from_utf8_lossy(&body[4..]).into_owned();
                        let (client_final, signature) = client_final(password, &client_first_bare, &server_first, client_nonce)?;
                        server_signature = Some(signature);
                        write_message(stream, b'p', client_final.as_bytes())?;
                    }
                    AUTH_SASL_FINAL => {
                        let server_final = String::from_utf8_lossy(&body[4..]).into_owned();
                        let Some(expected) = server_signature else {
                            return Err(LoginError::Protocol("SASL final message before the SASL exchange".into()));
                        };
                        if server_final.strip_prefix("v=") != Some(STANDARD.encode(expected).as_str()) {
                            return Err(LoginError::Protocol(format!("server signature {server_final:?} does not match")));
                        }
                    }
                    _ => {
                        return Err(LoginError::Protocol(format!(
                            "authentication request {code} is not supported; the server must ask for scram-sha-256"
                        )))
                    }
                }
            }
            b'E' => return Err(LoginError::Server(error_message(&body))),
            _ => return Err(LoginError::Protocol(format!("message {:?} during authentication", kind as char))),
        }
    }
    if server_signature.is_none() {
        return Err(LoginError::Protocol("the server accepted the login without a password".into()));
    }

    wait_until_ready(stream)?;
    let mut text = query.as_bytes().to_vec();
    text.push(0);
    write_message(stream, b'Q', &text)?;
    let mut first_value: Option<Option<String>> = None;
    loop {
        let (kind, body) = read_message(stream)?;
        match kind {
            b'D' if first_value.is_none() => first_value = Some(first_column(&body)?),
            b'E' => return Err(LoginError::Server(error_message(&body))),
            b'Z' => break,
            _ => {}
        }
    }
    write_message(stream, b'X', &[])?;
    Ok(first_value.flatten())
}

/// Skips the parameter statuses and the key data that follow a login
/// until `ReadyForQuery`.
fn wait_until_ready<S: Read>(stream: &mut S) -> Result<(), LoginError> {
    loop {
        let (kind, body) = read_message(stream)?;
        match kind {
            b'Z' => return Ok(()),
            b'E' => return Err(LoginError::Server(error_message(&body))),
            _ => {}
        }
    }
}

/// Returns the client's final SCRAM message and the server signature that
/// the server's final message must carry, from the server's first message.
fn client_final(password: &str, client_first_bare: &str, server_first: &str, client_nonce: &str) -> Result<(String, [u8; 32]), LoginError> {
    let attribute = |name: &str| {
        server_first
            .split(',')
            .find_map(|field| field.strip_prefix(name))
            .ok_or_else(|| LoginError::Protocol(format!("server-first message {server_first:?} has no {name}")))
    };
    let nonce = attribute("r=")?;
    if !nonce.starts_with(client_nonce) || nonce.len() == client_nonce.len() {
        return Err(LoginError::Protocol(format!("server nonce {nonce:?} does not extend the client's")));
    }
    let salt = STANDARD
        .decode(attribute("s=")?)
        .map_err(|error| LoginError::Protocol(format!("invalid salt: {error}")))?;
    let iterations: u32 = attribute("i=")?
        .parse()
        .map_err(|_| LoginError::Protocol(format!("invalid iteration count in {server_first:?}")))?;

    // NOTE: SASLprep is left out, which is exact for ASCII passwords such
    // as the base64 secrets that ztms-init generates.
    let salted = salted_password(password.as_bytes(), &salt, iterations);
    let client_key = hmac_sha256(&salted, b"Client Key")?;
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    // "biws" is base64 of "n,,": no channel binding, no authorization id.
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let client_signature = hmac_sha256(&stored_key, auth_message.as_bytes())?;
    let proof: Vec<u8> = client_key.iter().zip(client_signature).map(|(key, signature)| key ^ signature).collect();
    let server_key = hmac_sha256(&salted, b"Server Key")?;
    let server_signature = hmac_sha256(&server_key, auth_message.as_bytes())?;
    Ok((format!("{without_proof},p={}", STANDARD.encode(proof)), server_signature))
}

/// Returns the `Hi` function of RFC 5802: PBKDF2 with HMAC-SHA-256 and
/// one output block.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations)
}

/// Returns HMAC-SHA-256 (RFC 2104) of `message` under `key`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Result<[u8; 32], LoginError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|error| LoginError::Protocol(format!("HMAC key rejected: {error}")))?;
    mac.update(message);
    Ok(mac.finalize().into_bytes().into())
}

fn write_message<S: Write>(stream: &mut S, kind: u8, body: &[u8]) -> Result<(), LoginError> {
    let mut message = vec![kind];
    message.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    message.extend_from_slice(body);
    stream.write_all(&message)?;
    Ok(())
}

/// Reads one server message: its type byte and its body.
fn read_message<S: Read>(stream: &mut S) -> Result<(u8, Vec<u8>), LoginError> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header)?;
    let length = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let body_length = usize::try_from(length - 4)
        .ok()
        .filter(|length| *length <= MAX_MESSAGE_BYTES)
        .ok_or_else(|| LoginError::Protocol(format!("message {:?} has invalid length {length}", header[0] as char)))?;
    let mut body = vec![0u8; body_length];
    stream.read_exact(&mut body)?;
    Ok((header[0], body))
}

fn read_i32(body: &[u8], offset: usize) -> Result<i32, LoginError> {
    body.get(offset..offset + 4)
        .map(|bytes| i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        .ok_or_else(|| LoginError::Protocol("message too short".into()))
}

/// Returns the first column of a `DataRow`, `None` for NULL.
fn first_column(body: &[u8]) -> Result<Option<String>, LoginError> {
    let columns = body.get(..2).map(|bytes| i16::from_be_bytes([bytes[0], bytes[1]])).unwrap_or(0);
    if columns < 1 {
        return Ok(None);
    }
    let length = read_i32(body, 2)?;
    if length < 0 {
        return Ok(None);
    }
    let value = body
        .get(6..6 + length as usize)
        .ok_or_else(|| LoginError::Protocol("data row shorter than its column".into()))?;
    Ok(Some(String::from_utf8_lossy(value).into_owned()))
}

/// Returns the `M` (message) field of an `ErrorResponse`, with its
/// `C` (SQLSTATE) code.
fn error_message(body: &[u8]) -> String {
    let mut message = String::new();
    let mut code = String::new();
    for field in body.split(|byte| *byte == 0).filter(|field| !field.is_empty()) {
        let text = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'M' => message = text,
            b'C' => code = text,
            _ => {}
        }
    }
    format!("{message} (SQLSTATE {code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_1() {
        let mac = hmac_sha256(&[0x0b; 20], b"Hi There").unwrap();
        assert_eq!(hex::encode(mac), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    }

    /// The SCRAM-SHA-256 exchange of RFC 7677, section 3.
    #[test]
    fn scram_matches_rfc_7677_example() {
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (client_final, server_signature) =
            client_final("pencil", "n=user,r=rOprNGfwEbeRWgbNEkqO", server_first, "rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(STANDARD.encode(server_signature), "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn scram_rejects_foreign_server_nonce() {
        let server_first = "r=someone-else,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let error = client_final("pencil", "n=,r=mine", server_first, "mine").unwrap_err();
        assert!(error.to_string().contains("does not extend"), "{error}");
    }

    #[test]
    fn data_row_first_column_and_null() {
        let mut row = 2i16.to_be_bytes().to_vec();
        row.extend_from_slice(&9i32.to_be_bytes());
        row.extend_from_slice(b"10.80.4.4");
        row.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(first_column(&row).unwrap(), Some("10.80.4.4".into()));

        let mut null = 1i16.to_be_bytes().to_vec();
        null.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(first_column(&null).unwrap(), None);
    }

    #[test]
    fn error_response_shows_message_and_code() {
        let body = b"SFATAL\0C28P01\0Mpassword authentication failed for user \"postgres\"\0\0";
        assert_eq!(error_message(body), "password authentication failed for user \"postgres\" (SQLSTATE 28P01)");
    }
}
