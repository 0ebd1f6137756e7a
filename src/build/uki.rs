//! Unified kernel images: systemd's EFI stub with the kernel, initramfs,
//! command line and os-release added as PE sections by objcopy.

use std::path::Path;
use std::process::Command;

use super::host::{run, UKI_STUB};
use super::BuildError;

/// Layout facts of a PE32+ image that section placement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeLayout {
    pub image_base: u64,
    pub section_alignment: u64,
    /// First address past the last section, relative to the image base.
    pub end: u64,
}

/// Reads the PE headers of `image`.
pub fn pe_layout(image: &[u8]) -> Result<PeLayout, String> {
    let read_u16 = |at: usize| image.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let read_u32 = |at: usize| image.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let read_u64 = |at: usize| {
        image
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let truncated = || "truncated PE header".to_string();

    let pe = read_u32(0x3c).ok_or_else(truncated)? as usize;
    if image.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err("not a PE image".into());
    }
    let sections = read_u16(pe + 6).ok_or_else(truncated)? as usize;
    let optional_size = read_u16(pe + 20).ok_or_else(truncated)? as usize;
    let optional = pe + 24;
    if read_u16(optional).ok_or_else(truncated)? != 0x20b {
        return Err("not a PE32+ image".into());
    }
    let image_base = read_u64(optional + 24).ok_or_else(truncated)?;
    let section_alignment = u64::from(read_u32(optional + 32).ok_or_else(truncated)?);
    let table = optional + optional_size;
    let mut end = 0u64;
    for index in 0..sections {
        let header = table + index * 40;
        let virtual_size = u64::from(read_u32(header + 8).ok_or_else(truncated)?);
        let virtual_address = u64::from(read_u32(header + 12).ok_or_else(truncated)?);
        end = end.max(virtual_address + virtual_size);
    }
    Ok(PeLayout { image_base, section_alignment, end })
}

/// One section to add: PE name and the file holding its content.
pub struct Section<'a> {
    pub name: &'static str,
    pub file: &'a Path,
}

/// Returns the virtual address of each section, laid out after the stub's
/// own sections, each aligned to the stub's section alignment.
pub fn place_sections(layout: PeLayout, sizes: &[u64]) -> Vec<u64> {
    let align = |value: u64| value.div_ceil(layout.section_alignment.max(1)) * layout.section_alignment.max(1);
    let mut next = align(layout.end);
    sizes
        .iter()
        .map(|&size| {
            let address = layout.image_base + next;
            next = align(next + size);
            address
        })
        .collect()
}

/// Writes the UKI at `output`.
pub fn build(sections: &[Section<'_>], output: &Path) -> Result<(), BuildError> {
    let stub = std::fs::read(UKI_STUB).map_err(|e| BuildError::io("read UKI stub", Path::new(UKI_STUB), e))?;
    let layout = pe_layout(&stub).map_err(|message| BuildError::Uki(format!("{UKI_STUB}: {message}")))?;
    let mut sizes = Vec::new();
    for section in sections {
        let size = std::fs::metadata(section.file)
            .map_err(|e| BuildError::io("read UKI section", section.file, e))?
            .len();
        sizes.push(size);
    }
    let addresses = place_sections(layout, &sizes);

    let mut command = Command::new("objcopy");
    for (section, address) in sections.iter().zip(&addresses) {
        command
            .arg("--add-section")
            .arg(format!("{}={}", section.name, section.file.display()))
            .arg("--change-section-vma")
            .arg(format!("{}={address:#x}", section.name));
    }
    command.arg(UKI_STUB).arg(output);
    run("uki", &mut command)?;
    clear_timestamp(output)
}

/// Sets the COFF time stamp and the optional header's checksum (which
/// covers the time stamp) to zero, so the UKI does not depend on when
/// objcopy ran. UEFI firmware does not check the PE checksum.
fn clear_timestamp(path: &Path) -> Result<(), BuildError> {
    let mut image = std::fs::read(path).map_err(|e| BuildError::io("read UKI", path, e))?;
    let Some(pe) = image
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    else {
        return Err(BuildError::Uki(format!("{}: truncated PE header", path.display())));
    };
    if let Some(stamp) = image.get_mut(pe + 8..pe + 12) {
        stamp.fill(0);
    }
    let checksum = pe + 24 + 64;
    if let Some(field) = image.get_mut(checksum..checksum + 4) {
        field.fill(0);
    }
    std::fs::write(path, image).map_err(|e| BuildError::io("write UKI", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_follow_stub_aligned() {
        let layout = PeLayout { image_base: 0x1000_0000, section_alignment: 0x1000, end: 0x2_3456 };
        let addresses = place_sections(layout, &[10, 0x1001, 5]);
        assert_eq!(addresses, [0x1002_4000, 0x1002_5000, 0x1002_7000]);
    }

    #[test]
    fn pe_layout_rejects_non_pe() {
        assert!(pe_layout(&[0u8; 128]).is_err());
    }

    #[test]
    fn pe_layout_reads_debian_stub() {
        let Ok(stub) = std::fs::read(UKI_STUB) else {
            eprintln!("skipped: {UKI_STUB} not installed");
            return;
        };
        let layout = pe_layout(&stub).unwrap();
        assert!(layout.end > 0);
        assert!(layout.section_alignment.is_power_of_two());
    }
}
