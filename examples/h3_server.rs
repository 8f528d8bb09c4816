//! HTTP/3 server on quic-xdp: serves the files under --root, and generated
//! bodies of any size at /bytes/N. Prints the datapath mode it really runs
//! in, and the counters on exit.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use quic_xdp::h3::H3Connection;

mod common;
mod content;
mod metrics;
mod root_dir;
mod server;
mod site;
mod stop;
mod tcp;

#[derive(Parser)]
#[command(
    version,
    about = "HTTP/3 static file server on quic-xdp (AF_XDP): serves --root and /bytes/N"
)]
struct Args {
    #[command(flatten)]
    server: server::ServerArgs,
    /// Directory to serve files from (required: nothing is served by
    /// default). Dotfiles, files outside it and non-regular files are not
    /// served.
    #[arg(long)]
    root: PathBuf,
    /// Largest /bytes/N body served.
    #[arg(long, default_value_t = 1 << 30)]
    max_generated: u64,
    /// Largest request header section accepted, in bytes (larger: 431).
    #[arg(long, default_value_t = 16 * 1024)]
    max_header_size: u64,
    /// Seconds a client has to send a request's headers once it opened
    /// the request stream.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    request_timeout: f64,
    /// Also serve the site over TCP (HTTP/1.1 and HTTP/2 with TLS, same
    /// address, port and certificate), as browsers first reach it; every
    /// response names the HTTP/3 port in Alt-Svc.
    #[arg(long)]
    tcp: bool,
}

// One thread for the runtime: connections are served on the engine threads
// (Endpoint::serve); this one binds, waits for the stop signal and reads the
// counters, and keeps the capabilities that takes after --user.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    common::init_logging();
    common::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let root = args
        .root
        .canonicalize()
        .with_context(|| format!("serving root {}", args.root.display()))?;
    // Bound before the endpoint: after --user a low port could not be.
    let tcp = match args.tcp {
        true => {
            let addr = std::net::SocketAddr::new(args.server.address, args.server.port);
            Some(std::net::TcpListener::bind(addr).with_context(|| format!("binding TCP {addr}"))?)
        }
        false => None,
    };
    let bound = args.server.bind("h3")?;
    println!(
        "listening on {}, serving {}",
        bound.endpoint.local_addr(),
        root.display()
    );
    let content = content::Content {
        root: std::sync::Arc::new(
            root_dir::RootDir::open(&root)
                .with_context(|| format!("opening {}", root.display()))?,
        ),
        max_generated: args.max_generated,
        alt_svc: Some(format!("h3=\":{}\"; ma=86400", bound.endpoint.local_addr().port()).parse()?),
    };
    let tcp_counters = std::sync::Arc::new(tcp::TcpCounters::default());
    if let Some(listener) = tcp {
        let addr = listener.local_addr()?;
        let tls = rustls::ServerConfig::builder_with_provider(args.server.crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(bound.identity.certs.clone(), bound.identity.key.clone_key())?;
        let limits = tcp::TcpLimits {
            max_connections: args.server.max_connections,
            policy: args.server.source_policy()?,
        };
        tcp::serve(listener, tls, content.clone(), limits, tcp_counters.clone())?;
        println!("also serving HTTP/1.1 and HTTP/2 on TCP {addr}");
    }
    let site = site::Site {
        content,
        max_header_size: args.max_header_size,
        request_timeout: server::seconds("--request-timeout", args.request_timeout)?,
        draining: tokio::sync::watch::channel(false).1,
    };
    // After draining, what is left closes with H3_NO_ERROR (RFC 9114 8.1).
    let h3_no_error = quic_xdp::VarInt::from_u32(0x100);
    server::serve(&args.server, bound, h3_no_error, move |conn, draining| {
        let site = site::Site {
            draining,
            ..site.clone()
        };
        let max_header_size = site.max_header_size;
        site::serve(
            H3Connection::new(conn).max_field_section_size(max_header_size),
            site,
        )
    })
    .await?;
    if args.tcp {
        let c = &tcp_counters;
        println!(
            "tcp: connections {} requests {} refused {}",
            c.connections.load(std::sync::atomic::Ordering::Relaxed),
            c.requests.load(std::sync::atomic::Ordering::Relaxed),
            c.refused.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    Ok(())
}
