//! The persisted log: every line ztms-init logs, service output included,
//! appended to `/data/logs/ztms.log` with a UTC time stamp, rotated by size.
//!
//! Lines logged before `/data` is mounted wait in a bounded buffer and are
//! written first, so the file contains each boot from its start.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Size at which the file is rotated.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Rotated files kept: `ztms.log.1` (newest) to `ztms.log.<KEEP>`.
pub const KEEP: u32 = 3;
/// Bytes of early lines buffered until the file opens; older ones are
/// dropped first.
const EARLY_BUFFER_BYTES: usize = 256 << 10;

/// The log file, or the buffer of early lines until there is one.
#[derive(Debug, Default)]
pub struct LogFile {
    path: Option<PathBuf>,
    file: Option<File>,
    size: u64,
    early: Vec<String>,
    early_bytes: usize,
}

impl LogFile {
    /// Adds one line (with its newline).
    pub fn write(&mut self, line: &str) {
        let stamped = format!("{} {line}", utc_stamp(SystemTime::now()));
        if self.file.is_none() {
            self.early_bytes += stamped.len();
            self.early.push(stamped);
            while self.early_bytes > EARLY_BUFFER_BYTES && !self.early.is_empty() {
                let dropped = self.early.remove(0);
                self.early_bytes -= dropped.len();
            }
            return;
        }
        self.append(&stamped);
    }

    /// Opens `path` for appending and writes the buffered early lines.
    pub fn open(&mut self, path: &Path) -> std::io::Result<()> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        self.path = Some(path.to_path_buf());
        for line in std::mem::take(&mut self.early) {
            self.append(&line);
        }
        self.early_bytes = 0;
        Ok(())
    }

    /// Writes the file's data to the disk.
    pub fn sync(&mut self) {
        if let Some(file) = self.file.as_ref() {
            let _ = file.sync_data();
        }
    }

    /// Syncs and closes the file; later lines are buffered again.
    pub fn close(&mut self) {
        if let Some(file) = self.file.take() {
            let _ = file.sync_data();
        }
        self.path = None;
    }

    fn append(&mut self, line: &str) {
        if self.size + line.len() as u64 > MAX_FILE_BYTES {
            self.rotate();
        }
        if let Some(file) = self.file.as_mut() {
            if file.write_all(line.as_bytes()).is_ok() {
                self.size += line.len() as u64;
            }
        }
    }

    /// Shifts `ztms.log.N` to `.N+1`, drops the oldest, and starts a new
    /// file. A failure keeps appending to the current file.
    fn rotate(&mut self) {
        let Some(path) = self.path.clone() else { return };
        let numbered = |n: u32| {
            let mut name = path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let _ = std::fs::remove_file(numbered(KEEP));
        for n in (1..KEEP).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if std::fs::rename(&path, numbered(1)).is_err() {
            return;
        }
        if let Ok(file) = OpenOptions::new().create(true).append(true).open(&path) {
            self.file = Some(file);
            self.size = 0;
        }
    }
}

/// Formats a time as `2026-12-04T23:40:01.123Z`.
pub fn utc_stamp(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let rest = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian date (the
/// era-based method of Howard Hinnant's date algorithms).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_are_utc_dates() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let time = UNIX_EPOCH + Duration::from_millis(1_796_427_601_123);
        assert_eq!(utc_stamp(time), "2026-12-04T23:40:01.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_stamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn early_lines_are_written_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ztms.log");
        let mut log = LogFile::default();
        log.write("early\n");
        log.open(&path).unwrap();
        log.write("late\n");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().map(|line| line.split_once(' ').unwrap().1).collect();
        assert_eq!(lines, ["early", "late"]);
    }

    #[test]
    fn rotation_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ztms.log");
        let mut log = LogFile::default();
        log.open(&path).unwrap();
        let line = format!("{}\n", "x".repeat(1000));
        for _ in 0..(MAX_FILE_BYTES as usize / 1000) * 6 {
            log.write(&line);
        }
        log.close();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ztms.log", "ztms.log.1", "ztms.log.2", "ztms.log.3"]);
        for name in &names {
            let size = std::fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(size <= MAX_FILE_BYTES, "{name} has {size} bytes");
        }
    }

    #[test]
    fn early_buffer_is_bounded() {
        let mut log = LogFile::default();
        for _ in 0..1000 {
            log.write(&format!("{}\n", "y".repeat(1000)));
        }
        assert!(log.early_bytes <= EARLY_BUFFER_BYTES);
        assert!(!log.early.is_empty());
    }
}
