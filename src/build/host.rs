//! Host programs the build runs, and the Debian packages that provide them.

use std::path::Path;
use std::process::Command;

use super::BuildError;

/// A program the build needs: name, package, and why.
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const TOOLS: &[Tool] = &[
    Tool { program: "mmdebstrap", package: "mmdebstrap" },
    Tool { program: "mkfs.erofs", package: "erofs-utils" },
    Tool { program: "veritysetup", package: "cryptsetup-bin" },
    Tool { program: "objcopy", package: "binutils" },
    Tool { program: "dpkg-deb", package: "dpkg" },
    Tool { program: "qemu-img", package: "qemu-utils" },
    Tool { program: "tar", package: "tar" },
    Tool { program: "cp", package: "coreutils" },
];

/// systemd-boot and its UKI stub, from Debian's systemd-boot-efi package.
pub const SYSTEMD_BOOT_EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
pub const UKI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Fails with the apt command that installs every missing program.
pub fn preflight() -> Result<(), BuildError> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|tool| find_program(tool.program).is_none())
        .map(|tool| tool.package)
        .collect();
    for file in [SYSTEMD_BOOT_EFI, UKI_STUB] {
        if !Path::new(file).exists() {
            missing.push("systemd-boot-efi");
        }
    }
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    Err(BuildError::MissingTools(format!(
        "install them with: apt-get install {}",
        missing.join(" ")
    )))
}

pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `command`, returning its standard output; on failure the error
/// carries the step, the command line and the last lines of its output.
pub fn run(step: &str, command: &mut Command) -> Result<String, BuildError> {
    let line = format!("{command:?}");
    let output = command.output().map_err(|source| BuildError::Spawn {
        step: step.into(),
        command: line.clone(),
        source,
    })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    Err(BuildError::Command {
        step: step.into(),
        command: line,
        status: output.status.to_string(),
        output: tail(&text, 25),
    })
}

/// Returns the last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
