//! The initramfs: ztms-init as `/init` and exactly the modules stage 1 loads.

use std::path::Path;

use super::cpio::{Archive, Entry};
use super::BuildError;

/// Builds the initramfs from the static ztms-init binary and the kernel's
/// module directory; `modules` are paths below it, in load order.
pub fn build(init: &[u8], modules_dir: &Path, modules: &[String], epoch: u64) -> Result<Vec<u8>, BuildError> {
    let mut archive = Archive::new();
    archive.add("init", Entry::File { mode: 0o755, data: init.to_vec() });
    archive.add(
        "etc/initrd-release",
        Entry::File { mode: 0o644, data: b"NAME=ztms-initrd\nID=ztms\n".to_vec() },
    );
    let mut list = modules.join("\n");
    list.push('\n');
    archive.add("etc/ztms/modules", Entry::File { mode: 0o644, data: list.into_bytes() });

    let release = modules_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    for module in modules {
        let path = modules_dir.join(module);
        let data = std::fs::read(&path).map_err(|e| BuildError::io("read module", &path, e))?;
        archive.add(&format!("lib/modules/{release}/{module}"), Entry::File { mode: 0o644, data });
    }
    for directory in ["dev", "proc", "sys", "run", "sysroot"] {
        archive.add(directory, Entry::Directory { mode: 0o755 });
    }

    let mut bytes = Vec::new();
    let mtime = u32::try_from(epoch).unwrap_or(u32::MAX);
    archive
        .write(&mut bytes, mtime)
        .map_err(|e| BuildError::io("write initramfs", Path::new("initramfs"), e))?;
    Ok(bytes)
}
