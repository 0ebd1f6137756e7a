//! Kernel module dependencies, read from each module's `.modinfo` section,
//! because Debian's kernel package ships no `modules.dep` (depmod makes it
//! at install time, and the build host may have no kmod).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::path::Path;

use object::{Object, ObjectSection};

/// Modules stage 1 needs to reach the root filesystem on the disks ztms
/// supports: virtio, NVMe, AHCI and USB storage, then dm-verity, dm-crypt
/// and EROFS. A name that the kernel has built in is skipped.
pub const STAGE1_MODULES: &[&str] = &[
    // libcrc32c (needed by EROFS) asks the crypto API for "crc32c" at load
    // time and fails with ENOENT unless an implementation is loaded first.
    "crc32c_intel",
    "crc32c_generic",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_console",
    "nvme",
    "ahci",
    "sd_mod",
    "xhci_pci",
    "ehci_pci",
    "usb_storage",
    "uas",
    "dm_verity",
    "dm_crypt",
    "erofs",
    "efivarfs",
];

/// One module: its path below `lib/modules/<version>/` and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub path: String,
    pub depends: Vec<String>,
    /// Modules named by `softdep=pre:`, loaded first when they exist.
    pub soft_pre: Vec<String>,
}

/// Every module of one kernel, by normalized name (`-` replaced by `_`).
#[derive(Debug, Default, Clone)]
pub struct ModuleIndex {
    pub modules: BTreeMap<String, Module>,
    pub builtin: HashSet<String>,
}

/// A module that is requested but neither built in nor shipped.
#[derive(Debug, thiserror::Error)]
#[error("kernel module {name:?} not found, and the kernel does not have it built in")]
pub struct MissingModule {
    pub name: String,
}

pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleIndex {
    /// Reads every `.ko` below `root` (a `lib/modules/<version>` directory)
    /// and `modules.builtin`.
    pub fn scan(root: &Path) -> io::Result<Self> {
        let mut index = ModuleIndex::default();
        if let Ok(text) = std::fs::read_to_string(root.join("modules.builtin")) {
            for line in text.lines() {
                let file = line.rsplit('/').next().unwrap_or(line);
                index.builtin.insert(normalize(file.trim_end_matches(".ko")));
            }
        }
        let mut pending = vec![root.join("kernel")];
        while let Some(directory) = pending.pop() {
            for entry in std::fs::read_dir(&directory)? {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    pending.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "ko") {
                    continue;
                }
                let data = std::fs::read(&path)?;
                let (name, depends, soft_pre) = read_modinfo(&data).map_err(|message| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {message}", path.display()))
                })?;
                let relative = path
                    .strip_prefix(root)
                    .map_err(|_| io::Error::other("module outside its root"))?
                    .to_string_lossy()
                    .into_owned();
                let name = name.unwrap_or_else(|| {
                    normalize(path.file_stem().and_then(|s| s.to_str()).unwrap_or_default())
                });
                index.modules.insert(name, Module { path: relative, depends, soft_pre });
            }
        }
        Ok(index)
    }

    /// Returns the paths of `names` and all their dependencies, each after
    /// the modules it needs, so loading them in order succeeds. Built-in
    /// names are skipped; with `required`, a name that is neither built in
    /// nor present is an error, and otherwise it is skipped.
    pub fn closure(&self, names: &[&str], required: bool) -> Result<Vec<String>, MissingModule> {
        let mut ordered = Vec::new();
        let mut visited = BTreeSet::new();
        for name in names {
            let name = normalize(name);
            if self.builtin.contains(&name) {
                continue;
            }
            if !self.modules.contains_key(&name) {
                if required {
                    return Err(MissingModule { name });
                }
                continue;
            }
            self.visit(&name, &mut visited, &mut ordered)?;
        }
        Ok(ordered)
    }

    fn visit(
        &self,
        name: &str,
        visited: &mut BTreeSet<String>,
        ordered: &mut Vec<String>,
    ) -> Result<(), MissingModule> {
        if !visited.insert(name.to_string()) {
            return Ok(());
        }
        let module = self.modules.get(name).ok_or_else(|| MissingModule { name: name.into() })?;
        for soft in module.soft_pre.iter().filter(|soft| self.modules.contains_key(*soft)) {
            self.visit(soft, visited, ordered)?;
        }
        for dependency in &module.depends {
            self.visit(dependency, visited, ordered)?;
        }
        ordered.push(module.path.clone());
        Ok(())
    }

    /// Renders `modules.dep` in depmod's format for the modules whose path
    /// is in `kept`, so tools on the appliance can load by name.
    pub fn modules_dep(&self, kept: &dyn Fn(&str) -> bool) -> String {
        let mut text = String::new();
        for module in self.modules.values().filter(|m| kept(&m.path)) {
            let mut dependencies = Vec::new();
            let mut visited = BTreeSet::new();
            for dependency in &module.depends {
                let _ = self.visit(dependency, &mut visited, &mut dependencies);
            }
            dependencies.reverse();
            text.push_str(&format!("{}: {}\n", module.path, dependencies.join(" ")));
        }
        text
    }
}

/// Returns the `name=`, `depends=` and `softdep=pre:` fields of a module's
/// `.modinfo`.
fn read_modinfo(data: &[u8]) -> Result<(Option<String>, Vec<String>, Vec<String>), String> {
    let file = object::File::parse(data).map_err(|e| format!("not an ELF module: {e}"))?;
    let Some(section) = file.section_by_name(".modinfo") else {
        return Ok((None, Vec::new(), Vec::new()));
    };
    let contents = section.data().map_err(|e| format!("unreadable .modinfo: {e}"))?;
    let mut name = None;
    let mut depends = Vec::new();
    let mut soft_pre = Vec::new();
    for field in contents.split(|&b| b == 0) {
        let field = String::from_utf8_lossy(field);
        if let Some(value) = field.strip_prefix("name=") {
            name = Some(normalize(value));
        } else if let Some(value) = field.strip_prefix("depends=") {
            depends = value.split(',').filter(|d| !d.is_empty()).map(normalize).collect();
        } else if let Some(value) = field.strip_prefix("softdep=") {
            soft_pre.extend(parse_soft_pre(value));
        }
    }
    Ok((name, depends, soft_pre))
}

/// Returns the names after `pre:` in a softdep value such as
/// `pre: crc32c post: foo`.
fn parse_soft_pre(value: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_pre = false;
    for word in value.split_whitespace() {
        match word {
            "pre:" => in_pre = true,
            "post:" => in_pre = false,
            name if in_pre => names.push(normalize(name)),
            _ => {}
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> ModuleIndex {
        let mut index = ModuleIndex::default();
        for (name, path, depends) in [
            ("dm_verity", "kernel/drivers/md/dm-verity.ko", vec!["dm_bufio", "dm_mod"]),
            ("dm_bufio", "kernel/drivers/md/dm-bufio.ko", vec![]),
            ("dm_mod", "kernel/drivers/md/dm-mod.ko", vec![]),
            ("erofs", "kernel/fs/erofs/erofs.ko", vec!["lz4_decompress"]),
            ("lz4_decompress", "kernel/lib/lz4/lz4_decompress.ko", vec![]),
        ] {
            index.modules.insert(
                name.into(),
                Module {
                    path: path.into(),
                    depends: depends.into_iter().map(String::from).collect(),
                    soft_pre: Vec::new(),
                },
            );
        }
        index.builtin.insert("sd_mod".into());
        index
    }

    #[test]
    fn closure_orders_dependencies_first() {
        let paths = index().closure(&["dm-verity", "erofs"], true).unwrap();
        let position = |p: &str| paths.iter().position(|x| x.ends_with(p)).unwrap();
        assert!(position("dm-mod.ko") < position("dm-verity.ko"));
        assert!(position("dm-bufio.ko") < position("dm-verity.ko"));
        assert!(position("lz4_decompress.ko") < position("erofs.ko"));
        assert_eq!(paths.len(), 5);
    }

    #[test]
    fn closure_skips_builtin_and_rejects_missing() {
        assert!(index().closure(&["sd_mod"], true).unwrap().is_empty());
        let error = index().closure(&["nope"], true).unwrap_err();
        assert_eq!(error.name, "nope");
        assert!(index().closure(&["nope"], false).unwrap().is_empty());
    }

    #[test]
    fn softdep_pre_names_parsed() {
        assert_eq!(parse_soft_pre("pre: crc32c post: x-y"), ["crc32c"]);
        assert!(parse_soft_pre("post: a").is_empty());
    }

    #[test]
    fn modules_dep_lists_transitive_dependencies() {
        let text = index().modules_dep(&|_| true);
        assert!(text.contains("kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-mod.ko kernel/drivers/md/dm-bufio.ko\n")
            || text.contains("kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n"), "{text}");
    }
}
