//! The engine's protocol core, without I/O: one `quinn_proto::Endpoint`
//! and its connections. It takes received datagrams and the time, and gives
//! transmits (into an [`Outbox`]), its next deadline, task wake-ups and new
//! connections. The engine thread (`engine`) drives it from the datapath's
//! queues; the fuzz harness drives it from memory, through the same calls.
//!
//! One pass, in the order the engine makes the calls:
//! 1. `run_commands`: decisions from the application (accept, refuse, close);
//! 2. `handle` for each received datagram, then `admit_new` for the new
//!    connection attempts (Retry, limits; `Endpoint::serve` accepts here);
//! 3. `collect_dirty_and_expired`: connections the API touched or whose
//!    timer fired;
//! 4. `process_touched` (events become task wake-ups) and, once the woken
//!    tasks have run, `drive_touched` (transmits) and `send_responses`.

use std::{
    collections::BTreeSet,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, OnceLock, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use datapath::{PacketIo, Transmit, io::EcnCodepoint as WireEcn};
use quinn_proto::{
    ConnectionError, ConnectionHandle, DatagramEvent, EcnCodepoint, Endpoint as ProtoEndpoint,
};
use rustc_hash::FxHashMap;

use crate::{
    Connecting, Connection, Incoming,
    builder::RetryPolicy,
    shared::lock,
    shared::{Command, ConnRef, ConnShared, ConnState, EngineShared, PendingTransmit},
};

/// How long a closing endpoint waits for its connections to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Datagrams one connection may send in a pass that other connections
/// share; the rest waits for the next, after the ACKs received meanwhile
/// (quinn's connection driver stops at 20). Whole congestion windows back
/// to back made the others wait behind each one and overran the peers'
/// socket buffers: the 1 MB HTTP/3 p99 was 1.6x quinn's. A connection
/// alone in its pass sends all it can, in the largest GSO batches (bulk
/// costs less CPU per MB so).
const TRANSMIT_BUDGET: usize = 32;

/// Where the core's transmits go: the engine's datapath queues, or memory.
pub(crate) trait Outbox {
    /// Queues `t` on `queue`. `WouldBlock`: no room now, offer it again
    /// later; any other error: dropped (QUIC recovers).
    fn send(&mut self, queue: usize, t: &Transmit<'_>) -> io::Result<()>;

    /// How many datagrams one `send` may carry as a GSO batch.
    fn max_segments(&self, queue: usize) -> usize;
}

impl Outbox for Vec<Box<dyn PacketIo>> {
    fn send(&mut self, queue: usize, t: &Transmit<'_>) -> io::Result<()> {
        // A peer whose next hop the kernel has not resolved yet is answered
        // through the kernel socket meanwhile.
        datapath::io::send_or_through_kernel(self, queue, t)
    }

    fn max_segments(&self, queue: usize) -> usize {
        self[queue].max_segments()
    }
}

/// Connection admission settings.
pub(crate) struct Admission {
    pub max_connections: usize,
    pub retry: RetryPolicy,
    /// A qlog trace per accepted connection.
    #[cfg(feature = "qlog")]
    pub qlog: Option<Arc<crate::qlog::QlogWriter>>,
}

/// What `Endpoint::serve` runs for each connection, on the engine thread
/// that owns it.
pub(crate) type Handler =
    Arc<dyn Fn(Connection) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

/// Set once by `Endpoint::serve`; read by every engine.
pub(crate) type ServeHandler = Arc<OnceLock<Handler>>;

pub(crate) struct EngineCore {
    endpoint: ProtoEndpoint,
    /// Fx: the handles are quinn-proto's own slab indices.
    conns: FxHashMap<ConnectionHandle, Arc<ConnShared>>,
    timers: BTreeSet<(Instant, ConnectionHandle)>,
    shared: Arc<EngineShared>,
    admission: Arc<Admission>,
    handler: ServeHandler,
    /// Accepted connections whose handshake has not completed.
    handshaking: usize,
    tx_buf: Vec<u8>,
    touched: Vec<ConnectionHandle>,
    /// Where in the touched connections the next pass starts.
    drive_rotation: usize,
    /// Datagrams the last `drive_touched` handed to the outbox.
    sent_in_drive: usize,
    /// Time spent accepting attempts that failed (undecryptable), for the
    /// engine's Initial budget.
    failed_attempts_time: Duration,
    new_incoming: Vec<(quinn_proto::Incoming, usize)>,
    responses: Vec<(usize, PendingTransmit)>,
    /// Connections accepted here for the serve handler, to be run.
    served: Vec<Connecting>,
    closing_since: Option<Instant>,
    /// Test-only: extra time every Initial costs.
    #[cfg(feature = "test-hooks")]
    slow_initials: Duration,
}

impl EngineCore {
    pub fn new(
        endpoint: ProtoEndpoint,
        shared: Arc<EngineShared>,
        admission: Arc<Admission>,
        handler: ServeHandler,
    ) -> Self {
        Self {
            endpoint,
            conns: FxHashMap::default(),
            timers: BTreeSet::new(),
            shared,
            admission,
            handler,
            handshaking: 0,
            tx_buf: Vec::with_capacity(64 * 1024),
            touched: Vec::new(),
            drive_rotation: 0,
            sent_in_drive: 0,
            failed_attempts_time: Duration::ZERO,
            new_incoming: Vec::new(),
            responses: Vec::new(),
            served: Vec::new(),
            closing_since: None,
            #[cfg(feature = "test-hooks")]
            slow_initials: Duration::ZERO,
        }
    }

    pub fn shared(&self) -> &Arc<EngineShared> {
        &self.shared
    }

    #[cfg(feature = "fuzzing")]
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The handler set by `Endpoint::serve`, if any.
    pub fn handler(&self) -> Option<&Handler> {
        self.handler.get()
    }

    /// Connections accepted for the handler since the last call.
    pub fn take_served(&mut self) -> std::vec::Drain<'_, Connecting> {
        self.served.drain(..)
    }

    /// One datagram received on `queue`, copied into a buffer of its own:
    /// what quinn-proto keeps of it (stream data waiting to be read) then
    /// holds that datagram's memory and no more.
    #[allow(clippy::too_many_arguments)]
    pub fn handle(
        &mut self,
        now: Instant,
        queue: usize,
        remote: SocketAddr,
        local: IpAddr,
        ecn: Option<EcnCodepoint>,
        data: &[u8],
    ) {
        self.handle_owned(now, queue, remote, local, ecn, owned_datagram(data));
    }

    /// Like `handle`, for a datagram already in a buffer of its own.
    pub fn handle_owned(
        &mut self,
        now: Instant,
        queue: usize,
        remote: SocketAddr,
        local: IpAddr,
        ecn: Option<EcnCodepoint>,
        datagram: BytesMut,
    ) {
        #[cfg(feature = "test-hooks")]
        if !self.slow_initials.is_zero() && crate::initial_budget::is_initial(&datagram) {
            std::thread::sleep(self.slow_initials);
        }
        self.tx_buf.clear();
        let event = self
            .endpoint
            .handle(now, remote, Some(local), ecn, datagram, &mut self.tx_buf);
        match event {
            Some(DatagramEvent::ConnectionEvent(h, event)) => {
                if let Some(conn) = self.conns.get(&h) {
                    let mut st = conn.lock();
                    st.queue = queue;
                    st.inner.handle_event(event);
                    self.touched.push(h);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                self.new_incoming.push((incoming, queue))
            }
            Some(DatagramEvent::Response(t)) => self.queue_response(queue, &t),
            None => {}
        }
    }

    /// Carries out what the application decided since the last pass.
    pub fn run_commands(&mut self, now: Instant) {
        let commands = std::mem::take(&mut *lock(&self.shared.commands));
        self.carry_out(commands, now);
    }

    /// The engine stops: the commands that came since the last pass are
    /// carried out (the endpoint is closing, so the attempts among them
    /// are refused) and later ones are dropped.
    pub fn run_last_commands(&mut self, now: Instant) {
        let commands = self.shared.stop_commands();
        self.carry_out(commands, now);
    }

    fn carry_out(&mut self, commands: Vec<Command>, now: Instant) {
        self.shared.decided(&commands);
        for command in commands {
            match command {
                Command::Accept {
                    incoming,
                    queue,
                    reply,
                } => {
                    let result = self.accept(incoming, queue, now).map(ConnRef::new);
                    // The caller may have given up waiting (its `Connecting`
                    // dropped): the reference comes back and, dropped,
                    // closes the connection.
                    let _ = reply.send(result);
                }
                Command::Serve(incoming, queue) => self.serve(incoming, queue, now),
                Command::Refuse(incoming, queue) => self.refuse(incoming, queue),
                Command::Retry(incoming, queue) => self.retry(incoming, queue),
                Command::Ignore(incoming) => self.endpoint.ignore(incoming),
                Command::Close { code, reason } => self.close(code, reason, now),
                #[cfg(feature = "test-hooks")]
                Command::Panic => panic!("test-only engine panic"),
                #[cfg(feature = "test-hooks")]
                Command::SlowInitials(extra) => self.slow_initials = extra,
            }
        }
    }

    fn accept(
        &mut self,
        incoming: quinn_proto::Incoming,
        queue: usize,
        now: Instant,
    ) -> Result<Arc<ConnShared>, ConnectionError> {
        // Looked at again: the application may decide long after the
        // attempt came, when the endpoint filled up or stopped accepting.
        if let Some(why) = self.refusal() {
            self.refuse(incoming, queue);
            return Err(why);
        }
        self.tx_buf.clear();
        #[cfg(feature = "qlog")]
        let config = self
            .admission
            .qlog
            .as_ref()
            .and_then(|q| q.server_config_for(incoming.remote_address(), now));
        #[cfg(not(feature = "qlog"))]
        let config = None;
        let started = Instant::now();
        match self
            .endpoint
            .accept(incoming, now, &mut self.tx_buf, config)
        {
            Ok((handle, conn)) => {
                let shared = ConnShared::new(handle, conn, queue, self.shared.clone());
                self.conns.insert(handle, shared.clone());
                self.handshaking += 1;
                let endpoint = &self.shared.endpoint;
                endpoint.open_connections.fetch_add(1, Ordering::Relaxed);
                lock(&endpoint.stats).accepted += 1;
                self.touched.push(handle);
                Ok(shared)
            }
            Err(e) => {
                // Garbage that looked like an Initial until decryption.
                self.failed_attempts_time += crate::initial_budget::chargeable(started.elapsed());
                if let Some(t) = e.response {
                    self.queue_response(queue, &t);
                }
                Err(e.cause)
            }
        }
    }

    fn refuse(&mut self, incoming: quinn_proto::Incoming, queue: usize) {
        self.tx_buf.clear();
        let t = self.endpoint.refuse(incoming, &mut self.tx_buf);
        self.queue_response(queue, &t);
        lock(&self.shared.endpoint.stats).refused += 1;
    }

    fn retry(&mut self, incoming: quinn_proto::Incoming, queue: usize) {
        self.tx_buf.clear();
        match self.endpoint.retry(incoming, &mut self.tx_buf) {
            Ok(t) => {
                self.queue_response(queue, &t);
                lock(&self.shared.endpoint.stats).retried += 1;
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
        for mut incoming in endpoint.take_attempts_of(&self.shared) {
            if let Some((inner, queue)) = incoming.take() {
                self.shared.decided_one();
                self.refuse(inner, queue);
            }
        }
        endpoint.incoming_ready.notify_waiters();
        for (h, conn) in &self.conns {
            let mut st = conn.lock();
            st.inner.close(now, code, reason.clone());
            st.fail(ConnectionError::LocallyClosed);
            self.touched.push(*h);
        }
    }

    /// Decides the new connection attempts: refused over the connection
    /// limit, while draining or while closing, asked to prove their address (Retry) when
    /// the policy says so; then accepted here for the serve handler, or
    /// handed to the application's `accept`.
    pub fn admit_new(&mut self, now: Instant) {
        for (incoming, queue) in std::mem::take(&mut self.new_incoming) {
            let endpoint = self.shared.endpoint.clone();
            if self.refusal().is_some() {
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
            if self.handler.get().is_none() {
                // Looked at again under the queue's lock: `Endpoint::serve`
                // sets the handler, then takes this queue under it, so an
                // attempt is either queued before that or served here.
                let mut waiting = lock(&endpoint.incoming);
                if self.handler.get().is_none() {
                    waiting.push_back(Incoming::new(incoming, queue, self.shared.clone()));
                    drop(waiting);
                    endpoint.incoming_ready.notify_one();
                    continue;
                }
            }
            self.serve(incoming, queue, now);
        }
    }

    /// Why a new connection must be refused now, if it must: closing,
    /// draining, or at the connection limit.
    fn refusal(&self) -> Option<ConnectionError> {
        let endpoint = &self.shared.endpoint;
        let refused = |reason: &str| {
            Some(ConnectionError::TransportError(
                quinn_proto::TransportError {
                    code: quinn_proto::TransportErrorCode::CONNECTION_REFUSED,
                    frame: None,
                    reason: reason.into(),
                },
            ))
        };
        if self.closing_since.is_some() {
            Some(ConnectionError::LocallyClosed)
        } else if endpoint.refusing.load(Ordering::Relaxed) {
            refused("the endpoint stopped accepting")
        } else if endpoint.open_connections.load(Ordering::Relaxed)
            >= self.admission.max_connections
        {
            refused("at the connection limit")
        } else {
            None
        }
    }

    /// Accepts an attempt for the serve handler (one that waited for
    /// `accept` when the handler was set is admitted again).
    fn serve(&mut self, incoming: quinn_proto::Incoming, queue: usize, now: Instant) {
        if let Ok(conn) = self.accept(incoming, queue, now) {
            self.served
                .push(Connecting::handshaking(ConnRef::new(conn)));
        }
    }

    /// Marks the connections the API touched, and those whose timer
    /// expired, for this pass.
    pub fn collect_dirty_and_expired(&mut self, now: Instant) {
        self.touched.append(&mut lock(&self.shared.dirty));
        while let Some(&(deadline, h)) = self.timers.first() {
            if deadline > now {
                break;
            }
            self.timers.pop_first();
            self.touched.push(h);
        }
    }

    /// Runs the touched connections' state machines without transmitting:
    /// their events become task wake-ups, so that the woken tasks can
    /// answer before `drive_touched` sends (ACK and response together).
    pub fn process_touched(&mut self, now: Instant) {
        self.touched.sort_unstable();
        self.touched.dedup();
        for i in 0..self.touched.len() {
            self.drive(self.touched[i], now, None);
        }
    }

    /// Runs every touched connection as far as it goes now, transmitting
    /// into `out`; returns true if a transmit waits for room there. Such
    /// a connection, and one that spent its budget (`TRANSMIT_BUDGET`),
    /// stays touched for the next pass (`has_more`).
    pub fn drive_touched(&mut self, now: Instant, out: &mut dyn Outbox) -> bool {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        touched.retain(|h| self.conns.contains_key(h));
        // A different connection goes first each pass: when the queues
        // fill up, the ones early in the order would otherwise take all
        // the room, pass after pass.
        if !touched.is_empty() {
            let first = self.drive_rotation % touched.len();
            touched.rotate_left(first);
            self.drive_rotation = self.drive_rotation.wrapping_add(1);
        }
        let budget = if touched.len() > 1 {
            TRANSMIT_BUDGET
        } else {
            usize::MAX
        };
        let mut blocked = false;
        self.sent_in_drive = 0;
        for h in touched.drain(..) {
            blocked |= self.drive(h, now, Some((&mut *out, budget)));
        }
        // Keep the allocation, with the connections queued for a retry.
        touched.append(&mut self.touched);
        self.touched = touched;
        blocked
    }

    /// One connection: timer, endpoint events, app events (wake-ups) and,
    /// with an outbox, its transmits, up to a budget of datagrams. True if
    /// a transmit found no room.
    fn drive(
        &mut self,
        h: ConnectionHandle,
        now: Instant,
        out: Option<(&mut dyn Outbox, usize)>,
    ) -> bool {
        let Some(conn) = self.conns.get(&h).cloned() else {
            return false;
        };
        if out.is_some() {
            conn.clear_dirty();
        }
        let mut st = conn.lock();
        if st.inner.poll_timeout().is_some_and(|t| t <= now) {
            st.inner.handle_timeout(now);
        }
        let was_connected = st.connected;
        let mut drained = false;
        let given = out.as_ref().map_or(0, |(_, budget)| *budget);
        let mut out = out;
        let mut more = false;
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
            // What is left of the budget carries over between rounds.
            let Some((out, budget)) = out.as_mut() else {
                break false;
            };
            match transmit(&mut st, now, &mut **out, budget, &mut self.tx_buf) {
                Transmitted::Nothing => break false,
                Transmitted::Blocked => break true,
                Transmitted::Budget => {
                    more = true;
                    break false;
                }
                Transmitted::Some => {}
            }
        };
        if let Some((_, left)) = &out {
            self.sent_in_drive += given - left;
        }
        let histograms = &self.shared.endpoint.histograms;
        if !was_connected && st.connected {
            self.handshaking -= 1;
            histograms.handshake_done(now.saturating_duration_since(st.accepted));
        }
        if drained {
            if st.connected {
                histograms.connection_ended(st.inner.rtt());
            } else {
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
        if blocked || more {
            // Try again next pass, once the queue has drained or the
            // other connections had their turn.
            self.touched.push(h);
        }
        blocked
    }

    fn queue_response(&mut self, queue: usize, t: &quinn_proto::Transmit) {
        let p = pending(t, &self.tx_buf[..t.size]);
        self.responses.push((queue, p));
    }

    /// Stateless responses (Retry, refusals, version negotiation, resets)
    /// are sent best effort: a full queue drops them, the peer retries.
    pub fn send_responses(&mut self, out: &mut dyn Outbox) {
        for (queue, p) in self.responses.drain(..) {
            if let Err(e) = out.send(queue, &p.as_transmit()) {
                tracing::debug!(error = %e, "stateless response dropped");
            }
        }
    }

    /// Time spent since the last call accepting attempts that failed, each
    /// capped as one Initial's charge is.
    pub fn take_failed_attempts_time(&mut self) -> Duration {
        std::mem::take(&mut self.failed_attempts_time)
    }

    /// Datagrams the last `drive_touched` handed to the outbox: whether a
    /// blocked pass still made progress.
    pub fn sent_in_last_drive(&self) -> usize {
        self.sent_in_drive
    }

    /// Connections left with something to send after `drive_touched`.
    pub fn has_more(&self) -> bool {
        !self.touched.is_empty()
    }

    /// When the earliest connection timer fires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _)| t)
    }

    pub fn is_closing(&self) -> bool {
        self.closing_since.is_some()
    }

    /// Closed, and every connection drained (or the drain limit passed).
    pub fn finished(&self, now: Instant) -> bool {
        self.closing_since.is_some_and(|since| {
            self.conns.is_empty() || now.saturating_duration_since(since) >= DRAIN_LIMIT
        })
    }
}

/// However the core goes (drained, stopped at the drain limit with
/// connections still open, a panic unwinding through the engine), its
/// connections end with it: their tasks wake with an error and the
/// endpoint stops counting them, so that `wait_idle` and `shutdown` return.
impl Drop for EngineCore {
    fn drop(&mut self) {
        let n = self.conns.len();
        for (_, conn) in self.conns.drain() {
            // Poison-tolerant: this also runs while a panic unwinds.
            conn.lock().fail(ConnectionError::LocallyClosed);
        }
        let endpoint = &self.shared.endpoint;
        if n > 0 && endpoint.open_connections.fetch_sub(n, Ordering::Relaxed) == n {
            endpoint.idle.notify_waiters();
        }
    }
}

/// A received datagram in a buffer sized to it.
fn owned_datagram(data: &[u8]) -> BytesMut {
    BytesMut::from(data)
}

enum Transmitted {
    Nothing,
    Some,
    Blocked,
    /// The budget is spent; there may be more.
    Budget,
}

/// Moves the connection's datagrams into `out` until it has no more, `out`
/// no room, or `budget` (datagrams, counted down here) is spent.
fn transmit(
    st: &mut ConnState,
    now: Instant,
    out: &mut dyn Outbox,
    budget: &mut usize,
    tx_buf: &mut Vec<u8>,
) -> Transmitted {
    let queue = st.queue;
    if let Some(p) = st.pending_transmit.take() {
        match out.send(queue, &p.as_transmit()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                st.pending_transmit = Some(p);
                return Transmitted::Blocked;
            }
            // Sent, or dropped and counted by the datapath.
            _ => *budget = budget.saturating_sub(segments(p.segment_size, p.contents.len())),
        }
    }
    let max_segments = out.max_segments(queue);
    let mut sent_any = false;
    loop {
        if *budget == 0 {
            return Transmitted::Budget;
        }
        tx_buf.clear();
        let Some(t) = st
            .inner
            .poll_transmit(now, max_segments.min(*budget), tx_buf)
        else {
            return if sent_any {
                Transmitted::Some
            } else {
                Transmitted::Nothing
            };
        };
        let contents = &tx_buf[..t.size];
        match out.send(queue, &wire_transmit(&t, contents)) {
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
        *budget = budget.saturating_sub(segments(t.segment_size, t.size));
    }
}

/// Datagrams in a transmit of `size` bytes.
fn segments(segment_size: Option<usize>, size: usize) -> usize {
    segment_size.map_or(1, |s| size.div_ceil(s.max(1)))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every datagram the core transmits, with its destination.
    #[derive(Default)]
    struct Recorder {
        datagrams: Vec<(SocketAddr, Vec<u8>)>,
    }

    impl Recorder {
        fn sent_to(&self, peer: SocketAddr) -> usize {
            self.datagrams.iter().filter(|(to, _)| *to == peer).count()
        }
    }

    impl Outbox for Recorder {
        fn send(&mut self, _queue: usize, t: &Transmit<'_>) -> io::Result<()> {
            let size = t.segment_size.unwrap_or(t.contents.len());
            let to = t.destination;
            self.datagrams
                .extend(t.contents.chunks(size).map(|d| (to, d.to_vec())));
            Ok(())
        }

        // Batches that do not divide the budget: a pass must stop at the
        // budget, not at the end of the batch that crosses it.
        fn max_segments(&self, _queue: usize) -> usize {
            7
        }
    }

    const SERVER: SocketAddr =
        SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)), 4433);

    /// A core whose connections' windows are so large that neither
    /// congestion control nor pacing stops a sender before the budget
    /// does; and its development CA.
    fn server_core() -> (EngineCore, rustls_pki_types::CertificateDer<'static>) {
        let mut transport = quinn_proto::TransportConfig::default();
        transport.congestion_controller_factory(Arc::new(
            quinn_proto::congestion::CubicConfig::default()
                .initial_window(8 << 20)
                .clone(),
        ));
        let mut builder = crate::EndpointBuilder::new(SERVER)
            .alpn(["echo"])
            .transport_config(transport);
        let quic = builder.quic_config().expect("development identity");
        let ca = quic.dev_ca.clone().expect("a development CA");
        let (mut protos, _) = quic.endpoints(1, None);
        let handler = ServeHandler::default();
        let accept_all: Handler = Arc::new(|_| Box::pin(async {}));
        let _ = handler.set(accept_all);
        let shared = Arc::new(EngineShared::new(Default::default()));
        let admission = Arc::new(builder.admission());
        let core = EngineCore::new(protos.remove(0), shared, admission, handler);
        (core, ca)
    }

    /// A quinn-proto client in memory, connected to the core by ferrying
    /// datagrams both ways.
    struct Client {
        addr: SocketAddr,
        endpoint: ProtoEndpoint,
        conn: quinn_proto::Connection,
        handle: ConnectionHandle,
    }

    impl Client {
        fn connect(
            core: &mut EngineCore,
            ca: &rustls_pki_types::CertificateDer<'static>,
            port: u16,
            now: &mut Instant,
            out: &mut Recorder,
        ) -> Self {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.clone()).expect("CA");
            let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
            tls.alpn_protocols = vec![b"echo".to_vec()];
            let config = quinn_proto::ClientConfig::new(Arc::new(
                quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS"),
            ));
            let mut endpoint = ProtoEndpoint::new(Default::default(), None, false, None);
            let (handle, conn) = endpoint
                .connect(*now, config, SERVER, "localhost")
                .expect("connect");
            let addr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), port);
            let mut client = Client {
                addr,
                endpoint,
                conn,
                handle,
            };
            for _ in 0..10 {
                *now += Duration::from_micros(100);
                client.send_to(core, *now, out);
                *now += Duration::from_micros(100);
                client.receive_from(*now, out);
            }
            assert!(!client.conn.is_handshaking(), "handshake completed");
            client
        }

        /// What the client sends, into the core, then one engine pass.
        fn send_to(&mut self, core: &mut EngineCore, now: Instant, out: &mut Recorder) {
            let mut buf = Vec::new();
            while let Some(t) = self.conn.poll_transmit(now, 1, &mut buf) {
                core.handle(now, 0, self.addr, SERVER.ip(), None, &buf[..t.size]);
                buf.clear();
            }
            core.admit_new(now);
            core.collect_dirty_and_expired(now);
            core.process_touched(now);
            core.drive_touched(now, out);
            core.send_responses(out);
        }

        /// What the core sent this client, into it.
        fn receive_from(&mut self, now: Instant, out: &mut Recorder) {
            let mut buf = Vec::new();
            let (mine, others) = out
                .datagrams
                .drain(..)
                .partition(|(to, _)| *to == self.addr);
            out.datagrams = others;
            for (_, d) in mine {
                let d = BytesMut::from(&d[..]);
                if let Some(DatagramEvent::ConnectionEvent(_, event)) =
                    self.endpoint.handle(now, SERVER, None, None, d, &mut buf)
                {
                    self.conn.handle_event(event);
                }
            }
            while let Some(event) = self.conn.poll_endpoint_events() {
                if let Some(event) = self.endpoint.handle_event(self.handle, event) {
                    self.conn.handle_event(event);
                }
            }
            while self.conn.poll().is_some() {}
        }
    }

    /// Every connection of the core writes `bytes` on a stream of its own.
    fn write_on_every_connection(core: &mut EngineCore, bytes: usize) {
        for (&h, conn) in &core.conns {
            let mut st = conn.lock();
            let id = st
                .inner
                .streams()
                .open(quinn_proto::Dir::Uni)
                .expect("a stream");
            let written = st
                .inner
                .send_stream(id)
                .write(&vec![7u8; bytes])
                .expect("write");
            assert_eq!(written, bytes, "flow control allows it all");
            core.touched.push(h);
        }
    }

    /// Connections sharing passes send at most `TRANSMIT_BUDGET` datagrams
    /// each per pass, and stay touched (`has_more`) until done.
    #[test]
    fn connections_sharing_a_pass_send_at_most_their_budget() {
        let (mut core, ca) = server_core();
        let (mut now, mut out) = (Instant::now(), Recorder::default());
        let a = Client::connect(&mut core, &ca, 5000, &mut now, &mut out);
        let b = Client::connect(&mut core, &ca, 5001, &mut now, &mut out);
        out.datagrams.clear();
        write_on_every_connection(&mut core, 256 << 10);
        let (mut passes, mut total) = (0, [0, 0]);
        loop {
            now += Duration::from_micros(100);
            let sharing = core.touched.len() > 1;
            core.drive_touched(now, &mut out);
            for (i, peer) in [a.addr, b.addr].into_iter().enumerate() {
                let sent = out.sent_to(peer);
                if sharing {
                    assert!(sent <= TRANSMIT_BUDGET, "pass {passes}: {sent} to {peer}");
                }
                total[i] += sent;
            }
            passes += 1;
            out.datagrams.clear();
            if !core.has_more() {
                break;
            }
            assert!(passes < 100, "the streams are sent");
        }
        for sent in total {
            assert!(sent >= (256 << 10) / 1500, "{sent} datagrams");
        }
        assert!(passes > 2, "{passes} passes");
    }

    /// A connection alone in its pass sends all it can: bulk keeps its
    /// large GSO batches.
    #[test]
    fn a_connection_alone_sends_beyond_the_budget() {
        let (mut core, ca) = server_core();
        let (mut now, mut out) = (Instant::now(), Recorder::default());
        let a = Client::connect(&mut core, &ca, 5000, &mut now, &mut out);
        out.datagrams.clear();
        write_on_every_connection(&mut core, 64 << 10);
        now += Duration::from_micros(100);
        core.drive_touched(now, &mut out);
        let sent = out.sent_to(a.addr);
        assert!(sent > TRANSMIT_BUDGET, "{sent} datagrams");
        assert!(!core.has_more(), "all sent in one pass");
    }

    /// Takes `room` datagrams per pass, then reports itself full.
    struct FullOutbox {
        recorder: Recorder,
        room: usize,
    }

    impl Outbox for FullOutbox {
        fn send(&mut self, queue: usize, t: &Transmit<'_>) -> io::Result<()> {
            let count = segments(t.segment_size, t.contents.len());
            if count > self.room {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room -= count;
            self.recorder.send(queue, t)
        }

        fn max_segments(&self, _queue: usize) -> usize {
            1
        }
    }

    /// When the queues stay full, every connection still gets its turn:
    /// the one first in handle order does not take all the room.
    #[test]
    fn a_full_queue_is_shared_by_every_connection_in_turn() {
        let (mut core, ca) = server_core();
        let (mut now, mut out) = (Instant::now(), Recorder::default());
        let clients: Vec<Client> = (0..3)
            .map(|i| Client::connect(&mut core, &ca, 5000 + i, &mut now, &mut out))
            .collect();
        write_on_every_connection(&mut core, 256 << 10);
        let mut full = FullOutbox {
            recorder: Recorder::default(),
            room: 0,
        };
        // Room for 10 datagrams a pass: less than one budget.
        let mut first_sent = vec![None; clients.len()];
        for pass in 0..clients.len() {
            now += Duration::from_micros(100);
            full.room = 10;
            assert!(core.drive_touched(now, &mut full), "blocked");
            // Blocked, but not stalled: the engine goes on at once.
            assert_eq!(core.sent_in_last_drive(), 10);
            for (i, c) in clients.iter().enumerate() {
                if full.recorder.sent_to(c.addr) > 0 {
                    first_sent[i].get_or_insert(pass);
                }
            }
            full.recorder.datagrams.clear();
        }
        assert!(
            first_sent.iter().all(Option::is_some),
            "passes at which each connection first sent: {first_sent:?}"
        );
        // No room at all: blocked and stalled (the engine backs off).
        full.room = 0;
        assert!(core.drive_touched(now, &mut full));
        assert_eq!(core.sent_in_last_drive(), 0);
    }

    /// A few retained bytes of a datagram must not pin a large shared
    /// arena: each datagram's buffer is its own, sized to it.
    #[test]
    fn a_received_datagram_owns_a_buffer_of_its_size() {
        let a = owned_datagram(&[1u8; 1200]);
        let b = owned_datagram(&[2u8; 40]);
        assert!(a.capacity() < 2 * 1200, "{}", a.capacity());
        assert!(b.capacity() < 2 * 40 + 64, "{}", b.capacity());
        // Slices quinn-proto keeps (frozen stream data) share only their own
        // datagram's allocation.
        let kept = b.freeze().slice(0..10);
        assert_eq!(&kept[..], &[2u8; 10]);
    }
}
