//! The appliance plan: what stage 2 runs, written by `ztms build` to
//! `/etc/ztms/appliance.json` and read by ztms-init at boot.
//!
//! The builder turns the definition into this plan with [`from_definition`];
//! ztms-init checks it again with [`AppliancePlan::validate`] because it reads
//! it from a file.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ban::BanSettings;
use super::order::{self, OrderError};
use crate::config::{Definition, Exception, Health, KeyFile, Unlock};
use crate::runtime::{plan_secrets, secret_path, valid_secret_name, SecretPlan, SecretsError};

/// Path of the plan in the root filesystem.
pub const PLAN_PATH: &str = "/etc/ztms/appliance.json";

/// Seconds from the start of ztms-init until every service must be healthy
/// for the boot to be blessed. TCG emulation boots slowly, so the default
/// leaves room for it.
pub const DEFAULT_READY_TIMEOUT_SECS: u64 = 300;

/// Everything stage 2 needs to bring up the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliancePlan {
    pub name: String,
    pub version: String,
    pub hostname: String,
    /// Serve the status API on the `org.ztms.status` virtio-serial port too.
    pub status_serial: bool,
    /// Seconds from the start of ztms-init until every service must be
    /// healthy for the boot to be blessed.
    pub ready_timeout_secs: u64,
    /// Services in start order: each comes after its dependencies.
    pub services: Vec<ServicePlan>,
    /// Unlock method and layout of the data partition.
    #[serde(default)]
    pub storage: StoragePlan,
    /// The service whose access log bans clients, and the limits, or None
    /// when banning is off.
    #[serde(default)]
    pub ban: Option<BanSettings>,
    /// Secret files that the secrets phase ensures in `/data/secrets`.
    #[serde(default)]
    pub secrets: Vec<SecretPlan>,
}

/// The storage phase's settings, from the definition's `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoragePlan {
    pub unlock: Unlock,
    /// Format the data partition even when it contains data.
    pub wipe: bool,
    pub key_file: Option<KeyFile>,
    /// Owner of the directories of the data layout.
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// Services that get a `config/<service>` directory.
    pub config_dirs: Vec<String>,
    /// MiB written and read to measure throughput at provisioning; 0: off.
    #[serde(default)]
    pub benchmark_mib: u32,
}

impl Default for StoragePlan {
    fn default() -> Self {
        Self {
            unlock: Unlock::Tpm2,
            wipe: false,
            key_file: None,
            owner_uid: DATA_OWNER,
            owner_gid: DATA_OWNER,
            config_dirs: Vec::new(),
            benchmark_mib: 0,
        }
    }
}

/// User and group that own `/data`'s layout, as in linuxserver.io images.
pub const DATA_OWNER: u32 = 1000;

/// One supervised service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePlan {
    pub name: String,
    /// Program and arguments; the program is an absolute path.
    pub command: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    /// Services that must be healthy before this one starts.
    pub depends_on: Vec<String>,
    pub health: HealthPlan,
    /// Address the health checks connect to.
    pub address: Ipv4Addr,
    /// The definition's exceptions to the default container policy, with
    /// their reasons, for the `audit` request of the status API.
    #[serde(default)]
    pub exceptions: Vec<Exception>,
}

/// How the supervisor decides that a service is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum HealthPlan {
    /// An HTTP GET that returns a 2xx or 3xx status within the timeout.
    Http { port: u16, path: String, timeout_ms: u64 },
    /// A TCP connection accepted within the timeout.
    Tcp { port: u16, timeout_ms: u64 },
    /// A command that exits 0 within the timeout, run as the service's user.
    Command { command: Vec<String>, timeout_ms: u64 },
    /// No check: the service is healthy while its process runs.
    None,
}

/// A definition or plan file that does not give a runnable plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The plan file could not be read.
    #[error("cannot read appliance plan {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The plan file is not valid JSON of the plan's shape.
    #[error("invalid appliance plan {path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    /// A service's `user` is not `UID:GID`.
    #[error("service {service:?}: invalid user {user:?}; use UID:GID, for example \"1000:1000\"")]
    InvalidUser { service: String, user: String },
    /// A service or health check has no program to run.
    #[error("service {service:?}: the {what} is empty; give the program and its arguments")]
    EmptyCommand { service: String, what: &'static str },
    /// A program path that is not absolute, so it would depend on PATH.
    #[error("service {service:?}: program {program:?} is not an absolute path; write it as /usr/bin/...")]
    RelativeProgram { service: String, program: String },
    /// A health check with a zero timeout or port.
    #[error("service {service:?}: invalid health check: {reason}")]
    InvalidHealth { service: String, reason: String },
    /// The services are not listed with dependencies first.
    #[error("services are not in start order; list them as: {0}")]
    NotInStartOrder(String),
    /// The dependency graph has no start order.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// A service's `secrets` that cannot be planned.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// A secret of the plan file outside `/data/secrets`.
    #[error("secret {name:?} has path {path}; a plan edited by hand must keep each secret at /data/secrets/<name>")]
    SecretPath { name: String, path: PathBuf },
}

impl AppliancePlan {
    /// Reads and validates the plan file at `path`.
    pub fn load(path: &Path) -> Result<Self, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let plan: AppliancePlan = serde_json::from_str(&text).map_err(|source| PlanError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        plan.validate()?;
        Ok(plan)
    }

    /// Checks that every command is runnable and that the services are
    /// listed in an order where dependencies come first.
    pub fn validate(&self) -> Result<(), PlanError> {
        for service in &self.services {
            check_command(&service.name, &service.command, "command")?;
            match &service.health {
                HealthPlan::Command { command, timeout_ms } => {
                    check_command(&service.name, command, "health check command")?;
                    check_timeout(&service.name, *timeout_ms)?;
                }
                HealthPlan::Http { port, timeout_ms, .. } | HealthPlan::Tcp { port, timeout_ms } => {
                    check_timeout(&service.name, *timeout_ms)?;
                    if *port == 0 {
                        return Err(PlanError::InvalidHealth {
                            service: service.name.clone(),
                            reason: "port 0 cannot be connected to".into(),
                        });
                    }
                }
                HealthPlan::None => {}
            }
        }

        for secret in &self.secrets {
            if !valid_secret_name(&secret.name) || secret.path != secret_path(&secret.name) {
                return Err(PlanError::SecretPath {
                    name: secret.name.clone(),
                    path: secret.path.clone(),
                });
            }
        }

        let order = order::start_order(&self.graph())?;
        let in_order = order.iter().enumerate().all(|(position, &index)| position == index);
        if !in_order {
            // The builder writes services in start order. A plan edited by
            // hand that breaks it would start a service before its
            // dependencies.
            let names: Vec<&str> = order.iter().map(|&i| self.services[i].name.as_str()).collect();
            return Err(PlanError::NotInStartOrder(names.join(", ")));
        }
        Ok(())
    }

    /// Returns (name, dependencies) of each service, for [`order::start_order`].
    pub fn graph(&self) -> Vec<(&str, &[String])> {
        self.services
            .iter()
            .map(|service| (service.name.as_str(), service.depends_on.as_slice()))
            .collect()
    }
}

fn check_command(service: &str, command: &[String], what: &'static str) -> Result<(), PlanError> {
    let Some(program) = command.first() else {
        return Err(PlanError::EmptyCommand {
            service: service.to_string(),
            what,
        });
    };
    if !program.starts_with('/') {
        return Err(PlanError::RelativeProgram {
            service: service.to_string(),
            program: program.clone(),
        });
    }
    Ok(())
}

fn check_timeout(service: &str, timeout_ms: u64) -> Result<(), PlanError> {
    if timeout_ms == 0 {
        return Err(PlanError::InvalidHealth {
            service: service.to_string(),
            reason: "timeout_ms is 0; give the time the check may take, for example 2000".into(),
        });
    }
    Ok(())
}

/// Parses a service's `user` setting, `UID:GID`.
pub fn parse_user(service: &str, text: &str) -> Result<(u32, u32), PlanError> {
    let invalid = || PlanError::InvalidUser {
        service: service.to_string(),
        user: text.to_string(),
    };
    let (uid, gid) = text.split_once(':').ok_or_else(invalid)?;
    let uid = uid.parse().map_err(|_| invalid())?;
    let gid = gid.parse().map_err(|_| invalid())?;
    Ok((uid, gid))
}

/// Builds the plan that ztms-init runs from an appliance definition.
pub fn from_definition(definition: &Definition) -> Result<AppliancePlan, PlanError> {
    let name = definition.image.name.get_ref().clone();
    let hostname = definition.base.hostname.clone().unwrap_or_else(|| name.clone());

    let mut services = Vec::with_capacity(definition.services.len());
    for service in &definition.services {
        let service_name = service.name.get_ref().clone();
        let (uid, gid) = parse_user(&service_name, &service.user)?;
        let health = match &service.health {
            None => HealthPlan::None,
            Some(Health::Http { port, path, timeout_ms }) => HealthPlan::Http {
                port: *port,
                path: path.clone(),
                timeout_ms: *timeout_ms,
            },
            Some(Health::Tcp { port, timeout_ms }) => HealthPlan::Tcp {
                port: *port,
                timeout_ms: *timeout_ms,
            },
            Some(Health::Command { command, timeout_ms }) => HealthPlan::Command {
                command: command.clone(),
                timeout_ms: *timeout_ms,
            },
        };
        services.push(ServicePlan {
            name: service_name,
            command: service.command.clone(),
            uid,
            gid,
            depends_on: service.depends_on.clone(),
            health,
            // NOTE: services share the host network namespace until the
            // network phase gives each its own address, so checks go to
            // loopback.
            address: Ipv4Addr::LOCALHOST,
            exceptions: service.exceptions.clone(),
        });
    }

    let secrets = plan_secrets(definition)?;
    let plan = AppliancePlan {
        name,
        version: definition.image.version.clone(),
        hostname,
        status_serial: definition.debug.status_serial,
        ready_timeout_secs: definition.update.ready_timeout_secs.unwrap_or(DEFAULT_READY_TIMEOUT_SECS),
        storage: StoragePlan {
            unlock: definition.storage.unlock,
            wipe: definition.storage.wipe,
            key_file: definition.storage.key_file.clone(),
            config_dirs: services.iter().map(|service| service.name.clone()).collect(),
            benchmark_mib: definition.debug.storage_benchmark_mib,
            ..StoragePlan::default()
        },
        services,
        ban: BanSettings::from_definition(&definition.ban),
        secrets,
    };

    let order = order::start_order(&plan.graph())?;
    let mut slots: Vec<Option<ServicePlan>> = plan.services.into_iter().map(Some).collect();
    let services = order.iter().filter_map(|&index| slots[index].take()).collect();
    let plan = AppliancePlan { services, ..plan };
    plan.validate()?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(text: &str) -> Definition {
        toml::from_str(text).unwrap()
    }

    const TWO_SERVICES: &str = r#"
        [image]
        name = "media"
        version = "1.2.0"

        [[service]]
        name = "proxy"
        segment = "frontend"
        command = ["/usr/sbin/proxy", "-c", "/etc/proxy.conf"]
        depends_on = ["web"]
        health = { kind = "tcp", port = 443 }

        [[service]]
        name = "web"
        segment = "backend"
        command = ["/usr/bin/web"]
        user = "1001:1002"
        health = { kind = "http", port = 8080, path = "/healthz", timeout_ms = 500 }
    "#;

    #[test]
    fn plan_orders_dependencies_first() {
        let plan = from_definition(&definition(TWO_SERVICES)).unwrap();
        let names: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "proxy"]);
    }

    #[test]
    fn plan_copies_user_and_health() {
        let plan = from_definition(&definition(TWO_SERVICES)).unwrap();
        let web = &plan.services[0];
        assert_eq!((web.uid, web.gid), (1001, 1002));
        assert_eq!(
            web.health,
            HealthPlan::Http {
                port: 8080,
                path: "/healthz".into(),
                timeout_ms: 500
            }
        );
        assert_eq!(plan.services[1].health, HealthPlan::Tcp { port: 443, timeout_ms: 2000 });
    }

    #[test]
    fn plan_defaults_hostname_to_image_name() {
        let plan = from_definition(&definition(TWO_SERVICES)).unwrap();
        assert_eq!(plan.hostname, "media");
        assert_eq!(plan.version, "1.2.0");
        assert!(!plan.status_serial);
    }

    #[test]
    fn plan_uses_hostname_from_base() {
        let text = format!("{TWO_SERVICES}\n[base]\nhostname = \"nas\"\n");
        let plan = from_definition(&definition(&text)).unwrap();
        assert_eq!(plan.hostname, "nas");
    }

    #[test]
    fn plan_rejects_dependency_cycle() {
        let text = r#"
            [image]
            name = "media"
            version = "1"
            [[service]]
            name = "a"
            segment = "frontend"
            command = ["/bin/a"]
            depends_on = ["b"]
            [[service]]
            name = "b"
            segment = "frontend"
            command = ["/bin/b"]
            depends_on = ["a"]
        "#;
        let error = from_definition(&definition(text)).unwrap_err();
        assert!(error.to_string().contains("a -> b -> a"), "{error}");
    }

    #[test]
    fn plan_rejects_invalid_user() {
        let text = r#"
            [image]
            name = "media"
            version = "1"
            [[service]]
            name = "a"
            segment = "frontend"
            command = ["/bin/a"]
            user = "nobody"
        "#;
        let error = from_definition(&definition(text)).unwrap_err();
        assert!(matches!(error, PlanError::InvalidUser { .. }), "{error}");
    }

    #[test]
    fn plan_rejects_relative_program() {
        let text = r#"
            [image]
            name = "media"
            version = "1"
            [[service]]
            name = "a"
            segment = "frontend"
            command = ["sleep", "1"]
        "#;
        let error = from_definition(&definition(text)).unwrap_err();
        assert!(matches!(error, PlanError::RelativeProgram { .. }), "{error}");
    }

    #[test]
    fn plan_round_trips_through_json() {
        let plan = from_definition(&definition(TWO_SERVICES)).unwrap();
        let text = serde_json::to_string_pretty(&plan).unwrap();
        let parsed: AppliancePlan = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, plan);
    }

    #[test]
    fn health_none_serializes_with_kind() {
        let text = serde_json::to_string(&HealthPlan::None).unwrap();
        assert_eq!(text, r#"{"kind":"none"}"#);
    }

    #[test]
    fn validate_rejects_plan_out_of_start_order() {
        let mut plan = from_definition(&definition(TWO_SERVICES)).unwrap();
        plan.services.reverse();
        let error = plan.validate().unwrap_err();
        assert_eq!(error.to_string(), "services are not in start order; list them as: web, proxy");
    }

    #[test]
    fn validate_rejects_zero_timeout() {
        let mut plan = from_definition(&definition(TWO_SERVICES)).unwrap();
        plan.services[0].health = HealthPlan::Tcp { port: 80, timeout_ms: 0 };
        assert!(matches!(plan.validate(), Err(PlanError::InvalidHealth { .. })));
    }
}
