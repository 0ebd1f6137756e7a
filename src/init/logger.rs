//! The `log` backend of ztms-init: every record goes to the console, and in
//! stage 1 to the kernel log (`/dev/kmsg`) as well.
//!
//! Console lines start with `ztms-init: `, except service output, which is
//! logged with the target [`SERVICE_OUTPUT`] and already starts with the
//! service name. Writes that fail are dropped, because PID 1 has nowhere
//! else to report them.
//!
//! In stage 2 every line also goes to the persisted log on `/data`
//! ([`super::logfile`]) once the storage phase has mounted it. The appliance
//! runs no journald, so there is no journal socket to write to.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use super::logfile::LogFile;

/// Log target of lines that a service wrote to its stdout or stderr.
pub const SERVICE_OUTPUT: &str = "service-output";

/// Maximum line length written, in bytes. Longer lines are cut, so a
/// service that prints megabytes without a newline cannot stall the console.
const MAX_LINE: usize = 2048;

struct Sinks {
    /// `/dev/console`, or `None` to use the inherited stderr.
    console: Option<File>,
    /// `/dev/kmsg` in stage 1.
    kmsg: Option<File>,
    /// The persisted log; None until stage 2 starts buffering for it.
    persisted: Option<LogFile>,
}

struct Logger {
    sinks: Mutex<Sinks>,
}

static LOGGER: Logger = Logger {
    sinks: Mutex::new(Sinks {
        console: None,
        kmsg: None,
        persisted: None,
    }),
};

/// Installs the logger. Until [`open_console`] succeeds, lines go to the
/// inherited stderr, which the kernel opens on the console for init.
pub fn install(level: log::LevelFilter) {
    // A second call fails because a logger is already set, and then the
    // first one stays in place.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Changes the most verbose level logged.
pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
}

/// Opens `/dev/console`, and `/dev/kmsg` when `with_kmsg` is set, after
/// devtmpfs is mounted.
pub fn open_console(with_kmsg: bool) {
    let console = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/console")
        .ok();
    let kmsg = if with_kmsg {
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/kmsg")
            .ok()
    } else {
        None
    };

    let mut sinks = LOGGER.sinks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if console.is_some() {
        sinks.console = console;
    }
    sinks.kmsg = kmsg;
}

/// Stops writing to `/dev/kmsg`, before stage 1 hands over to stage 2.
pub fn close_kmsg() {
    let mut sinks = LOGGER.sinks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    sinks.kmsg = None;
}

/// Starts keeping lines for the persisted log, in memory until
/// [`persist_to`] names the file.
pub fn buffer_for_persisting() {
    let mut sinks = LOGGER.sinks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    sinks.persisted.get_or_insert_with(LogFile::default);
}

/// Appends every line, the buffered ones first, to the file at `path`.
pub fn persist_to(path: &Path) -> std::io::Result<()> {
    let mut sinks = LOGGER.sinks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    sinks.persisted.get_or_insert_with(LogFile::default).open(path)
}

/// Syncs and closes the persisted log, before `/data` is unmounted.
pub fn stop_persisting() {
    let mut sinks = LOGGER.sinks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(mut file) = sinks.persisted.take() {
        file.close();
    }
}

/// Formats the console line of a record, newline included.
pub fn console_line(target: &str, message: &str) -> String {
    let message = sanitize(message);
    if target == SERVICE_OUTPUT {
        format!("{message}\n")
    } else {
        format!("ztms-init: {message}\n")
    }
}

/// Formats the `/dev/kmsg` line of a record: a syslog priority prefix, so
/// the kernel files it at the record's level.
pub fn kmsg_line(level: log::Level, target: &str, message: &str) -> String {
    let priority = match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    };
    format!("<{priority}>{}", console_line(target, message))
}

/// Replaces control characters (terminal escapes from service output
/// included) and cuts the line at [`MAX_LINE`] bytes.
fn sanitize(message: &str) -> String {
    let mut clean = String::with_capacity(message.len().min(MAX_LINE));
    for character in message.chars() {
        if clean.len() + character.len_utf8() > MAX_LINE {
            clean.push_str(" [cut]");
            break;
        }
        if character.is_control() && character != '\t' {
            clean.push('?');
        } else {
            clean.push(character);
        }
    }
    clean
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let line = console_line(record.target(), &message);

        let mut sinks = self.sinks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match sinks.console.as_mut() {
            Some(console) => {
                let _ = console.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
        if let Some(kmsg) = sinks.kmsg.as_mut() {
            // The kernel takes one record per write.
            let _ = kmsg.write_all(kmsg_line(record.level(), record.target(), &message).as_bytes());
        }
        if let Some(persisted) = sinks.persisted.as_mut() {
            persisted.write(&line);
            // A warning or an error may be the last line before a power cut.
            if record.level() <= log::Level::Warn {
                persisted.sync();
            }
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_line_has_prefix() {
        assert_eq!(console_line("ztms::init", "phase mounts done in 3 ms"), "ztms-init: phase mounts done in 3 ms\n");
    }

    #[test]
    fn service_output_has_no_prefix() {
        assert_eq!(console_line(SERVICE_OUTPUT, "web: listening"), "web: listening\n");
    }

    #[test]
    fn kmsg_line_has_priority() {
        assert_eq!(kmsg_line(log::Level::Error, "x", "boom"), "<3>ztms-init: boom\n");
    }

    #[test]
    fn control_characters_are_replaced() {
        assert_eq!(console_line(SERVICE_OUTPUT, "a\x1b[31mb\rc"), "a?[31mb?c\n");
    }

    #[test]
    fn long_lines_are_cut() {
        let line = console_line(SERVICE_OUTPUT, &"x".repeat(5000));
        assert!(line.len() < MAX_LINE + 16);
        assert!(line.ends_with(" [cut]\n"));
    }
}
