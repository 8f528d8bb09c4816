//! A single-threaded harness of the engines' receive path, for fuzzing
//! (feature `fuzzing`): frame decode, CID routing between two engines, and
//! each engine's sans-IO core (`EngineCore`, the one the engine threads
//! run) configured as `EndpointBuilder::bind` configures it: admission,
//! connection events, timers, transmits into memory. No sockets.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use datapath::{
    Transmit,
    wire::{ChecksumPolicy, parse_udp_frame},
};
use quinn_proto::EcnCodepoint;

use crate::{
    Connecting, EndpointBuilder,
    cid::CidScheme,
    core::{EngineCore, Handler, Outbox, ServeHandler},
    shared::{EndpointShared, EngineShared},
};

const ENGINES: usize = 2;

/// Transmits go nowhere; counted.
#[derive(Default)]
struct Sink {
    datagrams: usize,
}

impl Outbox for Sink {
    fn send(&mut self, _queue: usize, _t: &Transmit<'_>) -> std::io::Result<()> {
        self.datagrams += 1;
        Ok(())
    }

    fn max_segments(&self, _queue: usize) -> usize {
        10
    }
}

/// Engine cores fed datagrams directly, with no socket: what the fuzz
/// targets drive.
pub struct RxHarness {
    engines: Vec<EngineCore>,
    cids: CidScheme,
    now: Instant,
    sink: Sink,
    /// Connections the cores accepted, kept alive as a handler would.
    served: Vec<Connecting>,
}

impl RxHarness {
    /// Two engine cores with a development identity, serving h3 and echo.
    pub fn new() -> Self {
        let mut builder =
            EndpointBuilder::new(SocketAddr::from(([10, 77, 0, 2], 4433))).alpn(["h3", "echo"]);
        let quic = builder.quic_config().expect("development identity");
        let admission = Arc::new(builder.admission());
        let (protos, cids) = quic.endpoints(ENGINES, None);
        // As with Endpoint::serve: the cores accept what admission allows.
        let handler = ServeHandler::default();
        let accept_all: Handler = Arc::new(|_| Box::pin(async {}));
        let _ = handler.set(accept_all);
        let endpoint = Arc::new(EndpointShared::default());
        Self {
            engines: protos
                .into_iter()
                .map(|proto| {
                    let shared = Arc::new(EngineShared::new(endpoint.clone()));
                    EngineCore::new(proto, shared, admission.clone(), handler.clone())
                })
                .collect(),
            cids,
            now: Instant::now(),
            sink: Sink::default(),
            served: Vec::new(),
        }
    }

    /// One received Ethernet frame, arriving at engine `arrival % 2`; then
    /// one engine pass of the engine that owns it.
    pub fn feed(&mut self, frame: &[u8], arrival: usize) {
        self.now += Duration::from_millis(1);
        let Ok(d) = parse_udp_frame(frame, ChecksumPolicy::Trust) else {
            return;
        };
        let owner = self.cids.route(d.payload, arrival % ENGINES);
        let core = &mut self.engines[owner];
        let ecn = d.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
        let now = self.now;
        core.handle(now, 0, d.src, d.dst.ip(), ecn, d.payload);
        core.admit_new(now);
        self.served.extend(core.take_served());
        core.collect_dirty_and_expired(now);
        core.process_touched(now);
        core.drive_touched(now, &mut self.sink);
        core.send_responses(&mut self.sink);
    }

    /// Open connections per engine.
    pub fn connections(&self) -> Vec<usize> {
        self.engines.iter().map(EngineCore::connections).collect()
    }

    /// Datagrams the engines transmitted so far.
    pub fn transmitted(&self) -> usize {
        self.sink.datagrams
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
        assert_eq!(
            harness.connections(),
            [0, 1],
            "a client-chosen CID stays with the arrival engine"
        );
        assert!(
            harness.transmitted() > 0,
            "the core answered the Initial with the server's first flight"
        );
        // The same datagram again (a retransmission on the same flow) is
        // routed the same way: no second connection.
        harness.feed(&frame, 1);
        assert_eq!(harness.connections().iter().sum::<usize>(), 1);
        if let Some(dir) = std::env::var_os("QUIC_XDP_WRITE_SEED") {
            // Fuzz input format: [arrival][u16 LE length][frame]...
            let mut seed = vec![1u8];
            seed.extend_from_slice(&(frame.len() as u16).to_le_bytes());
            seed.extend_from_slice(&frame);
            std::fs::write(std::path::Path::new(&dir).join("client_initial"), seed).unwrap();
        }
    }
}
