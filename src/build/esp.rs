//! The EFI system partition, written as a FAT32 image in a file with the
//! fatfs crate, so the build mounts nothing.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use fatfs::{Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider};

use super::BuildError;

/// A clock stuck at one instant, so file times do not depend on the build's.
#[derive(Debug)]
struct FixedClock(DateTime);

impl TimeProvider for FixedClock {
    fn get_current_date(&self) -> Date {
        self.0.date
    }

    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// Converts a UNIX time to a FAT date and time (UTC, clamped to 1980).
fn fat_time(epoch: u64) -> DateTime {
    let days = (epoch / 86_400) as i64;
    let seconds = epoch % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let year = year.clamp(1980, 2107) as u16;
    DateTime {
        date: Date { year, month: month as u16, day: day as u16 },
        time: Time {
            hour: (seconds / 3600) as u16,
            min: (seconds / 60 % 60) as u16,
            sec: (seconds % 60) as u16,
            millis: 0,
        },
    }
}

/// Writes a FAT32 image of `size` bytes at `image` holding `files`
/// (path inside the ESP, content).
pub fn build(image: &Path, size: u64, volume_id: u32, epoch: u64, files: &[(String, Vec<u8>)]) -> Result<(), BuildError> {
    let error = |e: std::io::Error| BuildError::io("write ESP", image, e);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(image)
        .map_err(error)?;
    file.set_len(size).map_err(error)?;
    fatfs::format_volume(
        &mut file,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .volume_id(volume_id)
            .volume_label(*b"ESP        "),
    )
    .map_err(error)?;

    let clock: &'static FixedClock = Box::leak(Box::new(FixedClock(fat_time(epoch))));
    let filesystem = FileSystem::new(&mut file, FsOptions::new().time_provider(clock)).map_err(error)?;
    let root = filesystem.root_dir();
    for (path, data) in files {
        let mut parent = root.clone();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for directory in &parts[..parts.len() - 1] {
            parent = match parent.open_dir(directory) {
                Ok(existing) => existing,
                Err(_) => parent.create_dir(directory).map_err(error)?,
            };
        }
        let mut handle = parent.create_file(parts[parts.len() - 1]).map_err(error)?;
        handle.truncate().map_err(error)?;
        handle.write_all(data).map_err(|e| {
            if e.kind() == std::io::ErrorKind::Other || e.raw_os_error().is_none() {
                BuildError::EspFull { needed: files.iter().map(|(_, d)| d.len() as u64).sum(), size }
            } else {
                error(e)
            }
        })?;
    }
    drop(root);
    filesystem.unmount().map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_time_converts_epoch() {
        let time = fat_time(1_700_000_000);
        assert_eq!((time.date.year, time.date.month, time.date.day), (2023, 11, 14));
        assert_eq!((time.time.hour, time.time.min, time.time.sec), (22, 13, 20));
    }

    #[test]
    fn esp_image_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![("EFI/BOOT/BOOTX64.EFI".to_string(), vec![7u8; 5000])];
        let first = dir.path().join("a.img");
        let second = dir.path().join("b.img");
        build(&first, 64 << 20, 1, 0, &files).unwrap();
        build(&second, 64 << 20, 1, 0, &files).unwrap();
        assert_eq!(std::fs::read(&first).unwrap(), std::fs::read(&second).unwrap());
    }
}
