//! Shutdown requests: signals through a signalfd, and the ACPI power button
//! through its evdev device.
//!
//! The kernel drops signals to PID 1 that it neither handles nor blocks.
//! ztms-init blocks the ones it handles and reads them from the signalfd in
//! the main loop, so no handler runs asynchronously.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Final step of a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PowerOff,
    Reboot,
    Halt,
}

impl Action {
    /// Returns the console line printed before the services stop.
    pub fn announcement(self) -> &'static str {
        match self {
            Action::PowerOff => "powering off",
            Action::Reboot => "rebooting",
            Action::Halt => "halting",
        }
    }
}

/// Signals the main loop reads from the signalfd.
const HANDLED: [Signal; 6] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGHUP,
];

/// Returns the shutdown action a signal requests: SIGTERM and SIGUSR1 power
/// off, SIGINT (Ctrl-Alt-Del once the kernel forwards it) reboots, SIGUSR2
/// halts.
pub fn action_for(signal: Signal) -> Option<Action> {
    match signal {
        Signal::SIGTERM | Signal::SIGUSR1 => Some(Action::PowerOff),
        Signal::SIGINT => Some(Action::Reboot),
        Signal::SIGUSR2 => Some(Action::Halt),
        _ => None,
    }
}

/// Blocks the handled signals and returns a non-blocking signalfd for them.
/// Also makes Ctrl-Alt-Del send SIGINT instead of rebooting at once.
pub fn open() -> nix::Result<SignalFd> {
    let mut set = SigSet::empty();
    for signal in HANDLED {
        set.add(signal);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    if let Err(error) = nix::sys::reboot::set_cad_enabled(false) {
        log::warn!("disabling the Ctrl-Alt-Del reboot failed: {error}");
    }
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// Reads every pending signal from `fd`.
pub fn drain(fd: &mut SignalFd) -> Vec<Signal> {
    let mut signals = Vec::new();
    loop {
        match fd.read_signal() {
            Ok(Some(info)) => {
                if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                    signals.push(signal);
                }
            }
            Ok(None) => break,
            Err(error) => {
                log::warn!("reading the signalfd failed: {error}");
                break;
            }
        }
    }
    signals
}

/// `EV_KEY` from `linux/input-event-codes.h`.
const EV_KEY: u16 = 1;
/// `KEY_POWER` from `linux/input-event-codes.h`.
const KEY_POWER: u16 = 116;
/// Size of `struct input_event` on 64-bit Linux: a 16-byte timeval, then
/// type (u16), code (u16) and value (i32).
pub const INPUT_EVENT_SIZE: usize = 24;

/// Returns true when `event` is a press of the power key.
pub fn is_power_press(event: &[u8; INPUT_EVENT_SIZE]) -> bool {
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// An open power button input device.
#[derive(Debug)]
pub struct PowerButton {
    pub path: PathBuf,
    file: File,
    partial: Vec<u8>,
}

impl PowerButton {
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads the pending events and returns true if one is a power key
    /// press. Returns an error when the device is gone.
    pub fn read_press(&mut self) -> io::Result<bool> {
        let mut pressed = false;
        let mut buffer = [0u8; INPUT_EVENT_SIZE * 16];
        loop {
            match self.file.read(&mut buffer) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "input device closed")),
                Ok(count) => {
                    self.partial.extend_from_slice(&buffer[..count]);
                    while self.partial.len() >= INPUT_EVENT_SIZE {
                        let event: Vec<u8> = self.partial.drain(..INPUT_EVENT_SIZE).collect();
                        let mut array = [0u8; INPUT_EVENT_SIZE];
                        array.copy_from_slice(&event);
                        pressed |= is_power_press(&array);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(pressed),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
    }
}

/// Opens every input device whose name contains "Power Button" (the ACPI
/// button driver names them so), found through `/sys/class/input`.
pub fn open_power_buttons(sys_class_input: &Path) -> Vec<PowerButton> {
    let Ok(entries) = std::fs::read_dir(sys_class_input) else {
        return Vec::new();
    };
    let mut buttons = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let Ok(device_name) = std::fs::read_to_string(entry.path().join("device/name")) else {
            continue;
        };
        if !device_name.contains("Power Button") {
            continue;
        }
        let path = Path::new("/dev/input").join(&name);
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path);
        match opened {
            Ok(file) => {
                log::info!("watching {} ({}) for power button presses", path.display(), device_name.trim());
                buttons.push(PowerButton {
                    path,
                    file,
                    partial: Vec::new(),
                });
            }
            Err(error) => log::warn!("opening power button {} failed: {error}", path.display()),
        }
    }
    buttons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; INPUT_EVENT_SIZE] {
        let mut bytes = [0u8; INPUT_EVENT_SIZE];
        bytes[16..18].copy_from_slice(&kind.to_ne_bytes());
        bytes[18..20].copy_from_slice(&code.to_ne_bytes());
        bytes[20..24].copy_from_slice(&value.to_ne_bytes());
        bytes
    }

    #[test]
    fn power_key_press_is_detected() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
    }

    #[test]
    fn power_key_release_is_ignored() {
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)));
    }

    #[test]
    fn sync_event_is_ignored() {
        assert!(!is_power_press(&event(0, 0, 0)));
    }

    #[test]
    fn signals_map_to_actions() {
        assert_eq!(action_for(Signal::SIGTERM), Some(Action::PowerOff));
        assert_eq!(action_for(Signal::SIGUSR1), Some(Action::PowerOff));
        assert_eq!(action_for(Signal::SIGINT), Some(Action::Reboot));
        assert_eq!(action_for(Signal::SIGUSR2), Some(Action::Halt));
        assert_eq!(action_for(Signal::SIGCHLD), None);
        assert_eq!(action_for(Signal::SIGHUP), None);
    }

    #[test]
    fn input_event_size_matches_kernel() {
        assert_eq!(INPUT_EVENT_SIZE, std::mem::size_of::<libc::input_event>());
    }
}
