//! UDP echo rate through the XDP datapath vs the kernel-UDP datapath.
//!
//! Both run the same echo loop (`datapath::echo`) in a server namespace and
//! face the same windowed load client (`datapath::testbed`) in a client
//! namespace, in one run, alternating round by round so drift hits both.
//! Prints a Markdown table with medians and the XDP/UDP ratio.
//!
//!     cargo bench -p quic-xdp-benches --bench udp_echo -- --secs 3 --rounds 5
//!
//! Needs root (namespaces, XDP).

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use anyhow::{Context, bail};
use clap::Parser;
use datapath::{
    ActiveMode, Datapath, DatapathConfig, Mode,
    echo::{self, EchoLimits},
    testbed::{EchoLoad, EchoReport, TestNet, TestNetConfig, run_echo_load},
};

#[derive(Parser)]
struct Args {
    /// Seconds of load per round and datapath.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Rounds per datapath and payload size.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,1200")]
    sizes: Vec<usize>,
    /// Datagrams in flight.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

const PORT: u16 = 4433;

struct Server {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn start_server(net: &TestNet, mode: Mode) -> anyhow::Result<(Server, ActiveMode)> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (tx, rx) = mpsc::channel();
    let thread = net.server.spawn(move || {
        let mut config = DatapathConfig::new(SocketAddr::new("::".parse().unwrap(), PORT));
        config.interface = Some(TestNet::SERVER_IF.into());
        config.mode = mode;
        // The AF_XDP path itself: no batches through the kernel socket.
        config.batches_through_kernel = false;
        match Datapath::open(&config) {
            Ok(mut dp) => {
                tx.send(Ok(dp.mode().clone())).unwrap();
                echo::serve(dp.queues_mut(), &flag, EchoLimits::default()).unwrap();
            }
            Err(e) => tx.send(Err(e)).unwrap(),
        }
    });
    let mode = rx.recv()?.context("opening the datapath")?;
    Ok((Server { stop, thread }, mode))
}

impl Server {
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

fn round(
    net: &TestNet,
    mode: Mode,
    size: usize,
    args: &Args,
) -> anyhow::Result<(EchoReport, ActiveMode)> {
    let (server, active) = start_server(net, mode)?;
    let report = net.client.run(|| {
        run_echo_load(&EchoLoad {
            target: net.server_addr(false, PORT),
            count: u64::MAX >> 8,
            size,
            window: args.window,
            duration: Some(Duration::from_secs_f64(args.secs)),
            idle_timeout: Duration::from_secs(2),
            gso: true,
            ecn: None,
        })
    });
    server.stop();
    let report = report?;
    if report.corrupted > 0 || report.unexpected > 0 {
        bail!("{mode:?}: corrupted echoes: {report:?}");
    }
    Ok((report, active))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    common::require_root()?;
    let net = TestNet::create(&TestNetConfig::default())?;
    println!(
        "| payload | datapath | echoes/s (median of {}) | min | max | lost |",
        args.rounds
    );
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for &size in &args.sizes {
        let mut rates = [Vec::new(), Vec::new()];
        let mut lost = [0u64; 2];
        let mut modes = [None, None];
        for _ in 0..args.rounds {
            for (i, mode) in [Mode::Xdp, Mode::Udp].into_iter().enumerate() {
                let (r, active) = round(&net, mode, size, &args)?;
                rates[i].push(r.echoes_per_sec());
                lost[i] += r.lost();
                modes[i] = Some(active);
            }
        }
        let medians: Vec<f64> = rates.iter().map(|r| common::median(r.clone())).collect();
        for i in 0..2 {
            let min = rates[i].iter().copied().fold(f64::INFINITY, f64::min);
            let max = rates[i].iter().copied().fold(0.0, f64::max);
            println!(
                "| {size} B | {} | {:.0} | {min:.0} | {max:.0} | {} |",
                modes[i].as_ref().unwrap(),
                medians[i],
                lost[i]
            );
        }
        ratios.push((size, medians[0] / medians[1]));
    }
    println!();
    for (size, ratio) in ratios {
        println!("{size} B: XDP / kernel UDP = {ratio:.2}");
    }
    Ok(())
}
