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
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

use crate::content::{Body, Content};

/// Time a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the TCP listener did, printed at exit.
#[derive(Default, Debug)]
pub struct TcpCounters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
}

/// Serves `content` on `listener` (TLS with `tls`, ALPN h2 and http/1.1)
/// until the process ends.
pub fn serve(
    listener: std::net::TcpListener,
    mut tls: rustls::ServerConfig,
    content: Content,
    counters: Arc<TcpCounters>,
) -> anyhow::Result<()> {
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, content, counters) =
                (acceptor.clone(), content.clone(), counters.clone());
            tokio::spawn(async move {
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
                let served = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
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
