//! Floods at the QUIC port: quic-xdp over XDP (with its XDP front line)
//! vs quinn on kernel UDP, in one run, alternating round by round. A raw
//! AF_PACKET sender in the client namespace sends as fast as it can, from
//! spoofed sources (10.77.1.0/24), one kind of flood at a time:
//! - junk: short-header datagrams (100 B) with random connection IDs;
//! - short Initials: client Initials in 200-byte datagrams (RFC 9000 14.1:
//!   to be dropped);
//! - garbage Initials: 1200-byte Initials with random DCIDs and garbage
//!   payload (each costs an Initial key derivation before decryption fails);
//! - other-version Initials: 1200-byte first packets of version 0x1a2a3a4a,
//!   answered with Version Negotiation (by quic-xdp's XDP program, XDP_TX).
//!
//! For each kind: the server threads' CPU time per flood frame (flood
//! alone), per frame sent and per frame the server read (what it did not
//! read was dropped before it: in the XDP program, or by the kernel for
//! want of ring or socket room), and the request/response rate of a real
//! quinn client during the flood, beside its rate without one. On 2 vCPUs
//! the flooder takes a core of its own. For quic-xdp the XDP verdicts
//! must account for every frame.
//! Thread budget as in quic_echo: one busy server thread each.
//!
//!     sudo cargo bench -p quic-xdp-benches --bench flood -- --secs 3 --rounds 5

mod common;
mod echo_peers;

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use datapath::{
    program::{InitialRate, SteerReason},
    testbed::{TestNet, TestNetConfig},
    wire::{FrameRoute, MAX_HEADER_LEN, emit_udp_headers},
};
use echo_peers::*;
use smoltcp::wire::EthernetAddress;

#[derive(Parser)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Request/response exchanges in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

/// The servers compared: quic-xdp as it ships (no Initial rate limit),
/// quic-xdp with a per-source limit of 100 Initials/s, and quinn.
const SERVERS: [(Server, Option<u32>); 3] = [
    (Server::QuicXdpOverXdp, None),
    (Server::QuicXdpOverXdp, Some(100)),
    (Server::QuinnOverUdp, None),
];

fn server_name((server, rate): (Server, Option<u32>)) -> String {
    match rate {
        Some(r) => format!("{}, {r} Initials/s/source", server.name()),
        None => server.name().to_string(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flood {
    Junk,
    ShortInitial,
    GarbageInitial,
    /// First packets of another QUIC version: quic-xdp's program answers
    /// them (Version Negotiation, XDP_TX), quinn answers from user space.
    OtherVersion,
}

impl Flood {
    const ALL: [Flood; 4] = [
        Self::Junk,
        Self::ShortInitial,
        Self::GarbageInitial,
        Self::OtherVersion,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Junk => "junk short headers, 100 B",
            Self::ShortInitial => "Initials in 200 B datagrams",
            Self::GarbageInitial => "garbage Initials, 1200 B",
            Self::OtherVersion => "other-version Initials, 1200 B",
        }
    }

    /// Frames from 256 spoofed sources, each payload different.
    fn frames(self) -> Vec<Vec<u8>> {
        let route = FrameRoute {
            src_mac: EthernetAddress::from_bytes(&[2, 0x77, 0, 0, 0, 1]),
            dst_mac: EthernetAddress::from_bytes(&[2, 0x77, 0, 0, 0, 2]),
            vlan: None,
        };
        let dst = std::net::SocketAddr::from(([10, 77, 0, 2], PORT));
        (0..256u32)
            .map(|i| {
                let src = std::net::SocketAddr::from(([10, 77, 1, i as u8], 40000 + i as u16));
                let mut payload: Vec<u8> = (0..self.len())
                    .map(|j| (i.wrapping_mul(2654435761) ^ j as u32).to_le_bytes()[1])
                    .collect();
                match self {
                    // Short header, fixed bit set.
                    Self::Junk => payload[0] = 0x40 | (payload[0] & 0x3f),
                    // Long header, version 1, Initial; 8-byte DCID, no SCID,
                    // no token, a length that covers the rest: the server
                    // derives keys and tries to decrypt.
                    Self::ShortInitial | Self::GarbageInitial => {
                        payload[..6].copy_from_slice(&[0xc3, 0, 0, 0, 1, 8]);
                        let length = 0x4000 | (payload.len() as u16 - 18);
                        payload[14..16].copy_from_slice(&[0, 0]);
                        payload[16..18].copy_from_slice(&length.to_be_bytes());
                    }
                    // Version 0x1a2a3a4a; 8-byte DCID, no SCID.
                    Self::OtherVersion => {
                        payload[..6].copy_from_slice(&[0xc3, 0x1a, 0x2a, 0x3a, 0x4a, 8]);
                        payload[14] = 0;
                    }
                }
                let mut header = [0u8; MAX_HEADER_LEN];
                let n = emit_udp_headers(&mut header, &route, src, dst, None, &payload);
                [&header[..n], &payload[..]].concat()
            })
            .collect()
    }

    fn len(self) -> usize {
        match self {
            Self::Junk => 100,
            Self::ShortInitial => 200,
            Self::GarbageInitial | Self::OtherVersion => 1200,
        }
    }
}

/// A raw sender in the client namespace, flooding until stopped.
struct Flooder {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<u64>>,
}

impl Flooder {
    fn start(net: &TestNet, kind: Flood) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = net.client.spawn(move || {
            // Not counted with the server threads.
            // SAFETY: PR_SET_NAME with a NUL-terminated name.
            unsafe { libc::prctl(libc::PR_SET_NAME, c"bench-flood".as_ptr()) };
            let frames = kind.frames();
            let socket = RawSender::open(TestNet::CLIENT_IF)?;
            let mut sent = 0u64;
            while !flag.load(Ordering::Relaxed) {
                for f in &frames {
                    if socket.send(f) {
                        sent += 1;
                    }
                }
            }
            Ok(sent)
        });
        Self { stop, thread }
    }

    /// Frames sent.
    fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("flooder thread")
    }
}

/// A send-only AF_PACKET socket (protocol 0: it receives nothing).
struct RawSender {
    fd: OwnedFd,
    addr: libc::sockaddr_ll,
}

impl RawSender {
    fn open(interface: &str) -> anyhow::Result<Self> {
        let name = std::ffi::CString::new(interface)?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        anyhow::ensure!(ifindex != 0, "no interface {interface}");
        // SAFETY: plain socket(2); owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        anyhow::ensure!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        Ok(Self { fd, addr })
    }

    fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: frame and addr are valid for the call.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        rc >= 0
    }
}

/// One server, one flood kind, one round.
#[derive(Clone, Copy, Default)]
struct FloodSample {
    /// Flood frames sent per second (flood alone).
    flood_rate: f64,
    /// Server CPU microseconds per flood frame sent.
    cpu_us_per_frame: f64,
    /// Flood frames the server read (off its rings or socket) / sent: the
    /// rest were dropped before it (in the XDP program, or by the kernel
    /// for want of ring or socket buffer room).
    read_fraction: f64,
    /// Server CPU microseconds per flood frame it read (NaN when it read
    /// under 1% of them).
    cpu_us_per_frame_read: f64,
    /// Client requests/s during the flood.
    rr_during: f64,
    /// For quic-xdp: flood frames the XDP program dropped / sent.
    xdp_handled: f64,
}

/// Datagrams the server has read so far: off the AF_XDP rings and the
/// kernel socket for quic-xdp (its counters), delivered to UDP sockets in
/// the server's namespace for quinn (the kernel's `Udp: InDatagrams`).
fn frames_read(net: &TestNet, running: &Running) -> anyhow::Result<u64> {
    Ok(match running {
        Running::QuicXdp(ep) => {
            let c = ep.stats().datapath;
            c.rx_packets + c.rx_malformed + c.rx_bad_checksum
        }
        Running::Quinn(_) => {
            // /proc/thread-self: the namespace of the thread that reads.
            let snmp = net
                .server
                .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))?;
            udp_in_datagrams(&snmp).context("no Udp InDatagrams in /proc/net/snmp")?
        }
    })
}

/// `InDatagrams` from the text of /proc/net/snmp (a `Udp:` line of names,
/// then one of values).
fn udp_in_datagrams(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == "InDatagrams")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    common::require_root()?;
    let (server_rt, client_rt) = runtimes()?;
    let net = TestNet::create(&TestNetConfig::default())?;
    let certs = certs::DevCerts::localhost()?;
    let target = net.server_addr(false, PORT);
    let secs = Duration::from_secs_f64(args.secs);

    // results[server][kind], baseline[server]
    let mut results = vec![vec![Vec::<FloodSample>::new(); Flood::ALL.len()]; SERVERS.len()];
    let mut baseline = vec![Vec::<f64>::new(); SERVERS.len()];
    for round in 0..args.rounds {
        for (s, (server, rate)) in SERVERS.into_iter().enumerate() {
            let limit = rate.map(|per_second| InitialRate {
                per_second,
                burst: per_second,
            });
            let running = start(&net, &server_rt, server, &certs, Crypto::Ring, |c| {
                c.initial_rate = limit
            })
            .with_context(|| server_name((server, rate)))?;
            let steering = |running: &Running| match running {
                Running::QuicXdp(ep) => ep.stats().steering,
                Running::Quinn(_) => None,
            };
            let client = client(&net, &client_rt, &certs.ca_der(), Crypto::Ring)?;
            let connect = || {
                client_rt
                    .block_on(async { anyhow::Ok(client.connect(target, "localhost")?.await?) })
            };
            let mut conn = connect()?;
            let rr = |conn: &quinn::Connection| {
                client_rt.block_on(measure(
                    request_response(conn, args.secs, args.concurrency),
                    1.0,
                    1.0,
                    None,
                ))
            };
            let quiet = rr(&conn)?.rate;
            baseline[s].push(quiet);
            for (k, kind) in Flood::ALL.into_iter().enumerate() {
                let before = steering(&running);
                let read_before = frames_read(&net, &running)?;
                let cpu_before = common::ThreadCpu::sample(SERVER_THREADS);
                let flooder = Flooder::start(&net, kind);
                std::thread::sleep(secs);
                let sent = flooder.stop()?;
                // Let the server finish what is queued before reading.
                std::thread::sleep(Duration::from_millis(200));
                let cpu = common::ThreadCpu::sample(SERVER_THREADS)
                    .since(&cpu_before)
                    .as_secs_f64();
                let read = frames_read(&net, &running)? - read_before;
                let xdp_handled = match (before, steering(&running)) {
                    (Some(b), Some(a)) => {
                        let d = a.since(&b);
                        // Dropped, or answered (Version Negotiation), in
                        // the program: never seen by the endpoint.
                        let handled = d.get(SteerReason::DropNotQuic)
                            + d.get(SteerReason::DropShortInitial)
                            + d.get(SteerReason::DropInitialRate)
                            + d.get(SteerReason::TxVersionNegotiation)
                            + d.get(SteerReason::DropUnknownCid);
                        let accounted = handled + d.get(SteerReason::Redirected);
                        anyhow::ensure!(
                            accounted >= sent,
                            "XDP verdicts account for {accounted} of {sent} frames: {d}"
                        );
                        handled as f64 / sent as f64
                    }
                    _ => f64::NAN,
                };
                let flooder = Flooder::start(&net, kind);
                let during = rr(&conn);
                flooder.stop()?;
                // A flood may starve the client's connection until it times
                // out: no request completed then, and the next measurement
                // needs a new connection.
                let during = match during {
                    Ok(sample) => sample.rate,
                    Err(e) => {
                        eprintln!("round {round}: connection lost during the flood: {e}");
                        conn = connect()?;
                        0.0
                    }
                };
                let sample = FloodSample {
                    flood_rate: sent as f64 / args.secs,
                    cpu_us_per_frame: cpu * 1e6 / sent as f64,
                    read_fraction: read as f64 / sent as f64,
                    // Nothing to divide by where the program dropped the flood.
                    cpu_us_per_frame_read: if read * 100 < sent {
                        f64::NAN
                    } else {
                        cpu * 1e6 / read as f64
                    },
                    rr_during: during,
                    xdp_handled,
                };
                eprintln!(
                    "round {round}: {:<44} {:<28} {:>7.0} frames/s, {:.3} us CPU/frame ({:.2} read, {:.3} us each), rr {:>6.0} req/s during (quiet {quiet:.0}), handled in XDP {:.2}",
                    server_name((server, rate)),
                    kind.name(),
                    sample.flood_rate,
                    sample.cpu_us_per_frame,
                    sample.read_fraction,
                    sample.cpu_us_per_frame_read,
                    sample.rr_during,
                    sample.xdp_handled
                );
                results[s][k].push(sample);
            }
            conn.close(0u32.into(), b"");
            client_rt.block_on(client.wait_idle());
            stop(&net, &server_rt, running)?;
        }
    }

    println!(
        "Floods from spoofed sources, median of {} rounds (min-max); rr = 100 B request/response, {} in flight\n",
        args.rounds, args.concurrency
    );
    println!(
        "| flood | server | flood frames/s | server CPU us/frame | CPU vs quinn | read by the server | CPU us/frame read | rr during flood | vs quinn | rr without flood | handled in XDP (dropped or answered) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let med = |v: Vec<f64>| common::median(v);
    for (k, kind) in Flood::ALL.into_iter().enumerate() {
        let field = |s: usize, f: fn(&FloodSample) -> f64| -> Vec<f64> {
            results[s][k].iter().map(f).collect()
        };
        let quinn = SERVERS.len() - 1;
        for (s, server) in SERVERS.into_iter().enumerate() {
            println!(
                "| {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.3} | {} | {:.2} | {:.0} | {:.2} |",
                kind.name(),
                server_name(server),
                med(field(s, |x| x.flood_rate)),
                common::spread(&field(s, |x| x.cpu_us_per_frame), 3),
                med(field(s, |x| x.cpu_us_per_frame)) / med(field(quinn, |x| x.cpu_us_per_frame)),
                med(field(s, |x| x.read_fraction)),
                med(field(s, |x| x.cpu_us_per_frame_read)),
                common::spread(&field(s, |x| x.rr_during), 0),
                med(field(s, |x| x.rr_during)) / med(field(quinn, |x| x.rr_during)),
                med(baseline[s].clone()),
                med(field(s, |x| x.xdp_handled)),
            );
        }
    }
    Ok(())
}
