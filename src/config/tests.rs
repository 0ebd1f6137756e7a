//! Bad-input tests: each error names the file, line and column, the value
//! and the fix.

use std::path::Path;

use super::{parse, ConfigError};

fn error_of(text: &str) -> String {
    match parse(Path::new("images/t.toml"), text.to_string()) {
        Ok(_) => panic!("definition was accepted:\n{text}"),
        Err(error) => error.to_string(),
    }
}

const MINIMAL: &str = "[image]\nname = \"t\"\nversion = \"1.0\"\n";

#[test]
fn minimal_definition_gets_defaults() {
    let loaded = parse(Path::new("t.toml"), MINIMAL.to_string()).unwrap();
    assert_eq!(loaded.definition.base.suite, "bookworm");
    assert_eq!(loaded.definition.segments.len(), 5);
    assert_eq!(loaded.definition.disk.root.get_ref().bytes(), 1 << 30);
}

#[test]
fn unknown_key_is_located() {
    let error = error_of(&format!("{MINIMAL}\n[base]\nsuit = \"bookworm\"\n"));
    assert!(error.starts_with("images/t.toml:6:1:"), "{error}");
    assert!(error.contains("unknown field `suit`"), "{error}");
    assert!(error.contains("suite"), "the error does not list the valid keys: {error}");
}

#[test]
fn wrong_type_is_located() {
    let error = error_of(&format!("{MINIMAL}\n[base]\npackages = \"nginx\"\n"));
    assert!(error.starts_with("images/t.toml:6:12:"), "{error}");
    assert!(error.contains("expected a sequence"), "{error}");
}

#[test]
fn missing_overlay_names_path() {
    let error = error_of(&format!("{MINIMAL}\n[base]\noverlays = [\"no-such-dir\"]\n"));
    assert!(error.contains("images/t.toml:6:13:"), "{error}");
    assert!(error.contains("no-such-dir"), "{error}");
    assert!(error.contains("not found"), "{error}");
}

#[test]
fn duplicate_published_port_names_both_services() {
    let text = format!(
        "{MINIMAL}
[[service]]
name = \"proxy\"
segment = \"frontend\"
command = [\"/bin/true\"]
ports = [{{ port = 443, publish = 443 }}]

[[service]]
name = \"other\"
segment = \"frontend\"
command = [\"/bin/true\"]
ports = [{{ port = 8443, publish = 443 }}]
"
    );
    let error = error_of(&text);
    assert!(error.contains("\"proxy\""), "{error}");
    assert!(error.contains("\"other\""), "{error}");
    assert!(error.contains("443/tcp"), "{error}");
    assert!(error.starts_with("images/t.toml:15:35:"), "{error}");
}

#[test]
fn long_name_breaks_label_limit() {
    let name = "a".repeat(30);
    let error = error_of(&format!("[image]\nname = \"{name}\"\nversion = \"1\"\n"));
    assert!(error.starts_with("images/t.toml:2:8:"), "{error}");
    assert!(error.contains("partition label"), "{error}");
    assert!(error.contains("at most"), "{error}");
}

#[test]
fn small_disk_names_minimum() {
    let error = error_of(&format!("{MINIMAL}\n[disk]\nesp = \"1M\"\n"));
    assert!(error.contains("disk.esp = 1M is too small"), "{error}");
    assert!(error.contains("64M"), "{error}");
}

#[test]
fn exception_without_reason_rejected() {
    let text = format!(
        "{MINIMAL}
[[service]]
name = \"plex\"
segment = \"frontend\"
command = [\"/bin/true\"]
exceptions = [{{ allow = \"cap:CHOWN\", reason = \"\" }}]
"
    );
    let error = error_of(&text);
    assert!(error.contains("cap:CHOWN"), "{error}");
    assert!(error.contains("reason"), "{error}");
}

#[test]
fn unknown_segment_lists_declared_ones() {
    let text = format!("{MINIMAL}\n[[service]]\nname = \"x\"\nsegment = \"dmz\"\ncommand = [\"/bin/true\"]\n");
    let error = error_of(&text);
    assert!(error.contains("\"dmz\""), "{error}");
    assert!(error.contains("frontend"), "{error}");
}

#[test]
fn every_shipped_image_is_valid() {
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("images");
    for entry in std::fs::read_dir(images).unwrap() {
        let path = entry.unwrap().path();
        // images/oci contains the OCI archives that definitions import.
        if path.extension().is_none_or(|extension| extension != "toml") {
            continue;
        }
        if let Err(error) = super::load(&path) {
            panic!("{error}");
        }
    }
}

#[test]
fn config_docs_match_schema() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == super::docs::render(),
        "docs/config.md is out of date; regenerate it with `ztms config-docs > docs/config.md`"
    );
}

#[test]
fn read_error_names_path() {
    let error = super::load(Path::new("/nonexistent/x.toml")).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(error.to_string().contains("/nonexistent/x.toml"));
}

#[test]
fn ban_defaults_are_off_with_three_failures() {
    let loaded = parse(Path::new("t.toml"), MINIMAL.to_string()).unwrap();
    let ban = &loaded.definition.ban;
    assert_eq!(ban.service, None);
    assert_eq!((ban.failures, ban.window_secs, ban.ban_secs), (3, 60, 600));
    assert_eq!(ban.statuses, [401, 403]);
}

#[test]
fn ban_of_unknown_service_names_value_and_fix() {
    let text = format!(
        "{MINIMAL}
[[service]]
name = \"proxy\"
segment = \"frontend\"
command = [\"/bin/true\"]

[ban]
service = \"nginx\"
"
    );
    let error = error_of(&text);
    assert!(error.starts_with("images/t.toml:11:11:"), "{error}");
    assert!(error.contains("ban.service = \"nginx\" names no declared service"), "{error}");
    assert!(error.contains("use one of: proxy"), "{error}");
}

#[test]
fn ban_with_zero_failures_is_rejected() {
    let error = error_of(&format!("{MINIMAL}\n[ban]\nfailures = 0\n"));
    assert!(error.contains("invalid ban.failures = 0: use at least 1"), "{error}");
}

#[test]
fn ban_with_invalid_status_is_rejected() {
    let error = error_of(&format!("{MINIMAL}\n[ban]\nstatuses = [401, 4031]\n"));
    assert!(error.contains("invalid HTTP status 4031 in ban.statuses"), "{error}");
}

fn service_with(name: &str, extra: &str) -> String {
    format!("\n[[service]]\nname = \"{name}\"\nsegment = \"backend\"\ncommand = [\"/bin/app\"]\n{extra}\n")
}

#[test]
fn secrets_shared_by_two_services_accepted() {
    let text = format!(
        "{MINIMAL}{}{}",
        service_with("postgres", "secrets = [\"postgres-password\"]"),
        service_with("postgres-exporter", "secrets = [\"postgres-password\"]")
    );
    let loaded = parse(Path::new("t.toml"), text).unwrap();
    assert_eq!(loaded.definition.services[1].secrets, ["postgres-password"]);
}

#[test]
fn invalid_secret_name_names_service_value_and_fix() {
    let text = format!("{MINIMAL}{}", service_with("app", "secrets = [\"DB_Password\"]"));
    let error = error_of(&text);
    assert!(error.starts_with("images/t.toml:"), "{error}");
    assert!(error.contains("\"app\""), "{error}");
    assert!(error.contains("\"DB_Password\""), "{error}");
    assert!(error.contains("lowercase letters, digits and '-'"), "{error}");
}

#[test]
fn shared_secret_with_different_users_rejected() {
    let text = format!(
        "{MINIMAL}{}{}",
        service_with("postgres", "user = \"999:999\"\nsecrets = [\"postgres-password\"]"),
        service_with("exporter", "secrets = [\"postgres-password\"]")
    );
    let error = error_of(&text);
    assert!(error.contains("\"postgres-password\""), "{error}");
    assert!(error.contains("same user"), "{error}");
}

#[test]
fn volume_of_secrets_directory_rejected() {
    let text = format!(
        "{MINIMAL}{}",
        service_with("app", "volumes = [{ source = \"secrets/app\", target = \"/secrets\" }]")
    );
    let error = error_of(&text);
    assert!(error.contains("exposes /data/secrets"), "{error}");
    assert!(error.contains("\"secrets/app\""), "{error}");
}

#[test]
fn missing_oci_archive_passes_check() {
    let text = format!(
        "{MINIMAL}\n[[service]]\nname = \"jellyfin\"\nsegment = \"frontend\"\noci = \"oci/no-such-archive.tar\"\ncommand = [\"/usr/bin/jellyfin\"]\n"
    );
    let loaded = parse(Path::new("images/t.toml"), text).expect("a missing archive is a build error, not a check error");
    assert_eq!(loaded.definition.services.len(), 1);
}

#[test]
fn oci_with_packages_rejected() {
    let text = format!(
        "{MINIMAL}\n[[service]]\nname = \"x\"\nsegment = \"frontend\"\noci = \"oci/x.tar\"\npackages = [\"nginx\"]\ncommand = [\"/bin/x\"]\n"
    );
    let error = error_of(&text);
    assert!(error.contains("both oci and packages"), "{error}");
}
