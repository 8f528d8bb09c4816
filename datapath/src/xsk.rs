//! An AF_XDP socket on one rx queue, as a datapath queue.
//!
//! Frame ownership is kept simple enough to prove nothing leaks. The UMEM
//! holds `2 * ring_size` frames, split once at start:
//! - RX frames cycle fill ring -> rx ring -> (decoded) -> fill ring. There
//!   are exactly as many as the fill ring has slots, so refilling always
//!   fits; anything the kernel has not taken yet waits in `pending_fill`.
//! - TX frames cycle free list -> tx ring -> completion ring -> free list.
//!
//! [`XskQueue::frame_accounting`] exposes the counts; the invariant is
//! `rx_in_kernel + pending_fill == rx_frames` and
//! `tx_free + tx_in_flight == tx_frames`.

use std::{
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::{Duration, Instant},
};

use smoltcp::wire::EthernetAddress;
use xsk_rs::{
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
};

use crate::{
    counters::QueueCounters,
    io::{PacketIo, QueueKind, RxMeta, Transmit, segments},
    route::KernelNeighbors,
    wire::{self, ChecksumPolicy, DecodeError, FrameRoute, MAX_HEADER_LEN},
};

const FRAME_SIZE: u32 = 4096;
/// What the kernel reserves at the head of each frame (XDP_PACKET_HEADROOM).
const XDP_HEADROOM: u32 = 256;
/// The longest frame a socket can receive: longer ones must not be
/// steered (see MAX_FRAME_LEN in the XDP program).
pub const MAX_FRAME_LEN: u32 = FRAME_SIZE - XDP_HEADROOM;
const BATCH: usize = 64;
/// Datagrams per `send` batch: a GSO batch becomes this many frames.
const MAX_SEGMENTS: usize = 32;
const KERNEL_STATS_EVERY: Duration = Duration::from_millis(100);

/// Whether to ask the driver for zero-copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroCopy {
    /// Zero-copy if the driver offers it, copy mode otherwise.
    #[default]
    Auto,
    /// Zero-copy or fail.
    Require,
    /// Copy mode only.
    Disable,
}

/// Settings shared by the sockets of one interface.
#[derive(Debug, Clone)]
pub struct XskSettings {
    /// The interface name.
    pub interface: String,
    /// The interface index.
    pub ifindex: u32,
    /// The interface's MAC address: the source of everything we send.
    pub mac: EthernetAddress,
    /// The interface MTU: bounds the datagrams `send` accepts.
    pub mtu: u32,
    /// Slots per ring; the UMEM gets twice as many frames.
    pub ring_size: u32,
    /// Whether to ask the driver for zero-copy.
    pub zero_copy: ZeroCopy,
    /// How much of the UDP checksum to verify on receive.
    pub checksum: ChecksumPolicy,
    /// The listener's port: the source port of everything we send.
    pub port: u16,
    /// Answer from this address when a transmit names none.
    pub default_src: Option<IpAddr>,
    /// Where received and sent frames are also written (pcap), if asked.
    pub capture: Option<Arc<crate::capture::Capture>>,
    /// Copy mode: batches go through the kernel socket (see
    /// `DatapathConfig::batches_through_kernel`).
    pub batches_through_kernel: bool,
}

/// Where each frame of the UMEM is, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameAccounting {
    /// Frames set aside for receiving.
    pub rx_frames: usize,
    /// RX frames the kernel holds (fill or rx ring).
    pub rx_in_kernel: usize,
    /// RX frames waiting for room on the fill ring.
    pub pending_fill: usize,
    /// Frames set aside for sending.
    pub tx_frames: usize,
    /// TX frames on the free list.
    pub tx_free: usize,
    /// TX frames on the tx or completion ring.
    pub tx_in_flight: usize,
}

impl FrameAccounting {
    /// Whether every frame is accounted for, RX and TX alike.
    pub fn is_balanced(&self) -> bool {
        self.rx_in_kernel + self.pending_fill == self.rx_frames
            && self.tx_free + self.tx_in_flight == self.tx_frames
    }
}

/// An AF_XDP socket bound to one rx queue, with its own UMEM.
pub struct XskQueue {
    kind: QueueKind,
    umem: Umem,
    rx: RxQueue,
    tx: TxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Scratch for ring transfers.
    batch: Vec<FrameDesc>,
    pending_fill: Vec<FrameDesc>,
    tx_free: Vec<FrameDesc>,
    rx_frames: usize,
    tx_frames: usize,
    rx_in_kernel: usize,
    tx_in_flight: usize,
    tx_unkicked: bool,
    frame_capacity: usize,
    settings: XskSettings,
    /// Where replies go: the kernel's routes and neighbours.
    neighbors: KernelNeighbors,
    counters: Arc<QueueCounters>,
    stats_refreshed: Instant,
}

// SAFETY: the queue is driven by one thread at a time; xsk-rs rings and the
// UMEM handle are Send, and the raw frame descriptors are plain data.
unsafe impl Send for XskQueue {}

impl XskQueue {
    /// Creates the UMEM and socket on `queue` and primes the fill ring.
    /// With `ZeroCopy::Auto` a refused zero-copy bind is retried in copy
    /// mode (on a fresh UMEM, since the refused bind consumed its rings).
    pub fn open(settings: &XskSettings, queue: u32) -> Result<Self, String> {
        let attempts: &[bool] = match settings.zero_copy {
            ZeroCopy::Auto => &[true, false],
            ZeroCopy::Require => &[true],
            ZeroCopy::Disable => &[false],
        };
        let mut refusals = Vec::new();
        for &zero_copy in attempts {
            match Self::open_once(settings, queue, zero_copy) {
                Ok(q) => {
                    if !refusals.is_empty() {
                        tracing::info!(
                            interface = settings.interface,
                            queue,
                            refused = refusals.join("; "),
                            "AF_XDP socket in copy mode"
                        );
                    }
                    return Ok(q);
                }
                Err(e) => refusals.push(format!(
                    "{}: {e}",
                    if zero_copy { "zero-copy" } else { "copy mode" }
                )),
            }
        }
        let mut reason = refusals.join("; ");
        if settings.zero_copy == ZeroCopy::Require {
            reason.push_str(
                " (zero-copy was required; where the driver does not offer it, ZeroCopy::Auto uses copy mode)",
            );
        }
        Err(reason)
    }

    fn open_once(settings: &XskSettings, queue: u32, zero_copy: bool) -> Result<Self, String> {
        let ring = QueueSize::new(settings.ring_size).map_err(|e| format!("ring size: {e}"))?;
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).expect("valid frame size"))
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| format!("UMEM config: {e}"))?;
        let frame_capacity = umem_config.mtu() as usize;
        if frame_capacity < MAX_FRAME_LEN as usize {
            return Err(format!(
                "UMEM frames hold {frame_capacity} bytes, the XDP program steers up to {MAX_FRAME_LEN}"
            ));
        }
        let frames = NonZeroU32::new(settings.ring_size * 2).expect("non-zero");
        let (umem, mut descs) = Umem::new(umem_config, frames, false)
            .map_err(|e| format!("UMEM: {}", crate::error::chain(&e)))?;

        let mode = if zero_copy {
            BindFlags::XDP_ZEROCOPY
        } else {
            BindFlags::XDP_COPY
        };
        let socket_config = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            // We load our own program (aya); libxdp must not.
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(mode | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let iface: Interface = settings
            .interface
            .parse()
            .map_err(|_| "interface name".to_string())?;
        // SAFETY: the UMEM outlives the socket (both are owned by the queue)
        // and its frames are handed out through the rings only.
        let (tx, rx, fill_comp) = unsafe { Socket::new(socket_config, &umem, &iface, queue) }
            .map_err(|e| crate::error::chain(&e))?;
        let (mut fill, comp) = fill_comp.ok_or("the UMEM's fill and completion rings are taken")?;

        let rx_frames = settings.ring_size as usize;
        let tx_free = descs.split_off(rx_frames);
        // SAFETY: these frames belong to this UMEM and nothing else uses them.
        let primed = unsafe { fill.produce(&descs) };
        if primed != descs.len() {
            return Err(format!("fill ring took {primed} of {} frames", descs.len()));
        }
        let tx_frames = tx_free.len();
        let mut q = Self {
            kind: QueueKind::Xsk {
                interface: settings.interface.clone(),
                queue,
                zero_copy,
            },
            umem,
            rx,
            tx,
            fill,
            comp,
            batch: vec![FrameDesc::default(); BATCH],
            pending_fill: Vec::with_capacity(rx_frames),
            tx_free,
            rx_frames,
            tx_frames,
            rx_in_kernel: rx_frames,
            tx_in_flight: 0,
            tx_unkicked: false,
            frame_capacity,
            settings: settings.clone(),
            neighbors: KernelNeighbors::new(settings.ifindex)
                .map_err(|e| format!("netlink route socket: {e}"))?,
            counters: Arc::default(),
            stats_refreshed: Instant::now(),
        };
        q.wake_fill();
        Ok(q)
    }

    /// The rx queue the socket is bound to.
    pub fn queue_id(&self) -> u32 {
        match self.kind {
            QueueKind::Xsk { queue, .. } => queue,
            _ => unreachable!(),
        }
    }

    /// The fd to put in the XSKMAP.
    pub fn socket_fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Where each UMEM frame is now.
    pub fn frame_accounting(&self) -> FrameAccounting {
        FrameAccounting {
            rx_frames: self.rx_frames,
            rx_in_kernel: self.rx_in_kernel,
            pending_fill: self.pending_fill.len(),
            tx_frames: self.tx_frames,
            tx_free: self.tx_free.len(),
            tx_in_flight: self.tx_in_flight,
        }
    }

    /// Returns received frames to the fill ring, as many as it has room for.
    fn refill(&mut self) {
        if self.pending_fill.is_empty() {
            return;
        }
        // produce() is all-or-nothing: never offer more than the free slots.
        let room = self.fill.nb_free(self.pending_fill.len() as u32) as usize;
        let n = room.min(self.pending_fill.len());
        if n == 0 {
            return;
        }
        // SAFETY: these frames came off our rx ring and are no longer read.
        let produced = unsafe { self.fill.produce(&self.pending_fill[..n]) };
        self.pending_fill.drain(..produced);
        self.rx_in_kernel += produced;
        self.wake_fill();
    }

    fn wake_fill(&mut self) {
        if self.fill.needs_wakeup() {
            // A poll(2) with zero timeout: tells the driver to refill.
            let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
        }
    }

    fn reclaim_completions(&mut self) {
        loop {
            // SAFETY: completed frames are ours again.
            let n = unsafe { self.comp.consume(&mut self.batch) };
            if n == 0 {
                return;
            }
            self.tx_free.extend_from_slice(&self.batch[..n]);
            self.tx_in_flight -= n;
        }
    }

    /// Tells the kernel to transmit the tx ring. In copy mode each
    /// sendto(2) sends at most 32 descriptors and returns EAGAIN while
    /// more remain, so this keeps kicking until the ring is empty, the
    /// kernel reports itself busy, or a kick makes no progress. (xsk-rs's
    /// `wakeup` hides EAGAIN, so the call is made here.)
    fn kick_tx(&mut self) {
        if !self.tx_unkicked {
            return;
        }
        self.tx_unkicked = false;
        // Bound with XDP_USE_NEED_WAKEUP: a driver that drains the ring by
        // itself (zero-copy, busy NAPI) does not ask.
        if !self.tx.needs_wakeup() {
            return;
        }
        let ring = self.settings.ring_size;
        let mut queued = ring - self.tx.nb_free_exact();
        // Each useful kick sends at least one frame: never more kicks than
        // frames, plus one to see the ring empty.
        let kicks = queued + 1;
        for _ in 0..kicks {
            // SAFETY: a zero-length sendto on our own AF_XDP socket.
            let rc = unsafe {
                libc::sendto(
                    self.tx.fd().as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            QueueCounters::add(&self.counters.tx_kicks, 1);
            let errno = (rc < 0).then(io::Error::last_os_error);
            let left = ring - self.tx.nb_free_exact();
            match errno.as_ref().and_then(io::Error::raw_os_error) {
                None if left == 0 => return,
                // Copy mode stopped at its per-call budget: go on.
                None | Some(libc::EAGAIN) if left < queued => queued = left,
                Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS) | None => {
                    QueueCounters::add(&self.counters.tx_kick_busy, 1);
                    // Kick again at the next flush.
                    self.tx_unkicked = true;
                    return;
                }
                Some(libc::ENETDOWN) => return,
                Some(_) => {
                    tracing::debug!(error = %errno.expect("set"), "AF_XDP tx kick");
                    return;
                }
            }
        }
    }

    /// Whether `count` frames and tx ring slots are free.
    fn tx_room(&mut self, count: usize) -> bool {
        self.tx_free.len() >= count && self.tx.nb_free(count as u32) as usize >= count
    }

    /// Copies the kernel's drop counters into ours.
    pub fn refresh_kernel_stats(&mut self) {
        self.stats_refreshed = Instant::now();
        let Ok(s) = self.rx.fd().xdp_statistics() else {
            return;
        };
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.counters;
        c.rx_ring_full.store(s.rx_ring_full(), Relaxed);
        c.fill_ring_empty
            .store(s.rx_fill_ring_empty_descs(), Relaxed);
        c.rx_dropped.store(s.rx_dropped(), Relaxed);
        c.rx_invalid_descs.store(s.rx_invalid_descs(), Relaxed);
        c.tx_invalid_descs.store(s.tx_invalid_descs(), Relaxed);
    }

    fn route_to(&mut self, ip: IpAddr) -> Option<FrameRoute> {
        let dst_mac = self.neighbors.lookup(ip, Instant::now())?;
        Some(FrameRoute {
            src_mac: self.settings.mac,
            dst_mac,
            vlan: None,
        })
    }

    fn drop_with(
        counter: &std::sync::atomic::AtomicU64,
        kind: io::ErrorKind,
        msg: String,
    ) -> io::Error {
        QueueCounters::add(counter, 1);
        io::Error::new(kind, msg)
    }
}

impl PacketIo for XskQueue {
    fn recv(&mut self, on_datagram: &mut dyn FnMut(&RxMeta, &[u8])) -> io::Result<usize> {
        self.refill();
        // SAFETY: descriptors come back for frames of this UMEM.
        let n = unsafe { self.rx.consume(&mut self.batch) };
        self.rx_in_kernel -= n;
        for desc in &self.batch[..n] {
            // SAFETY: the kernel handed this frame over; it is not reused
            // until we put it back on the fill ring below.
            let frame = unsafe { self.umem.data(desc) };
            if let Some(capture) = &self.settings.capture {
                capture.frame(frame.contents());
            }
            match wire::parse_udp_frame(frame.contents(), self.settings.checksum) {
                Ok(d) => {
                    // Nothing of the frame (its MACs, its VLAN) decides
                    // where replies go: see `route`.
                    QueueCounters::add(&self.counters.rx_packets, 1);
                    QueueCounters::add(&self.counters.rx_bytes, d.payload.len() as u64);
                    let meta = RxMeta {
                        remote: d.src,
                        local: d.dst,
                        ecn: d.ecn,
                    };
                    on_datagram(&meta, d.payload);
                }
                Err(DecodeError::BadIpChecksum | DecodeError::BadUdpChecksum) => {
                    QueueCounters::add(&self.counters.rx_bad_checksum, 1);
                }
                Err(e) => {
                    tracing::trace!(error = %e, "dropping steered frame");
                    QueueCounters::add(&self.counters.rx_malformed, 1);
                }
            }
        }
        self.pending_fill.extend_from_slice(&self.batch[..n]);
        self.refill();
        // Frames taken, delivered or not: a batch of junk must not read as
        // an empty ring.
        Ok(n)
    }

    fn send(&mut self, t: &Transmit<'_>) -> io::Result<()> {
        let dst = SocketAddr::new(t.destination.ip().to_canonical(), t.destination.port());
        let family = |ip: &IpAddr| ip.is_ipv4() == dst.is_ipv4() && !ip.is_unspecified();
        let src_ip = t
            .src_ip
            .or(self.settings.default_src)
            .map(|ip| ip.to_canonical())
            .filter(family)
            // Bound to no address (a client, say): where the kernel would
            // send from.
            .or_else(|| {
                self.neighbors
                    .source_for(dst.ip(), Instant::now())
                    .filter(family)
            })
            // No route through this interface to take a source from: the
            // kernel socket can still send it.
            .ok_or_else(|| {
                Self::drop_with(
                    &self.counters.tx_no_neighbor,
                    io::ErrorKind::HostUnreachable,
                    format!(
                        "no source address towards {dst} through {}",
                        self.settings.interface
                    ),
                )
            })?;
        let src = SocketAddr::new(src_ip, self.settings.port);
        let max = self.max_datagram_size(&dst);
        if segments(t).any(|s| s.len() > max) {
            return Err(Self::drop_with(
                &self.counters.tx_too_big,
                io::ErrorKind::InvalidInput,
                format!("datagram exceeds the {max}-byte limit towards {dst}"),
            ));
        }
        let Some(route) = self.route_to(dst.ip()) else {
            return Err(Self::drop_with(
                &self.counters.tx_no_neighbor,
                io::ErrorKind::HostUnreachable,
                format!(
                    "no route through {} or no resolved next hop towards {}",
                    self.settings.interface,
                    dst.ip()
                ),
            ));
        };
        let count = segments(t).count();
        self.reclaim_completions();
        if !self.tx_room(count) {
            // Let the kernel drain the ring (copy mode completes frames
            // within the kick), then look again.
            self.tx_unkicked = true;
            self.kick_tx();
            self.reclaim_completions();
        }
        if !self.tx_room(count) {
            return Err(Self::drop_with(
                &self.counters.tx_ring_full,
                io::ErrorKind::WouldBlock,
                "AF_XDP tx ring full".into(),
            ));
        }
        let first = self.tx_free.len() - count;
        let mut header = [0u8; MAX_HEADER_LEN];
        for (desc, payload) in self.tx_free[first..].iter_mut().zip(segments(t)) {
            let len = wire::emit_udp_headers(&mut header, &route, src, dst, t.ecn, payload);
            // SAFETY: free TX frames are ours alone.
            let mut data = unsafe { self.umem.data_mut(desc) };
            let mut cursor = data.cursor();
            cursor.set_pos(0);
            cursor.write_all(&header[..len])?;
            cursor.write_all(payload)?;
            if let Some(capture) = &self.settings.capture {
                capture.frame_parts(&header[..len], payload);
            }
        }
        // SAFETY: the frames were written above; the ring has room for all.
        let produced = unsafe { self.tx.produce(&self.tx_free[first..]) };
        assert_eq!(produced, count, "tx ring accepted part of a checked batch");
        self.tx_free.truncate(first);
        self.tx_in_flight += count;
        self.tx_unkicked = true;
        QueueCounters::add(&self.counters.tx_packets, count as u64);
        QueueCounters::add(&self.counters.tx_bytes, t.contents.len() as u64);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.kick_tx();
        self.reclaim_completions();
        self.refill();
        let in_use = self.tx_in_flight + self.pending_fill.len();
        self.counters
            .frames_in_use
            .store(in_use as u64, std::sync::atomic::Ordering::Relaxed);
        if self.stats_refreshed.elapsed() >= KERNEL_STATS_EVERY {
            self.refresh_kernel_stats();
        }
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    fn max_datagram_size(&self, destination: &SocketAddr) -> usize {
        let ip_udp = if destination.ip().to_canonical().is_ipv4() {
            28
        } else {
            48
        };
        let by_mtu = (self.settings.mtu as usize).saturating_sub(ip_udp);
        let by_frame = self.frame_capacity.saturating_sub(MAX_HEADER_LEN);
        by_mtu.min(by_frame)
    }

    fn max_segments(&self) -> usize {
        MAX_SEGMENTS
    }

    fn batches_through_kernel(&self) -> bool {
        self.settings.batches_through_kernel
            && matches!(
                self.kind,
                QueueKind::Xsk {
                    zero_copy: false,
                    ..
                }
            )
    }

    fn kind(&self) -> &QueueKind {
        &self.kind
    }

    fn counters(&self) -> &Arc<QueueCounters> {
        &self.counters
    }

    fn frame_accounting(&self) -> Option<FrameAccounting> {
        Some(XskQueue::frame_accounting(self))
    }

    fn refresh_counters(&mut self) {
        self.refresh_kernel_stats();
    }

    fn tx_pending(&self) -> bool {
        // A kick the kernel left unfinished: in copy mode nothing else
        // transmits those frames.
        self.tx_unkicked
    }

    fn tx_blocked(&mut self) -> bool {
        self.tx_unkicked || !self.tx_room(1)
    }
}
