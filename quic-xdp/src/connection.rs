//! Connections as the application sees them: incoming attempts to accept,
//! refuse or retry, handshakes in progress, and established connections.

use std::{
    future::{Future, poll_fn},
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use bytes::Bytes;
use quinn_proto::{ConnectionError, ConnectionStats, Dir, VarInt};
use tokio::sync::oneshot;

use crate::{
    shared::{Command, ConnRef, EngineShared, wait_for},
    streams::{RecvStream, SendStream},
};

/// A connection attempt, waiting for the application to decide. Dropping
/// it refuses the attempt.
pub struct Incoming {
    /// Boxed: quinn-proto's attempt is large, and `Incoming` moves around.
    inner: Option<(Box<quinn_proto::Incoming>, usize)>,
    engine: Arc<EngineShared>,
}

impl Incoming {
    pub(crate) fn new(
        inner: quinn_proto::Incoming,
        queue: usize,
        engine: Arc<EngineShared>,
    ) -> Self {
        engine.endpoint.undecided.fetch_add(1, Ordering::Relaxed);
        Self {
            inner: Some((Box::new(inner), queue)),
            engine,
        }
    }

    /// The engine that received the attempt, and must decide it.
    pub(crate) fn engine(&self) -> &Arc<EngineShared> {
        &self.engine
    }

    /// Takes the attempt out to decide it. It stays counted as undecided
    /// until the engine carries the decision out, or drops it for good
    /// (`EngineShared::decided`), so attempts on their way to the engine
    /// still count against Retry.
    pub(crate) fn take(&mut self) -> Option<(quinn_proto::Incoming, usize)> {
        let (incoming, queue) = self.inner.take()?;
        Some((*incoming, queue))
    }

    fn proto(&self) -> &quinn_proto::Incoming {
        &self.inner.as_ref().expect("decided once").0
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.proto().remote_address()
    }

    /// The address the attempt was sent to.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.proto().local_ip()
    }

    /// Whether the peer proved it owns its address (a Retry token).
    pub fn remote_address_validated(&self) -> bool {
        self.proto().remote_address_validated()
    }

    /// Whether [`retry`](Self::retry) is allowed.
    pub fn may_retry(&self) -> bool {
        self.proto().may_retry()
    }

    /// Accepts the attempt; await the result for the established
    /// connection. Admission is looked at again when the engine carries
    /// this out: an endpoint that stopped accepting, or that reached its
    /// connection limit meanwhile, refuses it (CONNECTION_REFUSED), and a
    /// closed one fails it (`LocallyClosed`). Dropping the `Connecting`
    /// before it resolves closes the connection.
    pub fn accept(mut self) -> Connecting {
        let (incoming, queue) = self.take().expect("decided once");
        let (reply, rx) = oneshot::channel();
        self.engine.command(Command::Accept {
            incoming,
            queue,
            reply,
        });
        Connecting {
            state: ConnectingState::Accepting(rx),
        }
    }

    /// Hands the attempt to the serve handler (`Endpoint::serve`).
    pub(crate) fn serve(mut self) {
        let (incoming, queue) = self.take().expect("decided once");
        self.engine.command(Command::Serve(incoming, queue));
    }

    /// Answers with CONNECTION_REFUSED.
    pub fn refuse(mut self) {
        let (incoming, queue) = self.take().expect("decided once");
        self.engine.command(Command::Refuse(incoming, queue));
    }

    /// Asks the peer to prove its address with a Retry packet; fails (and
    /// gives the attempt back) when it already did.
    pub fn retry(mut self) -> Result<(), Incoming> {
        if !self.may_retry() {
            return Err(self);
        }
        let (incoming, queue) = self.take().expect("decided once");
        self.engine.command(Command::Retry(incoming, queue));
        Ok(())
    }

    /// Drops the attempt without a word to the peer.
    pub fn ignore(mut self) {
        let (incoming, _) = self.take().expect("decided once");
        self.engine.command(Command::Ignore(incoming));
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some((incoming, queue)) = self.take() {
            self.engine.command(Command::Refuse(incoming, queue));
        }
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Incoming");
        if let Some((i, _)) = &self.inner {
            d.field("remote", &i.remote_address());
        }
        d.finish_non_exhaustive()
    }
}

/// A connection being accepted: resolves once the handshake completes.
pub struct Connecting {
    state: ConnectingState,
}

impl Connecting {
    /// A connection the engine accepted itself (`Endpoint::serve`).
    pub(crate) fn handshaking(conn: ConnRef) -> Self {
        Self {
            state: ConnectingState::Handshaking(conn),
        }
    }
}

enum ConnectingState {
    Accepting(oneshot::Receiver<Result<ConnRef, ConnectionError>>),
    Handshaking(ConnRef),
    Done,
}

impl Future for Connecting {
    type Output = Result<Connection, ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut self.state {
                ConnectingState::Accepting(rx) => {
                    let result = ready!(Pin::new(rx).poll(cx))
                        .unwrap_or(Err(ConnectionError::LocallyClosed));
                    self.state = ConnectingState::Handshaking(result?);
                }
                ConnectingState::Handshaking(conn) => {
                    let mut st = conn.lock();
                    if let Some(e) = &st.error {
                        let e = e.clone();
                        drop(st);
                        self.state = ConnectingState::Done;
                        return Poll::Ready(Err(e));
                    }
                    if !st.connected {
                        st.on_connected = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    drop(st);
                    let ConnectingState::Handshaking(conn) =
                        std::mem::replace(&mut self.state, ConnectingState::Done)
                    else {
                        unreachable!()
                    };
                    return Poll::Ready(Ok(Connection(conn)));
                }
                ConnectingState::Done => panic!("Connecting polled after completion"),
            }
        }
    }
}

/// Why `Connection::send_datagram` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendDatagramError {
    /// The peer did not advertise datagram support.
    #[error("the peer does not accept datagrams")]
    UnsupportedByPeer,
    /// Datagrams are disabled in the local transport configuration.
    #[error("datagrams are disabled locally")]
    Disabled,
    /// The datagram exceeds `Connection::max_datagram_size`.
    #[error("the datagram is larger than the connection allows")]
    TooLarge,
    /// The datagram send buffer is full.
    #[error("the datagram send buffer is full")]
    Blocked,
    /// The connection has ended.
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
}

impl From<quinn_proto::SendDatagramError> for SendDatagramError {
    fn from(e: quinn_proto::SendDatagramError) -> Self {
        match e {
            quinn_proto::SendDatagramError::UnsupportedByPeer => Self::UnsupportedByPeer,
            quinn_proto::SendDatagramError::Disabled => Self::Disabled,
            quinn_proto::SendDatagramError::TooLarge => Self::TooLarge,
            quinn_proto::SendDatagramError::Blocked(_) => Self::Blocked,
        }
    }
}

/// An established QUIC connection. Cheap to clone; the connection closes
/// (code 0) when the last clone and stream are dropped.
#[derive(Clone)]
pub struct Connection(pub(crate) ConnRef);

impl Connection {
    /// Opens a bidirectional stream, waiting for the peer's stream limit.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let id = self.open(Dir::Bi).await?;
        Ok((
            SendStream::new(self.0.clone(), id),
            RecvStream::new(self.0.clone(), id),
        ))
    }

    /// Opens a unidirectional (send-only) stream, waiting for the peer's
    /// stream limit.
    pub async fn open_uni(&self) -> Result<SendStream, ConnectionError> {
        let id = self.open(Dir::Uni).await?;
        Ok(SendStream::new(self.0.clone(), id))
    }

    /// The next bidirectional stream the peer opens.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let id = self.accept(Dir::Bi).await?;
        Ok((
            SendStream::new(self.0.clone(), id),
            RecvStream::new(self.0.clone(), id),
        ))
    }

    /// The next unidirectional stream the peer opens.
    pub async fn accept_uni(&self) -> Result<RecvStream, ConnectionError> {
        let id = self.accept(Dir::Uni).await?;
        Ok(RecvStream::new(self.0.clone(), id))
    }

    async fn open(&self, dir: Dir) -> Result<quinn_proto::StreamId, ConnectionError> {
        poll_fn(|cx| self.poll_open(cx, dir)).await
    }

    async fn accept(&self, dir: Dir) -> Result<quinn_proto::StreamId, ConnectionError> {
        poll_fn(|cx| self.poll_accept(cx, dir)).await
    }

    /// Opens a stream if the peer's limit allows, else registers to be
    /// woken when it does.
    pub(crate) fn poll_open(
        &self,
        cx: &mut Context<'_>,
        dir: Dir,
    ) -> Poll<Result<quinn_proto::StreamId, ConnectionError>> {
        let mut st = self.0.lock();
        if let Some(e) = &st.error {
            return Poll::Ready(Err(e.clone()));
        }
        if let Some(id) = st.inner.streams().open(dir) {
            drop(st);
            self.0.wake_engine();
            return Poll::Ready(Ok(id));
        }
        st.wait_available(dir, cx.waker());
        Poll::Pending
    }

    /// The next stream the peer opened, else registers to be woken.
    pub(crate) fn poll_accept(
        &self,
        cx: &mut Context<'_>,
        dir: Dir,
    ) -> Poll<Result<quinn_proto::StreamId, ConnectionError>> {
        let mut st = self.0.lock();
        if let Some(id) = st.inner.streams().accept(dir) {
            // Accepting raises the peer's stream credit.
            drop(st);
            self.0.wake_engine();
            return Poll::Ready(Ok(id));
        }
        if let Some(e) = &st.error {
            return Poll::Ready(Err(e.clone()));
        }
        st.wait_opened(dir, cx.waker());
        Poll::Pending
    }

    #[cfg(feature = "h3")]
    pub(crate) fn conn_ref(&self) -> &ConnRef {
        &self.0
    }

    /// Sends an unreliable datagram (RFC 9221), if the peer allows them.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), SendDatagramError> {
        self.0.edit(|st| match &st.error {
            Some(e) => Err(SendDatagramError::ConnectionLost(e.clone())),
            // Drop the oldest queued datagram rather than block.
            None => Ok(st.inner.datagrams().send(data, true)?),
        })
    }

    /// The next unreliable datagram received from the peer.
    pub async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        let notify = self.0.lock().on_datagram.clone();
        wait_for(&notify, || {
            let mut st = self.0.lock();
            if let Some(d) = st.inner.datagrams().recv() {
                return Some(Ok(d));
            }
            st.error.clone().map(Err)
        })
        .await
    }

    /// The largest datagram `send_datagram` accepts now, if any.
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.0.lock().inner.datagrams().max_size()
    }

    /// Closes the connection with an application error code and reason.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        self.0.edit(|st| {
            if st.error.is_none() {
                st.inner
                    .close(Instant::now(), code, Bytes::copy_from_slice(reason));
                st.fail(ConnectionError::LocallyClosed);
            }
        });
    }

    /// Closes with `code` once the peer has acknowledged everything sent
    /// on the streams this side finished (a response written and
    /// finished just before is not lost), or at once if there is nothing
    /// outstanding. Streams not finished are not waited for.
    pub fn close_when_flushed(&self, code: VarInt, reason: &[u8]) {
        self.0
            .edit(|st| st.close_when_flushed(code, Bytes::copy_from_slice(reason)));
    }

    /// Resolves when the connection ends, with the reason.
    pub async fn closed(&self) -> ConnectionError {
        let notify = self.0.lock().on_closed.clone();
        wait_for(&notify, || self.0.lock().error.clone()).await
    }

    /// Why the connection ended, if it did.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.0.lock().error.clone()
    }

    /// The peer's current address (it may change on migration).
    pub fn remote_address(&self) -> SocketAddr {
        self.0.lock().inner.remote_address()
    }

    /// The local address the peer talks to.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.0.lock().inner.local_ip()
    }

    /// The current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.0.lock().inner.rtt()
    }

    /// Packets, bytes, losses, congestion and path figures.
    pub fn stats(&self) -> ConnectionStats {
        self.0.lock().inner.stats()
    }

    /// The ALPN protocol agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        let st = self.0.lock();
        let data = st.inner.crypto_session().handshake_data()?;
        let data = data
            .downcast::<quinn_proto::crypto::rustls::HandshakeData>()
            .ok()?;
        data.protocol
    }

    /// Identifies the connection within this endpoint for as long as it
    /// lives.
    pub fn stable_id(&self) -> usize {
        Arc::as_ptr(&self.0.0) as usize
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.remote_address())
            .finish_non_exhaustive()
    }
}
