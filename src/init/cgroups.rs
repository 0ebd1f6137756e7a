//! cgroup v2 layout: controllers enabled from the root down to
//! `/sys/fs/cgroup/ztms`, and one child cgroup per service.
//!
//! ztms-init itself stays in the root cgroup, which the "no internal
//! processes" rule exempts, so the root can delegate controllers.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Mount point of the cgroup v2 hierarchy.
pub const ROOT: &str = "/sys/fs/cgroup";
/// Parent cgroup of every service.
pub const SERVICES: &str = "/sys/fs/cgroup/ztms";
/// Controllers that service limits use. Those the kernel lacks are skipped.
pub const SERVICE_CONTROLLERS: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// A failed cgroup operation.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path} failed: {source}")]
pub struct CgroupError {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

fn error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Returns the `cgroup.subtree_control` request that enables the service
/// controllers present in `available` (the text of `cgroup.controllers`).
pub fn subtree_request(available: &str) -> String {
    let present: Vec<&str> = available.split_whitespace().collect();
    SERVICE_CONTROLLERS
        .iter()
        .filter(|name| present.contains(name))
        .map(|name| format!("+{name}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn enable_in(directory: &Path) -> Result<String, CgroupError> {
    let controllers = directory.join("cgroup.controllers");
    let available = std::fs::read_to_string(&controllers).map_err(error("reading", &controllers))?;
    let request = subtree_request(&available);
    if !request.is_empty() {
        let control = directory.join("cgroup.subtree_control");
        std::fs::write(&control, &request).map_err(error("writing", &control))?;
    }
    Ok(request)
}

/// Enables the controllers in the root cgroup and in the services' parent,
/// creating the parent. Returns the controllers enabled.
pub fn enable_controllers() -> Result<String, CgroupError> {
    let request = enable_in(Path::new(ROOT))?;
    let services = Path::new(SERVICES);
    match std::fs::create_dir(services) {
        Ok(()) => {}
        Err(source) if source.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(error("creating", services)(source)),
    }
    enable_in(services)?;
    Ok(request)
}

/// Creates the cgroup of `service` if needed and opens its `cgroup.procs`
/// for the spawn to join.
pub fn service_procs(service: &str) -> Result<File, CgroupError> {
    let directory = Path::new(SERVICES).join(service);
    match std::fs::create_dir(&directory) {
        Ok(()) => {}
        Err(source) if source.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(error("creating", &directory)(source)),
    }
    let procs = directory.join("cgroup.procs");
    OpenOptions::new()
        .write(true)
        .open(&procs)
        .map_err(error("opening", &procs))
}

/// Returns the memory charged to the cgroup of `service` (`memory.current`),
/// or None when the cgroup or the memory controller is missing.
pub fn service_memory(service: &str) -> Option<u64> {
    let path = Path::new(SERVICES).join(service).join("memory.current");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Kills every process in the cgroup of `service` (`cgroup.kill`, Linux
/// 5.14 and later), which reaches processes that left the process group.
pub fn kill_service(service: &str) -> Result<(), CgroupError> {
    let kill = Path::new(SERVICES).join(service).join("cgroup.kill");
    if !kill.exists() {
        return Ok(());
    }
    std::fs::write(&kill, "1").map_err(error("writing", &kill))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_enables_present_controllers() {
        assert_eq!(subtree_request("cpuset cpu io memory hugetlb pids rdma misc\n"), "+cpu +io +memory +pids");
    }

    #[test]
    fn request_skips_missing_controllers() {
        assert_eq!(subtree_request("memory pids"), "+memory +pids");
    }

    #[test]
    fn request_is_empty_without_controllers() {
        assert_eq!(subtree_request(""), "");
    }
}
