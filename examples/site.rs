//! The HTTP/3 side of the example servers: `content::Content` (files
//! under a root directory, generated bodies at /bytes/N) over any QUIC
//! implementation that speaks h3's traits (quic-xdp here, quinn in the
//! benchmark's peer), with request limits and a graceful drain.

mod workers;

use std::{
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use h3::{
    quic::{RecvStream, SendStream},
    server::RequestStream,
};

#[derive(Clone)]
pub struct Site {
    /// What requests get (shared with the TCP listener).
    pub content: crate::content::Content,
    /// Largest request header section accepted (SETTINGS_MAX_FIELD_SECTION_SIZE);
    /// a larger one gets 431.
    pub max_header_size: u64,
    /// Time a client has to send a request's headers once it opened the
    /// stream (slow clients would otherwise hold streams forever).
    pub request_timeout: Duration,
    /// Set when the server drains: each connection sends GOAWAY, finishes
    /// the requests it has, and closes with H3_NO_ERROR.
    pub draining: tokio::sync::watch::Receiver<bool>,
}

/// Serves every request of one HTTP/3 connection.
pub async fn serve<C>(quic: C, site: Site)
where
    C: h3::quic::Connection<Bytes> + Send + 'static,
    C::BidiStream: Send + 'static,
{
    let built = h3::server::builder()
        .max_field_section_size(site.max_header_size)
        .build::<C, Bytes>(quic)
        .await;
    let mut h3 = match built {
        Ok(h3) => h3,
        Err(e) => return tracing::info!(error = %e, "HTTP/3 setup failed"),
    };
    tracing::debug!("HTTP/3 ready");
    let handler_site = Arc::new(site.clone());
    let requests = workers::Workers::new(move |resolver| {
        let site = handler_site.clone();
        async move { handle(resolver, &site).await }
    });
    let mut trim = tokio::time::interval(TRIM_WORKERS);
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain = site.draining.clone();
    let mut phase = Phase::Serving;
    let mut accepting = true;
    let mut accepted_any = false;
    loop {
        let serving_done = !accepting || phase == Phase::Final;
        if serving_done && requests.open() == 0 {
            break;
        }
        let grace_until = match phase {
            Phase::Grace(until) => until,
            _ => tokio::time::Instant::now(),
        };
        tokio::select! {
            accepted = h3.accept(), if accepting => match accepted {
                // Named by the final GOAWAY as not processed (h3 rejects
                // the later ones itself): dropped unanswered, the client
                // may retry it elsewhere.
                Ok(Some(_)) if phase == Phase::Final => {
                    tracing::debug!("request after the final GOAWAY: not processed");
                }
                Ok(Some(resolver)) => {
                    tracing::debug!("request stream accepted");
                    accepted_any = true;
                    requests.push(resolver);
                }
                // Nothing more to accept: the requests under way finish.
                Ok(None) => accepting = false,
                Err(e) => {
                    tracing::debug!(error = %e, "connection ended");
                    // Their streams fail with the connection anyway.
                    return;
                }
            },
            Ok(()) = async { drain.wait_for(|d| *d).await.map(drop) }, if phase == Phase::Serving => {
                // h3 can only name stream 0 before any request: then the
                // first GOAWAY is the final one.
                let (max_requests, next) = if accepted_any {
                    (usize::MAX, Phase::Grace(tokio::time::Instant::now() + GOAWAY_GRACE))
                } else {
                    (0, Phase::Final)
                };
                if let Err(e) = h3.shutdown(max_requests).await {
                    return tracing::debug!(error = %e, "GOAWAY failed");
                }
                phase = next;
            }
            _ = tokio::time::sleep_until(grace_until), if matches!(phase, Phase::Grace(_)) => {
                // Names the first request not accepted yet.
                if let Err(e) = h3.shutdown(1).await {
                    return tracing::debug!(error = %e, "GOAWAY failed");
                }
                phase = Phase::Final;
            }
            () = requests.all_done(), if requests.open() > 0 => {}
            _ = trim.tick(), if requests.live() > 0 => requests.trim(),
        }
    }
    // Dropping `h3` closes the connection with H3_NO_ERROR once the
    // responses are acknowledged.
}

/// Draining (RFC 9114 5.2): a first GOAWAY with the largest ID stops the
/// client from sending new requests; what it already sent is accepted for
/// a grace period; then a final GOAWAY names the first request not
/// accepted (safe for the client to retry elsewhere).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    Grace(tokio::time::Instant),
    Final,
}

/// How often a connection ends the request workers it no longer needs.
const TRIM_WORKERS: Duration = Duration::from_secs(1);

/// How long a draining connection keeps accepting the requests a client
/// sent before it saw the first GOAWAY: a generous round trip.
const GOAWAY_GRACE: Duration = Duration::from_millis(500);

/// One request: its headers (within the request timeout), then the
/// response, then the request side's end.
async fn handle<C>(resolver: h3::server::RequestResolver<C, Bytes>, site: &Site)
where
    C: h3::quic::Connection<Bytes>,
{
    let resolved = tokio::time::timeout(site.request_timeout, resolver.resolve_request()).await;
    match resolved {
        Ok(Ok((request, mut stream))) => {
            if let Err(e) = respond(request, &mut stream, site).await {
                tracing::debug!(error = %e, "request failed");
                // Not a FIN: a cut-short body must not look complete.
                stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
            }
            end_request(&mut stream);
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "bad request"),
        Err(_) => tracing::debug!("request headers timed out"),
    }
}

async fn respond<S>(
    request: http::Request<()>,
    stream: &mut RequestStream<S, Bytes>,
    site: &Site,
) -> anyhow::Result<()>
where
    S: SendStream<Bytes> + RecvStream,
{
    tracing::debug!(method = %request.method(), uri = %request.uri(), "request");
    let reply = site
        .content
        .reply(request.method(), request.uri().path(), request.headers());
    let mut response = http::Response::builder().status(reply.status).body(())?;
    *response.headers_mut() = reply.headers;
    stream.send_response(response).await?;
    let mut body = reply.body;
    while let Some(chunk) = body.next_chunk().await? {
        stream.send_data(chunk).await?;
    }
    stream.finish().await?;
    Ok(())
}

/// Ends the request side once the response is out: reads the request's
/// end when it is already here, else asks the client to stop sending
/// with H3_NO_ERROR (RFC 9114 4.1.2). Dropping the stream unread would
/// stop it with code 0, which clients such as curl report as a reset.
fn end_request<S: SendStream<Bytes> + RecvStream>(stream: &mut RequestStream<S, Bytes>) {
    let mut cx = Context::from_waker(Waker::noop());
    if !matches!(stream.poll_recv_data(&mut cx), Poll::Ready(Ok(None))) {
        stream.stop_sending(h3::error::Code::H3_NO_ERROR);
    }
}
