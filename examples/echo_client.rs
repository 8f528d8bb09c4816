//! Client for `echo-server` (or any QUIC echo with the same ALPN): opens
//! connections and streams, checks every echoed byte, reports throughput.
//! Runs on quinn, over kernel UDP or (`--xdp IFACE`) over AF_XDP.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use quinn::crypto::rustls::QuicClientConfig;
use rustls_pki_types::{CertificateDer, pem::PemObject};

#[derive(Parser)]
#[command(
    version,
    about = "QUIC echo client (quinn): loads an echo server and checks every byte"
)]
struct Args {
    /// The echo server.
    server: SocketAddr,
    /// CA certificate (PEM) to trust, e.g. the server's dev-ca.pem.
    #[arg(long, default_value = "dev-ca.pem")]
    ca: PathBuf,
    /// Name to verify the server's certificate against.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    #[arg(long, default_value = "echo")]
    alpn: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Streams per connection, all in flight at once.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Bytes sent (and echoed) per stream.
    #[arg(long, default_value_t = 1 << 20)]
    size: usize,
    /// Datagrams to echo per connection.
    #[arg(long, default_value_t = 0)]
    datagrams: usize,
    /// Send and receive through AF_XDP on this interface (quinn over the
    /// quic-xdp datapath: an XDP program steers the client's port), so the
    /// kernel's UDP path does not limit the load. Needs root or CAP_BPF +
    /// CAP_NET_ADMIN.
    #[arg(long, value_name = "IFACE")]
    xdp: Option<String>,
}

mod common;
mod quinn_xdp;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_logging();
    common::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ca = CertificateDer::from_pem_file(&args.ca)
        .with_context(|| format!("reading the CA certificate {}", args.ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![args.alpn.as_bytes().to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let bind: SocketAddr = if args.server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let mut client = match &args.xdp {
        None => quinn::Endpoint::client(bind)?,
        Some(interface) => quinn_xdp::endpoint(bind, interface, None)?,
    };
    client.set_default_client_config(config);

    let args = Arc::new(args);
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| {
            let (client, args) = (client.clone(), args.clone());
            tokio::spawn(async move { connection(&client, &args, c).await })
        })
        .collect();
    let (mut total, mut datagrams_echoed) = (0u64, 0usize);
    for t in tasks {
        let (bytes, echoed) = t.await??;
        total += bytes;
        datagrams_echoed += echoed;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "echoed {total} bytes over {} connections x {} streams in {secs:.2}s: {:.1} Mbit/s each way, content verified",
        args.connections,
        args.streams,
        total as f64 * 8.0 / secs / 1e6
    );
    if args.datagrams > 0 {
        let sent = args.datagrams * args.connections;
        println!("datagrams: {datagrams_echoed} of {sent} echoed (unreliable by design)");
        if datagrams_echoed == 0 {
            bail!("no datagram came back");
        }
    }
    client.wait_idle().await;
    Ok(())
}

/// Bytes echoed on streams, datagrams echoed.
async fn connection(
    client: &quinn::Endpoint,
    args: &Args,
    index: usize,
) -> anyhow::Result<(u64, usize)> {
    let conn = client
        .connect(args.server, &args.server_name)?
        .await
        .context("handshake")?;
    let streams: Vec<_> = (0..args.streams)
        .map(|s| {
            let conn = conn.clone();
            let data = pattern(args.size, (index * 31 + s) as u8);
            tokio::spawn(async move {
                let (mut send, mut recv) = conn.open_bi().await?;
                let (sent, back) = tokio::join!(
                    async {
                        send.write_all(&data).await?;
                        send.finish()?;
                        anyhow::Ok(())
                    },
                    recv.read_to_end(usize::MAX)
                );
                sent?;
                if back? != data {
                    bail!("stream {s}: the echo differs from what was sent");
                }
                anyhow::Ok(data.len() as u64)
            })
        })
        .collect();
    let mut bytes = 0;
    for s in streams {
        bytes += s.await??;
    }
    // Datagrams may be lost: wait a little for each echo, then move on.
    let mut echoed = 0;
    for i in 0..args.datagrams {
        let d = pattern(100, i as u8);
        conn.send_datagram(d.clone().into())?;
        if let Ok(back) = tokio::time::timeout(Duration::from_secs(1), conn.read_datagram()).await {
            if back? != d {
                bail!("datagram {i}: the echo differs");
            }
            echoed += 1;
        }
    }
    conn.close(0u32.into(), b"done");
    Ok((bytes, echoed))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed)
        .collect()
}
