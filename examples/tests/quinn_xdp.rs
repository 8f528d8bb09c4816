//! quinn and h3-quinn over AF_XDP (`datapath::quinn_socket::XdpUdpSocket`
//! as quinn's socket), both ends, between two namespaces: the client's
//! local port and the server's port are each steered by an XDP program of
//! their own. Each test creates and removes its namespaces.

use std::{sync::Arc, time::Duration};

use bytes::{Buf, Bytes};
use datapath::{
    DatapathConfig, Mode,
    program::SteerReason,
    quinn_socket::XdpUdpSocket,
    testbed::{Netns, TestNet, TestNetConfig, privileged},
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

/// quinn's socket on the AF_XDP datapath of `interface`, bound in `ns`.
fn xdp_socket(ns: &Netns, interface: &str, listen: &str) -> Arc<XdpUdpSocket> {
    let runtime = tokio::runtime::Handle::current();
    let mut config = DatapathConfig::new(listen.parse().unwrap());
    config.interface = Some(interface.into());
    config.mode = Mode::Xdp;
    ns.run(move || {
        let _entered = runtime.enter();
        XdpUdpSocket::open(&config).unwrap()
    })
}

fn tls(certs: &certs::DevCerts, alpn: &[u8]) -> (quinn::ServerConfig, quinn::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs.chain(), certs.key())
        .unwrap();
    server.alpn_protocols = vec![alpn.to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.ca_der()).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![alpn.to_vec()];
    (
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server).unwrap())),
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client).unwrap())),
    )
}

/// A quinn server and a quinn client, each on its own XDP socket.
struct Pair {
    net: TestNet,
    server_socket: Arc<XdpUdpSocket>,
    client_socket: Arc<XdpUdpSocket>,
    server: quinn::Endpoint,
    client: quinn::Endpoint,
}

fn pair(alpn: &[u8]) -> Pair {
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let certs = certs::DevCerts::localhost().unwrap();
    let (server_config, client_config) = tls(&certs, alpn);
    let server_socket = xdp_socket(&net.server, TestNet::SERVER_IF, "[::]:4433");
    let client_socket = xdp_socket(&net.client, TestNet::CLIENT_IF, "[::]:0");
    let runtime = Arc::new(quinn::TokioRuntime);
    let server = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server_config),
        server_socket.clone(),
        runtime.clone(),
    )
    .unwrap();
    let mut client = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        client_socket.clone(),
        runtime,
    )
    .unwrap();
    client.set_default_client_config(client_config);
    Pair {
        net,
        server_socket,
        client_socket,
        server,
        client,
    }
}

/// What a socket received over AF_XDP (not its kernel socket).
fn received_over_xdp(socket: &XdpUdpSocket) -> u64 {
    socket
        .counters()
        .iter()
        .filter(|(kind, _)| matches!(kind, datapath::QueueKind::Xsk { .. }))
        .map(|(_, c)| c.rx_packets)
        .sum()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// Echo over IPv4 and IPv6: streams from one byte to 8 MB (quinn's GSO
/// batches split into frames on the way out) and datagrams, with every
/// byte checked; both sides received over AF_XDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quinn_echo_over_xdp_on_both_ends() {
    if !privileged() {
        return;
    }
    let p = pair(b"echo");
    let server = p.server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let conn = incoming.await.unwrap();
                let datagrams = conn.clone();
                tokio::spawn(async move {
                    while let Ok(d) = datagrams.read_datagram().await {
                        let _ = datagrams.send_datagram(d);
                    }
                });
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let data = recv.read_to_end(usize::MAX).await.unwrap();
                        send.write_all(&data).await.unwrap();
                        send.finish().unwrap();
                    });
                }
            });
        }
    });
    for v6 in [false, true] {
        let target = p.net.server_addr(v6, 4433);
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            p.client.connect(target, "localhost").unwrap(),
        )
        .await
        .expect("handshake over XDP")
        .unwrap();
        for len in [1, 1200, 100_000, 8_000_000] {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let data = pattern(len);
            send.write_all(&data).await.unwrap();
            send.finish().unwrap();
            let echoed = tokio::time::timeout(Duration::from_secs(30), recv.read_to_end(len))
                .await
                .unwrap()
                .unwrap();
            assert!(
                echoed == data,
                "{len} bytes over {target} came back different"
            );
        }
        conn.send_datagram(Bytes::from_static(b"datagram")).unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), conn.read_datagram())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&echoed[..], b"datagram");
        // A dual-stack socket sees IPv4 peers as v4-mapped, as quinn does
        // on a kernel socket.
        assert_eq!(conn.remote_address().ip().to_canonical(), target.ip());
        conn.close(0u32.into(), b"done");
    }
    p.client.wait_idle().await;
    assert!(received_over_xdp(&p.server_socket) > 5_000);
    assert!(received_over_xdp(&p.client_socket) > 5_000);
    for socket in [&p.server_socket, &p.client_socket] {
        let steering = socket.steering_stats().unwrap();
        assert!(steering.get(SteerReason::Redirected) > 5_000, "{steering}");
    }
    p.server.close(0u32.into(), b"");
}

/// h3-quinn over it: an HTTP/3 server and client, each on XDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_quinn_requests_over_xdp_on_both_ends() {
    if !privileged() {
        return;
    }
    const BODY: usize = 3_000_000;
    let p = pair(b"h3");
    let server = p.server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let conn = incoming.await.unwrap();
                let mut h3 =
                    h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn))
                        .await
                        .unwrap();
                while let Ok(Some(resolver)) = h3.accept().await {
                    tokio::spawn(async move {
                        let (request, mut stream) = resolver.resolve_request().await.unwrap();
                        let n: usize = request.uri().path()[1..].parse().unwrap();
                        let response = http::Response::builder().status(200).body(()).unwrap();
                        stream.send_response(response).await.unwrap();
                        stream.send_data(Bytes::from(pattern(n))).await.unwrap();
                        stream.finish().await.unwrap();
                    });
                }
            });
        }
    });
    let target = p.net.server_addr(false, 4433);
    let conn = p
        .client
        .connect(target, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut driver, mut sender) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    for n in [0, 5_000, BODY] {
        let request = http::Request::get(format!("https://localhost/{n}"))
            .body(())
            .unwrap();
        let mut stream = sender.send_request(request).await.unwrap();
        // A server may stop the request side once it answered (RFC 9114 4.1.2).
        let _ = stream.finish().await;
        let response = stream.recv_response().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.unwrap() {
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        assert!(body == pattern(n), "body of {n} bytes differs");
    }
    let (client_rx, server_rx) = (
        received_over_xdp(&p.client_socket),
        received_over_xdp(&p.server_socket),
    );
    assert!(
        client_rx > 1_000 && server_rx > 10,
        "{client_rx} {server_rx}"
    );
    // Nothing came through the kernel sockets: everything was steered.
    for socket in [&p.server_socket, &p.client_socket] {
        let steering = socket.steering_stats().unwrap();
        assert_eq!(steering.get(SteerReason::PassNoSocket), 0, "{steering}");
    }
}

/// ECN codepoints survive both ways: the XDP socket's frames carry what
/// quinn asked for, and it reports what arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecn_is_carried_both_ways() {
    use quinn::{
        AsyncUdpSocket,
        udp::{EcnCodepoint, RecvMeta, Transmit, UdpSocketState},
    };
    if !privileged() {
        return;
    }
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let xdp = xdp_socket(&net.client, TestNet::CLIENT_IF, "10.77.0.1:0");
    let kernel = net
        .server
        .run(|| std::net::UdpSocket::bind("10.77.0.2:0").unwrap());
    let kernel_state = UdpSocketState::new((&kernel).into()).unwrap();
    kernel
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let payload = [0x40u8; 100];

    let transmit = |destination, ecn| Transmit {
        destination,
        ecn: Some(ecn),
        contents: &payload,
        segment_size: None,
        src_ip: None,
    };
    xdp.try_send(&transmit(kernel.local_addr().unwrap(), EcnCodepoint::Ect0))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut meta = [RecvMeta::default()];
    kernel.set_nonblocking(false).unwrap();
    let n = kernel_state
        .recv(
            (&kernel).into(),
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &mut meta,
        )
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(meta[0].ecn, Some(EcnCodepoint::Ect0));
    assert_eq!(meta[0].addr.port(), xdp.local_addr().unwrap().port());

    kernel_state
        .try_send(
            (&kernel).into(),
            &transmit(xdp.local_addr().unwrap(), EcnCodepoint::Ect1),
        )
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut meta = [RecvMeta::default()];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| {
            xdp.poll_recv(cx, &mut [std::io::IoSliceMut::new(&mut buf)], &mut meta)
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(n, 1);
    assert_eq!(meta[0].ecn, Some(EcnCodepoint::Ect1));
    assert_eq!(&buf[..meta[0].len], &payload);
    assert!(received_over_xdp(&xdp) == 1);
}

/// The example binaries on AF_XDP at both ends: echo-server over XDP in the
/// server namespace, echo-client --xdp in the client namespace; every byte
/// is checked by the client, and the server's counters show AF_XDP traffic.
#[test]
fn echo_client_over_xdp_against_echo_server_over_xdp() {
    use std::io::BufRead;
    if !privileged() {
        return;
    }
    let net = TestNet::create(&TestNetConfig::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("qx-echo-xdp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    let mut server = net
        .server
        .command(env!("CARGO_BIN_EXE_echo-server"))
        .args(["--interface", TestNet::SERVER_IF, "--mode", "xdp"])
        .arg("--ca-out")
        .arg(&ca)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let started: Vec<String> = lines
        .by_ref()
        .map_while(Result::ok)
        .take_while(|l| !l.starts_with("listening"))
        .collect();
    assert!(
        started.iter().any(|l| l.starts_with("mode: xdp")),
        "{started:?}"
    );
    let client = net
        .client
        .command(env!("CARGO_BIN_EXE_echo-client"))
        .args(["10.77.0.2:4433", "--xdp", TestNet::CLIENT_IF])
        .args(["--connections", "2", "--streams", "4", "--size", "300000"])
        .arg("--ca")
        .arg(&ca)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&client.stdout);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let _ = server.wait();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        client.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&client.stderr)
    );
    assert!(
        stdout.contains("echoed 2400000 bytes") && stdout.contains("content verified"),
        "{stdout}"
    );
    // The server received over AF_XDP (the client's datagrams were frames
    // its XDP program steered, and so were the server's at the client).
    let xsk = rest
        .iter()
        .find(|l| l.trim_start().starts_with("Xsk {"))
        .unwrap_or_else(|| panic!("no AF_XDP queue in {rest:?}"));
    let rx: u64 = xsk
        .split("rx_packets=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rx > 1000, "{xsk}");
}
