//! Named network namespaces (`/run/netns/NAME`, the layout `ip netns`
//! uses) and running code inside one.
//!
//! setns(2) changes the calling thread only, so every entry into a service
//! namespace happens on a thread of its own that ends afterwards: the main
//! loop's thread and async workers never leave the root namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Directory of the bind-mounted namespace files.
pub const NETNS_DIR: &str = "/run/netns";

/// A namespace operation that failed; names the namespace and the step.
#[derive(Debug, thiserror::Error)]
#[error("network namespace {name}: {step} failed: {source}")]
pub struct NetnsError {
    pub name: String,
    pub step: &'static str,
    pub source: std::io::Error,
}

pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates the namespace `name` unless it exists, as `ip netns add` does:
/// a helper thread unshares a new network namespace and bind-mounts it on
/// `/run/netns/NAME`, which keeps it alive without any process in it.
pub fn create(name: &str) -> Result<PathBuf, NetnsError> {
    let path = path_of(name);
    if path.exists() {
        return Ok(path);
    }
    let error = |step: &'static str| move |source: std::io::Error| NetnsError { name: name.to_string(), step, source };
    std::fs::create_dir_all(NETNS_DIR).map_err(error("create /run/netns"))?;
    File::create(&path).map_err(error("create the mount point"))?;

    let target = path.clone();
    let result = std::thread::spawn(move || -> std::io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        mount(
            Some(Path::new("/proc/thread-self/ns/net")),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(std::io::Error::from)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")));
    if let Err(source) = result {
        let _ = std::fs::remove_file(&path);
        return Err(NetnsError { name: name.to_string(), step: "unshare and bind-mount", source });
    }
    Ok(path)
}

/// Runs `work` on a new thread inside the namespace at `path` and returns
/// its result. The thread ends with `work`, so no other code runs in the
/// namespace by accident.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let file = File::open(path).map_err(|source| NetnsError { name: name.clone(), step: "open", source })?;
    let thread_name = name.clone();
    std::thread::spawn(move || -> Result<T, NetnsError> {
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| NetnsError {
            name: thread_name,
            step: "setns",
            source: errno.into(),
        })?;
        Ok(work())
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetnsError { name, step: "run", source: std::io::Error::other("namespace thread panicked") })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the interfaces of the calling thread's network namespace.
    fn interface_count() -> usize {
        let mut names: Vec<String> = nix::ifaddrs::getifaddrs()
            .map(|list| list.map(|entry| entry.interface_name).collect())
            .unwrap_or_default();
        names.sort();
        names.dedup();
        names.len()
    }

    #[test]
    fn created_namespace_has_only_loopback() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: creating a network namespace needs root");
            return;
        }
        let name = format!("ztms-test-{}", std::process::id());
        let path = create(&name).unwrap();
        let count = run_in(&path, interface_count).unwrap();
        let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
        assert_eq!(count, 1, "a new namespace holds only lo");
    }
}
