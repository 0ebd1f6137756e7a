//! Pure decisions of the storage phase: what to do with the data partition
//! given what is on it, which cipher to use, the layout of `/data`, and
//! the formats of the recovery key, the TPM token and the ext4 superblock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::build::layout::{TYPE_DATA_UNPROVISIONED, TYPE_LUKS};

/// LUKS2 label of a volume whose provisioning has not finished. Only
/// ztms-init writes it, so a partition that carries it never held data.
pub const PROVISIONING_LABEL: &str = "ztms-provisioning";
/// LUKS2 token type of the token that contains the TPM-sealed key.
pub const TOKEN_TYPE: &str = "ztms-tpm2";
/// PCRs the key is sealed to. PCR 7 measures the Secure Boot state and the
/// certificates that verified the loaded images, so it stays the same
/// across A/B updates signed by the same key and changes when Secure Boot
/// is turned off or its database changes. PCR 4 (the UKI's hash) would
/// change with every update.
pub const SEAL_PCRS: &[u32] = &[7];

/// Result of `blkid -p` on the data partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probe {
    /// GPT type GUID, lowercase.
    pub part_type: Option<String>,
    /// Content signature: `crypto_LUKS`, `ext4`, ...; None when blank.
    pub content: Option<String>,
    /// Label of the content (the LUKS2 label for a LUKS volume).
    pub label: Option<String>,
}

/// Parses `blkid -p -o export` output.
pub fn parse_blkid(text: &str) -> Probe {
    let fields: BTreeMap<&str, &str> = text.lines().filter_map(|line| line.split_once('=')).collect();
    Probe {
        part_type: fields.get("PART_ENTRY_TYPE").map(|value| value.to_ascii_lowercase()),
        content: fields.get("TYPE").map(|value| value.to_string()),
        label: fields.get("LABEL").map(|value| value.to_string()),
    }
}

/// Action of the storage phase on the data partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Create the volume; `resumed` when an earlier first boot stopped
    /// before it finished.
    Provision { resumed: bool, wiped: Option<String> },
    /// Unlock the existing volume.
    Unlock,
    /// Touch nothing, for the reason given.
    Refuse(String),
}

/// Decides from the partition's type and content. A partition is formatted
/// only when the builder left it unprovisioned and it is blank or contains
/// ztms-init's own unfinished volume, or when `wipe` is set and the
/// partition is not a ztms volume that was provisioned.
pub fn decide(probe: &Probe, wipe: bool) -> Decision {
    let found = || match (&probe.content, &probe.label) {
        (Some(content), Some(label)) => format!("{content} labelled {label:?}"),
        (Some(content), None) => content.clone(),
        (None, _) => "nothing".to_string(),
    };
    let is_luks = probe.content.as_deref() == Some("crypto_LUKS");
    let wipe_hint = "set storage.wipe = true in the definition to format it (every byte on it is lost)";
    match probe.part_type.as_deref() {
        Some(TYPE_DATA_UNPROVISIONED) => match probe.content {
            None => Decision::Provision { resumed: false, wiped: None },
            Some(_) if is_luks && probe.label.as_deref() == Some(PROVISIONING_LABEL) => {
                Decision::Provision { resumed: true, wiped: None }
            }
            Some(_) if wipe => Decision::Provision { resumed: false, wiped: Some(found()) },
            Some(_) => Decision::Refuse(format!(
                "the data partition is new but holds {}; ztms-init formats only blank partitions; {wipe_hint}",
                found()
            )),
        },
        Some(TYPE_LUKS) if is_luks => Decision::Unlock,
        Some(TYPE_LUKS) if wipe => Decision::Provision { resumed: false, wiped: Some(found()) },
        Some(TYPE_LUKS) => Decision::Refuse(format!(
            "the data partition is marked as provisioned but holds {} instead of a LUKS2 header; nothing was formatted; restore the disk from a backup, or {wipe_hint}",
            found()
        )),
        Some(other) => Decision::Refuse(format!(
            "the data partition has GPT type {other}, which ztms does not manage (expected {TYPE_LUKS} or {TYPE_DATA_UNPROVISIONED}); nothing was touched"
        )),
        None => Decision::Refuse("blkid found no GPT entry for the data partition; nothing was touched".into()),
    }
}

/// A dm-crypt cipher and its key size in bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cipher {
    pub name: &'static str,
    pub key_bits: u32,
    /// Kernel modules the cipher needs.
    pub modules: &'static [&'static str],
}

/// AES-XTS when the CPU has AES instructions; otherwise Adiantum, which
/// is fast without them.
pub fn choose_cipher(cpuinfo: &str) -> Cipher {
    let has_aes = cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| line.split_whitespace().any(|flag| flag == "aes"));
    if has_aes {
        Cipher { name: "aes-xts-plain64", key_bits: 512, modules: &["aesni_intel", "xts"] }
    } else {
        Cipher {
            name: "xchacha12,aes-adiantum-plain64",
            key_bits: 256,
            modules: &["adiantum", "nhpoly1305", "chacha_x86_64", "aes_generic"],
        }
    }
}

/// One directory of the `/data` layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutDir {
    /// Path relative to `/data`.
    pub path: String,
    pub mode: u32,
    /// Owned by root rather than by the services' owner.
    pub root_owned: bool,
}

/// Returns the directories every appliance has under `/data`, as media
/// users know them, plus `config/<service>` for each service.
pub fn data_layout(services: &[String]) -> Vec<LayoutDir> {
    let mut dirs: Vec<LayoutDir> = ["media", "torrents", "usenet", "config", "logs"]
        .iter()
        .map(|path| LayoutDir { path: path.to_string(), mode: 0o755, root_owned: false })
        .collect();
    // Only root enters the secrets directory; crun binds each file.
    dirs.push(LayoutDir { path: "secrets".into(), mode: 0o700, root_owned: true });
    dirs.extend(services.iter().map(|name| LayoutDir { path: format!("config/{name}"), mode: 0o750, root_owned: false }));
    dirs
}

/// Formats 32 random bytes as a recovery key: 8 groups of 8 hex digits.
pub fn format_recovery_key(bytes: &[u8; 32]) -> String {
    let digits = hex::encode(bytes);
    let groups: Vec<&str> = (0..8).map(|group| &digits[group * 8..group * 8 + 8]).collect();
    groups.join("-")
}

/// Returns the canonical form of a typed recovery key (any case, dashes and
/// spaces anywhere), or None when it is not 64 hex digits.
pub fn normalize_recovery_key(typed: &str) -> Option<String> {
    let digits: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: [u8; 32] = hex::decode(&digits).ok()?.try_into().ok()?;
    Some(format_recovery_key(&bytes))
}

/// The LUKS2 token that carries the TPM-sealed key: the TPM2 public and
/// private parts of the sealed object, which only the TPM that sealed them
/// can load, and only while the PCRs match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmToken {
    #[serde(rename = "type")]
    pub kind: String,
    /// Keyslot the sealed key opens, as cryptsetup writes it (a string).
    pub keyslots: Vec<String>,
    pub pcr_bank: String,
    pub pcrs: Vec<u32>,
    /// TPM2B_PUBLIC of the sealed object, hex.
    pub public: String,
    /// TPM2B_PRIVATE of the sealed object, hex.
    pub private: String,
}

impl TpmToken {
    pub fn new(keyslot: u32, public: &[u8], private: &[u8]) -> Self {
        Self {
            kind: TOKEN_TYPE.into(),
            keyslots: vec![keyslot.to_string()],
            pcr_bank: "sha256".into(),
            pcrs: SEAL_PCRS.to_vec(),
            public: hex::encode(public),
            private: hex::encode(private),
        }
    }
}

/// The parts of `cryptsetup luksDump --dump-json-metadata` the phase uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// Keyslot numbers in use.
    pub keyslots: Vec<u32>,
    /// The TPM token and its token id, if any.
    pub tpm_token: Option<(u32, TpmToken)>,
    /// Cipher of the first data segment.
    pub cipher: Option<String>,
}

/// Parses the LUKS2 JSON metadata.
pub fn parse_header(json: &str) -> Result<Header, String> {
    #[derive(Deserialize)]
    struct Metadata {
        keyslots: BTreeMap<String, serde_json::Value>,
        tokens: BTreeMap<String, serde_json::Value>,
        #[serde(default)]
        segments: BTreeMap<String, serde_json::Value>,
    }
    let metadata: Metadata =
        serde_json::from_str(json).map_err(|error| format!("the LUKS2 metadata is not what cryptsetup writes: {error}"))?;
    let mut keyslots: Vec<u32> = metadata.keyslots.keys().filter_map(|id| id.parse().ok()).collect();
    keyslots.sort_unstable();
    let tpm_token = metadata.tokens.iter().find_map(|(id, value)| {
        let token: TpmToken = serde_json::from_value(value.clone()).ok()?;
        (token.kind == TOKEN_TYPE).then(|| id.parse().ok().map(|id| (id, token)))?
    });
    let cipher = metadata
        .segments
        .values()
        .find_map(|segment| segment.get("encryption")?.as_str().map(str::to_string));
    Ok(Header { keyslots, tpm_token, cipher })
}

/// Sectors of 512 bytes kept free at the end of a GPT disk for the backup
/// header and entries, rounded up to the 1 MiB alignment.
const GPT_BACKUP_SECTORS: u64 = 2048;

/// Returns how many sectors the last partition can grow by, or None when
/// less than 1 MiB would be gained.
pub fn growth(disk_sectors: u64, start: u64, size: u64) -> Option<u64> {
    let usable_end = disk_sectors.checked_sub(GPT_BACKUP_SECTORS)?;
    let added = usable_end.checked_sub(start + size)?;
    (added >= 2048).then_some(added)
}

/// Returns the lowest keyslot number not in use (LUKS2 has 32).
pub fn free_keyslot(used: &[u32]) -> Option<u32> {
    (0..32).find(|slot| !used.contains(slot))
}

/// State an ext4 superblock records about the last unmount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext4State {
    /// True when the journal contains transactions not yet written, because
    /// the filesystem was not unmounted cleanly.
    pub needs_recovery: bool,
    /// `s_state` has the "cleanly unmounted" bit and not the error bit.
    pub valid: bool,
}

impl Ext4State {
    pub fn clean(&self) -> bool {
        self.valid && !self.needs_recovery
    }
}

/// Byte offset of the ext4 superblock on its device.
pub const EXT4_SUPERBLOCK_OFFSET: u64 = 1024;

/// Reads the unmount state from the 1024-byte ext4 superblock.
pub fn parse_ext4_superblock(superblock: &[u8]) -> Option<Ext4State> {
    const MAGIC: u16 = 0xEF53;
    const INCOMPAT_RECOVER: u32 = 0x4;
    let u16_at = |offset: usize| Some(u16::from_le_bytes(superblock.get(offset..offset + 2)?.try_into().ok()?));
    let u32_at = |offset: usize| Some(u32::from_le_bytes(superblock.get(offset..offset + 4)?.try_into().ok()?));
    if u16_at(56)? != MAGIC {
        return None;
    }
    let state = u16_at(58)?;
    let incompat = u32_at(96)?;
    Some(Ext4State {
        needs_recovery: incompat & INCOMPAT_RECOVER != 0,
        valid: state & 1 != 0 && state & 2 == 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(part_type: &str, content: Option<&str>, label: Option<&str>) -> Probe {
        Probe {
            part_type: Some(part_type.into()),
            content: content.map(Into::into),
            label: label.map(Into::into),
        }
    }

    #[test]
    fn blkid_export_parsed() {
        let text = "DEVNAME=/dev/vda4\nUUID=1\nLABEL=ztms-provisioning\nTYPE=crypto_LUKS\nPART_ENTRY_TYPE=CA7D7CCB-63ED-4C53-861C-1742536059CC\n";
        let probe = parse_blkid(text);
        assert_eq!(probe.part_type.as_deref(), Some(TYPE_LUKS));
        assert_eq!(probe.content.as_deref(), Some("crypto_LUKS"));
        assert_eq!(probe.label.as_deref(), Some(PROVISIONING_LABEL));
    }

    #[test]
    fn blank_new_partition_is_provisioned() {
        let decision = decide(&probe(TYPE_DATA_UNPROVISIONED, None, None), false);
        assert_eq!(decision, Decision::Provision { resumed: false, wiped: None });
    }

    #[test]
    fn unfinished_provisioning_is_resumed() {
        let decision = decide(&probe(TYPE_DATA_UNPROVISIONED, Some("crypto_LUKS"), Some(PROVISIONING_LABEL)), false);
        assert_eq!(decision, Decision::Provision { resumed: true, wiped: None });
    }

    #[test]
    fn foreign_content_is_never_formatted_without_wipe() {
        for (content, label) in [("ext4", Some("photos")), ("crypto_LUKS", Some("other")), ("crypto_LUKS", None)] {
            let decision = decide(&probe(TYPE_DATA_UNPROVISIONED, Some(content), label), false);
            let Decision::Refuse(reason) = decision else { panic!("{content} would be formatted") };
            assert!(reason.contains(content), "{reason}");
            assert!(reason.contains("storage.wipe = true"), "{reason}");
        }
        let decision = decide(&probe(TYPE_DATA_UNPROVISIONED, Some("ext4"), None), true);
        assert_eq!(decision, Decision::Provision { resumed: false, wiped: Some("ext4".into()) });
    }

    #[test]
    fn provisioned_volume_is_unlocked_even_with_wipe() {
        assert_eq!(decide(&probe(TYPE_LUKS, Some("crypto_LUKS"), Some("media-data")), false), Decision::Unlock);
        assert_eq!(decide(&probe(TYPE_LUKS, Some("crypto_LUKS"), Some("media-data")), true), Decision::Unlock);
    }

    #[test]
    fn provisioned_partition_without_header_is_refused() {
        let Decision::Refuse(reason) = decide(&probe(TYPE_LUKS, Some("ext4"), None), false) else {
            panic!("formatted")
        };
        assert!(reason.contains("marked as provisioned"), "{reason}");
        assert!(reason.contains("ext4"), "{reason}");
        assert!(matches!(decide(&probe(TYPE_LUKS, None, None), false), Decision::Refuse(_)));
    }

    #[test]
    fn unknown_partition_type_is_refused() {
        let decision = decide(&probe("0fc63daf-8483-4772-8e79-3d69d8477de4", None, None), true);
        assert!(matches!(decision, Decision::Refuse(reason) if reason.contains("0fc63daf")));
        assert!(matches!(decide(&Probe::default(), true), Decision::Refuse(_)));
    }

    #[test]
    fn cipher_follows_aes_flag() {
        assert_eq!(choose_cipher("flags\t\t: fpu sse2 aes avx\n").name, "aes-xts-plain64");
        assert_eq!(choose_cipher("flags\t\t: fpu sse2 avx\n").name, "xchacha12,aes-adiantum-plain64");
    }

    #[test]
    fn layout_has_media_dirs_and_private_secrets() {
        let dirs = data_layout(&["jellyfin".into()]);
        let paths: Vec<&str> = dirs.iter().map(|dir| dir.path.as_str()).collect();
        for expected in ["media", "torrents", "usenet", "config", "secrets", "config/jellyfin"] {
            assert!(paths.contains(&expected), "{expected} missing from {paths:?}");
        }
        assert_eq!(dirs.iter().find(|dir| dir.path == "secrets").map(|dir| (dir.mode, dir.root_owned)), Some((0o700, true)));
    }

    #[test]
    fn recovery_key_round_trips_through_typing() {
        let key = format_recovery_key(&[0xab; 32]);
        assert_eq!(key.len(), 71);
        assert_eq!(key.split('-').count(), 8);
        assert_eq!(normalize_recovery_key(&key.to_uppercase()), Some(key.clone()));
        assert_eq!(normalize_recovery_key(&format!("  {}  ", key.replace('-', " "))), Some(key.clone()));
        assert_eq!(normalize_recovery_key(&key[..70]), None);
        assert_eq!(normalize_recovery_key(&key.replace('a', "g")), None);
    }

    #[test]
    fn header_metadata_finds_tpm_token() {
        let json = r#"{"keyslots":{"0":{},"1":{}},"tokens":{"0":{"type":"systemd-fido2","keyslots":["1"]},"3":{"type":"ztms-tpm2","keyslots":["0"],"pcr_bank":"sha256","pcrs":[7],"public":"00","private":"11"}},"segments":{"0":{"encryption":"aes-xts-plain64"}}}"#;
        let header = parse_header(json).unwrap();
        assert_eq!(header.cipher.as_deref(), Some("aes-xts-plain64"));
        assert_eq!(header.keyslots, [0, 1]);
        let (id, token) = header.tpm_token.unwrap();
        assert_eq!(id, 3);
        assert_eq!(token, TpmToken::new(0, &[0], &[0x11]));
        assert_eq!(free_keyslot(&header.keyslots), Some(2));
        assert!(parse_header("{}").is_err());
    }

    #[test]
    fn growth_needs_a_mebibyte() {
        // A 64 MiB disk whose last partition ends 1 MiB before the backup area.
        assert_eq!(growth(131072, 2048, 126976 - 2048), Some(2048));
        assert_eq!(growth(131072, 2048, 126976), None);
        assert_eq!(growth(131072, 2048, 126977), None);
        assert_eq!(growth(1000, 2048, 10), None);
    }

    #[test]
    fn ext4_superblock_state() {
        let mut superblock = vec![0u8; 1024];
        superblock[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
        superblock[58..60].copy_from_slice(&1u16.to_le_bytes());
        assert!(parse_ext4_superblock(&superblock).unwrap().clean());
        superblock[96..100].copy_from_slice(&0x4u32.to_le_bytes());
        let state = parse_ext4_superblock(&superblock).unwrap();
        assert!(state.needs_recovery);
        assert!(!state.clean());
        superblock[56] = 0;
        assert_eq!(parse_ext4_superblock(&superblock), None);
    }
}
