//! Status API shared by ztms-init (server) and `ztms status` (client).
//!
//! The protocol is line based: the client sends one line, `status`, and the
//! server replies with one line of JSON, a [`Status`] or an
//! `{"error": "..."}` object. The unix socket serves one request per
//! connection; the virtio-serial port serves any number of requests.
//! Besides `status`, the server takes `audit` ([`audit_unix`]),
//! `isolate SERVICE` and `release SERVICE` ([`isolate_unix`]), the only
//! requests that change the appliance, and in test images `probe`,
//! `delete-link` and `firewall` requests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Path of the status socket inside the appliance.
pub const SOCKET_PATH: &str = "/run/ztms/status.sock";
/// Name of the virtio-serial port that serves the status in test images.
pub const SERIAL_PORT_NAME: &str = "org.ztms.status";
/// Request for a [`Status`].
pub const REQUEST: &str = "status";
/// Request for an [`AuditReply`]: ztms-init audits the spec of each
/// service as it runs it.
pub const AUDIT_REQUEST: &str = "audit";

/// A snapshot of the appliance: boot phases, services and readiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Appliance name from the image definition.
    pub name: String,
    /// Appliance version from the image definition.
    pub version: String,
    /// Root slot the appliance booted from (`a` or `b`), empty when unknown.
    pub slot: String,
    /// Boot phases of stage 2, in the order they run.
    pub phases: Vec<PhaseStatus>,
    /// Services in start order.
    pub services: Vec<ServiceStatus>,
    /// True once every service has been healthy at the same time.
    pub ready: bool,
    /// Milliseconds since the kernel booted (CLOCK_BOOTTIME).
    pub uptime_ms: u64,
    /// Processes in the zombie state when the snapshot was taken; PID 1
    /// reaps every child, so anything above zero for long is a bug.
    #[serde(default)]
    pub zombies: u32,
    /// Resident memory of ztms-init in KiB (VmRSS).
    #[serde(default)]
    pub init_rss_kib: u64,
    /// The data partition, once the storage phase has run.
    #[serde(default)]
    pub storage: Option<StorageStatus>,
    /// WireGuard interfaces configured by the network phase.
    #[serde(default)]
    pub wireguard: Vec<WireguardStatus>,
    /// Intrusion prevention, when the definition's `[ban]` names a service.
    #[serde(default)]
    pub ban: Option<BanStatus>,
    /// The update that systemd-boot gave up on before this boot, if any.
    #[serde(default)]
    pub failed_update: Option<FailedUpdate>,
}

/// A version whose trial boots used up their boot counter, so systemd-boot
/// went back to the running version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedUpdate {
    pub version: String,
    /// Boots that the counter allowed it.
    pub tries: u32,
    /// The persisted log's explanation, or why there is none.
    pub reason: String,
}

/// Failed authentications and bans since boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanStatus {
    /// Service whose output is read.
    pub service: String,
    /// Failed authentications allowed per client within `window_secs`.
    pub failures: u32,
    pub window_secs: u32,
    pub ban_secs: u32,
    /// Bans decided since boot.
    pub bans_total: u64,
    /// Failed authentications seen since boot, from every client.
    pub failures_total: u64,
    /// Bans that never reached `nft` because too many were waiting.
    pub bans_lost: u64,
    /// Clients banned now, sorted by address.
    pub banned: Vec<BannedClient>,
}

/// A client whose ban has not ended yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BannedClient {
    pub address: std::net::Ipv4Addr,
    /// Seconds until the kernel deletes the client from the `banned` set.
    pub seconds_left: u64,
}

/// The encrypted data partition as the storage phase left it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStatus {
    /// `unlocked`, `failed`, or `tmpfs` when the image has no data
    /// partition on its kernel command line.
    pub state: String,
    /// Partition device, for example `/dev/vda4`.
    pub device: Option<String>,
    /// dm-crypt cipher of the volume.
    pub cipher: Option<String>,
    /// Key that opened the volume: `tpm2`, `key-file` or `recovery-key`.
    pub unlocked_by: Option<String>,
    /// Reason the TPM did not unlock the volume, when it was expected to.
    pub tpm_error: Option<String>,
    /// True when this boot created the volume.
    pub provisioned: bool,
    /// True when this boot finished a provisioning that a power loss
    /// interrupted.
    pub resumed: bool,
    /// Bytes the partition grew by at this boot.
    pub grown_bytes: u64,
    /// The recovery key, only on the boot that created it; it is kept
    /// nowhere else in plaintext.
    pub recovery_key: Option<String>,
    /// True when this boot sealed a new key to the TPM after a recovery.
    pub resealed: bool,
    /// Milliseconds from the start of the phase until the volume was open.
    pub unlock_ms: Option<u64>,
    /// Whether the filesystem had been unmounted cleanly before this boot.
    pub clean_at_boot: Option<bool>,
    /// Result that e2fsck reported.
    pub fsck: Option<String>,
    /// Mount options of `/data` from `/proc/self/mountinfo`.
    pub mount_options: Option<String>,
    /// Size of the filesystem's device in bytes.
    pub size_bytes: Option<u64>,
    /// Reason the phase failed.
    pub error: Option<String>,
    /// Sequential throughput measured at provisioning, on test images.
    #[serde(default)]
    pub throughput: Option<Throughput>,
}

/// Sequential throughput of the data partition in KiB/s, without and with
/// encryption, measured in the same boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throughput {
    pub mib: u32,
    pub raw_write_kib_s: u64,
    pub raw_read_kib_s: u64,
    pub encrypted_write_kib_s: u64,
    pub encrypted_read_kib_s: u64,
}

/// One WireGuard interface of the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardStatus {
    /// `wg-remote` or `wg-vpn`.
    pub interface: String,
    /// The appliance's public key in base64: give it to remote-access peers,
    /// or register it with the VPN provider. `None` when the key could not
    /// be read or generated.
    pub public_key: Option<String>,
    /// UDP port on the uplink; `None` for `wg-vpn`, whose port the kernel picks.
    pub listen_port: Option<u16>,
    /// Names of the configured peers.
    pub peers: Vec<String>,
    /// Error that left the interface missing or partly configured.
    pub error: Option<String>,
}

/// Progress of one boot phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseStatus {
    pub name: String,
    pub state: PhaseState,
    /// Run time of the phase; `None` until it finishes.
    pub duration_ms: Option<u64>,
    /// Reason of a failure.
    pub error: Option<String>,
}

/// State of a boot phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseState {
    Pending,
    Running,
    Done,
    Failed,
    /// Not run because an earlier phase failed.
    Skipped,
}

/// State and history of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    /// Result of the latest health check; a service without a check is
    /// healthy while its process runs.
    pub healthy: bool,
    /// Restarts after an unexpected exit since boot.
    pub restarts: u32,
    /// Exit of the previous process, for example `exited with status 1` or
    /// `killed by signal SIGSEGV`.
    pub last_exit: Option<String>,
    /// Process id of the running service process (`crun run` for a container).
    pub pid: Option<i32>,
    /// Security settings of the container's main process, read from
    /// `/proc/<pid>/status` while it runs.
    #[serde(default)]
    pub security: Option<SecurityFacts>,
    /// crun's memory and the start times of the container.
    #[serde(default)]
    pub container: Option<ContainerFacts>,
    /// Memory charged to the service's cgroup (`memory.current`), in
    /// bytes: every process of the service, page cache and tmpfs included.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

/// Security settings of a process, as `/proc/<pid>/status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityFacts {
    /// Process id in the root PID namespace.
    pub pid: i32,
    /// Capability sets as bit masks (`CapEff`, `CapPrm`, `CapBnd`, `CapAmb`).
    pub cap_eff: u64,
    pub cap_prm: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    /// `NoNewPrivs`: 1 when no_new_privileges is set.
    pub no_new_privs: u32,
    /// `Seccomp`: 0 off, 1 strict, 2 filter.
    pub seccomp: u32,
    /// Real, effective, saved and filesystem user id.
    pub uid: [u32; 4],
    /// Real, effective, saved and filesystem group id.
    pub gid: [u32; 4],
    /// AppArmor label and mode, as `/proc/<pid>/attr/apparmor/current`
    /// shows them (`ztms-web (enforce)`); `None` when the kernel has no
    /// AppArmor.
    #[serde(default)]
    pub apparmor: Option<String>,
}

/// Facts about a service's container and the crun process that runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerFacts {
    /// Resident memory (VmRSS) of the `crun run` process, in KiB.
    pub crun_rss_kib: Option<u64>,
    /// Milliseconds from starting `crun run` until the container's main
    /// process ran the service's program, measured by polling `/proc`
    /// every 10 ms.
    pub exec_ms: Option<u64>,
    /// Milliseconds from starting `crun run` until the first passing
    /// health check.
    pub healthy_ms: Option<u64>,
}

/// Lifecycle state of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// Waiting for its dependencies to become healthy.
    Waiting,
    /// Process started, not yet healthy.
    Starting,
    /// Process running and its health check passing.
    Running,
    /// Process running but its latest health checks failed.
    Unhealthy,
    /// Process exited; it is restarted when the backoff delay ends.
    Backoff,
    /// Stopping for shutdown.
    Stopping,
    /// Stopped for shutdown.
    Stopped,
    /// The process could not be started and is retried after the backoff delay.
    SpawnFailed,
}

/// Reply of the server to a request it does not understand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// Reply to an `audit` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReply {
    /// One row per CIS Docker Benchmark item and service, in start order.
    pub rows: Vec<crate::runtime::AuditRow>,
    /// Services whose spec could not be read, so they have no rows.
    #[serde(default)]
    pub unaudited: Vec<UnauditedService>,
}

impl AuditReply {
    /// Returns true when a row failed or a service could not be audited.
    pub fn failed(&self) -> bool {
        !self.unaudited.is_empty() || self.rows.iter().any(|row| row.outcome == crate::runtime::Outcome::Fail)
    }
}

/// A service that an `audit` request could not audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnauditedService {
    pub service: String,
    /// Error message, with the path of the spec.
    pub error: String,
}

/// A failed status query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The socket could not be connected to.
    #[error(
        "cannot connect to status socket {path}: {source}; give the appliance's {SOCKET_PATH}, \
         or status.sock in the state directory of a running VM started by `ztms run`"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Connecting, sending or receiving failed.
    #[error("status query to {path} failed: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The server closed the connection without a reply.
    #[error("status socket {path} closed the connection without a reply")]
    NoReply { path: PathBuf },
    /// The server replied with an error object.
    #[error("status server at {path} rejected the request: {message}")]
    Rejected { path: PathBuf, message: String },
    /// The reply is neither a status nor an error object.
    #[error("invalid reply from status socket {path}: {source}")]
    InvalidReply {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Queries the status server listening on the unix socket at `path`.
pub fn query_unix(path: &Path) -> Result<Status, QueryError> {
    let io_error = |source| QueryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(io_error)?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(io_error)?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).map_err(io_error)?;
    stream.write_all(format!("{REQUEST}\n").as_bytes()).map_err(io_error)?;

    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(io_error)?;
    if line.trim().is_empty() {
        return Err(QueryError::NoReply {
            path: path.to_path_buf(),
        });
    }
    parse_reply(&line).map_err(|error| match error {
        ReplyError::Rejected(message) => QueryError::Rejected {
            path: path.to_path_buf(),
            message,
        },
        ReplyError::Invalid(source) => QueryError::InvalidReply {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Sends an `audit` request to the status socket at `path`: the
/// appliance's unix socket, or a VM's virtio-serial socket. Reply lines of
/// other requests that are still in flight on a serial port are skipped.
pub fn audit_unix(path: &Path) -> Result<AuditReply, QueryError> {
    let io_error = |source| QueryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| QueryError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(15))).map_err(io_error)?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).map_err(io_error)?;
    stream.write_all(format!("{AUDIT_REQUEST}\n").as_bytes()).map_err(io_error)?;

    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(io_error)? == 0 {
            return Err(QueryError::NoReply { path: path.to_path_buf() });
        }
        match parse_audit_reply(&line) {
            Some(Ok(reply)) => return Ok(reply),
            Some(Err(message)) => {
                return Err(QueryError::Rejected {
                    path: path.to_path_buf(),
                    message,
                })
            }
            None => continue,
        }
    }
}

/// Parses one reply line to an `audit` request: the reply, the server's
/// error message, or `None` for a line of another request.
pub fn parse_audit_reply(line: &str) -> Option<Result<AuditReply, String>> {
    if let Ok(reply) = serde_json::from_str::<AuditReply>(line) {
        return Some(Ok(reply));
    }
    match serde_json::from_str::<ErrorReply>(line) {
        Ok(reply) => Some(Err(reply.error)),
        Err(_) => None,
    }
}

/// A reply line that is not a status.
#[derive(Debug)]
pub enum ReplyError {
    /// The server sent an error object with this message.
    Rejected(String),
    /// The line is not valid JSON of either shape.
    Invalid(serde_json::Error),
}

/// Parses one reply line into a status, or the server's error message.
pub fn parse_reply(line: &str) -> Result<Status, ReplyError> {
    match serde_json::from_str::<Status>(line) {
        Ok(status) => Ok(status),
        Err(status_error) => match serde_json::from_str::<ErrorReply>(line) {
            Ok(reply) => Err(ReplyError::Rejected(reply.error)),
            Err(_) => Err(ReplyError::Invalid(status_error)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            name: "media".into(),
            version: "1.0".into(),
            slot: "a".into(),
            phases: vec![PhaseStatus {
                name: "mounts".into(),
                state: PhaseState::Done,
                duration_ms: Some(3),
                error: None,
            }],
            services: vec![ServiceStatus {
                name: "web".into(),
                state: ServiceState::Running,
                healthy: true,
                restarts: 2,
                last_exit: Some("exited with status 1".into()),
                pid: Some(42),
                security: None,
                container: None,
                memory_bytes: None,
            }],
            ready: true,
            uptime_ms: 1234,
            zombies: 0,
            init_rss_kib: 0,
            storage: None,
            wireguard: vec![WireguardStatus {
                interface: "wg-remote".into(),
                public_key: Some("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=".into()),
                listen_port: Some(51820),
                peers: vec!["laptop".into()],
                error: None,
            }],
            ban: Some(BanStatus {
                service: "proxy".into(),
                failures: 3,
                window_secs: 60,
                ban_secs: 600,
                bans_total: 1,
                failures_total: 5,
                bans_lost: 0,
                banned: vec![BannedClient { address: std::net::Ipv4Addr::new(10, 0, 2, 2), seconds_left: 540 }],
            }),
            failed_update: Some(FailedUpdate { version: "3.0.0".into(), tries: 3, reason: "not every service is healthy".into() }),
        }
    }

    #[test]
    fn status_round_trips_through_json() {
        let line = serde_json::to_string(&sample()).unwrap();
        let parsed = parse_reply(&line).unwrap();
        assert_eq!(parsed, sample());
    }

    #[test]
    fn service_state_uses_kebab_case() {
        let text = serde_json::to_string(&ServiceState::SpawnFailed).unwrap();
        assert_eq!(text, "\"spawn-failed\"");
    }

    #[test]
    fn error_reply_becomes_rejected() {
        let result = parse_reply(r#"{"error": "unknown request \"x\""}"#);
        assert!(matches!(result, Err(ReplyError::Rejected(message)) if message == "unknown request \"x\""));
    }

    #[test]
    fn garbage_reply_is_invalid() {
        let result = parse_reply("not json");
        assert!(matches!(result, Err(ReplyError::Invalid(_))));
    }

    #[test]
    fn query_unix_reads_one_line() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("status.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            assert_eq!(request, "status\n");
            let mut stream = stream;
            let reply = serde_json::to_string(&sample()).unwrap();
            stream.write_all(format!("{reply}\n").as_bytes()).unwrap();
        });
        let status = query_unix(&path).unwrap();
        server.join().unwrap();
        assert_eq!(status, sample());
    }

    /// Serves one connection that expects `request` and sends `lines`.
    fn serve_once(path: &Path, request: &'static str, lines: &'static str) -> std::thread::JoinHandle<()> {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line, request);
            let mut stream = stream;
            stream.write_all(lines.as_bytes()).unwrap();
        })
    }

    #[test]
    fn isolate_skips_other_replies() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("status.sock");
        let server = serve_once(
            &path,
            "isolate web\n",
            "{\"service\":\"db\",\"proto\":\"tcp\",\"address\":\"10.80.5.2\",\"port\":1,\"source\":null,\"outcome\":\"timeout\",\"detail\":null,\"elapsed_ms\":1}\n\
             {\"service\":\"web\",\"address\":\"10.80.1.33\",\"isolated\":true}\n",
        );
        let reply = isolate_unix(&path, "web", false).unwrap();
        server.join().unwrap();
        assert!(reply.isolated);
        assert_eq!(reply.address, std::net::Ipv4Addr::new(10, 80, 1, 33));
    }

    fn audit_sample() -> AuditReply {
        AuditReply {
            rows: vec![crate::runtime::AuditRow {
                item: "5.3".into(),
                title: "Restrict Linux kernel capabilities".into(),
                service: "web".into(),
                outcome: crate::runtime::Outcome::Pass,
                detail: "1 capabilities held".into(),
                fix: None,
                exceptions: vec!["cap:NET_BIND_SERVICE: binds port 80".into()],
            }],
            unaudited: vec![UnauditedService {
                service: "db".into(),
                error: "reading /run/ztms/bundles/db/config.json failed".into(),
            }],
        }
    }

    #[test]
    fn audit_reply_round_trips_through_json() {
        let line = serde_json::to_string(&audit_sample()).unwrap();
        let parsed = parse_audit_reply(&line).unwrap().unwrap();
        assert_eq!(parsed, audit_sample());
    }

    #[test]
    fn audit_outcome_is_lowercase() {
        let line = serde_json::to_string(&audit_sample()).unwrap();
        assert!(line.contains("\"outcome\":\"pass\""), "{line}");
    }

    #[test]
    fn audit_reply_skips_status_lines() {
        let status = serde_json::to_string(&sample()).unwrap();
        assert_eq!(parse_audit_reply(&status), None);
    }

    #[test]
    fn audit_error_reply_is_rejected() {
        let parsed = parse_audit_reply(r#"{"error":"no appliance plan"}"#);
        assert_eq!(parsed, Some(Err("no appliance plan".to_string())));
    }

    #[test]
    fn audit_reply_fails_on_unaudited_service() {
        let mut reply = audit_sample();
        assert!(reply.failed());
        reply.unaudited.clear();
        assert!(!reply.failed());
        reply.rows[0].outcome = crate::runtime::Outcome::Fail;
        assert!(reply.failed());
    }

    #[test]
    fn audit_unix_skips_other_replies() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("status.sock");
        let lines = format!("{}\n{}\n", serde_json::to_string(&sample()).unwrap(), serde_json::to_string(&audit_sample()).unwrap());
        let lines: &'static str = Box::leak(lines.into_boxed_str());
        let server = serve_once(&path, "audit\n", lines);
        let reply = audit_unix(&path).unwrap();
        server.join().unwrap();
        assert_eq!(reply, audit_sample());
    }

    #[test]
    fn audit_unix_names_socket_on_connect_error() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("missing.sock");
        let error = audit_unix(&path).unwrap_err();
        assert!(matches!(error, QueryError::Connect { .. }), "{error}");
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
    }

    #[test]
    fn release_error_is_rejected() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("status.sock");
        let server = serve_once(&path, "release nope\n", "{\"error\":\"service \\\"nope\\\" not found\"}\n");
        let error = isolate_unix(&path, "nope", true).unwrap_err();
        server.join().unwrap();
        assert!(matches!(error, QueryError::Rejected { .. }), "{error}");
    }
}

/// Request prefix of a connection probe, served by test images with
/// `[debug] probe = true`:
/// `probe SERVICE tcp|udp IPV4 PORT [source IPV4] [read | postgres SECRET]`.
/// With `postgres SECRET` the probe logs in to PostgreSQL as `postgres`
/// with the password in `/data/secrets/SECRET` and runs one query.
pub const PROBE_REQUEST: &str = "probe";

/// Result of one connection probe made from inside a service's network
/// namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReply {
    pub service: String,
    pub proto: String,
    pub address: std::net::Ipv4Addr,
    pub port: u16,
    /// Source address the probe bound to, when the request set one.
    pub source: Option<std::net::Ipv4Addr>,
    pub outcome: ProbeOutcome,
    /// The OS error behind `refused`, `unreachable` and `failed`.
    pub detail: Option<String>,
    pub elapsed_ms: u64,
    /// Bytes received by a `read` probe, which reads until the peer closes.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// Result of a `postgres` probe's query: the client address that
    /// PostgreSQL saw the login come from.
    #[serde(default)]
    pub query_result: Option<String>,
}

/// Observed result of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeOutcome {
    /// TCP: the connection was accepted. UDP: a datagram came back.
    Connected,
    /// The target's network stack sent a TCP reset or an ICMP
    /// port unreachable: the packet reached it, but nothing listens there.
    Refused,
    /// No reply within the probe's timeout, because a firewall dropped the packet.
    Timeout,
    /// An ICMP host or network unreachable, or no route.
    Unreachable,
    /// The probe could not run, for example a bind to the source failed.
    Failed,
}

/// Request that deletes a WireGuard interface of the appliance, served by
/// test images with `[debug] probe = true`: `delete-link INTERFACE`. Tests
/// use it to check that ztms-init re-creates the interface.
pub const DELETE_LINK_REQUEST: &str = "delete-link";

/// Reply to a `delete-link` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteLinkReply {
    pub interface: String,
    /// True when the interface still exists after `ip link delete` ran.
    pub present: bool,
}

/// Request that unloads or reloads the appliance's nftables table, served
/// by test images with `[debug] probe = true`: `firewall off` saves the
/// table and deletes it, `firewall on` loads the saved table again.
/// Benchmarks use it to compare forwarding with and without the ruleset.
pub const FIREWALL_REQUEST: &str = "firewall";

/// Reply to a `firewall` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallReply {
    /// True when the table exists after the request ran.
    pub loaded: bool,
    /// Rules in the table after the request ran.
    pub rules: usize,
}

/// Request that cuts a service off every network: `isolate SERVICE`.
pub const ISOLATE_REQUEST: &str = "isolate";
/// Request that lifts an isolation: `release SERVICE`.
pub const RELEASE_REQUEST: &str = "release";

/// Reply to an isolate or release request: the state after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolateReply {
    pub service: String,
    pub address: std::net::Ipv4Addr,
    /// True while the service's address is in the firewall's isolated set.
    pub isolated: bool,
}

/// Sends an isolate request (or a release request when `undo` is set) to the
/// status socket at `path`: the appliance's unix socket, or a VM's
/// virtio-serial socket. Reply lines of other requests that are still in
/// flight on a serial port are skipped.
pub fn isolate_unix(path: &Path, service: &str, undo: bool) -> Result<IsolateReply, QueryError> {
    let io_error = |source| QueryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(io_error)?;
    stream.set_read_timeout(Some(Duration::from_secs(15))).map_err(io_error)?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).map_err(io_error)?;
    let verb = if undo { RELEASE_REQUEST } else { ISOLATE_REQUEST };
    stream.write_all(format!("{verb} {service}\n").as_bytes()).map_err(io_error)?;

    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(io_error)? == 0 {
            return Err(QueryError::NoReply { path: path.to_path_buf() });
        }
        if let Ok(reply) = serde_json::from_str::<IsolateReply>(&line) {
            if reply.service == service {
                return Ok(reply);
            }
            continue;
        }
        if let Ok(error) = serde_json::from_str::<ErrorReply>(&line) {
            return Err(QueryError::Rejected {
                path: path.to_path_buf(),
                message: error.error,
            });
        }
    }
}
