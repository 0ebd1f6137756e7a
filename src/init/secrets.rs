//! The secrets phase: after `/data` is mounted and before any service
//! starts, every secret of the plan exists as a file in `/data/secrets`
//! with its owner and mode 0400.
//!
//! A missing secret is generated from 32 bytes of getrandom(2), written as
//! URL-safe base64 without padding or newline (43 characters). The file is
//! created under a temporary name with O_EXCL, synced, renamed into place
//! and the directory synced, so a power cut leaves either no secret or a
//! complete one. An existing secret is never rewritten, because a database
//! initialised with it would stop accepting it; only its owner and mode
//! are corrected. No value is ever logged.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::plan::AppliancePlan;
use crate::runtime::{SecretPlan, SECRETS_DIR};

/// Random bytes in each generated secret.
pub const SECRET_BYTES: usize = 32;
/// Mode of the secrets directory: only root enters it, and crun, running
/// as root, binds each file into its containers.
const DIR_MODE: u32 = 0o700;

/// A secret file that could not be ensured.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A system call on the file or its directory failed.
    #[error("{action} {path} failed: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// Something other than a regular file has the secret's name.
    #[error("{path} is not a regular file ({kind}); move it away so that ztms-init generates the secret")]
    NotAFile { path: PathBuf, kind: &'static str },
    /// An empty file, which no service can use as a secret.
    #[error("{path} is empty; delete it so that ztms-init generates the secret, and update the services that use it")]
    Empty { path: PathBuf },
    /// getrandom(2) failed.
    #[error("generating {path} failed: reading random bytes failed: {reason}")]
    Random { path: PathBuf, reason: String },
}

/// Outcome of [`ensure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// The file was missing and now contains a new secret.
    Generated,
    /// The file existed with the planned owner and mode.
    Kept,
    /// The file existed with another owner or mode, now corrected.
    Repaired { uid: u32, gid: u32, mode: u32 },
}

/// Runs the phase for `plan`: ensures each secret in [`SECRETS_DIR`] and
/// returns one error that lists every secret that failed.
pub fn run(plan: &AppliancePlan) -> Result<(), String> {
    if plan.secrets.is_empty() {
        log::info!("secrets: no service lists a secret");
        return Ok(());
    }
    let dir = Path::new(SECRETS_DIR);
    prepare_dir(dir).map_err(|error| error.to_string())?;

    let mut failures = Vec::new();
    let mut generated = 0;
    for secret in &plan.secrets {
        let services = secret.services.join(", ");
        match ensure(dir, secret, fill_random) {
            Ok(Ensured::Generated) => {
                generated += 1;
                log::info!("secrets: generated {} for {services}", secret.name);
                if secret.show {
                    show_on_console(&plan.name, secret);
                }
            }
            Ok(Ensured::Kept) => log::debug!("secrets: kept {} for {services}", secret.name),
            Ok(Ensured::Repaired { uid, gid, mode }) => log::warn!(
                "secrets: {} had owner {uid}:{gid} and mode {mode:04o}; set {}:{} and {:04o}",
                secret.name,
                secret.uid,
                secret.gid,
                secret.mode
            ),
            Err(error) => {
                log::error!("secrets: {error}; services {services} will not start");
                failures.push(error.to_string());
            }
        }
    }
    log::info!(
        "secrets: {} ready in {SECRETS_DIR}, {generated} generated at this boot",
        plan.secrets.len() - failures.len()
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Prints a newly generated secret once, on the console only, like the
/// recovery key: the log and the kernel's ring buffer never see it.
fn show_on_console(appliance: &str, secret: &SecretPlan) {
    let value = match fs::read_to_string(&secret.path) {
        Ok(value) => value,
        Err(error) => {
            log::error!("secrets: cannot read {} to show it: {error}", secret.path.display());
            return;
        }
    };
    let text = format!(
        "\n\
         ================================================================\n\
         Secret {} of {appliance} (for {}):\n\
         \n    {}\n\n\
         It is shown only now. It stays in {} on the encrypted data\n\
         volume; delete that file to have a new one made at the next boot.\n\
         ================================================================\n\n",
        secret.name,
        secret.services.join(", "),
        value.trim(),
        secret.path.display()
    );
    match super::storage::prompt::Console::open() {
        Ok(mut console) => console.say(&text),
        Err(error) => log::error!("secrets: cannot show {} on the console: {error}", secret.name),
    }
}

/// Generates the secret file `path` of `service` if it is missing, when
/// the container starts. A secret deleted to rotate it is then made again
/// at the service's next start, with the service's user as owner.
pub fn ensure_for_service(path: &Path, service: &str, uid: u32, gid: u32) -> Result<(), String> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(format!("secret path {} has no directory or file name", path.display()));
    };
    let secret = SecretPlan {
        name: name.to_string_lossy().into_owned(),
        path: path.to_path_buf(),
        uid,
        gid,
        mode: crate::runtime::SECRET_MODE,
        services: vec![service.to_string()],
        show: false,
    };
    match ensure(dir, &secret, fill_random) {
        Ok(Ensured::Generated) => {
            log::info!("secrets: generated {} for {service}", secret.name);
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// Creates `dir` when `/data` is new (or a tmpfs). Otherwise sets its
/// owner to root and its mode to 0700 where they differ.
fn prepare_dir(dir: &Path) -> Result<(), SecretError> {
    let io_error = |action, source| SecretError::Io {
        action,
        path: dir.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(dir) {
        Ok(metadata) if metadata.is_dir() => {
            let mode = metadata.mode() & 0o7777;
            if (metadata.uid(), metadata.gid(), mode) != (0, 0, DIR_MODE) {
                std::os::unix::fs::chown(dir, Some(0), Some(0)).map_err(|source| io_error("changing the owner of", source))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(|source| io_error("changing the mode of", source))?;
                log::warn!(
                    "secrets: {} had owner {}:{} and mode {mode:04o}; set 0:0 and {DIR_MODE:04o}",
                    dir.display(),
                    metadata.uid(),
                    metadata.gid()
                );
            }
            Ok(())
        }
        Ok(metadata) => Err(SecretError::NotAFile {
            path: dir.to_path_buf(),
            kind: file_kind(&metadata),
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|source| io_error("creating", source)),
        Err(source) => Err(io_error("reading", source)),
    }
}

/// Makes sure `dir/<name>` contains the secret with the planned owner and
/// mode; `fill` supplies the random bytes of a new one.
pub fn ensure(
    dir: &Path,
    secret: &SecretPlan,
    fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
) -> Result<Ensured, SecretError> {
    let path = dir.join(&secret.name);
    match fs::symlink_metadata(&path) {
        Ok(metadata) => repair(&path, secret, &metadata),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            generate(dir, &path, secret, fill)?;
            Ok(Ensured::Generated)
        }
        Err(source) => Err(SecretError::Io {
            action: "reading",
            path,
            source,
        }),
    }
}

/// Checks an existing secret and corrects its owner and mode; its
/// contents stay as they are.
fn repair(path: &Path, secret: &SecretPlan, metadata: &fs::Metadata) -> Result<Ensured, SecretError> {
    if !metadata.is_file() {
        return Err(SecretError::NotAFile {
            path: path.to_path_buf(),
            kind: file_kind(metadata),
        });
    }
    if metadata.len() == 0 {
        return Err(SecretError::Empty { path: path.to_path_buf() });
    }

    let mode = metadata.mode() & 0o7777;
    if (metadata.uid(), metadata.gid(), mode) == (secret.uid, secret.gid, secret.mode) {
        return Ok(Ensured::Kept);
    }
    let io_error = |action, source| SecretError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    // The mode changes before the owner, so that no other user can read
    // the file from this point on.
    fs::set_permissions(path, fs::Permissions::from_mode(secret.mode)).map_err(|source| io_error("changing the mode of", source))?;
    std::os::unix::fs::chown(path, Some(secret.uid), Some(secret.gid)).map_err(|source| io_error("changing the owner of", source))?;
    Ok(Ensured::Repaired {
        uid: metadata.uid(),
        gid: metadata.gid(),
        mode,
    })
}

/// Writes a new secret to a temporary file and renames it into place.
fn generate(
    dir: &Path,
    path: &Path,
    secret: &SecretPlan,
    fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
) -> Result<(), SecretError> {
    let mut bytes = [0u8; SECRET_BYTES];
    fill(&mut bytes).map_err(|reason| SecretError::Random {
        path: path.to_path_buf(),
        reason,
    })?;
    let encoded = URL_SAFE_NO_PAD.encode(bytes);
    bytes.fill(0);

    // The leading dot keeps the temporary name apart from every valid
    // secret name. A leftover from a power cut is incomplete, so it goes.
    let temporary = dir.join(format!(".{}.tmp", secret.name));
    let io_error = |action, path: &Path, source| SecretError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    match fs::remove_file(&temporary) {
        Ok(()) => log::warn!("secrets: removed the incomplete {} of an earlier boot", temporary.display()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(io_error("removing", &temporary, source)),
    }

    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(secret.mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temporary)
        .map_err(|source| io_error("creating", &temporary, source))?;
    // The umask may have cleared bits of the mode given to open(2).
    file.set_permissions(fs::Permissions::from_mode(secret.mode))
        .map_err(|source| io_error("changing the mode of", &temporary, source))?;
    std::os::unix::fs::fchown(&file, Some(secret.uid), Some(secret.gid))
        .map_err(|source| io_error("changing the owner of", &temporary, source))?;
    file.write_all(encoded.as_bytes())
        .map_err(|source| io_error("writing", &temporary, source))?;
    file.sync_all().map_err(|source| io_error("syncing", &temporary, source))?;
    drop(file);

    fs::rename(&temporary, path).map_err(|source| io_error("renaming the temporary file to", path, source))?;
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(|source| io_error("syncing the directory", dir, source))
}

fn fill_random(bytes: &mut [u8]) -> Result<(), String> {
    getrandom::fill(bytes).map_err(|error| error.to_string())
}

fn file_kind(metadata: &fs::Metadata) -> &'static str {
    let kind = metadata.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a secret owned by the user running the test, so that the
    /// test needs no root.
    fn secret(name: &str) -> SecretPlan {
        SecretPlan {
            name: name.into(),
            path: Path::new(SECRETS_DIR).join(name),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode: 0o400,
            services: vec!["postgres".into()],
            show: false,
        }
    }

    fn filled_with(value: u8) -> impl FnOnce(&mut [u8]) -> Result<(), String> {
        move |bytes: &mut [u8]| {
            bytes.fill(value);
            Ok(())
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn generate_creates_file_with_mode_0400() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = ensure(dir.path(), &secret("db-password"), filled_with(7)).unwrap();

        assert_eq!(outcome, Ensured::Generated);
        let path = dir.path().join("db-password");
        assert_eq!(mode_of(&path), 0o400);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, URL_SAFE_NO_PAD.encode([7u8; SECRET_BYTES]));
        assert_eq!(text.len(), 43);
        assert!(!text.contains('\n'));
        assert!(!dir.path().join(".db-password.tmp").exists());
    }

    #[test]
    fn generated_secret_uses_url_safe_alphabet() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), &secret("token"), filled_with(0xfb)).unwrap();
        let text = fs::read_to_string(dir.path().join("token")).unwrap();
        assert!(text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{text}");
    }

    #[test]
    fn second_ensure_keeps_secret() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), &secret("token"), filled_with(1)).unwrap();
        let first = fs::read(dir.path().join("token")).unwrap();

        let outcome = ensure(dir.path(), &secret("token"), filled_with(2)).unwrap();
        assert_eq!(outcome, Ensured::Kept);
        assert_eq!(fs::read(dir.path().join("token")).unwrap(), first);
    }

    #[test]
    fn existing_secret_is_never_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "chosen-by-hand").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();

        let outcome = ensure(dir.path(), &secret("token"), |_: &mut [u8]| panic!("random bytes were requested")).unwrap();
        assert_eq!(outcome, Ensured::Kept);
        assert_eq!(fs::read_to_string(&path).unwrap(), "chosen-by-hand");
    }

    #[test]
    fn wrong_mode_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "value").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

        let outcome = ensure(dir.path(), &secret("token"), filled_with(1)).unwrap();
        assert!(matches!(outcome, Ensured::Repaired { mode: 0o644, .. }), "{outcome:?}");
        assert_eq!(mode_of(&path), 0o400);
        assert_eq!(fs::read_to_string(&path).unwrap(), "value");
    }

    #[test]
    fn leftover_temporary_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".token.tmp"), "half").unwrap();

        let outcome = ensure(dir.path(), &secret("token"), filled_with(3)).unwrap();
        assert_eq!(outcome, Ensured::Generated);
        assert_eq!(fs::read_to_string(dir.path().join("token")).unwrap(), URL_SAFE_NO_PAD.encode([3u8; SECRET_BYTES]));
        assert!(!dir.path().join(".token.tmp").exists());
    }

    #[test]
    fn directory_in_place_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("token")).unwrap();

        let error = ensure(dir.path(), &secret("token"), filled_with(1)).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&dir.path().join("token").display().to_string()), "{message}");
        assert!(message.contains("not a regular file (a directory)"), "{message}");
    }

    #[test]
    fn empty_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("token"), "").unwrap();

        let error = ensure(dir.path(), &secret("token"), filled_with(1)).unwrap_err();
        assert!(matches!(error, SecretError::Empty { .. }), "{error}");
    }

    #[test]
    fn deleted_secret_regenerated_at_service_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        ensure_for_service(&path, "postgres", uid, gid).unwrap();
        let first = fs::read(&path).unwrap();

        ensure_for_service(&path, "postgres", uid, gid).unwrap();
        assert_eq!(fs::read(&path).unwrap(), first, "an existing secret was rewritten");

        fs::remove_file(&path).unwrap();
        ensure_for_service(&path, "postgres", uid, gid).unwrap();
        assert_ne!(fs::read(&path).unwrap(), first, "the rotated secret has the old value");
        assert_eq!(mode_of(&path), 0o400);
    }

    #[test]
    fn random_failure_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let error = ensure(dir.path(), &secret("token"), |_: &mut [u8]| Err("no entropy".into())).unwrap_err();

        assert!(error.to_string().contains("no entropy"), "{error}");
        assert!(error.to_string().contains("token"), "{error}");
        assert!(!dir.path().join("token").exists());
    }
}
