//! QUIC echo server on quic-xdp: echoes every bidirectional stream and
//! every datagram. Prints the datapath mode it really runs in, and the
//! counters when it exits (Ctrl-C / SIGTERM, or --duration).

use clap::Parser;
use quic_xdp::{Connection, VarInt};

#[derive(Parser)]
#[command(
    version,
    about = "QUIC echo server on quic-xdp (AF_XDP): echoes streams and datagrams"
)]
struct Args {
    #[command(flatten)]
    server: server::ServerArgs,
    #[arg(long, default_value = "echo")]
    alpn: String,
}

mod common;
mod metrics;
mod server;
mod stop;

// One thread for the runtime: connections are served on the engine threads
// (Endpoint::serve); this one binds, waits for the stop signal and reads the
// counters, and keeps the capabilities that takes after --user.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    common::init_logging();
    common::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bound = args.server.bind(&args.alpn)?;
    println!("listening on {}", bound.endpoint.local_addr());
    server::serve(&args.server, bound, VarInt::from_u32(0), |conn, _| {
        serve(conn)
    })
    .await
}

// Echo has no way to announce a drain: open streams finish within
// --drain-timeout, then the connections close.
async fn serve(conn: Connection) {
    let datagrams = conn.clone();
    tokio::spawn(async move {
        while let Ok(d) = datagrams.read_datagram().await {
            let _ = datagrams.send_datagram(d);
        }
    });
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            // Chunks go back as they came, without a copy.
            while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX).await {
                if send.write_chunk(chunk).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
        });
    }
}
