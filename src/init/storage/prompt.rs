//! Questions on the console: the recovery key (typed without echo) and
//! yes/no offers with a time limit.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, LocalFlags, SetArg};

const CONSOLE: &str = "/dev/console";

/// The console, opened for one exchange.
pub struct Console {
    reader: BufReader<File>,
    writer: File,
}

impl Console {
    pub fn open() -> Result<Self, String> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONSOLE)
            .map_err(|e| format!("opening {CONSOLE} failed: {e}"))?;
        let writer = file.try_clone().map_err(|e| format!("duplicating {CONSOLE} failed: {e}"))?;
        Ok(Self { reader: BufReader::new(file), writer })
    }

    /// Writes `text` as it is.
    pub fn say(&mut self, text: &str) {
        let _ = self.writer.write_all(text.as_bytes());
        let _ = self.writer.flush();
    }

    /// Asks `question` and returns the line typed, without echoing it.
    /// Waits as long as it takes.
    pub fn ask_secret(&mut self, question: &str) -> Result<String, String> {
        self.say(question);
        let fd = self.writer.as_fd();
        let saved = termios::tcgetattr(fd).ok();
        if let Some(saved) = &saved {
            let mut quiet = saved.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            let _ = termios::tcsetattr(fd, SetArg::TCSANOW, &quiet);
        }
        let line = self.read_line(None);
        if let Some(saved) = &saved {
            let _ = termios::tcsetattr(self.writer.as_fd(), SetArg::TCSANOW, saved);
        }
        self.say("\n");
        line?.ok_or_else(|| "no answer on the console".to_string())
    }

    /// Asks a yes/no `question`, and returns false when no reply comes within
    /// `timeout`.
    pub fn ask_yes(&mut self, question: &str, timeout: Duration) -> bool {
        self.say(question);
        match self.read_line(Some(timeout)) {
            Ok(Some(answer)) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
            _ => {
                self.say("\n");
                false
            }
        }
    }

    /// Reads one line; None when `timeout` passes first or the console
    /// reaches end of file.
    fn read_line(&mut self, timeout: Option<Duration>) -> Result<Option<String>, String> {
        if let Some(timeout) = timeout {
            if self.reader.buffer().is_empty() {
                let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(self.reader.get_ref().as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(millis)) {
                    Ok(0) => return Ok(None),
                    Ok(_) => {}
                    Err(error) => return Err(format!("waiting for the console failed: {error}")),
                }
            }
        }
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(line.trim_end_matches(['\r', '\n']).to_string())),
            Err(error) => Err(format!("reading the console failed: {error}")),
        }
    }
}
