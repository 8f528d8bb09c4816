//! UDP echo on the quic-xdp datapath: steers one UDP port of an interface
//! into AF_XDP sockets (or serves it on kernel UDP) and echoes every
//! datagram. Prints the mode it really runs in, and counters on exit.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use datapath::{
    Datapath, DatapathConfig, Mode,
    echo::{self, EchoLimits},
    program::AttachPreference,
    wire::ChecksumPolicy,
    xsk::ZeroCopy,
};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Interface to steer on (default: the one that owns --listen).
    #[arg(short, long)]
    interface: Option<String>,
    /// Address and port to serve; `[::]` serves IPv4 and IPv6.
    #[arg(short, long, default_value = "[::]:4433")]
    listen: SocketAddr,
    #[arg(short, long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = AttachArg::Auto)]
    attach: AttachArg,
    #[arg(long, value_enum, default_value_t = ZeroCopyArg::Auto)]
    zero_copy: ZeroCopyArg,
    /// Rx queues to bind (default: all active ones), e.g. --queues 0,1.
    #[arg(long, value_delimiter = ',')]
    queues: Option<Vec<u32>>,
    /// AF_XDP ring slots per ring (power of two).
    #[arg(long, default_value_t = 2048)]
    ring_size: u32,
    /// Skip UDP checksum verification on receive.
    #[arg(long)]
    trust_checksums: bool,
    /// Exit after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Exit after echoing this many datagrams.
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Auto,
    Xdp,
    Udp,
}

#[derive(Clone, Copy, ValueEnum)]
enum AttachArg {
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, ValueEnum)]
enum ZeroCopyArg {
    Auto,
    Require,
    Off,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let mut config = DatapathConfig::new(args.listen);
    config.interface = args.interface;
    config.mode = match args.mode {
        ModeArg::Auto => Mode::Auto,
        ModeArg::Xdp => Mode::Xdp,
        ModeArg::Udp => Mode::Udp,
    };
    config.attach = match args.attach {
        AttachArg::Auto => AttachPreference::Auto,
        AttachArg::Native => AttachPreference::NativeOnly,
        AttachArg::Generic => AttachPreference::GenericOnly,
    };
    config.zero_copy = match args.zero_copy {
        ZeroCopyArg::Auto => ZeroCopy::Auto,
        ZeroCopyArg::Require => ZeroCopy::Require,
        ZeroCopyArg::Off => ZeroCopy::Disable,
    };
    config.queues = args.queues;
    config.ring_size = args.ring_size;
    if args.trust_checksums {
        config.checksum = ChecksumPolicy::Trust;
    }

    let mut datapath = Datapath::open(&config).context("opening the datapath")?;
    println!("mode: {}", datapath.mode());
    println!("listening on {}", datapath.local_addr());

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let limits = EchoLimits {
        count: args.count,
        deadline: args
            .duration
            .map(|s| Instant::now() + Duration::from_secs_f64(s)),
    };
    let outcome = echo::serve(datapath.queues_mut(), &stop, limits)?;

    println!(
        "echoed {} datagrams, dropped {}",
        outcome.echoed, outcome.dropped
    );
    for q in datapath.queues() {
        println!("  {:?}: {}", q.kind(), q.counters().snapshot());
    }
    if let Some(stats) = datapath.steering_stats() {
        println!("  steering: {stats}");
    }
    Ok(())
}
