//! The root tree of one build: a hard-linked copy of the cached base with the
//! overlays, ztms-init and the runtime plan laid over it.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::host::run;
use super::BuildError;

/// Path of ztms-init inside the root image.
pub const INIT_PATH: &str = "usr/lib/ztms/ztms-init";
/// Path of the runtime plan inside the root image.
pub const PLAN_PATH: &str = "etc/ztms/appliance.json";

/// Copies `base` to `tree` with hard links. Later steps never write through
/// a link: `write_file` unlinks first, so the cache stays intact.
pub fn link_copy(base: &Path, tree: &Path) -> Result<(), BuildError> {
    run("tree", Command::new("cp").arg("-al").arg(base).arg(tree))?;
    Ok(())
}

/// Resolves `relative` inside `root` as if `root` were `/`: symlinks met on
/// the way are followed within the tree, never on the host.
pub fn resolve_in_root(root: &Path, relative: &Path) -> PathBuf {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<PathBuf> = relative
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(PathBuf::from(part)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == Path::new("..") {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match fs::read_link(root.join(&candidate)) {
            Ok(target) if hops < 40 && !pending.is_empty() => {
                hops += 1;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for component in target.components().rev() {
                    match component {
                        Component::Normal(p) => pending.push(PathBuf::from(p)),
                        Component::ParentDir => pending.push(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    root.join(resolved)
}

/// Writes `data` at `relative` inside `tree`, replacing (never writing
/// through) an existing file.
pub fn write_file(tree: &Path, relative: &str, data: &[u8], mode: u32) -> Result<(), BuildError> {
    let path = resolve_in_root(tree, Path::new(relative));
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| BuildError::io("create directory", parent, e))?;
    }
    remove_existing(&path)?;
    fs::write(&path, data).map_err(|e| BuildError::io("write file", &path, e))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .map_err(|e| BuildError::io("set mode", &path, e))
}

fn remove_existing(path: &Path) -> Result<(), BuildError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(BuildError::Overlay(format!(
            "{} is a directory in the image and cannot be replaced by a file",
            path.display()
        ))),
        Ok(_) => fs::remove_file(path).map_err(|e| BuildError::io("replace file", path, e)),
        Err(_) => Ok(()),
    }
}

/// Lays the directory `overlay` over `tree`: files and symlinks replace what
/// is there, directories are merged.
pub fn apply_overlay(overlay: &Path, tree: &Path) -> Result<usize, BuildError> {
    let mut count = 0;
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let source_dir = overlay.join(&relative);
        let mut entries: Vec<_> = fs::read_dir(&source_dir)
            .map_err(|e| BuildError::io("read overlay", &source_dir, e))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let source = entry.path();
            let inner = relative.join(entry.file_name());
            let meta = fs::symlink_metadata(&source).map_err(|e| BuildError::io("read overlay", &source, e))?;
            let target = resolve_in_root(tree, &inner);
            if meta.is_dir() {
                if !target.is_dir() {
                    remove_existing(&target)?;
                    fs::create_dir_all(&target).map_err(|e| BuildError::io("create directory", &target, e))?;
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(meta.permissions().mode() & 0o7777))
                    .map_err(|e| BuildError::io("set mode", &target, e))?;
                pending.push(inner);
            } else if meta.file_type().is_symlink() {
                let link = fs::read_link(&source).map_err(|e| BuildError::io("read overlay", &source, e))?;
                remove_existing(&target)?;
                symlink(&link, &target).map_err(|e| BuildError::io("create symlink", &target, e))?;
                count += 1;
            } else if meta.is_file() {
                let data = fs::read(&source).map_err(|e| BuildError::io("read overlay", &source, e))?;
                let relative_text = inner.to_string_lossy();
                write_file(tree, &relative_text, &data, meta.permissions().mode() & 0o7777)?;
                count += 1;
            } else {
                return Err(BuildError::Overlay(format!(
                    "{} is not a file, directory or symlink; overlays cannot carry device nodes or sockets",
                    source.display()
                )));
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_follows_absolute_links_inside_root() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("usr/lib")).unwrap();
        symlink("/usr/lib", root.path().join("lib")).unwrap();
        let resolved = resolve_in_root(root.path(), Path::new("lib/x"));
        assert_eq!(resolved, root.path().join("usr/lib/x"));
    }

    #[test]
    fn resolve_never_leaves_root() {
        let root = tempfile::tempdir().unwrap();
        symlink("../../../../etc", root.path().join("escape")).unwrap();
        let resolved = resolve_in_root(root.path(), Path::new("escape/passwd"));
        assert_eq!(resolved, root.path().join("etc/passwd"));
    }

    #[test]
    fn write_file_does_not_modify_hard_link() {
        let root = tempfile::tempdir().unwrap();
        let original = root.path().join("cache-file");
        fs::write(&original, b"cached").unwrap();
        fs::hard_link(&original, root.path().join("file")).unwrap();
        write_file(root.path(), "file", b"new", 0o644).unwrap();
        assert_eq!(fs::read(&original).unwrap(), b"cached");
        assert_eq!(fs::read(root.path().join("file")).unwrap(), b"new");
    }

    #[test]
    fn overlay_merges_directories() {
        let overlay = tempfile::tempdir().unwrap();
        let tree = tempfile::tempdir().unwrap();
        fs::create_dir_all(overlay.path().join("etc/app")).unwrap();
        fs::write(overlay.path().join("etc/app/conf"), b"x").unwrap();
        fs::create_dir_all(tree.path().join("etc")).unwrap();
        fs::write(tree.path().join("etc/keep"), b"k").unwrap();
        assert_eq!(apply_overlay(overlay.path(), tree.path()).unwrap(), 1);
        assert!(tree.path().join("etc/keep").exists());
        assert_eq!(fs::read(tree.path().join("etc/app/conf")).unwrap(), b"x");
    }
}
