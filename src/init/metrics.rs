//! Prometheus metrics of ztms-init: `GET /metrics` on the monitoring
//! segment's gateway, TCP port 9310, in the text exposition format 0.0.4.
//!
//! The listener exists only when the definition has a segment named
//! `monitoring` with at least one service, because the gateway address
//! lives on those services' host links. The firewall's input chain accepts
//! the port from that segment's addresses only.
//!
//! Like the status socket, the listener is non-blocking and served from
//! the main loop: each connection sends one request within
//! [`REQUEST_TIMEOUT`], gets one response and is closed. Headers are read
//! to their end and ignored.

use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::status::Status;

/// Maximum size of a request line and its headers, in bytes.
const MAX_REQUEST: usize = 4096;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8;
/// Content type of the text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
    deadline: Instant,
}

/// The metrics listener and its open connections.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    connections: Vec<Connection>,
}

impl MetricsServer {
    /// Binds the listener at `address`.
    pub fn bind(address: SocketAddrV4) -> io::Result<Self> {
        let listener = TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, connections: Vec::new() })
    }

    /// Returns the file descriptors to poll for reading.
    pub fn poll_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.listener.as_raw_fd()];
        fds.extend(self.connections.iter().map(|connection| connection.stream.as_raw_fd()));
        fds
    }

    /// Returns the earliest time at which a connection times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.connections.iter().map(|connection| connection.deadline).min()
    }

    /// Closes connections whose request did not arrive in time.
    pub fn expire(&mut self, now: Instant) {
        self.connections.retain(|connection| connection.deadline > now);
    }

    /// Serves whatever `fd` has ready. `status` is called only for a
    /// complete `GET /metrics`.
    pub fn on_fd_ready(&mut self, fd: RawFd, now: Instant, status: &dyn Fn() -> Status) {
        if self.listener.as_raw_fd() == fd {
            self.accept(now);
            return;
        }
        let Some(position) = self.connections.iter().position(|c| c.stream.as_raw_fd() == fd) else {
            return;
        };
        if serve(&mut self.connections[position], status) {
            self.connections.swap_remove(position);
        }
    }

    fn accept(&mut self, now: Instant) {
        while self.connections.len() < MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.connections.push(Connection { stream, buffer: Vec::new(), deadline: now + REQUEST_TIMEOUT });
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    log::warn!("metrics: accepting a connection failed: {error}");
                    break;
                }
            }
        }
    }
}

/// Reads from `connection` and responds once the request is complete.
/// Returns true when the connection is finished.
fn serve(connection: &mut Connection, status: &dyn Fn() -> Status) -> bool {
    let mut chunk = [0u8; 1024];
    match connection.stream.read(&mut chunk) {
        Ok(0) => return true,
        Ok(count) => connection.buffer.extend_from_slice(&chunk[..count]),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => return false,
        Err(_) => return true,
    }
    let complete = ends_headers(&connection.buffer);
    if !complete && connection.buffer.len() <= MAX_REQUEST {
        return false;
    }
    let (code, body) = if complete {
        respond(&request_line(&connection.buffer), status)
    } else {
        ("431 Request Header Fields Too Large", format!("the request is longer than {MAX_REQUEST} bytes\n"))
    };
    let content_type = if code.starts_with("200") { CONTENT_TYPE } else { "text/plain; charset=utf-8" };
    let response = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // The response is a few kilobytes and the socket buffer is empty, so one
    // write normally takes it all. A client that does not read loses the rest.
    let _ = connection.stream.write_all(response.as_bytes());
    true
}

/// True when `buffer` contains the empty line that ends the headers.
fn ends_headers(buffer: &[u8]) -> bool {
    buffer.windows(4).any(|window| window == b"\r\n\r\n") || buffer.windows(2).any(|window| window == b"\n\n")
}

fn request_line(buffer: &[u8]) -> String {
    let end = buffer.iter().position(|&byte| byte == b'\n').unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).trim_end_matches('\r').to_string()
}

/// Returns the status line and body for `request_line`.
pub fn respond(request_line: &str, status: &dyn Fn() -> Status) -> (&'static str, String) {
    let mut words = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next()) else {
        return ("400 Bad Request", "write a request line such as: GET /metrics HTTP/1.1\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return ("400 Bad Request", "write a request line such as: GET /metrics HTTP/1.1\n".into());
    }
    if method != "GET" {
        return ("405 Method Not Allowed", "only GET /metrics is served\n".into());
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return ("404 Not Found", "only GET /metrics is served\n".into());
    }
    ("200 OK", render(&status()))
}

/// Renders `status` in the Prometheus text exposition format.
// TODO: export the firewall's drop counters; reading them takes an `nft -j
// list counters` run per scrape, which the main loop must not wait for.
pub fn render(status: &Status) -> String {
    let mut page = Page::default();

    page.family("ztms_info", "gauge", "Appliance name, version and root slot; the value is always 1.");
    page.sample(
        "ztms_info",
        &[("name", &status.name), ("version", &status.version), ("slot", &status.slot)],
        1.0,
    );
    page.gauge("ztms_ready", "1 once every service has been healthy at the same time.", bool_value(status.ready));
    page.gauge("ztms_uptime_seconds", "Seconds since the kernel booted.", status.uptime_ms as f64 / 1000.0);
    page.gauge(
        "ztms_init_resident_memory_bytes",
        "Resident memory of ztms-init (VmRSS).",
        (status.init_rss_kib * 1024) as f64,
    );
    page.gauge("ztms_zombie_processes", "Processes in the zombie state.", f64::from(status.zombies));

    page.family("ztms_boot_phase_duration_seconds", "gauge", "Run time of each finished boot phase.");
    for phase in &status.phases {
        if let Some(duration_ms) = phase.duration_ms {
            page.sample("ztms_boot_phase_duration_seconds", &[("phase", &phase.name)], duration_ms as f64 / 1000.0);
        }
    }

    page.family("ztms_service_up", "gauge", "1 while the service's process runs.");
    for service in &status.services {
        page.sample("ztms_service_up", &[("service", &service.name)], bool_value(service.pid.is_some()));
    }
    page.family("ztms_service_healthy", "gauge", "Result of the service's latest health check.");
    for service in &status.services {
        page.sample("ztms_service_healthy", &[("service", &service.name)], bool_value(service.healthy));
    }
    page.family("ztms_service_restarts_total", "counter", "Restarts after an unexpected exit since boot.");
    for service in &status.services {
        page.sample("ztms_service_restarts_total", &[("service", &service.name)], f64::from(service.restarts));
    }

    page.family("ztms_service_memory_bytes", "gauge", "Memory charged to the service's cgroup (memory.current).");
    for service in &status.services {
        if let Some(bytes) = service.memory_bytes {
            page.sample("ztms_service_memory_bytes", &[("service", &service.name)], bytes as f64);
        }
    }

    if let Some(ban) = &status.ban {
        let labels = [("service", ban.service.as_str())];
        page.family("ztms_failed_authentications_total", "counter", "Failed authentications in the watched service's access log.");
        page.sample("ztms_failed_authentications_total", &labels, ban.failures_total as f64);
        page.family("ztms_bans_total", "counter", "Clients banned since boot.");
        page.sample("ztms_bans_total", &labels, ban.bans_total as f64);
        page.family("ztms_bans_lost_total", "counter", "Bans that never reached nft because too many were waiting.");
        page.sample("ztms_bans_lost_total", &labels, ban.bans_lost as f64);
        page.family("ztms_banned_clients", "gauge", "Clients banned now.");
        page.sample("ztms_banned_clients", &labels, ban.banned.len() as f64);
    }
    page.text
}

fn bool_value(value: bool) -> f64 {
    if value {
        1.0
    } else {
        0.0
    }
}

/// Text of the exposition, written family by family.
#[derive(Default)]
struct Page {
    text: String,
}

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels.iter().map(|(key, value)| format!("{key}=\"{}\"", escape(value))).collect();
            self.text.push_str(&format!("{{{}}}", pairs.join(",")));
        }
        self.text.push_str(&format!(" {value}\n"));
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{BanStatus, BannedClient, PhaseState, PhaseStatus, ServiceState, ServiceStatus};

    fn sample() -> Status {
        Status {
            name: "media".into(),
            version: "1.2".into(),
            slot: "a".into(),
            phases: vec![
                PhaseStatus { name: "storage".into(), state: PhaseState::Done, duration_ms: Some(1250), error: None },
                PhaseStatus { name: "bless".into(), state: PhaseState::Pending, duration_ms: None, error: None },
            ],
            services: vec![ServiceStatus {
                name: "proxy".into(),
                state: ServiceState::Running,
                healthy: true,
                restarts: 2,
                last_exit: None,
                pid: Some(42),
                security: None,
                container: None,
                memory_bytes: Some(12_582_912),
            }],
            ready: true,
            uptime_ms: 61_500,
            zombies: 0,
            init_rss_kib: 3072,
            storage: None,
            wireguard: Vec::new(),
            ban: Some(BanStatus {
                service: "proxy".into(),
                failures: 3,
                window_secs: 60,
                ban_secs: 600,
                bans_total: 1,
                failures_total: 7,
                bans_lost: 0,
                banned: vec![BannedClient { address: std::net::Ipv4Addr::new(10, 0, 2, 2), seconds_left: 540 }],
            }),
            failed_update: None,
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn render_lists_service_state_and_restarts() {
        let text = render(&sample());
        let lines = lines(&text);
        assert!(lines.contains(&"ztms_service_up{service=\"proxy\"} 1"), "{text}");
        assert!(lines.contains(&"ztms_service_healthy{service=\"proxy\"} 1"), "{text}");
        assert!(lines.contains(&"ztms_service_restarts_total{service=\"proxy\"} 2"), "{text}");
        assert!(lines.contains(&"ztms_service_memory_bytes{service=\"proxy\"} 12582912"), "{text}");
        assert!(lines.contains(&"# TYPE ztms_service_restarts_total counter"), "{text}");
    }

    #[test]
    fn render_lists_init_memory_and_phases() {
        let text = render(&sample());
        let lines = lines(&text);
        assert!(lines.contains(&"ztms_init_resident_memory_bytes 3145728"), "{text}");
        assert!(lines.contains(&"ztms_boot_phase_duration_seconds{phase=\"storage\"} 1.25"), "{text}");
        assert!(!text.contains("phase=\"bless\""), "{text}");
        assert!(lines.contains(&"ztms_uptime_seconds 61.5"), "{text}");
    }

    #[test]
    fn render_lists_ban_figures() {
        let text = render(&sample());
        let lines = lines(&text);
        assert!(lines.contains(&"ztms_bans_total{service=\"proxy\"} 1"), "{text}");
        assert!(lines.contains(&"ztms_failed_authentications_total{service=\"proxy\"} 7"), "{text}");
        assert!(lines.contains(&"ztms_banned_clients{service=\"proxy\"} 1"), "{text}");
    }

    #[test]
    fn render_without_ban_omits_ban_families() {
        let status = Status { ban: None, ..sample() };
        assert!(!render(&status).contains("ztms_bans_total"));
    }

    #[test]
    fn every_family_has_help_and_type() {
        let text = render(&sample());
        let mut names: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.split(['{', ' ']).next().unwrap_or_default())
            .collect();
        names.dedup();
        for name in names {
            assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE for {name}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let status = Status { name: "a\"b\\c\nd".into(), ..sample() };
        assert!(render(&status).contains("name=\"a\\\"b\\\\c\\nd\""));
    }

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(respond("GET /metrics HTTP/1.1", &sample).0, "200 OK");
        assert_eq!(respond("GET /metrics?x=1 HTTP/1.0", &sample).0, "200 OK");
        assert_eq!(respond("GET / HTTP/1.1", &sample).0, "404 Not Found");
        assert_eq!(respond("POST /metrics HTTP/1.1", &sample).0, "405 Method Not Allowed");
        assert_eq!(respond("hello", &sample).0, "400 Bad Request");
    }

    #[test]
    fn listener_serves_one_request() {
        let mut server = MetricsServer::bind(SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = server.listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut stream = TcpStream::connect(address).unwrap();
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        });
        let started = Instant::now();
        while !client.is_finished() && started.elapsed() < Duration::from_secs(5) {
            let now = Instant::now();
            for fd in server.poll_fds() {
                server.on_fd_ready(fd, now, &sample);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let response = client.join().unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains(&format!("Content-Type: {CONTENT_TYPE}")), "{response}");
        assert!(response.contains("ztms_ready 1\n"), "{response}");
    }
}
