//! HTTP/3 on quic-xdp (feature `h3`) against the h3 crate's client over
//! quinn: GETs of generated bodies, many requests on one connection.
#![cfg(feature = "h3")]

mod support;

use std::{net::SocketAddr, time::Duration};

use bytes::{Buf, Bytes};
use quic_xdp::{Endpoint, Mode, h3::H3Connection};
use support::pattern;
use tokio::time::timeout;

/// Serves `/bytes/N` (N patterned bytes) and 404 for anything else.
fn spawn_h3_server(endpoint: Endpoint) {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let conn = incoming.accept().await.unwrap();
                let mut h3 = h3::server::Connection::<_, Bytes>::new(H3Connection::new(conn))
                    .await
                    .unwrap();
                while let Ok(Some(resolver)) = h3.accept().await {
                    tokio::spawn(async move {
                        let (request, mut stream) = resolver.resolve_request().await.unwrap();
                        let size = request
                            .uri()
                            .path()
                            .strip_prefix("/bytes/")
                            .and_then(|n| n.parse::<usize>().ok());
                        let Some(size) = size else {
                            let response = http::Response::builder().status(404).body(()).unwrap();
                            stream.send_response(response).await.unwrap();
                            stream.finish().await.unwrap();
                            return;
                        };
                        let response = http::Response::builder()
                            .status(200)
                            .header("content-length", size)
                            .body(())
                            .unwrap();
                        stream.send_response(response).await.unwrap();
                        let body = Bytes::from(pattern(size, (size % 251) as u8));
                        for chunk in body.chunks(64 * 1024) {
                            stream.send_data(body.slice_ref(chunk)).await.unwrap();
                        }
                        stream.finish().await.unwrap();
                    });
                }
            });
        }
    });
}

async fn h3_client(
    server: SocketAddr,
    ca: &rustls_pki_types::CertificateDer<'static>,
) -> h3::client::SendRequest<h3_quinn::OpenStreams, Bytes> {
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(support::client_config(ca, b"h3"));
    let conn = client.connect(server, "localhost").unwrap().await.unwrap();
    let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    sender
}

async fn get(
    sender: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    path: &str,
) -> (http::StatusCode, Vec<u8>) {
    let request = http::Request::get(format!("https://localhost{path}"))
        .body(())
        .unwrap();
    let mut stream = sender.send_request(request).await.unwrap();
    stream.finish().await.unwrap();
    let response = stream.recv_response().await.unwrap();
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    (response.status(), body)
}

fn server() -> (Endpoint, SocketAddr) {
    let ep = Endpoint::builder("127.0.0.1:0".parse().unwrap())
        .mode(Mode::Udp)
        .alpn(["h3"])
        .bind()
        .unwrap();
    let addr = ep.local_addr();
    (ep, addr)
}

#[tokio::test]
async fn get_small_and_multi_megabyte_bodies() {
    let (ep, addr) = server();
    spawn_h3_server(ep.clone());
    let mut sender = h3_client(addr, ep.dev_ca_certificate().unwrap()).await;
    for size in [0usize, 1, 1000, 5 << 20] {
        let (status, body) = timeout(
            Duration::from_secs(30),
            get(&mut sender, &format!("/bytes/{size}")),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        assert!(
            body == pattern(size, (size % 251) as u8),
            "/bytes/{size}: {} bytes back",
            body.len()
        );
    }
    let (status, _) = get(&mut sender, "/nothing-here").await;
    assert_eq!(status, 404);
    ep.shutdown().await;
}

#[tokio::test]
async fn many_requests_on_one_connection() {
    let (ep, addr) = server();
    spawn_h3_server(ep.clone());
    let sender = h3_client(addr, ep.dev_ca_certificate().unwrap()).await;
    let tasks: Vec<_> = (0..200usize)
        .map(|i| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let size = 100 + i * 37;
                let (status, body) = get(&mut sender, &format!("/bytes/{size}")).await;
                assert_eq!(status, 200);
                assert_eq!(body, pattern(size, (size % 251) as u8));
            })
        })
        .collect();
    for t in tasks {
        timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
    }
    assert_eq!(ep.stats().admission.accepted, 1);
    ep.shutdown().await;
}
