//! Partition plan of an appliance disk: labels, type GUIDs, offsets and the
//! deterministic identifiers derived from the definition.

use sha2::{Digest, Sha256};

/// GPT partition names hold at most 36 UTF-16 code units (UEFI 2.10, 5.3.3).
pub const GPT_LABEL_MAX: usize = 36;
/// Prefix the updater puts on a slot's label while it writes the slot, so a
/// half-written slot is never taken for a complete one.
pub const UPDATER_LABEL_PREFIX: &str = "pending-";
/// Every partition starts and ends on a 1 MiB boundary.
pub const ALIGN: u64 = 1 << 20;
/// Bytes of a logical block.
pub const SECTOR: u64 = 512;
/// Sectors kept at each end for the protective MBR, headers and 128 entries.
const GPT_RESERVED: u64 = 34 * SECTOR;

/// GPT type GUIDs (Discoverable Partitions Specification).
pub const TYPE_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
pub const TYPE_ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
/// "Linux LUKS": ztms-init gives the data partition this type once it has
/// finished provisioning it.
pub const TYPE_LUKS: &str = "ca7d7ccb-63ed-4c53-861c-1742536059cc";
/// ztms's own type for a data partition that was never provisioned: the
/// builder writes it, and ztms-init may format a partition of this type.
pub const TYPE_DATA_UNPROVISIONED: &str = "5a0aa5b5-d03f-43f7-a763-12447b019840";

/// One partition of the plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    pub label: String,
    pub type_guid: String,
    pub uuid: String,
    /// Offset from the start of the disk, in bytes.
    pub offset: u64,
    pub size: u64,
}

/// The whole disk: size, GUID and partitions in table order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Layout {
    pub disk_size: u64,
    pub disk_guid: String,
    pub partitions: Vec<Partition>,
}

/// Role of a partition in the table, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Esp,
    RootA,
    RootB,
    Data,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Esp, Role::RootA, Role::RootB, Role::Data];

    fn suffix(self) -> &'static str {
        match self {
            Role::Esp => "esp",
            Role::RootA => "root-a",
            Role::RootB => "root-b",
            Role::Data => "data",
        }
    }

    fn type_guid(self) -> &'static str {
        match self {
            Role::Esp => TYPE_ESP,
            Role::RootA | Role::RootB => TYPE_ROOT_X86_64,
            Role::Data => TYPE_DATA_UNPROVISIONED,
        }
    }
}

/// Returns the GPT label of `role` for the image `name`.
pub fn label(name: &str, role: Role) -> String {
    format!("{name}-{}", role.suffix())
}

/// Returns the labels of every partition of the image `name`.
pub fn partition_labels(name: &str) -> Vec<String> {
    Role::ALL.iter().map(|&role| label(name, role)).collect()
}

/// Longest image name whose labels still fit with the updater's prefix.
pub fn max_image_name_len() -> usize {
    let longest_suffix = Role::ALL.iter().map(|r| r.suffix().len()).max().unwrap_or(0);
    GPT_LABEL_MAX - UPDATER_LABEL_PREFIX.len() - longest_suffix - 1
}

/// Derives a version 4 style UUID from a seed, so that equal definitions give
/// equal disks.
pub fn derived_uuid(seed: &str, purpose: &str) -> String {
    let digest = Sha256::digest(format!("{seed}\0{purpose}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Plans the disk from the partition sizes; `seed` makes the GUIDs.
pub fn plan(name: &str, seed: &str, esp: u64, root: u64, data: u64) -> Layout {
    let mut offset = ALIGN;
    let mut partitions = Vec::new();
    for role in Role::ALL {
        let size = match role {
            Role::Esp => esp,
            Role::RootA | Role::RootB => root,
            Role::Data => data,
        };
        let size = size.div_ceil(ALIGN) * ALIGN;
        let label = label(name, role);
        partitions.push(Partition {
            uuid: derived_uuid(seed, &label),
            label,
            type_guid: role.type_guid().to_string(),
            offset,
            size,
        });
        offset += size;
    }
    Layout {
        // The backup GPT needs its 33 sectors after the last partition.
        disk_size: offset + ALIGN.max(GPT_RESERVED),
        disk_guid: derived_uuid(seed, "disk"),
        partitions,
    }
}

impl Layout {
    pub fn partition(&self, role: Role) -> &Partition {
        &self.partitions[Role::ALL.iter().position(|&r| r == role).unwrap_or(0)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_aligns_and_orders_partitions() {
        let layout = plan("media", "seed", 100 << 20, 300 << 20, 10 << 20);
        let labels: Vec<&str> = layout.partitions.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(labels, ["media-esp", "media-root-a", "media-root-b", "media-data"]);
        for partition in &layout.partitions {
            assert_eq!(partition.offset % ALIGN, 0, "{partition:?}");
            assert_eq!(partition.size % ALIGN, 0, "{partition:?}");
        }
        let last = layout.partitions.last().unwrap();
        assert!(layout.disk_size >= last.offset + last.size + GPT_RESERVED);
    }

    #[test]
    fn uuids_depend_only_on_seed() {
        let first = plan("media", "seed", 64 << 20, 64 << 20, 64 << 20);
        let again = plan("media", "seed", 64 << 20, 64 << 20, 64 << 20);
        let other = plan("media", "other", 64 << 20, 64 << 20, 64 << 20);
        assert_eq!(first, again);
        assert_ne!(first.disk_guid, other.disk_guid);
    }

    #[test]
    fn max_name_fits_every_label() {
        let name = "a".repeat(max_image_name_len());
        for label in partition_labels(&name) {
            assert!(label.len() + UPDATER_LABEL_PREFIX.len() <= GPT_LABEL_MAX, "{label}");
        }
    }
}
