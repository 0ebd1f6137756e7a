//! Chooses KVM or TCG. `/dev/kvm` can exist and still hang a guest, so KVM
//! is used only after a tiny guest has run to completion under it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Execution mode of guest code in QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn qemu_arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg,thread=multi",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG (software emulation)",
        })
    }
}

/// A boot sector that initializes the FPU, writes `K` to COM1 and leaves
/// through QEMU's isa-debug-exit device at port 0xf4. The FPU step is
/// there because a nested KVM seen on the build machines fails exactly on
/// OVMF's `fninit` with "KVM internal error. Suberror: 1".
fn probe_boot_sector() -> Vec<u8> {
    let code: [u8; 18] = [
        0x9b, 0xdb, 0xe3, // fninit
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'K', // mov al, 'K'
        0xee, // out dx, al
        0xba, 0xf4, 0x00, // mov dx, 0xf4
        0xb0, 0x00, // mov al, 0
        0xee, // out dx, al: QEMU exits with status 1
        0xf4, // hlt
        0xeb, 0xfe, // jmp $
    ];
    let mut sector = code.to_vec();
    sector.resize(510, 0);
    sector.extend_from_slice(&[0x55, 0xaa]);
    sector
}

/// Returns the accelerator to use: `ZTMS_ACCEL` (kvm or tcg) when set,
/// otherwise KVM if the probe guest finishes within five seconds.
pub fn detect() -> (Accel, String) {
    match std::env::var("ZTMS_ACCEL").as_deref() {
        Ok("kvm") => return (Accel::Kvm, "ZTMS_ACCEL=kvm".into()),
        Ok("tcg") => return (Accel::Tcg, "ZTMS_ACCEL=tcg".into()),
        _ => {}
    }
    match probe_kvm(Duration::from_secs(5)) {
        Ok(()) => (Accel::Kvm, "the KVM probe guest ran".into()),
        Err(reason) => (Accel::Tcg, format!("KVM is not usable: {reason}")),
    }
}

fn probe_kvm(timeout: Duration) -> Result<(), String> {
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm");
    if let Err(error) = kvm {
        return Err(format!("/dev/kvm: {error}"));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let sector = dir.path().join("probe.img");
    std::fs::write(&sector, probe_boot_sector()).map_err(|e| e.to_string())?;

    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "pc", "-accel", "kvm", "-m", "16", "-display", "none", "-nodefaults"])
        .args(["-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-drive")
        .arg(format!("format=raw,file={},if=ide", sector.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the probe guest did not finish within {} s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut output);
    }
    if output.contains('K') {
        Ok(())
    } else {
        Err("the probe guest ran but wrote nothing".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sector_is_bootable() {
        let sector = probe_boot_sector();
        assert_eq!(sector.len(), 512);
        assert_eq!(&sector[510..], &[0x55, 0xaa]);
    }
}
