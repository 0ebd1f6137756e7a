//! The seccomp profile of every service: an allowlist equivalent to
//! Docker's default profile (moby `profiles/seccomp/default_linux.go`),
//! with two differences in what a denied call returns.
//!
//! - A syscall the profile does not name returns ENOSYS, not EPERM, so a
//!   library probing a newer call (glibc and `clone3`, liburing and
//!   `io_uring_setup`) falls back to the older one instead of failing.
//! - Calls that only a privileged process could use (mounts, namespaces,
//!   keyrings, BPF, modules, tracing) return EPERM explicitly, so that
//!   denial is reported as a permission problem and never triggers a
//!   fallback.
//!
//! Like Docker, a granted capability also allows the syscalls that need it
//! (`cap:SYS_TIME` allows `settimeofday`, ...).

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscall,
};

/// `ENOSYS` on Linux: "function not implemented".
pub const ENOSYS: u32 = 38;
/// `EPERM` on Linux: "operation not permitted".
pub const EPERM: u32 = 1;

/// The namespace flags of `clone`: NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
/// NEWUSER, NEWPID and NEWNET (linux/sched.h).
const CLONE_NAMESPACE_FLAGS: [u64; 7] = [
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];

/// `AF_VSOCK`: sockets to the hypervisor stay closed.
const AF_VSOCK: u64 = 40;

/// Syscalls every service may make, on every architecture; names that an
/// architecture lacks are skipped by the runtime.
///
/// NOTE: the `io_uring_*` calls are left out because io_uring has been a
/// frequent source of kernel privilege escalations; they return ENOSYS and
/// programs fall back to epoll.
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset", "chdir",
    "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_time64", "futex_waitv", "futimesat", "getcpu", "getcwd",
    "getdents", "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt",
    "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl",
    "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get",
    "ioprio_set", "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link",
    "linkat", "listen", "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr",
    "lstat", "lstat64", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir",
    "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect",
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv",
    "msgsnd", "msync", "munlock", "munlockall", "munmap", "name_to_handle_at", "nanosleep",
    "newfstatat", "_newselect", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll",
    "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
    "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read",
    "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg",
    "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat",
    "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget",
    "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg",
    "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack",
    "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice",
    "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname",
    "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice",
    "wait4", "waitid", "waitpid", "write", "writev",
    // Architecture-specific calls of libc start-up and thread setup.
    "arch_prctl", "modify_ldt", "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
    "breakpoint", "cacheflush", "set_tls", "riscv_flush_icache",
];

/// Syscalls that return EPERM unless a granted capability allows them.
pub const DENIED_SYSCALLS: &[&str] = &[
    // Mounts and namespaces.
    "mount", "mount_setattr", "umount", "umount2", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "pivot_root", "chroot", "unshare", "setns",
    // Kernel keyrings, not namespaced.
    "keyctl", "add_key", "request_key",
    // Kernel code and system state.
    "bpf", "init_module", "finit_module", "delete_module", "create_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd",
    "sethostname", "setdomainname", "syslog", "settimeofday", "stime", "clock_settime",
    "clock_settime64", "vhangup", "iopl", "ioperm", "lookup_dcookie", "nfsservctl", "uselib",
    "_sysctl", "get_kernel_syms", "query_module", "vm86", "vm86old",
    // Tracing and other processes' memory.
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp", "pidfd_getfd",
    "perf_event_open", "fanotify_init", "userfaultfd",
    // Handles that bypass mount-based confinement.
    "open_by_handle_at",
    // NUMA placement.
    "get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node",
];

/// Syscalls that a capability allows, as Docker's profile grants them.
const CAPABILITY_SYSCALLS: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie",
            "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl",
            "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (Capability::SysModule, &["delete_module", "init_module", "finit_module"]),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (Capability::SysTime, &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    (Capability::SysTtyConfig, &["vhangup"]),
    (Capability::SysNice, &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// Builds the profile for a process that has `capabilities`.
pub fn default_profile(capabilities: &[Capability]) -> LinuxSeccomp {
    let granted: Vec<&str> = CAPABILITY_SYSCALLS
        .iter()
        .filter(|(capability, _)| capabilities.contains(capability))
        .flat_map(|(_, names)| names.iter().copied())
        .collect();
    let sys_admin = capabilities.contains(&Capability::SysAdmin);

    let mut allowed: Vec<&str> = ALLOWED.to_vec();
    allowed.extend(granted.iter().copied());
    allowed.sort_unstable();
    allowed.dedup();

    let denied: Vec<String> = DENIED_SYSCALLS
        .iter()
        .filter(|name| !granted.contains(name))
        .map(|name| name.to_string())
        .collect();

    let mut syscalls = vec![
        syscall(&allowed, LinuxSeccompAction::ScmpActAllow, None, None),
        syscall(&["socket"], LinuxSeccompAction::ScmpActAllow, None, Some(vec![arg(0, AF_VSOCK, None, LinuxSeccompOperator::ScmpCmpNe)])),
    ];

    // personality(2) only with the values Docker allows: PER_LINUX,
    // PER_LINUX32, UNAME26 variants and the query value 0xffffffff.
    for persona in [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(syscall(
            &["personality"],
            LinuxSeccompAction::ScmpActAllow,
            None,
            Some(vec![arg(0, persona, None, LinuxSeccompOperator::ScmpCmpEq)]),
        ));
    }

    if sys_admin {
        syscalls.push(syscall(&["clone", "clone3"], LinuxSeccompAction::ScmpActAllow, None, None));
    } else {
        // clone is allowed when its flags (argument 0 on every architecture
        // but s390) request no new namespace. With any namespace flag it
        // falls through to the default action, ENOSYS. clone3 passes its
        // flags in memory that seccomp cannot read, so it returns ENOSYS
        // and glibc falls back to clone.
        let mask: u64 = CLONE_NAMESPACE_FLAGS.iter().sum();
        syscalls.push(syscall(
            &["clone"],
            LinuxSeccompAction::ScmpActAllow,
            None,
            Some(vec![arg(0, mask, Some(0), LinuxSeccompOperator::ScmpCmpMaskedEq)]),
        ));
        syscalls.push(syscall(&["clone3"], LinuxSeccompAction::ScmpActErrno, Some(ENOSYS), None));
    }

    if !denied.is_empty() {
        syscalls.push(syscall(&denied, LinuxSeccompAction::ScmpActErrno, Some(EPERM), None));
    }

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(ENOSYS));
    profile.set_architectures(Some(architectures()));
    profile.set_syscalls(Some(syscalls));
    profile
}

/// The native architecture and the 32-bit ones its kernel runs, as Docker
/// lists them. A call from an architecture not listed kills the process.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else if cfg!(target_arch = "riscv64") {
        vec![Arch::ScmpArchRiscv64]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    }
}

fn syscall<S: AsRef<str>>(
    names: &[S],
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Option<Vec<LinuxSeccompArg>>,
) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.iter().map(|name| name.as_ref().to_string()).collect());
    rule.set_action(action);
    rule.set_errno_ret(errno);
    rule.set_args(args);
    rule
}

fn arg(index: usize, value: u64, value_two: Option<u64>, op: LinuxSeccompOperator) -> LinuxSeccompArg {
    let builder = LinuxSeccompArgBuilder::default().index(index).value(value).op(op);
    let builder = match value_two {
        Some(value_two) => builder.value_two(value_two),
        None => builder,
    };
    // Every field has a value or a default, so building cannot fail.
    builder.build().expect("LinuxSeccompArg has no required field")
}
