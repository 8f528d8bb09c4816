//! The endpoint over the kernel-UDP datapath on loopback, against quinn
//! clients: everything the API offers, without needing privileges.

mod support;

use std::{future::Future, net::SocketAddr, time::Duration};

use quic_xdp::{ActiveMode, ConnectionError, Endpoint, EndpointBuilder, Mode, RetryPolicy, VarInt};
use support::*;
use tokio::time::timeout;

fn builder(listen: &str) -> EndpointBuilder {
    Endpoint::builder(listen.parse().unwrap())
        .mode(Mode::Udp)
        .alpn([ALPN])
}

fn start(b: EndpointBuilder) -> (Endpoint, SocketAddr) {
    let ep = b.bind().unwrap();
    assert_eq!(
        ep.mode(),
        &ActiveMode::Udp {
            fallback_reason: None
        }
    );
    let addr = ep.local_addr();
    let port = addr.port();
    let server = if addr.is_ipv4() {
        SocketAddr::from(([127, 0, 0, 1], port))
    } else {
        format!("[::1]:{port}").parse().unwrap()
    };
    (ep, server)
}

#[tokio::test]
async fn echo_from_one_byte_to_fifty_megabytes() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    spawn_echo(ep.clone());
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&client, server).await;
    echo_sizes(&conn).await;
    let stats = ep.stats();
    assert_eq!(stats.open_connections, 1);
    assert_eq!(stats.admission.accepted, 1);
    assert!(stats.datapath.rx_bytes > 50 << 20, "{:?}", stats.datapath);
    assert_eq!(
        stats.datapath.tx_too_big, 0,
        "every transmit fit: {:?}",
        stats.datapath
    );
    conn.close(0u32.into(), b"done");
    ep.shutdown().await;
}

#[tokio::test]
async fn ipv6_loopback() {
    let (ep, server) = start(builder("[::1]:0"));
    spawn_echo(ep.clone());
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&client, server).await;
    assert_eq!(echo_stream(&conn, b"over ipv6").await, b"over ipv6");
    ep.shutdown().await;
}

#[tokio::test]
async fn a_hundred_concurrent_connections() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    spawn_echo(ep.clone());
    let ca = ep.dev_ca_certificate().unwrap().clone();
    hundred_connections(server, || client(server, &ca)).await;
    assert_eq!(ep.stats().admission.accepted, 100);
    timeout(TIMEOUT, ep.wait_idle()).await.unwrap();
    ep.shutdown().await;
}

#[tokio::test]
async fn a_thousand_streams_on_one_connection() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    spawn_echo(ep.clone());
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&client, server).await;
    thousand_streams(&conn).await;
    ep.shutdown().await;
}

#[tokio::test]
async fn resumed_sessions_send_zero_rtt_data() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    spawn_echo(ep.clone());
    let client = client(server, ep.dev_ca_certificate().unwrap());
    resumption_and_zero_rtt(&client, server).await;
    ep.shutdown().await;
}

#[tokio::test]
async fn unidirectional_streams_both_ways() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    let server_ep = ep.clone();
    tokio::spawn(async move {
        let conn = server_ep.accept().await.unwrap().accept().await.unwrap();
        let mut incoming = conn.accept_uni().await.unwrap();
        let request = incoming.read_to_end(1 << 20).await.unwrap();
        let mut reply = conn.open_uni().await.unwrap();
        reply.write_all(&request).await.unwrap();
        reply.write_all(b" (server)").await.unwrap();
        reply.finish().unwrap();
        conn.closed().await;
    });
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&client, server).await;
    let mut send = conn.open_uni().await.unwrap();
    send.write_all(b"one way").await.unwrap();
    send.finish().unwrap();
    let mut recv = timeout(Duration::from_secs(5), conn.accept_uni())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recv.read_to_end(100).await.unwrap(), b"one way (server)");
    conn.close(0u32.into(), b"");
    ep.shutdown().await;
}

#[tokio::test]
async fn key_updates_mid_transfer() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    spawn_echo(ep.clone());
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&client, server).await;
    for i in 0..5u8 {
        conn.force_key_update();
        let data = pattern(300_000, i);
        assert_eq!(
            echo_stream(&conn, &data).await,
            data,
            "after key update {i}"
        );
    }
    ep.shutdown().await;
}

/// Under load (attempts waiting for the application), new attempts must
/// first prove their address; they still connect.
#[tokio::test]
async fn retry_kicks_in_when_busy() {
    let (ep, server) =
        start(builder("127.0.0.1:0").retry(RetryPolicy::WhenBusy { unvalidated: 1 }));
    let client = client(server, ep.dev_ca_certificate().unwrap());
    // The application is slow: the first attempt waits unaccepted.
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.connect(server, "localhost").unwrap().await }
    });
    let held = timeout(Duration::from_secs(5), ep.accept())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !held.remote_address_validated(),
        "the first attempt was not retried"
    );
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.connect(server, "localhost").unwrap().await }
    });
    let retried = timeout(Duration::from_secs(5), ep.accept())
        .await
        .unwrap()
        .unwrap();
    assert!(
        retried.remote_address_validated(),
        "the second attempt proved its address"
    );
    assert_eq!(ep.stats().admission.retried, 1);
    let (a, b) = (held.accept(), retried.accept());
    let (a, b) = tokio::join!(a, b);
    let (a, b) = (a.unwrap(), b.unwrap());
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    a.close(0u32.into(), b"");
    b.close(0u32.into(), b"");
    ep.shutdown().await;
}

#[tokio::test]
async fn datagrams_are_echoed() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    spawn_echo(ep.clone());
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&client, server).await;
    for i in 0..20u8 {
        conn.send_datagram(vec![i; 100].into()).unwrap();
        let d = timeout(Duration::from_secs(5), conn.read_datagram())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&d[..], &[i; 100][..]);
    }
    ep.shutdown().await;
}

/// Many tasks wait for the end of one connection, many more gave up
/// waiting (a `select!` or timeout per request): every one still waiting
/// hears the end, and those that gave up left nothing to wake.
#[tokio::test]
async fn every_waiter_hears_the_connection_end() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    let client = client(server, ep.dev_ca_certificate().unwrap());
    // Kept (with its result) until the end of the test.
    let _client_conn = tokio::spawn(client.connect(server, "localhost").unwrap());
    let conn = timeout(Duration::from_secs(10), async {
        ep.accept().await.unwrap().accept().await.unwrap()
    })
    .await
    .unwrap();
    for _ in 0..300 {
        let _ = timeout(Duration::from_micros(1), conn.closed()).await;
        let _ = timeout(Duration::from_micros(1), conn.read_datagram()).await;
    }
    let waiters: Vec<_> = (0..200)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    conn.closed().await
                } else {
                    conn.read_datagram().await.unwrap_err()
                }
            })
        })
        .collect();
    tokio::task::yield_now().await;
    conn.close(VarInt::from_u32(7), b"done");
    for w in waiters {
        let reason = timeout(Duration::from_secs(10), w).await.unwrap().unwrap();
        assert_eq!(reason, ConnectionError::LocallyClosed);
    }
    ep.shutdown().await;
}

#[tokio::test]
async fn server_close_carries_code_and_reason() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    let server_ep = ep.clone();
    tokio::spawn(async move {
        let conn = server_ep.accept().await.unwrap().accept().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let got = recv.read_to_end(100).await.unwrap();
        send.write_all(&got).await.unwrap();
        send.finish().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.close(VarInt::from_u32(42), b"bye");
        assert_eq!(conn.closed().await, ConnectionError::LocallyClosed);
    });
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&client, server).await;
    assert_eq!(echo_stream(&conn, b"hi").await, b"hi");
    match timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap()
    {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(42));
            assert_eq!(&close.reason[..], b"bye");
        }
        other => panic!("{other:?}"),
    }
    ep.shutdown().await;
}

#[tokio::test]
async fn idle_connections_time_out_on_the_server() {
    let (ep, server) = start(builder("127.0.0.1:0").idle_timeout(Duration::from_millis(300)));
    let server_ep = ep.clone();
    let closed = tokio::spawn(async move {
        let conn = server_ep.accept().await.unwrap().accept().await.unwrap();
        conn.closed().await
    });
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let _conn = connect(&client, server).await;
    let reason = timeout(Duration::from_secs(5), closed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, ConnectionError::TimedOut);
    timeout(Duration::from_secs(5), ep.wait_idle())
        .await
        .unwrap();
    ep.shutdown().await;
}

#[tokio::test]
async fn retry_validates_addresses_and_clients_still_connect() {
    let (ep, server) = start(builder("127.0.0.1:0").retry(RetryPolicy::Always));
    let server_ep = ep.clone();
    let validated = tokio::spawn(async move {
        let incoming = server_ep.accept().await.unwrap();
        let validated = incoming.remote_address_validated();
        let conn = incoming.accept().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        tokio::io::copy(&mut recv, &mut send).await.unwrap();
        send.finish().unwrap();
        conn.closed().await;
        validated
    });
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&client, server).await;
    assert_eq!(echo_stream(&conn, b"after retry").await, b"after retry");
    conn.close(0u32.into(), b"");
    assert!(
        timeout(Duration::from_secs(5), validated)
            .await
            .unwrap()
            .unwrap()
    );
    assert_eq!(ep.stats().admission.retried, 1);
    ep.shutdown().await;
}

#[tokio::test]
async fn refusals_reach_the_client() {
    // By the application...
    let (ep, server) = start(builder("127.0.0.1:0"));
    let server_ep = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server_ep.accept().await {
            incoming.refuse();
        }
    });
    let refused = client(server, ep.dev_ca_certificate().unwrap());
    let err = refused
        .connect(server, "localhost")
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(
        err,
        quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::CONNECTION_REFUSED,
            frame_type: None,
            reason: bytes::Bytes::new(),
        })
    );
    ep.shutdown().await;

    // ...and by the connection limit.
    refuses_the_next_client(builder("127.0.0.1:0").max_connections(1), |_| {}).await;
}

/// One client connects; after `then` a second is refused
/// (CONNECTION_REFUSED, counted) while the first is still served.
async fn refuses_the_next_client(b: EndpointBuilder, then: impl FnOnce(&Endpoint)) {
    let (ep, server) = start(b);
    spawn_echo(ep.clone());
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let first = connect(&client, server).await;
    then(&ep);
    let err = client
        .connect(server, "localhost")
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        matches!(err, quinn::ConnectionError::ConnectionClosed(ref c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED),
        "{err}"
    );
    assert_eq!(echo_stream(&first, b"still served").await, b"still served");
    assert_eq!(ep.stats().admission.refused, 1);
    ep.shutdown().await;
}

#[tokio::test]
async fn a_client_gets_only_the_configured_concurrent_streams() {
    let (ep, server) = start(builder("127.0.0.1:0").max_concurrent_streams(2));
    spawn_echo(ep.clone());
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&client, server).await;
    // A stream counts once the server has seen it: send a byte on each.
    let mut open = Vec::new();
    for _ in 0..2 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(b"x").await.unwrap();
        open.push((send, recv));
    }
    let third = timeout(Duration::from_millis(500), conn.open_bi()).await;
    assert!(third.is_err(), "a third stream opened with a limit of 2");
    let (mut send, mut recv) = open.pop().unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(10).await.unwrap(), b"x");
    let (mut send, mut recv) = timeout(Duration::from_secs(5), conn.open_bi())
        .await
        .expect("a stream once one ended")
        .unwrap();
    send.write_all(b"y").await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(10).await.unwrap(), b"y");
    ep.shutdown().await;
}

#[tokio::test]
async fn stop_accepting_refuses_new_clients_and_keeps_serving_open_ones() {
    refuses_the_next_client(builder("127.0.0.1:0"), Endpoint::stop_accepting).await;
}

/// close_when_flushed: a response written and finished just before the
/// close arrives whole; a plain close would cut it off.
#[tokio::test]
async fn a_flushed_close_delivers_what_was_finished() {
    const LEN: usize = 4_000_000;
    let (ep, server) = start(builder("127.0.0.1:0"));
    let server_ep = ep.clone();
    tokio::spawn(async move {
        let conn = server_ep.accept().await.unwrap().accept().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        recv.read_to_end(10).await.unwrap();
        send.write_all(&pattern(LEN, 3)).await.unwrap();
        send.finish().unwrap();
        conn.close_when_flushed(VarInt::from_u32(7), b"done");
    });
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&client, server).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.finish().unwrap();
    let got = timeout(Duration::from_secs(10), recv.read_to_end(LEN))
        .await
        .unwrap()
        .expect("the whole response before the close");
    assert!(got == pattern(LEN, 3));
    match timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap()
    {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(7))
        }
        other => panic!("{other:?}"),
    }
    ep.shutdown().await;
}

/// A flushed close waits for finished streams only: one reset after it
/// was finished is not waited for, and the close goes out.
#[tokio::test]
async fn a_flushed_close_does_not_wait_for_a_reset_stream() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    // On the engine thread: no pass runs between these calls, so the
    // finished stream is still unacknowledged when it is reset.
    ep.serve(|conn| async move {
        let (mut send, _recv) = conn.accept_bi().await.unwrap();
        send.write_all(b"partial").await.unwrap();
        send.finish().unwrap();
        conn.close_when_flushed(VarInt::from_u32(7), b"done");
        send.reset(VarInt::from_u32(1)).unwrap();
    })
    .unwrap();
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&client, server).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(b"go").await.unwrap();
    match timeout(Duration::from_secs(5), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(7))
        }
        other => panic!("{other:?}"),
    }
    ep.shutdown().await;
}

/// The source policy on the kernel-socket path: only ::1 is allowed, so a
/// client on 127.0.0.1 gets nowhere (dropped, counted) and one on ::1 is
/// served.
#[tokio::test]
async fn the_source_policy_applies_on_kernel_sockets() {
    let policy = datapath::SourcePolicy::new(vec!["::1/128".parse().unwrap()], Vec::new()).unwrap();
    let (ep, server) = start(builder("[::]:0").datapath(|c| c.source_policy = policy));
    spawn_echo(ep.clone());
    let v4 = SocketAddr::from(([127, 0, 0, 1], server.port()));
    let refused = client(v4, ep.dev_ca_certificate().unwrap());
    let attempt = timeout(
        Duration::from_millis(1500),
        refused.connect(v4, "localhost").unwrap(),
    )
    .await;
    assert!(attempt.is_err(), "a refused client connected: {attempt:?}");
    assert!(ep.stats().datapath.rx_source_denied > 0);
    assert_eq!(ep.stats().admission.accepted, 0);
    let admitted = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&admitted, server).await;
    assert_eq!(echo_stream(&conn, b"admitted").await, b"admitted");
    ep.shutdown().await;
}

/// TLS as browsers offer it in 2026: a client whose only key exchange is
/// the X25519MLKEM768 post-quantum hybrid completes the handshake with the
/// aws-lc-rs provider; with ring (no such group) it cannot.
#[cfg(feature = "aws-lc-rs")]
#[tokio::test]
async fn a_client_offering_only_the_pq_hybrid_group_connects_with_aws_lc_rs() {
    use rustls::crypto::aws_lc_rs;
    let hybrid_only = || {
        let mut provider = aws_lc_rs::default_provider();
        provider.kx_groups = vec![aws_lc_rs::kx_group::X25519MLKEM768];
        provider
    };
    let attempt = |b: EndpointBuilder| async move {
        let (ep, server) = start(b);
        spawn_echo(ep.clone());
        let ca = ep.dev_ca_certificate().unwrap().clone();
        let mut client = client(server, &ca);
        client.set_default_client_config(client_config_with(&ca, ALPN, hybrid_only()));
        let result = timeout(
            Duration::from_secs(5),
            client.connect(server, "localhost").unwrap(),
        )
        .await
        .unwrap();
        if let Ok(conn) = &result {
            assert_eq!(echo_stream(conn, b"post-quantum").await, b"post-quantum");
        }
        ep.shutdown().await;
        result.map(drop)
    };
    let aws =
        builder("127.0.0.1:0").crypto_provider(std::sync::Arc::new(aws_lc_rs::default_provider()));
    attempt(aws).await.expect("the hybrid group with aws-lc-rs");
    let refused = attempt(builder("127.0.0.1:0")).await;
    assert!(refused.is_err(), "ring has no hybrid group: {refused:?}");
}

#[tokio::test]
async fn shutdown_closes_connections_and_stops_accepting() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    spawn_echo(ep.clone());
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&client, server).await;
    assert_eq!(echo_stream(&conn, b"x").await, b"x");
    timeout(Duration::from_secs(10), ep.shutdown())
        .await
        .unwrap();
    assert!(matches!(
        timeout(Duration::from_secs(5), conn.closed())
            .await
            .unwrap(),
        quinn::ConnectionError::ApplicationClosed(_)
    ));
    assert!(ep.accept().await.is_none());
    assert_eq!(ep.stats().open_connections, 0);
    // The port is free again.
    std::net::UdpSocket::bind(ep.local_addr()).unwrap();
}

/// A client whose connection attempt waits in `ep`'s accept queue.
async fn waiting_attempt(
    ep: &Endpoint,
    server: SocketAddr,
) -> (quinn::Endpoint, quinn::Connecting) {
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let connecting = client.connect(server, "localhost").unwrap();
    until_waiting(ep, |n| n > 0, "the attempt waits for accept").await;
    (client, connecting)
}

/// Waits (up to 10 s) until the attempts waiting for `accept` satisfy
/// `count`; `what` says what that means when they do not.
async fn until_waiting(ep: &Endpoint, count: impl Fn(usize) -> bool, what: &str) {
    timeout(Duration::from_secs(10), async {
        while !count(ep.stats().waiting_attempts) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect(what);
}

/// The same attempt, taken by the application with `accept`.
async fn taken_attempt(
    ep: &Endpoint,
    server: SocketAddr,
) -> (quinn::Endpoint, quinn::Connecting, quic_xdp::Incoming) {
    let (client, connecting) = waiting_attempt(ep, server).await;
    let incoming = timeout(Duration::from_secs(10), ep.accept())
        .await
        .unwrap()
        .expect("the waiting attempt");
    (client, connecting, incoming)
}

/// An attempt that arrives between bind and `serve` is the handler's too
/// (it used to wait for an `accept` that a serving program never calls,
/// and the client timed out), and `accept` then returns `None`.
#[tokio::test]
async fn serve_takes_the_attempts_that_arrived_before_it() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    let (_client, connecting) = waiting_attempt(&ep, server).await;
    serve_echo(&ep);
    let conn = timeout(Duration::from_secs(10), connecting)
        .await
        .expect("served, not left waiting for accept")
        .unwrap();
    assert_eq!(echo_stream(&conn, b"x").await, b"x");
    assert!(
        timeout(Duration::from_secs(1), ep.accept())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(ep.stats().waiting_attempts, 0);
    conn.close(0u32.into(), b"done");
    ep.shutdown().await;
}

/// Admission is decided again when `serve` takes a waiting attempt: the
/// endpoint stopped accepting in the meantime, so it is refused.
#[tokio::test]
async fn serve_refuses_a_waiting_attempt_once_the_endpoint_stopped_accepting() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    let (_client, connecting) = waiting_attempt(&ep, server).await;
    ep.stop_accepting();
    serve_echo(&ep);
    let err = timeout(Duration::from_secs(10), connecting)
        .await
        .expect("decided")
        .unwrap_err();
    assert!(
        matches!(err, quinn::ConnectionError::ConnectionClosed(ref c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED),
        "{err}"
    );
    assert_eq!(ep.stats().admission.refused, 1);
    ep.shutdown().await;
}

/// An attempt the application accepts after the endpoint shut down fails
/// at once: the engine that would carry the decision out is gone (the
/// accept used to wait forever).
#[tokio::test]
async fn accepting_after_shutdown_fails_instead_of_waiting() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    let (_client, _connecting, incoming) = taken_attempt(&ep, server).await;
    timeout(Duration::from_secs(10), ep.shutdown())
        .await
        .unwrap();
    let result = timeout(Duration::from_secs(10), incoming.accept())
        .await
        .expect("decided, not left waiting for a stopped engine");
    assert!(matches!(
        result,
        Err(quic_xdp::ConnectionError::LocallyClosed)
    ));
    assert_eq!(ep.stats().undecided_attempts, 0, "the dropped decision");
}

/// An accept whose `Connecting` is dropped before the engine carried it
/// out closes the connection (it used to stay open and counted until its
/// idle timeout, and `wait_idle` waited for it).
#[tokio::test]
async fn a_dropped_accept_closes_its_connection() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    let (_client, connecting, incoming) = taken_attempt(&ep, server).await;
    drop(incoming.accept());
    if let Ok(conn) = timeout(Duration::from_secs(10), connecting).await.unwrap() {
        timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("closed by the server");
    }
    timeout(Duration::from_secs(10), ep.wait_idle())
        .await
        .expect("no connection left open");
    ep.shutdown().await;
}

fn refused_by_the_server(e: &ConnectionError) -> bool {
    matches!(e, ConnectionError::TransportError(t) if t.code == quinn_proto::TransportErrorCode::CONNECTION_REFUSED)
}

/// Attempts the application accepts are admitted again when the engine
/// carries the accept out: over the connection limit they are refused (the
/// limit used to apply only to attempts the engines admitted themselves).
#[tokio::test]
async fn accept_obeys_the_connection_limit() {
    let (ep, server) = start(builder("127.0.0.1:0").max_connections(1));
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let connecting = [0, 1].map(|_| client.connect(server, "localhost").unwrap());
    until_waiting(&ep, |n| n >= 2, "both attempts wait for accept").await;
    let mut results = Vec::new();
    for _ in 0..2 {
        let incoming = ep.accept().await.unwrap();
        results.push(
            timeout(Duration::from_secs(10), incoming.accept())
                .await
                .unwrap(),
        );
    }
    assert!(results[0].is_ok());
    let err = results[1].as_ref().expect_err("over the limit");
    assert!(refused_by_the_server(err), "{err}");
    let mut clients = Vec::new();
    for c in connecting {
        clients.push(timeout(Duration::from_secs(10), c).await.unwrap());
    }
    assert_eq!(clients.iter().filter(|c| c.is_ok()).count(), 1);
    // At least: a slow machine may see the refused client's Initial again.
    assert!(ep.stats().admission.refused >= 1);
    drop(results);
    ep.shutdown().await;
}

/// The same after `stop_accepting`: an attempt that waited from before is
/// refused when the application accepts it.
#[tokio::test]
async fn accept_after_stop_accepting_is_refused() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    let (_client, connecting, incoming) = taken_attempt(&ep, server).await;
    ep.stop_accepting();
    let err = timeout(Duration::from_secs(10), incoming.accept())
        .await
        .unwrap()
        .expect_err("refused");
    assert!(refused_by_the_server(&err), "{err}");
    let err = timeout(Duration::from_secs(10), connecting)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, quinn::ConnectionError::ConnectionClosed(ref c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED),
        "{err}"
    );
    ep.shutdown().await;
}

/// `shutdown` called from a serve handler, on an engine thread, stops the
/// endpoint and frees its port. (It used to join the engine threads from a
/// blocking task of the engine's own runtime, which that runtime waits
/// for on its way out: a deadlock whenever the task started in time.)
#[tokio::test]
async fn shutdown_from_a_handler_stops_the_endpoint() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    let handle = ep.clone();
    ep.serve(move |conn| {
        let ep = handle.clone();
        async move {
            drop(conn);
            // As a task that outlived its connection would: with nothing
            // open, shutdown goes straight to waiting for the engines.
            ep.wait_idle().await;
            ep.shutdown().await;
        }
    })
    .unwrap();
    let client = client(server, ep.dev_ca_certificate().unwrap());
    // Kept open: the handler runs once the server has the handshake too.
    let _conn = timeout(
        Duration::from_secs(10),
        client.connect(server, "localhost").unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    // The handler's shutdown alone frees the port.
    timeout(Duration::from_secs(10), async {
        while std::net::UdpSocket::bind(server).is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the engines stopped and closed the socket");
    timeout(Duration::from_secs(10), ep.shutdown())
        .await
        .expect("stopped already");
}

/// Any `shutdown` returns only once the engines stopped and the port is
/// free, even after an earlier one was cancelled on its way (that one
/// used to take the thread handles with it, leaving the next one nothing
/// to wait for).
#[tokio::test]
async fn shutdown_after_a_cancelled_one_still_waits_for_the_engines() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    {
        // Polled once, then dropped: cancelled on its way.
        let mut first = std::pin::pin!(ep.shutdown());
        let _ = first
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    }
    timeout(Duration::from_secs(10), ep.shutdown())
        .await
        .unwrap();
    std::net::UdpSocket::bind(server).expect("the port is free once shutdown returned");
}

/// `Endpoint::serve`: handlers run on the engine thread; echo of every
/// size, datagrams, many connections; a second handler is refused.
#[tokio::test]
async fn serve_runs_handlers_on_the_engine_threads() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    let handled = serve_echo(&ep);
    assert!(matches!(
        ep.serve(|_| async {}),
        Err(quic_xdp::Error::AlreadyServing)
    ));
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let conn = connect(&client, server).await;
    echo_sizes(&conn).await;
    conn.send_datagram(bytes::Bytes::from_static(b"ping"))
        .unwrap();
    let echoed = timeout(Duration::from_secs(5), conn.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed[..], b"ping");
    hundred_connections(server, || {
        support::client(server, ep.dev_ca_certificate().unwrap())
    })
    .await;
    assert_eq!(
        handled.load(std::sync::atomic::Ordering::Relaxed),
        101,
        "one handler per connection"
    );
    conn.close(0u32.into(), b"done");
    timeout(Duration::from_secs(10), ep.shutdown())
        .await
        .unwrap();
}

/// A panicking engine is contained: its connections end with an error,
/// the endpoint fails closed (accept returns None), shutdown returns, and
/// the process goes on.
#[tokio::test]
async fn a_panicking_engine_fails_the_endpoint_closed() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    let (conn_tx, conn_rx) = tokio::sync::oneshot::channel();
    let accepting = ep.clone();
    tokio::spawn(async move {
        let conn = accepting.accept().await.unwrap().accept().await.unwrap();
        let _ = conn_tx.send(conn);
    });
    let client = client(server, ep.dev_ca_certificate().unwrap());
    let _client_conn = connect(&client, server).await;
    let server_conn = conn_rx.await.unwrap();
    ep.panic_engine_for_test(0);
    let reason = timeout(Duration::from_secs(5), server_conn.closed())
        .await
        .expect("the connection ended");
    assert_eq!(reason, ConnectionError::LocallyClosed);
    assert_fails_closed(&ep).await;
    assert_eq!(ep.stats().open_connections, 0);
}

/// The attempts a panicking engine left waiting for `accept` go with it:
/// nobody could decide them any more (`accept` used to hand them out after
/// the panic, and a refusal of one reached nobody).
#[tokio::test]
async fn a_panicking_engine_takes_its_waiting_attempts_with_it() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    let (_client, _connecting) = waiting_attempt(&ep, server).await;
    ep.panic_engine_for_test(0);
    until_waiting(&ep, |n| n == 0, "the attempt went with the engine").await;
    assert_fails_closed(&ep).await;
    assert_eq!(ep.stats().undecided_attempts, 0);
}

/// A decision sent right behind the command that makes the engine panic
/// (usually carried out in the same batch, so the panic drops it
/// unexecuted) stops counting as undecided all the same.
#[tokio::test]
async fn a_decision_dropped_by_a_panic_is_no_longer_undecided() {
    let (ep, server) = start(builder("127.0.0.1:0"));
    let (_client, _connecting, incoming) = taken_attempt(&ep, server).await;
    assert_eq!(ep.stats().undecided_attempts, 1);
    ep.panic_engine_for_test(0);
    incoming.refuse();
    assert_fails_closed(&ep).await;
    assert_eq!(ep.stats().undecided_attempts, 0);
}
