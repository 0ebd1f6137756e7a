//! `ztms run`: boots an image, or a definition built first, under QEMU.

pub mod accel;
pub mod machine;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vm::{Forward, Vm, VmConfig, VmError};

/// Console lines of the boot phases, printed by `--until-ready`.
pub const PHASE_PATTERN: &str = r"^ztms-init: (phase \S+ (done|failed)|stage 1|ready:)";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Disk image (.raw or .qcow2), or a definition (.toml) to build first.
    pub image: PathBuf,
    /// Output directory when IMAGE is a definition.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// No console input: the console is printed, and the VM stops when ztms does.
    #[arg(long)]
    pub headless: bool,
    /// Exit 0 once the appliance reports every service healthy, then power it off.
    #[arg(long, requires = "headless")]
    pub until_ready: bool,
    /// Seconds to wait for readiness with --until-ready.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Write to the image instead of a throw-away copy-on-write overlay.
    #[arg(long)]
    pub persist: bool,
    /// Machine definition [default: qemu/q35.toml, built in].
    #[arg(long)]
    pub machine: Option<PathBuf>,
    /// Guest memory in MiB [default: the machine definition's].
    #[arg(long)]
    pub memory: Option<u32>,
    /// Guest CPUs [default: the machine definition's].
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Forward HOST:GUEST[/udp] from 127.0.0.1 into the appliance; repeatable.
    /// Default: 8443:443 and 51820:51820/udp.
    #[arg(long = "forward", value_parser = parse_forward)]
    pub forwards: Vec<Forward>,
    /// Run without a TPM 2.0.
    #[arg(long)]
    pub no_tpm: bool,
    /// Cache of base trees and work files.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// ztms-init binary for building a definition.
    #[arg(long)]
    pub init: Option<PathBuf>,
}

fn parse_forward(text: &str) -> Result<Forward, String> {
    let (ports, udp) = match text.strip_suffix("/udp") {
        Some(ports) => (ports, true),
        None => (text.strip_suffix("/tcp").unwrap_or(text), false),
    };
    let invalid = || format!("invalid forward {text:?}: use HOST:GUEST or HOST:GUEST/udp, for example 8443:443");
    let (host, guest) = ports.split_once(':').ok_or_else(invalid)?;
    Ok(Forward {
        host: host.parse().map_err(|_| invalid())?,
        guest: guest.parse().map_err(|_| invalid())?,
        udp,
    })
}

/// Returns the path of `name` in the directory of the running program.
pub fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the running program: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Test binaries live one level down, in deps/.
    let candidates = [dir.join(name), dir.join("..").join(name)];
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| format!("{name} not found beside {}; build it with `cargo build --release`", exe.display()))
}

/// Returns `$ZTMS_CACHE`, `$XDG_CACHE_HOME/ztms` or `~/.cache/ztms`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZTMS_CACHE") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("ztms");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/ztms")
}

/// Returns SOURCE_DATE_EPOCH from the environment, or the default.
pub fn source_date_epoch() -> Result<u64, String> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("invalid SOURCE_DATE_EPOCH {text:?}: use seconds since 1970")),
        Err(_) => Ok(crate::build::DEFAULT_EPOCH),
    }
}

/// Builds the definition first when `image` names one.
fn resolve_image(args: &RunArgs) -> Result<PathBuf, String> {
    if args.image.extension().is_none_or(|e| e != "toml") {
        return Ok(args.image.clone());
    }
    let loaded = crate::config::load(&args.image).map_err(|e| e.to_string())?;
    let init_binary = match &args.init {
        Some(path) => path.clone(),
        None => sibling_binary("ztms-init")?,
    };
    let options = crate::build::BuildOptions {
        out_dir: args.out.clone(),
        cache_dir: args.cache.clone().unwrap_or_else(default_cache_dir),
        init_binary,
        source_date_epoch: source_date_epoch()?,
    };
    eprintln!("ztms: building {}", args.image.display());
    crate::build::build(&loaded, &options).map_err(|e| e.to_string())?;
    Ok(args.out.join(format!("{}.qcow2", loaded.definition.image.name.get_ref())))
}

/// Runs `ztms run`.
pub fn execute(args: RunArgs) -> Result<ExitCode, String> {
    // A shell starts a background job with SIGINT ignored, and the
    // children inherit that; Ctrl-C and `kill -INT` must still end ztms.
    // SAFETY: the default disposition runs no handler code of ours.
    if let Err(error) = unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, nix::sys::signal::SigHandler::SigDfl) } {
        eprintln!("ztms: restoring the default action of SIGINT failed: {error}");
    }
    let image = resolve_image(&args)?;
    let (accel, reason) = accel::detect();
    eprintln!("ztms: using {accel}: {reason}");
    let forwards = if args.forwards.is_empty() {
        vec![
            Forward { host: 8443, guest: 443, udp: false },
            Forward { host: 51820, guest: 51820, udp: true },
        ]
    } else {
        args.forwards.clone()
    };
    let state_dir = tempfile::Builder::new()
        .prefix("ztms-run-")
        .tempdir()
        .map_err(|e| format!("cannot create a state directory: {e}"))?;
    // A persisted disk keeps its TPM and firmware variables beside it: the
    // data volume's key is sealed to that TPM.
    let state_path = if args.persist {
        let mut name = image.clone().into_os_string();
        name.push(".vm");
        PathBuf::from(name)
    } else {
        state_dir.path().to_path_buf()
    };
    eprintln!("ztms: VM state directory {} (for `ztms update --vm`)", state_path.display());
    let machine = match &args.machine {
        Some(path) => machine::Machine::load(path)?,
        None => machine::Machine::default_machine(),
    };
    let config = VmConfig {
        memory_mib: args.memory.unwrap_or(machine.memory_mib),
        cpus: args.cpus.unwrap_or(machine.cpus),
        machine,
        image,
        persist: args.persist,
        accel,
        forwards: forwards.clone(),
        tpm: !args.no_tpm,
        disk_size: None,
        state_dir: state_path,
        interactive: !args.headless,
        lan: None,
        keep_disk: false,
        extra_drives: Vec::new(),
    };
    for forward in &forwards {
        let proto = if forward.udp { "udp" } else { "tcp" };
        eprintln!("ztms: 127.0.0.1:{} ({proto}) forwards to the appliance's port {}", forward.host, forward.guest);
    }
    if forwards.iter().any(|f| f.guest == 443 && !f.udp) {
        let port = forwards.iter().find(|f| f.guest == 443).map(|f| f.host).unwrap_or(8443);
        eprintln!("ztms: landing page: https://127.0.0.1:{port}/");
    }

    let mut vm = Vm::start(&config, !args.until_ready).map_err(|e| e.to_string())?;
    if !args.until_ready {
        // Ctrl-C ends ztms, and QEMU and swtpm with it through their
        // parent-death signal.
        vm.wait_exit(Duration::from_secs(u64::MAX / 4)).map_err(|e| e.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }

    match wait_until_ready(&mut vm, Duration::from_secs(args.timeout)) {
        Ok(()) => {
            eprintln!("ztms: appliance ready after {:.1} s; powering off", vm.started.elapsed().as_secs_f64());
            if let Err(error) = vm.power_down(Duration::from_secs(60)) {
                eprintln!("ztms: clean power-off failed, cutting power: {error}");
                vm.kill();
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("ztms: error: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Prints each boot phase as it completes, with its time since QEMU
/// started, until the ready line.
pub fn wait_until_ready(vm: &mut Vm, timeout: Duration) -> Result<(), VmError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = vm.wait_for_console(PHASE_PATTERN, left)?;
        eprintln!("[{:>6.1} s] {line}", vm.started.elapsed().as_secs_f64());
        if line.starts_with("ztms-init: ready:") {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_parses_udp_and_tcp() {
        assert_eq!(parse_forward("8443:443").unwrap(), Forward { host: 8443, guest: 443, udp: false });
        assert_eq!(parse_forward("51820:51820/udp").unwrap(), Forward { host: 51820, guest: 51820, udp: true });
        assert!(parse_forward("8443").unwrap_err().contains("8443"));
    }
}
