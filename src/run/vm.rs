//! One QEMU virtual machine (q35, OVMF, virtio disk on a copy-on-write
//! overlay, user networking with forwarded ports, swtpm, a virtio-serial
//! status port) and the operations tests and `ztms run` need on it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::accel::Accel;
use super::machine::Machine;

/// A failure to start or drive a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("image {0} not found; build it with `ztms build DEFINITION`")]
    ImageMissing(PathBuf),
    #[error("image {path} is not a bootable ztms image: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error("{what} not found at {path}; install it with: apt-get install {package}")]
    Missing {
        what: &'static str,
        path: String,
        package: &'static str,
    },
    #[error("port {port} on 127.0.0.1 is in use; stop the program that listens on it or choose another host port")]
    PortInUse { port: u16 },
    #[error("cannot {action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
    #[error("{what} did not happen within {seconds} s. Last console lines:\n{tail}")]
    Timeout {
        what: String,
        seconds: u64,
        tail: String,
    },
    #[error("the appliance reported a failed boot: {line}\nLast console lines:\n{tail}")]
    BootFailed { line: String, tail: String },
    #[error("QEMU exited ({status}) before {what}. Last console lines:\n{tail}")]
    Exited {
        status: String,
        what: String,
        tail: String,
    },
    #[error("status API: {0}")]
    Status(String),
}

fn io(action: &str) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |source| VmError::Io { action: action.into(), source }
}

/// A port forwarded from 127.0.0.1 on the host into the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub host: u16,
    pub guest: u16,
    pub udp: bool,
}

/// Everything that decides how a VM starts.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub machine: Machine,
    pub image: PathBuf,
    /// Write to the image itself instead of a throw-away overlay.
    pub persist: bool,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    pub forwards: Vec<Forward>,
    pub tpm: bool,
    /// Virtual disk size of the overlay; the appliance grows its data
    /// partition into it.
    pub disk_size: Option<u64>,
    /// Directory for the overlay, firmware variables, sockets and the
    /// console log; it is kept so a failed test can be examined.
    pub state_dir: PathBuf,
    /// Console on the terminal, keyboard included (`ztms run` without
    /// `--headless`).
    pub interactive: bool,
    /// A second network card on a LAN, for LAN-side tests: a
    /// point-to-point link to another VM, or a tap device on the host.
    pub lan: Option<LanLink>,
    /// Keep the overlay of an earlier start in `state_dir`, so a second
    /// boot finds what the first one wrote (a power cycle).
    pub keep_disk: bool,
    /// Further raw disks, attached read-only after the system disk (a USB
    /// stick with a key file, say).
    pub extra_drives: Vec<PathBuf>,
}

/// The second network card of a VM and what carries its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanLink {
    pub backend: LanBackend,
    /// Last byte of the card's MAC address, so two VMs differ.
    pub mac_suffix: u8,
    /// Record every frame of the link, both directions, in `lan.pcap` in
    /// the state directory (QEMU's filter-dump).
    pub capture: bool,
}

/// The transport of a [`LanLink`]'s frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LanBackend {
    /// A TCP connection on 127.0.0.1 to another VM: one VM listens on
    /// `port`, the other connects to it.
    Socket { port: u16, listen: bool },
    /// A tap device that QEMU creates in its own network namespace. The
    /// caller may then move it into another namespace and bridge it there;
    /// QEMU keeps its file descriptor.
    Tap { name: String },
}

impl VmConfig {
    /// Returns the configuration of a headless VM on the built-in machine
    /// with its default memory and CPUs, a TPM, a throw-away overlay and no
    /// forwarded ports.
    pub fn headless(image: &Path, state_dir: PathBuf, accel: Accel) -> VmConfig {
        let machine = Machine::default_machine();
        VmConfig {
            memory_mib: machine.memory_mib,
            cpus: machine.cpus,
            machine,
            image: image.to_path_buf(),
            persist: false,
            accel,
            forwards: Vec::new(),
            tpm: true,
            disk_size: None,
            state_dir,
            interactive: false,
            lan: None,
            keep_disk: false,
            extra_drives: Vec::new(),
        }
    }
}

/// Returns the QEMU arguments for `config`; `paths` are the files the VM
/// uses. Pure, so the command line is unit-tested.
pub fn qemu_args(config: &VmConfig, paths: &VmPaths) -> Vec<String> {
    let machine = &config.machine;
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));
    push(&["-machine", &machine.machine, "-accel", config.accel.qemu_arg()]);
    push(&["-cpu", if config.accel == Accel::Kvm { &machine.cpu_kvm } else { &machine.cpu_tcg }]);
    let memory = config.memory_mib.to_string();
    let cpus = config.cpus.to_string();
    push(&["-m", &memory, "-smp", &cpus, "-nodefaults", "-display", "none", "-no-user-config"]);
    let code = format!("if=pflash,format=raw,unit=0,readonly=on,file={}", machine.firmware_code);
    let vars = format!("if=pflash,format=raw,unit=1,file={}", paths.vars.display());
    push(&["-drive", &code, "-drive", &vars]);
    let disk = format!("if=none,id=disk0,format={},file={}", paths.disk_format, paths.disk.display());
    let disk_device = format!("{},drive=disk0", machine.disk_device);
    push(&["-drive", &disk, "-device", &disk_device]);
    for (index, drive) in config.extra_drives.iter().enumerate() {
        let spec = format!("if=none,id=extra{index},format=raw,readonly=on,file={}", drive.display());
        let device = format!("virtio-blk-pci,drive=extra{index}");
        push(&["-drive", &spec, "-device", &device]);
    }

    let mut netdev = "user,id=net0,net=10.0.2.0/24".to_string();
    for forward in &config.forwards {
        let proto = if forward.udp { "udp" } else { "tcp" };
        netdev.push_str(&format!(",hostfwd={proto}:127.0.0.1:{}-:{}", forward.host, forward.guest));
    }
    let net_device = format!("{},netdev=net0", machine.net_device);
    push(&["-netdev", &netdev, "-device", &net_device]);

    if let Some(lan) = &config.lan {
        let netdev = match &lan.backend {
            LanBackend::Socket { port, listen } => {
                let role = if *listen { "listen" } else { "connect" };
                format!("socket,id=lan0,{role}=127.0.0.1:{port}")
            }
            LanBackend::Tap { name } => format!("tap,id=lan0,ifname={name},script=no,downscript=no"),
        };
        let device = format!("{},netdev=lan0,mac=52:54:00:12:35:{:02x}", machine.net_device, lan.mac_suffix);
        push(&["-netdev", &netdev, "-device", &device]);
        if lan.capture {
            let dump = format!("filter-dump,id=lan0dump,netdev=lan0,file={}", paths.lan_capture.display());
            push(&["-object", &dump]);
        }
    }

    push(&["-device", "virtio-serial-pci"]);
    let status = format!("socket,id=status,path={},server=on,wait=off", paths.status.display());
    push(&["-chardev", &status, "-device", "virtserialport,chardev=status,name=org.ztms.status"]);

    if let Some(tpm) = &paths.tpm_socket {
        let chardev = format!("socket,id=tpmchr,path={}", tpm.display());
        let device = format!("{},tpmdev=tpm0", machine.tpm_device);
        push(&["-chardev", &chardev, "-tpmdev", "emulator,id=tpm0,chardev=tpmchr", "-device", &device]);
    }

    let monitor = format!("unix:{},server=on,wait=off", paths.monitor.display());
    push(&["-monitor", &monitor]);
    push(&["-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0"]);
    if config.interactive {
        push(&["-serial", "mon:stdio"]);
    } else {
        push(&["-serial", "stdio"]);
    }
    args
}

/// Files of one VM, all inside its state directory.
#[derive(Debug, Clone)]
pub struct VmPaths {
    pub disk: PathBuf,
    /// QEMU's name for the disk's format: `qcow2` for the overlay, `raw`
    /// or `qcow2` for an image written in place (`--persist`).
    pub disk_format: String,
    pub vars: PathBuf,
    pub status: PathBuf,
    pub monitor: PathBuf,
    pub console_log: PathBuf,
    /// Capture of the LAN link, when [`LanLink::capture`] is set.
    pub lan_capture: PathBuf,
    pub tpm_socket: Option<PathBuf>,
    pub tpm_state: PathBuf,
}

impl VmPaths {
    pub fn new(state_dir: &Path, disk: PathBuf, tpm: bool) -> Self {
        let disk_format = if disk.extension().is_some_and(|extension| extension == "raw") { "raw" } else { "qcow2" };
        Self {
            disk_format: disk_format.into(),
            disk,
            vars: state_dir.join("OVMF_VARS.fd"),
            status: state_dir.join("status.sock"),
            monitor: state_dir.join("monitor.sock"),
            console_log: state_dir.join("console.log"),
            lan_capture: state_dir.join("lan.pcap"),
            tpm_socket: tpm.then(|| state_dir.join("swtpm.sock")),
            tpm_state: state_dir.join("tpm"),
        }
    }
}

/// A running VM. Dropping it kills QEMU and swtpm.
pub struct Vm {
    qemu: Child,
    swtpm: Option<Child>,
    console: Arc<Mutex<String>>,
    /// QEMU's standard input, which is the guest's serial console.
    keyboard: Option<std::process::ChildStdin>,
    pub paths: VmPaths,
    pub started: Instant,
    /// Console bytes already matched by `wait_for_console`.
    matched_up_to: usize,
}

/// Makes a child die with its parent, so no QEMU or swtpm outlives `ztms`
/// or a test, however it ends.
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Checks the image before QEMU starts: present, a ztms disk (GPT with an
/// x86-64 root partition), firmware and swtpm installed, ports free.
pub fn preflight(config: &VmConfig) -> Result<(), VmError> {
    if !config.image.exists() {
        return Err(VmError::ImageMissing(config.image.clone()));
    }
    check_image(&config.image)?;
    for (what, path, package) in [
        ("OVMF firmware", &config.machine.firmware_code, "ovmf"),
        ("OVMF variables", &config.machine.firmware_vars, "ovmf"),
    ] {
        if !Path::new(path).exists() {
            return Err(VmError::Missing { what, path: path.clone(), package });
        }
    }
    if crate::build::host::find_program("qemu-system-x86_64").is_none() {
        return Err(VmError::Missing { what: "qemu-system-x86_64", path: "PATH".into(), package: "qemu-system-x86" });
    }
    if config.tpm && crate::build::host::find_program("swtpm").is_none() {
        return Err(VmError::Missing { what: "swtpm", path: "PATH".into(), package: "swtpm swtpm-tools" });
    }
    for forward in &config.forwards {
        if !forward.udp && TcpListener::bind(("127.0.0.1", forward.host)).is_err() {
            return Err(VmError::PortInUse { port: forward.host });
        }
        if forward.udp && std::net::UdpSocket::bind(("127.0.0.1", forward.host)).is_err() {
            return Err(VmError::PortInUse { port: forward.host });
        }
    }
    Ok(())
}

/// Reads the partition table (through qemu-img for qcow2) and requires an
/// x86-64 root partition.
fn check_image(image: &Path) -> Result<(), VmError> {
    let bad = |reason: String| VmError::BadImage { path: image.to_path_buf(), reason };
    let format = image_format(image)?;
    let head = if format == "raw" {
        let mut file = std::fs::File::open(image).map_err(io("open image"))?;
        let mut head = vec![0u8; 34 * 512];
        file.read_exact(&mut head).map_err(|e| bad(format!("too short for a GPT ({e})")))?;
        head
    } else {
        let dir = tempfile::tempdir().map_err(io("create a temporary directory"))?;
        let out = dir.path().join("head");
        let status = Command::new("qemu-img")
            .args(["dd", "-f", &format, "-O", "raw", "bs=512", "count=34"])
            .arg(format!("if={}", image.display()))
            .arg(format!("of={}", out.display()))
            .stderr(Stdio::piped())
            .output()
            .map_err(io("run qemu-img dd"))?;
        if !status.status.success() {
            return Err(bad(format!("qemu-img cannot read it: {}", String::from_utf8_lossy(&status.stderr).trim())));
        }
        std::fs::read(&out).map_err(io("read the partition table"))?
    };
    if head.get(512..520) != Some(b"EFI PART") {
        return Err(bad("no GPT partition table".into()));
    }
    let x86_root = crate::build::gpt::guid_bytes(crate::build::layout::TYPE_ROOT_X86_64);
    let has_root = head[1024..]
        .chunks(128)
        .any(|entry| entry.len() >= 16 && entry[..16] == x86_root);
    if !has_root {
        return Err(bad("it has no x86-64 root partition; it was built for another architecture or by another tool".into()));
    }
    Ok(())
}

/// Returns "qcow2" or "raw" from the file's magic bytes.
fn image_format(image: &Path) -> Result<String, VmError> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(image).map_err(io("open image"))?;
    let _ = file.read(&mut magic).map_err(io("read image"))?;
    Ok(if &magic == b"QFI\xfb" { "qcow2" } else { "raw" }.into())
}

impl Vm {
    /// Starts swtpm (if asked) and QEMU. The console is copied to
    /// `console.log` in the state directory and, when `echo` is set, to
    /// standard output.
    pub fn start(config: &VmConfig, echo: bool) -> Result<Vm, VmError> {
        preflight(config)?;
        std::fs::create_dir_all(&config.state_dir).map_err(io("create the VM state directory"))?;
        let image = std::fs::canonicalize(&config.image).map_err(io("resolve the image path"))?;
        let disk = if config.persist {
            image.clone()
        } else {
            let overlay = config.state_dir.join("overlay.qcow2");
            if config.keep_disk && overlay.exists() {
                return Vm::launch(config, overlay, echo);
            }
            let _ = std::fs::remove_file(&overlay);
            let mut command = Command::new("qemu-img");
            command
                .args(["create", "-q", "-f", "qcow2", "-F", &image_format(&image)?, "-b"])
                .arg(&image)
                .arg(&overlay);
            if let Some(size) = config.disk_size {
                command.arg(size.to_string());
            }
            let output = command.output().map_err(io("run qemu-img create"))?;
            if !output.status.success() {
                return Err(VmError::BadImage {
                    path: image.clone(),
                    reason: String::from_utf8_lossy(&output.stderr).trim().to_string(),
                });
            }
            overlay
        };
        Vm::launch(config, disk, echo)
    }

    /// Starts swtpm and QEMU on `disk`, the image or its overlay.
    fn launch(config: &VmConfig, disk: PathBuf, echo: bool) -> Result<Vm, VmError> {
        let mut paths = VmPaths::new(&config.state_dir, disk, config.tpm);
        paths.disk_format = image_format(&paths.disk)?;
        if !paths.vars.exists() {
            std::fs::copy(&config.machine.firmware_vars, &paths.vars).map_err(io("copy the OVMF variables"))?;
        }
        for socket in [&paths.status, &paths.monitor] {
            let _ = std::fs::remove_file(socket);
        }

        let swtpm = match &paths.tpm_socket {
            Some(socket) => Some(start_swtpm(socket, &paths.tpm_state)?),
            None => None,
        };

        let mut command = Command::new("qemu-system-x86_64");
        command.args(qemu_args(config, &paths));
        if config.interactive {
            command.stdin(Stdio::inherit()).stdout(Stdio::inherit());
        } else {
            command.stdin(Stdio::piped()).stdout(Stdio::piped());
        }
        command.stderr(Stdio::piped());
        die_with_parent(&mut command);
        let mut qemu = command.spawn().map_err(io("start qemu-system-x86_64"))?;

        let console = Arc::new(Mutex::new(String::new()));
        let log = std::fs::File::create(&paths.console_log).map_err(io("create the console log"))?;
        if let Some(stdout) = qemu.stdout.take() {
            spawn_console_reader(stdout, log, Arc::clone(&console), echo);
        }
        if let Some(stderr) = qemu.stderr.take() {
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("qemu: {line}");
                    if let Ok(mut text) = console.lock() {
                        text.push_str(&format!("qemu: {line}\n"));
                    }
                }
            });
        }
        let keyboard = qemu.stdin.take();
        Ok(Vm { qemu, swtpm, console, keyboard, paths, started: Instant::now(), matched_up_to: 0 })
    }

    /// Returns the last `lines` console lines.
    pub fn console_tail(&self, lines: usize) -> String {
        let text = self.console.lock().map(|t| t.clone()).unwrap_or_default();
        crate::build::host::tail(&text, lines)
    }

    /// Returns the whole console output so far.
    pub fn console(&self) -> String {
        self.console.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits until a console line after the previous match matches
    /// `pattern`, and returns it. Fails early on `ztms-init: boot failed`
    /// or when QEMU exits.
    pub fn wait_for_console(&mut self, pattern: &str, timeout: Duration) -> Result<String, VmError> {
        self.wait_for_text(pattern, timeout, false)
    }

    /// Waits like [`wait_for_console`](Self::wait_for_console), but also
    /// matches the last line before its newline arrives: a question that
    /// waits for an answer on the same line.
    pub fn wait_for_prompt(&mut self, pattern: &str, timeout: Duration) -> Result<String, VmError> {
        self.wait_for_text(pattern, timeout, true)
    }

    fn wait_for_text(&mut self, pattern: &str, timeout: Duration, partial: bool) -> Result<String, VmError> {
        let regex = regex::Regex::new(pattern)
            .map_err(|e| VmError::Status(format!("invalid console pattern {pattern:?}: {e}")))?;
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            let fresh = &text[self.matched_up_to.min(text.len())..];
            let mut offset = self.matched_up_to;
            for line in fresh.split_inclusive('\n') {
                if !line.ends_with('\n') && !partial {
                    break;
                }
                offset += line.len();
                if regex.is_match(line) {
                    self.matched_up_to = offset;
                    return Ok(line.trim_end().to_string());
                }
                if line.contains("ztms-init: boot failed") && !pattern.contains("boot failed") {
                    self.matched_up_to = offset;
                    return Err(VmError::BootFailed { line: line.trim_end().into(), tail: self.console_tail(40) });
                }
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                return Err(VmError::Exited {
                    status: status.to_string(),
                    what: format!("the console showed {pattern:?}"),
                    tail: self.console_tail(40),
                });
            }
            if Instant::now() >= deadline {
                return Err(VmError::Timeout {
                    what: format!("console line matching {pattern:?}"),
                    seconds: timeout.as_secs(),
                    tail: self.console_tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends one HMP monitor command.
    pub fn monitor(&self, command: &str) -> Result<(), VmError> {
        let mut stream = UnixStream::connect(&self.paths.monitor).map_err(io("connect to the QEMU monitor"))?;
        stream.write_all(format!("{command}\n").as_bytes()).map_err(io("send a monitor command"))?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }

    /// Presses the ACPI power button and waits for QEMU to exit.
    pub fn power_down(&mut self, timeout: Duration) -> Result<(), VmError> {
        self.monitor("system_powerdown")?;
        self.wait_exit(timeout)
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(), VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = self.qemu.try_wait() {
                self.stop_swtpm();
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VmError::Timeout {
                    what: "QEMU exit".into(),
                    seconds: timeout.as_secs(),
                    tail: self.console_tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` on the serial console, as a person at the console would.
    pub fn type_console(&mut self, text: &str) -> Result<(), VmError> {
        let keyboard = self.keyboard.as_mut().ok_or_else(|| VmError::Status("the console has no input".into()))?;
        keyboard.write_all(text.as_bytes()).map_err(io("type on the console"))?;
        keyboard.flush().map_err(io("type on the console"))
    }

    /// Resets the machine as the reset button would, without warning the guest.
    pub fn reset(&self) -> Result<(), VmError> {
        self.monitor("system_reset")
    }

    /// Copies the VM's disk, as the guest left it, to a raw file at `out`
    /// for inspection. Call it after QEMU has exited.
    pub fn read_disk_raw(&self, out: &Path) -> Result<(), VmError> {
        let format = image_format(&self.paths.disk)?;
        let output = Command::new("qemu-img")
            .args(["convert", "-f", &format, "-O", "raw"])
            .arg(&self.paths.disk)
            .arg(out)
            .output()
            .map_err(io("run qemu-img convert"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(VmError::Io {
                action: format!("copy the disk to {}", out.display()),
                source: std::io::Error::other(String::from_utf8_lossy(&output.stderr).trim().to_string()),
            })
        }
    }

    /// Returns the PID of swtpm, when the VM has a TPM.
    pub fn swtpm_pid(&self) -> Option<u32> {
        self.swtpm.as_ref().map(Child::id)
    }

    /// Cuts the power: QEMU is killed without warning the guest.
    pub fn kill(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        self.stop_swtpm();
    }

    /// Stops swtpm with SIGTERM, which lets it save its state (SIGKILL
    /// during a save would lose the TPM's seeds, and with them every key
    /// sealed to it), then SIGKILL if it is still running after 5 s.
    fn stop_swtpm(&mut self) {
        let Some(mut swtpm) = self.swtpm.take() else { return };
        // The PID is our own child, not yet reaped, so it names no other
        // process.
        if let Ok(pid) = i32::try_from(swtpm.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = swtpm.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = swtpm.kill();
        let _ = swtpm.wait();
    }

    /// Queries the status API over the virtio-serial port (test images).
    pub fn status(&self, timeout: Duration) -> Result<crate::status::Status, VmError> {
        let mut stream = UnixStream::connect(&self.paths.status).map_err(io("connect to the status port"))?;
        stream.set_read_timeout(Some(timeout)).map_err(io("set a timeout"))?;
        stream.write_all(b"status\n").map_err(io("send a status request"))?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).map_err(io("read the status"))?;
        serde_json::from_str(&line).map_err(|e| VmError::Status(format!("invalid status {line:?}: {e}")))
    }

    pub fn pid(&self) -> u32 {
        self.qemu.id()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies the console as it arrives, in chunks rather than lines, so a
/// prompt that waits for input on its own line is seen at once.
fn spawn_console_reader(mut stdout: impl Read + Send + 'static, mut log: std::fs::File, console: Arc<Mutex<String>>, echo: bool) {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let count = match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(count) => count,
            };
            let _ = log.write_all(&chunk[..count]);
            pending.extend_from_slice(&chunk[..count]);
            let text = take_utf8(&mut pending).replace('\r', "");
            if echo {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
            if let Ok(mut console) = console.lock() {
                console.push_str(&text);
            }
        }
    });
}

/// Removes and returns the decodable start of `bytes`, leaving an
/// incomplete UTF-8 sequence at the end for the next chunk; invalid bytes
/// become U+FFFD.
fn take_utf8(bytes: &mut Vec<u8>) -> String {
    let mut text = String::new();
    loop {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                text.push_str(valid);
                bytes.clear();
                return text;
            }
            Err(error) => {
                let valid = error.valid_up_to();
                text.push_str(&String::from_utf8_lossy(&bytes[..valid]));
                match error.error_len() {
                    Some(length) => {
                        text.push('\u{fffd}');
                        bytes.drain(..valid + length);
                    }
                    None => {
                        bytes.drain(..valid);
                        return text;
                    }
                }
            }
        }
    }
}

fn start_swtpm(socket: &Path, state: &Path) -> Result<Child, VmError> {
    std::fs::create_dir_all(state).map_err(io("create the TPM state directory"))?;
    let _ = std::fs::remove_file(socket);
    let mut command = Command::new("swtpm");
    command
        .args(["socket", "--tpm2", "--tpmstate"])
        .arg(format!("dir={}", state.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", socket.display()))
        .args(["--flags", "startup-clear"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(&mut command);
    let child = command.spawn().map_err(io("start swtpm"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err(VmError::Timeout { what: "swtpm socket".into(), seconds: 5, tail: String::new() });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            machine: Machine::default_machine(),
            image: "x.raw".into(),
            persist: false,
            memory_mib: 1024,
            cpus: 2,
            accel: Accel::Tcg,
            forwards: vec![Forward { host: 8443, guest: 443, udp: false }],
            tpm: true,
            disk_size: None,
            state_dir: "/tmp/vm".into(),
            interactive: false,
            lan: Some(LanLink { backend: LanBackend::Socket { port: 40000, listen: true }, mac_suffix: 2, capture: true }),
            keep_disk: false,
            extra_drives: vec!["key.img".into()],
        }
    }

    #[test]
    fn console_chunks_keep_split_characters() {
        let mut bytes = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_utf8(&mut bytes), "");
        bytes.extend_from_slice(&"é".as_bytes()[1..]);
        bytes.extend_from_slice(b"ok\xff!");
        assert_eq!(take_utf8(&mut bytes), "éok\u{fffd}!");
        assert!(bytes.is_empty());
    }

    #[test]
    fn extra_drives_are_read_only() {
        let paths = VmPaths::new(Path::new("/tmp/vm"), "/tmp/vm/overlay.qcow2".into(), true);
        let args = qemu_args(&config(), &paths).join(" ");
        assert!(args.contains("-drive if=none,id=extra0,format=raw,readonly=on,file=key.img"), "{args}");
        assert!(args.contains("-device virtio-blk-pci,drive=extra0"), "{args}");
    }

    #[test]
    fn persisted_raw_image_is_raw_drive() {
        let paths = VmPaths::new(Path::new("/tmp/vm"), "/images/media-server.raw".into(), true);
        let args = qemu_args(&config(), &paths).join(" ");
        assert!(args.contains("-drive if=none,id=disk0,format=raw,file=/images/media-server.raw"), "{args}");
    }

    #[test]
    fn args_forward_only_to_loopback() {
        let config = config();
        let paths = VmPaths::new(Path::new("/tmp/vm"), "/tmp/vm/overlay.qcow2".into(), true);
        let args = qemu_args(&config, &paths).join(" ");
        assert!(args.contains("hostfwd=tcp:127.0.0.1:8443-:443"), "{args}");
        assert!(args.contains("tpm-tis"), "{args}");
        assert!(args.contains("name=org.ztms.status"), "{args}");
        assert!(args.contains("OVMF_CODE_4M.fd"), "{args}");
        assert!(args.contains("socket,id=lan0,listen=127.0.0.1:40000"), "{args}");
        assert!(args.contains("filter-dump,id=lan0dump,netdev=lan0,file=/tmp/vm/lan.pcap"), "{args}");
    }

    #[test]
    fn tap_lan_runs_no_script() {
        let mut config = config();
        config.lan = Some(LanLink { backend: LanBackend::Tap { name: "ztms-lan0".into() }, mac_suffix: 3, capture: false });
        let paths = VmPaths::new(Path::new("/tmp/vm"), "/tmp/vm/overlay.qcow2".into(), true);
        let args = qemu_args(&config, &paths).join(" ");
        assert!(args.contains("-netdev tap,id=lan0,ifname=ztms-lan0,script=no,downscript=no"), "{args}");
        assert!(args.contains("netdev=lan0,mac=52:54:00:12:35:03"), "{args}");
        assert!(!args.contains("filter-dump"), "{args}");
    }
}
