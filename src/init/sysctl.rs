//! Kernel hardening through `/proc/sys`. A key the running kernel lacks is
//! logged and skipped; a key that exists but rejects the value is an error.

use std::io;
use std::path::PathBuf;

/// Settings written at boot, in order.
pub const SETTINGS: &[(&str, &str)] = &[
    // Hide kernel addresses and the kernel log from unprivileged users.
    ("kernel.kptr_restrict", "2"),
    ("kernel.dmesg_restrict", "1"),
    // 1 cannot be undone until reboot; services never load BPF programs.
    ("kernel.unprivileged_bpf_disabled", "1"),
    ("net.core.bpf_jit_harden", "2"),
    // Only root may ptrace (Yama; absent without the LSM).
    ("kernel.yama.ptrace_scope", "2"),
    ("kernel.kexec_load_disabled", "1"),
    ("kernel.perf_event_paranoid", "3"),
    ("kernel.sysrq", "0"),
    ("dev.tty.ldisc_autoload", "0"),
    ("vm.unprivileged_userfaultfd", "0"),
    ("fs.protected_symlinks", "1"),
    ("fs.protected_hardlinks", "1"),
    ("fs.protected_fifos", "2"),
    ("fs.protected_regular", "2"),
    ("fs.suid_dumpable", "0"),
    // Strict reverse-path filtering and no redirects or source routing.
    ("net.ipv4.conf.all.rp_filter", "1"),
    ("net.ipv4.conf.default.rp_filter", "1"),
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.default.accept_redirects", "0"),
    ("net.ipv4.conf.all.secure_redirects", "0"),
    ("net.ipv4.conf.default.secure_redirects", "0"),
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.default.send_redirects", "0"),
    ("net.ipv4.conf.all.accept_source_route", "0"),
    ("net.ipv4.conf.default.accept_source_route", "0"),
    ("net.ipv4.icmp_echo_ignore_broadcasts", "1"),
    ("net.ipv4.icmp_ignore_bogus_error_responses", "1"),
    ("net.ipv4.tcp_syncookies", "1"),
    ("net.ipv6.conf.all.accept_redirects", "0"),
    ("net.ipv6.conf.default.accept_redirects", "0"),
    ("net.ipv6.conf.all.accept_source_route", "0"),
    ("net.ipv6.conf.default.accept_source_route", "0"),
];

/// A key that exists and rejected its value.
#[derive(Debug, thiserror::Error)]
#[error("setting {key} = {value} failed: {source}")]
pub struct SysctlError {
    pub key: String,
    pub value: String,
    pub source: io::Error,
}

/// Returns the `/proc/sys` path of a dotted key.
pub fn key_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Writes every setting. Returns the number applied and the failures;
/// missing keys are logged and count as neither.
pub fn apply(settings: &[(&str, &str)]) -> (usize, Vec<SysctlError>) {
    let mut applied = 0;
    let mut failures = Vec::new();
    for &(key, value) in settings {
        let path = key_path(key);
        match std::fs::write(&path, value) {
            Ok(()) => applied += 1,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                log::info!("sysctl {key} does not exist in this kernel; skipped");
            }
            Err(source) => failures.push(SysctlError {
                key: key.to_string(),
                value: value.to_string(),
                source,
            }),
        }
    }
    (applied, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_path_replaces_dots() {
        assert_eq!(key_path("net.ipv4.conf.all.rp_filter"), PathBuf::from("/proc/sys/net/ipv4/conf/all/rp_filter"));
    }

    #[test]
    fn settings_have_no_duplicate_keys() {
        let mut keys: Vec<&str> = SETTINGS.iter().map(|(key, _)| *key).collect();
        keys.sort_unstable();
        let before = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), before);
    }
}
