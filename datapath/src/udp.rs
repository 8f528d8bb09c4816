//! A kernel UDP socket as a datapath queue, through quinn-udp: batched
//! recvmmsg/sendmmsg, GRO and GSO where the kernel has them, ECN and the
//! destination address of each datagram (IP_PKTINFO).
//!
//! Serves as the whole datapath in fallback mode, and in XDP mode as the
//! socket that reserves the port and catches what steering missed.

use std::{
    io::{self, IoSliceMut},
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
};

use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    counters::QueueCounters,
    error::{Error, Result},
    io::{PacketIo, QueueKind, RxMeta, segments},
    source_policy::{SourcePolicy, SourceVerdict},
};

/// Large enough for a full GRO batch.
const RECV_BUF_LEN: usize = 64 * 1024;
const SOCKET_BUFFER_BYTES: usize = 8 << 20;
/// UDP payload that always fits a 1500-byte MTU over IPv6 (the kernel
/// fragments nothing: DF is set, so bigger sends fail with EMSGSIZE).
const IP_UDP_V6_OVERHEAD: usize = 48;
const IP_UDP_V4_OVERHEAD: usize = 28;
/// Largest UDP payload of one message (65535 less the IPv6/UDP headers).
const MAX_GSO_BYTES: usize = 65_535 - IP_UDP_V6_OVERHEAD;

/// A kernel UDP socket as a datapath queue.
pub struct UdpQueue {
    socket: UdpSocket,
    state: UdpSocketState,
    kind: QueueKind,
    /// The socket is AF_INET6: IPv4 peers need v4-mapped addresses.
    dual_stack: bool,
    local: SocketAddr,
    mtu: usize,
    counters: Arc<QueueCounters>,
    /// False for a send-only handle (see `PacketIo::send_handle`).
    receives: bool,
    bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    /// None when the policy admits every source (the common case: no
    /// lookup per datagram).
    policy: Option<Arc<SourcePolicy>>,
    /// Where datagrams are also written (pcap), if asked.
    capture: Option<Arc<crate::capture::Capture>>,
}

impl UdpQueue {
    /// Binds `addr` (`[::]` binds IPv4 and IPv6 alike). `mtu` bounds the
    /// datagrams `send` accepts.
    pub fn bind(addr: SocketAddr, mtu: u32) -> Result<Self> {
        Self::bind_as(addr, mtu, false)
    }

    /// The port-reserving socket of XDP mode.
    pub(crate) fn bind_reservation(addr: SocketAddr, mtu: u32) -> Result<Self> {
        Self::bind_as(addr, mtu, true)
    }

    fn bind_as(addr: SocketAddr, mtu: u32, reservation: bool) -> Result<Self> {
        let bind_err = |source: io::Error| match source.kind() {
            io::ErrorKind::AddrInUse => Error::AddrInUse { addr },
            _ => Error::Bind { addr, source },
        };
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(bind_err)?;
        let dual_stack = addr.is_ipv6();
        if let SocketAddr::V6(v6) = addr {
            socket
                .set_only_v6(!v6.ip().is_unspecified())
                .map_err(bind_err)?;
        }
        socket.bind(&addr.into()).map_err(bind_err)?;
        socket.set_nonblocking(true)?;
        let socket: UdpSocket = socket.into();
        let state = UdpSocketState::new((&socket).into())?;
        grow_socket_buffers(&socket, SOCKET_BUFFER_BYTES);
        let local = canonical(socket.local_addr()?);
        let kind = if reservation {
            QueueKind::SteeringMiss { local }
        } else {
            QueueKind::Udp { local }
        };
        Ok(Self {
            socket,
            state,
            kind,
            dual_stack,
            local,
            mtu: mtu as usize,
            counters: Arc::default(),
            receives: true,
            bufs: vec![vec![0; RECV_BUF_LEN]; BATCH_SIZE],
            metas: vec![RecvMeta::default(); BATCH_SIZE],
            policy: None,
            capture: None,
        })
    }

    /// Writes every datagram received and sent to `capture` too.
    pub fn with_capture(mut self, capture: Option<Arc<crate::capture::Capture>>) -> Self {
        self.capture = capture;
        self
    }

    /// Drops (and counts in `rx_source_denied`) datagrams from sources
    /// `policy` refuses, as the XDP program does for steered ones.
    pub fn with_source_policy(mut self, policy: &SourcePolicy) -> Self {
        self.policy = (!policy.is_empty()).then(|| Arc::new(policy.clone()));
        self
    }

    /// The same socket (a duplicate descriptor) for sending from another
    /// thread; it shares this queue's counters and receives nothing.
    fn try_clone_for_send(&self) -> io::Result<Self> {
        let socket = self.socket.try_clone()?;
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Self {
            socket,
            state,
            kind: self.kind.clone(),
            dual_stack: self.dual_stack,
            local: self.local,
            mtu: self.mtu,
            counters: self.counters.clone(),
            receives: false,
            bufs: Vec::new(),
            metas: Vec::new(),
            policy: None,
            capture: self.capture.clone(),
        })
    }

    /// The bound address (IPv4 as plain IPv4, never v4-mapped).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Sets both socket buffers to `bytes`. Plain SO_RCVBUF is capped at
/// net.core.rmem_max (about 208 KiB by default: a burst of 150 full-size
/// datagrams); with CAP_NET_ADMIN the FORCE variants lift the cap.
pub(crate) fn grow_socket_buffers(socket: &impl AsRawFd, bytes: usize) {
    let value = bytes as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let set = |opt| {
            // SAFETY: an int option on a valid socket.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&value as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 {
            // Unprivileged: take what the cap allows.
            set(plain);
        }
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl PacketIo for UdpQueue {
    fn recv(&mut self, on_datagram: &mut dyn FnMut(&RxMeta, &[u8])) -> io::Result<usize> {
        if !self.receives {
            return Ok(0);
        }
        // On the stack: this runs for every receive batch.
        let mut bufs = self.bufs.iter_mut();
        let mut slices: [IoSliceMut<'_>; BATCH_SIZE] =
            std::array::from_fn(|_| IoSliceMut::new(bufs.next().expect("BATCH_SIZE buffers")));
        let n = match self
            .state
            .recv((&self.socket).into(), &mut slices, &mut self.metas)
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        let miss = matches!(self.kind, QueueKind::SteeringMiss { .. });
        let mut delivered = 0;
        for (meta, buf) in self.metas[..n].iter().zip(&self.bufs) {
            let rx = RxMeta {
                remote: canonical(meta.addr),
                local: SocketAddr::new(
                    meta.dst_ip.map_or(self.local.ip(), |ip| ip.to_canonical()),
                    self.local.port(),
                ),
                ecn: meta.ecn,
            };
            if let Some(policy) = &self.policy {
                if policy.verdict(rx.remote.ip()) != SourceVerdict::Allowed {
                    QueueCounters::add(&self.counters.rx_source_denied, 1);
                    continue;
                }
            }
            // GRO hands several datagrams in one buffer, `stride` apart.
            for datagram in buf[..meta.len].chunks(meta.stride.max(1)) {
                QueueCounters::add(&self.counters.rx_packets, 1);
                QueueCounters::add(&self.counters.rx_bytes, datagram.len() as u64);
                if miss {
                    QueueCounters::add(&self.counters.steering_misses, 1);
                }
                if let Some(capture) = &self.capture {
                    capture.datagram(rx.remote, rx.local, rx.ecn, datagram);
                }
                on_datagram(&rx, datagram);
                delivered += 1;
            }
        }
        // A message with no bytes delivers nothing but was taken.
        Ok(delivered.max(n))
    }

    fn send(&mut self, t: &Transmit<'_>) -> io::Result<()> {
        let largest = t
            .segment_size
            .unwrap_or(t.contents.len())
            .min(t.contents.len());
        if largest > self.max_datagram_size(&t.destination) {
            QueueCounters::add(&self.counters.tx_too_big, 1);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{largest}-byte datagram exceeds the path MTU"),
            ));
        }
        let destination = match (self.dual_stack, t.destination) {
            (true, SocketAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            (_, d) => d,
        };
        let count = segments(t).count() as u64;
        let result = if count as usize > self.state.max_gso_segments() && t.segment_size.is_some() {
            // No GSO here: one datagram at a time.
            segments(t).try_for_each(|contents| {
                let one = Transmit {
                    destination,
                    contents,
                    segment_size: None,
                    ..*t
                };
                self.state.try_send((&self.socket).into(), &one)
            })
        } else {
            let t = Transmit { destination, ..*t };
            self.state.try_send((&self.socket).into(), &t)
        };
        match result {
            Ok(()) => {
                QueueCounters::add(&self.counters.tx_packets, count);
                QueueCounters::add(&self.counters.tx_bytes, t.contents.len() as u64);
                if let Some(capture) = &self.capture {
                    // The kernel picks the source address when none is set.
                    let src =
                        SocketAddr::new(t.src_ip.unwrap_or(self.local.ip()), self.local.port());
                    for segment in segments(t) {
                        capture.datagram(src, t.destination, t.ecn, segment);
                    }
                }
                Ok(())
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    QueueCounters::add(&self.counters.tx_ring_full, 1);
                } else if e.raw_os_error() == Some(libc::EMSGSIZE) {
                    QueueCounters::add(&self.counters.tx_too_big, 1);
                }
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // sendmsg hands datagrams to the kernel at once.
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    fn max_datagram_size(&self, destination: &SocketAddr) -> usize {
        let overhead = if destination.ip().to_canonical().is_ipv4() {
            IP_UDP_V4_OVERHEAD
        } else {
            IP_UDP_V6_OVERHEAD
        };
        self.mtu.saturating_sub(overhead)
    }

    fn max_segments(&self) -> usize {
        // One GSO send is one UDP message: all segments must fit 64 KiB.
        let largest = self.mtu.saturating_sub(IP_UDP_V4_OVERHEAD).max(1);
        self.state
            .max_gso_segments()
            .min(MAX_GSO_BYTES / largest)
            .max(1)
    }

    fn kind(&self) -> &QueueKind {
        &self.kind
    }

    fn counters(&self) -> &Arc<QueueCounters> {
        &self.counters
    }

    fn receives(&self) -> bool {
        self.receives
    }

    fn send_handle(&self) -> Option<Box<dyn PacketIo>> {
        match self.try_clone_for_send() {
            Ok(q) => Some(Box::new(q)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot duplicate the UDP socket");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmit(
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> Transmit<'_> {
        Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        }
    }

    fn recv_all(q: &mut UdpQueue, want: usize) -> Vec<(RxMeta, Vec<u8>)> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < want && std::time::Instant::now() < deadline {
            q.recv(&mut |m, d| got.push((*m, d.to_vec()))).unwrap();
        }
        got
    }

    #[test]
    fn loopback_round_trip_reports_addresses_and_splits_gso() {
        for (bind, peer) in [
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("[::]:0", "127.0.0.1:0"),
            ("[::1]:0", "[::1]:0"),
        ] {
            let mut q = UdpQueue::bind(bind.parse().unwrap(), 1500).unwrap();
            let port = q.local_addr().port();
            let client = UdpSocket::bind(peer).unwrap();
            let server = SocketAddr::new(client.local_addr().unwrap().ip(), port);
            client.send_to(b"ping", server).unwrap();
            let got = recv_all(&mut q, 1);
            assert_eq!(got.len(), 1, "{bind}");
            let (meta, data) = &got[0];
            assert_eq!(data, b"ping");
            assert_eq!(
                meta.remote,
                client.local_addr().unwrap(),
                "{bind}: canonical peer"
            );
            assert_eq!(meta.local, server, "{bind}: destination reported");

            let batch: Vec<u8> = (0..250u8).collect();
            q.send(&transmit(meta.remote, &batch, Some(100))).unwrap();
            let mut buf = [0u8; 300];
            let sizes: Vec<usize> = (0..3).map(|_| client.recv(&mut buf).unwrap()).collect();
            assert_eq!(sizes, [100, 100, 50], "{bind}");
            assert_eq!(q.counters().snapshot().tx_packets, 3);
        }
    }

    #[test]
    fn a_send_handle_sends_from_the_same_address_and_receives_nothing() {
        let mut q = UdpQueue::bind("127.0.0.1:0".parse().unwrap(), 1500).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"for the queue", q.local_addr()).unwrap();
        let mut handle = q.send_handle().unwrap();
        assert!(!handle.receives());
        assert_eq!(
            handle
                .recv(&mut |_, _| panic!("a send handle received"))
                .unwrap(),
            0
        );
        handle
            .send(&transmit(
                client.local_addr().unwrap(),
                b"from the handle",
                None,
            ))
            .unwrap();
        let mut buf = [0u8; 32];
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"from the handle"[..], q.local_addr()));
        assert_eq!(
            recv_all(&mut q, 1)[0].1,
            b"for the queue",
            "the queue still gets its datagrams"
        );
        assert_eq!(q.counters().snapshot().tx_packets, 1, "counters are shared");
    }

    #[test]
    fn port_in_use_is_a_clear_error() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = UdpQueue::bind(addr, 1500).err().unwrap();
        assert!(
            matches!(err, Error::AddrInUse { addr: a } if a == addr),
            "{err}"
        );
        assert!(err.to_string().contains("already in use"));
    }

    #[test]
    fn a_full_gso_batch_fits_one_udp_message() {
        let mut q = UdpQueue::bind("127.0.0.1:0".parse().unwrap(), 1500).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let size = q.max_datagram_size(&client.local_addr().unwrap());
        let batch = vec![7u8; size * q.max_segments()];
        q.send(&transmit(client.local_addr().unwrap(), &batch, Some(size)))
            .unwrap();
        let snapshot = q.counters().snapshot();
        assert_eq!(
            (snapshot.tx_packets, snapshot.tx_too_big),
            (q.max_segments() as u64, 0)
        );
    }

    #[test]
    fn oversized_datagrams_are_refused_and_counted() {
        let mut q = UdpQueue::bind("127.0.0.1:0".parse().unwrap(), 1500).unwrap();
        let big = vec![0u8; 1473];
        let err = q
            .send(&transmit("127.0.0.1:9".parse().unwrap(), &big, None))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(q.counters().snapshot().tx_too_big, 1);
        assert_eq!(q.max_datagram_size(&"127.0.0.1:9".parse().unwrap()), 1472);
    }
}
