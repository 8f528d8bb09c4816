//! The endpoint over the real XDP datapath: quic-xdp in a server namespace
//! (AF_XDP on its veth), quinn clients on kernel UDP in a client
//! namespace. Each test creates its namespaces and removes them, also when
//! it fails.

mod support;

use std::{net::SocketAddr, time::Duration};

use datapath::{
    QueueKind,
    testbed::{TestNet, TestNetConfig},
};
use quic_xdp::{Endpoint, Mode, RetryPolicy};
use support::*;
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_ipv4_and_ipv6_up_to_fifty_megabytes() {
    let Some((net, ep)) = xdp_endpoint(|b| b) else {
        return;
    };
    spawn_echo(ep.clone());
    for v6 in [false, true] {
        let server = net.server_addr(v6, PORT);
        let client = quinn_client(&net, server, &ep);
        let conn = connect(&client, server).await;
        assert_eq!(conn.remote_address(), server);
        echo_sizes(&conn).await;
        conn.close(0u32.into(), b"");
        client.wait_idle().await;
    }
    assert_served_over_xdp(&ep);
    assert!(ep.stats().datapath.rx_bytes > 100 << 20);
    timeout(Duration::from_secs(10), ep.shutdown())
        .await
        .unwrap();
    assert!(!net.server_xdp_attached(), "shutdown detaches the program");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_connections() {
    let Some((net, ep)) = xdp_endpoint(|b| b) else {
        return;
    };
    spawn_echo(ep.clone());
    let server = net.server_addr(false, PORT);
    hundred_connections(server, || quinn_client(&net, server, &ep)).await;
    assert_eq!(ep.stats().admission.accepted, 100);
    assert_served_over_xdp(&ep);
    ep.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_on_one_connection() {
    let Some((net, ep)) = xdp_endpoint(|b| b) else {
        return;
    };
    spawn_echo(ep.clone());
    let server = net.server_addr(false, PORT);
    let client = quinn_client(&net, server, &ep);
    thousand_streams(&connect(&client, server).await).await;
    assert_served_over_xdp(&ep);
    ep.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_then_resumption_and_zero_rtt() {
    let Some((net, ep)) = xdp_endpoint(|b| b.retry(RetryPolicy::Always)) else {
        return;
    };
    spawn_echo(ep.clone());
    let server = net.server_addr(true, PORT);
    let client = quinn_client(&net, server, &ep);
    resumption_and_zero_rtt(&client, server).await;
    assert_eq!(
        ep.stats().admission.retried,
        2,
        "both connections were retried"
    );
    assert_served_over_xdp(&ep);
    ep.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_over_xdp() {
    let mut transport = quic_xdp::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_millis(300).try_into().unwrap()));
    let Some((net, ep)) = xdp_endpoint(|b| b.transport_config(transport)) else {
        return;
    };
    let server_ep = ep.clone();
    let closed = tokio::spawn(async move {
        let conn = server_ep.accept().await.unwrap().accept().await.unwrap();
        conn.closed().await
    });
    let server = net.server_addr(false, PORT);
    let client = quinn_client(&net, server, &ep);
    let _conn = connect(&client, server).await;
    let reason = timeout(Duration::from_secs(5), closed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, quic_xdp::ConnectionError::TimedOut);
    ep.shutdown().await;
}

/// Two rx queues: two engines, one per AF_XDP socket. Flows spread over
/// both; a client that migrates to a new port may land on the other queue,
/// whose engine forwards its datagrams to the connection's owner by CID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_engine_per_queue_with_cid_routing() {
    if !datapath::testbed::privileged() {
        return;
    }
    let net = TestNet::create(&TestNetConfig {
        queues: 2,
        ..Default::default()
    })
    .unwrap();
    let builder = Endpoint::builder(SocketAddr::new("::".parse().unwrap(), PORT))
        .interface(TestNet::SERVER_IF)
        .mode(Mode::Xdp)
        .alpn([ALPN]);
    let ep = net.server.run(|| builder.bind().unwrap());
    assert_eq!(ep.engines(), 2);
    spawn_echo(ep.clone());
    let server = net.server_addr(false, PORT);

    // Migration: each client rebinds to a fresh socket mid-connection.
    let mut migrated = Vec::new();
    for i in 0..12u8 {
        let client = quinn_client(&net, server, &ep);
        let conn = connect(&client, server).await;
        assert_eq!(
            echo_stream(&conn, &pattern(3000, i)).await,
            pattern(3000, i)
        );
        client
            .rebind(net.client.run(|| unspecified_socket(server)))
            .unwrap();
        let data = pattern(200_000, i);
        assert_eq!(
            timeout(TIMEOUT, echo_stream(&conn, &data)).await.unwrap(),
            data
        );
        migrated.push((client, conn));
    }
    // Which rx queue a new port lands on is veth's choice (a hash of the
    // flow), so a crossing is likely but not certain: migrate again until
    // one crosses. A miss after this many rebinds is a routing bug.
    for round in 0..64u8 {
        if ep.stats().admission.forwarded > 0 {
            break;
        }
        let (client, conn) = &migrated[usize::from(round) % migrated.len()];
        client
            .rebind(net.client.run(|| unspecified_socket(server)))
            .unwrap();
        let data = pattern(20_000, round);
        assert_eq!(
            timeout(TIMEOUT, echo_stream(conn, &data)).await.unwrap(),
            data
        );
    }
    hundred_connections(server, || quinn_client(&net, server, &ep)).await;

    let stats = ep.stats();
    let per_queue: Vec<u64> = stats
        .queues
        .iter()
        .filter(|(k, _)| matches!(k, QueueKind::Xsk { .. }))
        .map(|(_, c)| c.rx_packets)
        .collect();
    assert_eq!(per_queue.len(), 2);
    assert!(
        per_queue.iter().all(|&n| n > 0),
        "flows on both queues: {per_queue:?}"
    );
    assert!(
        stats.admission.forwarded > 0,
        "no migration crossed queues: {stats:?}"
    );
    assert_served_over_xdp(&ep);
    for (client, conn) in migrated {
        conn.close(0u32.into(), b"");
        client.wait_idle().await;
    }
    timeout(Duration::from_secs(10), ep.shutdown())
        .await
        .unwrap();
    assert!(!net.server_xdp_attached());
}

/// A server restarted with the same reset secret answers the previous
/// run's connections with stateless resets: the client fails fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_resets_old_connections() {
    let secret = [7u8; 32];
    let certs = certs::DevCerts::localhost().unwrap();
    let (chain, key) = (certs.chain(), certs.key());
    let Some((net, ep)) = xdp_endpoint(|b| b.reset_secret(secret).certificate(chain, key)) else {
        return;
    };
    spawn_echo(ep.clone());
    let server = net.server_addr(false, PORT);
    let client = client_on(
        net.client.run(|| unspecified_socket(server)),
        &certs.ca_der(),
    );
    let conn = connect(&client, server).await;
    assert_eq!(echo_stream(&conn, b"before").await, b"before");

    // The first server goes away without the client hearing its close...
    // Datagrams from the QUIC port arriving at the client are dropped; the
    // client's input hook sees AF_XDP transmits too.
    nft_table(&net.client, "qxtest", &[("in", "udp sport 4433 drop")]);
    ep.shutdown().await;
    let (chain, key) = (certs.chain(), certs.key());
    let builder = Endpoint::builder(SocketAddr::new("::".parse().unwrap(), PORT))
        .interface(TestNet::SERVER_IF)
        .mode(Mode::Xdp)
        .alpn([ALPN])
        .reset_secret(secret)
        .certificate(chain, key);
    let restarted = net.server.run(|| builder.bind().unwrap());
    nft_table(&net.client, "qxtest", &[]);

    // ...so its next datagram meets a server that never heard of it.
    let result = timeout(Duration::from_secs(10), echo_stream_result(&conn, b"after"))
        .await
        .unwrap();
    assert!(result.is_err(), "the old connection must not work");
    assert_eq!(conn.close_reason(), Some(quinn::ConnectionError::Reset));
    restarted.shutdown().await;
}

/// `Endpoint::serve` over XDP: handlers on the engine thread, IPv4 and
/// IPv6, up to 20 MB each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_xdp_runs_handlers_on_the_engine_threads() {
    let Some((net, ep)) = xdp_endpoint(|b| b) else {
        return;
    };
    let handled = serve_echo(&ep);
    for v6 in [false, true] {
        let server = net.server_addr(v6, PORT);
        let client = quinn_client(&net, server, &ep);
        let conn = connect(&client, server).await;
        for size in [1, 100_000, 20_000_000] {
            let data = pattern(size, size as u8);
            assert!(echo_stream(&conn, &data).await == data, "{size} bytes");
        }
        conn.close(0u32.into(), b"done");
    }
    assert_eq!(handled.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_served_over_xdp(&ep);
    ep.shutdown().await;
}

/// Every frame through the smallest AF_XDP rings (64 slots, GSO batches
/// not handed to the kernel socket): four concurrent 4 MB echoes cycle
/// the tx ring hundreds of times through copy mode's drain, 32 frames a
/// kick, and every byte comes back. (veth completes a copy-mode frame
/// within the kick, so the ring never stays full here: the blocked-send
/// path is tested in memory, in core.rs and tx_room.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_through_the_smallest_rings_loses_nothing() {
    let Some((net, ep)) = xdp_endpoint(|b| {
        b.datapath(|c| {
            c.ring_size = 64;
            c.batches_through_kernel = false;
        })
    }) else {
        return;
    };
    let _handled = serve_echo(&ep);
    let server = net.server_addr(false, PORT);
    let client = quinn_client(&net, server, &ep);
    let conn = connect(&client, server).await;
    let mut echoes = tokio::task::JoinSet::new();
    for i in 0..4u8 {
        let conn = conn.clone();
        echoes.spawn(async move {
            let data = pattern(4 << 20, i);
            let back = timeout(TIMEOUT, echo_stream(&conn, &data)).await.unwrap();
            assert!(
                back == data,
                "stream {i}: echo differs ({} bytes back)",
                back.len()
            );
        });
    }
    while let Some(echo) = echoes.join_next().await {
        echo.unwrap();
    }
    // The AF_XDP queue's own counters: the kernel socket's queue must not
    // have carried the echoes.
    let stats = ep.stats();
    let (_, ring) = stats
        .queues
        .iter()
        .find(|(kind, _)| matches!(kind, QueueKind::Xsk { .. }))
        .expect("an AF_XDP queue");
    assert!(ring.tx_packets > 100 * 64, "{ring}");
    assert!(
        ring.tx_bytes > 16 << 20,
        "the echoes left through the ring: {ring}"
    );
    assert_eq!(ring.tx_invalid_descs + ring.rx_invalid_descs, 0, "{ring}");
    let kernel_tx = stats.datapath.tx_bytes - ring.tx_bytes;
    assert!(
        kernel_tx < 1 << 20,
        "{kernel_tx} bytes through the kernel socket"
    );
    assert_served_over_xdp(&ep);
    ep.shutdown().await;
}

/// A panicking engine over XDP: the endpoint fails closed, shutdown
/// returns, and the XDP program is detached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_engine_detaches_xdp_and_shutdown_returns() {
    let Some((net, ep)) = xdp_endpoint(|b| b) else {
        return;
    };
    let _handled = serve_echo(&ep);
    let server = net.server_addr(false, PORT);
    let client = quinn_client(&net, server, &ep);
    let conn = connect(&client, server).await;
    assert_eq!(echo_stream(&conn, b"before").await, b"before");
    ep.panic_engine_for_test(0);
    assert_fails_closed(&ep).await;
    assert!(!net.server_xdp_attached(), "XDP still attached");
}

/// The source policy over XDP: the client's IPv4 address is denied, so
/// its handshake never gets through (dropped in the program, counted);
/// the same client over IPv6 is admitted and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_policy_refuses_denied_clients_in_the_program() {
    let denied = format!("{}/32", TestNet::CLIENT_V4);
    let policy = datapath::SourcePolicy::new(Vec::new(), vec![denied.parse().unwrap()]).unwrap();
    let Some((net, ep)) = xdp_endpoint(|b| b.datapath(|c| c.source_policy = policy)) else {
        return;
    };
    spawn_echo(ep.clone());
    let v4 = net.server_addr(false, PORT);
    let refused = quinn_client(&net, v4, &ep);
    let attempt = timeout(
        Duration::from_millis(1500),
        refused.connect(v4, "localhost").unwrap(),
    )
    .await;
    assert!(attempt.is_err(), "a denied client connected: {attempt:?}");
    let steering = ep.stats().steering.unwrap();
    assert!(
        steering.get(datapath::program::SteerReason::DropDenied) > 0,
        "{steering}"
    );
    assert_eq!(ep.stats().admission.accepted, 0);

    let v6 = net.server_addr(true, PORT);
    let admitted = quinn_client(&net, v6, &ep);
    let conn = connect(&admitted, v6).await;
    assert_eq!(echo_stream(&conn, b"admitted").await, b"admitted");
    conn.close(0u32.into(), b"");
    ep.shutdown().await;
}
