//! The h3-server's site (files, /bytes/N) served by quinn + h3-quinn on
//! kernel UDP (or, with --xdp, on AF_XDP through the datapath's quinn
//! socket): the reference the HTTP/3 benchmark compares quic-xdp with.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::Parser;
use quinn::crypto::rustls::QuicServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

mod common;
mod content;
mod quinn_xdp;
mod root_dir;
mod site;
mod stop;

#[derive(Parser)]
#[command(
    version,
    about = "The same HTTP/3 site on quinn + h3-quinn over kernel UDP (the benchmarks' reference)"
)]
struct Args {
    #[arg(short, long, default_value = "::")]
    address: std::net::IpAddr,
    #[arg(short, long, default_value_t = 4433)]
    port: u16,
    /// Certificate chain (PEM, leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// Private key (PEM).
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = ".")]
    root: PathBuf,
    #[arg(long, default_value_t = 1 << 30)]
    max_generated: u64,
    /// Exit after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// quinn on AF_XDP on this interface instead of a kernel UDP socket.
    #[arg(long, value_name = "IFACE")]
    xdp: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_logging();
    common::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let certs = CertificateDer::pem_file_iter(&args.cert)
        .with_context(|| format!("reading {}", args.cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .with_context(|| format!("reading {}", args.key.display()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.max_early_data_size = u32::MAX;
    let config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let addr = SocketAddr::new(args.address, args.port);
    let endpoint = match &args.xdp {
        None => quinn::Endpoint::server(config, addr)?,
        Some(interface) => quinn_xdp::endpoint(addr, interface, Some(config))?,
    };
    // The benchmark's reference: same site limits as h3-server; it is
    // stopped without draining.
    let (_drain, draining) = tokio::sync::watch::channel(false);
    let site = site::Site {
        content: content::Content {
            root: std::sync::Arc::new(root_dir::RootDir::open(&args.root)?),
            max_generated: args.max_generated,
            alt_svc: None,
        },
        max_header_size: 16 * 1024,
        request_timeout: std::time::Duration::from_secs(10),
        draining,
    };
    println!("listening on {}", endpoint.local_addr()?);
    let server = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let site = site.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    site::serve(h3_quinn::Connection::new(conn), site).await;
                }
            });
        }
    });
    stop::until_stopped(args.duration).await?;
    endpoint.close(0u32.into(), b"");
    endpoint.wait_idle().await;
    Ok(())
}
