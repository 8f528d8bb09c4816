//! What the QUIC echo benchmarks share: the servers compared (quic-xdp
//! over XDP and over kernel UDP, quinn over kernel UDP), the quinn client
//! that drives them, and the measured workloads.

// Each benchmark uses a part of these.
#![allow(dead_code)]

use std::{
    net::{SocketAddr, UdpSocket},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::bail;
use datapath::testbed::TestNet;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::runtime::Runtime;

pub const PORT: u16 = 4433;

/// The server's and the client's runtimes: one worker each, named so that
/// the server's threads are counted (SERVER_THREADS) and the client's not.
pub fn runtimes() -> std::io::Result<(Runtime, Runtime)> {
    let one_worker = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
    };
    Ok((one_worker("bench-server")?, one_worker("bench-client")?))
}
pub const ALPN: &[u8] = b"echo";

/// The TLS cryptography of every server and the client in a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Crypto {
    Ring,
    /// aws-lc-rs: X25519MLKEM768 (post-quantum hybrid) first.
    AwsLcRs,
}

impl Crypto {
    pub fn provider(self) -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(match self {
            Self::Ring => rustls::crypto::ring::default_provider(),
            Self::AwsLcRs => rustls::crypto::aws_lc_rs::default_provider(),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Server {
    QuicXdpOverXdp,
    QuicXdpOverUdp,
    QuinnOverUdp,
    /// Over XDP with every transmit on AF_XDP (no GSO batches through the
    /// kernel socket): what `batches_through_kernel` saves.
    QuicXdpOverXdpFramesOnly,
}

impl Server {
    pub const ALL: [Server; 4] = [
        Self::QuicXdpOverXdp,
        Self::QuicXdpOverUdp,
        Self::QuinnOverUdp,
        Self::QuicXdpOverXdpFramesOnly,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Self::QuicXdpOverXdp => "quic-xdp, XDP",
            Self::QuicXdpOverUdp => "quic-xdp, kernel UDP",
            Self::QuinnOverUdp => "quinn, kernel UDP",
            Self::QuicXdpOverXdpFramesOnly => "quic-xdp, XDP, frames only",
        }
    }
}

pub enum Running {
    QuicXdp(quic_xdp::Endpoint),
    Quinn(quinn::Endpoint),
}

// Each server echoes with its library's zero-copy calls: received chunks
// go back as they came.
async fn echo_quic_xdp(mut send: quic_xdp::SendStream, mut recv: quic_xdp::RecvStream) {
    while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX).await {
        if send.write_chunk(chunk).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

async fn echo_quinn(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
        if send.write_chunk(chunk.bytes).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

pub fn start(
    net: &TestNet,
    rt: &Runtime,
    server: Server,
    certs: &certs::DevCerts,
    crypto: Crypto,
    datapath: impl FnOnce(&mut datapath::DatapathConfig),
) -> anyhow::Result<Running> {
    let listen = SocketAddr::new("::".parse()?, PORT);
    match server {
        Server::QuicXdpOverXdp | Server::QuicXdpOverUdp | Server::QuicXdpOverXdpFramesOnly => {
            let mode = if server == Server::QuicXdpOverUdp {
                quic_xdp::Mode::Udp
            } else {
                quic_xdp::Mode::Xdp
            };
            let frames_only = server == Server::QuicXdpOverXdpFramesOnly;
            let builder = quic_xdp::Endpoint::builder(listen)
                .interface(TestNet::SERVER_IF)
                .mode(mode)
                .certificate(certs.chain(), certs.key())
                .crypto_provider(crypto.provider())
                .alpn([ALPN])
                .datapath(datapath)
                .datapath(|c| c.batches_through_kernel = !frames_only);
            let ep = net.server.run(|| builder.bind())?;
            // Run to completion: the echo runs on the engine thread.
            ep.serve(|conn| async move {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(echo_quic_xdp(send, recv));
                }
            })?;
            Ok(Running::QuicXdp(ep))
        }
        Server::QuinnOverUdp => {
            let socket = net.server.run(|| UdpSocket::bind(listen))?;
            let mut tls = rustls::ServerConfig::builder_with_provider(crypto.provider())
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
                        while let Ok((send, recv)) = conn.accept_bi().await {
                            tokio::spawn(echo_quinn(send, recv));
                        }
                    });
                }
            });
            Ok(Running::Quinn(ep))
        }
    }
}

pub fn stop(net: &TestNet, rt: &Runtime, running: Running) -> anyhow::Result<()> {
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

pub fn client(
    net: &TestNet,
    rt: &Runtime,
    ca: &CertificateDer<'static>,
    crypto: Crypto,
) -> anyhow::Result<quinn::Endpoint> {
    let socket = net.client.run(|| UdpSocket::bind("0.0.0.0:0"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto.provider())
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

pub async fn echo(conn: &quinn::Connection, data: &[u8]) -> anyhow::Result<()> {
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

/// The server threads whose CPU time is counted.
pub const SERVER_THREADS: &[&str] = &["bench-server", "quic-xdp-engine"];
/// The client's runtime threads: their CPU per unit shows how much of the
/// two cores the load generator itself takes.
pub const CLIENT_THREADS: &[&str] = &["bench-client"];

/// One workload's result in one round.
#[derive(Clone, Copy, Default)]
pub struct Sample {
    pub rate: f64,
    /// Server CPU microseconds per unit (request, handshake, or MB).
    pub cpu_us: f64,
    /// The same for the client (the load generator).
    pub client_cpu_us: f64,
    /// The client's CPU time over the elapsed time: near 1.0 its one
    /// thread was saturated, and the rate is what the client could do.
    pub client_busy: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// UDP datagrams per unit from the server to the client and back, as
    /// the client's connection counted them (NaN: not one connection).
    pub datagrams_from_server: f64,
    pub datagrams_to_server: f64,
}

impl Sample {
    /// A workload that was not measured.
    pub const NONE: Sample = Sample {
        rate: f64::NAN,
        cpu_us: f64::NAN,
        client_cpu_us: f64::NAN,
        client_busy: f64::NAN,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        datagrams_from_server: f64::NAN,
        datagrams_to_server: f64::NAN,
    };
}

/// Runs `work`, which returns (units done, latencies in us); the rate is
/// units per second, scaled by `rate_scale` for display. With `conn`, the
/// work's datagrams on that connection are counted too.
pub async fn measure<F>(
    work: F,
    cpu_unit: f64,
    rate_scale: f64,
    conn: Option<&quinn::Connection>,
) -> anyhow::Result<Sample>
where
    F: std::future::Future<Output = anyhow::Result<(f64, Vec<f64>)>>,
{
    let datagrams = || {
        conn.map(|c| {
            let stats = c.stats();
            (stats.udp_rx.datagrams, stats.udp_tx.datagrams)
        })
    };
    let datagrams_before = datagrams();
    let cpu_before = crate::common::ThreadCpu::sample(SERVER_THREADS);
    let client_before = crate::common::ThreadCpu::sample(CLIENT_THREADS);
    let start = Instant::now();
    let (units, mut latencies) = work.await?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = crate::common::ThreadCpu::sample(SERVER_THREADS)
        .since(&cpu_before)
        .as_secs_f64();
    let client_cpu = crate::common::ThreadCpu::sample(CLIENT_THREADS)
        .since(&client_before)
        .as_secs_f64();
    let per_unit = |n: u64| n as f64 / (units / cpu_unit);
    let (from_server, to_server) = match (datagrams_before, datagrams()) {
        (Some((rx0, tx0)), Some((rx1, tx1))) => (per_unit(rx1 - rx0), per_unit(tx1 - tx0)),
        _ => (f64::NAN, f64::NAN),
    };
    Ok(Sample {
        rate: units / elapsed * rate_scale,
        cpu_us: cpu * 1e6 / (units / cpu_unit),
        client_cpu_us: client_cpu * 1e6 / (units / cpu_unit),
        client_busy: client_cpu / elapsed,
        p50_us: crate::common::quantile(&mut latencies, 0.5),
        p99_us: crate::common::quantile(&mut latencies, 0.99),
        datagrams_from_server: from_server,
        datagrams_to_server: to_server,
    })
}

/// Completed 100-byte request/response exchanges, and their latencies.
pub async fn request_response(
    conn: &quinn::Connection,
    secs: f64,
    concurrency: usize,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let request = [w as u8; 100];
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    echo(&conn, &request).await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    gather(tasks).await
}

/// Every task's latencies, and how many there are.
pub async fn gather(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<f64>>>>,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all.len() as f64, all))
}
