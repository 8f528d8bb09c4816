//! Test hosts in network namespaces, for tests and benchmarks (feature
//! `testbed`): a client and a server namespace joined by a veth pair, and a
//! UDP echo load client.
//!
//! Everything created here is removed on drop, including after a panic;
//! namespaces left by a killed run are removed by the next one (their names
//! carry the creating process id). Traffic only ever goes between the two
//! namespaces.

use std::{
    io::{self, IoSliceMut},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};
use quinn_udp::{EcnCodepoint, RecvMeta, Transmit, UdpSocketState};

const PREFIX: &str = "qxt-";
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether tests that need root (namespaces, BPF) should run. Without
/// root they fail - a skipped test must never look like a passed one -
/// unless the caller opts out with QUIC_XDP_SKIP_PRIVILEGED=1.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("QUIC_XDP_SKIP_PRIVILEGED").is_some() {
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed test")
            .to_string();
        eprintln!("SKIPPED {test}: needs root (QUIC_XDP_SKIP_PRIVILEGED is set)");
        // cargo counts the test as passed: the log lets a runner (see
        // scripts/test.sh) report it as skipped instead.
        if let Some(log) = std::env::var_os("QUIC_XDP_SKIP_LOG") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                // One write per line: O_APPEND keeps concurrent tests'
                // lines whole.
                let _ = f.write_all(format!("{test}\n").as_bytes());
            }
        }
        return false;
    }
    panic!(
        "this test needs root (CAP_BPF, CAP_NET_ADMIN); set QUIC_XDP_SKIP_PRIVILEGED=1 to skip it"
    );
}

/// Runs `ip` with `args`; an error carries its stderr.
pub fn ip(args: &[&str]) -> io::Result<()> {
    run(Command::new("ip").args(args))
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` (removed again when dropped).
    pub fn create(name: &str) -> io::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args`.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace: sockets,
    /// interface lookups and XDP attachments it makes belong there.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            s.spawn(|| self.enter_then(f))
                .join()
                .expect("netns thread panicked")
        })
    }

    /// Like [`run`](Self::run), without waiting.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let name = self.name.clone();
        std::thread::spawn(move || Netns { name }.enter_then_forget(f))
    }

    fn enter_then<R>(&self, f: impl FnOnce() -> R) -> R {
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {}: {e}", self.name));
        f()
    }

    /// Enters without owning: the handle must not delete the namespace.
    fn enter_then_forget<R>(self, f: impl FnOnce() -> R) -> R {
        let me = std::mem::ManuallyDrop::new(self);
        me.enter_then(f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("testbed: could not remove namespace {}: {e}", self.name);
        }
    }
}

/// Removes namespaces of earlier runs whose process is gone.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// How `TestNet` sets up its link.
#[derive(Debug, Clone)]
pub struct TestNetConfig {
    /// Rx (and tx) queues of each veth end.
    pub queues: u32,
    /// MTU of both ends of the veth pair.
    pub mtu: u32,
    /// The client computes full UDP checksums (`false`: the default veth
    /// behaviour, partial checksums).
    pub client_tx_checksum_offload: bool,
}

impl Default for TestNetConfig {
    fn default() -> Self {
        Self {
            queues: 1,
            mtu: 1500,
            client_tx_checksum_offload: true,
        }
    }
}

/// Two namespaces and a veth pair: `client` (10.77.0.1, fd77::1) and
/// `server` (10.77.0.2, fd77::2).
#[derive(Debug)]
pub struct TestNet {
    /// The client's namespace (`veth-c`).
    pub client: Netns,
    /// The server's namespace (`veth-s`).
    pub server: Netns,
}

impl TestNet {
    /// The client's end of the veth pair.
    pub const CLIENT_IF: &'static str = "veth-c";
    /// The server's end of the veth pair.
    pub const SERVER_IF: &'static str = "veth-s";
    /// The client's IPv4 address.
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    /// The server's IPv4 address.
    pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    /// The client's IPv6 address.
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
    /// The server's IPv6 address.
    pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
    /// The client interface's MAC.
    pub const CLIENT_MAC: &'static str = "02:77:00:00:00:01";
    /// The server interface's MAC.
    pub const SERVER_MAC: &'static str = "02:77:00:00:00:02";

    /// Creates both namespaces and the veth pair between them.
    pub fn create(config: &TestNetConfig) -> io::Result<Self> {
        remove_stale_namespaces();
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let client = Netns::create(&format!("{id}-c"))?;
        let server = Netns::create(&format!("{id}-s"))?;
        let net = Self { client, server };
        net.wire_up(config)?;
        Ok(net)
    }

    fn wire_up(&self, config: &TestNetConfig) -> io::Result<()> {
        let queues = config.queues.to_string();
        let mtu = config.mtu.to_string();
        ip(&[
            "link",
            "add",
            Self::CLIENT_IF,
            "netns",
            self.client.name(),
            "address",
            Self::CLIENT_MAC,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "type",
            "veth",
            "peer",
            "name",
            Self::SERVER_IF,
            "netns",
            self.server.name(),
            "address",
            Self::SERVER_MAC,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
        ])?;
        for (ns, dev, v4, v6) in [
            (
                &self.client,
                Self::CLIENT_IF,
                Self::CLIENT_V4,
                Self::CLIENT_V6,
            ),
            (
                &self.server,
                Self::SERVER_IF,
                Self::SERVER_V4,
                Self::SERVER_V6,
            ),
        ] {
            ns.ip(&["link", "set", dev, "mtu", &mtu])?;
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        // While ARP/NDP resolves, a kernel holds only ~200 KB of datagrams
        // for the peer and silently drops the rest of a burst: pin each
        // side's address on the other so a load starts at full speed. (The
        // server's replies take their MACs from its kernel's table, as a
        // client's own ARP/NDP would have filled it; `forget_client` undoes
        // that to test resolution.)
        for (ns, dev, peers, mac) in [
            (
                &self.client,
                Self::CLIENT_IF,
                [Self::SERVER_V4.to_string(), Self::SERVER_V6.to_string()],
                Self::SERVER_MAC,
            ),
            (
                &self.server,
                Self::SERVER_IF,
                [Self::CLIENT_V4.to_string(), Self::CLIENT_V6.to_string()],
                Self::CLIENT_MAC,
            ),
        ] {
            for peer in &peers {
                ns.ip(&[
                    "neigh",
                    "replace",
                    peer,
                    "lladdr",
                    mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ])?;
            }
        }
        if !config.client_tx_checksum_offload {
            run(self
                .client
                .command("ethtool")
                .args(["-K", Self::CLIENT_IF, "tx", "off"]))?;
        }
        Ok(())
    }

    /// Removes what the server's kernel knows of the client's link-layer
    /// address: its replies must then resolve it (ARP/NDP).
    pub fn forget_client(&self) -> io::Result<()> {
        self.server
            .ip(&["neigh", "flush", "dev", Self::SERVER_IF, "nud", "all"])
    }

    /// Whether an XDP program is attached to the server's interface.
    pub fn server_xdp_attached(&self) -> bool {
        let out = self
            .server
            .command("ip")
            .args(["link", "show", Self::SERVER_IF])
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }

    /// The server's address and `port`, over IPv6 or IPv4.
    pub fn server_addr(&self, v6: bool, port: u16) -> SocketAddr {
        let ip = if v6 {
            IpAddr::V6(Self::SERVER_V6)
        } else {
            IpAddr::V4(Self::SERVER_V4)
        };
        SocketAddr::new(ip, port)
    }
}

/// A windowed UDP echo load: keeps up to `window` datagrams in flight,
/// each carrying its sequence number and a pattern derived from it, and
/// checks every echo.
#[derive(Debug, Clone)]
pub struct EchoLoad {
    /// The echo server to load.
    pub target: SocketAddr,
    /// Datagrams to send (at most).
    pub count: u64,
    /// Payload bytes per datagram (at least 8).
    pub size: usize,
    /// Datagrams in flight at once.
    pub window: usize,
    /// Stop sending after this long.
    pub duration: Option<Duration>,
    /// Give up on outstanding echoes after this long without progress.
    pub idle_timeout: Duration,
    /// Send in UDP GSO batches (one syscall for many datagrams).
    pub gso: bool,
    /// ECN codepoint to send with; each echo must come back with it.
    pub ecn: Option<EcnCodepoint>,
}

impl EchoLoad {
    /// 1000 datagrams of 64 bytes, 256 in flight, GSO, no ECN, giving up
    /// after 3 s without an echo.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            count: 1000,
            size: 64,
            window: 256,
            duration: None,
            idle_timeout: Duration::from_secs(3),
            gso: true,
            ecn: None,
        }
    }
}

/// What an echo load run saw.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct EchoReport {
    /// Datagrams sent.
    pub sent: u64,
    /// Echoes received and checked.
    pub received: u64,
    /// Echoes whose content did not match what was sent.
    pub corrupted: u64,
    /// Echoes of a sequence number already echoed, or never sent.
    pub unexpected: u64,
    /// ICMP port-unreachable answers: nothing served the port.
    pub refused: u64,
    /// Echoes whose ECN codepoint differs from the one sent.
    pub ecn_mismatches: u64,
    /// How long the run took.
    pub elapsed: Duration,
}

impl EchoReport {
    /// Datagrams sent and never echoed.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    /// Echo rate over the run.
    pub fn echoes_per_sec(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sequence numbers sent and not yet echoed: `first..first + len`, with a
/// flag per number. Bounded by the window plus what was lost.
#[derive(Default)]
struct Outstanding {
    first: u64,
    echoed: std::collections::VecDeque<bool>,
}

impl Outstanding {
    fn sent_up_to(&mut self, end: u64) {
        let len = (end - self.first) as usize;
        self.echoed.resize(len, false);
    }

    /// Marks `seq` echoed; false if it was never sent or already echoed.
    fn take(&mut self, seq: u64) -> bool {
        let Some(flag) = seq
            .checked_sub(self.first)
            .and_then(|i| self.echoed.get_mut(i as usize))
        else {
            return false;
        };
        if std::mem::replace(flag, true) {
            return false;
        }
        while self.echoed.front() == Some(&true) {
            self.echoed.pop_front();
            self.first += 1;
        }
        true
    }
}

fn fill_payload(seq: u64, buf: &mut [u8]) {
    buf[..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in buf[8..].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
}

/// Runs `load` from the calling thread's namespace.
pub fn run_echo_load(load: &EchoLoad) -> io::Result<EchoReport> {
    assert!(load.size >= 8, "payload carries an 8-byte sequence number");
    let bind: SocketAddr = if load.target.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(load.target)?;
    socket.set_nonblocking(true)?;
    let state = UdpSocketState::new((&socket).into())?;
    crate::udp::grow_socket_buffers(&socket, 16 << 20);
    // A GSO batch is one UDP send: it must fit 64 KiB.
    let gso = if load.gso {
        state.max_gso_segments().clamp(1, 64)
    } else {
        1
    };
    let gso = gso.min(60_000 / load.size).max(1);

    let window = load.window.max(1);
    let mut outstanding = Outstanding::default();
    let mut report = EchoReport::default();
    let mut batch = vec![0u8; gso * load.size];
    let mut expected = vec![0u8; load.size];
    let mut rx_bufs = vec![vec![0u8; 64 * 1024]; quinn_udp::BATCH_SIZE];
    let mut metas = vec![RecvMeta::default(); quinn_udp::BATCH_SIZE];
    let start = Instant::now();
    let mut last_progress = start;
    loop {
        let sending_over =
            report.sent >= load.count || load.duration.is_some_and(|d| start.elapsed() >= d);
        let in_flight = (report.sent - report.received) as usize;
        if !sending_over && in_flight < window {
            let n = (window - in_flight)
                .min(gso)
                .min((load.count - report.sent) as usize);
            for (i, chunk) in batch[..n * load.size].chunks_mut(load.size).enumerate() {
                fill_payload(report.sent + i as u64, chunk);
            }
            let t = Transmit {
                destination: load.target,
                ecn: load.ecn,
                contents: &batch[..n * load.size],
                segment_size: (n > 1).then_some(load.size),
                src_ip: None,
            };
            match state.try_send((&socket).into(), &t) {
                Ok(()) => {
                    report.sent += n as u64;
                    outstanding.sent_up_to(report.sent);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => report.refused += 1,
                Err(e) => return Err(e),
            }
        }
        let mut slices: Vec<IoSliceMut<'_>> =
            rx_bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        match state.recv((&socket).into(), &mut slices, &mut metas) {
            Ok(n) => {
                last_progress = Instant::now();
                for (meta, buf) in metas[..n].iter().zip(&rx_bufs) {
                    let segments = meta.len.div_ceil(meta.stride.max(1)) as u64;
                    if meta.ecn != load.ecn {
                        report.ecn_mismatches += segments;
                    }
                    for echo in buf[..meta.len].chunks(meta.stride.max(1)) {
                        let seq = echo
                            .get(..8)
                            .map(|s| u64::from_be_bytes(s.try_into().unwrap()));
                        match seq.filter(|&s| outstanding.take(s)) {
                            Some(seq) => {
                                report.received += 1;
                                fill_payload(seq, &mut expected);
                                if echo != &expected[..] {
                                    report.corrupted += 1;
                                }
                            }
                            None => report.unexpected += 1,
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                report.refused += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if sending_over && report.received >= report.sent {
                    break;
                }
                // Echoes stopped coming back: end the run, the report says
                // how many were lost.
                if last_progress.elapsed() >= load.idle_timeout {
                    break;
                }
                if in_flight >= window || sending_over {
                    wait_for(&socket, Duration::from_millis(5));
                }
            }
            Err(e) => return Err(e),
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

fn wait_for(socket: &UdpSocket, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as i32) };
}

/// A raw AF_PACKET socket on one interface: sends hand-made Ethernet frames
/// and captures what passes (both directions). Create it on a thread inside
/// the interface's namespace (see [`Netns::run`]).
#[derive(Debug)]
pub struct RawLink {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl RawLink {
    /// A raw socket on `interface` (in the calling thread's namespace).
    pub fn open(interface: &str) -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(interface)?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let all = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, all) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all as u16;
        addr.sll_ifindex = ifindex;
        // SAFETY: addr is a valid sockaddr_ll.
        let rc = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, ifindex })
    }

    /// Sends one Ethernet frame as is.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and addr are valid for the call.
        let n = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The next frame seen on the interface (either direction), waiting at
    /// most `timeout`.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) } <= 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 65536];
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(Some(buf))
    }
}
