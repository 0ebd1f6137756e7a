//! Running a helper program (cryptsetup, tpm2-tools, sfdisk) from a boot
//! phase, with secrets handed over through pipes so that no key is ever
//! written to a file.
//!
//! Boot phases run before the supervisor loop reaps with `waitpid(-1)`, so
//! waiting for the child here cannot lose its exit status.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// File descriptor number at which the child finds [`Run::fd3`].
pub const EXTRA_FD: i32 = 3;

/// One run of a helper program.
pub struct Run<'a> {
    command: Command,
    stdin: Option<&'a [u8]>,
    fd3: Option<&'a [u8]>,
}

impl<'a> Run<'a> {
    pub fn new(program: &str) -> Self {
        let mut command = Command::new(program);
        command.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        Self { command, stdin: None, fd3: None }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.command.env(key, value);
        self
    }

    /// Bytes the child reads on its standard input.
    pub fn stdin(mut self, data: &'a [u8]) -> Self {
        self.stdin = Some(data);
        self
    }

    /// Bytes the child reads from `/dev/fd/3`.
    pub fn fd3(mut self, data: &'a [u8]) -> Self {
        self.fd3 = Some(data);
        self
    }

    /// Runs the program to its end and returns its standard output, or an
    /// error with its exit status and standard error.
    pub fn output(mut self) -> Result<Vec<u8>, String> {
        let program = self.command.get_program().to_string_lossy().into_owned();
        let extra = match self.fd3 {
            Some(data) => Some(filled_pipe(data).map_err(|e| format!("making a pipe for {program} failed: {e}"))?),
            None => None,
        };
        if let Some(read_end) = &extra {
            let fd = read_end.as_raw_fd();
            // SAFETY: the closure runs in the child between fork and exec and
            // calls only dup2(2) and fcntl(2), which are async-signal-safe.
            // dup2 clears FD_CLOEXEC on the new descriptor; when the pipe is
            // already fd 3, fcntl clears it instead.
            unsafe {
                self.command.pre_exec(move || {
                    let result = if fd == EXTRA_FD {
                        libc::fcntl(fd, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, EXTRA_FD)
                    };
                    if result < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = self
            .command
            .stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("starting {program} failed: {error}"))?;
        drop(extra);
        if let (Some(mut pipe), Some(data)) = (child.stdin.take(), self.stdin) {
            // A program that exits early closes its input, and its exit
            // status and standard error below give the reason.
            let _ = pipe.write_all(data);
        }
        let output = child.wait_with_output().map_err(|error| format!("waiting for {program} failed: {error}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
            return Err(format!("{program} exited with {}: {}", output.status, lines.join("; ")));
        }
        Ok(output.stdout)
    }

    /// Runs the program and returns its exit code (None when a signal ended
    /// it), for programs that report through the code (blkid, e2fsck).
    pub fn code(mut self) -> Result<(Option<i32>, String), String> {
        let program = self.command.get_program().to_string_lossy().into_owned();
        let child = self
            .command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("starting {program} failed: {error}"))?;
        let output = child.wait_with_output().map_err(|error| format!("waiting for {program} failed: {error}"))?;
        let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        stdout.push_str(&String::from_utf8_lossy(&output.stderr));
        Ok((output.status.code(), stdout))
    }
}

/// Returns the read end of a pipe that contains `data` and whose write end is
/// closed, so the reader sees `data` and then end of file.
fn filled_pipe(data: &[u8]) -> std::io::Result<OwnedFd> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // A pipe holds 64 KiB before a write blocks; keys are far smaller.
    if data.len() > 60 * 1024 {
        return Err(std::io::Error::other("secret larger than a pipe buffer"));
    }
    let mut writer = std::fs::File::from(write_end);
    writer.write_all(data)?;
    drop(writer);
    Ok(read_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_and_fd3_reach_the_child() {
        let out = Run::new("/bin/sh")
            .args(["-c", "cat; cat /dev/fd/3"])
            .stdin(b"one ")
            .fd3(b"two")
            .output()
            .unwrap();
        assert_eq!(out, b"one two");
    }

    #[test]
    fn failure_names_program_and_stderr() {
        let error = Run::new("/bin/sh").args(["-c", "echo broken >&2; exit 4"]).output().unwrap_err();
        assert!(error.contains("/bin/sh exited with exit status: 4: broken"), "{error}");
    }

    #[test]
    fn code_returns_exit_code_and_output() {
        let (code, text) = Run::new("/bin/sh").args(["-c", "echo hi; exit 2"]).code().unwrap();
        assert_eq!(code, Some(2));
        assert_eq!(text, "hi\n");
    }
}
