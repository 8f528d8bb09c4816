//! HTTP/3 over quic-xdp: the `h3` crate's QUIC traits for our connections
//! and streams (what h3-quinn does for quinn). Enable the `h3` feature and
//! wrap an accepted connection:
//!
//! ```no_run
//! # async fn serve(conn: quic_xdp::Connection) -> Result<(), Box<dyn std::error::Error>> {
//! let mut h3 = h3::server::Connection::<_, bytes::Bytes>::new(quic_xdp::h3::H3Connection::new(conn)).await?;
//! while let Some(resolver) = h3.accept().await? {
//!     let (request, mut stream) = resolver.resolve_request().await?;
//!     stream.send_response(http::Response::new(())).await?;
//!     stream.send_data(bytes::Bytes::from_static(b"hello")).await?;
//!     stream.finish().await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! h3 buffers a HEADERS frame, and any frame type it does not know, whole,
//! whatever length it declares. These streams refuse such a frame when it
//! is longer than [`H3Connection::max_field_section_size`] (64 KiB unless
//! set), with H3_EXCESSIVE_LOAD, before h3 buffers it; give h3's server
//! builder the same value, and h3 answers 431 to sections that decode to
//! more.

mod frame_limit;

use std::{
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use quinn_proto::{ConnectionError, Dir, VarInt};

use crate::{Connection, RecvStream, SendStream, streams::ReadError, streams::WriteError};
use frame_limit::{FrameLimit, FrameTooLarge};

/// A quic-xdp connection as h3 sees it.
pub struct H3Connection {
    opener: H3Opener,
}

/// The default of [`H3Connection::max_field_section_size`].
pub const DEFAULT_MAX_FIELD_SECTION_SIZE: u64 = 64 * 1024;

impl H3Connection {
    /// Wraps an established connection for `h3::server::Connection::new`.
    pub fn new(conn: Connection) -> Self {
        Self {
            opener: H3Opener {
                conn,
                max_frame: DEFAULT_MAX_FIELD_SECTION_SIZE,
            },
        }
    }

    /// The longest HEADERS (or unknown) frame a peer may send, in bytes;
    /// a stream with a longer one is refused with H3_EXCESSIVE_LOAD before
    /// h3 buffers it. Use the value given to h3's `max_field_section_size`.
    pub fn max_field_section_size(mut self, bytes: u64) -> Self {
        self.opener.max_frame = bytes;
        self
    }
}

/// Opens streams on the connection; h3 keeps one per request sender.
#[derive(Clone)]
pub struct H3Opener {
    conn: Connection,
    max_frame: u64,
}

impl<B: Buf> quic::Connection<B> for H3Connection {
    type RecvStream = H3RecvStream;
    type OpenStreams = H3Opener;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<H3RecvStream, ConnectionErrorIncoming>> {
        let conn = &self.opener.conn;
        let id = ready!(conn.poll_accept(cx, Dir::Uni)).map_err(connection_error)?;
        Poll::Ready(Ok(H3RecvStream::new(
            RecvStream::new(conn.conn_ref().clone(), id),
            FrameLimit::unidirectional(self.opener.max_frame),
        )))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<H3BidiStream<B>, ConnectionErrorIncoming>> {
        let conn = &self.opener.conn;
        let id = ready!(conn.poll_accept(cx, Dir::Bi)).map_err(connection_error)?;
        Poll::Ready(Ok(H3BidiStream::new(conn, id, self.opener.max_frame)))
    }

    fn opener(&self) -> H3Opener {
        self.opener.clone()
    }
}

impl<B: Buf> quic::OpenStreams<B> for H3Connection {
    type BidiStream = H3BidiStream<B>;
    type SendStream = H3SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<H3BidiStream<B>, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_bidi(&mut self.opener, cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<H3SendStream<B>, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_send(&mut self.opener, cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        quic::OpenStreams::<B>::close(&mut self.opener, code, reason)
    }
}

impl<B: Buf> quic::OpenStreams<B> for H3Opener {
    type BidiStream = H3BidiStream<B>;
    type SendStream = H3SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<H3BidiStream<B>, StreamErrorIncoming>> {
        let id = ready!(self.conn.poll_open(cx, Dir::Bi)).map_err(stream_connection_error)?;
        Poll::Ready(Ok(H3BidiStream::new(&self.conn, id, self.max_frame)))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<H3SendStream<B>, StreamErrorIncoming>> {
        let id = ready!(self.conn.poll_open(cx, Dir::Uni)).map_err(stream_connection_error)?;
        Poll::Ready(Ok(H3SendStream::new(SendStream::new(
            self.conn.conn_ref().clone(),
            id,
        ))))
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        let code = VarInt::from_u64(code.value()).unwrap_or(VarInt::MAX);
        if code == H3_NO_ERROR {
            // A graceful end (h3 drops its connection after the last
            // response): the responses still in flight must arrive.
            self.conn.close_when_flushed(code, reason);
        } else {
            self.conn.close(code, reason);
        }
    }
}

/// Frames up to this size go to quinn-proto as one copied `Bytes`;
/// larger ones piece by piece, each copied as flow control takes it.
const GATHER_LIMIT: usize = 16 * 1024;

/// Sending half: h3 hands over one buffer at a time (`send_data`) and
/// drives it out with `poll_ready`.
pub struct H3SendStream<B: Buf> {
    stream: SendStream,
    writing: Option<WriteBuf<B>>,
    /// A small frame copied whole out of `writing`, still to be written.
    gathered: Bytes,
    /// Whether h3 ever wrote to, finished or reset it: one dropped before
    /// carries no response at all, and is reset rather than ended as if
    /// complete.
    used: bool,
}

impl<B: Buf> H3SendStream<B> {
    fn new(stream: SendStream) -> Self {
        Self {
            stream,
            writing: None,
            gathered: Bytes::new(),
            used: false,
        }
    }
}

impl<B: Buf> Drop for H3SendStream<B> {
    fn drop(&mut self) {
        // E.g. a request whose headers never came in time: RFC 9114 8.1.
        if !self.used {
            let _ = self.stream.reset(H3_REQUEST_CANCELLED);
        }
    }
}

impl<B: Buf> quic::SendStream<B> for H3SendStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        loop {
            if !self.gathered.is_empty() {
                ready!(self.stream.poll_write_chunk(cx, &mut self.gathered))
                    .map_err(write_error)?;
                continue;
            }
            let Some(data) = &mut self.writing else { break };
            let remaining = data.remaining();
            if remaining == 0 {
                self.writing = None;
                break;
            }
            if data.chunk().len() < remaining && remaining <= GATHER_LIMIT {
                // A frame header and a small payload: one copy and one
                // write, where writing each piece would copy each.
                self.gathered = data.copy_to_bytes(remaining);
            } else {
                let n =
                    ready!(self.stream.poll_write_buf(cx, data.chunk())).map_err(write_error)?;
                data.advance(n);
            }
        }
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.writing.is_some() {
            return Err(StreamErrorIncoming::Unknown(
                "send_data before the previous data was sent".into(),
            ));
        }
        self.writing = Some(data.into());
        self.used = true;
        Ok(())
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.used = true;
        ready!(quic::SendStream::<B>::poll_ready(self, cx))?;
        self.stream
            .finish()
            .map_err(|e| StreamErrorIncoming::Unknown(Box::new(e)))?;
        Poll::Ready(Ok(()))
    }

    fn reset(&mut self, reset_code: u64) {
        self.used = true;
        let _ = self
            .stream
            .reset(VarInt::from_u64(reset_code).unwrap_or(VarInt::MAX));
    }

    fn send_id(&self) -> StreamId {
        stream_id(self.stream.id())
    }
}

/// Receiving half.
pub struct H3RecvStream {
    stream: RecvStream,
    limit: FrameLimit,
    /// The rest of a chunk, after the piece h3 got (see `FrameLimit`).
    pending: Option<Bytes>,
    /// A request stream's sending half, to refuse the request whole.
    reply: Option<SendStream>,
}

impl H3RecvStream {
    fn new(mut stream: RecvStream, limit: FrameLimit) -> Self {
        // A request the server stops reading early is no error (RFC 9114
        // 4.1.2); code 0 would be read as one.
        stream.set_drop_code(H3_NO_ERROR);
        Self {
            stream,
            limit,
            pending: None,
            reply: None,
        }
    }

    /// Ends both directions: the peer sent a frame h3 would buffer whole
    /// beyond the limit.
    fn refuse(&mut self, too_large: FrameTooLarge) -> StreamErrorIncoming {
        tracing::debug!(stream = %self.stream.id(), ?too_large, "frame over the limit");
        let _ = self.stream.stop(H3_EXCESSIVE_LOAD);
        if let Some(reply) = &mut self.reply {
            // Not a response already finished (h3 may read on after it).
            reply.reset_unless_finished(H3_EXCESSIVE_LOAD);
        }
        StreamErrorIncoming::StreamTerminated {
            error_code: H3_EXCESSIVE_LOAD.into_inner(),
        }
    }
}

/// RFC 9114 8.1.
const H3_NO_ERROR: VarInt = VarInt::from_u32(0x100);
const H3_REQUEST_CANCELLED: VarInt = VarInt::from_u32(0x10c);
const H3_EXCESSIVE_LOAD: VarInt = VarInt::from_u32(0x107);

impl quic::RecvStream for H3RecvStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let mut chunk = match self.pending.take() {
            Some(rest) => rest,
            None => match ready!(self.stream.poll_chunk(cx, usize::MAX)).map_err(read_error)? {
                Some(chunk) => chunk,
                None => return Poll::Ready(Ok(None)),
            },
        };
        match self.limit.next_piece(&chunk) {
            Ok(n) => {
                let piece = chunk.split_to(n);
                if !chunk.is_empty() {
                    self.pending = Some(chunk);
                }
                Poll::Ready(Ok(Some(piece)))
            }
            Err(too_large) => Poll::Ready(Err(self.refuse(too_large))),
        }
    }

    fn stop_sending(&mut self, error_code: u64) {
        let _ = self
            .stream
            .stop(VarInt::from_u64(error_code).unwrap_or(VarInt::MAX));
    }

    fn recv_id(&self) -> StreamId {
        stream_id(self.stream.id())
    }
}

/// Both halves of a request stream.
pub struct H3BidiStream<B: Buf> {
    send: H3SendStream<B>,
    recv: H3RecvStream,
}

impl<B: Buf> H3BidiStream<B> {
    fn new(conn: &Connection, id: quinn_proto::StreamId, max_frame: u64) -> Self {
        let mut recv = H3RecvStream::new(
            RecvStream::new(conn.conn_ref().clone(), id),
            FrameLimit::request(max_frame),
        );
        let mut reply = SendStream::new(conn.conn_ref().clone(), id);
        // Only ever resets; dropping it must not finish the response.
        reply.forget();
        recv.reply = Some(reply);
        Self {
            send: H3SendStream::new(SendStream::new(conn.conn_ref().clone(), id)),
            recv,
        }
    }
}

impl<B: Buf> quic::BidiStream<B> for H3BidiStream<B> {
    type SendStream = H3SendStream<B>;
    type RecvStream = H3RecvStream;

    fn split(self) -> (H3SendStream<B>, H3RecvStream) {
        (self.send, self.recv)
    }
}

impl<B: Buf> quic::SendStream<B> for H3BidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }
    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }
    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code)
    }
    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

impl<B: Buf> quic::RecvStream for H3BidiStream<B> {
    type Buf = Bytes;
    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }
    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code)
    }
    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

fn stream_id(id: quinn_proto::StreamId) -> StreamId {
    StreamId::try_from(u64::from(id)).expect("QUIC stream ids fit h3's")
}

fn connection_error(e: ConnectionError) -> ConnectionErrorIncoming {
    match e {
        ConnectionError::ApplicationClosed(close) => ConnectionErrorIncoming::ApplicationClose {
            error_code: close.error_code.into_inner(),
        },
        ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        other => ConnectionErrorIncoming::Undefined(Arc::new(other)),
    }
}

fn stream_connection_error(e: ConnectionError) -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming {
        connection_error: connection_error(e),
    }
}

fn write_error(e: WriteError) -> StreamErrorIncoming {
    match e {
        WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        WriteError::ConnectionLost(e) => stream_connection_error(e),
        e @ WriteError::ClosedStream => StreamErrorIncoming::Unknown(Box::new(e)),
    }
}

fn read_error(e: ReadError) -> StreamErrorIncoming {
    match e {
        ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        ReadError::ConnectionLost(e) => stream_connection_error(e),
        e @ ReadError::ClosedStream => StreamErrorIncoming::Unknown(Box::new(e)),
    }
}
