//! Applies one layer's tar stream to the root filesystem under construction,
//! with the whiteout rules of the OCI image spec (image-spec layer.md).
//!
//! Every path is resolved by this code, one component at a time, inside the
//! root: a symbolic link met on the way is read and its target resolved
//! again from the root (an absolute target) or from the link's directory,
//! and `..` stops at the root, as in a chroot. The kernel is only ever given
//! paths whose components are real directories, and the last component is
//! created with `O_EXCL` or `O_NOFOLLOW`, so no member can write outside the
//! root. This relies on nothing else writing to the root while a layer is
//! applied.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{
    self as unix_fs, DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::OciError;

/// Maximum number of symbolic links followed while resolving one path,
/// the same as the kernel's limit (MAXSYMLINKS in linux/namei.h).
const MAX_SYMLINKS: usize = 40;

const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// Applies the tar stream `reader` of layer `layer` onto `root`.
///
/// Errors reading the stream come back as [`OciError::InvalidLayer`] or
/// [`OciError::TruncatedLayer`]; the caller decides between the two from
/// whether the stream ended early.
pub(super) fn apply(
    reader: &mut dyn Read,
    root: &Path,
    archive: &Path,
    layer: &str,
) -> Result<(), OciError> {
    let mut applier = Applier {
        root,
        archive,
        layer,
        written: HashSet::new(),
        skipped_special: 0,
        first_skipped_special: None,
        ignored_xattrs: 0,
        stripped_setid: 0,
    };
    let mut tar = tar::Archive::new(reader);
    let entries = tar
        .entries()
        .map_err(|source| applier.invalid_layer(source))?;
    for entry in entries {
        let mut entry = entry.map_err(|source| applier.invalid_layer(source))?;
        applier.apply_entry(&mut entry)?;
    }
    applier.log_summary();
    Ok(())
}

/// Whether resolving a directory path may create missing directories.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    Create,
    Stop,
}

struct Applier<'a> {
    root: &'a Path,
    archive: &'a Path,
    layer: &'a str,
    /// Paths (relative to the root, symbolic links resolved) that this layer
    /// created. An opaque whiteout removes everything else in its directory.
    written: HashSet<PathBuf>,
    skipped_special: usize,
    first_skipped_special: Option<String>,
    ignored_xattrs: usize,
    stripped_setid: usize,
}

/// Owner and permission bits of a member.
struct Attributes {
    uid: u32,
    gid: u32,
    mode: u32,
}

impl Applier<'_> {
    fn apply_entry(&mut self, entry: &mut tar::Entry<'_, &mut dyn Read>) -> Result<(), OciError> {
        let path_bytes = entry.path_bytes().into_owned();
        let member = String::from_utf8_lossy(&path_bytes).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let components = self.member_components(&path_bytes, &member, "contains")?;
        let attributes = self.attributes(entry, &member)?;

        let Some((name, parents)) = components.split_last() else {
            // The root directory itself, usually listed as `./`.
            if !kind.is_dir() {
                return Err(self.invalid_member(
                    &member,
                    format!("names the root directory but is a {kind:?}"),
                ));
            }
            let path = self.root.to_path_buf();
            return self.apply_directory_attributes(&path, &member, &attributes);
        };

        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
            return self.apply_whiteout(parents, hidden, &member);
        }

        match kind {
            EntryType::Directory => {
                let relative = self.resolve_parent(parents, name, &member)?;
                self.create_directory(&relative, &member, &attributes)
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let relative = self.resolve_parent(parents, name, &member)?;
                self.create_file(entry, &relative, &member, &attributes)
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|target| target.into_owned())
                    .filter(|target| !target.is_empty())
                    .ok_or_else(|| {
                        self.invalid_member(&member, "is a symbolic link without a target".into())
                    })?;
                let relative = self.resolve_parent(parents, name, &member)?;
                self.create_symlink(&relative, OsStr::from_bytes(&target), &member, &attributes)
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|target| target.into_owned())
                    .unwrap_or_default();
                let relative = self.resolve_parent(parents, name, &member)?;
                self.create_hard_link(&relative, &target, &member)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                // Services get no device nodes from their image: /dev inside a
                // container is provided by the runtime.
                self.skipped_special += 1;
                self.first_skipped_special.get_or_insert(member);
                Ok(())
            }
            other => {
                Err(self
                    .invalid_member(&member, format!("has unsupported tar entry type {other:?}")))
            }
        }
    }

    /// Splits a member path into its components, dropping `.`, empty ones
    /// and a leading `/`. `..` is an error: a layer never needs it, and it is
    /// the classic way out of the extraction directory.
    fn member_components(
        &self,
        path: &[u8],
        member: &str,
        verb: &str,
    ) -> Result<Vec<OsString>, OciError> {
        let mut components = Vec::new();
        for component in path.split(|byte| *byte == b'/') {
            match component {
                b"" | b"." => {}
                b".." => {
                    return Err(OciError::UnsafeMember {
                        archive: self.archive.to_path_buf(),
                        layer: self.layer.to_string(),
                        member: member.to_string(),
                        reason: format!(
                        "{verb} a `..` component, which could write outside the root filesystem"
                    ),
                    })
                }
                name => components.push(OsStr::from_bytes(name).to_os_string()),
            }
        }
        Ok(components)
    }

    fn attributes(
        &mut self,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
        member: &str,
    ) -> Result<Attributes, OciError> {
        let invalid_header = |applier: &Self, field: &str, error: io::Error| {
            applier.invalid_member(member, format!("has an invalid {field} field: {error}"))
        };
        let header = entry.header();
        let is_directory = header.entry_type().is_dir();
        let mut uid = header
            .uid()
            .map_err(|error| invalid_header(self, "uid", error))?;
        let mut gid = header
            .gid()
            .map_err(|error| invalid_header(self, "gid", error))?;
        let mode = header
            .mode()
            .map_err(|error| invalid_header(self, "mode", error))?;

        // PAX records override the header fields; Go's archive/tar writes
        // them for IDs too large for the octal header fields.
        if let Some(extensions) = entry
            .pax_extensions()
            .map_err(|error| invalid_header(self, "PAX", error))?
        {
            for extension in extensions {
                let extension = extension.map_err(|error| invalid_header(self, "PAX", error))?;
                let value = || {
                    extension
                        .value()
                        .ok()
                        .and_then(|value| value.parse::<u64>().ok())
                };
                match extension.key_bytes() {
                    b"uid" => uid = value().unwrap_or(uid),
                    b"gid" => gid = value().unwrap_or(gid),
                    key if key.starts_with(b"SCHILY.xattr.")
                        || key.starts_with(b"LIBARCHIVE.xattr.") =>
                    {
                        self.ignored_xattrs += 1;
                    }
                    _ => {}
                }
            }
        }

        let uid = u32::try_from(uid).map_err(|_| {
            self.invalid_member(
                member,
                format!("has uid {uid}, above the maximum {}", u32::MAX),
            )
        })?;
        let gid = u32::try_from(gid).map_err(|_| {
            self.invalid_member(
                member,
                format!("has gid {gid}, above the maximum {}", u32::MAX),
            )
        })?;

        // Setuid and setgid bits are dropped: services run with no_new_privs,
        // under which execve ignores them anyway, and a root filesystem
        // without them has nothing to escalate with should that ever change.
        // The sticky bit stays, because /tmp needs it.
        if mode & 0o6000 != 0 && !is_directory {
            self.stripped_setid += 1;
        }
        let mode = mode & 0o1777;
        Ok(Attributes { uid, gid, mode })
    }

    /// Resolves the directory that holds a member and returns the member's
    /// path relative to the root, creating missing directories (mode 0755,
    /// owned by the user running the import) on the way.
    fn resolve_parent(
        &mut self,
        parents: &[OsString],
        name: &OsStr,
        member: &str,
    ) -> Result<PathBuf, OciError> {
        let directory = self
            .resolve_directory(parents, Missing::Create, member)?
            .expect("Missing::Create always returns a directory");
        Ok(directory.join(name))
    }

    /// Resolves `components` to a real directory under the root, following
    /// symbolic links inside the root. Returns `None` with `Missing::Stop`
    /// when a component does not exist or is not a directory.
    fn resolve_directory(
        &mut self,
        components: &[OsString],
        missing: Missing,
        member: &str,
    ) -> Result<Option<PathBuf>, OciError> {
        let mut resolved = PathBuf::new();
        let mut pending: Vec<OsString> = components.iter().rev().cloned().collect();
        let mut links_followed = 0;

        while let Some(component) = pending.pop() {
            match component.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    // Only symbolic link targets contain `..`; it stops at the root.
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            let candidate = resolved.join(&component);
            let full = self.root.join(&candidate);
            match fs::symlink_metadata(&full) {
                Ok(metadata) if metadata.is_dir() => resolved = candidate,
                Ok(metadata) if metadata.file_type().is_symlink() => {
                    links_followed += 1;
                    if links_followed > MAX_SYMLINKS {
                        let reason = format!(
                            "has a parent path that passes more than {MAX_SYMLINKS} symbolic \
                             links, probably a loop"
                        );
                        return Err(self.invalid_member(member, reason));
                    }
                    let target = fs::read_link(&full)
                        .map_err(|source| self.write_error(member, &full, source))?;
                    let target = target.as_os_str().as_bytes();
                    if target.starts_with(b"/") {
                        resolved = PathBuf::new();
                    }
                    for part in target.split(|byte| *byte == b'/').rev() {
                        pending.push(OsStr::from_bytes(part).to_os_string());
                    }
                }
                Ok(_) if missing == Missing::Stop => return Ok(None),
                Ok(_) => {
                    let reason = format!(
                        "needs {} to be a directory, but an earlier member or layer made it a file",
                        candidate.display()
                    );
                    return Err(self.invalid_member(member, reason));
                }
                Err(error)
                    if error.kind() == io::ErrorKind::NotFound && missing == Missing::Stop =>
                {
                    return Ok(None)
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&full)
                        .map_err(|source| self.write_error(member, &full, source))?;
                    self.written.insert(candidate.clone());
                    resolved = candidate;
                }
                Err(source) => return Err(self.write_error(member, &full, source)),
            }
        }
        Ok(Some(resolved))
    }

    fn apply_whiteout(
        &mut self,
        parents: &[OsString],
        hidden: &[u8],
        member: &str,
    ) -> Result<(), OciError> {
        let Some(directory) = self.resolve_directory(parents, Missing::Stop, member)? else {
            return Ok(());
        };
        if hidden == &OPAQUE_WHITEOUT[WHITEOUT_PREFIX.len()..] {
            return self.make_opaque(&directory, member);
        }
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // Other `.wh..wh.` names are aufs bookkeeping (hard link
            // directories), not content.
            return Ok(());
        }
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(self.invalid_member(member, "is a whiteout that names no file".into()));
        }
        let relative = directory.join(OsStr::from_bytes(hidden));
        // A whiteout hides lower layers only, never a file of its own layer.
        if self.written.contains(&relative) {
            return Ok(());
        }
        let path = self.root.join(&relative);
        remove_existing(&path).map_err(|source| self.write_error(member, &path, source))
    }

    /// Removes from `directory` everything that this layer did not write,
    /// recursing into directories that it did.
    fn make_opaque(&self, directory: &Path, member: &str) -> Result<(), OciError> {
        let path = self.root.join(directory);
        let children =
            fs::read_dir(&path).map_err(|source| self.write_error(member, &path, source))?;
        for child in children {
            let child = child.map_err(|source| self.write_error(member, &path, source))?;
            let relative = directory.join(child.file_name());
            let child_path = child.path();
            if !self.written.contains(&relative) {
                remove_existing(&child_path)
                    .map_err(|source| self.write_error(member, &child_path, source))?;
            } else if child.file_type().is_ok_and(|kind| kind.is_dir()) {
                self.make_opaque(&relative, member)?;
            }
        }
        Ok(())
    }

    fn create_directory(
        &mut self,
        relative: &Path,
        member: &str,
        attributes: &Attributes,
    ) -> Result<(), OciError> {
        let path = self.root.join(relative);
        let is_directory = fs::symlink_metadata(&path).is_ok_and(|metadata| metadata.is_dir());
        if !is_directory {
            remove_existing(&path).map_err(|source| self.write_error(member, &path, source))?;
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(|source| self.write_error(member, &path, source))?;
        }
        self.written.insert(relative.to_path_buf());
        self.apply_directory_attributes(&path, member, attributes)
    }

    fn apply_directory_attributes(
        &self,
        path: &Path,
        member: &str,
        attributes: &Attributes,
    ) -> Result<(), OciError> {
        let directory = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|source| self.write_error(member, path, source))?;
        self.set_attributes(&directory, path, member, attributes)
    }

    fn create_file(
        &mut self,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
        relative: &Path,
        member: &str,
        attributes: &Attributes,
    ) -> Result<(), OciError> {
        let path = self.root.join(relative);
        remove_existing(&path).map_err(|source| self.write_error(member, &path, source))?;
        // create_new is O_EXCL, which fails rather than follow a symbolic link.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|source| self.write_error(member, &path, source))?;
        self.written.insert(relative.to_path_buf());

        let expected = entry.size();
        let mut copied = 0u64;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match entry.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(self.invalid_layer(source)),
            };
            file.write_all(&buffer[..read])
                .map_err(|source| self.write_error(member, &path, source))?;
            copied += read as u64;
        }
        if copied != expected {
            return Err(OciError::TruncatedLayer {
                archive: self.archive.to_path_buf(),
                layer: self.layer.to_string(),
            });
        }
        self.set_attributes(&file, &path, member, attributes)
    }

    fn create_symlink(
        &mut self,
        relative: &Path,
        target: &OsStr,
        member: &str,
        attributes: &Attributes,
    ) -> Result<(), OciError> {
        let path = self.root.join(relative);
        remove_existing(&path).map_err(|source| self.write_error(member, &path, source))?;
        // The target is stored as written, absolute or not: it is resolved
        // inside the container's root at run time, never here.
        unix_fs::symlink(target, &path)
            .map_err(|source| self.write_error(member, &path, source))?;
        self.written.insert(relative.to_path_buf());
        let metadata = fs::symlink_metadata(&path)
            .map_err(|source| self.write_error(member, &path, source))?;
        if metadata.uid() != attributes.uid || metadata.gid() != attributes.gid {
            unix_fs::lchown(&path, Some(attributes.uid), Some(attributes.gid))
                .map_err(|source| self.ownership_error(member, attributes, source))?;
        }
        Ok(())
    }

    /// Links `relative` to an earlier member. The target is resolved like any
    /// member path, so it is inside the root; its last component is not
    /// followed, as link(2) does not follow it either.
    fn create_hard_link(
        &mut self,
        relative: &Path,
        target: &[u8],
        member: &str,
    ) -> Result<(), OciError> {
        let components =
            self.member_components(target, member, "is a hard link whose target contains")?;
        let target_display = String::from_utf8_lossy(target);
        let missing_target = |applier: &Self| {
            let reason = format!(
                "is a hard link to {target_display:?}, which is not an earlier member of the image"
            );
            applier.invalid_member(member, reason)
        };
        let Some((name, parents)) = components.split_last() else {
            return Err(missing_target(self));
        };
        let Some(directory) = self.resolve_directory(parents, Missing::Stop, member)? else {
            return Err(missing_target(self));
        };
        let target_relative = directory.join(name);
        if target_relative == relative {
            return Ok(());
        }
        let target_path = self.root.join(&target_relative);
        match fs::symlink_metadata(&target_path) {
            Ok(metadata) if metadata.is_dir() => {
                return Err(self.invalid_member(
                    member,
                    format!("is a hard link to directory {target_display:?}"),
                ));
            }
            Ok(_) => {}
            Err(_) => return Err(missing_target(self)),
        }
        let path = self.root.join(relative);
        remove_existing(&path).map_err(|source| self.write_error(member, &path, source))?;
        // std::fs::hard_link calls linkat(2) without AT_SYMLINK_FOLLOW.
        fs::hard_link(&target_path, &path)
            .map_err(|source| self.write_error(member, &path, source))?;
        self.written.insert(relative.to_path_buf());
        Ok(())
    }

    /// Sets owner and mode through an open descriptor, so no path is
    /// resolved again.
    fn set_attributes(
        &self,
        file: &File,
        path: &Path,
        member: &str,
        attributes: &Attributes,
    ) -> Result<(), OciError> {
        let metadata = file
            .metadata()
            .map_err(|source| self.write_error(member, path, source))?;
        if metadata.uid() != attributes.uid || metadata.gid() != attributes.gid {
            unix_fs::fchown(file, Some(attributes.uid), Some(attributes.gid))
                .map_err(|source| self.ownership_error(member, attributes, source))?;
        }
        file.set_permissions(fs::Permissions::from_mode(attributes.mode))
            .map_err(|source| self.write_error(member, path, source))
    }

    fn log_summary(&self) {
        let archive = self.archive.display();
        let layer = self.layer;
        if let Some(first) = &self.first_skipped_special {
            log::warn!(
                "{archive}: layer {layer}: skipped {} device nodes and FIFOs (first: {first}); \
                 services get no devices from their image",
                self.skipped_special
            );
        }
        if self.ignored_xattrs > 0 {
            log::warn!(
                "{archive}: layer {layer}: ignored {} extended attributes, file capabilities \
                 included; services run with no_new_privs, under which execve grants no file \
                 capabilities",
                self.ignored_xattrs
            );
        }
        if self.stripped_setid > 0 {
            log::info!(
                "{archive}: layer {layer}: removed setuid and setgid bits from {} files",
                self.stripped_setid
            );
        }
    }

    fn invalid_layer(&self, source: io::Error) -> OciError {
        OciError::InvalidLayer {
            archive: self.archive.to_path_buf(),
            layer: self.layer.to_string(),
            source,
        }
    }

    fn invalid_member(&self, member: &str, reason: String) -> OciError {
        OciError::InvalidMember {
            archive: self.archive.to_path_buf(),
            layer: self.layer.to_string(),
            member: member.to_string(),
            reason,
        }
    }

    fn write_error(&self, member: &str, path: &Path, source: io::Error) -> OciError {
        OciError::Write {
            archive: self.archive.to_path_buf(),
            layer: self.layer.to_string(),
            member: member.to_string(),
            path: path.to_path_buf(),
            source,
        }
    }

    fn ownership_error(
        &self,
        member: &str,
        attributes: &Attributes,
        source: io::Error,
    ) -> OciError {
        OciError::Ownership {
            archive: self.archive.to_path_buf(),
            layer: self.layer.to_string(),
            member: member.to_string(),
            uid: attributes.uid,
            gid: attributes.gid,
            source,
        }
    }
}

/// Removes whatever is at `path` without following a symbolic link there.
/// A missing path is not an error.
fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}
