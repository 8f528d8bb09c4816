//! HTTP/3 server on quic-xdp: serves the files under --root, and generated
//! bodies of any size at /bytes/N. Prints the datapath mode it really runs
//! in, and the counters on exit.

use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use h3::server::RequestStream;
use quic_xdp::{Connection, h3::H3Connection};
use tokio::io::AsyncReadExt;

mod common;
mod server;

#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    server: server::ServerArgs,
    /// Directory to serve files from.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Largest /bytes/N body served.
    #[arg(long, default_value_t = 1 << 30)]
    max_generated: u64,
}

const CHUNK: usize = 64 * 1024;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_logging();
    common::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let root = args
        .root
        .canonicalize()
        .with_context(|| format!("serving root {}", args.root.display()))?;
    let endpoint = args.server.bind("h3")?;
    println!(
        "listening on {}, serving {}",
        endpoint.local_addr(),
        root.display()
    );
    let max_generated = args.max_generated;
    server::serve(&args.server, endpoint, move |conn| {
        serve(conn, root.clone(), max_generated)
    })
    .await
}

async fn serve(conn: Connection, root: PathBuf, max_generated: u64) {
    let mut h3 = match h3::server::Connection::<_, Bytes>::new(H3Connection::new(conn)).await {
        Ok(h3) => h3,
        Err(e) => return tracing::info!(error = %e, "HTTP/3 setup failed"),
    };
    tracing::debug!("HTTP/3 ready");
    loop {
        match h3.accept().await {
            Ok(Some(resolver)) => {
                tracing::debug!("request stream accepted");
                let root = root.clone();
                tokio::spawn(async move {
                    match resolver.resolve_request().await {
                        Ok((request, stream)) => {
                            if let Err(e) = respond(request, stream, &root, max_generated).await {
                                tracing::debug!(error = %e, "request failed");
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "bad request"),
                    }
                });
            }
            Ok(None) => return,
            Err(e) => return tracing::debug!(error = %e, "connection ended"),
        }
    }
}

type Stream = RequestStream<quic_xdp::h3::H3BidiStream<Bytes>, Bytes>;

async fn respond(
    request: http::Request<()>,
    mut stream: Stream,
    root: &Path,
    max_generated: u64,
) -> anyhow::Result<()> {
    tracing::debug!(method = %request.method(), uri = %request.uri(), "request");
    if request.method() != http::Method::GET {
        return status(&mut stream, http::StatusCode::METHOD_NOT_ALLOWED).await;
    }
    let path = request.uri().path();
    if let Some(n) = path.strip_prefix("/bytes/") {
        return match n.parse::<u64>() {
            Ok(n) if n <= max_generated => generated(&mut stream, n).await,
            _ => status(&mut stream, http::StatusCode::BAD_REQUEST).await,
        };
    }
    match resolve(root, path) {
        Some(file) => match tokio::fs::File::open(&file).await {
            Ok(f) if f.metadata().await.is_ok_and(|m| m.is_file()) => {
                send_file(&mut stream, f).await
            }
            _ => status(&mut stream, http::StatusCode::NOT_FOUND).await,
        },
        None => status(&mut stream, http::StatusCode::NOT_FOUND).await,
    }
}

/// `path` under `root`, refusing anything that could leave it.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let full = root.join(relative).canonicalize().ok()?;
    full.starts_with(root).then_some(full)
}

async fn status(stream: &mut Stream, code: http::StatusCode) -> anyhow::Result<()> {
    stream
        .send_response(http::Response::builder().status(code).body(())?)
        .await?;
    stream.finish().await?;
    Ok(())
}

async fn generated(stream: &mut Stream, n: u64) -> anyhow::Result<()> {
    let response = http::Response::builder()
        .status(200)
        .header("content-length", n)
        .body(())?;
    stream.send_response(response).await?;
    let chunk = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut left = n;
    while left > 0 {
        let len = left.min(CHUNK as u64) as usize;
        stream.send_data(chunk.slice(..len)).await?;
        left -= len as u64;
    }
    stream.finish().await?;
    Ok(())
}

async fn send_file(stream: &mut Stream, mut file: tokio::fs::File) -> anyhow::Result<()> {
    let len = file.metadata().await?.len();
    let response = http::Response::builder()
        .status(200)
        .header("content-length", len)
        .body(())?;
    stream.send_response(response).await?;
    tracing::debug!(len, "response headers sent");
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        stream.send_data(Bytes::copy_from_slice(&buf[..n])).await?;
    }
    stream.finish().await?;
    Ok(())
}
