//! quinn over AF_XDP: [`XdpUdpSocket`] implements quinn's
//! `AsyncUdpSocket`, so a quinn (or h3-quinn) client or server moves onto
//! the datapath by making its socket here and passing it to
//! `quinn::Endpoint::new_with_abstract_socket`.
//!
//! The socket owns a [`Datapath`]: the XDP program steers datagrams to its
//! address and port (a client's local port included: port 0 takes a free
//! one) into one AF_XDP socket per rx queue; what escapes steering, and
//! what must go out before the kernel has resolved the next hop, takes
//! the port's kernel socket. quinn's GSO batches are split into frames;
//! received datagrams are handed over one per buffer (no GRO).

use std::{
    collections::VecDeque,
    fmt,
    io::{self, IoSliceMut},
    net::SocketAddr,
    os::fd::{AsRawFd, BorrowedFd, RawFd},
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use quinn::{AsyncUdpSocket, UdpPoller, udp::RecvMeta};
use tokio::io::unix::AsyncFd;

use crate::{
    ActiveMode, Datapath, DatapathConfig, PacketIo, QueueKind, Result, RxMeta, Transmit,
    tx_room::{self, RoomWait},
};

/// A quinn socket on the AF_XDP datapath. Create it inside a tokio
/// runtime (readiness is tokio's).
pub struct XdpUdpSocket {
    /// Readiness of each queue's descriptor. Declared (so dropped) before
    /// the queues that own the descriptors.
    readiness: Vec<AsyncFd<QueueFd>>,
    /// Every queue, AF_XDP ones first, the kernel socket last.
    queues: Vec<Mutex<Box<dyn PacketIo>>>,
    /// Keeps the program attached while the queues live.
    datapath: Mutex<Datapath>,
    /// Datagrams received beyond the buffers quinn offered.
    overflow: Mutex<VecDeque<(RxMeta, Vec<u8>)>>,
    local: SocketAddr,
    max_segments: usize,
    /// The queue whose send last found no room (`NOT_BLOCKED` if none):
    /// what a sender told `WouldBlock` waits on.
    blocked_queue: AtomicUsize,
}

const NOT_BLOCKED: usize = usize::MAX;

struct QueueFd(RawFd);

impl AsRawFd for QueueFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl XdpUdpSocket {
    /// Opens the datapath `config` describes (its `listen` is this
    /// socket's local address; `mode` may allow kernel UDP too).
    pub fn open(config: &DatapathConfig) -> Result<Arc<Self>> {
        let mut datapath = Datapath::open(config)?;
        let local = datapath.local_addr();
        let queues = datapath.take_queues();
        let readiness = queues
            .iter()
            .map(|q| {
                // SAFETY: the queue owns the descriptor and outlives the
                // registration (`readiness` is dropped first).
                let fd = unsafe {
                    AsyncFd::register_with_interest(
                        QueueFd(q.raw_fd()),
                        tokio::io::Interest::READABLE,
                    )
                }?;
                Ok(fd)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let max_segments = queues.iter().map(|q| q.max_segments()).min().unwrap_or(1);
        Ok(Arc::new(Self {
            datapath: Mutex::new(datapath),
            queues: queues.into_iter().map(Mutex::new).collect(),
            readiness,
            overflow: Mutex::new(VecDeque::new()),
            local,
            max_segments,
            blocked_queue: AtomicUsize::new(NOT_BLOCKED),
        }))
    }

    /// The datapath in use (XDP details, or why it fell back).
    pub fn mode(&self) -> ActiveMode {
        lock(&self.datapath).mode().clone()
    }

    /// Counters per queue.
    pub fn counters(&self) -> Vec<(QueueKind, crate::counters::CounterSnapshot)> {
        self.queues
            .iter()
            .map(|q| {
                let q = lock(q);
                (q.kind().clone(), q.counters().snapshot())
            })
            .collect()
    }

    /// The steering program's verdict counts (XDP mode).
    pub fn steering_stats(&self) -> Option<crate::program::SteerStats> {
        lock(&self.datapath).steering_stats()
    }

    /// Sends on the first queue; a datagram it cannot address (next hop
    /// unresolved) leaves through the kernel socket. A queue that has no
    /// room is noted for `poll_writable`.
    fn send(&self, t: &Transmit<'_>) -> io::Result<()> {
        let kernel_queue = self.queues.len() - 1;
        let noted = |queue: usize| {
            move |e: &io::Error| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.blocked_queue.store(queue, Ordering::Release);
                }
            }
        };
        let mut first = lock(&self.queues[0]);
        // Copy mode: a batch is cheaper as one GSO send through the kernel
        // (see `DatapathConfig::batches_through_kernel`).
        if crate::io::is_batch(t) && first.batches_through_kernel() && kernel_queue > 0 {
            drop(first);
            let mut kernel = lock(&self.queues[kernel_queue]);
            if crate::io::segments(t).count() <= kernel.max_segments() {
                kernel.send(t).inspect_err(noted(kernel_queue))?;
                return kernel.flush();
            }
            drop(kernel);
            first = lock(&self.queues[0]);
        }
        let sent = match first.send(t) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Room comes back as the kernel completes what it sent.
                first.flush()?;
                first.send(t)
            }
            other => other,
        };
        match sent {
            Ok(()) => first.flush(),
            Err(e) if e.kind() == io::ErrorKind::HostUnreachable && kernel_queue > 0 => {
                drop(first);
                let mut kernel = lock(&self.queues[kernel_queue]);
                kernel.send(t).inspect_err(noted(kernel_queue))?;
                kernel.flush()
            }
            Err(e) => Err(e).inspect_err(noted(0)),
        }
    }

    /// One datagram into one of quinn's buffers (cut to its size: a
    /// datagram larger than quinn's buffer is not QUIC quinn would take).
    fn deliver(
        &self,
        rx: &RxMeta,
        data: &[u8],
        buf: &mut IoSliceMut<'_>,
        meta: &mut RecvMeta,
    ) -> usize {
        let len = data.len().min(buf.len());
        buf[..len].copy_from_slice(&data[..len]);
        *meta = RecvMeta {
            addr: self.as_socket_sees(rx.remote),
            len,
            stride: len,
            ecn: rx.ecn,
            dst_ip: Some(self.as_socket_sees(rx.local).ip()),
        };
        1
    }

    /// A dual-stack socket's view of an address: IPv4 as v4-mapped IPv6,
    /// as the kernel reports it (quinn compares peers' addresses in the
    /// socket's family).
    fn as_socket_sees(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.local.is_ipv6() => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            other => other,
        }
    }

    /// Moves waiting datagrams into quinn's buffers: how many it
    /// delivered, and how many frames it took from the queues (junk
    /// included: a queue that gave frames may have more).
    fn fill(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<(usize, usize)> {
        let mut n = 0;
        let mut taken = 0;
        let mut overflow = lock(&self.overflow);
        while n < bufs.len() {
            let Some((rx, data)) = overflow.pop_front() else {
                break;
            };
            n += self.deliver(&rx, &data, &mut bufs[n], &mut meta[n]);
        }
        for queue in &self.queues {
            if n == bufs.len() {
                break;
            }
            let mut queue = lock(queue);
            let (bufs, meta) = (&mut *bufs, &mut *meta);
            taken += queue.recv(&mut |rx, data| {
                if n < bufs.len() {
                    n += self.deliver(rx, data, &mut bufs[n], &mut meta[n]);
                } else {
                    overflow.push_back((*rx, data.to_vec()));
                }
            })?;
        }
        Ok((n, taken))
    }
}

impl fmt::Debug for XdpUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpUdpSocket")
            .field("local", &self.local)
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for XdpUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable {
            socket: self,
            room: RoomWait::new(tx_room::BACKSTOP),
        })
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> io::Result<()> {
        match self.send(transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            // As quinn-udp does: a datagram that cannot go (too big for the
            // path, no route) is lost, not the connection; the counters
            // say why.
            Err(e) => {
                tracing::debug!(error = %e, destination = %transmit.destination, "datagram dropped");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let (n, taken) = self.fill(bufs, meta)?;
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            if taken > 0 {
                // Only junk this time; more may wait behind it.
                continue;
            }
            // Nothing waiting: clear stale readiness and look again, or
            // register for the next datagram on every queue.
            let mut cleared = false;
            for fd in &self.readiness {
                if let Poll::Ready(guard) = fd.poll_read_ready(cx) {
                    guard?.clear_ready();
                    cleared = true;
                }
            }
            if !cleared {
                return Poll::Pending;
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_transmit_segments(&self) -> usize {
        self.max_segments
    }

    fn may_fragment(&self) -> bool {
        // Frames are built with DF set (IPv4) and never fragmented.
        false
    }
}

/// quinn asks before each send, and again after `WouldBlock`: a sender
/// then waits for room on the queue that had none (see `tx_room`).
#[derive(Debug)]
struct Writable {
    socket: Arc<XdpUdpSocket>,
    room: RoomWait,
}

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Self { socket, room } = self.get_mut();
        let queue = socket.blocked_queue.load(Ordering::Acquire);
        if queue == NOT_BLOCKED {
            return Poll::Ready(Ok(()));
        }
        // The queue's descriptor, readable or not (readiness has it).
        let fd = socket.readiness[queue].get_ref().0;
        // SAFETY: the queue owns the descriptor and outlives this call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let flush = || {
            let mut q = lock(&socket.queues[queue]);
            q.flush()?;
            Ok(q.tx_blocked())
        };
        let ready = std::task::ready!(room.poll(cx, fd, flush));
        // Room again; a sender that finds none notes it anew.
        let _ = socket.blocked_queue.compare_exchange(
            queue,
            NOT_BLOCKED,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        Poll::Ready(ready)
    }
}
