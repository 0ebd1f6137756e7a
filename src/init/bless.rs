//! Boot blessing for systemd-boot's boot counting: once every service is
//! healthy, the booted UKI loses its `+LEFT[-DONE]` counter, so
//! systemd-boot keeps choosing it instead of falling back to the other
//! slot.
//!
//! systemd-boot renames the counted file before it starts the kernel, and
//! stores the new path in the `LoaderBootCountPath` variable. That file is
//! the one to bless. `LoaderEntrySelected` contains the entry id, the file name
//! as systemd-boot found it, and serves as a fallback when the first
//! variable is absent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{self, MsFlags};

use super::block;
use crate::build::layout::{self, Role};

/// Vendor GUID of the variables systemd-boot sets (Boot Loader Interface).
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// Mount point of efivarfs.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// Directory of type #2 boot entries (UKIs) on the ESP.
const UKI_DIRECTORY: &str = "EFI/Linux";
/// Preferred ESP mount point, used when the root filesystem has it.
const ESP_MOUNT: &str = "/efi";
/// ESP mount point on tmpfs when the root filesystem has no `/efi`.
const ESP_FALLBACK_MOUNT: &str = "/run/ztms/esp";

/// Result of a blessing attempt that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Blessed { old: String, new: String },
    /// Nothing to do, with the reason.
    NotCounted(String),
}

/// A blessing that failed; the boot counter then keeps counting down.
#[derive(Debug, thiserror::Error)]
pub enum BlessError {
    #[error("reading EFI variable {name} failed: {source}")]
    Variable { name: String, source: std::io::Error },
    #[error(transparent)]
    Partition(#[from] block::BlockError),
    #[error("mounting the ESP {device} on {target} failed: {source}")]
    Mount { device: PathBuf, target: String, source: nix::Error },
    #[error("no file in {directory} matches the booted entry {entry:?}")]
    EntryNotFound { directory: String, entry: String },
    #[error("cannot bless {old}: {new} already exists on the ESP")]
    TargetExists { old: String, new: String },
    #[error("renaming {old} to {new} on the ESP failed: {source}")]
    Rename { old: String, new: String, source: std::io::Error },
}

/// Returns `name` without its boot counter (`foo+3.efi` or `foo+2-1.efi`
/// becomes `foo.efi`), or `None` when it has none. The counter is the text
/// after the last `+` up to the `.efi` suffix: digits, optionally followed
/// by `-` and digits, as systemd-boot parses it.
pub fn strip_boot_counter(name: &str) -> Option<String> {
    const SUFFIX: &str = ".efi";
    if name.len() < SUFFIX.len() || !name[name.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX) {
        return None;
    }
    let (stem, suffix) = name.split_at(name.len() - SUFFIX.len());
    let plus = stem.rfind('+')?;
    let counter = &stem[plus + 1..];
    let (left, done) = match counter.split_once('-') {
        Some((left, done)) => (left, Some(done)),
        None => (counter, None),
    };
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits(left) || !done.map_or(true, digits) || plus == 0 {
        return None;
    }
    Some(format!("{}{suffix}", &stem[..plus]))
}

/// Decodes an efivarfs file that contains a string: 4 bytes of attributes,
/// then UTF-16LE up to a NUL or the end.
pub fn decode_string_variable(bytes: &[u8]) -> Option<String> {
    let data = bytes.get(4..)?;
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// Converts an ESP path as the firmware writes it (`\EFI\Linux\x.efi`)
/// into a path relative to the ESP's mount point.
pub fn esp_relative(loader_path: &str) -> PathBuf {
    let parts: Vec<&str> = loader_path.split(['\\', '/']).filter(|part| !part.is_empty()).collect();
    parts.iter().collect()
}

fn read_variable(name: &str) -> Result<Option<String>, BlessError> {
    let path = Path::new(EFIVARS).join(format!("{name}-{LOADER_GUID}"));
    match std::fs::read(&path) {
        Ok(bytes) => Ok(decode_string_variable(&bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BlessError::Variable {
            name: name.to_string(),
            source,
        }),
    }
}

/// The file to rename, found from the boot loader's variables.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// The exact path on the ESP.
    Path(PathBuf),
    /// An entry id whose counted file must be looked up in `EFI/Linux`.
    Entry(String),
}

/// Blesses the booted UKI of the appliance `name` if it carries a boot
/// counter.
pub fn bless(name: &str) -> Result<Outcome, BlessError> {
    if !Path::new(EFIVARS).is_dir() {
        return Ok(Outcome::NotCounted("no EFI variables (not booted through UEFI)".into()));
    }
    let target = match read_variable("LoaderBootCountPath")? {
        Some(path) if !path.is_empty() => Target::Path(esp_relative(&path)),
        _ => match read_variable("LoaderEntrySelected")? {
            None => return Ok(Outcome::NotCounted("the boot loader did not set LoaderEntrySelected".into())),
            Some(entry) if strip_boot_counter(&entry).is_none() => {
                return Ok(Outcome::NotCounted(format!("the booted entry {entry} has no boot counter")))
            }
            Some(entry) => Target::Entry(entry),
        },
    };
    if let Target::Path(path) = &target {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        if strip_boot_counter(&file).is_none() {
            return Ok(Outcome::NotCounted(format!("the booted file {file} has no boot counter")));
        }
    }

    let label = layout::label(name, Role::Esp);
    let partition = block::wait_for_label(&label, Duration::from_secs(5))?;
    let mount_point = mount_esp(&partition.node())?;
    let result = rename_on_esp(&mount_point, &target);
    if let Ok(Outcome::Blessed { new, .. }) = &result {
        demote_newer(&mount_point, name, new);
    }

    nix::unistd::sync();
    if let Err(error) = mount::umount(mount_point.as_str()) {
        log::warn!("unmounting the ESP from {mount_point} failed: {error}");
    }
    result
}

fn mount_esp(device: &Path) -> Result<String, BlessError> {
    let target = if Path::new(ESP_MOUNT).is_dir() {
        ESP_MOUNT.to_string()
    } else {
        let _ = std::fs::create_dir_all(ESP_FALLBACK_MOUNT);
        ESP_FALLBACK_MOUNT.to_string()
    };
    mount_esp_at(device, &target)?;
    Ok(target)
}

/// Mounts the ESP `device` read-write on the existing directory `target`.
pub fn mount_esp_at(device: &Path, target: &str) -> Result<(), BlessError> {
    let target = target.to_string();
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // Debian's kernels default to iocharset=utf8, whose module the image may
    // lack; the file names ztms writes are ASCII, so Latin-1 is enough.
    let with_charset = mount::mount(
        Some(device),
        target.as_str(),
        Some("vfat"),
        flags,
        Some("umask=0077,codepage=437,iocharset=iso8859-1"),
    );
    let result = match with_charset {
        Ok(()) => Ok(()),
        Err(_) => mount::mount(Some(device), target.as_str(), Some("vfat"), flags, Some("umask=0077")),
    };
    result.map_err(|source| BlessError::Mount {
        device: device.to_path_buf(),
        target: target.clone(),
        source,
    })
}

/// Returns the tries left in a boot counter file name (`x+2-1.efi` has 2),
/// or `None` when the name has no counter.
pub fn tries_left(name: &str) -> Option<u32> {
    strip_boot_counter(name)?;
    let stem = &name[..name.len() - ".efi".len()];
    let counter = &stem[stem.rfind('+')? + 1..];
    counter.split('-').next()?.parse().ok()
}

/// Decides whether a counted boot whose services did not all become
/// healthy in time reboots: while tries are left, systemd-boot tries the
/// entry again, and with none left it falls back to another entry, if one
/// exists. Rebooting an exhausted only entry would loop, so it stays up.
pub fn reboot_unhealthy(tries_left: Option<u32>, loader_entries: usize) -> bool {
    tries_left.unwrap_or(0) > 0 || loader_entries > 1
}

/// Returns the tries left of the booted entry and the number of entries
/// systemd-boot found (`LoaderEntries`), or `None` when this boot is not
/// counted and so is no trial of a new version.
pub fn trial_boot() -> Option<(Option<u32>, usize)> {
    let counted_path = match read_variable("LoaderBootCountPath") {
        Ok(Some(path)) if !path.is_empty() => Some(path),
        _ => None,
    };
    let selected = read_variable("LoaderEntrySelected").ok().flatten().unwrap_or_default();
    let tries = match &counted_path {
        Some(path) => {
            let file = esp_relative(path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            tries_left(&file)
        }
        None => tries_left(&selected),
    };
    if counted_path.is_none() && strip_boot_counter(&selected).is_none() {
        return None;
    }
    let entries_path = Path::new(EFIVARS).join(format!("LoaderEntries-{LOADER_GUID}"));
    let entries = std::fs::read(entries_path).map(|bytes| decode_string_list(&bytes).len()).unwrap_or(0);
    Some((tries, entries))
}

/// Decodes an efivarfs file that contains a list of NUL-separated UTF-16LE
/// strings, as `LoaderEntries` does.
pub fn decode_string_list(bytes: &[u8]) -> Vec<String> {
    let Some(data) = bytes.get(4..) else { return Vec::new() };
    let units: Vec<u16> = data.chunks_exact(2).map(|pair| u16::from_le_bytes([pair[0], pair[1]])).collect();
    units
        .split(|&unit| unit == 0)
        .filter(|part| !part.is_empty())
        .filter_map(|part| String::from_utf16(part).ok())
        .collect()
}

fn rename_on_esp(mount_point: &str, target: &Target) -> Result<Outcome, BlessError> {
    let old_path = match target {
        Target::Path(path) => Path::new(mount_point).join(path),
        Target::Entry(entry) => find_counted(mount_point, entry)?,
    };
    let old = old_path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let Some(new) = strip_boot_counter(&old) else {
        return Ok(Outcome::NotCounted(format!("the booted file {old} has no boot counter")));
    };
    let new_path = old_path.with_file_name(&new);
    if new_path.exists() {
        return Err(BlessError::TargetExists { old, new });
    }

    std::fs::rename(&old_path, &new_path).map_err(|source| BlessError::Rename {
        old: old.clone(),
        new: new.clone(),
        source,
    })?;
    if let Some(directory) = new_path.parent() {
        if let Err(error) = std::fs::File::open(directory).and_then(|d| d.sync_all()) {
            log::warn!("syncing {} failed: {error}", directory.display());
        }
    }
    Ok(Outcome::Blessed { old, new })
}

/// Returns the renames that put every uncounted UKI of `name` with a
/// version above the one in `blessed` behind it: the counter `+0-0` (no
/// try left, none made) makes systemd-boot sort the entry last, and tells
/// [`super::rollback`] that it is no failed update.
///
/// A blessed downgrade needs this: systemd-boot boots the newest version
/// by default, and the user chose the older one.
pub fn newer_entries(name: &str, blessed: &str, files: &[String]) -> Vec<(String, String)> {
    let prefix = format!("{name}-");
    let version_of = |file: &str| file.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(".efi")).map(str::to_string);
    let Some(blessed_version) = version_of(blessed) else { return Vec::new() };
    files
        .iter()
        .filter(|file| strip_boot_counter(file).is_none())
        .filter_map(|file| {
            let version = version_of(file)?;
            let newer = crate::update::version::compare(&version, &blessed_version) == std::cmp::Ordering::Greater;
            newer.then(|| (file.clone(), format!("{prefix}{version}+0-0.efi")))
        })
        .collect()
}

/// Renames the UKIs that [`newer_entries`] names; failures are logged, as
/// the blessing itself succeeded.
fn demote_newer(mount_point: &str, name: &str, blessed: &str) {
    let directory = Path::new(mount_point).join(UKI_DIRECTORY);
    let files: Vec<String> = match std::fs::read_dir(&directory) {
        Ok(entries) => entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect(),
        Err(error) => {
            log::warn!("reading {} failed: {error}", directory.display());
            return;
        }
    };
    for (old, new) in newer_entries(name, blessed, &files) {
        match std::fs::rename(directory.join(&old), directory.join(&new)) {
            Ok(()) => log::info!("{old} is newer than the blessed downgrade; renamed to {new}, so it no longer boots by default"),
            Err(error) => log::warn!("renaming {old} to {new} failed: {error}; the newer version boots again at the next boot"),
        }
    }
    if let Err(error) = std::fs::File::open(&directory).and_then(|d| d.sync_all()) {
        log::warn!("syncing {} failed: {error}", directory.display());
    }
}

/// Finds the file in `EFI/Linux` whose name without counter equals the
/// entry's, because systemd-boot renamed it after choosing it.
fn find_counted(mount_point: &str, entry: &str) -> Result<PathBuf, BlessError> {
    let directory = Path::new(mount_point).join(UKI_DIRECTORY);
    let expected = strip_boot_counter(entry).unwrap_or_else(|| entry.to_string());
    let not_found = || BlessError::EntryNotFound {
        directory: directory.display().to_string(),
        entry: entry.to_string(),
    };
    let entries = std::fs::read_dir(&directory).map_err(|_| not_found())?;
    for file in entries.flatten() {
        let name = file.file_name().to_string_lossy().into_owned();
        let stripped = strip_boot_counter(&name);
        if stripped.is_some_and(|stripped| stripped.eq_ignore_ascii_case(&expected)) {
            return Ok(file.path());
        }
    }
    Err(not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blessed_downgrade_demotes_newer_versions_only() {
        let files: Vec<String> =
            ["app-1.0.0.efi", "app-2.0.0.efi", "app-0.9.0.efi", "app-3.0.0+0-3.efi", "other-5.0.0.efi"].map(String::from).into();
        assert_eq!(newer_entries("app", "app-1.0.0.efi", &files), [("app-2.0.0.efi".to_string(), "app-2.0.0+0-0.efi".to_string())]);
        assert!(newer_entries("app", "app-2.0.0.efi", &files).is_empty());
    }

    #[test]
    fn counter_with_done_is_stripped() {
        assert_eq!(strip_boot_counter("ztms-1.0+2-1.efi").as_deref(), Some("ztms-1.0.efi"));
    }

    #[test]
    fn counter_without_done_is_stripped() {
        assert_eq!(strip_boot_counter("ztms-1.0+3.efi").as_deref(), Some("ztms-1.0.efi"));
    }

    #[test]
    fn exhausted_counter_is_stripped() {
        assert_eq!(strip_boot_counter("ztms-1.0+0-3.efi").as_deref(), Some("ztms-1.0.efi"));
    }

    #[test]
    fn uncounted_name_is_none() {
        assert_eq!(strip_boot_counter("ztms-1.0.efi"), None);
    }

    #[test]
    fn plus_in_version_is_not_a_counter() {
        assert_eq!(strip_boot_counter("ztms-1.0+build.efi"), None);
        assert_eq!(strip_boot_counter("ztms-1.0+build+1.efi").as_deref(), Some("ztms-1.0+build.efi"));
    }

    #[test]
    fn suffix_is_case_insensitive() {
        assert_eq!(strip_boot_counter("ZTMS+1.EFI").as_deref(), Some("ZTMS.EFI"));
    }

    #[test]
    fn counter_needs_digits() {
        assert_eq!(strip_boot_counter("ztms+.efi"), None);
        assert_eq!(strip_boot_counter("ztms+1-.efi"), None);
        assert_eq!(strip_boot_counter("+1.efi"), None);
    }

    #[test]
    fn string_variable_is_decoded() {
        let mut bytes = vec![6, 0, 0, 0];
        for unit in "ztms-1.0+2-1.efi".encode_utf16().chain([0]) {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        assert_eq!(decode_string_variable(&bytes).as_deref(), Some("ztms-1.0+2-1.efi"));
    }

    #[test]
    fn tries_left_reads_counter() {
        assert_eq!(tries_left("x-1.0+2-1.efi"), Some(2));
        assert_eq!(tries_left("x-1.0+0-3.efi"), Some(0));
        assert_eq!(tries_left("x-1.0.efi"), None);
    }

    #[test]
    fn unhealthy_trial_reboots_unless_only_exhausted_entry() {
        assert!(reboot_unhealthy(Some(1), 1));
        assert!(reboot_unhealthy(Some(0), 2));
        assert!(!reboot_unhealthy(Some(0), 1));
        assert!(!reboot_unhealthy(None, 1));
    }

    #[test]
    fn string_list_variable_is_decoded() {
        let mut bytes = vec![6, 0, 0, 0];
        for unit in "a.efi\0b.efi\0".encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        assert_eq!(decode_string_list(&bytes), ["a.efi", "b.efi"]);
    }

    #[test]
    fn short_variable_is_none() {
        assert_eq!(decode_string_variable(&[1, 2]), None);
    }

    #[test]
    fn loader_path_becomes_relative() {
        assert_eq!(esp_relative("\\EFI\\Linux\\ztms-1.0+2-1.efi"), PathBuf::from("EFI/Linux/ztms-1.0+2-1.efi"));
    }

    #[test]
    fn rename_finds_counted_file_by_entry() {
        let esp = tempfile::tempdir().unwrap();
        let directory = esp.path().join(UKI_DIRECTORY);
        std::fs::create_dir_all(&directory).unwrap();
        std::fs::write(directory.join("ztms-1.0+2-1.efi"), b"uki").unwrap();
        std::fs::write(directory.join("ztms-0.9.efi"), b"old").unwrap();

        let mount_point = esp.path().to_str().unwrap();
        let outcome = rename_on_esp(mount_point, &Target::Entry("ztms-1.0+3.efi".into())).unwrap();
        assert_eq!(
            outcome,
            Outcome::Blessed {
                old: "ztms-1.0+2-1.efi".into(),
                new: "ztms-1.0.efi".into()
            }
        );
        assert!(directory.join("ztms-1.0.efi").is_file());
        assert!(!directory.join("ztms-1.0+2-1.efi").exists());
    }

    #[test]
    fn rename_refuses_to_overwrite() {
        let esp = tempfile::tempdir().unwrap();
        let directory = esp.path().join(UKI_DIRECTORY);
        std::fs::create_dir_all(&directory).unwrap();
        std::fs::write(directory.join("a+1.efi"), b"new").unwrap();
        std::fs::write(directory.join("a.efi"), b"other").unwrap();
        let target = Target::Path(PathBuf::from("EFI/Linux/a+1.efi"));
        let result = rename_on_esp(esp.path().to_str().unwrap(), &target);
        assert!(matches!(result, Err(BlessError::TargetExists { .. })));
    }
}
