//! QEMU test harness: builds test images once per definition, boots them,
//! and keeps the console of every VM under target/ztms-tests/ so a failed
//! test can be examined.

#![allow(dead_code)]

pub mod lan;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use ztms::run::accel::{self, Accel};
use ztms::run::vm::{Vm, VmConfig};

/// Time allowed from QEMU start to the ready line. TCG boots take
/// 30 to 60 s on two cores; the margin covers a loaded machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Scratch space of the tests, beside cargo's build output.
pub fn scratch() -> PathBuf {
    let dir = repo().join("target/ztms-tests");
    std::fs::create_dir_all(&dir).expect("create target/ztms-tests");
    dir
}

pub fn init_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ztms-init"))
}

/// Returns a hash of everything an image is built from: the definition,
/// its overlays, the ztms-init binary and `extra` files such as keys.
fn input_hash(definition: &Path, extra: &[&Path]) -> String {
    let loaded = ztms::config::load(definition).expect("load test definition");
    let mut hasher = Sha256::new();
    hasher.update(std::fs::read(definition).expect("read definition"));
    hasher.update(std::fs::read(init_binary()).expect("read ztms-init"));
    for file in extra {
        hasher.update(std::fs::read(file).unwrap_or_default());
    }
    for overlay in &loaded.definition.base.overlays {
        let mut files = Vec::new();
        collect_files(&loaded.resolve(overlay.get_ref()), &mut files);
        files.sort();
        for file in files {
            hasher.update(file.to_string_lossy().as_bytes());
            hasher.update(std::fs::read(&file).unwrap_or_default());
        }
    }
    hex::encode(hasher.finalize())[..16].to_string()
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// Builds `images/<name>.toml` into `out` with the test cache.
pub fn build_into(name: &str, out: &Path) -> Result<ztms::build::BuildReport, ztms::build::BuildError> {
    build_definition_into(&repo().join("images").join(format!("{name}.toml")), out)
}

/// Builds the definition at `definition` into `out` with the test cache.
pub fn build_definition_into(definition: &Path, out: &Path) -> Result<ztms::build::BuildReport, ztms::build::BuildError> {
    let loaded = ztms::config::load(definition)?;
    let options = ztms::build::BuildOptions {
        out_dir: out.to_path_buf(),
        cache_dir: ztms::run::default_cache_dir(),
        init_binary: init_binary(),
        source_date_epoch: ztms::build::DEFAULT_EPOCH,
    };
    ztms::build::build(&loaded, &options)
}

/// Returns the raw image of `images/<name>.toml`, built once per set of
/// inputs and reused by later tests and runs.
pub fn image(name: &str) -> PathBuf {
    image_with_inputs(name, &[])
}

/// Returns the raw image of `images/<name>.toml` like [`image`], rebuilt
/// whenever one of the `extra` input files changes too.
pub fn image_with_inputs(name: &str, extra: &[&Path]) -> PathBuf {
    image_of_definition(&repo().join("images").join(format!("{name}.toml")), extra)
}

/// Returns the raw image of the definition at `definition`, which may lie
/// outside `images/` (see [`derive_definition`]), built once per set of
/// inputs like [`image_with_inputs`].
pub fn image_of_definition(definition: &Path, extra: &[&Path]) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<PathBuf, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(definition) {
        return path.clone();
    }
    let stem = definition.file_stem().expect("definition file name").to_string_lossy().into_owned();
    let out = scratch().join("images").join(format!("{stem}-{}", input_hash(definition, extra)));
    // The raw image is named after the appliance, which may differ from
    // the definition's file name (test-update-v2.toml builds test-update).
    let loaded = ztms::config::load(definition).expect("load test definition");
    let raw = out.join(format!("{}.raw", loaded.definition.image.name.get_ref()));
    if !raw.exists() {
        eprintln!("building {} into {}", definition.display(), out.display());
        if let Err(error) = build_definition_into(definition, &out) {
            panic!("building {} failed: {error}", definition.display());
        }
    }
    built.insert(definition.to_path_buf(), raw.clone());
    raw
}

/// Writes a variant of `images/<base>.toml` to
/// `target/ztms-tests/definitions/<variant>.toml` and returns its path.
/// `edit` changes the parsed definition, for example to add a `[debug]`
/// table. Overlay paths become absolute so that they still point into
/// `overlays/` from the scratch directory. Everything that `edit` leaves
/// alone comes from the base file, so the variant follows its changes.
pub fn derive_definition(base: &str, variant: &str, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
    let base_path = repo().join("images").join(format!("{base}.toml"));
    let text = std::fs::read_to_string(&base_path).unwrap_or_else(|e| panic!("reading {} failed: {e}", base_path.display()));
    let mut table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", base_path.display()));

    if let Some(toml::Value::Array(overlays)) = table.get_mut("base").and_then(|base| base.get_mut("overlays")) {
        for overlay in overlays.iter_mut() {
            let relative = overlay.as_str().expect("overlay paths are strings");
            let absolute = base_path.parent().expect("images/ directory").join(relative);
            *overlay = toml::Value::String(absolute.to_string_lossy().into_owned());
        }
    }
    edit(&mut table);

    let directory = scratch().join("definitions");
    std::fs::create_dir_all(&directory).expect("create target/ztms-tests/definitions");
    let path = directory.join(format!("{variant}.toml"));
    let derived = toml::to_string(&table).expect("serialize the derived definition");
    std::fs::write(&path, derived).unwrap_or_else(|e| panic!("writing {} failed: {e}", path.display()));
    path
}

/// Returns the accelerator for this test run, probed once.
pub fn accel() -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| {
        let (accel, reason) = accel::detect();
        eprintln!("QEMU accelerator: {accel} ({reason})");
        accel
    })
}

/// A VM owned by one test. When the test panics, the console tail is
/// printed and the whole log stays in its state directory.
pub struct TestVm {
    pub vm: Vm,
    pub name: String,
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- console of {} (full log: {}) ---\n{}\n---",
                self.name,
                self.vm.paths.console_log.display(),
                self.vm.console_tail(60)
            );
        }
    }
}

impl std::ops::Deref for TestVm {
    type Target = Vm;
    fn deref(&self) -> &Vm {
        &self.vm
    }
}

impl std::ops::DerefMut for TestVm {
    fn deref_mut(&mut self) -> &mut Vm {
        &mut self.vm
    }
}

/// Boots `image` in a VM named after the test.
pub fn boot(test: &str, image: &Path) -> TestVm {
    boot_with_forwards(test, image, Vec::new())
}

/// Boots `image` like [`boot`], with host ports forwarded to the guest.
pub fn boot_with_forwards(test: &str, image: &Path, forwards: Vec<ztms::run::vm::Forward>) -> TestVm {
    let state_dir = scratch().join("vms").join(test);
    let _ = std::fs::remove_dir_all(&state_dir);
    let mut config = VmConfig::headless(image, state_dir, accel());
    config.forwards = forwards;
    let vm = Vm::start(&config, false).unwrap_or_else(|e| panic!("starting VM {test} failed: {e}"));
    TestVm { vm, name: test.to_string() }
}

/// Returns the configuration of a VM for `test` with a fresh state
/// directory (no disk overlay, no TPM state yet).
pub fn fresh_config(test: &str, image: &Path) -> VmConfig {
    let state_dir = scratch().join("vms").join(test);
    let _ = std::fs::remove_dir_all(&state_dir);
    VmConfig::headless(image, state_dir, accel())
}

/// Starts a VM from `config`; `config.keep_disk` makes it a power cycle
/// of the previous VM in the same state directory.
pub fn start(test: &str, config: &VmConfig) -> TestVm {
    let vm = Vm::start(config, false).unwrap_or_else(|e| panic!("starting VM {test} failed: {e}"));
    TestVm { vm, name: test.to_string() }
}

/// Returns the output lines of `service` on a console.
pub fn output_of(console: &str, service: &str) -> Vec<String> {
    let prefix = format!("{service}: ");
    console
        .lines()
        .filter_map(|line| line.split_once(&prefix).map(|(_, rest)| rest.to_string()))
        .collect()
}

/// Boots `image` like [`boot`], with a second network card on the
/// point-to-point LAN link `lan` to another VM.
pub fn boot_on_lan(test: &str, image: &Path, lan: ztms::run::vm::LanLink) -> TestVm {
    let state_dir = scratch().join("vms").join(test);
    let _ = std::fs::remove_dir_all(&state_dir);
    let mut config = VmConfig::headless(image, state_dir, accel());
    config.lan = Some(lan);
    let vm = Vm::start(&config, false).unwrap_or_else(|e| panic!("starting VM {test} failed: {e}"));
    TestVm { vm, name: test.to_string() }
}

/// Boots `image` like [`boot`], with a second network card on `lan`, a
/// bridge in a host network namespace.
pub fn boot_on_host_lan(test: &str, image: &Path, lan: &lan::HostLan, mac_suffix: u8) -> TestVm {
    let vm = boot_on_lan(test, image, lan.link(mac_suffix));
    lan.attach();
    vm
}

/// Returns a free TCP port on 127.0.0.1 that no earlier call in this test
/// process returned: the kernel may hand out a just-released port again,
/// and QEMU refuses two forwards on one host port. Another process may
/// still take it before QEMU binds it, which makes the VM fail to start,
/// not a test pass.
pub fn free_port() -> u16 {
    static RETURNED: OnceLock<Mutex<std::collections::HashSet<u16>>> = OnceLock::new();
    let mut returned = RETURNED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if returned.insert(port) {
            return port;
        }
    }
}

/// Sends a plain HTTP request to a forwarded host port and returns the
/// reply, or an empty string when the port sends nothing back.
pub fn http_reply(port: u16) -> String {
    use std::io::{Read, Write};

    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

/// Connects from inside `service`'s namespace to `address:port` and reads
/// until the other end closes (`probe … read`), and returns the reply with
/// the byte count.
pub fn transfer(vm: &Vm, service: &str, address: std::net::Ipv4Addr, port: u16) -> ztms::status::ProbeReply {
    let request = format!("probe {service} tcp {address} {port} read");
    single_probe(vm, &request, service, address, port, Duration::from_secs(240))
}

/// Logs in to PostgreSQL at `address:port` from inside `service`'s
/// namespace with the password in the appliance's `/data/secrets/SECRET`
/// (`probe … postgres SECRET`), and returns the reply, whose `query_result` is
/// the client address that PostgreSQL saw.
pub fn postgres_login(vm: &Vm, service: &str, address: std::net::Ipv4Addr, port: u16, secret: &str) -> ztms::status::ProbeReply {
    let request = format!("probe {service} tcp {address} {port} postgres {secret}");
    single_probe(vm, &request, service, address, port, Duration::from_secs(60))
}

/// Sends one probe request and waits up to `timeout` for the reply from
/// `service` to `address:port`. Run no other probe to the same target at
/// the same time, because its reply would match too.
fn single_probe(vm: &Vm, request: &str, service: &str, address: std::net::Ipv4Addr, port: u16, timeout: Duration) -> ztms::status::ProbeReply {
    request_reply(vm, request, timeout, |reply: &ztms::status::ProbeReply| {
        reply.service == service && reply.address == address && reply.port == port
    })
}

/// Sends `request`, one line, to the status port of a VM whose image has
/// `[debug] probe = true`, and returns the first reply line that parses as
/// `T` and that `accept` takes, waiting up to `timeout` for each line.
/// Panics when the appliance rejects the request.
pub fn request_reply<T: serde::de::DeserializeOwned>(vm: &Vm, request: &str, timeout: Duration, accept: impl Fn(&T) -> bool) -> T {
    use std::io::{BufRead, BufReader, Write};

    let mut stream = std::os::unix::net::UnixStream::connect(&vm.paths.status).expect("connect to the status port");
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    stream.write_all(format!("{request}\n").as_bytes()).unwrap_or_else(|e| panic!("sending {request:?} failed: {e}"));
    loop {
        let mut line = String::new();
        let count = reader.read_line(&mut line).unwrap_or_else(|e| panic!("reading the reply to {request:?} failed: {e}"));
        assert!(count > 0, "status port closed before the reply to {request:?}");
        if let Ok(error) = serde_json::from_str::<ztms::status::ErrorReply>(&line) {
            panic!("request {request:?} rejected: {}", error.error);
        }
        if let Ok(reply) = serde_json::from_str::<T>(&line) {
            if accept(&reply) {
                return reply;
            }
        }
    }
}

/// One probe to run inside a service's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    pub service: String,
    pub udp: bool,
    pub address: std::net::Ipv4Addr,
    pub port: u16,
    pub source: Option<std::net::Ipv4Addr>,
}

impl ProbeRequest {
    fn line(&self) -> String {
        let proto = if self.udp { "udp" } else { "tcp" };
        let mut line = format!("probe {} {proto} {} {}", self.service, self.address, self.port);
        if let Some(source) = self.source {
            line.push_str(&format!(" source {source}"));
        }
        line
    }

    fn matches(&self, reply: &ztms::status::ProbeReply) -> bool {
        let proto = if self.udp { "udp" } else { "tcp" };
        reply.service == self.service
            && reply.proto == proto
            && reply.address == self.address
            && reply.port == self.port
            && reply.source == self.source
    }
}

/// Probes run at once; the guest serves at most 16 in parallel.
const PROBE_BATCH: usize = 16;

/// Runs `requests` from inside the services' network namespaces through the
/// status port of a VM whose image has `[debug] probe = true`, and returns
/// the replies in request order. Panics on an error reply.
pub fn probe(vm: &Vm, requests: &[ProbeRequest]) -> Vec<ztms::status::ProbeReply> {
    use std::io::{BufRead, BufReader, Write};

    let mut stream = std::os::unix::net::UnixStream::connect(&vm.paths.status).expect("connect to the status port");
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut replies: Vec<Option<ztms::status::ProbeReply>> = vec![None; requests.len()];
    for (batch_index, batch) in requests.chunks(PROBE_BATCH).enumerate() {
        let offset = batch_index * PROBE_BATCH;
        let text: String = batch.iter().map(|request| request.line() + "\n").collect();
        stream.write_all(text.as_bytes()).expect("send probe requests");
        let mut missing = batch.len();
        while missing > 0 {
            let mut line = String::new();
            let count = reader.read_line(&mut line).unwrap_or_else(|e| panic!("reading probe replies failed with {missing} missing: {e}"));
            assert!(count > 0, "status port closed with {missing} probe replies missing");
            if let Ok(error) = serde_json::from_str::<ztms::status::ErrorReply>(&line) {
                panic!("probe request rejected: {}", error.error);
            }
            let Ok(reply) = serde_json::from_str::<ztms::status::ProbeReply>(&line) else {
                continue;
            };
            let position = batch
                .iter()
                .enumerate()
                .position(|(index, request)| replies[offset + index].is_none() && request.matches(&reply));
            if let Some(index) = position {
                replies[offset + index] = Some(reply);
                missing -= 1;
            }
        }
    }
    replies.into_iter().map(|reply| reply.expect("every probe has a reply")).collect()
}
