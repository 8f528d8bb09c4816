//! Stream handles: `SendStream` (AsyncWrite) and `RecvStream` (AsyncRead).
//!
//! Each operation works on the connection's `quinn_proto` state directly;
//! a write that queued data, or a read that freed flow-control credit,
//! marks the connection dirty so the engine transmits.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use quinn_proto::{ClosedStream, ConnectionError, FinishError, ReadableError, StreamId, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::shared::ConnRef;

/// Why a write to a `SendStream` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The peer sent STOP_SENDING with this code.
    #[error("the peer stopped the stream with code {0}")]
    Stopped(VarInt),
    /// The connection has ended.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] ConnectionError),
    /// The stream was already finished or reset.
    #[error("the stream was already finished or reset")]
    ClosedStream,
}

/// Why a read from a `RecvStream` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The peer sent RESET_STREAM with this code.
    #[error("the peer reset the stream with code {0}")]
    Reset(VarInt),
    /// The connection has ended.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] ConnectionError),
    /// The stream was already stopped or read to its end.
    #[error("the stream was already stopped or fully read")]
    ClosedStream,
}

/// Why `RecvStream::read_to_end` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadToEndError {
    /// A read failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The stream holds more than the limit given.
    #[error("the stream is longer than the limit")]
    TooLong,
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> Self {
        let kind = match e {
            WriteError::Stopped(_) => io::ErrorKind::ConnectionReset,
            WriteError::ConnectionLost(_) => io::ErrorKind::ConnectionAborted,
            WriteError::ClosedStream => io::ErrorKind::NotConnected,
        };
        io::Error::new(kind, e)
    }
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> Self {
        let kind = match e {
            ReadError::Reset(_) => io::ErrorKind::ConnectionReset,
            ReadError::ConnectionLost(_) => io::ErrorKind::ConnectionAborted,
            ReadError::ClosedStream => io::ErrorKind::NotConnected,
        };
        io::Error::new(kind, e)
    }
}

/// The sending half of a stream. Dropping it finishes the stream.
pub struct SendStream {
    conn: ConnRef,
    id: StreamId,
    done: bool,
}

impl SendStream {
    pub(crate) fn new(conn: ConnRef, id: StreamId) -> Self {
        Self {
            conn,
            id,
            done: false,
        }
    }

    /// The stream's ID.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Writes a prefix of `buf`, waiting while flow control allows
    /// nothing; returns how many bytes were written.
    pub async fn write(&mut self, buf: &[u8]) -> Result<usize, WriteError> {
        poll_fn(|cx| self.poll_write_buf(cx, buf)).await
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), WriteError> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Writes all of `chunk` without copying it: quinn-proto keeps the
    /// `Bytes` (and so whatever buffer it is a slice of) until the peer
    /// has acknowledged it.
    pub async fn write_chunk(&mut self, mut chunk: Bytes) -> Result<(), WriteError> {
        while !chunk.is_empty() {
            poll_fn(|cx| self.poll_write_chunk(cx, &mut chunk)).await?;
        }
        Ok(())
    }

    /// Writes a prefix of `chunk` without copying; the rest stays in it.
    pub(crate) fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<Result<usize, WriteError>> {
        self.poll_write_with(cx, |s| {
            s.write_chunks(std::slice::from_mut(chunk)).map(|w| w.bytes)
        })
    }

    pub(crate) fn poll_write_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<Result<usize, WriteError>> {
        self.poll_write_with(cx, |s| s.write(buf))
    }

    /// Runs one write operation on the stream, waiting while flow control
    /// allows nothing.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut quinn_proto::SendStream<'_>) -> Result<usize, quinn_proto::WriteError>,
    ) -> Poll<Result<usize, WriteError>> {
        let mut st = self.conn.lock();
        if let Some(e) = &st.error {
            return Poll::Ready(Err(WriteError::ConnectionLost(e.clone())));
        }
        match write(&mut st.inner.send_stream(self.id)) {
            Ok(n) => {
                drop(st);
                self.conn.wake_engine();
                Poll::Ready(Ok(n))
            }
            Err(quinn_proto::WriteError::Blocked) => {
                st.writers.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
            Err(quinn_proto::WriteError::Stopped(code)) => {
                Poll::Ready(Err(WriteError::Stopped(code)))
            }
            Err(quinn_proto::WriteError::ClosedStream) => {
                Poll::Ready(Err(WriteError::ClosedStream))
            }
        }
    }

    /// No more data: the peer reads to the end after what was written.
    pub fn finish(&mut self) -> Result<(), ClosedStream> {
        self.done = true;
        let id = self.id;
        self.conn.edit(|st| match st.finish(id) {
            // Stopped by the peer: nothing more will be sent either way.
            Ok(()) | Err(FinishError::Stopped(_)) => Ok(()),
            Err(FinishError::ClosedStream) => Err(ClosedStream::default()),
        })
    }

    /// A second handle on a stream that another handle ends: dropping this
    /// one does nothing.
    #[cfg(feature = "h3")]
    pub(crate) fn forget(&mut self) {
        self.done = true;
    }

    /// Resets the stream unless it was finished: a finished response is
    /// left to arrive whole.
    #[cfg(feature = "h3")]
    pub(crate) fn reset_unless_finished(&mut self, code: VarInt) {
        self.done = true;
        let id = self.id;
        self.conn.edit(|st| {
            if !st.finishing.contains(&id) {
                let _ = st.reset(id, code);
            }
        });
    }

    /// Abandons the stream: the peer sees RESET_STREAM with `code`.
    pub fn reset(&mut self, code: VarInt) -> Result<(), ClosedStream> {
        self.done = true;
        let id = self.id;
        self.conn.edit(|st| st.reset(id, code))
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        if !self.done {
            let id = self.id;
            self.conn.edit(|st| {
                // A write left pending leaves no waker behind.
                st.writers.remove(&id);
                // Not while a close waits for acknowledgments: a FIN then
                // would be news to the peer (for HTTP/3's control stream,
                // a connection error) rather than a clean end.
                if st.error.is_none() && st.close_when_flushed.is_none() {
                    let _ = st.finish(id);
                }
            });
        }
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_buf(cx, buf).map_err(Into::into)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written data is already queued for transmission.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = self.get_mut().finish();
        Poll::Ready(result.map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e)))
    }
}

/// The receiving half of a stream. Dropping it before the peer's end of
/// the stream has arrived stops the stream (code 0, or the protocol's "no
/// error" code: see [`RecvStream::set_drop_code`]); a stream whose end is
/// already here is consumed quietly, since a STOP_SENDING for it would
/// read as an error to peers such as curl.
pub struct RecvStream {
    conn: ConnRef,
    id: StreamId,
    done: bool,
    drop_code: VarInt,
}

impl RecvStream {
    pub(crate) fn new(conn: ConnRef, id: StreamId) -> Self {
        Self {
            conn,
            id,
            done: false,
            drop_code: VarInt::from_u32(0),
        }
    }

    /// The code that dropping the stream before its end stops it with
    /// (HTTP/3 uses H3_NO_ERROR, RFC 9114 4.1.2).
    pub fn set_drop_code(&mut self, code: VarInt) {
        self.drop_code = code;
    }

    /// The stream's ID.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The next chunk of at most `max` bytes, in order; `None` at the end.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadError> {
        poll_fn(|cx| self.poll_chunk(cx, max)).await
    }

    /// Reads into `buf`; `None` at the end of the stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        Ok(self.read_chunk(buf.len()).await?.map(|chunk| {
            buf[..chunk.len()].copy_from_slice(&chunk);
            chunk.len()
        }))
    }

    /// Everything up to the end of the stream, at most `limit` bytes.
    pub async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, ReadToEndError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.read_chunk(usize::MAX).await? {
            if out.len() + chunk.len() > limit {
                return Err(ReadToEndError::TooLong);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Tells the peer to stop sending, with `code`.
    pub fn stop(&mut self, code: VarInt) -> Result<(), ClosedStream> {
        self.done = true;
        let id = self.id;
        self.conn.edit(|st| st.inner.recv_stream(id).stop(code))
    }

    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, ReadError>> {
        if self.done {
            return Poll::Ready(Err(ReadError::ClosedStream));
        }
        let mut st = self.conn.lock();
        let mut stream = st.inner.recv_stream(self.id);
        let mut chunks = match stream.read(true) {
            Ok(chunks) => chunks,
            Err(ReadableError::ClosedStream) => return Poll::Ready(Err(ReadError::ClosedStream)),
            Err(ReadableError::IllegalOrderedRead) => unreachable!("only ordered reads are made"),
        };
        let result = chunks.next(max);
        // Finalizing releases flow-control credit; it may need sending.
        let credit = chunks.finalize().should_transmit();
        let outcome = match result {
            Ok(Some(chunk)) => Poll::Ready(Ok(Some(chunk.bytes))),
            Ok(None) => {
                self.done = true;
                Poll::Ready(Ok(None))
            }
            Err(quinn_proto::ReadError::Reset(code)) => {
                self.done = true;
                Poll::Ready(Err(ReadError::Reset(code)))
            }
            Err(quinn_proto::ReadError::Blocked) => match &st.error {
                Some(e) => Poll::Ready(Err(ReadError::ConnectionLost(e.clone()))),
                None => {
                    st.readers.insert(self.id, cx.waker().clone());
                    Poll::Pending
                }
            },
        };
        drop(st);
        if credit {
            self.conn.wake_engine();
        }
        outcome
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        if !self.done {
            let (id, code) = (self.id, self.drop_code);
            self.conn.edit(|st| {
                // A read left pending leaves no waker behind.
                st.readers.remove(&id);
                if st.error.is_none() && !read_to_end_if_here(&mut st.inner, id) {
                    let _ = st.inner.recv_stream(id).stop(code);
                }
            });
        }
    }
}

/// Discards what is left of a stream whose end has already arrived;
/// false if more is still to come (the peer must then be stopped).
fn read_to_end_if_here(c: &mut quinn_proto::Connection, id: StreamId) -> bool {
    let mut stream = c.recv_stream(id);
    let Ok(mut chunks) = stream.read(true) else {
        return false;
    };
    let ended = loop {
        match chunks.next(usize::MAX) {
            Ok(Some(_)) => {}
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    let _ = chunks.finalize();
    ended
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Ok(())); // EOF, as AsyncRead reports it
        }
        match this.poll_chunk(cx, buf.remaining()) {
            Poll::Ready(Ok(Some(chunk))) => {
                buf.put_slice(&chunk);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}
