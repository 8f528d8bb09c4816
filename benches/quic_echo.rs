//! QUIC echo: quic-xdp over XDP vs quic-xdp over kernel UDP vs the quinn
//! crate's server on kernel UDP, driven by the same quinn client from a
//! client namespace, in one run, alternating round by round.
//!
//! Workloads: bulk (streams of several MB echoed, Mbit/s one way),
//! request/response (many concurrent 100-byte exchanges, each on its own
//! stream, requests/s with p50/p99 latency) and handshakes (a new
//! connection per 100-byte exchange, connections/s). Every row also shows
//! the server's CPU time per unit: on-CPU time of the server's threads
//! (schedstat) over the measurement.
//!
//! The datapath ceiling for bulk on this link, in the same run: the plain
//! UDP echo of the datapath crate (no QUIC) over AF_XDP and over kernel
//! UDP with GSO/GRO, 1400-byte datagrams, the testbed load client sending
//! GSO batches, 1024 in flight. Bulk rows read against it.
//!
//! Thread budget, the same for every server: one busy server thread. quinn
//! runs on a one-worker tokio runtime; quic-xdp serves with
//! `Endpoint::serve` on its one engine thread (veth has one rx queue),
//! beside the same one-worker runtime, idle here and counted too. The
//! client has its own one-worker runtime; its CPU per unit is shown too:
//! client and server share the two cores, so where the client takes more
//! than the server, a cheaper server raises the rate far less than its
//! CPU per unit falls. "client busy" is the client's CPU time over the
//! elapsed time: at about 1.0 its one thread was saturated, the rate is
//! the client's, and rates compare as the client's CPU per unit does.
//! Datagrams per unit in each direction are the client connection's
//! counts (bulk and request/response).
//!
//!     sudo cargo bench -p quic-xdp-benches --bench quic_echo -- --secs 3 --rounds 5

mod common;
mod echo_peers;

use echo_peers::*;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use datapath::{
    Datapath, DatapathConfig,
    echo::{self, EchoLimits},
    testbed::{EchoLoad, TestNet, TestNetConfig, run_echo_load},
};

#[derive(Parser)]
struct Args {
    /// Seconds per request/response measurement.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Bulk: concurrent streams, and bytes echoed on each.
    #[arg(long, default_value_t = 4)]
    bulk_streams: usize,
    #[arg(long, default_value_t = 16_000_000)]
    bulk_size: usize,
    /// Request/response: exchanges in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Handshakes: connections being set up at once.
    #[arg(long, default_value_t = 8)]
    handshakers: usize,
    /// AF_XDP ring slots for quic-xdp over XDP.
    #[arg(long, default_value_t = 2048)]
    ring_size: u32,
    /// TLS cryptography of the servers and the client (aws-lc-rs: the
    /// X25519MLKEM768 post-quantum hybrid key exchange).
    #[arg(long, value_enum, default_value_t = Crypto::Ring)]
    crypto: Crypto,
    /// Servers to measure, by row (default: all).
    #[arg(long, value_delimiter = ',')]
    servers: Option<Vec<usize>>,
    /// Workloads to measure (default: all), e.g. to profile one alone.
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Option<Vec<Workload>>,
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    Bulk,
    Rr,
    Handshakes,
}

/// The datapaths whose ceiling is measured, in order.
const CEILINGS: [&str; 2] = ["AF_XDP", "kernel UDP"];

/// Bytes echoed (one way) by concurrent bulk streams.
async fn bulk(conn: &quinn::Connection, args: &Args) -> anyhow::Result<(f64, Vec<f64>)> {
    let data: Arc<Vec<u8>> = Arc::new((0..args.bulk_size).map(|i| (i * 7) as u8).collect());
    let tasks: Vec<_> = (0..args.bulk_streams)
        .map(|_| {
            let (conn, data) = (conn.clone(), data.clone());
            tokio::spawn(async move { echo(&conn, &data).await })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(((args.bulk_streams * args.bulk_size) as f64, Vec::new()))
}

/// Payload of the ceiling's datagrams: about what QUIC puts in one on a
/// 1500-byte link.
const CEILING_SIZE: usize = 1400;

/// The datapath alone: `datapath::echo` over `mode` in the server
/// namespace, loaded for `secs` from the client namespace. Mbit/s one way
/// and the echo thread's CPU per MB.
fn ceiling(net: &TestNet, mode: quic_xdp::Mode, args: &Args) -> anyhow::Result<Sample> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let flag = stop.clone();
    let mut config = DatapathConfig::new(SocketAddr::new("::".parse()?, PORT));
    config.interface = Some(TestNet::SERVER_IF.into());
    config.mode = mode;
    // Raw frames: the echo's batches would otherwise leave through the
    // kernel socket in copy mode, and the row would not be AF_XDP's.
    config.batches_through_kernel = false;
    let server = net.server.spawn(move || -> anyhow::Result<()> {
        // Counted with the other server threads (comm "bench-server").
        // SAFETY: PR_SET_NAME with a NUL-terminated name of <= 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"bench-server".as_ptr()) };
        let mut dp = Datapath::open(&config)?;
        ready_tx.send(())?;
        echo::serve(dp.queues_mut(), &flag, EchoLimits::default())?;
        Ok(())
    });
    if ready_rx.recv().is_err() {
        // The echo thread failed before it was ready: its error.
        server
            .join()
            .expect("echo thread")
            .context("ceiling echo")?;
        bail!("ceiling echo stopped before it was ready");
    }
    let load = EchoLoad {
        count: u64::MAX,
        size: CEILING_SIZE,
        window: 1024,
        duration: Some(Duration::from_secs_f64(args.secs)),
        // Outstanding echoes after the end are lost, not waited for: the
        // elapsed time stays within 50 ms of the sending time.
        idle_timeout: Duration::from_millis(50),
        ..EchoLoad::new(net.server_addr(false, PORT))
    };
    let cpu_before = common::ThreadCpu::sample(SERVER_THREADS);
    let report = net.client.run(|| run_echo_load(&load))?;
    let cpu = common::ThreadCpu::sample(SERVER_THREADS)
        .since(&cpu_before)
        .as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().expect("echo thread")?;
    let bytes = (report.received as usize * CEILING_SIZE) as f64;
    Ok(Sample {
        rate: bytes * 8.0 / report.elapsed.as_secs_f64() / 1e6,
        cpu_us: cpu * 1e6 / (bytes / 1e6),
        ..Sample::NONE
    })
}

/// New connections, each carrying one 100-byte exchange, `handshakers` at
/// a time; their latencies (connect to close).
async fn handshakes(
    client: &quinn::Endpoint,
    target: SocketAddr,
    args: &Args,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let until = Instant::now() + Duration::from_secs_f64(args.secs);
    let tasks: Vec<_> = (0..args.handshakers)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    let conn = client.connect(target, "localhost")?.await?;
                    echo(&conn, &[7u8; 100]).await?;
                    conn.close(0u32.into(), b"");
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    gather(tasks).await
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    common::require_root()?;
    let (server_rt, client_rt) = runtimes()?;
    let net = TestNet::create(&TestNetConfig::default())?;
    let certs = certs::DevCerts::localhost()?;
    let target = net.server_addr(false, PORT);

    // results[workload][server]: one sample per round; ceilings[datapath].
    let mut ceilings: Vec<Vec<Sample>> = vec![Vec::new(); 2];
    let mut results: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); Server::ALL.len()]; 3];
    for round in 0..args.rounds {
        for (i, server) in Server::ALL.into_iter().enumerate() {
            if args.servers.as_ref().is_some_and(|s| !s.contains(&i)) {
                continue;
            }
            let running = start(&net, &server_rt, server, &certs, args.crypto, |c| {
                c.ring_size = args.ring_size
            })
            .with_context(|| server.name())?;
            let client = client(&net, &client_rt, &certs.ca_der(), args.crypto)?;
            let selected = |w| args.workloads.as_ref().is_none_or(|ws| ws.contains(&w));
            let samples = client_rt.block_on(async {
                let conn = client.connect(target, "localhost")?.await?;
                let mut b = Sample::NONE;
                if selected(Workload::Bulk) {
                    b = measure(bulk(&conn, &args), 1e6, 8.0 / 1e6, Some(&conn)).await?;
                }
                let mut rr = Sample::NONE;
                if selected(Workload::Rr) {
                    let work = request_response(&conn, args.secs, args.concurrency);
                    rr = measure(work, 1.0, 1.0, Some(&conn)).await?;
                }
                conn.close(0u32.into(), b"");
                let mut hs = Sample::NONE;
                if selected(Workload::Handshakes) {
                    hs = measure(handshakes(&client, target, &args), 1.0, 1.0, None).await?;
                }
                client.wait_idle().await;
                anyhow::Ok([b, rr, hs])
            })?;
            eprintln!(
                "round {round}: {:<22} bulk {:>6.0} Mbit/s ({:.0} us/MB; client {:.0}), rr {:>6.0} req/s ({:.1} us/req; client {:.1}, busy {:.2}; p99 {:.0} us; datagrams/req {:.2} from, {:.2} to server), {:>5.0} handshakes/s ({:.0} us each; client {:.0})",
                server.name(),
                samples[0].rate,
                samples[0].cpu_us,
                samples[0].client_cpu_us,
                samples[1].rate,
                samples[1].cpu_us,
                samples[1].client_cpu_us,
                samples[1].client_busy,
                samples[1].p99_us,
                samples[1].datagrams_from_server,
                samples[1].datagrams_to_server,
                samples[2].rate,
                samples[2].cpu_us,
                samples[2].client_cpu_us,
            );
            for (w, sample) in samples.into_iter().enumerate() {
                results[w][i].push(sample);
            }
            stop(&net, &server_rt, running)?;
        }
        if args.servers.is_none() {
            for (c, mode) in [quic_xdp::Mode::Xdp, quic_xdp::Mode::Udp]
                .into_iter()
                .enumerate()
            {
                let sample = ceiling(&net, mode, &args)?;
                eprintln!(
                    "round {round}: datapath ceiling, {:<10} {:>6.0} Mbit/s ({:.0} us/MB)",
                    CEILINGS[c], sample.rate, sample.cpu_us
                );
                ceilings[c].push(sample);
            }
        }
    }

    if args.workloads.is_some() || results[0].iter().any(Vec::is_empty) {
        return Ok(()); // a subset was measured: no comparison table
    }
    let workloads = [
        ("bulk echo", "Mbit/s one way", "us/MB", "MB"),
        ("100 B request/response", "req/s", "us/req", "req"),
        ("handshake + 100 B exchange", "conn/s", "us/conn", "conn"),
    ];
    for (w, (name, unit, cpu_unit, per)) in workloads.into_iter().enumerate() {
        let med =
            |i: usize, f: fn(&Sample) -> f64| common::median(results[w][i].iter().map(f).collect());
        println!(
            "\n{name}, median of {} rounds (min-max)\n\n| server | {unit} | vs quinn | p50 us | p99 us | server CPU {cpu_unit} | CPU vs quinn | client CPU {cpu_unit} | client busy | datagrams/{per} from server | to server |\n|---|---|---|---|---|---|---|---|---|---|---|",
            args.rounds
        );
        for (i, server) in Server::ALL.into_iter().enumerate() {
            let rates: Vec<f64> = results[w][i].iter().map(|s| s.rate).collect();
            println!(
                "| {} | {} | {:.2} | {:.0} | {:.0} | {:.1} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2} |",
                server.name(),
                common::spread(&rates, 0),
                med(i, |s| s.rate) / med(2, |s| s.rate),
                med(i, |s| s.p50_us),
                med(i, |s| s.p99_us),
                med(i, |s| s.cpu_us),
                med(i, |s| s.cpu_us) / med(2, |s| s.cpu_us),
                med(i, |s| s.client_cpu_us),
                med(i, |s| s.client_busy),
                med(i, |s| s.datagrams_from_server),
                med(i, |s| s.datagrams_to_server),
            );
        }
    }
    println!(
        "\nDatapath ceiling for bulk on this link: UDP echo of {CEILING_SIZE} B datagrams, no QUIC (min-max)\n\n| datapath | Mbit/s one way | echo CPU us/MB | QUIC bulk on it, best server | fraction of ceiling |\n|---|---|---|---|---|"
    );
    for (c, name) in CEILINGS.into_iter().enumerate() {
        let rates: Vec<f64> = ceilings[c].iter().map(|s| s.rate).collect();
        let ceiling = common::median(rates.clone());
        // QUIC bulk over that datapath: quic-xdp over XDP for AF_XDP; the
        // better of quic-xdp and quinn for kernel UDP.
        let bulk = |i: usize| common::median(results[0][i].iter().map(|s| s.rate).collect());
        let (server, quic) = if c == 0 {
            (Server::QuicXdpOverXdp.name(), bulk(0))
        } else if bulk(1) >= bulk(2) {
            (Server::QuicXdpOverUdp.name(), bulk(1))
        } else {
            (Server::QuinnOverUdp.name(), bulk(2))
        };
        println!(
            "| {name} | {} | {:.0} | {server}: {quic:.0} | {:.2} |",
            common::spread(&rates, 0),
            common::median(ceilings[c].iter().map(|s| s.cpu_us).collect()),
            quic / ceiling
        );
    }
    Ok(())
}
