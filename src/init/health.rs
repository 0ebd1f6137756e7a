//! TCP and HTTP health probes that run inside the main poll loop: a
//! non-blocking socket, a deadline, and a step whenever poll reports the
//! socket ready. Command checks are child processes and live in the
//! supervisor.

use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use super::netns;

/// Bytes of an HTTP response read before giving up on a status line.
const MAX_RESPONSE_HEAD: usize = 1024;

/// Result of one probe step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Pending,
    Healthy,
    Unhealthy(String),
}

#[derive(Debug)]
enum Stage {
    Connecting,
    Writing { written: usize },
    Reading,
}

/// A TCP or HTTP probe in flight.
#[derive(Debug)]
pub struct NetProbe {
    stream: TcpStream,
    address: SocketAddrV4,
    /// HTTP request to send once connected; `None` for a TCP probe.
    request: Option<Vec<u8>>,
    response: Vec<u8>,
    stage: Stage,
    pub deadline: Instant,
    timeout: Duration,
}

/// Returns the GET request of an HTTP probe.
pub fn http_request(address: SocketAddrV4, path: &str) -> Vec<u8> {
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: ztms-init\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Parses the status code of an HTTP response head (`HTTP/1.1 200 OK`).
/// Returns `None` while the status line is incomplete, and an error when it
/// is not HTTP.
pub fn parse_status(head: &[u8]) -> Option<Result<u16, String>> {
    let end = head.windows(2).position(|pair| pair == b"\r\n").or_else(|| {
        // Tolerate bare LF.
        head.iter().position(|&b| b == b'\n')
    })?;
    let line = String::from_utf8_lossy(&head[..end]);
    let mut fields = line.split(' ');
    let version = fields.next().unwrap_or_default();
    let code = fields.next().unwrap_or_default();
    if !version.starts_with("HTTP/") {
        return Some(Err(format!("the reply is not HTTP: {:?}", truncate(&line, 60))));
    }
    match code.parse::<u16>() {
        Ok(code) if (100..600).contains(&code) => Some(Ok(code)),
        _ => Some(Err(format!("invalid HTTP status line {:?}", truncate(&line, 60)))),
    }
}

/// Returns true for a 2xx or 3xx status, which counts as healthy.
pub fn status_is_healthy(code: u16) -> bool {
    (200..400).contains(&code)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

impl NetProbe {
    /// Starts a TCP probe, or an HTTP probe when `http_path` is given. With
    /// `namespace`, the socket is created inside that network namespace, on
    /// a thread of its own, and the probe connects from there.
    pub fn start(
        address: SocketAddrV4,
        http_path: Option<&str>,
        timeout: Duration,
        namespace: Option<&Path>,
        now: Instant,
    ) -> io::Result<Self> {
        let socket = match namespace {
            None => new_socket()?,
            Some(path) => netns::run_in(path, new_socket).map_err(|error| io::Error::other(error.to_string()))??,
        };
        let stream = connect_nonblocking(socket, address)?;
        Ok(Self {
            stream,
            address,
            request: http_path.map(|path| http_request(address, path)),
            response: Vec::new(),
            stage: Stage::Connecting,
            deadline: now + timeout,
            timeout,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Returns the poll(2) events the probe waits for.
    pub fn events(&self) -> i16 {
        match self.stage {
            Stage::Connecting | Stage::Writing { .. } => libc::POLLOUT,
            Stage::Reading => libc::POLLIN,
        }
    }

    /// Returns the verdict once the deadline has passed.
    pub fn expire(&self) -> Progress {
        let missing = match (&self.stage, &self.request) {
            (Stage::Connecting, _) => "connect",
            (_, Some(_)) => "HTTP reply",
            (_, None) => "connect",
        };
        Progress::Unhealthy(format!(
            "no {missing} from {} within {} ms",
            self.address,
            self.timeout.as_millis()
        ))
    }

    /// Advances the probe after poll reported its socket ready.
    pub fn step(&mut self) -> Progress {
        loop {
            match self.stage {
                Stage::Connecting => {
                    match self.stream.take_error() {
                        Ok(None) => {}
                        Ok(Some(error)) | Err(error) => {
                            return Progress::Unhealthy(format!("connecting to {} failed: {error}", self.address))
                        }
                    }
                    if self.request.is_none() {
                        return Progress::Healthy;
                    }
                    self.stage = Stage::Writing { written: 0 };
                }
                Stage::Writing { written } => {
                    let request = self.request.as_deref().unwrap_or_default();
                    match self.stream.write(&request[written..]) {
                        Ok(count) if written + count >= request.len() => self.stage = Stage::Reading,
                        Ok(count) => {
                            self.stage = Stage::Writing {
                                written: written + count,
                            }
                        }
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Progress::Pending,
                        Err(error) => {
                            return Progress::Unhealthy(format!("sending the HTTP request to {} failed: {error}", self.address))
                        }
                    }
                }
                Stage::Reading => {
                    let mut chunk = [0u8; 512];
                    match self.stream.read(&mut chunk) {
                        Ok(0) => {
                            return Progress::Unhealthy(format!(
                                "{} closed the connection before an HTTP status line",
                                self.address
                            ))
                        }
                        Ok(count) => self.response.extend_from_slice(&chunk[..count]),
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Progress::Pending,
                        Err(error) => {
                            return Progress::Unhealthy(format!("reading the HTTP reply from {} failed: {error}", self.address))
                        }
                    }
                    match parse_status(&self.response) {
                        Some(Ok(code)) if status_is_healthy(code) => return Progress::Healthy,
                        Some(Ok(code)) => return Progress::Unhealthy(format!("HTTP status {code}")),
                        Some(Err(reason)) => return Progress::Unhealthy(reason),
                        None if self.response.len() >= MAX_RESPONSE_HEAD => {
                            return Progress::Unhealthy("no HTTP status line in the first 1024 bytes".into())
                        }
                        None => {}
                    }
                }
            }
        }
    }
}

/// Creates a non-blocking TCP socket in the calling thread's network
/// namespace, which the socket keeps for its lifetime.
fn new_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts a non-blocking TCP connect on `owned`; completion is reported by
/// POLLOUT.
fn connect_nonblocking(owned: OwnedFd, address: SocketAddrV4) -> io::Result<TcpStream> {
    let socket_address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: address.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*address.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the pointer and length describe `socket_address`, which lives
    // until the call returns.
    let result = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&socket_address as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if result < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(error);
        }
    }
    Ok(TcpStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn status_line_is_parsed() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(Ok(204)));
    }

    #[test]
    fn incomplete_status_line_waits() {
        assert_eq!(parse_status(b"HTTP/1.1 20"), None);
    }

    #[test]
    fn non_http_reply_is_rejected() {
        assert!(matches!(parse_status(b"SSH-2.0-OpenSSH\r\n"), Some(Err(_))));
    }

    #[test]
    fn redirect_is_healthy_and_server_error_is_not() {
        assert!(status_is_healthy(302));
        assert!(!status_is_healthy(503));
        assert!(!status_is_healthy(101));
    }

    #[test]
    fn request_has_host_and_absolute_path() {
        let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080);
        let text = String::from_utf8(http_request(address, "healthz")).unwrap();
        assert!(text.starts_with("GET /healthz HTTP/1.0\r\n"));
        assert!(text.contains("Host: 127.0.0.1:8080\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    /// Steps a probe until it finishes, waiting with poll(2) like the loop.
    fn run(mut probe: NetProbe) -> Progress {
        loop {
            let now = Instant::now();
            if now >= probe.deadline {
                return probe.expire();
            }
            let mut poll_fd = libc::pollfd {
                fd: probe.fd(),
                events: probe.events(),
                revents: 0,
            };
            let wait = (probe.deadline - now).as_millis() as i32 + 1;
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut poll_fd, 1, wait) };
            if poll_fd.revents != 0 {
                match probe.step() {
                    Progress::Pending => continue,
                    done => return done,
                }
            }
        }
    }

    fn local(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
    }

    #[test]
    fn tcp_probe_succeeds_on_listening_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = NetProbe::start(local(port), None, Duration::from_secs(2), None, Instant::now()).unwrap();
        assert_eq!(run(probe), Progress::Healthy);
    }

    #[test]
    fn tcp_probe_fails_on_closed_port() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let result = NetProbe::start(local(port), None, Duration::from_secs(2), None, Instant::now()).map(run);
        assert!(!matches!(result, Ok(Progress::Healthy)), "{result:?}");
    }

    #[test]
    fn http_probe_reads_status() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 512];
            let _ = stream.read(&mut request).unwrap();
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        });
        let probe = NetProbe::start(local(port), Some("/"), Duration::from_secs(2), None, Instant::now()).unwrap();
        assert_eq!(run(probe), Progress::Healthy);
        server.join().unwrap();
    }

    #[test]
    fn http_probe_times_out_on_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = NetProbe::start(local(port), Some("/"), Duration::from_millis(100), None, Instant::now()).unwrap();
        let result = run(probe);
        drop(listener);
        assert!(matches!(&result, Progress::Unhealthy(reason) if reason.contains("no HTTP reply")), "{result:?}");
    }

    #[test]
    fn http_probe_rejects_server_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 512];
            let _ = stream.read(&mut request).unwrap();
            stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap();
        });
        let probe = NetProbe::start(local(port), Some("/"), Duration::from_secs(2), None, Instant::now()).unwrap();
        assert_eq!(run(probe), Progress::Unhealthy("HTTP status 503".into()));
        server.join().unwrap();
    }
}
