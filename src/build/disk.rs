//! Assembles the raw disk image from the partition contents, and converts
//! it to qcow2.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

use super::host::run;
use super::layout::{Layout, Role};
use super::{gpt, BuildError};

/// Writes a sparse raw image: the GPT, the ESP and the root of slot A.
/// Slot B and the data partition stay zero; the appliance formats the data
/// partition at first boot.
pub fn write_raw(output: &Path, layout: &Layout, esp: &Path, root: &Path) -> Result<(), BuildError> {
    let error = |e| BuildError::io("write disk image", output, e);
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(output)
        .map_err(error)?;
    disk.set_len(layout.disk_size).map_err(error)?;
    gpt::write(&mut disk, layout).map_err(error)?;
    copy_into(&mut disk, esp, layout.partition(Role::Esp).offset)?;
    copy_into(&mut disk, root, layout.partition(Role::RootA).offset)?;
    disk.sync_all().map_err(error)
}

fn copy_into(disk: &mut File, source: &Path, offset: u64) -> Result<(), BuildError> {
    let mut input = File::open(source).map_err(|e| BuildError::io("read partition", source, e))?;
    disk.seek(SeekFrom::Start(offset))
        .map_err(|e| BuildError::io("seek disk image", source, e))?;
    std::io::copy(&mut input, disk).map_err(|e| BuildError::io("copy partition", source, e))?;
    Ok(())
}

/// Converts the raw image to qcow2.
pub fn write_qcow2(raw: &Path, output: &Path) -> Result<(), BuildError> {
    run(
        "qcow2",
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(output),
    )?;
    Ok(())
}
