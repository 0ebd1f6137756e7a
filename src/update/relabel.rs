//! Renames one GPT partition in place: the entry in the primary and in the
//! backup partition array, with both headers' CRC32s, so the firmware and
//! the kernel accept either copy. The update writes a root slot under a
//! label that no UKI names and renames it once the slot is complete.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use crate::build::layout::SECTOR;

/// Maximum UTF-16 code units in a GPT partition name.
const NAME_UNITS: usize = 36;
/// Offset of the name inside a partition entry.
const NAME_OFFSET: usize = 56;
/// Largest partition array accepted: 128 entries of 128 bytes is the norm.
const MAX_ARRAY_BYTES: u64 = 1 << 20;

/// A partition table that cannot be relabelled.
#[derive(Debug, thiserror::Error)]
pub enum RelabelError {
    #[error("reading or writing the partition table failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the {copy} GPT header is invalid: {reason}")]
    InvalidHeader { copy: &'static str, reason: String },
    #[error("partition {number} does not exist in a table of {count} entries")]
    NoSuchPartition { number: u32, count: u32 },
    #[error("label {label:?} is longer than the {NAME_UNITS} UTF-16 units a GPT entry holds")]
    LabelTooLong { label: String },
}

/// The fields of a GPT header that relabelling reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    alternate_lba: u64,
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
}

fn parse_header(sector: &[u8], copy: &'static str) -> Result<Header, RelabelError> {
    let invalid = |reason: &str| RelabelError::InvalidHeader { copy, reason: reason.to_string() };
    if sector.len() < 92 || &sector[0..8] != b"EFI PART" {
        return Err(invalid("no EFI PART signature"));
    }
    let u32_at = |at: usize| u32::from_le_bytes([sector[at], sector[at + 1], sector[at + 2], sector[at + 3]]);
    let u64_at = |at: usize| u64::from_le_bytes(sector[at..at + 8].try_into().unwrap_or([0; 8]));
    let header_size = u32_at(12) as usize;
    if !(92..=sector.len()).contains(&header_size) {
        return Err(invalid("header size out of range"));
    }
    let mut copy_of = sector[..header_size].to_vec();
    copy_of[16..20].fill(0);
    if crc32fast::hash(&copy_of) != u32_at(16) {
        return Err(invalid("header CRC32 mismatch"));
    }
    let header = Header {
        alternate_lba: u64_at(32),
        entries_lba: u64_at(72),
        entry_count: u32_at(80),
        entry_size: u32_at(84),
    };
    if header.entry_size < 128 || u64::from(header.entry_count) * u64::from(header.entry_size) > MAX_ARRAY_BYTES {
        return Err(invalid("partition array size out of range"));
    }
    Ok(header)
}

/// Writes `label` into entry `number` (1-based) of `array`.
pub fn set_entry_label(array: &mut [u8], entry_size: usize, number: u32, label: &str) -> Result<(), RelabelError> {
    let count = (array.len() / entry_size) as u32;
    if number == 0 || number > count {
        return Err(RelabelError::NoSuchPartition { number, count });
    }
    let units: Vec<u16> = label.encode_utf16().collect();
    if units.len() > NAME_UNITS {
        return Err(RelabelError::LabelTooLong { label: label.to_string() });
    }
    let entry = &mut array[(number as usize - 1) * entry_size..][..entry_size];
    let name = &mut entry[NAME_OFFSET..NAME_OFFSET + 2 * NAME_UNITS];
    name.fill(0);
    for (index, unit) in units.iter().enumerate() {
        name[2 * index..2 * index + 2].copy_from_slice(&unit.to_le_bytes());
    }
    Ok(())
}

/// Stores the array's CRC32 in a header sector and recomputes the header's own.
fn reseal(sector: &mut [u8], array: &[u8]) {
    sector[88..92].copy_from_slice(&crc32fast::hash(array).to_le_bytes());
    let header_size = u32::from_le_bytes([sector[12], sector[13], sector[14], sector[15]]) as usize;
    sector[16..20].fill(0);
    let crc = crc32fast::hash(&sector[..header_size]);
    sector[16..20].copy_from_slice(&crc.to_le_bytes());
}

fn read_at(disk: &mut File, offset: u64, length: usize) -> std::io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; length];
    disk.seek(SeekFrom::Start(offset))?;
    disk.read_exact(&mut buffer)?;
    Ok(buffer)
}

fn write_at(disk: &mut File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    disk.seek(SeekFrom::Start(offset))?;
    disk.write_all(data)
}

/// Renames partition `number` (1-based) of the disk open in `disk` to
/// `label`, backup copy first, then the primary, and syncs.
///
/// NOTE: assumes 512-byte logical sectors, as the images ztms builds use.
pub fn set_partition_label(disk: &mut File, number: u32, label: &str) -> Result<(), RelabelError> {
    let mut primary = read_at(disk, SECTOR, SECTOR as usize)?;
    let header = parse_header(&primary, "primary")?;
    let array_bytes = header.entry_count as usize * header.entry_size as usize;
    let mut array = read_at(disk, header.entries_lba * SECTOR, array_bytes)?;
    set_entry_label(&mut array, header.entry_size as usize, number, label)?;

    let mut backup = read_at(disk, header.alternate_lba * SECTOR, SECTOR as usize)?;
    let backup_header = parse_header(&backup, "backup")?;
    reseal(&mut backup, &array);
    write_at(disk, backup_header.entries_lba * SECTOR, &array)?;
    write_at(disk, header.alternate_lba * SECTOR, &backup)?;
    disk.sync_data()?;

    reseal(&mut primary, &array);
    write_at(disk, header.entries_lba * SECTOR, &array)?;
    write_at(disk, SECTOR, &primary)?;
    disk.sync_data()?;
    Ok(())
}

/// Returns the label of partition `number` (1-based) from the primary table.
pub fn partition_label(disk: &mut File, number: u32) -> Result<String, RelabelError> {
    let primary = read_at(disk, SECTOR, SECTOR as usize)?;
    let header = parse_header(&primary, "primary")?;
    let array = read_at(disk, header.entries_lba * SECTOR, header.entry_count as usize * header.entry_size as usize)?;
    if number == 0 || number > header.entry_count {
        return Err(RelabelError::NoSuchPartition { number, count: header.entry_count });
    }
    let entry = &array[(number as usize - 1) * header.entry_size as usize..];
    let units: Vec<u16> = entry[NAME_OFFSET..NAME_OFFSET + 2 * NAME_UNITS]
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    Ok(String::from_utf16_lossy(&units))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{gpt, layout};

    fn disk() -> (tempfile::NamedTempFile, layout::Layout) {
        let layout = layout::plan("media", "seed", 8 << 20, 16 << 20, 8 << 20);
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(layout.disk_size).unwrap();
        gpt::write(&mut file.reopen().unwrap(), &layout).unwrap();
        (file, layout)
    }

    #[test]
    fn relabel_changes_one_entry_in_both_copies() {
        let (file, layout) = disk();
        let mut handle = file.reopen().unwrap();
        set_partition_label(&mut handle, 3, "pending-media-root-b").unwrap();
        assert_eq!(partition_label(&mut handle, 3).unwrap(), "pending-media-root-b");
        assert_eq!(partition_label(&mut handle, 2).unwrap(), "media-root-a");

        // The backup copy carries the same array and a valid CRC.
        let last_lba = layout.disk_size / SECTOR - 1;
        let backup = read_at(&mut handle, last_lba * SECTOR, SECTOR as usize).unwrap();
        let header = parse_header(&backup, "backup").unwrap();
        let array = read_at(&mut handle, header.entries_lba * SECTOR, 128 * 128).unwrap();
        let primary = read_at(&mut handle, SECTOR, SECTOR as usize).unwrap();
        let primary_header = parse_header(&primary, "primary").unwrap();
        let primary_array = read_at(&mut handle, primary_header.entries_lba * SECTOR, 128 * 128).unwrap();
        assert_eq!(array, primary_array);
        assert_eq!(&backup[88..92], &crc32fast::hash(&array).to_le_bytes());
    }

    #[test]
    fn relabel_back_restores_original_table() {
        let (file, _) = disk();
        let original = std::fs::read(file.path()).unwrap();
        let mut handle = file.reopen().unwrap();
        set_partition_label(&mut handle, 3, "pending-media-root-b").unwrap();
        set_partition_label(&mut handle, 3, "media-root-b").unwrap();
        assert_eq!(std::fs::read(file.path()).unwrap(), original);
    }

    #[test]
    fn sfdisk_reads_relabelled_table() {
        if crate::build::host::find_program("sfdisk").is_none() {
            eprintln!("skipped: sfdisk not installed");
            return;
        }
        let (file, _) = disk();
        set_partition_label(&mut file.reopen().unwrap(), 2, "pending-media-root-a").unwrap();
        let output = std::process::Command::new("sfdisk").arg("--json").arg(file.path()).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(text.contains("\"pending-media-root-a\""), "{text}");
    }

    #[test]
    fn corrupt_header_is_rejected() {
        let (file, _) = disk();
        let mut bytes = std::fs::read(file.path()).unwrap();
        bytes[SECTOR as usize + 40] ^= 1;
        std::fs::write(file.path(), bytes).unwrap();
        let error = set_partition_label(&mut file.reopen().unwrap(), 3, "x").unwrap_err();
        assert!(matches!(error, RelabelError::InvalidHeader { copy: "primary", .. }), "{error}");
    }

    #[test]
    fn long_label_is_rejected() {
        let mut array = vec![0u8; 4 * 128];
        let error = set_entry_label(&mut array, 128, 1, &"x".repeat(37)).unwrap_err();
        assert!(matches!(error, RelabelError::LabelTooLong { .. }), "{error}");
        assert!(set_entry_label(&mut array, 128, 5, "x").is_err());
    }
}
