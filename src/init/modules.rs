//! Loading kernel modules with finit_module(2): the list that the
//! initramfs carries in stage 1, and modules by name through `modules.dep`
//! in stage 2.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Module list of the initramfs: paths below `/lib/modules/<release>/`,
/// dependencies first.
pub const INITRAMFS_LIST: &str = "/etc/ztms/modules";

/// finit_module(2) flag: the file is compressed and the kernel decompresses
/// it (`MODULE_INIT_COMPRESSED_FILE`, Linux 5.17 and later).
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// Outcome of loading one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    Inserted,
    /// The kernel already had it (EEXIST).
    AlreadyLoaded,
}

/// Parses the initramfs module list: one path per line, `#` comments.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Returns the kernel release, the directory name below `/lib/modules`.
pub fn kernel_release() -> io::Result<String> {
    let info = nix::sys::utsname::uname().map_err(io::Error::from)?;
    Ok(info.release().to_string_lossy().into_owned())
}

/// A module that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("opening module {path} failed: {source}")]
    Open { path: PathBuf, source: io::Error },
    /// ENOENT from finit_module(2) means a symbol or a crypto algorithm the
    /// module needs is missing, not the file.
    #[error("the kernel rejected module {path}: {source}; the kernel log names the missing symbol or dependency")]
    Rejected { path: PathBuf, source: io::Error },
}

/// Loads the module file at `path`; a module the kernel already has counts
/// as loaded.
pub fn load_file(path: &Path) -> Result<Loaded, ModuleError> {
    let file = File::open(path).map_err(|source| ModuleError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let compressed = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("xz" | "zst" | "gz")
    );
    let flags = if compressed { MODULE_INIT_COMPRESSED_FILE } else { 0 };
    let params: &CStr = c"";

    // SAFETY: finit_module reads the open file descriptor and a
    // NUL-terminated parameter string that outlives the call; it does not
    // retain either pointer.
    let result = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if result == 0 {
        return Ok(Loaded::Inserted);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EEXIST) {
        return Ok(Loaded::AlreadyLoaded);
    }
    Err(ModuleError::Rejected {
        path: path.to_path_buf(),
        source: error,
    })
}

/// Loads every module of `paths` below `base` in order, logging each
/// failure and going on, because some modules are for absent hardware.
/// Returns the number of failures.
pub fn load_all(base: &Path, paths: &[String]) -> usize {
    let mut failures = 0;
    for relative in paths {
        let path = base.join(relative);
        match load_file(&path) {
            Ok(Loaded::Inserted) => log::debug!("loaded module {}", path.display()),
            Ok(Loaded::AlreadyLoaded) => log::debug!("module {} was already loaded", path.display()),
            Err(error) => {
                failures += 1;
                log::warn!("{error}");
            }
        }
    }
    failures
}

/// Modules of one kernel from `modules.dep`, by normalized name.
#[derive(Debug, Default, Clone)]
pub struct ModuleIndex {
    /// Path below the modules directory and the names of direct and
    /// indirect dependencies.
    modules: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

/// Source of a requested module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Files to load, dependencies first.
    Files(Vec<String>),
    /// Part of the kernel image; nothing to load.
    Builtin,
}

/// Returns the module name of a path: file name without `.ko` and a
/// compression suffix, with `-` replaced by `_` as the kernel does.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleIndex {
    /// Parses `modules.dep` (`path: dependency paths`) and `modules.builtin`
    /// (one path per line).
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Self {
        let mut index = ModuleIndex::default();
        for line in modules_dep.lines() {
            let Some((path, dependencies)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let dependencies = dependencies.split_whitespace().map(module_name).collect();
            index.modules.insert(module_name(path), (path.to_string(), dependencies));
        }
        for line in modules_builtin.lines().map(str::trim).filter(|l| !l.is_empty()) {
            index.builtin.insert(module_name(line));
        }
        index
    }

    /// Reads the index of the modules directory `root`; `modules.builtin`
    /// is optional.
    pub fn read(root: &Path) -> io::Result<Self> {
        let dep = std::fs::read_to_string(root.join("modules.dep"))?;
        let builtin = std::fs::read_to_string(root.join("modules.builtin")).unwrap_or_default();
        Ok(Self::parse(&dep, &builtin))
    }

    /// Returns the files to load for the module `name`, dependencies first,
    /// or `None` when the kernel has no such module.
    pub fn resolve(&self, name: &str) -> Option<Resolved> {
        let name = module_name(name);
        if !self.modules.contains_key(&name) {
            return self.builtin.contains(&name).then_some(Resolved::Builtin);
        }
        let mut order = Vec::new();
        let mut visited = HashSet::new();
        self.visit(&name, &mut visited, &mut order);
        Some(Resolved::Files(order))
    }

    /// Depth-first walk that appends a module after its dependencies. A
    /// dependency that is built in or missing is skipped: the kernel
    /// reports the missing symbol when the module itself loads.
    fn visit(&self, name: &str, visited: &mut HashSet<String>, order: &mut Vec<String>) {
        if !visited.insert(name.to_string()) {
            return;
        }
        let Some((path, dependencies)) = self.modules.get(name) else {
            return;
        };
        for dependency in dependencies {
            self.visit(dependency, visited, order);
        }
        order.push(path.clone());
    }
}

/// Loads the modules `names` of the running kernel from `/usr/lib/modules`,
/// logging each failure. Returns the names that could not be loaded.
pub fn load_by_name(names: &[&str]) -> Result<Vec<String>, io::Error> {
    let root = PathBuf::from("/usr/lib/modules").join(kernel_release()?);
    let index = ModuleIndex::read(&root)?;
    let mut failed = Vec::new();
    for name in names {
        match index.resolve(name) {
            None => {
                log::warn!("kernel module {name} not found in {}", root.display());
                failed.push(name.to_string());
            }
            Some(Resolved::Builtin) => log::debug!("kernel module {name} is built in"),
            Some(Resolved::Files(files)) => {
                if load_all(&root, &files) > 0 {
                    failed.push(name.to_string());
                }
            }
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/input/evdev.ko:
kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko
kernel/fs/fat/fat.ko:
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/md/dm-verity.ko.xz: kernel/drivers/md/dm-bufio.ko.xz
kernel/drivers/md/dm-bufio.ko.xz:
";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(DEP, "kernel/drivers/acpi/button.ko\n")
    }

    #[test]
    fn module_name_strips_suffixes_and_dashes() {
        assert_eq!(module_name("kernel/drivers/md/dm-verity.ko.xz"), "dm_verity");
        assert_eq!(module_name("evdev.ko"), "evdev");
        assert_eq!(module_name("nls-cp437"), "nls_cp437");
    }

    #[test]
    fn resolve_puts_dependencies_first() {
        let resolved = index().resolve("vfat").unwrap();
        assert_eq!(resolved, Resolved::Files(vec!["kernel/fs/fat/fat.ko".into(), "kernel/fs/fat/vfat.ko".into()]));
    }

    #[test]
    fn resolve_orders_nested_dependencies() {
        let resolved = index().resolve("virtio_console").unwrap();
        assert_eq!(
            resolved,
            Resolved::Files(vec![
                "kernel/drivers/virtio/virtio.ko".into(),
                "kernel/drivers/virtio/virtio_ring.ko".into(),
                "kernel/drivers/char/virtio_console.ko".into(),
            ])
        );
    }

    #[test]
    fn resolve_accepts_dashed_names() {
        let resolved = index().resolve("dm-verity").unwrap();
        assert_eq!(
            resolved,
            Resolved::Files(vec!["kernel/drivers/md/dm-bufio.ko.xz".into(), "kernel/drivers/md/dm-verity.ko.xz".into()])
        );
    }

    #[test]
    fn resolve_reports_builtin() {
        assert_eq!(index().resolve("button"), Some(Resolved::Builtin));
    }

    #[test]
    fn resolve_returns_none_for_unknown() {
        assert_eq!(index().resolve("nosuch"), None);
    }

    #[test]
    fn parse_list_skips_blanks_and_comments() {
        let list = parse_list("a/b.ko\n\n# comment\n c/d.ko \n");
        assert_eq!(list, ["a/b.ko", "c/d.ko"]);
    }
}
