//! `ztms`: the host tool. Builds appliance images, boots them under QEMU and
//! reads their status.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ztms", version, about = "Build and run immutable, zero-trust media server appliances")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a disk image (raw and qcow2) and its manifest from a definition.
    Build {
        /// Appliance definition, for example images/media-server.toml.
        definition: PathBuf,
        /// Directory that receives <name>.raw, <name>.qcow2 and manifest.json.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        #[command(flatten)]
        common: BuildFlags,
    },
    /// Boot an image (or a definition, built first) under QEMU.
    Run(ztms::run::RunArgs),
    /// Print the configuration reference generated from the schema.
    ConfigDocs,
    /// Create an ed25519 update signing key pair: DIR/update.key (private,
    /// for update.signing_key) and DIR/update.pub (for update.public_key).
    Keygen {
        dir: PathBuf,
    },
    /// Audit every service against the CIS Docker Benchmark items that
    /// apply, from a definition or on a running appliance; exits non-zero
    /// when any item fails.
    Audit {
        /// Appliance definition whose planned specs are audited.
        #[arg(required_unless_present = "socket")]
        definition: Option<PathBuf>,
        /// Audit the specs that a running appliance runs, through its
        /// status socket: /run/ztms/status.sock on the appliance, or the
        /// status.sock in the state directory of a VM started by `ztms run`.
        #[arg(long, conflicts_with = "definition")]
        socket: Option<PathBuf>,
    },
    /// Print the status of a running appliance: phases, services, readiness.
    Status {
        /// Status socket: the appliance's /run/ztms/status.sock, or the
        /// status.sock in the state directory of a VM started by `ztms run`.
        socket: PathBuf,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a definition and print the resolved values as JSON.
    Check {
        definition: PathBuf,
    },
    /// WireGuard remote access.
    #[command(subcommand)]
    Wg(WgCommand),
    /// Cut a service off every network at run time, or with --undo restore
    /// it; the appliance logs both.
    Isolate {
        service: String,
        /// Lift the isolation instead.
        #[arg(long)]
        undo: bool,
        /// Status socket: the appliance's /run/ztms/status.sock, or the
        /// status.sock in the state directory of a VM started by `ztms run`.
        #[arg(long, default_value = ztms::status::SOCKET_PATH)]
        socket: PathBuf,
    },
    /// Send a signed update bundle to a VM started by `ztms run` or the
    /// tests; the appliance verifies it and writes its inactive slot.
    Update(UpdateArgs),
}

#[derive(Debug, Subcommand)]
enum WgCommand {
    /// Print the client configuration of a remote-access peer, and a QR code
    /// for the WireGuard mobile apps.
    Peer {
        /// Appliance definition that declares the peer.
        definition: PathBuf,
        /// Peer name from [[wireguard.peer]].
        name: String,
        /// Public key of the appliance's wg-remote, as `ztms status` shows it.
        #[arg(long, required_unless_present = "status")]
        server_key: Option<String>,
        /// Read the appliance's public key from this status socket instead.
        #[arg(long, conflicts_with = "server_key")]
        status: Option<PathBuf>,
        /// Host name or IPv4 address that the client connects to
        /// [default: wireguard.endpoint of the definition].
        #[arg(long)]
        endpoint: Option<String>,
        /// File with the peer's private key, written into the configuration;
        /// without it the configuration has a placeholder.
        #[arg(long)]
        private_key_file: Option<PathBuf>,
        /// Print the configuration only, without the QR code.
        #[arg(long)]
        no_qr: bool,
    },
}

#[derive(Debug, clap::Args)]
struct UpdateArgs {
    /// State directory of the VM (`ztms run` prints it); the bundle goes
    /// over its virtio-serial status port, status.sock.
    #[arg(long = "vm", value_name = "STATE_DIR")]
    vm: PathBuf,
    /// Update bundle (NAME-VERSION.ztmsb) written by `ztms build`.
    bundle: PathBuf,
    /// Reboot into the new version once it is written.
    #[arg(long)]
    reboot: bool,
    /// Install a version that is not newer than the running one.
    #[arg(long)]
    allow_downgrade: bool,
}

/// Flags shared by the commands that build.
#[derive(Debug, clap::Args)]
struct BuildFlags {
    /// Cache of base trees and work files [default: $XDG_CACHE_HOME/ztms or ~/.cache/ztms].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// ztms-init binary to install [default: ztms-init beside this program].
    #[arg(long)]
    init: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("ztms: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Build { definition, out, common } => {
            let loaded = ztms::config::load(&definition).map_err(|e| e.to_string())?;
            let options = build_options(&out, &common)?;
            let report = ztms::build::build(&loaded, &options).map_err(|e| e.to_string())?;
            print_report(&out, &report);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => ztms::run::execute(args).map_err(|e| e.to_string()),
        Command::ConfigDocs => {
            print!("{}", ztms::config::docs::render());
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { dir } => {
            let key = ztms::update::keys::generate(&dir).map_err(|e| e.to_string())?;
            println!("wrote {0}/update.key and {0}/update.pub (public key {1})", dir.display(), hex::encode(key.as_bytes()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { definition, socket } => audit(definition.as_deref(), socket.as_deref()),
        Command::Status { socket, json } => {
            let status = ztms::status::query_unix(&socket).map_err(|e| e.to_string())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Wg(WgCommand::Peer { definition, name, server_key, status, endpoint, private_key_file, no_qr }) => {
            let loaded = ztms::config::load(&definition).map_err(|e| e.to_string())?;
            let plan = ztms::net::NetworkPlan::from_definition(&loaded.definition).map_err(|e| e.to_string())?;
            let server_key = match (server_key, status) {
                (Some(key), _) => key,
                (None, Some(socket)) => remote_public_key(&socket)?,
                (None, None) => return Err("pass --server-key KEY or --status SOCKET".into()),
            };
            let private_key = match &private_key_file {
                Some(path) => Some(
                    std::fs::read_to_string(path).map_err(|e| format!("cannot read private key file {}: {e}", path.display()))?,
                ),
                None => None,
            };
            let request = ztms::net::wireguard::client::ClientRequest {
                peer: &name,
                server_public_key: &server_key,
                endpoint: endpoint.as_deref(),
                private_key: private_key.as_deref(),
            };
            let text = ztms::net::wireguard::client::render(&loaded.definition, &plan, &request).map_err(|e| e.to_string())?;
            print!("{text}");
            if !no_qr {
                if private_key.is_none() {
                    eprintln!("ztms: no QR code: the configuration has no private key; pass --private-key-file");
                } else {
                    println!("{}", ztms::net::wireguard::client::qr_code(&text)?);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Isolate { service, undo, socket } => {
            let reply = ztms::status::isolate_unix(&socket, &service, undo).map_err(|e| e.to_string())?;
            let state = if reply.isolated { "isolated from every network" } else { "not isolated" };
            println!("service {} ({}) is {state}", reply.service, reply.address);
            if reply.isolated == undo {
                return Err(format!("the appliance's isolated set does not match the request for {}", reply.service));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Update(args) => update(&args),
        Command::Check { definition } => {
            let loaded = ztms::config::load(&definition).map_err(|e| e.to_string())?;
            let json = serde_json::to_string_pretty(&loaded.definition).map_err(|e| e.to_string())?;
            println!("{json}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints the audit table of a definition or of a running appliance, and
/// fails when an item failed or a service could not be audited.
fn audit(definition: Option<&Path>, socket: Option<&Path>) -> Result<ExitCode, String> {
    let (rows, unaudited) = match (definition, socket) {
        (_, Some(socket)) => {
            let reply = ztms::status::audit_unix(socket).map_err(|e| e.to_string())?;
            (reply.rows, reply.unaudited)
        }
        (Some(definition), None) => {
            let loaded = ztms::config::load(definition).map_err(|e| e.to_string())?;
            let rows = ztms::runtime::audit_definition(&loaded.definition).map_err(|e| e.to_string())?;
            (rows, Vec::new())
        }
        (None, None) => return Err("give a definition file or --socket SOCKET".into()),
    };

    print!("{}", ztms::runtime::render_table(&rows));
    for service in &unaudited {
        eprintln!("ztms: service {} was not audited: {}", service.service, service.error);
    }
    let failed = rows.iter().filter(|row| row.outcome == ztms::runtime::Outcome::Fail).count();
    if failed > 0 {
        eprintln!("ztms: {failed} audit items failed");
    }
    if failed > 0 || !unaudited.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn update(args: &UpdateArgs) -> Result<ExitCode, String> {
    let port = args.vm.join("status.sock");
    let started = std::time::Instant::now();
    let mut print_progress = |reply: &ztms::update::protocol::UpdateReply| {
        eprintln!("[{:>6.1} s] {}", started.elapsed().as_secs_f64(), reply.message);
    };
    let reply = ztms::update::client::send(&port, &args.bundle, args.allow_downgrade, args.reboot, &mut print_progress)?;
    match reply.update {
        ztms::update::protocol::UpdateState::Applied => {
            println!("{}", reply.message);
            if let Some(report) = &reply.report {
                println!("{}", serde_json::to_string_pretty(report).map_err(|e| e.to_string())?);
            }
            Ok(ExitCode::SUCCESS)
        }
        ztms::update::protocol::UpdateState::Rejected => Err(format!("update rejected, nothing was written: {}", reply.message)),
        _ => Err(format!("update failed: {}", reply.message)),
    }
}

fn build_options(out: &Path, flags: &BuildFlags) -> Result<ztms::build::BuildOptions, String> {
    let init_binary = match &flags.init {
        Some(path) => path.clone(),
        None => ztms::run::sibling_binary("ztms-init")?,
    };
    Ok(ztms::build::BuildOptions {
        out_dir: out.to_path_buf(),
        cache_dir: flags.cache.clone().unwrap_or_else(ztms::run::default_cache_dir),
        init_binary,
        source_date_epoch: ztms::run::source_date_epoch()?,
    })
}

fn print_status(status: &ztms::status::Status) {
    println!(
        "{} {} (slot {}), {}, up {:.1} s",
        status.name,
        status.version,
        if status.slot.is_empty() { "?" } else { &status.slot },
        if status.ready { "ready" } else { "not ready" },
        status.uptime_ms as f64 / 1000.0
    );
    println!("phases:");
    for phase in &status.phases {
        let duration = phase.duration_ms.map(|ms| format!("{ms} ms")).unwrap_or_default();
        let error = phase.error.as_deref().unwrap_or_default();
        println!("  {:<14} {:<10} {:>8}  {error}", phase.name, format!("{:?}", phase.state).to_lowercase(), duration);
    }
    println!("services:");
    for service in &status.services {
        println!(
            "  {:<14} {:<10} {:<9} restarts {:<3} last exit {}",
            service.name,
            format!("{:?}", service.state).to_lowercase(),
            if service.healthy { "healthy" } else { "unhealthy" },
            service.restarts,
            service.last_exit.as_deref().unwrap_or("-")
        );
    }
    if let Some(storage) = &status.storage {
        println!(
            "data: {} {}, {}, unlocked by {} in {} ms, fsck {}",
            storage.state,
            storage.device.as_deref().unwrap_or("-"),
            storage.cipher.as_deref().unwrap_or("-"),
            storage.unlocked_by.as_deref().unwrap_or("-"),
            storage.unlock_ms.unwrap_or(0),
            storage.fsck.as_deref().unwrap_or("-")
        );
        if let Some(error) = storage.error.as_deref().or(storage.tpm_error.as_deref()) {
            println!("  {error}");
        }
        if let Some(key) = &storage.recovery_key {
            println!("  recovery key (shown on this boot only, write it down): {key}");
        }
    }
    if let Some(failed) = &status.failed_update {
        println!(
            "update: version {} failed its {} trial boots, and the appliance went back to {}: {}",
            failed.version, failed.tries, status.version, failed.reason
        );
    }
    if !status.wireguard.is_empty() {
        println!("wireguard:");
    }
    for interface in &status.wireguard {
        let port = interface.listen_port.map_or("-".to_string(), |port| port.to_string());
        println!(
            "  {:<14} public key {}  port {port}  peers {}  {}",
            interface.interface,
            interface.public_key.as_deref().unwrap_or("-"),
            interface.peers.join(","),
            interface.error.as_deref().unwrap_or_default()
        );
    }
    if let Some(ban) = &status.ban {
        println!(
            "ban: service {}, {} bans and {} failed authentications since boot (more than {} in {} s ban a client for {} s)",
            ban.service, ban.bans_total, ban.failures_total, ban.failures, ban.window_secs, ban.ban_secs
        );
        if ban.bans_lost > 0 {
            println!("  {} bans were lost because too many were waiting for nft", ban.bans_lost);
        }
        for client in &ban.banned {
            println!("  {:<15} banned, {} s left", client.address, client.seconds_left);
        }
    }
}

/// Returns the public key of `wg-remote` from the status at `socket`.
fn remote_public_key(socket: &Path) -> Result<String, String> {
    let status = ztms::status::query_unix(socket).map_err(|e| e.to_string())?;
    status
        .wireguard
        .iter()
        .find(|interface| interface.interface == ztms::net::wireguard::REMOTE_INTERFACE)
        .and_then(|interface| interface.public_key.clone())
        .ok_or_else(|| format!("the appliance at {} reports no public key for wg-remote; check `ztms status`", socket.display()))
}

fn print_report(out: &Path, report: &ztms::build::BuildReport) {
    let total: f64 = report.steps.iter().map(|(_, d)| d.as_secs_f64()).sum();
    println!("built in {total:.1} s (base tree {})", if report.base_reused { "from cache" } else { "built" });
    for artifact in &report.artifacts {
        println!(
            "  {:<28} {:>8.1} MiB  sha256 {}",
            out.join(&artifact.file).display(),
            artifact.size as f64 / f64::from(1 << 20),
            artifact.sha256
        );
    }
    println!("  root filesystem {:.1} MiB, verity root hash {}", report.root_size as f64 / f64::from(1 << 20), report.root_hash);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ztms").chain(args.iter().copied()))
    }

    #[test]
    fn audit_takes_definition() {
        let cli = parse(&["audit", "images/test-runtime.toml"]).unwrap();
        assert!(matches!(cli.command, Command::Audit { definition: Some(_), socket: None }), "{cli:?}");
    }

    #[test]
    fn audit_takes_socket() {
        let cli = parse(&["audit", "--socket", "vm/status.sock"]).unwrap();
        assert!(matches!(cli.command, Command::Audit { definition: None, socket: Some(_) }), "{cli:?}");
    }

    #[test]
    fn audit_rejects_definition_and_socket() {
        let error = parse(&["audit", "images/test-runtime.toml", "--socket", "vm/status.sock"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict, "{error}");
    }

    #[test]
    fn audit_requires_definition_or_socket() {
        let error = parse(&["audit"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{error}");
    }
}
