//! The secrets plan: which files under `/data/secrets` ztms-init must
//! ensure at boot, who owns each one, and which services read it.
//!
//! A secret is one file, `/data/secrets/<name>`, bound read-only into each
//! service that lists it at `/run/secrets/<name>`. Services that list the
//! same name share the file, so they must run as the same `user`: the file
//! then belongs to that user with mode 0400, and no other user can read it.
//! Services with different users are rejected rather than given a
//! group-readable file, because a shared group would also reach every
//! other file of that group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SECRETS_DIR;
use crate::config::Definition;

/// Mode of every secret file: read-only for its owner.
pub const SECRET_MODE: u32 = 0o400;

/// Maximum length of a secret name, the same as for service names.
const MAX_NAME_LEN: usize = 63;

/// One secret file that ztms-init ensures before services start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretPlan {
    /// Name listed in the services' `secrets`.
    pub name: String,
    /// File on the appliance: `/data/secrets/<name>`.
    pub path: PathBuf,
    /// Owner of the file: the user of every service that lists it.
    pub uid: u32,
    pub gid: u32,
    /// Permission bits of the file.
    pub mode: u32,
    /// Services that list the secret, in definition order.
    pub services: Vec<String>,
    /// Whether ztms-init prints the secret on the console when it generates it (definition `console_secrets`).
    #[serde(default)]
    pub show: bool,
}

/// A `secrets` entry that the plan cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    /// A name outside the allowed characters or length.
    #[error("service {service:?}: invalid secret name {name:?}; use 1 to 63 lowercase letters, digits and '-', starting with a letter, for example \"postgres-password\"")]
    InvalidName { service: String, name: String },
    /// The same name twice in one service.
    #[error("service {service:?} lists secret {name:?} twice; list it once")]
    Duplicate { service: String, name: String },
    /// A name whose file would be a directory that ztms already uses.
    #[error("service {service:?}: secret name {name:?} is used by {used_by}; choose another name")]
    Reserved { service: String, name: String, used_by: PathBuf },
    /// Two services that share a secret but run as different users.
    #[error("secret {name:?} is listed by service {first:?} (user {first_user}) and service {second:?} (user {second_user}); a secret file has one owner, so give both services the same user or give each its own secret")]
    OwnerMismatch {
        name: String,
        first: String,
        first_user: String,
        second: String,
        second_user: String,
    },
    /// A `user` that is not `UID:GID`.
    #[error("service {service:?}: invalid user {user:?}; use UID:GID, for example \"1000:1000\"")]
    InvalidUser { service: String, user: String },
    /// A `console_secrets` entry that no service lists.
    #[error("console_secrets lists {name:?}, which no service lists in its secrets; add it to the secrets of the service that uses it, or remove it from console_secrets")]
    UnknownConsoleSecret { name: String },
}

/// Checks a secret name: 1 to 63 lowercase letters, digits and `-`,
/// starting with a letter, so that it is one plain file name.
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Plans the secrets of every service, sorted by name.
pub fn plan_secrets(definition: &Definition) -> Result<Vec<SecretPlan>, SecretsError> {
    let reserved = reserved_names(definition);
    let mut planned: BTreeMap<String, (SecretPlan, String)> = BTreeMap::new();

    for service in &definition.services {
        let service_name = service.name.get_ref();
        let (uid, gid) = parse_user(service_name, &service.user)?;

        for (index, name) in service.secrets.iter().enumerate() {
            if !valid_secret_name(name) {
                return Err(SecretsError::InvalidName {
                    service: service_name.clone(),
                    name: name.clone(),
                });
            }
            if service.secrets[..index].contains(name) {
                return Err(SecretsError::Duplicate {
                    service: service_name.clone(),
                    name: name.clone(),
                });
            }
            if let Some(used_by) = reserved.get(name.as_str()) {
                return Err(SecretsError::Reserved {
                    service: service_name.clone(),
                    name: name.clone(),
                    used_by: used_by.clone(),
                });
            }

            match planned.get_mut(name) {
                Some((secret, first_user)) => {
                    if (secret.uid, secret.gid) != (uid, gid) {
                        return Err(SecretsError::OwnerMismatch {
                            name: name.clone(),
                            first: secret.services[0].clone(),
                            first_user: first_user.clone(),
                            second: service_name.clone(),
                            second_user: service.user.clone(),
                        });
                    }
                    secret.services.push(service_name.clone());
                }
                None => {
                    let secret = SecretPlan {
                        name: name.clone(),
                        path: secret_path(name),
                        uid,
                        gid,
                        mode: SECRET_MODE,
                        services: vec![service_name.clone()],
                        show: definition.console_secrets.contains(name),
                    };
                    planned.insert(name.clone(), (secret, service.user.clone()));
                }
            }
        }
    }

    if let Some(name) = definition.console_secrets.iter().find(|name| !planned.contains_key(*name)) {
        return Err(SecretsError::UnknownConsoleSecret { name: name.clone() });
    }

    Ok(planned.into_values().map(|(secret, _)| secret).collect())
}

/// Returns the file of secret `name` on the appliance.
pub fn secret_path(name: &str) -> PathBuf {
    Path::new(SECRETS_DIR).join(name)
}

/// Returns the names under `/data/secrets` that other files of the
/// appliance use (the WireGuard key directories), with the path that uses
/// each one.
fn reserved_names(definition: &Definition) -> BTreeMap<String, PathBuf> {
    let mut key_files = vec![definition.wireguard.private_key_file.clone()];
    if let Some(vpn) = &definition.vpn {
        key_files.push(vpn.private_key_file.clone());
    }

    let mut reserved = BTreeMap::new();
    for key_file in key_files {
        let Ok(inside) = key_file.strip_prefix(SECRETS_DIR) else { continue };
        if let Some(first) = inside.components().next() {
            let name = first.as_os_str().to_string_lossy().into_owned();
            reserved.insert(name, key_file.clone());
        }
    }
    reserved
}

fn parse_user(service: &str, text: &str) -> Result<(u32, u32), SecretsError> {
    let invalid = || SecretsError::InvalidUser {
        service: service.into(),
        user: text.into(),
    };
    let (uid, gid) = text.split_once(':').ok_or_else(invalid)?;
    Ok((uid.parse().map_err(|_| invalid())?, gid.parse().map_err(|_| invalid())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(services: &str) -> Definition {
        let text = format!("[image]\nname = \"test\"\nversion = \"1\"\n{services}");
        toml::from_str(&text).expect("test definition parses")
    }

    fn service(name: &str, extra: &str) -> String {
        format!("\n[[service]]\nname = \"{name}\"\nsegment = \"backend\"\ncommand = [\"/bin/app\"]\n{extra}\n")
    }

    #[test]
    fn plan_shares_secret_between_services() {
        let text = service("postgres", "secrets = [\"postgres-password\"]")
            + &service("postgres-exporter", "secrets = [\"postgres-password\"]");
        let plan = plan_secrets(&definition(&text)).unwrap();

        assert_eq!(plan.len(), 1);
        let secret = &plan[0];
        assert_eq!(secret.name, "postgres-password");
        assert_eq!(secret.path, Path::new("/data/secrets/postgres-password"));
        assert_eq!(secret.services, ["postgres", "postgres-exporter"]);
        assert_eq!((secret.uid, secret.gid), (1000, 1000));
        assert_eq!(secret.mode, 0o400);
    }

    #[test]
    fn plan_owner_is_service_user() {
        let text = service("db", "user = \"999:998\"\nsecrets = [\"db-password\", \"api-key\"]");
        let plan = plan_secrets(&definition(&text)).unwrap();

        let names: Vec<&str> = plan.iter().map(|secret| secret.name.as_str()).collect();
        assert_eq!(names, ["api-key", "db-password"]);
        assert!(plan.iter().all(|secret| (secret.uid, secret.gid) == (999, 998)));
    }

    #[test]
    fn console_secret_is_marked_to_show() {
        let mut definition = definition(&service("proxy", "secrets = [\"web-password\", \"api-key\"]"));
        definition.console_secrets = vec!["web-password".into()];
        let plan = plan_secrets(&definition).unwrap();

        let shown: Vec<&str> = plan.iter().filter(|secret| secret.show).map(|secret| secret.name.as_str()).collect();
        assert_eq!(shown, ["web-password"]);
    }

    #[test]
    fn console_secret_without_service_is_rejected() {
        let mut definition = definition(&service("proxy", "secrets = [\"web-password\"]"));
        definition.console_secrets = vec!["web-pasword".into()];
        let error = plan_secrets(&definition).unwrap_err();

        assert_eq!(error, SecretsError::UnknownConsoleSecret { name: "web-pasword".into() });
        assert!(error.to_string().contains("remove it from console_secrets"), "{error}");
    }

    #[test]
    fn plan_empty_without_secrets() {
        let plan = plan_secrets(&definition(&service("web", ""))).unwrap();
        assert!(plan.is_empty());
    }

    #[test]
    fn plan_rejects_different_users() {
        let text = service("postgres", "user = \"999:999\"\nsecrets = [\"postgres-password\"]")
            + &service("exporter", "secrets = [\"postgres-password\"]");
        let error = plan_secrets(&definition(&text)).unwrap_err();

        assert!(matches!(error, SecretsError::OwnerMismatch { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("\"postgres\" (user 999:999)"), "{message}");
        assert!(message.contains("\"exporter\" (user 1000:1000)"), "{message}");
    }

    #[test]
    fn plan_rejects_invalid_names() {
        for name in ["", "Upper", "with_underscore", "../etc", "a/b", ".hidden", "-dash", "9lives"] {
            let text = service("app", &format!("secrets = [{name:?}]"));
            let error = plan_secrets(&definition(&text)).unwrap_err();
            assert!(matches!(error, SecretsError::InvalidName { .. }), "{name:?} gave {error}");
        }
    }

    #[test]
    fn plan_rejects_duplicate_in_service() {
        let text = service("app", "secrets = [\"token\", \"token\"]");
        let error = plan_secrets(&definition(&text)).unwrap_err();
        assert!(matches!(error, SecretsError::Duplicate { .. }), "{error}");
    }

    #[test]
    fn plan_rejects_wireguard_directory() {
        let text = service("app", "secrets = [\"wireguard\"]");
        let error = plan_secrets(&definition(&text)).unwrap_err();
        assert!(matches!(error, SecretsError::Reserved { .. }), "{error}");
        assert!(error.to_string().contains("/data/secrets/wireguard/remote.key"), "{error}");
    }

    #[test]
    fn secret_name_accepts_letters_digits_dash() {
        assert!(valid_secret_name("postgres-password"));
        assert!(valid_secret_name("api-key-2"));
        assert!(!valid_secret_name(&"a".repeat(64)));
    }
}
