//! The engine: a thread that owns one `quinn_proto::Endpoint`, its
//! connections and one group of datapath queues (an AF_XDP socket plus the
//! kernel socket), and runs each pass to completion:
//!
//! 1. commands from the tokio side (accept/refuse/retry, close);
//! 2. receive batches: each datagram goes to the engine its connection ID
//!    names (see `cid`); here, `Endpoint::handle` with connection events
//!    fed in place and new connections admitted (or retried/refused);
//!    then the datagrams other engines forwarded;
//! 3. drive every connection that received, was touched by the API, or hit
//!    its timer: endpoint events, app events (task wake-ups),
//!    `poll_transmit` straight into the datapath's send;
//! 4. flush the queues; sleep in poll(2) on the queues and the engine's
//!    eventfd until the next connection deadline when there is no work.

use std::{
    collections::{BTreeSet, HashMap},
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use datapath::{PacketIo, QueueKind, Transmit, io::EcnCodepoint as WireEcn};
use quinn_proto::{
    ConnectionError, ConnectionHandle, DatagramEvent, EcnCodepoint, Endpoint as ProtoEndpoint,
};

use crate::{
    Incoming,
    builder::RetryPolicy,
    cid::CidScheme,
    shared::{Command, ConnShared, ConnState, EngineShared, Forwarded, PendingTransmit},
};

/// Receive batches per queue in one pass before other work gets a turn.
const BATCHES_PER_PASS: usize = 16;
const ARENA_CHUNK: usize = 1 << 20;
/// How long a closing endpoint waits for its connections to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

pub(crate) struct Admission {
    pub max_connections: usize,
    pub retry: RetryPolicy,
}

/// Where an engine's engines are, for routing.
pub(crate) struct Peers {
    pub index: usize,
    pub engines: Vec<Arc<EngineShared>>,
    pub cids: CidScheme,
}

pub(crate) struct Engine {
    endpoint: ProtoEndpoint,
    queues: Vec<Box<dyn PacketIo>>,
    /// The queue answering peers that reached us through the kernel, and
    /// the one for everything else.
    kernel_queue: usize,
    xdp_queue: usize,
    conns: HashMap<ConnectionHandle, Arc<ConnShared>>,
    timers: BTreeSet<(Instant, ConnectionHandle)>,
    shared: Arc<EngineShared>,
    peers: Peers,
    admission: Arc<Admission>,
    /// Accepted connections whose handshake has not completed.
    handshaking: usize,
    rx: RxState,
    outbox: Vec<Vec<Forwarded>>,
    closing_since: Option<Instant>,
}

/// What handling one datagram touches, split from the queues so that a
/// queue's receive callback can borrow it.
struct RxState {
    arena: BytesMut,
    tx_buf: Vec<u8>,
    touched: Vec<ConnectionHandle>,
    new_incoming: Vec<(quinn_proto::Incoming, usize)>,
    responses: Vec<(usize, PendingTransmit)>,
}

impl RxState {
    /// Copies `data` out of the datapath's buffer into an owned datagram.
    fn datagram(&mut self, data: &[u8]) -> BytesMut {
        if self.arena.capacity() < data.len() {
            self.arena.reserve(ARENA_CHUNK.max(data.len()));
        }
        self.arena.extend_from_slice(data);
        self.arena.split()
    }

    #[allow(clippy::too_many_arguments)]
    fn handle(
        &mut self,
        endpoint: &mut ProtoEndpoint,
        conns: &HashMap<ConnectionHandle, Arc<ConnShared>>,
        now: Instant,
        queue: usize,
        remote: SocketAddr,
        local: IpAddr,
        ecn: Option<EcnCodepoint>,
        datagram: BytesMut,
    ) {
        self.tx_buf.clear();
        match endpoint.handle(now, remote, Some(local), ecn, datagram, &mut self.tx_buf) {
            Some(DatagramEvent::ConnectionEvent(h, event)) => {
                if let Some(conn) = conns.get(&h) {
                    let mut st = conn.lock();
                    st.queue = queue;
                    st.inner.handle_event(event);
                    self.touched.push(h);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                self.new_incoming.push((incoming, queue))
            }
            Some(DatagramEvent::Response(t)) => {
                let p = pending(&t, &self.tx_buf[..t.size]);
                self.responses.push((queue, p));
            }
            None => {}
        }
    }
}

impl Engine {
    pub fn new(
        endpoint: ProtoEndpoint,
        queues: Vec<Box<dyn PacketIo>>,
        peers: Peers,
        admission: Arc<Admission>,
    ) -> Self {
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
            endpoint,
            queues,
            kernel_queue,
            xdp_queue,
            conns: HashMap::new(),
            timers: BTreeSet::new(),
            shared: peers.engines[peers.index].clone(),
            peers,
            admission,
            handshaking: 0,
            rx: RxState {
                arena: BytesMut::with_capacity(ARENA_CHUNK),
                tx_buf: Vec::with_capacity(64 * 1024),
                touched: Vec::new(),
                new_incoming: Vec::new(),
                responses: Vec::new(),
            },
            outbox: (0..engines).map(|_| Vec::new()).collect(),
            closing_since: None,
        }
    }

    /// Runs until the endpoint is closed and every connection has drained
    /// (or the drain limit passed).
    pub fn run(mut self) {
        let mut fds: Vec<libc::pollfd> = self
            .queues
            .iter()
            .filter(|q| q.receives())
            .map(|q| q.raw_fd())
            .chain([self.shared.waker.raw_fd()])
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        loop {
            self.shared.waker.reset();
            let now = Instant::now();
            self.run_commands(now);
            let received = self.receive(now) + self.receive_forwarded(now);
            self.admit_new();
            self.collect_dirty_and_expired(now);
            let mut touched = std::mem::take(&mut self.rx.touched);
            touched.sort_unstable();
            touched.dedup();
            let mut blocked = false;
            for h in touched.drain(..) {
                blocked |= self.drive(h, now);
            }
            // Keep the allocation for the next pass, with the connections
            // drive() queued for a retry meanwhile.
            touched.append(&mut self.rx.touched);
            self.rx.touched = touched;
            self.send_responses();
            for q in &mut self.queues {
                if let Err(e) = q.flush() {
                    tracing::warn!(error = %e, "datapath flush failed");
                }
            }
            if let Some(since) = self.closing_since
                && (self.conns.is_empty() || since.elapsed() >= DRAIN_LIMIT)
            {
                break;
            }
            if received == 0 && !blocked {
                self.wait(&mut fds);
            }
        }
        for q in &mut self.queues {
            q.refresh_counters();
        }
        tracing::debug!(engine = self.peers.index, "engine stopped");
    }

    fn run_commands(&mut self, now: Instant) {
        let commands = std::mem::take(&mut *self.shared.commands.lock().unwrap());
        for command in commands {
            if !matches!(command, Command::Close { .. }) {
                self.decided();
            }
            match command {
                Command::Accept {
                    incoming,
                    queue,
                    reply,
                } => {
                    let result = self.accept(incoming, queue, now);
                    // The caller may have given up waiting; the connection
                    // then closes when its last reference goes.
                    let _ = reply.send(result);
                }
                Command::Refuse(incoming, queue) => self.refuse(incoming, queue),
                Command::Retry(incoming, queue) => self.retry(incoming, queue),
                Command::Ignore(incoming) => self.endpoint.ignore(incoming),
                Command::Close { code, reason } => self.close(code, reason, now),
            }
        }
    }

    fn accept(
        &mut self,
        incoming: quinn_proto::Incoming,
        queue: usize,
        now: Instant,
    ) -> Result<Arc<ConnShared>, ConnectionError> {
        if self.closing_since.is_some() {
            self.refuse(incoming, queue);
            return Err(ConnectionError::LocallyClosed);
        }
        self.rx.tx_buf.clear();
        match self
            .endpoint
            .accept(incoming, now, &mut self.rx.tx_buf, None)
        {
            Ok((handle, conn)) => {
                let shared = ConnShared::new(handle, conn, queue, self.shared.clone());
                self.conns.insert(handle, shared.clone());
                self.handshaking += 1;
                let endpoint = &self.shared.endpoint;
                endpoint.open_connections.fetch_add(1, Ordering::Relaxed);
                endpoint.stats.lock().unwrap().accepted += 1;
                self.rx.touched.push(handle);
                Ok(shared)
            }
            Err(e) => {
                if let Some(t) = e.response {
                    self.queue_response(queue, &t);
                }
                Err(e.cause)
            }
        }
    }

    /// An attempt handed to the application has been decided (accepted,
    /// refused, retried or ignored) here.
    fn decided(&self) {
        self.shared
            .endpoint
            .undecided
            .fetch_sub(1, Ordering::Relaxed);
    }

    fn refuse(&mut self, incoming: quinn_proto::Incoming, queue: usize) {
        self.rx.tx_buf.clear();
        let t = self.endpoint.refuse(incoming, &mut self.rx.tx_buf);
        self.queue_response(queue, &t);
        self.shared.endpoint.stats.lock().unwrap().refused += 1;
    }

    fn retry(&mut self, incoming: quinn_proto::Incoming, queue: usize) {
        self.rx.tx_buf.clear();
        match self.endpoint.retry(incoming, &mut self.rx.tx_buf) {
            Ok(t) => {
                self.queue_response(queue, &t);
                self.shared.endpoint.stats.lock().unwrap().retried += 1;
            }
            // Already validated: retrying again is not allowed.
            Err(e) => self.endpoint.ignore(e.into_incoming()),
        }
    }

    fn close(&mut self, code: quinn_proto::VarInt, reason: bytes::Bytes, now: Instant) {
        self.closing_since.get_or_insert(now);
        let endpoint = self.shared.endpoint.clone();
        endpoint.closed.store(true, Ordering::Release);
        // Attempts still waiting for the application: refuse those this
        // engine received (the others refuse their own).
        let mine: Vec<Incoming> = {
            let mut waiting = endpoint.incoming.lock().unwrap();
            let (mine, theirs): (Vec<_>, Vec<_>) = waiting
                .drain(..)
                .partition(|i: &Incoming| Arc::ptr_eq(i.engine(), &self.shared));
            waiting.extend(theirs);
            mine
        };
        for mut incoming in mine {
            if let Some((inner, queue)) = incoming.take() {
                self.decided();
                self.refuse(inner, queue);
            }
        }
        endpoint.incoming_ready.notify_waiters();
        for (h, conn) in &self.conns {
            let mut st = conn.lock();
            st.inner.close(now, code, reason.clone());
            st.fail(ConnectionError::LocallyClosed);
            self.rx.touched.push(*h);
        }
    }

    /// Feeds every waiting datagram to its engine; returns how many were
    /// received here.
    fn receive(&mut self, now: Instant) -> usize {
        let Self {
            endpoint,
            queues,
            conns,
            rx,
            peers,
            outbox,
            ..
        } = self;
        let me = peers.index;
        let mut total = 0;
        for (qi, q) in queues.iter_mut().enumerate() {
            if !q.receives() {
                continue;
            }
            let via_kernel = !matches!(q.kind(), QueueKind::Xsk { .. });
            for _ in 0..BATCHES_PER_PASS {
                let result = q.recv(&mut |meta, data| {
                    let ecn = meta.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
                    let owner = peers.cids.route(data, me);
                    let datagram = rx.datagram(data);
                    if owner == me {
                        rx.handle(
                            endpoint,
                            conns,
                            now,
                            qi,
                            meta.remote,
                            meta.local.ip(),
                            ecn,
                            datagram,
                        );
                    } else {
                        outbox[owner].push(Forwarded {
                            remote: meta.remote,
                            local: meta.local.ip(),
                            ecn,
                            data: datagram,
                            via_kernel,
                        });
                    }
                });
                match result {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(e) => {
                        tracing::warn!(error = %e, queue = qi, "datapath receive failed");
                        break;
                    }
                }
            }
        }
        let mut forwarded = 0;
        for (owner, list) in outbox.iter_mut().enumerate() {
            if !list.is_empty() {
                forwarded += list.len() as u64;
                let engine = &peers.engines[owner];
                engine.inbox.lock().unwrap().append(list);
                engine.waker.wake();
            }
        }
        if forwarded > 0 {
            self.shared.endpoint.stats.lock().unwrap().forwarded += forwarded;
        }
        total
    }

    /// Handles what other engines received for connections owned here.
    fn receive_forwarded(&mut self, now: Instant) -> usize {
        let inbox = std::mem::take(&mut *self.shared.inbox.lock().unwrap());
        let n = inbox.len();
        for f in inbox {
            let queue = if f.via_kernel {
                self.kernel_queue
            } else {
                self.xdp_queue
            };
            self.rx.handle(
                &mut self.endpoint,
                &self.conns,
                now,
                queue,
                f.remote,
                f.local,
                f.ecn,
                f.data,
            );
        }
        n
    }

    /// Hands new connection attempts to the application, or answers them
    /// here: refused over the connection limit or while closing, asked to
    /// prove their address (Retry) when the policy says so.
    fn admit_new(&mut self) {
        for (incoming, queue) in std::mem::take(&mut self.rx.new_incoming) {
            let endpoint = self.shared.endpoint.clone();
            let open = endpoint.open_connections.load(Ordering::Relaxed);
            if self.closing_since.is_some() || open >= self.admission.max_connections {
                self.refuse(incoming, queue);
                continue;
            }
            let undecided = endpoint.undecided.load(Ordering::Relaxed);
            let retry = match self.admission.retry {
                RetryPolicy::Never => false,
                RetryPolicy::Always => true,
                RetryPolicy::WhenBusy { unvalidated } => {
                    undecided + self.handshaking >= unvalidated
                }
            };
            if retry && incoming.may_retry() {
                self.retry(incoming, queue);
                continue;
            }
            let incoming = Incoming::new(incoming, queue, self.shared.clone());
            endpoint.incoming.lock().unwrap().push_back(incoming);
            endpoint.incoming_ready.notify_one();
        }
    }

    fn collect_dirty_and_expired(&mut self, now: Instant) {
        self.rx
            .touched
            .append(&mut self.shared.dirty.lock().unwrap());
        while let Some(&(deadline, h)) = self.timers.first() {
            if deadline > now {
                break;
            }
            self.timers.pop_first();
            self.rx.touched.push(h);
        }
    }

    /// Runs one connection's state machine as far as it goes now; returns
    /// true if a transmit is waiting for room in the datapath.
    fn drive(&mut self, h: ConnectionHandle, now: Instant) -> bool {
        let Some(conn) = self.conns.get(&h).cloned() else {
            return false;
        };
        conn.clear_dirty();
        let mut st = conn.lock();
        if st.inner.poll_timeout().is_some_and(|t| t <= now) {
            st.inner.handle_timeout(now);
        }
        let was_connected = st.connected;
        let mut drained = false;
        let blocked = loop {
            while let Some(event) = st.inner.poll_endpoint_events() {
                drained |= event.is_drained();
                if let Some(event) = self.endpoint.handle_event(h, event) {
                    st.inner.handle_event(event);
                }
            }
            while let Some(event) = st.inner.poll() {
                st.dispatch(event);
            }
            match self.transmit(&mut st, now) {
                Transmitted::Nothing => break false,
                Transmitted::Blocked => break true,
                Transmitted::Some => {}
            }
        };
        if !was_connected && st.connected {
            self.handshaking -= 1;
        }
        if drained {
            if !st.connected {
                self.handshaking -= 1;
            }
            st.fail(ConnectionError::LocallyClosed);
            if let Some(t) = st.timer.take() {
                self.timers.remove(&(t, h));
            }
            drop(st);
            self.conns.remove(&h);
            let endpoint = &self.shared.endpoint;
            if endpoint.open_connections.fetch_sub(1, Ordering::Relaxed) == 1 {
                endpoint.idle.notify_waiters();
            }
            return false;
        }
        let next = st.inner.poll_timeout();
        if next != st.timer {
            if let Some(old) = st.timer {
                self.timers.remove(&(old, h));
            }
            if let Some(new) = next {
                self.timers.insert((new, h));
            }
            st.timer = next;
        }
        if blocked {
            // Try again next pass, once the queue has drained.
            self.rx.touched.push(h);
        }
        blocked
    }

    /// Moves the connection's datagrams into its queue until it has no
    /// more, or the queue no room.
    fn transmit(&mut self, st: &mut ConnState, now: Instant) -> Transmitted {
        let queue = &mut self.queues[st.queue];
        if let Some(p) = st.pending_transmit.take()
            && let Err(e) = queue.send(&p.as_transmit())
            && e.kind() == io::ErrorKind::WouldBlock
        {
            st.pending_transmit = Some(p);
            return Transmitted::Blocked;
        }
        let tx_buf = &mut self.rx.tx_buf;
        let mut sent_any = false;
        loop {
            tx_buf.clear();
            let Some(t) = st.inner.poll_transmit(now, queue.max_segments(), tx_buf) else {
                return if sent_any {
                    Transmitted::Some
                } else {
                    Transmitted::Nothing
                };
            };
            let contents = &tx_buf[..t.size];
            match queue.send(&wire_transmit(&t, contents)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Only a transmit that found no room is copied out.
                    st.pending_transmit = Some(pending(&t, contents));
                    return Transmitted::Blocked;
                }
                // Dropped and counted by the datapath; QUIC recovers.
                Err(e) => tracing::debug!(error = %e, "transmit dropped"),
            }
            sent_any = true;
        }
    }

    fn queue_response(&mut self, queue: usize, t: &quinn_proto::Transmit) {
        let p = pending(t, &self.rx.tx_buf[..t.size]);
        self.rx.responses.push((queue, p));
    }

    /// Stateless responses (Retry, refusals, version negotiation, resets)
    /// are sent best effort: a full queue drops them, the peer retries.
    fn send_responses(&mut self) {
        for (queue, p) in self.rx.responses.drain(..) {
            if let Err(e) = self.queues[queue].send(&p.as_transmit()) {
                tracing::debug!(error = %e, "stateless response dropped");
            }
        }
    }

    fn wait(&mut self, fds: &mut [libc::pollfd]) {
        let timeout = match self.timers.first() {
            Some(&(deadline, _)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Round up: waking early just loops back here.
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            }
            None => -1,
        };
        let timeout = match self.closing_since {
            Some(_) => timeout.clamp(0, 100),
            None => timeout,
        };
        // SAFETY: fds is a valid pollfd array for the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    }
}

enum Transmitted {
    Nothing,
    Some,
    Blocked,
}

fn pending(t: &quinn_proto::Transmit, contents: &[u8]) -> PendingTransmit {
    PendingTransmit {
        contents: contents.to_vec(),
        destination: t.destination,
        ecn: t.ecn,
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    }
}

/// quinn-proto's transmit in the datapath's terms.
fn wire_transmit<'a>(t: &quinn_proto::Transmit, contents: &'a [u8]) -> Transmit<'a> {
    Transmit {
        destination: t.destination,
        ecn: t.ecn.and_then(|e| WireEcn::from_bits(e as u8)),
        contents,
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    }
}

impl PendingTransmit {
    fn as_transmit(&self) -> Transmit<'_> {
        Transmit {
            destination: self.destination,
            ecn: self.ecn.and_then(|e| WireEcn::from_bits(e as u8)),
            contents: &self.contents,
            segment_size: self.segment_size,
            src_ip: self.src_ip,
        }
    }
}
