//! Starting a child process for the supervisor: the one place where
//! ztms-init creates processes.
//!
//! ztms-init runs each service as an OCI container: [`spawn`] starts
//! `crun run` (see [`container`]), which applies the service's policy. The
//! supervisor's unit tests use [`spawn`] for plain processes with dropped
//! privileges.

pub mod container;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;
use nix::unistd::Pid;

/// PATH of every child. Children get only PATH and `HOME=/` from ztms-init.
const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Command and credentials of a child process.
#[derive(Debug)]
pub struct SpawnRequest<'a> {
    /// Program (an absolute path) and arguments.
    pub argv: &'a [String],
    pub uid: u32,
    pub gid: u32,
    /// `cgroup.procs` of the cgroup the child joins before exec.
    pub cgroup_procs: Option<&'a File>,
    /// Capture stdout and stderr in a pipe; otherwise they go to /dev/null.
    pub capture_output: bool,
}

/// A started child.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    /// Read end of the child's stdout and stderr, non-blocking.
    pub output: Option<OwnedFd>,
}

/// Starts `request.argv` in a new session and process group. The child gets
/// an empty signal mask, SIGPIPE at its default, stdin on /dev/null, a fixed
/// PATH and `/` as working directory. It runs as the request's uid and gid,
/// with the gid as its only supplementary group, and with no_new_privs set.
///
/// The caller owns the child from here: the returned pid must go into the
/// supervisor's pid table before the next `waitpid`, and nothing may call
/// `std::process::Child::wait`, because the reaper collects every exit.
pub fn spawn(request: &SpawnRequest) -> io::Result<Spawned> {
    let Some(program) = request.argv.first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };

    let mut command = Command::new(program);
    command
        .args(&request.argv[1..])
        .env_clear()
        .env("PATH", CHILD_PATH)
        .env("HOME", "/")
        .current_dir("/")
        .stdin(Stdio::null());

    let mut output = None;
    if request.capture_output {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // The child's end must block: programs do not expect EAGAIN on
        // stdout.
        let flags = nix::fcntl::fcntl(write.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let blocking = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(write.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(blocking))?;
        command.stdout(Stdio::from(write.try_clone()?));
        command.stderr(Stdio::from(write));
        output = Some(read);
    } else {
        command.stdout(Stdio::null()).stderr(Stdio::null());
    }

    let uid = request.uid;
    let gid = request.gid;
    let cgroup_fd: Option<RawFd> = request.cgroup_procs.map(AsRawFd::as_raw_fd);
    // SAFETY: the closure runs in the forked child before exec. It only
    // makes async-signal-safe system calls on values copied in before the
    // fork, and it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || prepare_child(uid, gid, cgroup_fd));
    }

    let child = command.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    // Dropping `Child` neither waits nor kills; the reaper collects the exit.
    drop(child);
    // Closes the parent's copies of the write end, so the pipe reports end
    // of file once the child and its descendants close theirs.
    drop(command);
    Ok(Spawned { pid, output })
}

/// Runs in the child between fork and exec; see [`spawn`].
fn prepare_child(uid: u32, gid: u32, cgroup_procs: Option<RawFd>) -> io::Result<()> {
    // SAFETY: every call below is an async-signal-safe system call on
    // stack values or on a file descriptor the parent keeps open.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()))?;
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }

        check(libc::setsid())?;

        if let Some(fd) = cgroup_procs {
            // Writing 0 moves the writing process (cgroup v2).
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            if written != 1 {
                return Err(io::Error::last_os_error());
            }
        }

        let groups = [gid as libc::gid_t];
        check(libc::setgroups(1, groups.as_ptr()))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

fn check<T: Into<i64> + Copy>(result: T) -> io::Result<()> {
    if result.into() < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
