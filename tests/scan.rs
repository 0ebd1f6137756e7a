//! QEMU test of what the appliance shows on its uplink: a scan of all
//! 65535 TCP and all 65535 UDP ports of `test-wg`'s uplink address.
//!
//! The test process is the scanner. It plays a host on the appliance's
//! virtual LAN: QEMU's socket network backend carries Ethernet frames over
//! a TCP connection on 127.0.0.1, each frame after its length as a 32-bit
//! big-endian number. The scanner writes raw frames there (a TCP SYN or a
//! UDP datagram per port), replies to the appliance's ARP requests, and
//! records every frame that comes back. QEMU's user network would show
//! forwarded ports only, so it cannot scan.
//!
//! Expected: a SYN-ACK from the published HTTPS port (443) only, no RST
//! from any port, and no ICMP error or UDP reply to any datagram, because
//! the firewall drops what it does not accept. The WireGuard port (51820)
//! also stays silent: WireGuard replies only to a handshake made with a
//! key it knows, which `tests/wireguard.rs` checks.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{boot_on_lan, free_port, image, BOOT_TIMEOUT};
use ztms::run::vm::{LanBackend, LanLink};

/// Last byte of the appliance VM's LAN MAC address.
const APPLIANCE_MAC_SUFFIX: u8 = 10;
/// The scanner's MAC and IPv4 address on the LAN (192.168.77.0/24 in
/// test-wg.toml).
const SCANNER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x35, 0x30];
const SCANNER_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 30);
/// Source ports of the probes, so replies are easy to recognise.
const TCP_SOURCE_PORT: u16 = 40000;
const UDP_SOURCE_PORT: u16 = 40001;
/// Source port of the SYN to the published port sent after every probe.
/// The guest takes frames in order, so its SYN-ACK shows that the guest
/// has received the whole scan.
const CANARY_SOURCE_PORT: u16 = 40002;
/// Source port of the SYNs to the published port before the scan: the
/// appliance is ready before the web server in its container listens.
const WARM_UP_SOURCE_PORT: u16 = 40003;
/// Time allowed for the guest to take the whole scan under TCG.
const SCAN_TIMEOUT: Duration = Duration::from_secs(300);
/// The published HTTPS port of test-wg.
const HTTPS_PORT: u16 = 443;
/// How long the scanner waits for late replies after the guest has
/// taken the last probe.
const SETTLE: Duration = Duration::from_secs(5);

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

fn appliance_mac() -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x35, APPLIANCE_MAC_SUFFIX]
}

/// Everything the appliance sent to the scanner.
#[derive(Debug, Default)]
struct Replies {
    /// Ports of the appliance that sent a SYN-ACK.
    syn_ack: BTreeSet<u16>,
    /// When the first SYN-ACK to each scanner port arrived.
    syn_ack_at: BTreeMap<u16, Instant>,
    /// RSTs: the port that sent it, the scanner's port and the
    /// acknowledgement number.
    reset: Vec<(u16, u16, u32)>,
    /// ICMP errors: type, code and the destination port of the probe
    /// that caused them.
    icmp: Vec<(u8, u8, u16)>,
    /// UDP datagrams from these source ports.
    udp: BTreeSet<u16>,
    /// ARP requests for the scanner's address, each sent a reply.
    arp_answered: usize,
    /// Descriptions of every other frame.
    other: Vec<String>,
}

/// Sums 16-bit words for the Internet checksum (RFC 1071).
fn checksum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for chunk in &mut chunks {
        sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn checksum_finish(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds an Ethernet frame with an IPv4 packet from the scanner to
/// `destination` carrying `transport`, whose checksum field at
/// `checksum_offset` is filled with the pseudo-header checksum.
fn ipv4_frame(destination: Ipv4Addr, protocol: u8, mut transport: Vec<u8>, checksum_offset: usize) -> Vec<u8> {
    let source = SCANNER_ADDRESS.octets();
    let target = destination.octets();
    let mut pseudo = checksum_add(0, &source);
    pseudo = checksum_add(pseudo, &target);
    pseudo += u32::from(protocol) + transport.len() as u32;
    let transport_checksum = checksum_finish(checksum_add(pseudo, &transport));
    transport[checksum_offset..checksum_offset + 2].copy_from_slice(&transport_checksum.to_be_bytes());

    let total = (20 + transport.len()) as u16;
    let mut header = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
    header[2..4].copy_from_slice(&total.to_be_bytes());
    header.extend_from_slice(&source);
    header.extend_from_slice(&target);
    let header_checksum = checksum_finish(checksum_add(0, &header));
    header[10..12].copy_from_slice(&header_checksum.to_be_bytes());

    let mut frame = ethernet(appliance_mac(), ETHERTYPE_IPV4);
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&transport);
    frame
}

fn ethernet(destination: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut frame = destination.to_vec();
    frame.extend_from_slice(&SCANNER_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// Builds a TCP SYN from `source_port` to `port`, with an MSS option as
/// real stacks send.
fn tcp_syn(destination: Ipv4Addr, source_port: u16, port: u16) -> Vec<u8> {
    let mut segment = Vec::with_capacity(24);
    segment.extend_from_slice(&source_port.to_be_bytes());
    segment.extend_from_slice(&port.to_be_bytes());
    segment.extend_from_slice(&(0x1000_0000u32 + u32::from(port)).to_be_bytes());
    segment.extend_from_slice(&0u32.to_be_bytes());
    segment.extend_from_slice(&[6 << 4, TCP_SYN]);
    segment.extend_from_slice(&64240u16.to_be_bytes());
    segment.extend_from_slice(&[0, 0, 0, 0]);
    segment.extend_from_slice(&[2, 4, 0x05, 0xb4]);
    ipv4_frame(destination, PROTO_TCP, segment, 16)
}

/// Builds a UDP datagram to `port` with a short payload.
fn udp_datagram(destination: Ipv4Addr, port: u16) -> Vec<u8> {
    let payload = b"ztms scan\n";
    let length = (8 + payload.len()) as u16;
    let mut datagram = Vec::with_capacity(usize::from(length));
    datagram.extend_from_slice(&UDP_SOURCE_PORT.to_be_bytes());
    datagram.extend_from_slice(&port.to_be_bytes());
    datagram.extend_from_slice(&length.to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    ipv4_frame(destination, PROTO_UDP, datagram, 6)
}

/// Builds the ARP reply that gives `requester` the scanner's MAC address.
fn arp_reply(requester_mac: [u8; 6], requester_address: [u8; 4]) -> Vec<u8> {
    let mut frame = ethernet(requester_mac, ETHERTYPE_ARP);
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]);
    frame.extend_from_slice(&SCANNER_MAC);
    frame.extend_from_slice(&SCANNER_ADDRESS.octets());
    frame.extend_from_slice(&requester_mac);
    frame.extend_from_slice(&requester_address);
    frame
}

/// The sending half of the LAN link. Both threads write whole frames
/// under its lock, because a frame split by another write corrupts the
/// stream.
type Writer = Arc<Mutex<TcpStream>>;

/// Writes one frame in QEMU's socket backend format.
fn send_frame(writer: &Writer, frame: &[u8]) -> std::io::Result<()> {
    let mut buffer = (frame.len() as u32).to_be_bytes().to_vec();
    buffer.extend_from_slice(frame);
    writer.lock().unwrap().write_all(&buffer)
}

/// Reads frames until `stop` is set, records what they are, and replies to
/// ARP requests for the scanner's address.
fn receive(mut stream: TcpStream, replier: Writer, replies: Arc<Mutex<Replies>>, stop: Arc<AtomicBool>) {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(count) => pending.extend_from_slice(&buffer[..count]),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(error) => panic!("reading the LAN link failed: {error}"),
        }
        while pending.len() >= 4 {
            let length = u32::from_be_bytes(pending[..4].try_into().unwrap()) as usize;
            if pending.len() < 4 + length {
                break;
            }
            let frame: Vec<u8> = pending[4..4 + length].to_vec();
            pending.drain(..4 + length);
            if let Some(reply) = classify(&frame, &mut replies.lock().unwrap()) {
                send_frame(&replier, &reply).expect("send an ARP reply");
            }
        }
    }
}

/// Records `frame` in `replies` and returns the ARP reply to send when the
/// frame is an ARP request for the scanner's address.
fn classify(frame: &[u8], replies: &mut Replies) -> Option<Vec<u8>> {
    if frame.len() < 14 {
        replies.other.push(format!("runt frame of {} bytes", frame.len()));
        return None;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let body = &frame[14..];
    match ethertype {
        ETHERTYPE_ARP if body.len() >= 28 => {
            let operation = u16::from_be_bytes([body[6], body[7]]);
            if operation == 1 && body[24..28] == SCANNER_ADDRESS.octets() {
                replies.arp_answered += 1;
                return Some(arp_reply(body[8..14].try_into().unwrap(), body[14..18].try_into().unwrap()));
            }
            None
        }
        ETHERTYPE_IPV4 if body.len() >= 20 => {
            let header = usize::from(body[0] & 0x0f) * 4;
            let protocol = body[9];
            let source = Ipv4Addr::new(body[12], body[13], body[14], body[15]);
            let destination = Ipv4Addr::new(body[16], body[17], body[18], body[19]);
            let transport = &body[header.min(body.len())..];
            if destination != SCANNER_ADDRESS {
                replies.other.push(format!("IPv4 protocol {protocol} {source} -> {destination}"));
                return None;
            }
            match protocol {
                PROTO_TCP if transport.len() >= 14 => {
                    let port = u16::from_be_bytes([transport[0], transport[1]]);
                    let to_port = u16::from_be_bytes([transport[2], transport[3]]);
                    let flags = transport[13];
                    if flags & TCP_RST != 0 {
                        let acknowledged = u32::from_be_bytes(transport[8..12].try_into().unwrap());
                        replies.reset.push((port, to_port, acknowledged));
                    } else if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
                        replies.syn_ack.insert(port);
                        replies.syn_ack_at.entry(to_port).or_insert_with(Instant::now);
                    } else {
                        replies.other.push(format!("TCP from port {port} with flags {flags:#04x}"));
                    }
                }
                PROTO_UDP if transport.len() >= 8 => {
                    replies.udp.insert(u16::from_be_bytes([transport[0], transport[1]]));
                }
                PROTO_ICMP if transport.len() >= 8 => {
                    // The error quotes the probe's IP header and the first
                    // 8 bytes of its transport header.
                    let quoted = &transport[8..];
                    let quoted_port = (quoted.len() >= 24)
                        .then(|| {
                            let quoted_header = usize::from(quoted[0] & 0x0f) * 4;
                            quoted.get(quoted_header + 2..quoted_header + 4).map(|port| u16::from_be_bytes([port[0], port[1]]))
                        })
                        .flatten()
                        .unwrap_or(0);
                    replies.icmp.push((transport[0], transport[1], quoted_port));
                }
                _ => replies.other.push(format!("IPv4 protocol {protocol} from {source}")),
            }
            None
        }
        other => {
            replies.other.push(format!("ethertype {other:#06x}"));
            None
        }
    }
}

/// Sends `frames` and returns the time it took. QEMU reads the connection
/// only as fast as the guest takes frames, so writing blocks rather than
/// dropping frames. Frames go out in batches of about 64 KiB, so ARP
/// replies get a turn in between.
fn send_all(writer: &Writer, frames: impl Iterator<Item = Vec<u8>>) -> Duration {
    const BATCH_BYTES: usize = 64 << 10;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH_BYTES + 128);
    for frame in frames {
        batch.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        batch.extend_from_slice(&frame);
        if batch.len() >= BATCH_BYTES {
            writer.lock().unwrap().write_all(&batch).expect("write probes to the LAN link");
            batch.clear();
        }
    }
    writer.lock().unwrap().write_all(&batch).expect("write probes to the LAN link");
    started.elapsed()
}

/// Sends a SYN from `source_port` to the published port every second until
/// its SYN-ACK arrives, and returns when it arrived; panics at `deadline`.
fn wait_for_syn_ack(writer: &Writer, replies: &Mutex<Replies>, target: Ipv4Addr, source_port: u16, deadline: Instant) -> Instant {
    loop {
        send_all(writer, std::iter::once(tcp_syn(target, source_port, HTTPS_PORT)));
        std::thread::sleep(Duration::from_secs(1));
        if let Some(answered) = replies.lock().unwrap().syn_ack_at.get(&source_port) {
            return *answered;
        }
        assert!(Instant::now() < deadline, "no SYN-ACK from port {HTTPS_PORT} to port {source_port} in time");
    }
}

#[test]
fn scan_shows_only_published_port() {
    let appliance_image = image("test-wg");
    let lan_port = free_port();
    let mut vm = boot_on_lan("scan_appliance", &appliance_image, LanLink { backend: LanBackend::Socket { port: lan_port, listen: true }, mac_suffix: APPLIANCE_MAC_SUFFIX, capture: false });
    vm.wait_for_console("(?m)^ztms-init: ready:", BOOT_TIMEOUT).unwrap();
    let target = Ipv4Addr::new(192, 168, 77, 10);

    let stream = TcpStream::connect(("127.0.0.1", lan_port)).expect("connect to the appliance's LAN link");
    stream.set_nodelay(true).unwrap();
    let reader = stream.try_clone().unwrap();
    let writer: Writer = Arc::new(Mutex::new(stream));
    let replies = Arc::new(Mutex::new(Replies::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let replier = Arc::clone(&writer);
        let replies = Arc::clone(&replies);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || receive(reader, replier, replies, stop))
    };

    let deadline = Instant::now() + SCAN_TIMEOUT;
    wait_for_syn_ack(&writer, &replies, target, WARM_UP_SOURCE_PORT, deadline);
    let warm_up = std::mem::take(&mut *replies.lock().unwrap());
    eprintln!("before the scan: {} RSTs while the web server started, {} ARP requests answered", warm_up.reset.len(), warm_up.arp_answered);

    let started = Instant::now();
    let tcp_time = send_all(&writer, (1..=u16::MAX).map(|port| tcp_syn(target, TCP_SOURCE_PORT, port)));
    let udp_time = send_all(&writer, (1..=u16::MAX).map(|port| udp_datagram(target, port)));
    let canary_answered = wait_for_syn_ack(&writer, &replies, target, CANARY_SOURCE_PORT, started + SCAN_TIMEOUT);
    let taken = canary_answered - started;
    std::thread::sleep(SETTLE);
    stop.store(true, Ordering::Relaxed);
    receiver.join().expect("receiver thread");

    let replies = replies.lock().unwrap();
    eprintln!(
        "scan of {target}: 65535 TCP SYNs and 65535 UDP datagrams written in {:.1} s and {:.1} s, taken by the guest in {:.1} s, \
         then {} s for late replies; SYN-ACK from {:?}, RST from {} ports, {} ICMP errors, UDP replies from {} ports, {} ARP requests answered",
        tcp_time.as_secs_f64(),
        udp_time.as_secs_f64(),
        taken.as_secs_f64(),
        SETTLE.as_secs(),
        replies.syn_ack,
        replies.reset.len(),
        replies.icmp.len(),
        replies.udp.len(),
        replies.arp_answered
    );
    assert_eq!(replies.syn_ack, BTreeSet::from([HTTPS_PORT]), "TCP ports that answered SYN-ACK");
    assert!(replies.syn_ack_at.contains_key(&TCP_SOURCE_PORT), "the scan's own SYN to port {HTTPS_PORT} got a SYN-ACK");
    assert!(replies.reset.is_empty(), "TCP ports that answered RST instead of dropping: {:?}", replies.reset);
    assert!(replies.icmp.is_empty(), "ICMP errors (type, code, port): {:?}", &replies.icmp[..replies.icmp.len().min(20)]);
    assert!(replies.udp.is_empty(), "UDP ports that replied: {:?}", replies.udp);
    assert!(replies.other.is_empty(), "other frames to the scanner: {:?}", &replies.other[..replies.other.len().min(20)]);
    vm.kill();
}

#[test]
fn checksum_matches_rfc1071_example() {
    // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    let sum = checksum_add(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
    assert_eq!(checksum_finish(sum), !0xddf2);
}
