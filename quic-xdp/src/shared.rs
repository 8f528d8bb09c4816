//! State shared between the engine and the tasks using its connections.
//!
//! Each connection's `quinn_proto::Connection` sits behind a mutex. API
//! calls (stream reads and writes, opens, closes) act on it directly, then
//! mark the connection dirty and wake the engine, which transmits what they
//! queued. The engine, after feeding received datagrams and timers, turns
//! the connection's events into task wake-ups. Wake-ups in both directions
//! are coalesced: one per batch, not one per packet. Handlers run by
//! `Endpoint::serve` live on the engine's thread, so for them the mutex is
//! never contended and every wake-up stays on that thread.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Instant,
};

use atomic_waker::AtomicWaker;

use bytes::Bytes;
use quinn_proto::{ConnectionError, ConnectionHandle, Dir, StreamEvent, StreamId, VarInt};
use rustc_hash::{FxHashMap, FxHashSet};

/// Locks `m`, poisoned or not. A panicking engine (see `Endpoint::start`)
/// must not make every later user of the endpoint panic in turn, least of
/// all in a Drop during unwinding, which aborts the process.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Requests from the tokio side that need the `quinn_proto::Endpoint`.
pub(crate) enum Command {
    Accept {
        incoming: quinn_proto::Incoming,
        queue: usize,
        /// A counted reference: if nobody takes it (the `Connecting` was
        /// dropped), dropping it closes the connection.
        reply: tokio::sync::oneshot::Sender<Result<ConnRef, ConnectionError>>,
    },
    /// Accept for the serve handler: an attempt that waited for `accept`
    /// when the handler was set.
    Serve(quinn_proto::Incoming, usize),
    Refuse(quinn_proto::Incoming, usize),
    Retry(quinn_proto::Incoming, usize),
    Ignore(quinn_proto::Incoming),
    /// Close every connection and stop accepting.
    Close {
        code: VarInt,
        reason: Bytes,
    },
    /// Test-only: the engine panics while carrying it out.
    #[cfg(feature = "test-hooks")]
    Panic,
    /// Test-only: every Initial costs the engine this much more time, as
    /// on a slower machine.
    #[cfg(feature = "test-hooks")]
    SlowInitials(std::time::Duration),
}

impl Command {
    /// Whether this decides an attempt (`Incoming`): it counted as
    /// undecided until the engine carries it out or drops it.
    pub fn is_decision(&self) -> bool {
        matches!(
            self,
            Command::Accept { .. }
                | Command::Serve(..)
                | Command::Refuse(..)
                | Command::Retry(..)
                | Command::Ignore(..)
        )
    }
}

/// Wakes the engine task: from its own thread (a handler's write) that is
/// a push onto the runtime's local queue; from another thread, tokio's own
/// unpark. At most one wake-up between two engine passes.
pub(crate) struct EngineWaker {
    armed: AtomicBool,
    task: AtomicWaker,
}

impl EngineWaker {
    pub fn new() -> Self {
        Self {
            armed: AtomicBool::new(false),
            task: AtomicWaker::new(),
        }
    }

    pub fn wake(&self) {
        if !self.armed.swap(true, Ordering::AcqRel) {
            self.task.wake();
        }
    }

    /// Called by the engine before it looks for work.
    pub fn reset(&self) {
        self.armed.store(false, Ordering::Release);
    }

    /// Ready once woken since the last `reset`; else registers the task.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.task.register(cx.waker());
        if self.armed.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// What every engine and every handle of the endpoint share.
#[derive(Default)]
pub(crate) struct EndpointShared {
    pub incoming: Mutex<std::collections::VecDeque<crate::Incoming>>,
    pub incoming_ready: tokio::sync::Notify,
    /// Set once the endpoint stops accepting.
    pub closed: AtomicBool,
    /// Set while draining: new connection attempts are refused, open
    /// connections carry on.
    pub refusing: AtomicBool,
    /// Notified when the last connection is gone.
    pub idle: tokio::sync::Notify,
    /// Engine threads still running; the last one out closes the sockets
    /// and detaches the XDP program, then sets `stopped`.
    pub engines_running: AtomicUsize,
    pub stopped: AtomicBool,
    pub stopped_notify: tokio::sync::Notify,
    pub open_connections: AtomicUsize,
    /// Connection attempts handed to the application whose decision the
    /// engine has not carried out yet.
    pub undecided: AtomicUsize,
    pub stats: Mutex<crate::endpoint::EndpointCounters>,
    pub histograms: crate::metrics::Histograms,
}

impl EndpointShared {
    /// Takes the attempts waiting for `accept` that `engine` received (to
    /// refuse or drop them outside the queue's lock).
    pub fn take_attempts_of(&self, engine: &Arc<EngineShared>) -> Vec<crate::Incoming> {
        let mut waiting = lock(&self.incoming);
        let (mine, theirs): (Vec<_>, Vec<_>) = waiting
            .drain(..)
            .partition(|i: &crate::Incoming| Arc::ptr_eq(i.engine(), engine));
        waiting.extend(theirs);
        mine
    }
}

/// Waits until `ready` gives a value. Registered with `notify` before
/// each look, so a `notify_waiters` after the state changed is never
/// missed; a cancelled wait leaves nothing behind.
pub(crate) async fn wait_for<T>(
    notify: &tokio::sync::Notify,
    mut ready: impl FnMut() -> Option<T>,
) -> T {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(value) = ready() {
            return value;
        }
        notified.await;
    }
}

/// A datagram that arrived at one engine for a connection another owns.
pub(crate) struct Forwarded {
    pub remote: std::net::SocketAddr,
    pub local: std::net::IpAddr,
    pub ecn: Option<quinn_proto::EcnCodepoint>,
    pub data: bytes::BytesMut,
    /// Whether it came through the kernel socket (replies must too).
    pub via_kernel: bool,
}

/// Forwarded datagrams an engine holds at most: a flood of datagrams that
/// name another engine's CIDs cannot grow its inbox without bound.
pub(crate) const INBOX_LIMIT: usize = 4096;

/// What one engine shares with the tokio side and the other engines.
pub(crate) struct EngineShared {
    pub waker: EngineWaker,
    pub commands: Mutex<Vec<Command>>,
    /// Connections whose state an API call changed.
    pub dirty: Mutex<Vec<ConnectionHandle>>,
    /// Datagrams other engines received for this engine's connections.
    pub inbox: Mutex<Vec<Forwarded>>,
    pub endpoint: Arc<EndpointShared>,
    /// Set when the engine thread stopped or panicked: no command reaches
    /// it any more.
    dead: AtomicBool,
}

impl EngineShared {
    pub fn new(endpoint: Arc<EndpointShared>) -> Self {
        Self {
            waker: EngineWaker::new(),
            commands: Mutex::new(Vec::new()),
            dirty: Mutex::new(Vec::new()),
            inbox: Mutex::new(Vec::new()),
            endpoint,
            dead: AtomicBool::new(false),
        }
    }

    /// The engine thread panicked: what waits for it is dropped (an
    /// accept's reply channel closes, its `Connecting` fails), and so is
    /// whatever comes later.
    pub fn die(&self) {
        self.drop_commands(self.stop_commands());
        lock(&self.inbox).clear();
    }

    /// Commands no engine will carry out; their attempts stop counting as
    /// undecided (Retry looks at that count).
    fn drop_commands(&self, commands: Vec<Command>) {
        self.decided(&commands);
    }

    /// The decisions among `commands` are carried out or dropped: they
    /// stop counting as undecided, all at once, before any is carried out
    /// (a panic while carrying out one drops the rest with it).
    pub fn decided(&self, commands: &[Command]) {
        let n = commands.iter().filter(|c| c.is_decision()).count();
        if n > 0 {
            self.endpoint.undecided.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// One attempt's decision, taken from the accept queue, is carried
    /// out here.
    pub fn decided_one(&self) {
        self.endpoint.undecided.fetch_sub(1, Ordering::Relaxed);
    }

    /// The engine takes no command from now on: later ones are dropped as
    /// they come (an accept's `Connecting` fails instead of waiting for
    /// an engine that is gone). Returns those that came before.
    pub fn stop_commands(&self) -> Vec<Command> {
        let mut commands = lock(&self.commands);
        self.dead.store(true, Ordering::Release);
        std::mem::take(&mut *commands)
    }

    /// Hands datagrams another engine received to this one, up to
    /// [`INBOX_LIMIT`] waiting; returns how many were dropped for want of
    /// room (QUIC recovers them as losses). Empties `list`.
    pub fn forward(&self, list: &mut Vec<Forwarded>) -> usize {
        let dropped = {
            let mut inbox = lock(&self.inbox);
            let room = INBOX_LIMIT.saturating_sub(inbox.len());
            let dropped = list.len().saturating_sub(room);
            list.truncate(list.len() - dropped);
            inbox.append(list);
            dropped
        };
        list.clear();
        self.waker.wake();
        dropped
    }

    pub fn command(&self, command: Command) {
        // Checked under the lock `stop_commands` holds, so that no command
        // lands in a list nobody reads again.
        let mut commands = lock(&self.commands);
        if self.dead.load(Ordering::Acquire) {
            drop(commands);
            self.drop_commands(vec![command]); // outside the lock: reply channels close
            return;
        }
        commands.push(command);
        drop(commands);
        self.waker.wake();
    }
}

/// One connection, as both sides see it.
pub(crate) struct ConnShared {
    pub handle: ConnectionHandle,
    pub state: Mutex<ConnState>,
    pub engine: Arc<EngineShared>,
    dirty: AtomicBool,
    /// Live `Connection`s and streams; the connection closes when the last
    /// one goes.
    refs: AtomicUsize,
}

impl ConnShared {
    pub fn new(
        handle: ConnectionHandle,
        inner: quinn_proto::Connection,
        queue: usize,
        engine: Arc<EngineShared>,
    ) -> Arc<Self> {
        Arc::new(Self {
            handle,
            state: Mutex::new(ConnState::new(inner, queue)),
            engine,
            dirty: AtomicBool::new(false),
            refs: AtomicUsize::new(0),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, ConnState> {
        lock(&self.state)
    }

    /// Changes the connection's state, then tells the engine to transmit
    /// whatever that queued.
    pub fn edit<R>(&self, f: impl FnOnce(&mut ConnState) -> R) -> R {
        let result = f(&mut self.lock());
        self.wake_engine();
        result
    }

    /// Tells the engine this connection has something to send.
    pub fn wake_engine(&self) {
        if !self.dirty.swap(true, Ordering::AcqRel) {
            lock(&self.engine.dirty).push(self.handle);
            self.engine.waker.wake();
        }
    }

    /// The engine is about to drive this connection.
    pub fn clear_dirty(&self) {
        self.dirty.store(false, Ordering::Release);
    }
}

/// A counted reference: `Connection` and stream handles hold one.
pub(crate) struct ConnRef(pub Arc<ConnShared>);

impl ConnRef {
    pub fn new(shared: Arc<ConnShared>) -> Self {
        shared.refs.fetch_add(1, Ordering::AcqRel);
        Self(shared)
    }
}

impl Clone for ConnRef {
    fn clone(&self) -> Self {
        Self::new(self.0.clone())
    }
}

impl Drop for ConnRef {
    fn drop(&mut self) {
        if self.0.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Nobody can use the connection any more: close it politely
            // (unless a close already waits for the last acknowledgments).
            let mut st = self.0.lock();
            if st.error.is_none() && st.close_when_flushed.is_none() {
                st.inner
                    .close(Instant::now(), VarInt::from_u32(0), Bytes::new());
                st.fail(ConnectionError::LocallyClosed);
                drop(st);
                self.0.wake_engine();
            }
        }
    }
}

impl std::ops::Deref for ConnRef {
    type Target = ConnShared;
    fn deref(&self) -> &ConnShared {
        &self.0
    }
}

/// A transmit that the datapath had no room for yet.
pub(crate) struct PendingTransmit {
    pub contents: Vec<u8>,
    pub destination: std::net::SocketAddr,
    pub ecn: Option<quinn_proto::EcnCodepoint>,
    pub segment_size: Option<usize>,
    pub src_ip: Option<std::net::IpAddr>,
}

pub(crate) struct ConnState {
    pub inner: quinn_proto::Connection,
    /// The datapath queue the peer's datagrams last arrived on; replies
    /// leave through it.
    pub queue: usize,
    pub connected: bool,
    pub error: Option<ConnectionError>,
    pub pending_transmit: Option<PendingTransmit>,
    /// The deadline the engine's timer set holds for this connection.
    pub timer: Option<Instant>,
    pub on_connected: Option<Waker>,
    // Fx, as quinn-proto's own stream maps: stream IDs are small and the
    // peer can only open them in order, up to its stream limit.
    pub readers: FxHashMap<StreamId, Waker>,
    pub writers: FxHashMap<StreamId, Waker>,
    pub on_opened: [Vec<Waker>; 2],
    pub on_available: [Vec<Waker>; 2],
    /// Waiters that are often cancelled (`select!` on `closed()`, a
    /// timeout on `read_datagram`): a `Notify` forgets a waiter whose
    /// future is dropped, where a list of wakers would keep it until the
    /// event. Notified under the state's lock, after the state changed.
    pub on_datagram: Arc<tokio::sync::Notify>,
    pub on_closed: Arc<tokio::sync::Notify>,
    /// Streams this side finished whose data the peer has not all
    /// acknowledged yet: a close that waits for them loses no response.
    pub finishing: FxHashSet<StreamId>,
    /// A close to carry out once `finishing` is empty.
    pub close_when_flushed: Option<(VarInt, Bytes)>,
    /// When the engine accepted it (the handshake's start).
    pub accepted: Instant,
}

fn dir_index(dir: Dir) -> usize {
    match dir {
        Dir::Bi => 0,
        Dir::Uni => 1,
    }
}

impl ConnState {
    fn new(inner: quinn_proto::Connection, queue: usize) -> Self {
        Self {
            inner,
            queue,
            connected: false,
            error: None,
            pending_transmit: None,
            timer: None,
            on_connected: None,
            readers: FxHashMap::default(),
            writers: FxHashMap::default(),
            on_opened: [Vec::new(), Vec::new()],
            on_available: [Vec::new(), Vec::new()],
            on_datagram: Arc::default(),
            on_closed: Arc::default(),
            finishing: FxHashSet::default(),
            close_when_flushed: None,
            accepted: Instant::now(),
        }
    }

    /// Finishes stream `id`; it stays in `finishing` until acknowledged.
    pub fn finish(&mut self, id: StreamId) -> Result<(), quinn_proto::FinishError> {
        self.inner.send_stream(id).finish()?;
        self.finishing.insert(id);
        Ok(())
    }

    /// Abandons stream `id` (RESET_STREAM): nothing of it is waited for.
    pub fn reset(&mut self, id: StreamId, code: VarInt) -> Result<(), quinn_proto::ClosedStream> {
        let reset = self.inner.send_stream(id).reset(code);
        if self.finishing.remove(&id) {
            self.close_if_flushed();
        }
        reset
    }

    /// Closes now, or once every finished stream is acknowledged.
    pub fn close_when_flushed(&mut self, code: VarInt, reason: Bytes) {
        if self.error.is_some() {
            return;
        }
        self.close_when_flushed = Some((code, reason));
        self.close_if_flushed();
    }

    fn close_if_flushed(&mut self) {
        if !self.finishing.is_empty() {
            return;
        }
        if let Some((code, reason)) = self.close_when_flushed.take() {
            self.inner.close(Instant::now(), code, reason);
            self.fail(ConnectionError::LocallyClosed);
        }
    }

    pub fn wait_opened(&mut self, dir: Dir, waker: &Waker) {
        push_waker(&mut self.on_opened[dir_index(dir)], waker);
    }

    pub fn wait_available(&mut self, dir: Dir, waker: &Waker) {
        push_waker(&mut self.on_available[dir_index(dir)], waker);
    }

    /// Turns one event of the connection into wake-ups.
    pub fn dispatch(&mut self, event: quinn_proto::Event) {
        use quinn_proto::Event::*;
        match event {
            HandshakeDataReady => {}
            Connected => {
                self.connected = true;
                wake(self.on_connected.take());
            }
            ConnectionLost { reason } => self.fail(reason),
            Stream(StreamEvent::Readable { id }) => wake(self.readers.remove(&id)),
            Stream(StreamEvent::Writable { id }) => wake(self.writers.remove(&id)),
            Stream(StreamEvent::Stopped { id, .. } | StreamEvent::Finished { id }) => {
                wake(self.writers.remove(&id));
                if self.finishing.remove(&id) {
                    self.close_if_flushed();
                }
            }
            Stream(StreamEvent::Opened { dir }) => wake_all(&mut self.on_opened[dir_index(dir)]),
            Stream(StreamEvent::Available { dir }) => {
                wake_all(&mut self.on_available[dir_index(dir)])
            }
            DatagramReceived => self.on_datagram.notify_waiters(),
            DatagramsUnblocked => {}
        }
    }

    /// Records why the connection ended and wakes everything waiting on it.
    pub fn fail(&mut self, reason: ConnectionError) {
        if self.error.is_none() {
            self.error = Some(reason);
        }
        wake(self.on_connected.take());
        for (_, w) in self.readers.drain().chain(self.writers.drain()) {
            w.wake();
        }
        for list in self
            .on_opened
            .iter_mut()
            .chain(self.on_available.iter_mut())
        {
            wake_all(list);
        }
        self.on_datagram.notify_waiters();
        self.on_closed.notify_waiters();
    }
}

fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
    }
}

fn wake_all(list: &mut Vec<Waker>) {
    for w in list.drain(..) {
        w.wake();
    }
}

pub(crate) fn push_waker(list: &mut Vec<Waker>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(n: usize) -> Vec<Forwarded> {
        (0..n)
            .map(|_| Forwarded {
                remote: "10.0.0.1:1".parse().unwrap(),
                local: "10.0.0.2".parse().unwrap(),
                ecn: None,
                data: bytes::BytesMut::from(&b"x"[..]),
                via_kernel: false,
            })
            .collect()
    }

    #[test]
    fn the_inbox_is_bounded_and_counts_what_it_drops() {
        let engine = EngineShared::new(Arc::default());
        let mut list = forwarded(INBOX_LIMIT - 10);
        assert_eq!(engine.forward(&mut list), 0);
        assert!(list.is_empty());
        let mut list = forwarded(25);
        assert_eq!(engine.forward(&mut list), 15);
        assert_eq!(engine.inbox.lock().unwrap().len(), INBOX_LIMIT);
        // Drained by the engine: room again.
        engine.inbox.lock().unwrap().clear();
        assert_eq!(engine.forward(&mut forwarded(5)), 0);
    }
}
