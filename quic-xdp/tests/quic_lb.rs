//! A fleet of two quic-xdp servers behind a load balancer that routes by
//! QUIC-LB connection IDs: each server over XDP in its own namespace, the
//! balancer a UDP relay in the test (on loopback towards the clients), the
//! clients quinn. Clients migrate; the balancer, which keeps no state for
//! established connections, must find each one's server from its CID alone.

mod support;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use datapath::testbed::{TestNet, TestNetConfig};
use quic_xdp::{ActiveMode, Endpoint, Mode, QuicLbConfig};
use support::*;
use tokio::{net::UdpSocket, time::timeout};

const SERVER_IDS: [[u8; 2]; 2] = [[0x51, 0xa0], [0x51, 0xb0]];
const CONFIG_ID: u8 = 2;
const NONCE_LEN: usize = 8;
const LB_KEY: [u8; 16] = *b"fleet QUIC-LB k!";

/// A load balancer as the draft describes: a datagram whose destination CID
/// decodes (config, server ID) goes to that server; a long-header one that
/// does not (a client's first Initial) goes to a server picked for its
/// 4-tuple; anything else is unroutable and dropped.
struct LoadBalancer {
    listener: Arc<UdpSocket>,
    /// Decodes any server's CIDs (its own server ID is not used).
    decoder: QuicLbConfig,
    servers: Vec<(Arc<TestNet>, SocketAddr)>,
    /// Relay sockets, one per client address and server.
    relays: Mutex<HashMap<(SocketAddr, usize), Arc<UdpSocket>>>,
    /// The fallback's table: server per client address, for Initials.
    fallback: Mutex<HashMap<SocketAddr, usize>>,
    by_cid: [AtomicU64; 2],
    by_fallback: AtomicU64,
    unroutable: AtomicU64,
}

impl LoadBalancer {
    async fn start(servers: Vec<(Arc<TestNet>, SocketAddr)>) -> Arc<Self> {
        let listener = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let lb = Arc::new(Self {
            listener,
            decoder: QuicLbConfig::new(CONFIG_ID, &[0, 0], NONCE_LEN, Some(LB_KEY)).unwrap(),
            servers,
            relays: Mutex::default(),
            fallback: Mutex::default(),
            by_cid: Default::default(),
            by_fallback: AtomicU64::new(0),
            unroutable: AtomicU64::new(0),
        });
        let relay = lb.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 65536];
            loop {
                let (n, from) = relay.listener.recv_from(&mut buf).await.unwrap();
                if let Some(server) = relay.route(&buf[..n], from) {
                    let _ = relay.relay(from, server).send(&buf[..n]).await;
                }
            }
        });
        lb
    }

    fn address(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    fn route(&self, datagram: &[u8], from: SocketAddr) -> Option<usize> {
        let long = datagram.first()? & 0x80 != 0;
        let dcid = if long {
            let len = usize::from(*datagram.get(5)?);
            datagram.get(6..6 + len)?
        } else {
            // The CID describes its own length: the first octet's low bits.
            let len = 1 + usize::from(datagram.get(1)? & 0x1f);
            datagram.get(1..1 + len)?
        };
        let by_id = self.decoder.decode(dcid).and_then(|decoded| {
            SERVER_IDS
                .iter()
                .position(|id| id[..] == *decoded.server_id())
        });
        if let Some(server) = by_id {
            self.by_cid[server].fetch_add(1, Relaxed);
            return Some(server);
        }
        if !long {
            self.unroutable.fetch_add(1, Relaxed);
            return None;
        }
        self.by_fallback.fetch_add(1, Relaxed);
        let mut table = self.fallback.lock().unwrap();
        let next = table.len() % self.servers.len();
        Some(*table.entry(from).or_insert(next))
    }

    /// The socket that carries `client`'s datagrams to `server`, made in
    /// the server's client-side namespace; its replies go back to `client`.
    fn relay(self: &Arc<Self>, client: SocketAddr, server: usize) -> Arc<UdpSocket> {
        let mut relays = self.relays.lock().unwrap();
        relays
            .entry((client, server))
            .or_insert_with(|| {
                let (net, target) = &self.servers[server];
                let target = *target;
                let socket = net.client.run(|| {
                    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                    s.connect(target).unwrap();
                    s.set_nonblocking(true).unwrap();
                    s
                });
                let socket = Arc::new(UdpSocket::from_std(socket).unwrap());
                let (back, listener) = (socket.clone(), self.listener.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0; 65536];
                    while let Ok(n) = back.recv(&mut buf).await {
                        let _ = listener.send_to(&buf[..n], client).await;
                    }
                });
                socket
            })
            .clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_a_quic_lb_balancer_keeps_migrating_clients() {
    if !datapath::testbed::privileged() {
        return;
    }
    let certs = certs::DevCerts::localhost().unwrap();
    let secret = [9u8; 32];
    let mut servers = Vec::new();
    let mut endpoints = Vec::new();
    for (n, id) in SERVER_IDS.iter().enumerate() {
        // Two rx queues on the first server: engines route by the nonce.
        let net = Arc::new(
            TestNet::create(&TestNetConfig {
                queues: 2 - n as u32,
                ..Default::default()
            })
            .unwrap(),
        );
        let config = QuicLbConfig::new(CONFIG_ID, id, NONCE_LEN, Some(LB_KEY)).unwrap();
        let builder = Endpoint::builder(SocketAddr::new("::".parse().unwrap(), PORT))
            .interface(TestNet::SERVER_IF)
            .mode(Mode::Xdp)
            .alpn([ALPN])
            .certificate(certs.chain(), certs.key())
            .reset_secret(secret)
            .quic_lb(config);
        let ep = net.server.run(|| builder.bind().unwrap());
        assert!(matches!(ep.mode(), ActiveMode::Xdp { .. }), "{}", ep.mode());
        spawn_echo(ep.clone());
        servers.push((net.clone(), net.server_addr(false, PORT)));
        endpoints.push((net, ep));
    }
    let lb = LoadBalancer::start(servers).await;

    let mut clients = Vec::new();
    for i in 0..6u8 {
        let client = client_on(
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            &certs.ca_der(),
        );
        let conn = connect(&client, lb.address()).await;
        assert_eq!(
            echo_stream(&conn, &pattern(3000, i)).await,
            pattern(3000, i)
        );
        clients.push((client, conn));
    }
    let accepted: Vec<u64> = endpoints
        .iter()
        .map(|(_, ep)| ep.stats().admission.accepted)
        .collect();
    assert_eq!(accepted, [3, 3], "the fallback spreads new connections");

    // Each client moves to a new port twice: new 4-tuples the balancer
    // has never seen, so only the CID can name the server.
    for round in 0..2u8 {
        for (i, (client, conn)) in clients.iter().enumerate() {
            client
                .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap();
            let data = pattern(100_000, i as u8 ^ round);
            let echoed = timeout(Duration::from_secs(20), echo_stream(conn, &data))
                .await
                .expect("echo after migrating");
            assert_eq!(echoed, data);
        }
    }
    let by_cid: Vec<u64> = lb.by_cid.iter().map(|c| c.load(Relaxed)).collect();
    assert!(by_cid.iter().all(|&n| n > 100), "routed by CID: {by_cid:?}");
    assert_eq!(lb.unroutable.load(Relaxed), 0);
    // Only the clients' first Initials (client-chosen CIDs) fell back.
    assert!(
        lb.by_fallback.load(Relaxed) <= 6 * 3,
        "{}",
        lb.by_fallback.load(Relaxed)
    );
    for (_, ep) in &endpoints {
        assert_eq!(ep.stats().admission.accepted, 3, "no connection moved");
    }

    for (client, conn) in clients {
        conn.close(0u32.into(), b"");
        client.wait_idle().await;
    }
    for (net, ep) in endpoints {
        timeout(Duration::from_secs(10), ep.shutdown())
            .await
            .unwrap();
        assert!(!net.server_xdp_attached());
    }
}
