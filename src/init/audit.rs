//! The `audit` request of the status API: the CIS Docker Benchmark audit
//! of the specs that ztms-init runs, not of the definition.
//!
//! For each service of the appliance plan the audit reads the bundle spec
//! that `crun run` uses, `/run/ztms/bundles/<name>/config.json`, which
//! ztms-init writes at container start with the device numbers filled in.
//! A service that has not started yet has no such file, so its spec in the
//! root image, `/usr/lib/ztms/bundles/<name>/config.json`, is audited in
//! its place. The request reads one small JSON file per service and the
//! kernel's list of AppArmor profiles on the main loop, and starts no
//! process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use oci_spec::runtime::Spec;

use super::plan::{AppliancePlan, ServicePlan};
use super::spawn::container::RUN_BUNDLES;
use crate::runtime::{self, AppArmorFacts, AuditInput, RestartFacts};
use crate::status::{AuditReply, UnauditedService};

/// The services of the appliance plan, set once the plan is loaded.
static SERVICES: OnceLock<Vec<ServicePlan>> = OnceLock::new();

/// Enables audit requests for the services of `plan`.
pub fn enable(plan: &AppliancePlan) {
    let _ = SERVICES.set(plan.services.clone());
}

/// Audits the running specs of the plan's services, or returns why it
/// cannot.
pub fn run() -> Result<AuditReply, String> {
    let Some(services) = SERVICES.get() else {
        return Err("no appliance plan is loaded, so there is no service to audit".into());
    };
    let apparmor = AppArmorFacts {
        enabled: super::apparmor::kernel_has_apparmor(),
        profiles: super::apparmor::read_loaded_profiles(),
    };
    let reply = audit_bundles(services, Path::new(RUN_BUNDLES), Path::new(runtime::BUNDLES_DIR), &apparmor);
    let failed = reply.rows.iter().filter(|row| row.outcome == runtime::Outcome::Fail).count();
    log::info!("audit request: {} checks of {} services, {failed} failed", reply.rows.len(), services.len());
    for service in &reply.unaudited {
        log::warn!("audit request: service {} not audited: {}", service.service, service.error);
    }
    Ok(reply)
}

/// Audits each service's spec from `run_dir/<name>/config.json`, or from
/// `image_dir/<name>/config.json` when the service has not started yet,
/// with the kernel's AppArmor facts `apparmor`.
pub fn audit_bundles(services: &[ServicePlan], run_dir: &Path, image_dir: &Path, apparmor: &AppArmorFacts) -> AuditReply {
    let mut audited: Vec<(&ServicePlan, Spec)> = Vec::new();
    let mut unaudited = Vec::new();
    for service in services {
        let path = spec_path(&service.name, run_dir, image_dir);
        match Spec::load(&path) {
            Ok(spec) => audited.push((service, spec)),
            Err(error) => unaudited.push(UnauditedService {
                service: service.name.clone(),
                error: format!("reading the bundle spec {} failed: {error}", path.display()),
            }),
        }
    }

    let inputs: Vec<AuditInput<'_>> = audited
        .iter()
        .map(|(service, spec)| AuditInput {
            service: (*service).into(),
            spec,
            restart: RestartFacts::supervisor(),
            apparmor: Some(apparmor),
        })
        .collect();
    AuditReply {
        rows: runtime::audit(&inputs),
        unaudited,
    }
}

/// Returns the path of the spec that runs (or will run) service `name`.
fn spec_path(name: &str, run_dir: &Path, image_dir: &Path) -> PathBuf {
    let running = run_dir.join(name).join("config.json");
    if running.exists() {
        return running;
    }
    image_dir.join(name).join("config.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Definition;
    use crate::runtime::{bundle_spec, NoImage, Outcome, ServiceInput};

    const DEFINITION: &str = r#"
[image]
name = "audit"
version = "1"

[[service]]
name = "web"
segment = "frontend"
command = ["/bin/httpd"]
health = { kind = "http", port = 8080, path = "/" }
exceptions = [{ allow = "cap:NET_BIND_SERVICE", reason = "binds port 80" }]

[[service]]
name = "worker"
segment = "backend"
command = ["/bin/worker"]
"#;

    /// Writes each service's spec under `dir` and returns the plan.
    fn write_bundles(dir: &Path) -> AppliancePlan {
        let definition: Definition = toml::from_str(DEFINITION).unwrap();
        for service in &definition.services {
            let spec = bundle_spec(&ServiceInput::new(service), &NoImage).unwrap();
            let bundle = dir.join(service.name.get_ref());
            std::fs::create_dir_all(&bundle).unwrap();
            spec.save(bundle.join("config.json")).unwrap();
        }
        crate::init::from_definition(&definition).unwrap()
    }

    fn row<'a>(reply: &'a AuditReply, item: &str, service: &str) -> &'a runtime::AuditRow {
        reply
            .rows
            .iter()
            .find(|row| row.item == item && row.service == service)
            .unwrap_or_else(|| panic!("no row {item} for {service}: {reply:?}"))
    }

    /// Facts of a kernel that enforces the profiles of both services.
    fn enforced() -> AppArmorFacts {
        AppArmorFacts {
            enabled: true,
            profiles: [("ztms-web", "enforce"), ("ztms-worker", "enforce")]
                .iter()
                .map(|(name, mode)| (name.to_string(), mode.to_string()))
                .collect(),
        }
    }

    #[test]
    fn apparmor_loaded_in_enforce_mode_passes() {
        let image = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let plan = write_bundles(image.path());
        let reply = audit_bundles(&plan.services, run.path(), image.path(), &enforced());
        let web = row(&reply, "5.1", "web");
        assert_eq!(web.outcome, Outcome::Pass, "{web:?}");
        assert!(web.detail.contains("ztms-web loaded in enforce mode"), "{web:?}");
    }

    #[test]
    fn apparmor_complain_or_missing_fails() {
        let image = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let plan = write_bundles(image.path());
        let mut facts = enforced();
        facts.profiles.insert("ztms-web".into(), "complain".into());
        facts.profiles.remove("ztms-worker");
        let reply = audit_bundles(&plan.services, run.path(), image.path(), &facts);

        let web = row(&reply, "5.1", "web");
        assert_eq!(web.outcome, Outcome::Fail, "{web:?}");
        assert!(web.detail.contains("complain mode"), "{web:?}");
        let worker = row(&reply, "5.1", "worker");
        assert_eq!(worker.outcome, Outcome::Fail, "{worker:?}");
        assert!(worker.detail.contains("not loaded"), "{worker:?}");
    }

    #[test]
    fn apparmor_absent_from_kernel_fails() {
        let image = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let plan = write_bundles(image.path());
        let reply = audit_bundles(&plan.services, run.path(), image.path(), &AppArmorFacts::default());
        let web = row(&reply, "5.1", "web");
        assert_eq!(web.outcome, Outcome::Fail, "{web:?}");
        assert!(web.detail.contains("the kernel has no AppArmor"), "{web:?}");
    }

    #[test]
    fn image_bundle_audited_with_exceptions() {
        let image = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let plan = write_bundles(image.path());
        let reply = audit_bundles(&plan.services, run.path(), image.path(), &enforced());

        assert!(reply.unaudited.is_empty(), "{reply:?}");
        let capabilities = row(&reply, "5.3", "web");
        assert_eq!(capabilities.outcome, Outcome::Pass);
        assert_eq!(capabilities.exceptions, ["cap:NET_BIND_SERVICE: binds port 80"]);
        assert_eq!(row(&reply, "5.26", "web").outcome, Outcome::Pass);
        assert_eq!(row(&reply, "5.26", "worker").outcome, Outcome::Fail);
    }

    #[test]
    fn running_bundle_is_preferred() {
        let image = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let plan = write_bundles(image.path());

        // The running copy of web lost no_new_privileges.
        let mut spec = Spec::load(image.path().join("web/config.json")).unwrap();
        if let Some(process) = spec.process_mut() {
            process.set_no_new_privileges(Some(false));
        }
        std::fs::create_dir_all(run.path().join("web")).unwrap();
        spec.save(run.path().join("web/config.json")).unwrap();

        let reply = audit_bundles(&plan.services, run.path(), image.path(), &enforced());
        assert_eq!(row(&reply, "5.25", "web").outcome, Outcome::Fail);
        assert_eq!(row(&reply, "5.25", "worker").outcome, Outcome::Pass);
    }

    #[test]
    fn missing_bundle_is_unaudited() {
        let image = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let plan = write_bundles(image.path());
        std::fs::remove_dir_all(image.path().join("worker")).unwrap();

        let reply = audit_bundles(&plan.services, run.path(), image.path(), &enforced());
        assert_eq!(reply.unaudited.len(), 1, "{reply:?}");
        assert_eq!(reply.unaudited[0].service, "worker");
        assert!(reply.unaudited[0].error.contains("worker/config.json"), "{}", reply.unaudited[0].error);
        assert!(reply.rows.iter().all(|row| row.service == "web"));
        assert!(reply.failed());
    }
}
