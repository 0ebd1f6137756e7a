//! Machine definitions (`qemu/*.toml`): the QEMU machine type, CPU models,
//! firmware and devices a VM is made of.

use std::path::Path;

use serde::Deserialize;

/// The machine of `qemu/q35.toml`, built into the binary so `ztms run`
/// works from any directory.
pub const DEFAULT_MACHINE: &str = include_str!("../../qemu/q35.toml");

/// One machine definition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Value of QEMU's `-machine`.
    pub machine: String,
    /// CPU model under KVM.
    pub cpu_kvm: String,
    /// CPU model under TCG.
    pub cpu_tcg: String,
    /// Default guest memory in MiB.
    pub memory_mib: u32,
    /// Default number of guest CPUs.
    pub cpus: u32,
    /// Read-only UEFI firmware code.
    pub firmware_code: String,
    /// UEFI variable store template; each VM gets its own copy.
    pub firmware_vars: String,
    /// QEMU device of the system disk.
    pub disk_device: String,
    /// QEMU device of the network cards.
    pub net_device: String,
    /// QEMU device of the TPM.
    pub tpm_device: String,
}

impl Machine {
    /// Returns the built-in q35 machine.
    pub fn default_machine() -> Machine {
        // The file is part of the source tree and checked by a unit test.
        toml::from_str(DEFAULT_MACHINE).unwrap_or_else(|error| panic!("qemu/q35.toml is invalid: {error}"))
    }

    /// Reads a machine definition from `path`.
    pub fn load(path: &Path) -> Result<Machine, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read machine definition {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid machine definition {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_machine_parses() {
        let machine = Machine::default_machine();
        assert!(machine.machine.starts_with("q35"));
        assert!(machine.firmware_code.ends_with(".fd"));
    }
}
