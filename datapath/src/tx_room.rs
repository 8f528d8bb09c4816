//! Waiting for room to send, without spinning.
//!
//! A sender told `WouldBlock` waits for its queue's descriptor to turn
//! writable: an AF_XDP socket reports it once its tx ring is less than
//! half full (in copy mode, polling it also drives transmission), a
//! kernel UDP socket once its send buffer has room. The descriptor is
//! registered for writability only while a sender waits, through a
//! duplicate, so that completions wake nobody otherwise. Each wake-up
//! flushes the queue and asks whether it is still blocked. A backstop
//! timer covers a kernel that sent nothing, and so completes nothing, and
//! a registration that failed (out of descriptors, say).

use std::{
    io,
    os::fd::{BorrowedFd, OwnedFd},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{io::unix::AsyncFd, time::Sleep};

/// How long a waiting sender goes without flushing at most.
pub(crate) const BACKSTOP: Duration = Duration::from_millis(1);

/// One sender's wait for room; idle until it first finds the ring busy.
#[derive(Debug)]
pub(crate) struct RoomWait {
    backstop: Duration,
    blocked: Option<Blocked>,
}

#[derive(Debug)]
struct Blocked {
    /// None if the registration failed: the backstop alone then wakes.
    fd: Option<AsyncFd<OwnedFd>>,
    backstop: Pin<Box<Sleep>>,
}

impl RoomWait {
    pub fn new(backstop: Duration) -> Self {
        Self {
            backstop,
            blocked: None,
        }
    }

    /// Ready once, after a wake-up (`fd` writable, or the backstop),
    /// `flush` (flushes the queue; says whether it is still blocked) finds
    /// room. Called after a send found none. Needs a tokio runtime with
    /// time and I/O.
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        fd: BorrowedFd<'_>,
        mut flush: impl FnMut() -> io::Result<bool>,
    ) -> Poll<io::Result<()>> {
        loop {
            let backstop = self.backstop;
            let blocked = self
                .blocked
                .get_or_insert_with(|| Blocked::register(fd, backstop));
            // Readiness is taken before the flush: what completes during
            // it stays reported (tokio clears only what it handed out).
            let ready = match blocked.fd.as_ref().map(|fd| fd.poll_write_ready(cx)) {
                Some(Poll::Ready(ready)) => Some(ready?),
                Some(Poll::Pending) | None => None,
            };
            let timed_out = blocked.backstop.as_mut().poll(cx).is_ready();
            if ready.is_none() && !timed_out {
                return Poll::Pending;
            }
            if !flush()? {
                self.blocked = None;
                return Poll::Ready(Ok(()));
            }
            if let Some(mut ready) = ready {
                ready.clear_ready();
            }
            if timed_out {
                let next = tokio::time::Instant::now() + self.backstop;
                blocked.backstop.as_mut().reset(next);
            }
        }
    }
}

impl Blocked {
    fn register(fd: BorrowedFd<'_>, backstop: Duration) -> Self {
        let fd = fd.try_clone_to_owned().and_then(|dup| {
            // SAFETY: the registration owns the duplicate, which it closes
            // only after deregistering.
            let fd =
                unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::WRITABLE) }?;
            Ok(fd)
        });
        let fd = fd
            .inspect_err(|e| tracing::debug!(error = %e, "waiting for room on the timer alone"))
            .ok();
        Self {
            fd,
            backstop: Box::pin(tokio::time::sleep(backstop)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::{fd::AsFd, unix::net::UnixDatagram},
        sync::{
            Arc,
            atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        },
    };

    use super::*;

    /// A descriptor that is not writable: a datagram socket whose peer's
    /// queue is full. Reading the peer makes it writable.
    fn unwritable() -> (UnixDatagram, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        while a.send(b"x").is_ok() {}
        (a, b)
    }

    /// A stand-in for the ring: `busy` says whether frames still wait;
    /// every flush is counted.
    struct Ring {
        busy: AtomicBool,
        flushes: AtomicUsize,
    }

    impl Ring {
        fn new(busy: bool) -> Arc<Self> {
            Arc::new(Self {
                busy: AtomicBool::new(busy),
                flushes: AtomicUsize::new(0),
            })
        }

        fn flush(&self) -> io::Result<bool> {
            self.flushes.fetch_add(1, SeqCst);
            Ok(self.busy.load(SeqCst))
        }

        /// The kernel completes what waited after `ms` milliseconds.
        fn drain_after(self: &Arc<Self>, ms: u64) {
            let ring = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ring.busy.store(false, SeqCst);
            });
        }
    }

    async fn wait(wait: &mut RoomWait, fd: &impl AsFd, ring: &Ring) -> io::Result<()> {
        std::future::poll_fn(|cx| wait.poll(cx, fd.as_fd(), || ring.flush())).await
    }

    /// Writable and drained at once: one flush, and the wait is over.
    #[tokio::test]
    async fn a_writable_descriptor_and_a_drained_ring_end_the_wait_at_once() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let ring = Ring::new(false);
        let mut room = RoomWait::new(Duration::from_secs(3600));
        tokio::time::timeout(Duration::from_secs(10), wait(&mut room, &a, &ring))
            .await
            .expect("writable at once")
            .unwrap();
        assert_eq!(ring.flushes.load(SeqCst), 1);
        assert!(room.blocked.is_none(), "deregistered");
    }

    /// With a backstop that never fires, only the descriptor's
    /// writability can end the wait.
    #[tokio::test]
    async fn the_descriptor_turning_writable_ends_the_wait() {
        let (a, b) = unwritable();
        let ring = Ring::new(true);
        ring.drain_after(20);
        tokio::spawn(async move {
            // Room in the descriptor once the frames completed.
            tokio::time::sleep(Duration::from_millis(25)).await;
            let mut buf = [0u8; 8];
            while b.recv(&mut buf).is_ok() {}
        });
        let mut room = RoomWait::new(Duration::from_secs(3600));
        tokio::time::timeout(Duration::from_secs(10), wait(&mut room, &a, &ring))
            .await
            .expect("woken by writability")
            .unwrap();
        assert!(room.blocked.is_none(), "deregistered once drained");
        let flushes = ring.flushes.load(SeqCst);
        assert!(flushes <= 5, "{flushes} flushes: a spin");
    }

    /// A descriptor epoll will not watch (a regular file here; out of
    /// descriptors in real life): the backstop alone ends the wait, the
    /// sender is not failed.
    #[tokio::test]
    async fn a_failed_registration_leaves_the_backstop() {
        let path = std::env::temp_dir().join(format!("qx-tx-room-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let ring = Ring::new(true);
        ring.drain_after(20);
        let mut room = RoomWait::new(BACKSTOP);
        tokio::time::timeout(Duration::from_secs(10), wait(&mut room, &file, &ring))
            .await
            .expect("the backstop ended the wait")
            .unwrap();
    }

    /// A kernel that completes nothing reports nothing: the backstop
    /// flushes again, about once a millisecond, not in a spin.
    #[tokio::test]
    async fn the_backstop_retries_without_spinning() {
        let (a, _b) = unwritable();
        let ring = Ring::new(true);
        ring.drain_after(50);
        let mut room = RoomWait::new(BACKSTOP);
        tokio::time::timeout(Duration::from_secs(10), wait(&mut room, &a, &ring))
            .await
            .expect("the backstop flushed again")
            .unwrap();
        let flushes = ring.flushes.load(SeqCst);
        // 50 ms at one flush a millisecond, with room for a slow timer
        // wheel (it rounds up to whole milliseconds); a spin makes
        // thousands.
        assert!((2..=200).contains(&flushes), "{flushes} flushes");
    }
}
