//! Shared by the endpoint tests: a quinn client that trusts the server's
//! development CA, an echo server task, and patterned payloads.
#![allow(dead_code)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use datapath::{
    QueueKind,
    testbed::{TestNet, TestNetConfig},
};
use quic_xdp::{ActiveMode, Connection, Endpoint, EndpointBuilder, Mode};
use quinn::crypto::rustls::QuicClientConfig;
use rustls_pki_types::CertificateDer;

pub const ALPN: &[u8] = b"echo";

/// A quinn client configuration trusting `ca`, offering `alpn`.
pub fn client_config(ca: &CertificateDer<'static>, alpn: &[u8]) -> quinn::ClientConfig {
    client_config_with(ca, alpn, rustls::crypto::ring::default_provider())
}

/// Like `client_config`, with the cryptography (key exchange groups...)
/// of `provider`.
pub fn client_config_with(
    ca: &CertificateDer<'static>,
    alpn: &[u8],
    provider: rustls::crypto::CryptoProvider,
) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.enable_early_data = true;
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
}

/// A quinn client endpoint bound to the unspecified address of `server`'s
/// family, trusting `ca`.
pub fn client(server: SocketAddr, ca: &CertificateDer<'static>) -> quinn::Endpoint {
    client_on(unspecified_socket(server), ca)
}

/// A UDP socket on the unspecified address of `server`'s family, created
/// in the calling thread's network namespace.
pub fn unspecified_socket(server: SocketAddr) -> std::net::UdpSocket {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap();
    std::net::UdpSocket::bind(bind).unwrap()
}

/// A quinn client on `socket` (which keeps the namespace it was made in).
pub fn client_on(socket: std::net::UdpSocket, ca: &CertificateDer<'static>) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    ep.set_default_client_config(client_config(ca, ALPN));
    ep
}

pub async fn connect(client: &quinn::Endpoint, server: SocketAddr) -> quinn::Connection {
    client.connect(server, "localhost").unwrap().await.unwrap()
}

/// Serves every connection: echoes each bidirectional stream and each
/// datagram back.
pub fn spawn_echo(endpoint: Endpoint) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.accept().await else {
                    return;
                };
                assert_eq!(conn.alpn_protocol().as_deref(), Some(ALPN));
                tokio::spawn(echo_datagrams(conn.clone()));
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut recv, &mut send).await;
                        let _ = send.finish();
                    });
                }
            });
        }
    })
}

/// Serves every connection with `Endpoint::serve`: the same echo, run on
/// the engine threads. Each connection's handler checks that it runs on
/// one (the run-to-completion promise) and counts itself in `handled`.
pub fn serve_echo(endpoint: &Endpoint) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = handled.clone();
    endpoint
        .serve(move |conn: Connection| {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            assert!(
                thread.starts_with("quic-xdp-engine-"),
                "handler ran on {thread:?}"
            );
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                assert_eq!(conn.alpn_protocol().as_deref(), Some(ALPN));
                tokio::task::spawn_local(echo_datagrams(conn.clone()));
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut recv, &mut send).await;
                        let _ = send.finish();
                    });
                }
            }
        })
        .unwrap();
    handled
}

async fn echo_datagrams(conn: Connection) {
    while let Ok(d) = conn.read_datagram().await {
        let _ = conn.send_datagram(d);
    }
}

/// `len` bytes that differ with `seed` and position.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Like `echo_stream`, reporting failure instead of panicking.
pub async fn echo_stream_result(conn: &quinn::Connection, data: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(data).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    recv.read_to_end(usize::MAX)
        .await
        .map_err(|e| e.to_string())
}

/// Sends `data` on a new stream and returns what came back.
pub async fn echo_stream(conn: &quinn::Connection, data: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let ((), read) = tokio::join!(
        async {
            send.write_all(data).await.unwrap();
            send.finish().unwrap();
        },
        recv.read_to_end(usize::MAX)
    );
    read.unwrap()
}

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Echo of 1 byte to 50 MB on one connection, content checked.
pub async fn echo_sizes(conn: &quinn::Connection) {
    for (len, seed) in [
        (1, 1u8),
        (1200, 2),
        (65_536, 3),
        (1 << 20, 4),
        (50 << 20, 5),
    ] {
        let data = pattern(len, seed);
        let back = tokio::time::timeout(TIMEOUT, echo_stream(conn, &data))
            .await
            .unwrap();
        assert!(
            back == data,
            "{len} bytes: echo differs (got {} bytes)",
            back.len()
        );
    }
}

/// 100 connections at once, each echoing one stream.
pub async fn hundred_connections(server: SocketAddr, make_client: impl Fn() -> quinn::Endpoint) {
    let tasks: Vec<_> = (0..100u8)
        .map(|i| {
            let client = make_client();
            tokio::spawn(async move {
                let conn = connect(&client, server).await;
                let data = pattern(10_000 + i as usize, i);
                assert_eq!(echo_stream(&conn, &data).await, data);
                conn.close(0u32.into(), b"");
                client.wait_idle().await;
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(TIMEOUT, t).await.unwrap().unwrap();
    }
}

/// 1000 streams on one connection, all at once.
pub async fn thousand_streams(conn: &quinn::Connection) {
    let tasks: Vec<_> = (0..1000u32)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let data = pattern(100 + (i as usize % 900), i as u8);
                assert_eq!(echo_stream(&conn, &data).await, data);
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(TIMEOUT, t).await.unwrap().unwrap();
    }
}

/// A second connection resumes the first's session and sends its request
/// as 0-RTT data, which the server accepts.
pub async fn resumption_and_zero_rtt(client: &quinn::Endpoint, server: SocketAddr) {
    let first = connect(client, server).await;
    assert_eq!(
        echo_stream(&first, b"full handshake").await,
        b"full handshake"
    );
    // Let the session ticket arrive before closing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.close(0u32.into(), b"");
    let connecting = client.connect(server, "localhost").unwrap();
    let (conn, accepted) = match connecting.into_0rtt() {
        Ok(early) => early,
        Err(_) => panic!("no 0-RTT: the session was not resumed"),
    };
    let data = pattern(5000, 9);
    let echoed = echo_stream(&conn, &data);
    let (echoed, accepted) = tokio::join!(echoed, accepted);
    assert!(accepted, "the server rejected 0-RTT");
    assert_eq!(echoed, data);
    let handshake = conn.handshake_data().unwrap();
    let handshake = handshake
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .unwrap();
    assert_eq!(handshake.protocol.as_deref(), Some(ALPN));
}

pub const PORT: u16 = 4433;

/// A namespace pair with quic-xdp bound on the server side over XDP, or
/// None when privileged tests are skipped.
pub fn xdp_endpoint(
    edit: impl FnOnce(EndpointBuilder) -> EndpointBuilder + Send,
) -> Option<(TestNet, Endpoint)> {
    if !datapath::testbed::privileged() {
        return None;
    }
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let builder = Endpoint::builder(SocketAddr::new("::".parse().unwrap(), PORT))
        .interface(TestNet::SERVER_IF)
        .mode(Mode::Xdp)
        .alpn([ALPN]);
    let ep = net.server.run(|| edit(builder).bind().unwrap());
    assert!(matches!(ep.mode(), ActiveMode::Xdp { .. }), "{}", ep.mode());
    Some((net, ep))
}

pub fn quinn_client(net: &TestNet, server: SocketAddr, ep: &Endpoint) -> quinn::Endpoint {
    let socket = net.client.run(|| unspecified_socket(server));
    client_on(socket, ep.dev_ca_certificate().unwrap())
}

/// Runs `nft` with `args` in `ns`; panics with its stderr on failure.
pub fn nft(ns: &datapath::testbed::Netns, args: &[&str]) {
    let out = ns.command("nft").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Installs `rules` in a fresh table `name` of `ns` (hooks: an input chain
/// `in` and an output chain `out`), or removes the table with no rules.
pub fn nft_table(ns: &datapath::testbed::Netns, name: &str, rules: &[(&str, &str)]) {
    if rules.is_empty() {
        return nft(ns, &["delete", "table", "inet", name]);
    }
    nft(ns, &["add", "table", "inet", name]);
    nft(
        ns,
        &[
            "add",
            "chain",
            "inet",
            name,
            "in",
            "{ type filter hook input priority 0 ; }",
        ],
    );
    nft(
        ns,
        &[
            "add",
            "chain",
            "inet",
            name,
            "out",
            "{ type filter hook output priority 0 ; }",
        ],
    );
    for (chain, rule) in rules {
        let mut args = vec!["add", "rule", "inet", name, chain];
        args.extend(rule.split(' '));
        nft(ns, &args);
    }
}

/// The packet counts of the `counter` statements in table `name`, in order.
pub fn nft_counters(ns: &datapath::testbed::Netns, name: &str) -> Vec<u64> {
    nft_counter_values(ns, name)
        .into_iter()
        .map(|(packets, _)| packets)
        .collect()
}

/// (packets, bytes) of the `counter` statements in table `name`, in order.
pub fn nft_counter_values(ns: &datapath::testbed::Netns, name: &str) -> Vec<(u64, u64)> {
    let out = ns
        .command("nft")
        .args(["list", "table", "inet", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split("counter packets ")
        .skip(1)
        .map(|rest| {
            let mut words = rest.split_whitespace();
            let packets = words.next().unwrap().parse().unwrap();
            let bytes = words.nth(1).unwrap().parse().unwrap();
            (packets, bytes)
        })
        .collect()
}

/// An echo endpoint over XDP and one quinn connection to it (IPv4).
pub struct EchoOverXdp {
    pub net: TestNet,
    pub ep: Endpoint,
    pub server: SocketAddr,
    /// Keeps the client endpoint (and its socket) alive.
    pub client: quinn::Endpoint,
    pub conn: quinn::Connection,
}

/// None when privileged tests are skipped.
pub async fn echo_over_xdp() -> Option<EchoOverXdp> {
    let (net, ep) = xdp_endpoint(|b| b)?;
    spawn_echo(ep.clone());
    let server = net.server_addr(false, PORT);
    let client = quinn_client(&net, server, &ep);
    let conn = connect(&client, server).await;
    Some(EchoOverXdp {
        net,
        ep,
        server,
        client,
        conn,
    })
}

/// Datagrams went through the AF_XDP sockets, and none escaped steering.
pub fn assert_served_over_xdp(ep: &Endpoint) {
    let stats = ep.stats();
    let (mut xsk, mut misses) = (0, 0);
    for (kind, c) in &stats.queues {
        match kind {
            QueueKind::Xsk { .. } => xsk += c.rx_packets,
            QueueKind::SteeringMiss { .. } => misses += c.rx_packets,
            QueueKind::Udp { .. } => panic!("kernel UDP queue in XDP mode"),
        }
    }
    assert!(xsk > 0, "{stats:?}");
    assert_eq!(misses, 0, "{stats:?}");
    let d = stats.datapath;
    assert_eq!(
        (
            d.rx_malformed,
            d.rx_bad_checksum,
            d.tx_no_neighbor,
            d.tx_too_big
        ),
        (0, 0, 0, 0),
        "{d:?}"
    );
}

/// After an engine panicked: accept returns None and shutdown returns.
pub async fn assert_fails_closed(ep: &Endpoint) {
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), ep.accept())
        .await
        .expect("accept returned");
    assert!(next.is_none(), "still accepting after an engine panic");
    tokio::time::timeout(std::time::Duration::from_secs(10), ep.shutdown())
        .await
        .expect("shutdown returned");
}
