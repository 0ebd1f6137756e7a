//! The UKIs on the ESP as an update reads them: the `.cmdline` section of
//! each, found through the PE section table, names the slot and the root
//! hash it boots.

use super::plan::Slot;
use crate::init::cmdline;

/// Directory of the UKIs (type #2 boot entries) on the ESP.
pub const UKI_DIRECTORY: &str = "EFI/Linux";
/// Bytes read from the start of a UKI to find its section table. The
/// section table of a UKI made by objcopy ends within the first KiB.
pub const HEADER_BYTES: usize = 4096;
/// Maximum size of a `.cmdline` section that is read.
pub const MAX_CMDLINE: u64 = 64 * 1024;

/// Returns the file offset and size of the PE section `name` from the
/// first bytes of an image, or `None` when the headers do not contain it.
pub fn find_section(headers: &[u8], name: &str) -> Option<(u64, u64)> {
    let read_u16 = |at: usize| headers.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let read_u32 = |at: usize| headers.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));

    let pe = read_u32(0x3c)? as usize;
    if headers.get(pe..pe + 4)? != b"PE\0\0" {
        return None;
    }
    let sections = usize::from(read_u16(pe + 6)?);
    let optional_size = usize::from(read_u16(pe + 20)?);
    let table = pe + 24 + optional_size;
    for index in 0..sections {
        let header = table + index * 40;
        let raw_name = headers.get(header..header + 8)?;
        let length = raw_name.iter().position(|&b| b == 0).unwrap_or(8);
        if &raw_name[..length] != name.as_bytes() {
            continue;
        }
        let virtual_size = u64::from(read_u32(header + 8)?);
        let raw_size = u64::from(read_u32(header + 16)?);
        let offset = u64::from(read_u32(header + 20)?);
        // The raw size is rounded up to the file alignment; the virtual
        // size is the content's own, unless a linker left it zero.
        let size = if virtual_size == 0 { raw_size } else { virtual_size.min(raw_size) };
        return Some((offset, size));
    }
    None
}

/// Returns the slot and root hash that a UKI's command line names.
pub fn boot_target(cmdline_text: &str) -> (Option<Slot>, Option<String>) {
    let arguments = cmdline::split(cmdline_text.trim_end_matches('\0'));
    let slot = cmdline::value(&arguments, "ztms.slot").and_then(Slot::from_letter);
    let root_hash = cmdline::value(&arguments, "ztms.roothash").map(str::to_ascii_lowercase);
    (slot, root_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds PE32+ headers with one section table entry, laid out as objcopy does.
    fn image_with_section(name: &str, offset: u32, virtual_size: u32, raw_size: u32) -> Vec<u8> {
        let mut image = vec![0u8; 1024];
        image[0..2].copy_from_slice(b"MZ");
        image[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        image[0x80..0x84].copy_from_slice(b"PE\0\0");
        image[0x86..0x88].copy_from_slice(&1u16.to_le_bytes());
        image[0x94..0x96].copy_from_slice(&240u16.to_le_bytes());
        let header = 0x80 + 24 + 240;
        image[header..header + name.len()].copy_from_slice(name.as_bytes());
        image[header + 8..header + 12].copy_from_slice(&virtual_size.to_le_bytes());
        image[header + 16..header + 20].copy_from_slice(&raw_size.to_le_bytes());
        image[header + 20..header + 24].copy_from_slice(&offset.to_le_bytes());
        image
    }

    #[test]
    fn section_is_found_with_content_size() {
        let image = image_with_section(".cmdline", 0x600, 100, 512);
        assert_eq!(find_section(&image, ".cmdline"), Some((0x600, 100)));
        assert_eq!(find_section(&image, ".linux"), None);
    }

    #[test]
    fn non_pe_has_no_sections() {
        assert_eq!(find_section(&[0u8; 512], ".cmdline"), None);
        assert_eq!(find_section(&[], ".cmdline"), None);
    }

    #[test]
    fn cmdline_names_slot_and_root_hash() {
        let (slot, hash) = boot_target("console=ttyS0 ztms.slot=b ztms.root=m-root-b ztms.roothash=abcd ztms.verity=1:2:-\0");
        assert_eq!(slot, Some(Slot::B));
        assert_eq!(hash.as_deref(), Some("abcd"));
    }

    #[test]
    fn cmdline_without_slot_names_none() {
        assert_eq!(boot_target("console=ttyS0 quiet"), (None, None));
    }
}
