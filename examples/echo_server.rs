//! QUIC echo server on quic-xdp: echoes every bidirectional stream and
//! every datagram. Prints the datapath mode it really runs in, and the
//! counters when it exits (Ctrl-C / SIGTERM, or --duration).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use quic_xdp::{Connection, Endpoint, Mode};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Interface to steer on (XDP); default: the one owning --address.
    #[arg(short, long)]
    interface: Option<String>,
    /// Address to serve; [::] serves IPv4 and IPv6.
    #[arg(short, long, default_value = "::")]
    address: std::net::IpAddr,
    #[arg(short, long, default_value_t = 4433)]
    port: u16,
    #[arg(short, long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    /// Certificate chain (PEM, leaf first); default: a generated dev CA + leaf.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Where to write the generated dev CA (PEM) for clients to trust.
    #[arg(long, default_value = "echo-ca.pem")]
    ca_out: PathBuf,
    #[arg(long, default_value = "echo")]
    alpn: String,
    /// Exit after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Auto,
    Xdp,
    Udp,
}

mod common;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_logging();
    common::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut builder = Endpoint::builder(SocketAddr::new(args.address, args.port))
        .mode(match args.mode {
            ModeArg::Auto => Mode::Auto,
            ModeArg::Xdp => Mode::Xdp,
            ModeArg::Udp => Mode::Udp,
        })
        .alpn([args.alpn.as_bytes()]);
    if let Some(interface) = args.interface {
        builder = builder.interface(interface);
    }
    if let (Some(cert), Some(key)) = (args.cert, args.key) {
        builder = builder.cert_files(cert, key);
    }
    let endpoint = builder.bind().context("starting the endpoint")?;
    if let Some(ca) = endpoint.dev_ca_certificate() {
        std::fs::write(&args.ca_out, certs::certificate_pem(ca))
            .with_context(|| format!("writing {}", args.ca_out.display()))?;
        println!("dev CA written to {}", args.ca_out.display());
    }
    println!("mode: {}", endpoint.mode());
    println!("listening on {}", endpoint.local_addr());

    let server = endpoint.clone();
    let accept_loop = tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                match incoming.accept().await {
                    Ok(conn) => serve(conn).await,
                    Err(e) => tracing::info!(error = %e, "handshake failed"),
                }
            });
        }
    });
    let deadline = async {
        match args.duration {
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
            None => std::future::pending().await,
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = deadline => {}
    }
    let stats = endpoint.stats();
    endpoint.shutdown().await;
    accept_loop.abort();
    println!(
        "connections: accepted {} refused {} retried {}",
        stats.admission.accepted, stats.admission.refused, stats.admission.retried
    );
    for (kind, counters) in &stats.queues {
        println!("  {kind:?}: {counters}");
    }
    if let Some(steering) = stats.steering {
        println!("  steering: {steering}");
    }
    Ok(())
}

async fn serve(conn: Connection) {
    let datagrams = conn.clone();
    tokio::spawn(async move {
        while let Ok(d) = datagrams.read_datagram().await {
            let _ = datagrams.send_datagram(d);
        }
    });
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            if tokio::io::copy(&mut recv, &mut send).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
}
