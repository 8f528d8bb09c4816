//! Load client for `xdp-udp-echo` (or any UDP echo): keeps a window of
//! numbered datagrams in flight, checks every echo, reports the rate.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use datapath::testbed::{EchoLoad, run_echo_load};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The echo server.
    target: SocketAddr,
    /// Seconds to send for.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Stop after this many datagrams.
    #[arg(long, default_value_t = u64::MAX >> 8)]
    count: u64,
    /// Payload bytes per datagram (at least 8).
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u16).range(8..))]
    size: u16,
    /// Datagrams in flight.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// One send per datagram instead of UDP GSO batches.
    #[arg(long)]
    no_gso: bool,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = run_echo_load(&EchoLoad {
        target: args.target,
        count: args.count,
        size: args.size.into(),
        window: args.window,
        duration: Some(Duration::from_secs_f64(args.duration)),
        idle_timeout: Duration::from_secs(2),
        gso: !args.no_gso,
        ecn: None,
    })?;
    println!(
        "sent {} received {} lost {} corrupted {} unexpected {} refused {} in {:.2?}: {:.0} echoes/s",
        report.sent,
        report.received,
        report.lost(),
        report.corrupted,
        report.unexpected,
        report.refused,
        report.elapsed,
        report.echoes_per_sec()
    );
    if report.received == 0 || report.corrupted > 0 {
        anyhow::bail!("the echo did not answer correctly");
    }
    Ok(())
}
