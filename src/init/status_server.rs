//! The status API: a unix socket, readable by root only, that serves one
//! request per connection, and in test images a virtio-serial port that
//! serves any number. Both are non-blocking and served from the main loop.
//! Every request reads state except `isolate`, `release` and the test
//! requests `delete-link` and `firewall`.
//! `status` and `audit` are served on the main loop, because each reads
//! memory or a few small files. Probes, isolations, `delete-link` and
//! `firewall` run on threads.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::network::{isolate, probe as net_probe};
use crate::status::{ErrorReply, Status, AUDIT_REQUEST, REQUEST};
use crate::update::protocol::{self as update_protocol, UpdateReply, UpdateRequest, UpdateState};

/// Maximum length of a request line, in bytes.
const MAX_REQUEST: usize = 256;
/// Time a client has to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// Pause before polling a serial port again after the host side closed it,
/// because a closed port reports POLLHUP continuously.
const SERIAL_RETRY: Duration = Duration::from_secs(1);

/// Probes in flight at once; more get an error reply.
const MAX_PROBES: usize = 16;

/// Returns the reply line, newline included, to one request line.
pub fn reply(request: &str, status: &dyn Fn() -> Status) -> String {
    let request = request.trim();
    let body = if request == REQUEST {
        serde_json::to_string(&status())
    } else if request == AUDIT_REQUEST {
        match super::audit::run() {
            Ok(audit) => serde_json::to_string(&audit),
            Err(error) => serde_json::to_string(&ErrorReply { error }),
        }
    } else {
        let truncated: String = request.chars().take(40).collect();
        serde_json::to_string(&ErrorReply {
            error: format!("unknown request {truncated:?}; send \"{REQUEST}\" or \"{AUDIT_REQUEST}\""),
        })
    };
    match body {
        Ok(mut line) => {
            line.push('\n');
            line
        }
        Err(error) => format!("{{\"error\": \"encoding the reply failed: {error}\"}}\n"),
    }
}

/// Returns true for the requests that run on a thread of their own:
/// probes, isolations, `delete-link` and `firewall`.
fn is_threaded(line: &str) -> bool {
    net_probe::is_probe(line) || isolate::is_request(line) || net_probe::is_delete_link(line) || net_probe::is_firewall(line)
}

/// Splits the first complete line off the front of `buffer`.
fn take_line(buffer: &mut Vec<u8>) -> Option<String> {
    let end = buffer.iter().position(|&b| b == b'\n')?;
    let line: Vec<u8> = buffer.drain(..=end).collect();
    Some(String::from_utf8_lossy(&line[..end]).into_owned())
}

/// Splits complete lines off the front of `buffer`.
pub fn take_lines(buffer: &mut Vec<u8>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buffer.drain(..=end).collect();
        lines.push(String::from_utf8_lossy(&line[..end]).into_owned());
    }
    lines
}

#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    buffer: Vec<u8>,
    deadline: Instant,
}

/// Destination of the reply of a probe in flight.
#[derive(Debug)]
enum ReplyTo {
    Serial,
    Connection(UnixStream),
}

/// A probe running on its own thread, which writes its reply line into
/// `reply` and closes it.
#[derive(Debug)]
struct PendingProbe {
    reply: UnixStream,
    buffer: Vec<u8>,
    reply_to: ReplyTo,
}

#[derive(Debug)]
struct SerialPort {
    path: PathBuf,
    file: std::fs::File,
    buffer: Vec<u8>,
    /// While set, the host side is closed and the port is not polled.
    paused_until: Option<Instant>,
    /// True while an update thread reads the bundle from the port and
    /// writes its replies; the server leaves the port alone until then.
    lent: bool,
}

/// An update request from the serial port, for the main loop to start.
#[derive(Debug)]
pub struct SerialUpdate {
    pub request: UpdateRequest,
    /// Bundle bytes read together with the request line.
    pub initial: Vec<u8>,
    /// A second handle of the port for the update thread.
    pub port: std::fs::File,
}

/// The socket listener, its open connections and the serial port.
#[derive(Debug, Default)]
pub struct StatusServer {
    listener: Option<UnixListener>,
    connections: Vec<Connection>,
    serial: Option<SerialPort>,
    probes: Vec<PendingProbe>,
    update: Option<SerialUpdate>,
}

impl StatusServer {
    /// Binds the unix socket at `path`, readable by root only.
    pub fn bind(&mut self, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        self.listener = Some(listener);
        Ok(())
    }

    /// Opens the virtio-serial port named `name` if the device exists.
    /// Returns false when it does not exist (yet).
    pub fn open_serial(&mut self, name: &str) -> bool {
        if self.serial.is_some() {
            return true;
        }
        let Some(path) = find_virtio_port(Path::new("/sys/class/virtio-ports"), name) else {
            return false;
        };
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(&path);
        match opened {
            Ok(file) => {
                log::info!("serving the status on {} ({name})", path.display());
                self.serial = Some(SerialPort {
                    path,
                    file,
                    buffer: Vec::new(),
                    paused_until: None,
                    lent: false,
                });
                true
            }
            Err(error) => {
                log::warn!("opening status port {} failed: {error}", path.display());
                false
            }
        }
    }

    /// Returns the file descriptors to poll for reading.
    pub fn poll_fds(&self, now: Instant) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.listener.iter().map(AsRawFd::as_raw_fd).collect();
        fds.extend(self.connections.iter().map(|c| c.stream.as_raw_fd()));
        if let Some(serial) = &self.serial {
            if !serial.lent && serial.paused_until.map_or(true, |until| until <= now) {
                fds.push(serial.file.as_raw_fd());
            }
        }
        fds.extend(self.probes.iter().map(|p| p.reply.as_raw_fd()));
        fds
    }

    /// Returns the earliest time at which a connection times out or the
    /// serial port is polled again.
    pub fn next_deadline(&self) -> Option<Instant> {
        let connections = self.connections.iter().map(|c| c.deadline);
        let serial = self.serial.as_ref().and_then(|s| s.paused_until);
        connections.chain(serial).min()
    }

    /// Serves whatever `fd` has ready.
    pub fn on_fd_ready(&mut self, fd: RawFd, revents: i16, now: Instant, status: &dyn Fn() -> Status) {
        if self.listener.as_ref().is_some_and(|l| l.as_raw_fd() == fd) {
            self.accept(now);
            return;
        }
        if let Some(position) = self.connections.iter().position(|c| c.stream.as_raw_fd() == fd) {
            if self.serve_connection(position, status) {
                self.connections.swap_remove(position);
            }
            return;
        }
        if self.serial.as_ref().is_some_and(|s| s.file.as_raw_fd() == fd) {
            self.serve_serial(revents, now, status);
            return;
        }
        if let Some(position) = self.probes.iter().position(|p| p.reply.as_raw_fd() == fd) {
            self.forward_probe_reply(position);
        }
    }

    /// Starts the probe or isolate request `line` on its own thread, or
    /// returns the error line when it cannot run.
    fn start_probe(&mut self, line: &str, reply_to: ReplyTo) -> Result<(), (String, ReplyTo)> {
        let error_line = |message: String| {
            let mut line = serde_json::to_string(&ErrorReply { error: message }).unwrap_or_default();
            line.push('\n');
            line
        };
        if self.probes.len() >= MAX_PROBES {
            return Err((error_line(format!("{MAX_PROBES} probes are already running; wait for a reply")), reply_to));
        }
        // These tasks block for seconds, so each runs on a thread of
        // its own and returns its reply line.
        let task: Box<dyn FnOnce() -> String + Send> = if isolate::is_request(line) {
            match isolate::parse(line) {
                Ok(request) => Box::new(move || isolate::run(&request)),
                Err(message) => return Err((error_line(message), reply_to)),
            }
        } else if net_probe::is_delete_link(line) {
            match net_probe::parse_delete_link(line) {
                Ok(interface) => Box::new(move || net_probe::delete_link(&interface)),
                Err(message) => return Err((error_line(message), reply_to)),
            }
        } else if net_probe::is_firewall(line) {
            match net_probe::parse_firewall(line) {
                Ok(load) => Box::new(move || net_probe::switch_firewall(load)),
                Err(message) => return Err((error_line(message), reply_to)),
            }
        } else {
            match net_probe::parse(line) {
                Ok((request, path)) => Box::new(move || {
                    let reply = net_probe::run(request, path);
                    serde_json::to_string(&reply).unwrap_or_default()
                }),
                Err(message) => return Err((error_line(message), reply_to)),
            }
        };
        let (reader, mut writer) = match UnixStream::pair() {
            Ok(pair) => pair,
            Err(error) => return Err((error_line(format!("creating the probe's reply channel failed: {error}")), reply_to)),
        };
        if let Err(error) = reader.set_nonblocking(true) {
            return Err((error_line(format!("creating the probe's reply channel failed: {error}")), reply_to));
        }
        let spawned = std::thread::Builder::new().name("probe".into()).spawn(move || {
            let mut line = task();
            line.push('\n');
            let _ = writer.write_all(line.as_bytes());
        });
        if let Err(error) = spawned {
            return Err((error_line(format!("starting the probe thread failed: {error}")), reply_to));
        }
        self.probes.push(PendingProbe { reply: reader, buffer: Vec::new(), reply_to });
        Ok(())
    }

    /// Reads a probe's reply and passes it on once the probe thread closed
    /// its end.
    fn forward_probe_reply(&mut self, position: usize) {
        let probe = &mut self.probes[position];
        let mut chunk = [0u8; 1024];
        loop {
            match probe.reply.read(&mut chunk) {
                Ok(0) => break,
                Ok(count) => probe.buffer.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    log::warn!("reading a probe reply failed: {error}");
                    break;
                }
            }
        }
        let probe = self.probes.swap_remove(position);
        match probe.reply_to {
            ReplyTo::Connection(mut stream) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
                let _ = stream.write_all(&probe.buffer);
            }
            ReplyTo::Serial => {
                if let Some(serial) = &mut self.serial {
                    if let Err(error) = serial.file.write_all(&probe.buffer) {
                        log::debug!("writing to status port {} failed: {error}", serial.path.display());
                    }
                }
            }
        }
    }

    /// Returns the update request the serial port received, if any; the
    /// port stays lent until [`StatusServer::return_serial`].
    pub fn take_update(&mut self) -> Option<SerialUpdate> {
        self.update.take()
    }

    /// Serves the serial port again after an update thread ended.
    pub fn return_serial(&mut self) {
        if let Some(serial) = &mut self.serial {
            serial.lent = false;
            serial.buffer.clear();
        }
    }

    /// Lends the serial port for the update request `line`, with the bytes
    /// after it in the buffer, or replies with the error.
    fn lend_serial(&mut self, line: &str) {
        let Some(serial) = &mut self.serial else { return };
        let reply_error = |serial: &mut SerialPort, message: String| {
            let reply = UpdateReply { update: UpdateState::Rejected, message, report: None };
            if let Err(error) = serial.file.write_all(reply.line().as_bytes()) {
                log::debug!("writing to status port {} failed: {error}", serial.path.display());
            }
        };
        let request = match update_protocol::parse(line) {
            Ok(request) => request,
            Err(message) => {
                // The size is unknown, so whatever follows is read as
                // request lines, and each gets an error reply.
                reply_error(serial, message);
                return;
            }
        };
        match serial.file.try_clone() {
            Ok(port) => {
                serial.lent = true;
                let initial = std::mem::take(&mut serial.buffer);
                self.update = Some(SerialUpdate { request, initial, port });
            }
            Err(error) => reply_error(serial, format!("cloning the status port failed: {error}")),
        }
    }

    /// Closes connections whose request did not arrive in time.
    pub fn expire(&mut self, now: Instant) {
        self.connections.retain(|connection| connection.deadline > now);
    }

    fn accept(&mut self, now: Instant) {
        let Some(listener) = &self.listener else {
            return;
        };
        while self.connections.len() < MAX_CONNECTIONS {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.connections.push(Connection {
                            stream,
                            buffer: Vec::new(),
                            deadline: now + REQUEST_TIMEOUT,
                        });
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    log::warn!("accepting a status connection failed: {error}");
                    break;
                }
            }
        }
    }

    /// Reads from a connection and replies once its line is complete.
    /// Returns true when the connection is finished.
    fn serve_connection(&mut self, position: usize, status: &dyn Fn() -> Status) -> bool {
        let connection = &mut self.connections[position];
        let mut chunk = [0u8; MAX_REQUEST];
        match connection.stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(count) => connection.buffer.extend_from_slice(&chunk[..count]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
        let Some(line) = take_lines(&mut connection.buffer).into_iter().next() else {
            return connection.buffer.len() > MAX_REQUEST;
        };
        if is_threaded(&line) {
            let stream = self.connections.swap_remove(position).stream;
            if let Err((error_line, ReplyTo::Connection(mut stream))) = self.start_probe(&line, ReplyTo::Connection(stream)) {
                let _ = stream.write_all(error_line.as_bytes());
            }
            // The connection is no longer in the list; the caller's
            // swap_remove must not run.
            return false;
        }
        // A reply is a few kilobytes (an audit of many services some tens)
        // and the socket buffer is empty, so one write normally takes it
        // all. A client that does not read loses the rest.
        let _ = connection.stream.write_all(reply(&line, status).as_bytes());
        true
    }

    fn serve_serial(&mut self, revents: i16, now: Instant, status: &dyn Fn() -> Status) {
        let Some(serial) = &mut self.serial else {
            return;
        };
        let mut chunk = [0u8; MAX_REQUEST];
        let mut received = false;
        loop {
            match serial.file.read(&mut chunk) {
                Ok(0) => break,
                Ok(count) => {
                    received = true;
                    serial.buffer.extend_from_slice(&chunk[..count]);
                    // An update request is followed by its bundle, which
                    // must not be read here: stop at the first full line.
                    if chunk[..count].contains(&b'\n') {
                        break;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    log::debug!("reading status port {} failed: {error}", serial.path.display());
                    break;
                }
            }
        }
        if !received && revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            serial.paused_until = Some(now + SERIAL_RETRY);
            return;
        }
        serial.paused_until = None;
        loop {
            let Some(serial) = &mut self.serial else { return };
            let Some(line) = take_line(&mut serial.buffer) else {
                if serial.buffer.len() > MAX_REQUEST {
                    serial.buffer.clear();
                }
                return;
            };
            if update_protocol::is_update(&line) {
                self.lend_serial(&line);
                return;
            }
            let text = if is_threaded(&line) {
                match self.start_probe(&line, ReplyTo::Serial) {
                    Ok(()) => continue,
                    Err((error_line, _)) => error_line,
                }
            } else {
                reply(&line, status)
            };
            let Some(serial) = &mut self.serial else { return };
            if let Err(error) = serial.file.write_all(text.as_bytes()) {
                log::debug!("writing to status port {} failed: {error}", serial.path.display());
            }
        }
    }
}

/// Finds `/dev/vportNpM` of the virtio-serial port named `name`.
pub fn find_virtio_port(sys_class: &Path, name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_class).ok()?;
    for entry in entries.flatten() {
        let Ok(port_name) = std::fs::read_to_string(entry.path().join("name")) else {
            continue;
        };
        if port_name.trim() == name {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            name: "media".into(),
            version: "1".into(),
            slot: "a".into(),
            phases: Vec::new(),
            services: Vec::new(),
            ready: false,
            uptime_ms: 5,
            zombies: 0,
            init_rss_kib: 0,
            storage: None,
            wireguard: Vec::new(),
            ban: None,
            failed_update: None,
        }
    }

    #[test]
    fn status_request_gets_status_json() {
        let line = reply("status\r\n", &sample);
        assert!(line.ends_with('\n'));
        let parsed: Status = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, sample());
    }

    #[test]
    fn other_request_gets_error() {
        let line = reply("reboot", &sample);
        let parsed: ErrorReply = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed.error, "unknown request \"reboot\"; send \"status\" or \"audit\"");
    }

    #[test]
    fn take_lines_keeps_partial_rest() {
        let mut buffer = b"status\nsta".to_vec();
        assert_eq!(take_lines(&mut buffer), ["status"]);
        assert_eq!(buffer, b"sta");
    }

    #[test]
    fn virtio_port_is_found_by_name() {
        let sys = tempfile::tempdir().unwrap();
        for (port, name) in [("vport0p1", "org.qemu.guest_agent.0"), ("vport1p1", "org.ztms.status")] {
            std::fs::create_dir(sys.path().join(port)).unwrap();
            std::fs::write(sys.path().join(port).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(find_virtio_port(sys.path(), "org.ztms.status"), Some(PathBuf::from("/dev/vport1p1")));
        assert_eq!(find_virtio_port(sys.path(), "missing"), None);
    }

    #[test]
    fn socket_serves_one_request() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("status.sock");
        let mut server = StatusServer::default();
        server.bind(&path).unwrap();

        let client = std::thread::spawn({
            let path = path.clone();
            move || crate::status::query_unix(&path)
        });
        let started = Instant::now();
        while !client.is_finished() && started.elapsed() < Duration::from_secs(5) {
            let now = Instant::now();
            for fd in server.poll_fds(now) {
                server.on_fd_ready(fd, libc::POLLIN, now, &sample);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = client.join().unwrap().unwrap();
        assert_eq!(status, sample());
    }
}
