//! Resolves a path inside a container image to the real directory it
//! names, following the image's symlinks inside the image.
//!
//! A tmpfs mounted on a symlink fails (crun refuses to mount over a
//! symlink), and `/var/run -> /run` is common. Symlinks are read from the
//! image and their targets are interpreted relative to the image root, as
//! `chroot` would, so an absolute or `..`-climbing link never leads to a
//! host path.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed while resolving one path before it counts as a loop;
/// the kernel's limit for one lookup (`MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// What one path of the image is, without following a final symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Missing,
    Directory,
    /// A file, device node, socket or FIFO.
    Other,
    Symlink(PathBuf),
}

/// Read access to the entries of an image tree.
pub trait RootfsTree {
    /// Returns the entry at `path`, an absolute path inside the image whose
    /// parent directories are already resolved (contain no symlink).
    fn entry(&self, path: &Path) -> io::Result<Entry>;
}

/// An image tree in a host directory: the staged rootfs at build time, or
/// the rootfs inside the mounted root image at boot.
#[derive(Debug, Clone)]
pub struct RootfsDir(pub PathBuf);

impl RootfsTree for RootfsDir {
    fn entry(&self, path: &Path) -> io::Result<Entry> {
        let relative = path.strip_prefix("/").unwrap_or(path);
        let host = self.0.join(relative);
        let metadata = match std::fs::symlink_metadata(&host) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Entry::Missing),
            // A parent that is a file, not a directory.
            Err(error) if error.raw_os_error() == Some(libc::ENOTDIR) => return Ok(Entry::Missing),
            Err(error) => return Err(error),
        };
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            Ok(Entry::Symlink(std::fs::read_link(&host)?))
        } else if file_type.is_dir() {
            Ok(Entry::Directory)
        } else {
            Ok(Entry::Other)
        }
    }
}

/// A tree for when the image is not at hand, as in `ztms audit` on a
/// definition: every path is missing, so no symlink is followed and only
/// the mounts that do not depend on the image are planned.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoImage;

impl RootfsTree for NoImage {
    fn entry(&self, _path: &Path) -> io::Result<Entry> {
        Ok(Entry::Missing)
    }
}

/// A path resolved inside an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Absolute path inside the image, free of symlinks up to its first
    /// missing component.
    pub path: PathBuf,
    /// Every component exists in the image.
    pub exists: bool,
}

/// Resolves `path` inside `tree`, following symlinks inside the image.
///
/// Components after the first missing one are taken as written. `..` at
/// the image root stays at the root. Fails on a symlink loop or when the
/// tree cannot be read.
pub fn resolve_in_rootfs(tree: &dyn RootfsTree, path: &Path) -> io::Result<Resolved> {
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_components(&mut pending, path);

    let mut resolved = PathBuf::from("/");
    let mut exists = true;
    let mut followed = 0;

    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        if !exists {
            resolved = candidate;
            continue;
        }

        match tree.entry(&candidate)? {
            Entry::Symlink(target) => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("more than {MAX_SYMLINKS} symlinks, probably a loop, at {}", candidate.display()),
                    ));
                }
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                let mut target_parts = VecDeque::new();
                push_components(&mut target_parts, &target);
                while let Some(target_part) = target_parts.pop_back() {
                    pending.push_front(target_part);
                }
            }
            Entry::Missing => {
                exists = false;
                resolved = candidate;
            }
            Entry::Directory | Entry::Other => resolved = candidate,
        }
    }
    Ok(Resolved { path: resolved, exists })
}

fn push_components(queue: &mut VecDeque<OsString>, path: &Path) {
    for component in path.components() {
        match component {
            Component::Normal(part) => queue.push_back(part.to_os_string()),
            Component::ParentDir => queue.push_back("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn image() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for directory in ["run", "tmp", "var", "etc", "srv/real"] {
            std::fs::create_dir_all(root.path().join(directory)).unwrap();
        }
        symlink("/run", root.path().join("var/run")).unwrap();
        symlink("../../../../etc", root.path().join("srv/escape")).unwrap();
        symlink("real", root.path().join("srv/relative")).unwrap();
        symlink("loop-b", root.path().join("loop-a")).unwrap();
        symlink("loop-a", root.path().join("loop-b")).unwrap();
        root
    }

    fn resolve(root: &Path, path: &str) -> io::Result<Resolved> {
        resolve_in_rootfs(&RootfsDir(root.to_path_buf()), Path::new(path))
    }

    #[test]
    fn absolute_symlink_stays_in_image() {
        let root = image();
        let resolved = resolve(root.path(), "/var/run/postgresql").unwrap();
        assert_eq!(resolved.path, Path::new("/run/postgresql"));
        assert!(!resolved.exists);
    }

    #[test]
    fn climbing_symlink_stops_at_image_root() {
        let root = image();
        let resolved = resolve(root.path(), "/srv/escape").unwrap();
        assert_eq!(resolved.path, Path::new("/etc"));
        assert!(resolved.exists);
    }

    #[test]
    fn relative_symlink_resolves_beside_link() {
        let root = image();
        assert_eq!(resolve(root.path(), "/srv/relative").unwrap().path, Path::new("/srv/real"));
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let root = image();
        assert!(resolve(root.path(), "/loop-a/x").is_err());
    }

    #[test]
    fn no_image_takes_paths_as_written() {
        let resolved = resolve_in_rootfs(&NoImage, Path::new("/var/run")).unwrap();
        assert_eq!(resolved.path, Path::new("/var/run"));
        assert!(!resolved.exists);
    }
}
