//! The `ztms.*` arguments of the kernel command line, which `ztms build`
//! writes into each slot's UKI.
//!
//! The kernel keeps dotted arguments for itself instead of passing them to
//! init, so ztms-init reads them from `/proc/cmdline`.

/// The root slot and how to verify it, from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// `ztms.slot`: `a` or `b`.
    pub slot: String,
    /// `ztms.root`: GPT partition label of the slot's root partition.
    pub root_label: String,
    /// `ztms.roothash`: dm-verity root hash, lowercase hex.
    pub root_hash: String,
    /// `ztms.verity`: where the hash tree is and how it is salted.
    pub verity: VerityParams,
    /// `ztms.data`: GPT partition label of the data partition, if given.
    pub data_label: Option<String>,
    /// `ztms.log`: the most verbose level logged, if given.
    pub log_level: Option<log::LevelFilter>,
}

/// Geometry of a dm-verity hash tree in the same partition as its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// Number of 4096-byte data blocks.
    pub data_blocks: u64,
    /// Index of the hash tree's first 4096-byte block in the partition.
    pub hash_start_block: u64,
    /// Salt in hex; `-` for none, as dm-verity writes it.
    pub salt: String,
}

/// A missing or malformed `ztms.*` argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("kernel command line has no {0}= argument; the UKI was not built by ztms build")]
    Missing(&'static str),
    #[error("invalid {key}={value:?} on the kernel command line: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Splits a kernel command line into arguments. Double quotes group words
/// with spaces and are removed, as the kernel's own parser does.
pub fn split(cmdline: &str) -> Vec<String> {
    let mut arguments = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut has_content = false;
    for character in cmdline.chars() {
        match character {
            '"' => {
                in_quotes = !in_quotes;
                has_content = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_content {
                    arguments.push(std::mem::take(&mut current));
                    has_content = false;
                }
            }
            c => {
                current.push(c);
                has_content = true;
            }
        }
    }
    if has_content {
        arguments.push(current);
    }
    arguments
}

/// Returns the value of the last `key=value` argument, as the kernel lets
/// later arguments override earlier ones.
pub fn value<'a>(arguments: &'a [String], key: &str) -> Option<&'a str> {
    arguments
        .iter()
        .rev()
        .find_map(|argument| argument.strip_prefix(key)?.strip_prefix('='))
}

/// Parses the `ztms.*` arguments that stage 1 needs.
pub fn parse(cmdline: &str) -> Result<BootParams, CmdlineError> {
    let arguments = split(cmdline);
    let required = |key: &'static str| -> Result<&str, CmdlineError> {
        match value(&arguments, key) {
            Some(text) if !text.is_empty() => Ok(text),
            _ => Err(CmdlineError::Missing(key)),
        }
    };

    let slot = required("ztms.slot")?.to_string();
    let root_label = required("ztms.root")?.to_string();

    let root_hash = required("ztms.roothash")?.to_ascii_lowercase();
    if root_hash.len() != 64 || !is_hex(&root_hash) {
        return Err(CmdlineError::Invalid {
            key: "ztms.roothash",
            value: root_hash,
            reason: "expected 64 hex digits (a SHA-256 digest)",
        });
    }

    let verity = parse_verity(required("ztms.verity")?)?;
    let data_label = value(&arguments, "ztms.data")
        .filter(|text| !text.is_empty())
        .map(str::to_string);
    let log_level = value(&arguments, "ztms.log").and_then(|text| text.parse().ok());

    Ok(BootParams {
        slot,
        root_label,
        root_hash,
        verity,
        data_label,
        log_level,
    })
}

/// Parses `ztms.verity=<data_blocks>:<hash_start_block>:<salt>`.
fn parse_verity(text: &str) -> Result<VerityParams, CmdlineError> {
    let invalid = |reason| CmdlineError::Invalid {
        key: "ztms.verity",
        value: text.to_string(),
        reason,
    };
    let mut fields = text.split(':');
    let (Some(data_blocks), Some(hash_start_block), Some(salt), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(invalid("expected <data_blocks>:<hash_start_block>:<salt hex>"));
    };

    let data_blocks: u64 = data_blocks
        .parse()
        .map_err(|_| invalid("data_blocks is not a number"))?;
    let hash_start_block: u64 = hash_start_block
        .parse()
        .map_err(|_| invalid("hash_start_block is not a number"))?;
    if data_blocks == 0 {
        return Err(invalid("data_blocks is 0"));
    }
    if hash_start_block < data_blocks {
        return Err(invalid("the hash tree starts inside the data blocks"));
    }
    let salt = salt.to_ascii_lowercase();
    let salt_valid = salt == "-" || (!salt.is_empty() && salt.len() % 2 == 0 && is_hex(&salt));
    if !salt_valid {
        return Err(invalid("the salt is not an even number of hex digits or -"));
    }

    Ok(VerityParams {
        data_blocks,
        hash_start_block,
        salt,
    })
}

fn is_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "4f8a2b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f70";

    fn full() -> String {
        format!(
            "console=ttyS0,115200 ztms.slot=a ztms.root=media-root-a ztms.roothash={HASH} \
             ztms.verity=1000:1001:00ff ztms.data=media-data quiet\n"
        )
    }

    #[test]
    fn parse_reads_every_argument() {
        let params = parse(&full()).unwrap();
        assert_eq!(params.slot, "a");
        assert_eq!(params.root_label, "media-root-a");
        assert_eq!(params.root_hash, HASH);
        assert_eq!(
            params.verity,
            VerityParams {
                data_blocks: 1000,
                hash_start_block: 1001,
                salt: "00ff".into()
            }
        );
        assert_eq!(params.data_label.as_deref(), Some("media-data"));
        assert_eq!(params.log_level, None);
    }

    #[test]
    fn parse_reports_missing_root_hash() {
        let cmdline = full().replace(&format!("ztms.roothash={HASH}"), "");
        assert_eq!(parse(&cmdline), Err(CmdlineError::Missing("ztms.roothash")));
    }

    #[test]
    fn parse_rejects_short_root_hash() {
        let cmdline = full().replace(HASH, "abcd");
        assert!(matches!(parse(&cmdline), Err(CmdlineError::Invalid { key: "ztms.roothash", .. })));
    }

    #[test]
    fn parse_rejects_verity_with_two_fields() {
        let cmdline = full().replace("1000:1001:00ff", "1000:1001");
        assert!(matches!(parse(&cmdline), Err(CmdlineError::Invalid { key: "ztms.verity", .. })));
    }

    #[test]
    fn parse_rejects_odd_salt() {
        let cmdline = full().replace("1000:1001:00ff", "1000:1001:abc");
        assert!(matches!(parse(&cmdline), Err(CmdlineError::Invalid { key: "ztms.verity", .. })));
    }

    #[test]
    fn parse_accepts_dash_salt() {
        let cmdline = full().replace("1000:1001:00ff", "1000:1001:-");
        assert_eq!(parse(&cmdline).unwrap().verity.salt, "-");
    }

    #[test]
    fn parse_rejects_hash_tree_inside_data() {
        let cmdline = full().replace("1000:1001:00ff", "1000:10:00");
        assert!(matches!(parse(&cmdline), Err(CmdlineError::Invalid { key: "ztms.verity", .. })));
    }

    #[test]
    fn later_argument_overrides_earlier() {
        let cmdline = format!("{} ztms.slot=b", full().trim());
        assert_eq!(parse(&cmdline).unwrap().slot, "b");
    }

    #[test]
    fn data_label_is_optional() {
        let cmdline = full().replace("ztms.data=media-data", "");
        assert_eq!(parse(&cmdline).unwrap().data_label, None);
    }

    #[test]
    fn log_level_is_parsed() {
        let cmdline = format!("{} ztms.log=debug", full().trim());
        assert_eq!(parse(&cmdline).unwrap().log_level, Some(log::LevelFilter::Debug));
    }

    #[test]
    fn split_keeps_quoted_spaces() {
        let arguments = split("a=1 b=\"x y\"  c\n");
        assert_eq!(arguments, ["a=1", "b=x y", "c"]);
    }

    #[test]
    fn value_ignores_longer_keys() {
        let arguments = split("ztms.rootfoo=x ztms.root=y");
        assert_eq!(value(&arguments, "ztms.root"), Some("y"));
    }
}
