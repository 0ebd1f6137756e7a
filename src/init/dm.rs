//! Device-mapper control through ioctls on `/dev/mapper/control`, because the
//! initramfs carries no dmsetup or veritysetup. The layouts follow
//! `include/uapi/linux/dm-ioctl.h` of Linux, interface version 4.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The control node that device-mapper registers as a misc device.
pub const CONTROL: &str = "/dev/mapper/control";

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;

/// `DM_READONLY_FLAG`: the table is loaded read-only; dm-verity requires it.
const DM_READONLY_FLAG: u32 = 1 << 0;

/// `struct dm_ioctl`: the header of every device-mapper ioctl.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec`: one table line, followed by its parameter string.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

const _: () = assert!(std::mem::size_of::<DmIoctl>() == 312);
const _: () = assert!(std::mem::size_of::<DmTargetSpec>() == 40);

const DM_IOCTL_TYPE: u8 = 0xfd;
const DM_DEV_CREATE_CMD: u8 = 3;
const DM_DEV_REMOVE_CMD: u8 = 4;
const DM_DEV_SUSPEND_CMD: u8 = 6;
const DM_TABLE_LOAD_CMD: u8 = 9;

/// One line of a device-mapper table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// First sector (512 bytes) of the mapped device this line covers.
    pub start: u64,
    /// Number of sectors.
    pub length: u64,
    /// Target type, for example `verity`.
    pub target_type: String,
    /// Parameters as `dmsetup table` prints them.
    pub params: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} {}", self.start, self.length, self.target_type, self.params)
    }
}

/// A failed device-mapper request.
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("cannot open {CONTROL}: {0}; is the dm_mod module loaded?")]
    Control(io::Error),
    #[error("device-mapper {operation} of {name:?} failed: {source}")]
    Ioctl {
        operation: &'static str,
        name: String,
        source: io::Error,
    },
    #[error("invalid device-mapper request for {name:?}: {reason}")]
    Invalid { name: String, reason: &'static str },
}

/// An open `/dev/mapper/control`.
#[derive(Debug)]
pub struct Control {
    file: File,
}

/// Decodes the kernel's `huge_encode_dev` form of a device number, as
/// `struct dm_ioctl` returns it, into (major, minor).
pub fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

fn copy_name(destination: &mut [u8], name: &str) -> bool {
    // The field must keep a terminating NUL.
    if name.len() >= destination.len() || name.as_bytes().contains(&0) {
        return false;
    }
    destination[..name.len()].copy_from_slice(name.as_bytes());
    true
}

impl Control {
    /// Opens the control node.
    pub fn open() -> Result<Self, DmError> {
        Self::open_at(Path::new(CONTROL))
    }

    fn open_at(path: &Path) -> Result<Self, DmError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(DmError::Control)?;
        Ok(Self { file })
    }

    fn header(name: &str, data_size: usize) -> Result<DmIoctl, DmError> {
        let mut header = DmIoctl {
            version: [4, 0, 0],
            data_size: data_size as u32,
            data_start: std::mem::size_of::<DmIoctl>() as u32,
            target_count: 0,
            open_count: 0,
            flags: 0,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; DM_NAME_LEN],
            uuid: [0; DM_UUID_LEN],
            data: [0; 7],
        };
        if name.is_empty() || !copy_name(&mut header.name, name) {
            return Err(DmError::Invalid {
                name: name.to_string(),
                reason: "the name is empty, too long or contains NUL",
            });
        }
        Ok(header)
    }

    /// Sends one ioctl with `buffer`, which starts with a `DmIoctl` header,
    /// and returns the header the kernel wrote back.
    fn call(&self, command: u8, operation: &'static str, name: &str, buffer: &mut [u8]) -> Result<DmIoctl, DmError> {
        let request = nix::request_code_readwrite!(DM_IOCTL_TYPE, command, std::mem::size_of::<DmIoctl>());
        // An 8-byte aligned copy keeps the kernel's u64 fields aligned.
        let mut aligned = vec![0u64; buffer.len().div_ceil(8)];
        // SAFETY: `aligned` has room for at least `buffer.len()` bytes, and
        // the two allocations do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(buffer.as_ptr(), aligned.as_mut_ptr().cast::<u8>(), buffer.len());
        }

        // SAFETY: the buffer starts with a valid `struct dm_ioctl` whose
        // data_size equals the buffer's length, so the kernel reads and
        // writes only inside it. The fd is the open control node.
        let result = unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, aligned.as_mut_ptr()) };
        if result < 0 {
            return Err(DmError::Ioctl {
                operation,
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }

        // SAFETY: `aligned` starts with the header the kernel filled in, is
        // 8-byte aligned and at least `size_of::<DmIoctl>()` bytes long, and
        // every bit pattern is a valid DmIoctl.
        let header = unsafe { aligned.as_ptr().cast::<DmIoctl>().read() };
        Ok(header)
    }

    fn simple(&self, command: u8, operation: &'static str, name: &str, flags: u32) -> Result<DmIoctl, DmError> {
        let mut header = Self::header(name, std::mem::size_of::<DmIoctl>())?;
        header.flags = flags;
        let mut buffer = header_bytes(&header);
        self.call(command, operation, name, &mut buffer)
    }

    /// Creates an empty device `name` and returns its (major, minor).
    pub fn create(&self, name: &str) -> Result<(u32, u32), DmError> {
        let header = self.simple(DM_DEV_CREATE_CMD, "create", name, 0)?;
        Ok(decode_dev(header.dev))
    }

    /// Loads `targets` as the inactive table of `name`; `read_only` marks
    /// the table read-only.
    pub fn load_table(&self, name: &str, targets: &[Target], read_only: bool) -> Result<(), DmError> {
        let buffer = table_buffer(name, targets, read_only)?;
        let mut buffer = buffer;
        self.call(DM_TABLE_LOAD_CMD, "table load", name, &mut buffer)?;
        Ok(())
    }

    /// Resumes `name`, which makes the loaded table live.
    pub fn resume(&self, name: &str) -> Result<(), DmError> {
        // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes the device.
        self.simple(DM_DEV_SUSPEND_CMD, "resume", name, 0)?;
        Ok(())
    }

    /// Removes the device `name`.
    pub fn remove(&self, name: &str) -> Result<(), DmError> {
        self.simple(DM_DEV_REMOVE_CMD, "remove", name, 0)?;
        Ok(())
    }
}

fn header_bytes(header: &DmIoctl) -> Vec<u8> {
    let size = std::mem::size_of::<DmIoctl>();
    let mut bytes = vec![0u8; size];
    // SAFETY: DmIoctl is a repr(C) struct of plain integers and byte arrays
    // without padding (its size is asserted above), so all `size` bytes are
    // initialized and may be copied.
    unsafe {
        std::ptr::copy_nonoverlapping((header as *const DmIoctl).cast::<u8>(), bytes.as_mut_ptr(), size);
    }
    bytes
}

fn spec_bytes(spec: &DmTargetSpec) -> Vec<u8> {
    let size = std::mem::size_of::<DmTargetSpec>();
    let mut bytes = vec![0u8; size];
    // SAFETY: DmTargetSpec is a repr(C) struct of integers and a byte array
    // without padding (its size is asserted above).
    unsafe {
        std::ptr::copy_nonoverlapping((spec as *const DmTargetSpec).cast::<u8>(), bytes.as_mut_ptr(), size);
    }
    bytes
}

/// Builds the DM_TABLE_LOAD buffer: the header, then for each target a
/// `dm_target_spec` and its NUL-terminated parameters, padded to 8 bytes.
fn table_buffer(name: &str, targets: &[Target], read_only: bool) -> Result<Vec<u8>, DmError> {
    let invalid = |reason| DmError::Invalid {
        name: name.to_string(),
        reason,
    };
    let mut body = Vec::new();
    for target in targets {
        let mut target_type = [0u8; DM_MAX_TYPE_NAME];
        if !copy_name(&mut target_type, &target.target_type) {
            return Err(invalid("the target type is longer than 15 bytes"));
        }
        if target.params.as_bytes().contains(&0) {
            return Err(invalid("the target parameters contain NUL"));
        }
        let params_len = (target.params.len() + 1).next_multiple_of(8);
        let spec = DmTargetSpec {
            sector_start: target.start,
            length: target.length,
            status: 0,
            next: (std::mem::size_of::<DmTargetSpec>() + params_len) as u32,
            target_type,
        };
        body.extend_from_slice(&spec_bytes(&spec));
        let mut params = target.params.clone().into_bytes();
        params.resize(params_len, 0);
        body.extend_from_slice(&params);
    }

    let size = std::mem::size_of::<DmIoctl>() + body.len();
    let mut header = Control::header(name, size)?;
    header.target_count = targets.len() as u32;
    if read_only {
        header.flags |= DM_READONLY_FLAG;
    }
    let mut buffer = header_bytes(&header);
    buffer.extend_from_slice(&body);
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_dev_small_numbers() {
        assert_eq!(decode_dev(253 << 8), (253, 0));
    }

    #[test]
    fn decode_dev_large_minor() {
        // huge_encode_dev(MKDEV(253, 300)) = 0x2c | 253 << 8 | 0x100 << 12
        let encoded = 0x2c | (253 << 8) | (0x100 << 12);
        assert_eq!(decode_dev(encoded), (253, 300));
    }

    #[test]
    fn table_buffer_layout() {
        let target = Target {
            start: 0,
            length: 16,
            target_type: "verity".into(),
            params: "1 254:2 254:2 4096 4096 2 3 sha256 aa bb".into(),
        };
        let buffer = table_buffer("root", std::slice::from_ref(&target), true).unwrap();

        let header_size = std::mem::size_of::<DmIoctl>();
        let spec_size = std::mem::size_of::<DmTargetSpec>();
        let params_len = (target.params.len() + 1).next_multiple_of(8);
        assert_eq!(buffer.len(), header_size + spec_size + params_len);

        let data_size = u32::from_ne_bytes(buffer[12..16].try_into().unwrap());
        assert_eq!(data_size as usize, buffer.len());
        let data_start = u32::from_ne_bytes(buffer[16..20].try_into().unwrap());
        assert_eq!(data_start as usize, header_size);
        let target_count = u32::from_ne_bytes(buffer[20..24].try_into().unwrap());
        assert_eq!(target_count, 1);
        let flags = u32::from_ne_bytes(buffer[28..32].try_into().unwrap());
        assert_eq!(flags & DM_READONLY_FLAG, DM_READONLY_FLAG);
        assert_eq!(&buffer[48..53], b"root\0");

        let spec = &buffer[header_size..];
        let length = u64::from_ne_bytes(spec[8..16].try_into().unwrap());
        assert_eq!(length, 16);
        assert_eq!(&spec[24..31], b"verity\0");
        let params = &spec[spec_size..spec_size + target.params.len() + 1];
        assert_eq!(&params[..target.params.len()], target.params.as_bytes());
        assert_eq!(params[target.params.len()], 0);
    }

    #[test]
    fn header_rejects_long_name() {
        assert!(Control::header(&"x".repeat(DM_NAME_LEN), 312).is_err());
    }

    #[test]
    fn target_display_matches_dmsetup() {
        let target = Target {
            start: 0,
            length: 8,
            target_type: "verity".into(),
            params: "1 a b".into(),
        };
        assert_eq!(target.to_string(), "0 8 verity 1 a b");
    }
}
