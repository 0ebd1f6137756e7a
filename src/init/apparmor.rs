//! AppArmor at boot: the `apparmor` phase loads every service's profile
//! from the root image before any service starts, and each container
//! start checks that its profile is loaded in enforce mode.
//!
//! A kernel without AppArmor is logged, and services then start without a
//! profile (the audit fails item 5.1 for each). A kernel with AppArmor
//! never runs a service whose profile failed to load: its start fails
//! with the reason, and the supervisor retries it with back-off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use oci_spec::runtime::Spec;

use super::command::Run;
use crate::runtime::{self, PROFILE_FILE};

/// AppArmor's directory in securityfs; it exists when the kernel runs
/// AppArmor as one of its LSMs.
pub const SECURITYFS_DIR: &str = "/sys/kernel/security/apparmor";
/// Profiles loaded in the kernel, one `NAME (MODE)` per line.
pub const PROFILES_FILE: &str = "/sys/kernel/security/apparmor/profiles";
/// The active LSMs, comma-separated.
const LSM_FILE: &str = "/sys/kernel/security/lsm";
/// The parser from Debian's `apparmor` package.
const PARSER: &str = "/sbin/apparmor_parser";

/// Returns true when the kernel runs AppArmor. It reads securityfs, which
/// the `mounts` phase mounts, so it returns false before that phase.
pub fn kernel_has_apparmor() -> bool {
    Path::new(SECURITYFS_DIR).is_dir()
}

/// Loads the profile of each service in `services` in enforce mode,
/// replacing a loaded profile of the same name. Returns an error naming
/// the services whose profile is not in force afterwards; those services
/// do not start.
pub fn load_profiles(services: &[String]) -> Result<(), String> {
    let lsm = std::fs::read_to_string(LSM_FILE).unwrap_or_default();
    let has_apparmor = kernel_has_apparmor();
    if !has_apparmor {
        log::warn!(
            "apparmor: the kernel has no AppArmor (active LSMs: {}); services run without AppArmor profiles and the audit fails item 5.1",
            if lsm.trim().is_empty() { "unknown" } else { lsm.trim() }
        );
        return Ok(());
    }
    log::info!("apparmor: active LSMs: {}", lsm.trim());
    if services.is_empty() {
        return Ok(());
    }

    let files: Vec<PathBuf> = services.iter().map(|name| profile_path(name)).collect();
    let started = Instant::now();
    // --skip-cache: the root is read-only, and a cache would save little
    // for a few small profiles. One run for all files; a profile that
    // fails does not stop the others, and the check below finds it.
    let output = Run::new(PARSER).args(["--replace", "--skip-cache"]).args(&files).output();
    let elapsed_ms = started.elapsed().as_millis();
    let parser_error = output.err();
    if let Some(error) = &parser_error {
        log::error!("apparmor: {PARSER} failed: {error}");
    }

    let loaded = read_loaded_profiles();
    let mut failed = Vec::new();
    for name in services {
        if let Err(error) = check_enforced(&loaded, name) {
            log::error!("apparmor: {error}; service {name} does not start");
            failed.push(name.clone());
        }
    }
    log::info!(
        "apparmor: loaded {} of {} service profiles in enforce mode in {elapsed_ms} ms",
        services.len() - failed.len(),
        services.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("profiles of {} not loaded in enforce mode", failed.join(", ")))
    }
}

/// Checks the AppArmor profile of service `name` before crun runs `spec`.
/// With AppArmor, the profile must be loaded in enforce mode. Without it,
/// the profile name is removed, because crun fails on a profile that the
/// kernel cannot apply, and the log says the service runs unconfined.
pub fn prepare_spec(name: &str, spec: &mut Spec) -> Result<(), String> {
    let has_apparmor = kernel_has_apparmor();
    let loaded = if has_apparmor { read_loaded_profiles() } else { BTreeMap::new() };
    check_spec(name, spec, has_apparmor, &loaded)
}

/// Checks and adjusts `spec` as [`prepare_spec`] does, for a kernel described by
/// `has_apparmor` and its `loaded` profiles.
fn check_spec(name: &str, spec: &mut Spec, has_apparmor: bool, loaded: &BTreeMap<String, String>) -> Result<(), String> {
    let Some(process) = spec.process_mut() else { return Ok(()) };
    let Some(profile) = process.apparmor_profile().clone() else {
        log::warn!("service {name}: the spec names no AppArmor profile; it runs without one");
        return Ok(());
    };
    if !has_apparmor {
        process.set_apparmor_profile(None);
        log::warn!("service {name}: starting without AppArmor profile {profile}, because the kernel has no AppArmor");
        return Ok(());
    }
    match loaded.get(&profile).map(String::as_str) {
        Some("enforce") => Ok(()),
        Some(mode) => Err(format!(
            "AppArmor profile {profile} is loaded in {mode} mode, not enforce; the service does not start without confinement"
        )),
        None => Err(format!(
            "AppArmor profile {profile} is not loaded (see the apparmor phase in the log); the service does not start without confinement"
        )),
    }
}

/// Returns the loaded profiles and their modes, or an empty map when the
/// kernel has no AppArmor.
pub fn read_loaded_profiles() -> BTreeMap<String, String> {
    std::fs::read_to_string(PROFILES_FILE)
        .map(|text| parse_profiles(&text))
        .unwrap_or_default()
}

/// Parses the text of [`PROFILES_FILE`]: `ztms-web (enforce)` per line.
pub fn parse_profiles(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (name, mode) = line.trim_end().rsplit_once(" (")?;
            Some((name.to_string(), mode.strip_suffix(')')?.to_string()))
        })
        .collect()
}

fn profile_path(service: &str) -> PathBuf {
    Path::new(runtime::BUNDLES_DIR).join(service).join(PROFILE_FILE)
}

fn check_enforced(loaded: &BTreeMap<String, String>, service: &str) -> Result<(), String> {
    let profile = runtime::profile_name(service);
    match loaded.get(&profile).map(String::as_str) {
        Some("enforce") => Ok(()),
        Some(mode) => Err(format!("profile {profile} is in {mode} mode, not enforce")),
        None => Err(format!("profile {profile} from {} is not loaded", profile_path(service).display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parsed_with_modes() {
        let text = "ztms-web (enforce)\nztms-db (complain)\n/usr/bin/man (enforce)\nnvidia_modprobe//kmod (enforce)\n";
        let profiles = parse_profiles(text);
        assert_eq!(profiles.get("ztms-web").map(String::as_str), Some("enforce"));
        assert_eq!(profiles.get("ztms-db").map(String::as_str), Some("complain"));
        assert_eq!(profiles.get("/usr/bin/man").map(String::as_str), Some("enforce"));
        assert_eq!(profiles.get("nvidia_modprobe//kmod").map(String::as_str), Some("enforce"));
    }

    fn spec() -> Spec {
        let service: crate::config::Service =
            toml::from_str("name = \"web\"\nsegment = \"frontend\"\ncommand = [\"/bin/httpd\"]\n").unwrap();
        runtime::bundle_spec(&runtime::ServiceInput::new(&service), &runtime::NoImage).unwrap()
    }

    fn profile_of(spec: &Spec) -> Option<String> {
        spec.process().as_ref().unwrap().apparmor_profile().clone()
    }

    #[test]
    fn spec_keeps_enforced_profile() {
        let mut spec = spec();
        let loaded = parse_profiles("ztms-web (enforce)\n");
        assert_eq!(check_spec("web", &mut spec, true, &loaded), Ok(()));
        assert_eq!(profile_of(&spec).as_deref(), Some("ztms-web"));
    }

    #[test]
    fn spec_with_unloaded_profile_rejected() {
        let mut spec = spec();
        let error = check_spec("web", &mut spec, true, &BTreeMap::new()).unwrap_err();
        assert!(error.contains("ztms-web is not loaded"), "{error}");
        assert!(error.contains("does not start"), "{error}");

        let complain = parse_profiles("ztms-web (complain)\n");
        let error = check_spec("web", &mut spec, true, &complain).unwrap_err();
        assert!(error.contains("complain mode"), "{error}");
    }

    #[test]
    fn spec_without_apparmor_drops_profile() {
        let mut spec = spec();
        assert_eq!(check_spec("web", &mut spec, false, &BTreeMap::new()), Ok(()));
        assert_eq!(profile_of(&spec), None);
    }

    #[test]
    fn profile_in_complain_mode_is_not_enforced() {
        let profiles = parse_profiles("ztms-web (complain)\n");
        let error = check_enforced(&profiles, "web").unwrap_err();
        assert!(error.contains("complain mode"), "{error}");
    }

    #[test]
    fn missing_profile_is_not_enforced() {
        let profiles = parse_profiles("ztms-other (enforce)\n");
        let error = check_enforced(&profiles, "web").unwrap_err();
        assert!(error.contains("ztms-web"), "{error}");
        assert!(error.contains("not loaded"), "{error}");
        assert!(check_enforced(&parse_profiles("ztms-web (enforce)\n"), "web").is_ok());
    }
}
