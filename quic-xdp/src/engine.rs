//! The engine thread: the shell around one [`EngineCore`] and its group of
//! datapath queues (an AF_XDP socket plus the kernel socket). It runs a
//! current-thread tokio runtime with the engine loop as one task and the
//! handlers of its connections (`Endpoint::serve`) as others, so one pass
//! runs to completion on one thread: a received batch goes through
//! quinn-proto, the woken handlers run, and their writes leave with the
//! ACKs in the same pass. No lock is contended and no other thread is
//! woken on that path. Handles used from other runtimes still work; their
//! wake-ups reach this runtime through tokio's own waker.
//!
//! Datagrams are routed by connection ID (see `cid`): what arrives here for
//! a connection another engine owns is forwarded to it.

use std::{
    future::poll_fn,
    io,
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use datapath::{PacketIo, QueueKind};
use quinn_proto::EcnCodepoint;
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Sleep,
};

use crate::{
    cid::CidScheme,
    core::EngineCore,
    initial_budget::{InitialBudget, is_initial},
    shared::{EngineShared, Forwarded, lock},
};

/// Receive batches per queue in one pass before the connections that
/// received are driven (their ACKs and responses wait meanwhile).
const BATCHES_PER_PASS: usize = 2;
/// How often a closing engine looks at its drain deadline.
const CLOSING_TICK: Duration = Duration::from_millis(100);
/// Passes in a row a blocked transmit that makes no progress is retried
/// right away, and how long the engine waits between retries after that.
const BLOCKED_YIELDS: u32 = 64;
const BLOCKED_BACKOFF: Duration = Duration::from_millis(1);

/// Where an engine's peers are, for routing.
pub(crate) struct Peers {
    pub index: usize,
    pub engines: Vec<Arc<EngineShared>>,
    pub cids: CidScheme,
}

pub(crate) struct Engine {
    core: EngineCore,
    queues: Vec<Box<dyn PacketIo>>,
    /// The queue answering peers that reached us through the kernel, and
    /// the one for everything else.
    kernel_queue: usize,
    xdp_queue: usize,
    peers: Peers,
    outbox: Vec<Vec<Forwarded>>,
    /// The share of this engine's time Initials may take.
    initial_budget: InitialBudget,
}

/// A queue's descriptor, registered with the runtime (the queue owns it).
struct QueueFd(RawFd);

impl AsRawFd for QueueFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Engine {
    pub fn new(core: EngineCore, queues: Vec<Box<dyn PacketIo>>, peers: Peers) -> Self {
        let is_kernel = |q: &dyn PacketIo| !matches!(q.kind(), QueueKind::Xsk { .. });
        let kernel_queue = queues
            .iter()
            .position(|q| is_kernel(q.as_ref()))
            .unwrap_or(0);
        let xdp_queue = queues
            .iter()
            .position(|q| !is_kernel(q.as_ref()))
            .unwrap_or(kernel_queue);
        let engines = peers.engines.len();
        Self {
            core,
            queues,
            kernel_queue,
            xdp_queue,
            peers,
            outbox: (0..engines).map(|_| Vec::new()).collect(),
            initial_budget: InitialBudget::new(Instant::now()),
        }
    }

    /// Runs the engine, and the handlers of its connections, on this
    /// thread until the endpoint is closed and every connection has
    /// drained (or the drain limit passed); the core's Drop then ends the
    /// connections still open.
    ///
    /// `started` hears once whether the engine could start (runtime,
    /// readiness registration): an endpoint must not serve with a queue
    /// that nobody reads.
    pub fn run(self, started: std::sync::mpsc::Sender<io::Result<()>>) {
        // Handlers run here: after a privilege drop, with no effective
        // capability (neighbour solicitation raises CAP_NET_ADMIN itself).
        datapath::privileges::lower_for_this_thread(datapath::privileges::NEIGHBOUR_CAP);
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        let tasks = tokio::task::LocalSet::new();
        tasks.block_on(&runtime, self.run_passes(started));
    }

    async fn run_passes(mut self, started: std::sync::mpsc::Sender<io::Result<()>>) {
        // Registered for readability only.
        let fds = self
            .queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.receives())
            .map(|(i, q)| {
                let fd = QueueFd(q.raw_fd());
                // SAFETY: the queue owns the descriptor and outlives the
                // registration: `fds` is dropped before the queues.
                let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
                Ok((i, fd))
            })
            .collect::<io::Result<Vec<_>>>();
        let fds = match fds {
            Ok(fds) => {
                let _ = started.send(Ok(()));
                fds
            }
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        // Reported: `bind` counts the senders still open to tell an engine
        // that ended before reporting.
        drop(started);
        let mut sleep = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut blocked_passes = 0u32;
        loop {
            self.core.shared().waker.reset();
            let now = Instant::now();
            self.core.run_commands(now);
            let received = self.receive(now, &fds) + self.receive_forwarded(now);
            self.core.admit_new(now);
            // Garbage that decrypted only as far as an attempt pays too.
            let wasted = self.core.take_failed_attempts_time();
            self.initial_budget.charge_total(wasted);
            self.spawn_served();
            self.core.collect_dirty_and_expired(now);
            if received > 0 {
                self.core.process_touched(now);
                // The tasks just woken run now, so that what they write
                // leaves in this pass, with the ACKs.
                tokio::task::yield_now().await;
                self.core.collect_dirty_and_expired(Instant::now());
            }
            let now = Instant::now();
            let mut blocked = self.core.drive_touched(now, &mut self.queues);
            self.core.send_responses(&mut self.queues);
            for q in &mut self.queues {
                if let Err(e) = q.flush() {
                    tracing::warn!(error = %e, "datapath flush failed");
                }
                // The kernel was busy: what it did not take is only sent
                // by another flush.
                blocked |= q.tx_pending();
            }
            if self.core.finished(now) {
                break;
            }
            // Backing off is for queues that take nothing: a pass that sent
            // while the queue filled up again goes on at once.
            let stalled = blocked && self.core.sent_in_last_drive() == 0;
            blocked_passes = if stalled { blocked_passes + 1 } else { 0 };
            if received == 0 {
                if !blocked && self.core.has_more() {
                    // Connections that spent their budget go on after the
                    // other tasks had a turn.
                    tokio::task::yield_now().await;
                } else if blocked && blocked_passes <= BLOCKED_YIELDS {
                    // Room frees up as the kernel sends: let the other
                    // tasks run, then try again.
                    tokio::task::yield_now().await;
                } else {
                    // Still blocked (a link down, completions stopped):
                    // back off instead of spinning.
                    let retry = blocked.then(|| Instant::now() + BLOCKED_BACKOFF);
                    self.wait(&fds, sleep.as_mut(), retry).await;
                }
            }
        }
        // Attempts decided while the engine stopped get their refusal;
        // later decisions fail at once instead of waiting for it.
        self.core.run_last_commands(Instant::now());
        self.core.send_responses(&mut self.queues);
        drop(fds);
        for q in &mut self.queues {
            if let Err(e) = q.flush() {
                tracing::debug!(error = %e, "datapath flush failed");
            }
            q.refresh_counters();
        }
        tracing::debug!(engine = self.peers.index, "engine stopped");
    }

    /// Starts the serve handler for the connections accepted this pass.
    fn spawn_served(&mut self) {
        let Some(handler) = self.core.handler().cloned() else {
            return;
        };
        for connecting in self.core.take_served() {
            let handler = handler.clone();
            tokio::task::spawn_local(async move {
                match connecting.await {
                    Ok(conn) => handler(conn).await,
                    Err(e) => tracing::debug!(error = %e, "handshake failed"),
                }
            });
        }
    }

    /// Feeds every waiting datagram to its engine; returns how many were
    /// received here. A kernel socket is read only while the runtime says
    /// it is readable; an AF_XDP ring is looked at every pass. Readiness is
    /// cleared only once a read found the queue empty, so no wake-up is
    /// lost.
    fn receive(&mut self, now: Instant, fds: &[(usize, AsyncFd<QueueFd>)]) -> usize {
        let Self {
            core,
            queues,
            peers,
            outbox,
            initial_budget,
            ..
        } = self;
        let me = peers.index;
        let mut total = 0;
        let mut shed = 0u64;
        let mut cx = Context::from_waker(Waker::noop());
        for (qi, fd) in fds {
            let q = &mut queues[*qi];
            let via_kernel = !matches!(q.kind(), QueueKind::Xsk { .. });
            let mut ready = match fd.poll_read_ready(&mut cx) {
                Poll::Ready(Ok(ready)) => Some(ready),
                // Looking at an AF_XDP ring costs no system call: what
                // arrived since the runtime last polled is taken now,
                // not after another epoll_wait.
                _ if !via_kernel => None,
                _ => continue,
            };
            for _ in 0..BATCHES_PER_PASS {
                let result = q.recv(&mut |meta, data| {
                    let ecn = meta.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
                    let owner = peers.cids.route(data, me);
                    if owner != me {
                        outbox[owner].push(Forwarded {
                            remote: meta.remote,
                            local: meta.local.ip(),
                            ecn,
                            data: data.into(),
                            via_kernel,
                        });
                    } else if !initial_budget.handle(now, is_initial(data), || {
                        core.handle(now, *qi, meta.remote, meta.local.ip(), ecn, data)
                    }) {
                        // A flood of connection attempts: the connections
                        // already served keep the rest of the engine.
                        shed += 1;
                    }
                });
                match result {
                    Ok(0) => {
                        if let Some(ready) = ready.as_mut() {
                            ready.clear_ready();
                        }
                        break;
                    }
                    Ok(n) => total += n,
                    Err(e) => {
                        tracing::warn!(error = %e, queue = qi, "datapath receive failed");
                        break;
                    }
                }
            }
        }
        let (mut forwarded, mut dropped) = (0, 0);
        for (owner, list) in outbox.iter_mut().enumerate() {
            if !list.is_empty() {
                forwarded += list.len() as u64;
                dropped += peers.engines[owner].forward(list) as u64;
            }
        }
        if forwarded > 0 || shed > 0 {
            let mut stats = lock(&core.shared().endpoint.stats);
            stats.forwarded += forwarded - dropped;
            stats.forward_dropped += dropped;
            stats.initials_shed += shed;
        }
        total
    }

    /// Handles what other engines received for connections owned here.
    fn receive_forwarded(&mut self, now: Instant) -> usize {
        let inbox = std::mem::take(&mut *lock(&self.core.shared().inbox));
        let n = inbox.len();
        let mut shed = 0;
        for f in inbox {
            let queue = if f.via_kernel {
                self.kernel_queue
            } else {
                self.xdp_queue
            };
            let core = &mut self.core;
            if !self.initial_budget.handle(now, is_initial(&f.data), || {
                core.handle_owned(now, queue, f.remote, f.local, f.ecn, f.data)
            }) {
                shed += 1;
            }
        }
        if shed > 0 {
            lock(&self.core.shared().endpoint.stats).initials_shed += shed;
        }
        n
    }

    /// Sleeps until a queue is readable, the engine is woken (API calls,
    /// forwarded datagrams, commands), the next connection timer, or
    /// `retry` (a blocked transmit).
    async fn wait(
        &self,
        fds: &[(usize, AsyncFd<QueueFd>)],
        mut sleep: Pin<&mut Sleep>,
        retry: Option<Instant>,
    ) {
        let closing = self
            .core
            .is_closing()
            .then(|| Instant::now() + CLOSING_TICK);
        let wake_at = [self.core.next_deadline(), closing, retry]
            .into_iter()
            .flatten()
            .min();
        if let Some(t) = wake_at {
            sleep.as_mut().reset(t.into());
        }
        let waker = &self.core.shared().waker;
        poll_fn(|cx| {
            if waker.poll_woken(cx).is_ready() {
                return Poll::Ready(());
            }
            // A ready guard dropped here keeps the readiness for receive().
            if fds.iter().any(|(_, fd)| fd.poll_read_ready(cx).is_ready()) {
                return Poll::Ready(());
            }
            if wake_at.is_some() && sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await
    }
}
