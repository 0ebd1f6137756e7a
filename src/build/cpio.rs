//! Writes cpio archives in the "newc" format the kernel unpacks as an
//! initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).

use std::collections::BTreeMap;
use std::io::{self, Write};

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Directory { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

/// An archive built in memory: members sorted by path, every timestamp equal
/// to `mtime`, every owner root, so equal inputs give equal bytes.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `entry` at `path` (relative, no leading `/`), creating the parent
    /// directories with mode 0755.
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/');
        let mut parent = String::new();
        for component in path.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            self.entries
                .entry(parent.clone())
                .or_insert(Entry::Directory { mode: 0o755 });
        }
        self.entries.insert(path.to_string(), entry);
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    /// Writes the archive and its trailer to `out`.
    pub fn write(&self, out: &mut impl Write, mtime: u32) -> io::Result<()> {
        let mut written = 0usize;
        for (inode, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data): (u32, &[u8]) = match entry {
                Entry::Directory { mode } => (0o040000 | mode, &[]),
                Entry::File { mode, data } => (0o100000 | mode, data),
                Entry::Symlink { target } => (0o120777, target.as_bytes()),
            };
            let links = if matches!(entry, Entry::Directory { .. }) { 2 } else { 1 };
            written += write_member(out, inode as u32 + 1, mode, links, mtime, path, data)?;
        }
        written += write_member(out, 0, 0, 1, 0, "TRAILER!!!", &[])?;
        let padding = (512 - written % 512) % 512;
        out.write_all(&vec![0u8; padding])
    }
}

fn write_member(
    out: &mut impl Write,
    inode: u32,
    mode: u32,
    links: u32,
    mtime: u32,
    path: &str,
    data: &[u8],
) -> io::Result<usize> {
    let name_size = path.len() + 1;
    let header = format!(
        "070701{inode:08x}{mode:08x}{:08x}{:08x}{links:08x}{mtime:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{name_size:08x}{:08x}",
        0, 0, data.len(), 0, 0, 0, 0, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(path.as_bytes())?;
    out.write_all(&[0])?;
    let name_end = header.len() + name_size;
    let name_padding = (4 - name_end % 4) % 4;
    out.write_all(&vec![0u8; name_padding])?;
    out.write_all(data)?;
    let data_padding = (4 - data.len() % 4) % 4;
    out.write_all(&vec![0u8; data_padding])?;
    Ok(name_end + name_padding + data.len() + data_padding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_adds_parents_and_sorts() {
        let mut archive = Archive::new();
        archive.add("usr/lib/x.ko", Entry::File { mode: 0o644, data: b"k".to_vec() });
        archive.add("init", Entry::File { mode: 0o755, data: b"i".to_vec() });
        let paths: Vec<&String> = archive.entries.keys().collect();
        assert_eq!(paths, ["init", "usr", "usr/lib", "usr/lib/x.ko"]);
    }

    #[test]
    fn archive_output_is_padded_and_stable() {
        let mut archive = Archive::new();
        archive.add("init", Entry::File { mode: 0o755, data: b"abc".to_vec() });
        let mut first = Vec::new();
        archive.write(&mut first, 0).unwrap();
        let mut second = Vec::new();
        archive.write(&mut second, 0).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.len() % 512, 0);
        assert!(first.starts_with(b"070701"));
        assert!(first.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
