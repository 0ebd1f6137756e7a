//! Checks that need more than the types: names, references, sizes, ports.

use std::collections::{BTreeMap, HashSet};

use super::{ConfigError, Loaded};
use crate::build::layout;

/// Smallest sizes that still hold a bootable appliance.
const MIN_ESP: u64 = 64 << 20;
const MIN_ROOT: u64 = 16 << 20;
const MIN_DATA: u64 = 16 << 20;

pub(super) fn validate(loaded: &Loaded) -> Result<(), ConfigError> {
    let definition = &loaded.definition;
    let name = &definition.image.name;
    check_name(name.get_ref()).map_err(|message| {
        loaded.invalid(name.span(), format!("invalid image name {:?}: {message}", name.get_ref()))
    })?;
    for label in layout::partition_labels(name.get_ref()) {
        let units = label.encode_utf16().count() + layout::UPDATER_LABEL_PREFIX.len();
        if units > layout::GPT_LABEL_MAX {
            return Err(loaded.invalid(
                name.span(),
                format!(
                    "partition label {label:?} is too long: with the prefix {:?} that the updater adds it has {units} UTF-16 code units, and GPT allows {}; shorten the image name to at most {} characters",
                    layout::UPDATER_LABEL_PREFIX,
                    layout::GPT_LABEL_MAX,
                    layout::max_image_name_len(),
                ),
            ));
        }
    }
    if definition.image.version.is_empty()
        || !definition
            .image
            .version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '~' | '+'))
    {
        return Err(loaded.invalid(
            0..0,
            format!(
                "invalid image.version {:?}: use digits, letters and . - ~ +, for example \"1.2.0\"",
                definition.image.version
            ),
        ));
    }

    for overlay in &definition.base.overlays {
        let path = loaded.resolve(overlay.get_ref());
        if !path.is_dir() {
            return Err(loaded.invalid(
                overlay.span(),
                format!(
                    "overlay directory {} not found; create it or remove it from base.overlays",
                    path.display()
                ),
            ));
        }
    }

    let disk = &definition.disk;
    for (key, size, minimum) in [
        ("disk.esp", &disk.esp, MIN_ESP),
        ("disk.root", &disk.root, MIN_ROOT),
        ("disk.data", &disk.data, MIN_DATA),
    ] {
        if size.get_ref().bytes() < minimum {
            return Err(loaded.invalid(
                size.span(),
                format!(
                    "{key} = {} is too small; use at least {}",
                    size.get_ref(),
                    super::ByteSize(minimum)
                ),
            ));
        }
    }

    validate_storage(loaded)?;
    validate_segments(loaded)?;
    validate_services(loaded)?;
    validate_ban(loaded)?;
    validate_secrets(loaded)?;
    validate_network(loaded)
}

fn validate_storage(loaded: &Loaded) -> Result<(), ConfigError> {
    let storage = &loaded.definition.storage;
    match (&storage.unlock, &storage.key_file) {
        (super::Unlock::KeyFile, None) => Err(loaded.invalid(
            0..0,
            "storage.unlock = \"key-file\" needs storage.key_file; add key_file = { label = \"ZTMSKEY\", path = \"ztms-data.key\" } with the label of the removable media".into(),
        )),
        (_, Some(key_file)) => {
            let path = std::path::Path::new(&key_file.path);
            let plain = path.components().all(|part| matches!(part, std::path::Component::Normal(_)));
            if key_file.label.is_empty() || key_file.path.is_empty() || !plain {
                return Err(loaded.invalid(
                    0..0,
                    format!(
                        "storage.key_file = {{ label = {:?}, path = {:?} }} is invalid: give a non-empty filesystem label and a relative path without \"..\"",
                        key_file.label, key_file.path
                    ),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn validate_segments(loaded: &Loaded) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for segment in &loaded.definition.segments {
        check_name(&segment.name).map_err(|message| {
            loaded.invalid(0..0, format!("invalid segment name {:?}: {message}", segment.name))
        })?;
        if !seen.insert(segment.name.as_str()) {
            return Err(loaded.invalid(
                0..0,
                format!("segment {:?} is declared twice; give each segment its own name", segment.name),
            ));
        }
        crate::net::parse_subnet(&segment.subnet).map_err(|message| {
            loaded.invalid(0..0, format!("segment {:?}: {message}", segment.name))
        })?;
    }
    Ok(())
}

fn validate_services(loaded: &Loaded) -> Result<(), ConfigError> {
    let definition = &loaded.definition;
    let segments: HashSet<&str> = definition.segments.iter().map(|s| s.name.as_str()).collect();
    let names: HashSet<&str> = definition
        .services
        .iter()
        .map(|s| s.name.get_ref().as_str())
        .collect();
    let mut seen = HashSet::new();
    let mut published: BTreeMap<(u16, super::Proto), &str> = BTreeMap::new();

    for service in &definition.services {
        let name = service.name.get_ref();
        let at = service.name.span();
        check_name(name).map_err(|message| {
            loaded.invalid(at.clone(), format!("invalid service name {name:?}: {message}"))
        })?;
        if !seen.insert(name.as_str()) {
            return Err(loaded.invalid(
                at,
                format!("service {name:?} is declared twice; give each service its own name"),
            ));
        }
        if !segments.contains(service.segment.as_str()) {
            return Err(loaded.invalid(
                at,
                format!(
                    "service {name:?} names segment {:?}, which is not declared; declare it in a [[segment]] table or use one of: {}",
                    service.segment,
                    sorted(&segments)
                ),
            ));
        }
        if service.command.is_empty() {
            return Err(loaded.invalid(
                at,
                format!("service {name:?} has an empty command; set command = [\"/usr/bin/program\", ...]"),
            ));
        }
        if let Some(oci) = &service.oci {
            if !service.packages.is_empty() {
                return Err(loaded.invalid(
                    oci.span(),
                    format!("service {name:?} sets both oci and packages; use one image source"),
                ));
            }
            // The archive is a build input, like a Debian package, so
            // `ztms check` does not need it: the build checks it first.
        }
        parse_user(&service.user).map_err(|message| {
            loaded.invalid(at.clone(), format!("service {name:?}: {message}"))
        })?;
        for dependency in &service.depends_on {
            if !names.contains(dependency.as_str()) {
                return Err(loaded.invalid(
                    at,
                    format!("service {name:?} depends on {dependency:?}, which is not declared"),
                ));
            }
        }
        for port in &service.ports {
            let Some(publish) = &port.publish else { continue };
            let key = (*publish.get_ref(), port.proto);
            if let Some(other) = published.insert(key, name) {
                return Err(loaded.invalid(
                    publish.span(),
                    format!(
                        "services {other:?} and {name:?} both publish {}/{}; publish each external port from one service",
                        key.0, key.1
                    ),
                ));
            }
        }
        for exception in &service.exceptions {
            if exception.reason.trim().is_empty() {
                return Err(loaded.invalid(
                    at,
                    format!(
                        "service {name:?}: exception {:?} has no reason; say why the service needs it in reason = \"...\"",
                        exception.allow
                    ),
                ));
            }
            let kind = exception.allow.split_once(':').map(|(kind, _)| kind);
            let known = matches!(kind, Some("cap" | "device" | "exec-tmpfs" | "writable"))
                || exception.allow == "namespace:host-pid";
            if !known {
                return Err(loaded.invalid(
                    at,
                    format!(
                        "service {name:?}: invalid exception {:?}; use cap:NAME, device:PATH, exec-tmpfs:PATH, writable:PATH or namespace:host-pid",
                        exception.allow
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn validate_ban(loaded: &Loaded) -> Result<(), ConfigError> {
    let ban = &loaded.definition.ban;
    if let Some(service) = &ban.service {
        let declared = loaded.definition.services.iter().any(|s| s.name.get_ref() == service);
        if !declared {
            let names: HashSet<&str> = loaded.definition.services.iter().map(|s| s.name.get_ref().as_str()).collect();
            let fix = match names.is_empty() {
                true => "declare the service, or remove ban.service to turn banning off".to_string(),
                false => format!("use one of: {}, or remove ban.service to turn banning off", sorted(&names)),
            };
            return Err(loaded.invalid(
                span_of(&loaded.source, &format!("{service:?}")),
                format!("ban.service = {service:?} names no declared service; {fix}"),
            ));
        }
    }
    for (key, value, example) in [
        ("ban.failures", ban.failures, 3),
        ("ban.window_secs", ban.window_secs, 60),
        ("ban.ban_secs", ban.ban_secs, 600),
    ] {
        if value == 0 {
            return Err(loaded.invalid(0..0, format!("invalid {key} = 0: use at least 1, for example {example}")));
        }
    }
    if ban.statuses.is_empty() {
        return Err(loaded.invalid(
            0..0,
            "invalid ban.statuses = []: list the HTTP codes of a failed authentication, for example [401, 403]".into(),
        ));
    }
    if let Some(status) = ban.statuses.iter().find(|status| !(100..=599).contains(*status)) {
        return Err(loaded.invalid(
            0..0,
            format!("invalid HTTP status {status} in ban.statuses: use codes from 100 to 599, for example [401, 403]"),
        ));
    }
    Ok(())
}

/// Returns the span of the first occurrence of `needle` in `source`, or
/// the start of the file when it does not occur.
fn span_of(source: &str, needle: &str) -> std::ops::Range<usize> {
    match source.find(needle) {
        Some(start) => start..start + needle.len(),
        None => 0..0,
    }
}

/// Checks the services' `secrets` by computing the secrets plan, and that
/// no volume exposes the secrets directory, which would bypass the
/// per-secret binds.
fn validate_secrets(loaded: &Loaded) -> Result<(), ConfigError> {
    use crate::runtime::SecretsError;

    for service in &loaded.definition.services {
        let name = service.name.get_ref();
        for volume in &service.volumes {
            let first = std::path::Path::new(&volume.source).components().next();
            if first.is_some_and(|part| part.as_os_str() == "secrets") {
                return Err(loaded.invalid(
                    service.name.span(),
                    format!(
                        "service {name:?}: volume source {:?} exposes /data/secrets; list the secrets the service needs in secrets = [\"name\"] instead",
                        volume.source
                    ),
                ));
            }
        }
    }

    let Err(error) = crate::runtime::plan_secrets(&loaded.definition) else {
        return Ok(());
    };
    let service = match &error {
        SecretsError::InvalidName { service, .. }
        | SecretsError::Duplicate { service, .. }
        | SecretsError::Reserved { service, .. }
        | SecretsError::InvalidUser { service, .. } => service,
        SecretsError::OwnerMismatch { second, .. } => second,
        SecretsError::UnknownConsoleSecret { name } => {
            return Err(loaded.invalid(span_of(&loaded.source, &format!("{name:?}")), error.to_string()));
        }
    };
    let span = loaded
        .definition
        .services
        .iter()
        .find(|declared| declared.name.get_ref() == service)
        .map_or(0..0, |declared| declared.name.span());
    Err(loaded.invalid(span, error.to_string()))
}

/// Parses `UID:GID`.
pub fn parse_user(text: &str) -> Result<(u32, u32), String> {
    let invalid = || format!("invalid user {text:?}: use UID:GID, for example \"1000:1000\"");
    let (uid, gid) = text.split_once(':').ok_or_else(invalid)?;
    Ok((uid.parse().map_err(|_| invalid())?, gid.parse().map_err(|_| invalid())?))
}

fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err("use 1 to 63 lowercase letters, digits and '-', starting with a letter".into())
    }
}

fn sorted(set: &HashSet<&str>) -> String {
    let mut names: Vec<&str> = set.iter().copied().collect();
    names.sort_unstable();
    names.join(", ")
}

/// Checks the uplink, the matrix, the VPN and remote access by computing
/// the network plan, which rejects every inconsistency with the value and
/// the fix.
fn validate_network(loaded: &Loaded) -> Result<(), ConfigError> {
    use crate::net::PlanError;

    let Err(error) = crate::net::NetworkPlan::from_definition(&loaded.definition) else {
        return Ok(());
    };
    // Point at the offending value where the source text shows it.
    let needle = match &error {
        PlanError::Invalid { value, .. } => format!("{value:?}"),
        PlanError::Allow { entry, .. } => format!("{entry:?}"),
        PlanError::Overlap { second_subnet, .. } => format!("\"{second_subnet}\""),
        PlanError::VpnPublished { .. } | PlanError::Full { .. } => String::new(),
    };
    let span = match loaded.source.find(&needle) {
        Some(start) if !needle.is_empty() => start..start + needle.len(),
        _ => 0..0,
    };
    Err(loaded.invalid(span, error.to_string()))
}
