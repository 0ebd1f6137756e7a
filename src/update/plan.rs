//! The update plan: from a verified bundle manifest and the state of the
//! running appliance's disk, which partition an update writes, under which
//! labels, and which UKIs it adds to and removes from the ESP.
//!
//! The applier in ztms-init reads the disk state and carries the plan out;
//! every rule lives here so it is tested without a disk.

use super::bundle::{uki_member, BundleManifest, ROOT_IMAGE};
use super::{check_esp_space, version, UpdateError};
use crate::build::layout::{self, Role, UPDATER_LABEL_PREFIX};
use crate::init::bless::strip_boot_counter;

/// One of the two root slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// Parses `a` or `b`, the value of `ztms.slot=` on the kernel command line.
    pub fn from_letter(letter: &str) -> Option<Slot> {
        match letter {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// Returns the slot that is not `self`.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Returns the partition role of the slot.
    pub fn role(self) -> Role {
        match self {
            Slot::A => Role::RootA,
            Slot::B => Role::RootB,
        }
    }
}

/// A UKI found in `EFI/Linux` on the ESP, with what its command line names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspUki {
    pub file: String,
    pub size: u64,
    /// `ztms.slot=` of its command line; `None` when it has none.
    pub slot: Option<Slot>,
    /// `ztms.roothash=` of its command line.
    pub root_hash: Option<String>,
}

/// The running appliance and its disk, as the applier read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskState {
    /// Appliance name and version of the running root.
    pub name: String,
    pub version: String,
    pub booted_slot: Slot,
    /// dm-verity root hash of the running root, from the kernel command line.
    pub root_hash: String,
    /// Size in bytes of the partition of the slot that is not running.
    pub inactive_partition_size: u64,
    /// Free bytes on the ESP.
    pub esp_free: u64,
    pub esp_ukis: Vec<EspUki>,
}

/// The writes and removals of one update, in the order the applier acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePlan {
    /// The slot that receives the new root; never the booted one.
    pub slot: Slot,
    /// GPT label of the slot's partition once the root is written.
    pub partition_label: String,
    /// GPT label while the root is written, which no UKI names, so a
    /// half-written partition is never booted.
    pub pending_label: String,
    /// Bytes of the root image.
    pub root_size: u64,
    /// Bundle member with the UKI whose command line names `slot`.
    pub uki_member: String,
    /// Name of the new UKI in `EFI/Linux`, with a boot counter of 3 tries.
    pub uki_file: String,
    /// UKI file names in `EFI/Linux` to remove before the slot is written:
    /// every UKI except the one that boots the running root.
    pub remove: Vec<String>,
    /// The UKI of the running root, which stays as the fallback.
    pub running_uki: String,
    /// True when the bundle's version is not newer than the running one,
    /// so systemd-boot's sort order does not choose it by itself.
    pub downgrade: bool,
}

/// Boot tries systemd-boot gives a new UKI before it falls back.
pub const BOOT_TRIES: u32 = 3;

/// Plans the update of the appliance in `state` to the verified `manifest`.
pub fn plan(manifest: &BundleManifest, state: &DiskState, allow_downgrade: bool) -> Result<UpdatePlan, UpdateError> {
    super::bundle::check_applicable(manifest, &state.name, &state.version, allow_downgrade)?;

    let slot = state.booted_slot.other();
    let root = artifact_size(manifest, ROOT_IMAGE)?;
    let uki_member = uki_member(slot.letter());
    let uki_size = artifact_size(manifest, &uki_member)?;
    let partition_label = layout::label(&state.name, slot.role());
    if root > state.inactive_partition_size {
        return Err(UpdateError::SlotTooSmall {
            label: partition_label,
            needed: root,
            available: state.inactive_partition_size,
        });
    }

    let running = state
        .esp_ukis
        .iter()
        .find(|uki| uki.slot == Some(state.booted_slot) && uki.root_hash.as_deref() == Some(state.root_hash.as_str()))
        .ok_or_else(|| UpdateError::RunningUkiNotFound { root_hash: state.root_hash.clone() })?;
    if strip_boot_counter(&running.file).is_some() {
        return Err(UpdateError::NotBlessed { file: running.file.clone() });
    }

    let uki_file = format!("{}-{}+{BOOT_TRIES}.efi", manifest.name, manifest.version);
    let uncounted = strip_boot_counter(&uki_file).unwrap_or_default();
    if running.file.eq_ignore_ascii_case(&uncounted) {
        return Err(UpdateError::AlreadyRunning { version: manifest.version.clone() });
    }

    let removed: Vec<&EspUki> = state.esp_ukis.iter().filter(|uki| uki.file != running.file).collect();
    let freed: u64 = removed.iter().map(|uki| uki.size).sum();
    check_esp_space(uki_size, state.esp_free + freed)?;

    Ok(UpdatePlan {
        slot,
        pending_label: format!("{UPDATER_LABEL_PREFIX}{partition_label}"),
        partition_label,
        root_size: root,
        uki_member,
        uki_file,
        remove: removed.iter().map(|uki| uki.file.clone()).collect(),
        running_uki: running.file.clone(),
        downgrade: version::compare(&manifest.version, &state.version) != std::cmp::Ordering::Greater,
    })
}

fn artifact_size(manifest: &BundleManifest, file: &str) -> Result<u64, UpdateError> {
    manifest
        .artifacts
        .iter()
        .find(|artifact| artifact.file == file)
        .map(|artifact| artifact.size)
        .ok_or_else(|| UpdateError::MissingArtifact { file: file.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::bundle::{BundleArtifact, FORMAT};

    const MIB: u64 = 1 << 20;

    fn manifest(version: &str, root_size: u64) -> BundleManifest {
        let artifact = |file: &str, size| BundleArtifact { file: file.into(), size, sha256: "00".repeat(32) };
        BundleManifest {
            format: FORMAT,
            name: "media".into(),
            version: version.into(),
            root_hash: "22".repeat(32),
            artifacts: vec![artifact(ROOT_IMAGE, root_size), artifact("uki-a.efi", 20 * MIB), artifact("uki-b.efi", 20 * MIB)],
        }
    }

    fn uki(file: &str, slot: Slot, hash: &str) -> EspUki {
        EspUki { file: file.into(), size: 20 * MIB, slot: Some(slot), root_hash: Some(hash.repeat(32)) }
    }

    /// Slot A runs 1.0.0 (root hash 11..), blessed; nothing else on the ESP.
    fn state() -> DiskState {
        DiskState {
            name: "media".into(),
            version: "1.0.0".into(),
            booted_slot: Slot::A,
            root_hash: "11".repeat(32),
            inactive_partition_size: 256 * MIB,
            esp_free: 40 * MIB,
            esp_ukis: vec![uki("media-1.0.0.efi", Slot::A, "11")],
        }
    }

    #[test]
    fn plan_writes_inactive_slot_with_pending_label() {
        let plan = plan(&manifest("2.0.0", 160 * MIB), &state(), false).unwrap();
        assert_eq!(plan.slot, Slot::B);
        assert_eq!(plan.partition_label, "media-root-b");
        assert_eq!(plan.pending_label, "pending-media-root-b");
        assert_eq!(plan.uki_member, "uki-b.efi");
        assert_eq!(plan.uki_file, "media-2.0.0+3.efi");
        assert_eq!(plan.running_uki, "media-1.0.0.efi");
        assert!(plan.remove.is_empty(), "{:?}", plan.remove);
        assert!(!plan.downgrade);
    }

    #[test]
    fn plan_never_targets_running_slot() {
        let mut running_b = state();
        running_b.booted_slot = Slot::B;
        running_b.esp_ukis = vec![uki("media-1.0.0.efi", Slot::B, "11")];
        let plan = plan(&manifest("2.0.0", 160 * MIB), &running_b, false).unwrap();
        assert_eq!(plan.slot, Slot::A);
        assert_eq!(plan.partition_label, "media-root-a");
        assert_eq!(plan.uki_member, "uki-a.efi");
    }

    #[test]
    fn plan_removes_every_other_uki_and_keeps_running() {
        let mut after_rollback = state();
        after_rollback.esp_ukis = vec![
            uki("media-3.0.0+0-3.efi", Slot::B, "33"),
            uki("media-1.0.0.efi", Slot::A, "11"),
            uki("media-0.9.0.efi", Slot::A, "09"),
        ];
        let plan = plan(&manifest("4.0.0", 160 * MIB), &after_rollback, false).unwrap();
        assert_eq!(plan.remove, ["media-3.0.0+0-3.efi", "media-0.9.0.efi"]);
        assert_eq!(plan.running_uki, "media-1.0.0.efi");
    }

    #[test]
    fn plan_rejects_root_larger_than_slot() {
        let error = plan(&manifest("2.0.0", 300 * MIB), &state(), false).unwrap_err();
        assert!(matches!(error, UpdateError::SlotTooSmall { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("media-root-b"), "{message}");
        assert!(message.contains("300 MiB"), "{message}");
        assert!(message.contains("256 MiB"), "{message}");
    }

    #[test]
    fn plan_names_needed_and_free_esp_space() {
        let mut full = state();
        full.esp_free = 10 * MIB;
        let message = plan(&manifest("2.0.0", 160 * MIB), &full, false).unwrap_err().to_string();
        assert!(message.contains("needs 21 MiB"), "{message}");
        assert!(message.contains("10 MiB free"), "{message}");
    }

    #[test]
    fn plan_counts_removed_ukis_as_free() {
        let mut tight = state();
        tight.esp_free = 10 * MIB;
        tight.esp_ukis.push(uki("media-3.0.0+0-3.efi", Slot::B, "33"));
        assert!(plan(&manifest("4.0.0", 160 * MIB), &tight, false).is_ok());
    }

    #[test]
    fn plan_rejects_unblessed_running_entry() {
        let mut trial = state();
        trial.esp_ukis = vec![uki("media-1.0.0+2-1.efi", Slot::A, "11")];
        let error = plan(&manifest("2.0.0", 160 * MIB), &trial, false).unwrap_err();
        assert!(matches!(error, UpdateError::NotBlessed { .. }), "{error}");
    }

    #[test]
    fn plan_rejects_missing_running_uki() {
        let mut lost = state();
        lost.esp_ukis = vec![uki("media-1.0.0.efi", Slot::B, "11")];
        let error = plan(&manifest("2.0.0", 160 * MIB), &lost, false).unwrap_err();
        assert!(matches!(error, UpdateError::RunningUkiNotFound { .. }), "{error}");
    }

    #[test]
    fn plan_rejects_lower_version_unless_allowed() {
        let error = plan(&manifest("0.9.0", 160 * MIB), &state(), false).unwrap_err();
        assert!(matches!(error, UpdateError::NotNewer { .. }), "{error}");
        let downgrade = plan(&manifest("0.9.0", 160 * MIB), &state(), true).unwrap();
        assert!(downgrade.downgrade);
    }

    #[test]
    fn plan_rejects_running_version_again() {
        let error = plan(&manifest("1.0.0", 160 * MIB), &state(), true).unwrap_err();
        assert!(matches!(error, UpdateError::AlreadyRunning { .. }), "{error}");
    }

    #[test]
    fn plan_rejects_bundle_without_slot_uki() {
        let mut incomplete = manifest("2.0.0", 160 * MIB);
        incomplete.artifacts.retain(|artifact| artifact.file != "uki-b.efi");
        let error = plan(&incomplete, &state(), false).unwrap_err();
        assert!(matches!(error, UpdateError::MissingArtifact { .. }), "{error}");
    }
}
