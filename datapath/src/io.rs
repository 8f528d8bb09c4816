//! The interface every datapath queue offers to the QUIC layer.

use std::{io, net::SocketAddr, os::fd::RawFd, sync::Arc, time::Duration};

pub use quinn_udp::{EcnCodepoint, Transmit};

use crate::{counters::QueueCounters, xsk::FrameAccounting};

/// What arrived with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxMeta {
    /// The peer's address (IPv4 peers as plain IPv4, never v4-mapped).
    pub remote: SocketAddr,
    /// The address the datagram was sent to: the QUIC layer must answer
    /// from it.
    pub local: SocketAddr,
    /// The ECN codepoint the datagram carried, if ECN-capable.
    pub ecn: Option<EcnCodepoint>,
}

/// Where a queue's datagrams come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueKind {
    /// An AF_XDP socket on one rx queue of an interface.
    Xsk {
        /// The interface.
        interface: String,
        /// The rx queue.
        queue: u32,
        /// Whether the socket runs in zero-copy mode.
        zero_copy: bool,
    },
    /// A kernel UDP socket serving the endpoint (fallback mode).
    Udp {
        /// The socket's bound address.
        local: SocketAddr,
    },
    /// The kernel UDP socket that reserves the port in XDP mode: what
    /// reaches it escaped steering (no socket on its rx queue, fragments,
    /// extension headers) and is still served.
    SteeringMiss {
        /// The socket's bound address.
        local: SocketAddr,
    },
}

/// One queue of datagrams in each direction, driven by one thread.
///
/// `recv` and `send` never block. Wait for readability on [`raw_fd`]
/// (poll(2), epoll or tokio's `AsyncFd`), then call `recv` until it returns
/// 0; after a batch of `send`s, call `flush` to hand them to the kernel.
///
/// [`raw_fd`]: PacketIo::raw_fd
pub trait PacketIo: Send {
    /// Delivers up to one batch of received datagrams to `on_datagram`;
    /// returns how many were taken from the queue, delivered or dropped
    /// (malformed, bad checksum): 0 means nothing was waiting, so a caller
    /// may wait for readability. The payload slice is only valid during
    /// the call.
    fn recv(&mut self, on_datagram: &mut dyn FnMut(&RxMeta, &[u8])) -> io::Result<usize>;

    /// Queues a datagram, or a batch of `segment_size`-byte datagrams, for
    /// transmission. All or nothing: `WouldBlock` means no room right now
    /// (flush and retry); any other error means the datagram was dropped
    /// (and counted): no route to the peer, too big for the path.
    fn send(&mut self, transmit: &Transmit<'_>) -> io::Result<()>;

    /// Hands queued datagrams to the kernel and reclaims sent buffers.
    fn flush(&mut self) -> io::Result<()>;

    /// Readable when `recv` has datagrams to deliver.
    fn raw_fd(&self) -> RawFd;

    /// The largest UDP payload `send` accepts towards `destination`.
    fn max_datagram_size(&self, destination: &SocketAddr) -> usize;

    /// How many datagrams one `send` may carry as a `segment_size` batch.
    fn max_segments(&self) -> usize;

    /// Whether a batch of datagrams (a `segment_size` transmit of two or
    /// more) is better sent through the group's kernel socket with GSO.
    fn batches_through_kernel(&self) -> bool {
        false
    }

    /// What kind of queue this is.
    fn kind(&self) -> &QueueKind;

    /// This queue's counters (shared, so other threads can read them).
    fn counters(&self) -> &Arc<QueueCounters>;

    /// Where the UMEM's frames are (AF_XDP queues only).
    fn frame_accounting(&self) -> Option<FrameAccounting> {
        None
    }

    /// Whether datagrams wait for the kernel after `flush` (it was busy):
    /// flush again soon rather than wait for readability.
    fn tx_pending(&self) -> bool {
        false
    }

    /// After `flush`: whether a send would still find no room (frames
    /// wait for the kernel, or none is free). Queues that cannot tell say
    /// false, and a sender learns it by trying.
    fn tx_blocked(&mut self) -> bool {
        self.tx_pending()
    }

    /// Brings counters kept by the kernel up to date.
    fn refresh_counters(&mut self) {}

    /// False for a send-only handle: never poll or `recv` it.
    fn receives(&self) -> bool {
        true
    }

    /// A send-only handle on the same socket, for another thread: lets
    /// every engine answer peers that reach us through the kernel socket.
    fn send_handle(&self) -> Option<Box<dyn PacketIo>> {
        None
    }
}

/// Blocks until one of `queues` is readable or `timeout` passes.
pub fn wait_readable(queues: &[Box<dyn PacketIo>], timeout: Duration) -> io::Result<()> {
    let mut fds: Vec<libc::pollfd> = queues
        .iter()
        .map(|q| libc::pollfd {
            fd: q.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: fds is a valid array of pollfd for the duration of the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Sends `t` on `queues[queue]`. A datagram that an AF_XDP queue cannot
/// address (no route through its interface, or the next hop not resolved
/// yet: `HostUnreachable`) leaves through the group's kernel socket
/// instead. The kernel holds it while it resolves the next hop; once the
/// neighbour is known, later datagrams take the AF_XDP path again. A batch
/// that the queue would rather not send (copy mode) goes through the
/// kernel socket with GSO.
pub fn send_or_through_kernel(
    queues: &mut [Box<dyn PacketIo>],
    queue: usize,
    t: &Transmit<'_>,
) -> io::Result<()> {
    let kernel = queues
        .iter()
        .position(|q| !matches!(q.kind(), QueueKind::Xsk { .. }))
        .filter(|&k| k != queue);
    if is_batch(t)
        && queues[queue].batches_through_kernel()
        && let Some(k) = kernel
        && segments(t).count() <= queues[k].max_segments()
    {
        return queues[k].send(t);
    }
    match queues[queue].send(t) {
        Err(e) if e.kind() == io::ErrorKind::HostUnreachable => match kernel {
            Some(k) => queues[k].send(t),
            None => Err(e),
        },
        other => other,
    }
}

/// Whether `t` stands for two or more datagrams (a GSO batch).
pub(crate) fn is_batch(t: &Transmit<'_>) -> bool {
    t.segment_size.is_some_and(|size| t.contents.len() > size)
}

/// `Transmit::contents` split into the datagrams it stands for.
pub(crate) fn segments<'a>(t: &Transmit<'a>) -> impl Iterator<Item = &'a [u8]> {
    let contents = t.contents;
    let size = t.segment_size.unwrap_or(contents.len()).max(1);
    // An empty transmit is one empty datagram.
    let empty = contents.is_empty().then_some(contents);
    contents.chunks(size).chain(empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmit(contents: &[u8], segment_size: Option<usize>) -> Transmit<'_> {
        Transmit {
            destination: "10.0.0.1:1".parse().unwrap(),
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        }
    }

    #[test]
    fn segments_split_gso_batches_with_a_short_tail() {
        let data = [7u8; 25];
        let segs: Vec<_> = segments(&transmit(&data, Some(10)))
            .map(<[u8]>::len)
            .collect();
        assert_eq!(segs, [10, 10, 5]);
        let segs: Vec<_> = segments(&transmit(&data, None)).map(<[u8]>::len).collect();
        assert_eq!(segs, [25]);
        let segs: Vec<_> = segments(&transmit(&[], None)).map(<[u8]>::len).collect();
        assert_eq!(segs, [0]);
    }

    /// Sends as the tests see them: (queue name, datagrams).
    type Log = Arc<std::sync::Mutex<Vec<(&'static str, usize)>>>;

    /// A queue that records what it was asked to send.
    struct Recording {
        name: &'static str,
        kind: QueueKind,
        batches_through_kernel: bool,
        log: Log,
        counters: Arc<QueueCounters>,
    }

    impl Recording {
        fn xsk(batches_through_kernel: bool, log: &Log) -> Box<dyn PacketIo> {
            Box::new(Self {
                name: "xsk",
                kind: QueueKind::Xsk {
                    interface: "veth".into(),
                    queue: 0,
                    zero_copy: false,
                },
                batches_through_kernel,
                log: log.clone(),
                counters: Arc::default(),
            })
        }

        fn kernel(log: &Log) -> Box<dyn PacketIo> {
            Box::new(Self {
                name: "kernel",
                kind: QueueKind::SteeringMiss {
                    local: "[::]:4433".parse().unwrap(),
                },
                batches_through_kernel: false,
                log: log.clone(),
                counters: Arc::default(),
            })
        }
    }

    impl PacketIo for Recording {
        fn recv(&mut self, _: &mut dyn FnMut(&RxMeta, &[u8])) -> io::Result<usize> {
            Ok(0)
        }
        fn send(&mut self, t: &Transmit<'_>) -> io::Result<()> {
            self.log
                .lock()
                .unwrap()
                .push((self.name, segments(t).count()));
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn raw_fd(&self) -> RawFd {
            -1
        }
        fn max_datagram_size(&self, _: &SocketAddr) -> usize {
            1452
        }
        fn max_segments(&self) -> usize {
            32
        }
        fn batches_through_kernel(&self) -> bool {
            self.batches_through_kernel
        }
        fn kind(&self) -> &QueueKind {
            &self.kind
        }
        fn counters(&self) -> &Arc<QueueCounters> {
            &self.counters
        }
    }

    #[test]
    fn batches_leave_through_the_kernel_socket_when_the_queue_asks() {
        let data = [1u8; 40_000];
        for through_kernel in [true, false] {
            let log = Log::default();
            let mut queues = vec![
                Recording::xsk(through_kernel, &log),
                Recording::kernel(&log),
            ];
            let mut send = |len, segment_size| {
                send_or_through_kernel(&mut queues, 0, &transmit(&data[..len], segment_size))
                    .unwrap()
            };
            send(3000, Some(1000));
            // One datagram, or a "batch" of one, stays on AF_XDP.
            send(900, None);
            send(900, Some(1000));
            // More segments than the kernel socket takes at once: AF_XDP.
            send(33_000, Some(1000));
            let batch_queue = if through_kernel { "kernel" } else { "xsk" };
            assert_eq!(
                *log.lock().unwrap(),
                [(batch_queue, 3), ("xsk", 1), ("xsk", 1), ("xsk", 33)]
            );
        }
    }
}
