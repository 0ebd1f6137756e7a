//! Writes a GUID Partition Table (UEFI 2.10, chapter 5) with its protective
//! MBR and backup copy into a disk image file.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};

use super::layout::{Layout, SECTOR};

const ENTRY_COUNT: u32 = 128;
const ENTRY_SIZE: u32 = 128;
const ENTRIES_BYTES: usize = (ENTRY_COUNT * ENTRY_SIZE) as usize;
const ENTRIES_SECTORS: u64 = ENTRIES_BYTES as u64 / SECTOR;

/// Encodes a textual GUID in the mixed-endian byte order GPT stores.
pub fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut raw = [0u8; 16];
    for (i, byte) in raw.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    let mut out = raw;
    out[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    out[4..6].copy_from_slice(&[raw[5], raw[4]]);
    out[6..8].copy_from_slice(&[raw[7], raw[6]]);
    out
}

/// Returns the partition entry array.
fn entries(layout: &Layout) -> Vec<u8> {
    let mut array = vec![0u8; ENTRIES_BYTES];
    for (index, partition) in layout.partitions.iter().enumerate() {
        let entry = &mut array[index * ENTRY_SIZE as usize..][..ENTRY_SIZE as usize];
        entry[0..16].copy_from_slice(&guid_bytes(&partition.type_guid));
        entry[16..32].copy_from_slice(&guid_bytes(&partition.uuid));
        let first = partition.offset / SECTOR;
        let last = (partition.offset + partition.size) / SECTOR - 1;
        entry[32..40].copy_from_slice(&first.to_le_bytes());
        entry[40..48].copy_from_slice(&last.to_le_bytes());
        for (i, unit) in partition.label.encode_utf16().take(36).enumerate() {
            entry[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
    }
    array
}

/// Returns one GPT header sector.
fn header(layout: &Layout, entries_crc: u32, primary: bool) -> Vec<u8> {
    let last_lba = layout.disk_size / SECTOR - 1;
    let (my_lba, alternate_lba, entries_lba) = if primary {
        (1, last_lba, 2)
    } else {
        (last_lba, 1, last_lba - ENTRIES_SECTORS)
    };
    let mut sector = vec![0u8; SECTOR as usize];
    sector[0..8].copy_from_slice(b"EFI PART");
    sector[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    sector[12..16].copy_from_slice(&92u32.to_le_bytes());
    sector[24..32].copy_from_slice(&my_lba.to_le_bytes());
    sector[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    sector[40..48].copy_from_slice(&(2 + ENTRIES_SECTORS).to_le_bytes());
    sector[48..56].copy_from_slice(&(last_lba - ENTRIES_SECTORS - 1).to_le_bytes());
    sector[56..72].copy_from_slice(&guid_bytes(&layout.disk_guid));
    sector[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    sector[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
    sector[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
    sector[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&sector[..92]);
    sector[16..20].copy_from_slice(&header_crc.to_le_bytes());
    sector
}

/// Returns the protective MBR that covers the whole disk.
fn protective_mbr(layout: &Layout) -> Vec<u8> {
    let mut sector = vec![0u8; SECTOR as usize];
    let sectors = u32::try_from(layout.disk_size / SECTOR - 1).unwrap_or(u32::MAX);
    let entry = &mut sector[446..462];
    entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    entry[4] = 0xee;
    entry[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&1u32.to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    sector[510] = 0x55;
    sector[511] = 0xaa;
    sector
}

/// Writes the MBR, both GPT headers and both entry arrays into `disk`, which
/// must already be `layout.disk_size` bytes long.
pub fn write(disk: &mut File, layout: &Layout) -> io::Result<()> {
    let array = entries(layout);
    let crc = crc32fast::hash(&array);
    let last_lba = layout.disk_size / SECTOR - 1;

    disk.seek(SeekFrom::Start(0))?;
    disk.write_all(&protective_mbr(layout))?;
    disk.write_all(&header(layout, crc, true))?;
    disk.write_all(&array)?;

    disk.seek(SeekFrom::Start((last_lba - ENTRIES_SECTORS) * SECTOR))?;
    disk.write_all(&array)?;
    disk.write_all(&header(layout, crc, false))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_bytes_use_mixed_endian() {
        let bytes = guid_bytes("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(
            bytes,
            [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b]
        );
    }

    #[test]
    fn header_crc_covers_92_bytes() {
        let layout = super::super::layout::plan("t", "s", 64 << 20, 64 << 20, 64 << 20);
        let sector = header(&layout, 0, true);
        let stored = u32::from_le_bytes(sector[16..20].try_into().unwrap());
        let mut zeroed = sector.clone();
        zeroed[16..20].fill(0);
        assert_eq!(stored, crc32fast::hash(&zeroed[..92]));
    }
}
