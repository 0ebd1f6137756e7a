//! The update request on the virtio-serial status port of test images.
//!
//! The host sends one line, `update SIZE [allow-downgrade] [reboot]`, then
//! exactly SIZE bytes of bundle. ztms-init replies with JSON lines, each an
//! [`UpdateReply`]: progress first, then one final reply whose state is
//! `applied`, `rejected` (nothing was written) or `failed`.
//! The unix socket serves only the read-only status and never this request.

use serde::{Deserialize, Serialize};

/// First word of the request line.
pub const COMMAND: &str = "update";

/// A parsed request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateRequest {
    /// Bundle bytes that follow the line.
    pub size: u64,
    pub allow_downgrade: bool,
    /// Reboot into the new version once it is written.
    pub reboot: bool,
}

impl UpdateRequest {
    /// Returns the request line, newline included.
    pub fn line(&self) -> String {
        let mut line = format!("{COMMAND} {}", self.size);
        if self.allow_downgrade {
            line.push_str(" allow-downgrade");
        }
        if self.reboot {
            line.push_str(" reboot");
        }
        line.push('\n');
        line
    }
}

/// Returns true when `line` is an update request, valid or not.
pub fn is_update(line: &str) -> bool {
    line.split_whitespace().next() == Some(COMMAND)
}

/// Parses an update request line.
pub fn parse(line: &str) -> Result<UpdateRequest, String> {
    let usage = "use \"update SIZE [allow-downgrade] [reboot]\" with SIZE in bytes";
    let mut words = line.split_whitespace();
    if words.next() != Some(COMMAND) {
        return Err(format!("not an update request; {usage}"));
    }
    let size_text = words.next().ok_or_else(|| format!("missing bundle size; {usage}"))?;
    let size: u64 = size_text
        .parse()
        .map_err(|_| format!("invalid bundle size {size_text:?}; {usage}"))?;
    if size == 0 {
        return Err(format!("bundle size 0; {usage}"));
    }
    let mut request = UpdateRequest { size, allow_downgrade: false, reboot: false };
    for word in words {
        match word {
            "allow-downgrade" => request.allow_downgrade = true,
            "reboot" => request.reboot = true,
            other => return Err(format!("unknown update option {other:?}; {usage}")),
        }
    }
    Ok(request)
}

/// State of an update as one reply line reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateState {
    /// A step finished; more replies follow.
    Progress,
    /// The new version is written and will boot next.
    Applied,
    /// The bundle was rejected before a byte was written to the disk.
    Rejected,
    /// Writing failed; the running slot and its UKI are untouched.
    Failed,
}

impl UpdateState {
    pub fn is_final(self) -> bool {
        self != UpdateState::Progress
    }
}

/// Durations and sizes of an applied update, for benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub version: String,
    /// Slot written, `a` or `b`.
    pub slot: String,
    /// New UKI in `EFI/Linux`.
    pub uki_file: String,
    pub bundle_bytes: u64,
    pub root_bytes: u64,
    /// Receiving the bundle into `/run`.
    pub receive_ms: u64,
    /// Checking the signature and every hash.
    pub verify_ms: u64,
    /// Writing the root image to the partition, fsync included.
    pub root_write_ms: u64,
    /// Reading the written partition back and comparing its sha256.
    pub read_back_ms: u64,
    /// Everything after receiving: verify, plan, write, relabel, ESP.
    pub apply_ms: u64,
}

/// One reply line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateReply {
    pub update: UpdateState,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ApplyReport>,
}

impl UpdateReply {
    /// Returns the reply as a JSON line, newline included.
    pub fn line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_round_trips() {
        let request = UpdateRequest { size: 1234, allow_downgrade: true, reboot: true };
        assert_eq!(request.line(), "update 1234 allow-downgrade reboot\n");
        assert_eq!(parse(request.line().trim()).unwrap(), request);
    }

    #[test]
    fn request_without_size_is_invalid() {
        let error = parse("update").unwrap_err();
        assert!(error.contains("missing bundle size"), "{error}");
    }

    #[test]
    fn request_with_unknown_option_is_invalid() {
        let error = parse("update 10 force").unwrap_err();
        assert!(error.contains("\"force\""), "{error}");
    }

    #[test]
    fn status_line_is_not_update() {
        assert!(!is_update("status"));
        assert!(is_update("update 5"));
    }

    #[test]
    fn reply_line_is_json() {
        let reply = UpdateReply { update: UpdateState::Rejected, message: "bad".into(), report: None };
        let parsed: UpdateReply = serde_json::from_str(&reply.line()).unwrap();
        assert_eq!(parsed, reply);
        assert!(parsed.update.is_final());
    }
}
