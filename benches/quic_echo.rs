//! QUIC echo: quic-xdp over XDP vs quic-xdp over kernel UDP vs the quinn
//! crate's server on kernel UDP, driven by the same quinn client from a
//! client namespace, in one run, alternating round by round.
//!
//! Workloads: bulk (streams of several MB echoed, Mbit/s one way) and
//! request/response (many concurrent 100-byte exchanges, each on its own
//! stream, requests/s).
//!
//!     sudo cargo bench -p quic-xdp-benches --bench quic_echo -- --secs 3 --rounds 5

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use datapath::testbed::{TestNet, TestNetConfig};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::runtime::Runtime;

#[derive(Parser)]
struct Args {
    /// Seconds per request/response measurement.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Bulk: concurrent streams, and bytes echoed on each.
    #[arg(long, default_value_t = 4)]
    bulk_streams: usize,
    #[arg(long, default_value_t = 16_000_000)]
    bulk_size: usize,
    /// Request/response: exchanges in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// AF_XDP ring slots for quic-xdp over XDP.
    #[arg(long, default_value_t = 2048)]
    ring_size: u32,
    /// Servers to measure (default: all three).
    #[arg(long, value_delimiter = ',')]
    servers: Option<Vec<usize>>,
    #[arg(long, hide = true)]
    bench: bool,
}

const PORT: u16 = 4433;
const ALPN: &[u8] = b"echo";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    QuicXdpOverXdp,
    QuicXdpOverUdp,
    QuinnOverUdp,
}

impl Server {
    const ALL: [Server; 3] = [
        Self::QuicXdpOverXdp,
        Self::QuicXdpOverUdp,
        Self::QuinnOverUdp,
    ];
    fn name(self) -> &'static str {
        match self {
            Self::QuicXdpOverXdp => "quic-xdp, XDP",
            Self::QuicXdpOverUdp => "quic-xdp, kernel UDP",
            Self::QuinnOverUdp => "quinn, kernel UDP",
        }
    }
}

enum Running {
    QuicXdp(quic_xdp::Endpoint),
    Quinn(quinn::Endpoint),
}

fn start(
    net: &TestNet,
    rt: &Runtime,
    server: Server,
    certs: &certs::DevCerts,
    ring_size: u32,
) -> anyhow::Result<Running> {
    let listen = SocketAddr::new("::".parse()?, PORT);
    match server {
        Server::QuicXdpOverXdp | Server::QuicXdpOverUdp => {
            let mode = if server == Server::QuicXdpOverXdp {
                quic_xdp::Mode::Xdp
            } else {
                quic_xdp::Mode::Udp
            };
            let builder = quic_xdp::Endpoint::builder(listen)
                .interface(TestNet::SERVER_IF)
                .mode(mode)
                .certificate(certs.chain(), certs.key())
                .alpn([ALPN])
                .datapath(|c| c.ring_size = ring_size);
            let ep = net.server.run(|| builder.bind())?;
            let accept = ep.clone();
            rt.spawn(async move {
                while let Some(incoming) = accept.accept().await {
                    tokio::spawn(async move {
                        let Ok(conn) = incoming.accept().await else {
                            return;
                        };
                        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            tokio::spawn(async move {
                                if tokio::io::copy(&mut recv, &mut send).await.is_ok() {
                                    let _ = send.finish();
                                }
                            });
                        }
                    });
                }
            });
            Ok(Running::QuicXdp(ep))
        }
        Server::QuinnOverUdp => {
            let socket = net.server.run(|| UdpSocket::bind(listen))?;
            let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(certs.chain(), certs.key())?;
            tls.alpn_protocols = vec![ALPN.to_vec()];
            let config =
                quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
            let ep = {
                let _guard = rt.enter();
                quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    Some(config),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )?
            };
            let accept = ep.clone();
            rt.spawn(async move {
                while let Some(incoming) = accept.accept().await {
                    tokio::spawn(async move {
                        let Ok(conn) = incoming.await else { return };
                        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            tokio::spawn(async move {
                                if tokio::io::copy(&mut recv, &mut send).await.is_ok() {
                                    let _ = send.finish();
                                }
                            });
                        }
                    });
                }
            });
            Ok(Running::Quinn(ep))
        }
    }
}

fn stop(net: &TestNet, rt: &Runtime, running: Running) -> anyhow::Result<()> {
    rt.block_on(async {
        match running {
            Running::QuicXdp(ep) => ep.shutdown().await,
            Running::Quinn(ep) => {
                ep.close(0u32.into(), b"");
                ep.wait_idle().await;
            }
        }
    });
    // quinn's driver task lets go of its socket a little after close:
    // wait until the next server can bind the port.
    let deadline = Instant::now() + Duration::from_secs(5);
    while net
        .server
        .run(|| UdpSocket::bind(SocketAddr::new("::".parse().unwrap(), PORT)))
        .is_err()
    {
        if Instant::now() >= deadline {
            bail!("port {PORT} still in use after stopping the server");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn client(
    net: &TestNet,
    rt: &Runtime,
    ca: &CertificateDer<'static>,
) -> anyhow::Result<quinn::Endpoint> {
    let socket = net.client.run(|| UdpSocket::bind("0.0.0.0:0"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let _guard = rt.enter();
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls)?,
    )));
    Ok(ep)
}

async fn echo(conn: &quinn::Connection, data: &[u8]) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let (sent, back) = tokio::join!(
        async {
            send.write_all(data).await?;
            send.finish()?;
            anyhow::Ok(())
        },
        recv.read_to_end(usize::MAX)
    );
    sent.map_err(|e| anyhow::anyhow!("sending: {e:?}"))?;
    if back.map_err(|e| anyhow::anyhow!("receiving: {e:?}"))? != data {
        bail!("echo differs");
    }
    Ok(())
}

/// Mbit/s of payload one way.
async fn bulk(conn: &quinn::Connection, args: &Args) -> anyhow::Result<f64> {
    let data: Arc<Vec<u8>> = Arc::new((0..args.bulk_size).map(|i| (i * 7) as u8).collect());
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.bulk_streams)
        .map(|_| {
            let (conn, data) = (conn.clone(), data.clone());
            tokio::spawn(async move { echo(&conn, &data).await })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok((args.bulk_streams * args.bulk_size) as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6)
}

/// Completed 100-byte request/response exchanges per second.
async fn request_response(conn: &quinn::Connection, args: &Args) -> anyhow::Result<f64> {
    let until = Instant::now() + Duration::from_secs_f64(args.secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let request = [w as u8; 100];
                let mut done = 0u64;
                while Instant::now() < until {
                    echo(&conn, &request).await?;
                    done += 1;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    common::require_root()?;
    let one_worker = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
    };
    let (server_rt, client_rt) = (one_worker()?, one_worker()?);
    let net = TestNet::create(&TestNetConfig::default())?;
    let certs = certs::DevCerts::localhost()?;
    let target = net.server_addr(false, PORT);

    let mut bulk_results: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut rr_results: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 0..args.rounds {
        for (i, server) in Server::ALL.into_iter().enumerate() {
            if args.servers.as_ref().is_some_and(|s| !s.contains(&i)) {
                continue;
            }
            let running = start(&net, &server_rt, server, &certs, args.ring_size)
                .with_context(|| server.name())?;
            let client = client(&net, &client_rt, &certs.ca_der())?;
            let (b, rr) = client_rt.block_on(async {
                let conn = client.connect(target, "localhost")?.await?;
                let b = bulk(&conn, &args).await?;
                let rr = request_response(&conn, &args).await?;
                conn.close(0u32.into(), b"");
                client.wait_idle().await;
                anyhow::Ok((b, rr))
            })?;
            eprintln!(
                "round {round}: {:<22} bulk {b:>7.0} Mbit/s, {rr:>7.0} req/s",
                server.name()
            );
            bulk_results[i].push(b);
            rr_results[i].push(rr);
            stop(&net, &server_rt, running)?;
        }
    }

    if bulk_results.iter().any(Vec::is_empty) {
        return Ok(()); // a subset was measured: no comparison table
    }
    let bulk: Vec<f64> = bulk_results.into_iter().map(common::median).collect();
    let rr: Vec<f64> = rr_results.into_iter().map(common::median).collect();
    println!(
        "| server | bulk echo, Mbit/s one way (median of {}) | 100 B request/response, req/s | bulk vs quinn | req/s vs quinn |",
        args.rounds
    );
    println!("|---|---|---|---|---|");
    for (i, server) in Server::ALL.into_iter().enumerate() {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} |",
            server.name(),
            bulk[i],
            rr[i],
            bulk[i] / bulk[2],
            rr[i] / rr[2]
        );
    }
    Ok(())
}
