//! A single-threaded harness of the engines' receive path, for fuzzing
//! (feature `fuzzing`): frame decode, CID routing between two engines, each
//! engine's quinn-proto endpoint configured as `EndpointBuilder::bind`
//! configures it, connection events, timers and transmits. No sockets.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use datapath::wire::{ChecksumPolicy, parse_udp_frame};
use quinn_proto::{ConnectionHandle, DatagramEvent, EcnCodepoint};

use crate::{EndpointBuilder, cid::CidScheme};

const ENGINES: usize = 2;

struct Engine {
    endpoint: quinn_proto::Endpoint,
    conns: HashMap<ConnectionHandle, quinn_proto::Connection>,
}

pub struct RxHarness {
    engines: Vec<Engine>,
    cids: CidScheme,
    now: Instant,
    buf: Vec<u8>,
}

impl RxHarness {
    pub fn new() -> Self {
        let mut builder =
            EndpointBuilder::new(SocketAddr::from(([10, 77, 0, 2], 4433))).alpn(["h3", "echo"]);
        let quic = builder.quic_config().expect("development identity");
        let (protos, cids) = quic.endpoints(ENGINES);
        Self {
            engines: protos
                .into_iter()
                .map(|endpoint| Engine {
                    endpoint,
                    conns: HashMap::new(),
                })
                .collect(),
            cids,
            now: Instant::now(),
            buf: Vec::new(),
        }
    }

    /// One received Ethernet frame, arriving at engine `arrival % 2`.
    pub fn feed(&mut self, frame: &[u8], arrival: usize) {
        self.now += Duration::from_millis(1);
        let Ok(d) = parse_udp_frame(frame, ChecksumPolicy::Trust) else {
            return;
        };
        let owner = self.cids.route(d.payload, arrival % ENGINES);
        let engine = &mut self.engines[owner];
        let ecn = d.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
        self.buf.clear();
        let event = engine.endpoint.handle(
            self.now,
            d.src,
            Some(d.dst.ip()),
            ecn,
            BytesMut::from(d.payload),
            &mut self.buf,
        );
        match event {
            Some(DatagramEvent::NewConnection(incoming)) => {
                self.buf.clear();
                if let Ok((h, conn)) =
                    engine
                        .endpoint
                        .accept(incoming, self.now, &mut self.buf, None)
                {
                    engine.conns.insert(h, conn);
                }
            }
            Some(DatagramEvent::ConnectionEvent(h, event)) => {
                if let Some(conn) = engine.conns.get_mut(&h) {
                    conn.handle_event(event);
                }
            }
            Some(DatagramEvent::Response(_)) | None => {}
        }
        self.drive(owner);
    }

    /// What `Engine::drive` does for every connection of engine `index`.
    fn drive(&mut self, index: usize) {
        let Engine { endpoint, conns } = &mut self.engines[index];
        let mut drained = Vec::new();
        for (&h, conn) in conns.iter_mut() {
            if conn.poll_timeout().is_some_and(|t| t <= self.now) {
                conn.handle_timeout(self.now);
            }
            while let Some(event) = conn.poll_endpoint_events() {
                if event.is_drained() {
                    drained.push(h);
                }
                if let Some(event) = endpoint.handle_event(h, event) {
                    conn.handle_event(event);
                }
            }
            while conn.poll().is_some() {}
            self.buf.clear();
            while conn.poll_transmit(self.now, 10, &mut self.buf).is_some() {
                self.buf.clear();
            }
        }
        for h in drained {
            conns.remove(&h);
        }
    }
}

impl Default for RxHarness {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datapath::wire::{FrameRoute, MAX_HEADER_LEN, emit_udp_headers};
    use quinn_proto::crypto::rustls::QuicClientConfig;

    use super::*;

    /// A client's first datagram (its Initial), as an Ethernet frame.
    fn client_initial() -> Vec<u8> {
        // The harness's server certificate is never checked here: the
        // handshake stops at the server's first flight.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(certs::DevCerts::localhost().unwrap().ca_der())
            .unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let config =
            quinn_proto::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        let mut client = quinn_proto::Endpoint::new(Default::default(), None, false, None);
        let server: SocketAddr = "10.77.0.2:4433".parse().unwrap();
        let (_, mut conn) = client
            .connect(Instant::now(), config, server, "localhost")
            .unwrap();
        let mut payload = Vec::new();
        let _initial = conn
            .poll_transmit(Instant::now(), 1, &mut payload)
            .expect("an Initial");
        let route = FrameRoute {
            src_mac: smoltcp::wire::EthernetAddress([2, 0x77, 0, 0, 0, 1]),
            dst_mac: smoltcp::wire::EthernetAddress([2, 0x77, 0, 0, 0, 2]),
            vlan: None,
        };
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = emit_udp_headers(
            &mut header,
            &route,
            "10.77.0.1:50000".parse().unwrap(),
            server,
            None,
            &payload,
        );
        let mut frame = header[..n].to_vec();
        frame.extend_from_slice(&payload);
        frame
    }

    #[test]
    fn a_real_initial_creates_a_connection_on_the_engine_it_reached() {
        let frame = client_initial();
        let mut harness = RxHarness::new();
        harness.feed(&frame, 1);
        let conns: Vec<usize> = harness.engines.iter().map(|e| e.conns.len()).collect();
        assert_eq!(
            conns,
            [0, 1],
            "a client-chosen CID stays with the arrival engine"
        );
        // The same datagram again (a retransmission on the same flow) is
        // routed the same way: no second connection.
        harness.feed(&frame, 1);
        assert_eq!(
            harness.engines.iter().map(|e| e.conns.len()).sum::<usize>(),
            1
        );
        if let Some(dir) = std::env::var_os("QUIC_XDP_WRITE_SEED") {
            // Fuzz input format: [arrival][u16 LE length][frame]...
            let mut seed = vec![1u8];
            seed.extend_from_slice(&(frame.len() as u16).to_le_bytes());
            seed.extend_from_slice(&frame);
            std::fs::write(std::path::Path::new(&dir).join("client_initial"), seed).unwrap();
        }
    }
}
