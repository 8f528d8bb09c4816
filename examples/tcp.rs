//! `--tcp`: the same content over HTTP/1.1 and HTTP/2 with TLS on the
//! QUIC port's number over TCP, as browsers first reach a site; every
//! response carries Alt-Svc naming the HTTP/3 port, so they move there.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use quic_xdp::datapath::SourceVerdict;

use crate::content::{Body, Content};

/// Time a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's headers (HTTP/1.1), including
/// the wait for the next request on a kept-alive connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2: a ping after this much silence; no answer within as long
/// ends the connection.
const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// What the TCP listener did, printed at exit.
#[derive(Default, Debug)]
pub struct TcpCounters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    /// Connections closed at once: their source is refused.
    pub refused: AtomicU64,
}

/// What bounds the TCP side, as the QUIC side is bounded.
pub struct TcpLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Sources refused (closed at once), as `--allow`/`--deny` say.
    pub policy: quic_xdp::datapath::SourcePolicy,
}

/// Serves `content` on `listener` (TLS with `tls`, ALPN h2 and http/1.1)
/// until the process ends.
pub fn serve(
    listener: std::net::TcpListener,
    mut tls: rustls::ServerConfig,
    content: Content,
    limits: TcpLimits,
    counters: Arc<TcpCounters>,
) -> anyhow::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    http.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE);
    let http = Arc::new(http);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        loop {
            // A slot first: beyond the limit, connections wait in the
            // kernel's backlog rather than cost memory here.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if limits.policy.verdict(remote.ip()) != SourceVerdict::Allowed {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (acceptor, content, counters, http) = (
                acceptor.clone(),
                content.clone(),
                counters.clone(),
                http.clone(),
            );
            tokio::spawn(async move {
                let _slot = slot;
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        return tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    }
                    Err(_) => return tracing::debug!(%remote, "TLS handshake timed out"),
                };
                counters.connections.fetch_add(1, Ordering::Relaxed);
                let service = hyper::service::service_fn(move |request| {
                    counters.requests.fetch_add(1, Ordering::Relaxed);
                    respond(request, content.clone())
                });
                let served = http.serve_connection(TokioIo::new(tls), service).await;
                if let Err(e) = served {
                    tracing::debug!(%remote, error = %e, "TCP connection ended");
                }
            });
        }
    });
    Ok(())
}

type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

async fn respond<B>(
    request: http::Request<B>,
    content: Content,
) -> Result<http::Response<ResponseBody>, Infallible> {
    tracing::debug!(method = %request.method(), uri = %request.uri(), version = ?request.version(), "request");
    let reply = content.reply(request.method(), request.uri().path(), request.headers());
    let chunks = futures_util::stream::unfold(Some(reply.body), |body: Option<Body>| async move {
        let mut body = body?;
        match body.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(Frame::data(chunk)), Some(body))),
            Ok(None) => None,
            // The error ends the body: the connection resets the stream.
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut response = http::Response::new(StreamBody::new(chunks).boxed_unsync());
    *response.status_mut() = reply.status;
    *response.headers_mut() = reply.headers;
    Ok(response)
}
