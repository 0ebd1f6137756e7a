//! The appliance definition: every key, its default and its documentation.
//!
//! This file is the one declaration of each setting. `docs/config.md` is
//! generated from the JSON schema that these types derive (`ztms config-docs`),
//! and a test checks that the committed page matches.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::size::ByteSize;

/// An appliance definition, read from `images/<name>.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Name, version and description of the appliance.
    pub image: ImageInfo,
    /// Debian base system of the root filesystem.
    #[serde(default)]
    pub base: Base,
    /// Kernel package and command line.
    #[serde(default)]
    pub kernel: Kernel,
    /// Sizes of the partitions written by `ztms build`.
    #[serde(default)]
    pub disk: Disk,
    /// Network segments: one IPv4 subnet each, whose first address is the
    /// gateway of its services.
    #[serde(default = "default_segments", rename = "segment")]
    pub segments: Vec<Segment>,
    /// Services, each run as an OCI container in its own network namespace.
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
    /// Encrypted data partition.
    #[serde(default)]
    pub storage: Storage,
    /// Update bundles and their signing key.
    #[serde(default)]
    pub update: Update,
    /// Debug access for test images. Production images leave every key off.
    #[serde(default)]
    pub debug: Debug,
    /// The uplink interface and its IPv4 setting.
    #[serde(default)]
    pub network: Network,
    /// WireGuard tunnel to a VPN provider for services with `egress = "vpn"`.
    #[serde(default)]
    pub vpn: Option<Vpn>,
    /// WireGuard remote access to services.
    #[serde(default)]
    pub wireguard: RemoteAccess,
    /// Intrusion prevention: clients that fail to authenticate too often
    /// are dropped by the firewall for a while.
    #[serde(default)]
    pub ban: Ban,
    /// Secrets that ztms-init shows on the console, as it shows the
    /// recovery key, at the boot that generates them: logins that a person
    /// types, such as the web password. Each must be listed by a service's
    /// `secrets`. They never go to the log.
    #[serde(default)]
    pub console_secrets: Vec<String>,
}

/// Identity of the appliance.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    /// Appliance name: lowercase letters, digits and `-`. It names the output
    /// files and prefixes the GPT partition labels.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Version written to the manifest, os-release and the boot entry;
    /// updates only move to a greater version.
    pub version: String,
    /// One line shown by `ztms status` and in os-release.
    #[serde(default)]
    pub description: String,
}

/// Debian base system.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// Debian suite passed to mmdebstrap.
    #[serde(default = "default_suite")]
    pub suite: String,
    /// Debian mirror URL passed to mmdebstrap.
    #[serde(default = "default_mirror")]
    pub mirror: String,
    /// Extra Debian packages installed in the root filesystem.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Directories laid over the root filesystem in order, relative to the
    /// definition file.
    #[serde(default)]
    #[schemars(with = "Vec<PathBuf>")]
    pub overlays: Vec<Spanned<PathBuf>>,
    /// Hostname set at boot; defaults to the image name.
    #[serde(default)]
    pub hostname: Option<String>,
}

impl Default for Base {
    fn default() -> Self {
        Self {
            suite: default_suite(),
            mirror: default_mirror(),
            packages: Vec::new(),
            overlays: Vec::new(),
            hostname: None,
        }
    }
}

/// Kernel and its command line.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Debian package (or metapackage) that provides the kernel image and modules.
    #[serde(default = "default_kernel_package")]
    pub package: String,
    /// Extra kernel command-line arguments, appended after the ones ztms sets.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Module directories under `kernel/` left out of the root filesystem, to
    /// keep the image small.
    #[serde(default = "default_module_exclude")]
    pub module_exclude: Vec<String>,
}

impl Default for Kernel {
    fn default() -> Self {
        Self {
            package: default_kernel_package(),
            cmdline: Vec::new(),
            module_exclude: default_module_exclude(),
        }
    }
}

/// Partition sizes. Sizes take a number of bytes or a string with a
/// K, M or G suffix (powers of 1024).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// EFI system partition, holding systemd-boot and one UKI per slot.
    #[serde(default = "default_esp_size")]
    #[schemars(with = "String")]
    pub esp: Spanned<ByteSize>,
    /// Each of the two root slots (EROFS plus its dm-verity hash tree).
    #[serde(default = "default_root_size")]
    #[schemars(with = "String")]
    pub root: Spanned<ByteSize>,
    /// Data partition as written in the image; the appliance grows it to the
    /// end of the disk at first boot.
    #[serde(default = "default_data_size")]
    #[schemars(with = "String")]
    pub data: Spanned<ByteSize>,
}

impl Default for Disk {
    fn default() -> Self {
        Self {
            esp: default_esp_size(),
            root: default_root_size(),
            data: default_data_size(),
        }
    }
}

/// A network segment: an IPv4 subnet for a group of services.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// Segment name, used by services' `segment` key.
    pub name: String,
    /// IPv4 subnet in CIDR notation, for example `10.80.1.0/24`.
    pub subnet: String,
}

/// A service: one OCI container with its own network namespace and address.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Service name: lowercase letters, digits and `-`.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Debian packages that provide the service; they are installed in the
    /// root filesystem, which the container mounts read-only.
    #[serde(default)]
    pub packages: Vec<String>,
    /// OCI image archive (docker-save tar or oci-archive) or OCI layout
    /// directory, relative to the definition file, unpacked into the root
    /// filesystem at build time. Excludes `packages`. The container gets the
    /// image's environment with `PUID` and `PGID` set to `user`, as
    /// linuxserver.io images expect. `command` and `user` replace the
    /// image's entrypoint and user.
    #[serde(default)]
    #[schemars(with = "Option<PathBuf>")]
    pub oci: Option<Spanned<PathBuf>>,
    /// Segment the service is attached to.
    pub segment: String,
    /// Command and arguments run in the container.
    pub command: Vec<String>,
    /// User and group as `UID:GID`.
    #[serde(default = "default_user")]
    pub user: String,
    /// Ports the service listens on.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Directories of `/data` bound into the container.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// Names of secrets: lowercase letters, digits and `-`. ztms-init
    /// generates each one at first boot into `/data/secrets/<name>` (32
    /// random bytes, URL-safe base64 without padding) and binds it
    /// read-only at `/run/secrets/<name>`. Services that list the same name
    /// share the secret and must have the same `user`.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Services that must be healthy before this one starts.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Destinations outside the appliance that the service may reach.
    #[serde(default)]
    pub egress: Egress,
    /// Health check; without one, a running process counts as healthy.
    #[serde(default)]
    pub health: Option<Health>,
    /// Other services this one may connect to, as `service:port/proto`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Named exceptions to the default container policy, each with a reason.
    #[serde(default)]
    pub exceptions: Vec<Exception>,
    /// Resource limits of the service's cgroup and process.
    #[serde(default)]
    pub limits: Limits,
}

/// A port a service listens on, and whether the uplink reaches it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Port inside the service's network namespace.
    pub port: u16,
    /// Transport protocol.
    #[serde(default)]
    pub proto: Proto,
    /// Port on the uplink that forwards to this one. Only published ports
    /// are reachable from outside the appliance.
    #[serde(default)]
    #[schemars(with = "Option<u16>")]
    pub publish: Option<Spanned<u16>>,
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A directory of `/data` bound into a container.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Path relative to `/data`, for example `media` or `config/jellyfin`.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// Destinations outside the appliance that a service may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// No traffic leaves the appliance.
    #[default]
    None,
    /// Traffic leaves by the uplink.
    Internet,
    /// Traffic leaves only inside the VPN tunnel, and is dropped while the tunnel is down or while the definition has no `[vpn]` table.
    Vpn,
}

/// A protocol-level health check.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum Health {
    /// An HTTP GET that must return a 2xx or 3xx status.
    Http {
        port: u16,
        #[serde(default = "default_http_path")]
        path: String,
        #[serde(default = "default_health_timeout_ms")]
        timeout_ms: u64,
    },
    /// A TCP connection that must be accepted.
    Tcp {
        port: u16,
        #[serde(default = "default_health_timeout_ms")]
        timeout_ms: u64,
    },
    /// A command run in the container that must exit 0.
    Command {
        command: Vec<String>,
        #[serde(default = "default_health_timeout_ms")]
        timeout_ms: u64,
    },
}

/// An exception to the default container policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Exception {
    /// The allowed exception: `cap:NAME` (a capability), `device:PATH` (a device
    /// node), `exec-tmpfs:PATH` (a writable tmpfs that allows execution),
    /// `writable:PATH` (a writable tmpfs) or `namespace:host-pid` (the
    /// appliance's PID namespace, for test images that signal PID 1).
    pub allow: String,
    /// The reason the service needs it, printed by `ztms audit`.
    pub reason: String,
}

/// Resource limits of one service. The kernel enforces them through the
/// service's cgroup (v2 names in brackets) and its rlimits.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory of the cgroup, tmpfs pages included (`memory.max`). Above it
    /// the kernel's OOM killer stops the service. Swap is not used.
    #[serde(default = "default_memory_limit")]
    #[schemars(with = "String")]
    pub memory: ByteSize,
    /// CPU time as a number of CPUs (`cpu.max`), for example `0.5` or `2.0`.
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    /// Processes and threads in the cgroup (`pids.max`).
    #[serde(default = "default_pids")]
    pub pids: u32,
    /// Open file descriptors per process (`RLIMIT_NOFILE`, soft and hard).
    #[serde(default = "default_nofile")]
    pub nofile: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: default_memory_limit(),
            cpus: default_cpus(),
            pids: default_pids(),
            nofile: default_nofile(),
        }
    }
}

/// The uplink: the one interface that connects the appliance to the outside.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Kernel name of the uplink interface, at most 15 characters.
    #[serde(default = "default_uplink_interface")]
    pub interface: String,
    /// IPv4 setting of the uplink: `"dhcp"`, or the appliance's address in
    /// CIDR notation, for example `"192.168.1.10/24"`.
    #[serde(default = "default_uplink_ipv4")]
    pub ipv4: String,
    /// Default gateway of a static `ipv4`; it must lie in that subnet.
    /// Leave it off with `"dhcp"`.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers of the uplink, used by services with `egress = "internet"`.
    /// Required with a static `ipv4`; with `"dhcp"` they replace the servers
    /// the DHCP server offers.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// New connections per second that one source address may open to the
    /// published ports; the firewall drops the rest.
    #[serde(default = "default_new_connections_per_second")]
    pub new_connections_per_second: u32,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            interface: default_uplink_interface(),
            ipv4: default_uplink_ipv4(),
            gateway: None,
            dns: Vec::new(),
            new_connections_per_second: default_new_connections_per_second(),
        }
    }
}

/// The WireGuard tunnel to a VPN provider, the only way out for services
/// with `egress = "vpn"`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vpn {
    /// The provider's WireGuard endpoint as `host:port`. A host name is
    /// resolved at boot through the uplink's DNS servers.
    pub endpoint: String,
    /// The provider's public key: 32 bytes in base64, as `wg pubkey` prints it.
    pub public_key: String,
    /// Absolute path, on the appliance, of the file that contains the
    /// appliance's private key for this tunnel (the output of `wg genkey`).
    /// ztms-init generates the key at first boot when the file is missing,
    /// and `ztms status` shows its public key to register with the provider.
    /// Keep it under `/data`: the image itself carries no secret.
    #[serde(default = "default_vpn_private_key_file")]
    pub private_key_file: PathBuf,
    /// Tunnel addresses that the provider assigned, in CIDR notation, for
    /// example `"10.64.12.3/32"`.
    pub addresses: Vec<String>,
    /// DNS servers reached through the tunnel; services with `egress = "vpn"`
    /// resolve names only through them. Each must lie in `allowed_ips`.
    pub dns: Vec<Ipv4Addr>,
    /// Destinations routed into the tunnel, in CIDR notation.
    #[serde(default = "default_vpn_allowed_ips")]
    pub allowed_ips: Vec<String>,
    /// MTU of the `wg-vpn` interface in bytes.
    #[serde(default = "default_wireguard_mtu")]
    pub mtu: u16,
    /// Seconds between keepalive packets that hold the provider's NAT
    /// mapping open; 0 sends none.
    #[serde(default = "default_persistent_keepalive")]
    pub persistent_keepalive: u16,
}

/// Remote access: the `wg-remote` WireGuard interface that the declared
/// peers (phones, laptops) connect to. The uplink opens its port only when
/// at least one peer is declared.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteAccess {
    /// UDP port of `wg-remote` on the uplink.
    #[serde(default = "default_wireguard_port")]
    pub listen_port: u16,
    /// IPv4 subnet of the peers in CIDR notation. The appliance takes its
    /// first address; it must not overlap a segment.
    #[serde(default = "default_remote_subnet")]
    pub subnet: String,
    /// Absolute path, on the appliance, of the file that contains the private
    /// key of `wg-remote` (the output of `wg genkey`). ztms-init generates
    /// the key at first boot when the file is missing; `ztms status` shows
    /// its public key.
    #[serde(default = "default_remote_private_key_file")]
    pub private_key_file: PathBuf,
    /// Host name or IPv4 address that peers send their handshakes to, as
    /// `ztms wg peer` writes it into client configurations; the port is
    /// `listen_port`. Without it, `ztms wg peer` needs `--endpoint`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// MTU of the `wg-remote` interface in bytes.
    #[serde(default = "default_wireguard_mtu")]
    pub mtu: u16,
    /// Devices allowed to connect.
    #[serde(default, rename = "peer")]
    pub peers: Vec<RemotePeer>,
}

impl Default for RemoteAccess {
    fn default() -> Self {
        Self {
            listen_port: default_wireguard_port(),
            subnet: default_remote_subnet(),
            private_key_file: default_remote_private_key_file(),
            endpoint: None,
            mtu: default_wireguard_mtu(),
            peers: Vec::new(),
        }
    }
}

/// A device allowed to connect to `wg-remote`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemotePeer {
    /// Peer name: lowercase letters, digits and `-`.
    pub name: String,
    /// The peer's public key: 32 bytes in base64, as `wg pubkey` prints it.
    pub public_key: String,
    /// The peer's tunnel address in `wireguard.subnet`. Without it, the
    /// network plan derives one from a hash of the name, which stays the
    /// same as long as no other peer takes it first.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// Services the peer may connect to, as `service:port/proto`.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// Intrusion prevention. ztms-init reads the output of `service`, one
/// access-log line per request with the tokens `client=<IPv4>` and
/// `status=<HTTP code>`, and bans a client whose failed authentications
/// exceed `failures` within `window_secs`. The firewall then drops the
/// client's packets from outside the appliance (the uplink, `wg-remote`)
/// for `ban_secs`, open connections included.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    /// Name of the service whose output is read, usually the reverse proxy.
    /// Without it, nothing is banned.
    #[serde(default)]
    pub service: Option<String>,
    /// Failed authentications allowed per client within `window_secs`. The
    /// next one bans the client.
    #[serde(default = "default_ban_failures")]
    pub failures: u32,
    /// Length of the sliding window in which failures are counted, in seconds.
    #[serde(default = "default_ban_window_secs")]
    pub window_secs: u32,
    /// Duration of a ban, in seconds.
    #[serde(default = "default_ban_secs")]
    pub ban_secs: u32,
    /// HTTP status codes that count as a failed authentication.
    #[serde(default = "default_ban_statuses")]
    pub statuses: Vec<u16>,
}

impl Default for Ban {
    fn default() -> Self {
        Self {
            service: None,
            failures: default_ban_failures(),
            window_secs: default_ban_window_secs(),
            ban_secs: default_ban_secs(),
            statuses: default_ban_statuses(),
        }
    }
}

/// Encrypted data partition settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Unlock method of the data partition.
    #[serde(default)]
    pub unlock: Unlock,
    /// Format the data partition even when it contains a LUKS header or a
    /// filesystem. Every byte on it is lost.
    #[serde(default)]
    pub wipe: bool,
    /// Location of the key file, for `unlock = "key-file"`.
    #[serde(default)]
    pub key_file: Option<KeyFile>,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            unlock: Unlock::Tpm2,
            wipe: false,
            key_file: None,
        }
    }
}

/// A key file on removable media: a FAT or ext4 filesystem found by its
/// label, mounted read-only for as long as it takes to read the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Filesystem label of the removable media, for example `ZTMSKEY`.
    pub label: String,
    /// Path of the key file on that filesystem, for example `ztms-data.key`.
    pub path: String,
}

/// Unlock method of the data partition at boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Unlock {
    /// A key sealed to the TPM 2.0, with the recovery key as fallback.
    #[default]
    Tpm2,
    /// The recovery key typed on the console.
    RecoveryKey,
    /// A key file on removable media.
    KeyFile,
}

/// Update bundle settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// Private key that signs update bundles, relative to the definition file.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Public key embedded in the image to verify bundles.
    #[serde(default)]
    pub public_key: Option<PathBuf>,
    /// Seconds from the start of ztms-init until every service must be
    /// healthy for the boot to be blessed [default: 300]. A trial boot of
    /// a new version that misses it reboots, so systemd-boot falls back to
    /// the previous version once the new one's 3 tries are used.
    #[serde(default)]
    pub ready_timeout_secs: Option<u64>,
}

/// Debug access. A test checks that the default image enables none of it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Debug {
    /// Serve the status API on a virtio-serial port as well as the unix socket.
    #[serde(default)]
    pub status_serial: bool,
    /// Serve test requests on the status API: probes from inside service
    /// namespaces, `delete-link` of a WireGuard interface, and
    /// `firewall off|on`, which unloads and reloads the ruleset.
    #[serde(default)]
    pub probe: bool,
    /// At first boot, measure the data partition's sequential throughput
    /// with this many MiB each way, raw and then through dm-crypt, before
    /// the filesystem is made. The figures appear in the status API, and 0
    /// turns it off.
    #[serde(default)]
    pub storage_benchmark_mib: u32,
}

fn default_suite() -> String {
    "bookworm".into()
}

fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}

fn default_kernel_package() -> String {
    "linux-image-amd64".into()
}

fn default_module_exclude() -> Vec<String> {
    [
        "drivers/gpu",
        "drivers/media",
        "drivers/infiniband",
        "drivers/staging",
        "drivers/net/wireless",
        "drivers/bluetooth",
        "drivers/isdn",
        "drivers/iio",
        "sound",
        "net/bluetooth",
        "net/wireless",
        "net/mac80211",
    ]
    .map(String::from)
    .to_vec()
}

fn default_esp_size() -> Spanned<ByteSize> {
    Spanned::new(0..0, ByteSize(128 << 20))
}

fn default_root_size() -> Spanned<ByteSize> {
    Spanned::new(0..0, ByteSize(1 << 30))
}

fn default_data_size() -> Spanned<ByteSize> {
    Spanned::new(0..0, ByteSize(64 << 20))
}

fn default_segments() -> Vec<Segment> {
    [
        ("frontend", "10.80.1.0/24"),
        ("backend", "10.80.2.0/24"),
        ("download", "10.80.3.0/24"),
        ("monitoring", "10.80.4.0/24"),
        ("database", "10.80.5.0/24"),
    ]
    .map(|(name, subnet)| Segment {
        name: name.into(),
        subnet: subnet.into(),
    })
    .to_vec()
}

fn default_uplink_interface() -> String {
    "eth0".into()
}

fn default_uplink_ipv4() -> String {
    "dhcp".into()
}

fn default_new_connections_per_second() -> u32 {
    20
}

fn default_ban_failures() -> u32 {
    3
}

fn default_ban_window_secs() -> u32 {
    60
}

fn default_ban_secs() -> u32 {
    600
}

fn default_ban_statuses() -> Vec<u16> {
    vec![401, 403]
}

fn default_vpn_allowed_ips() -> Vec<String> {
    vec!["0.0.0.0/0".into()]
}

fn default_wireguard_mtu() -> u16 {
    1420
}

fn default_persistent_keepalive() -> u16 {
    25
}

fn default_wireguard_port() -> u16 {
    51820
}

fn default_remote_subnet() -> String {
    "10.80.100.0/24".into()
}

fn default_remote_private_key_file() -> PathBuf {
    "/data/secrets/wireguard/remote.key".into()
}

fn default_vpn_private_key_file() -> PathBuf {
    "/data/secrets/wireguard/vpn.key".into()
}

fn default_user() -> String {
    "1000:1000".into()
}

fn default_memory_limit() -> ByteSize {
    ByteSize(512 << 20)
}

fn default_cpus() -> f64 {
    1.0
}

fn default_pids() -> u32 {
    256
}

fn default_nofile() -> u64 {
    65536
}

fn default_http_path() -> String {
    "/".into()
}

fn default_health_timeout_ms() -> u64 {
    2000
}
