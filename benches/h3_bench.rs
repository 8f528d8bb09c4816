//! HTTP/3: requests/s, p50/p99 latency and server CPU per request of
//! h3-server over XDP, the same server over kernel UDP, and quinn +
//! h3-quinn (quinn-h3-server) serving the same site on kernel UDP and on
//! the datapath's AF_XDP quinn socket, each driven by h3-load
//! from a client namespace, in one run, alternating round by round. The
//! body is /bytes/N: served from memory (no file I/O, no per-request
//! generation). Server CPU: the server process's utime + stime over the
//! load, per completed request; client CPU the same for h3-load, which
//! shares the two cores with the server and bounds what a cheaper server
//! gains in rate ("client CPUs busy": its CPU time over its run, out of
//! the two cores its runtime's two workers can use). Threads: each server as shipped
//! (quinn-h3-server on a tokio runtime with one worker per core;
//! h3-server with one engine thread per rx queue, one on veth, and an idle
//! main runtime).
//!
//!     cargo build --release -p quic-xdp-examples
//!     sudo cargo bench -p quic-xdp-benches --bench h3_bench -- --secs 5 --rounds 5
//!
//! `--client-xdp` runs h3-load on AF_XDP as well.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
};

use anyhow::{Context, bail};
use clap::Parser;
use datapath::testbed::{TestNet, TestNetConfig};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Response body size.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Run the load generator on AF_XDP too (h3-load --xdp veth-c), so the
    /// kernel's UDP path on the client side does not cap the rates.
    #[arg(long)]
    client_xdp: bool,
    #[arg(long, hide = true)]
    bench: bool,
}

/// The row the others are compared with.
const REFERENCE: usize = 2;

const SERVERS: [(&str, &str, &[&str]); 4] = [
    (
        "h3-server (quic-xdp), XDP",
        "h3-server",
        &["--interface", "veth-s", "--mode", "xdp"],
    ),
    (
        "h3-server (quic-xdp), kernel UDP",
        "h3-server",
        &["--interface", "veth-s", "--mode", "udp"],
    ),
    ("quinn + h3-quinn, kernel UDP", "quinn-h3-server", &[]),
    (
        "quinn + h3-quinn, AF_XDP socket",
        "quinn-h3-server",
        &["--xdp", "veth-s"],
    ),
];

/// The release binaries of the examples package, beside this bench's.
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("bench binary location")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: run `cargo build --release -p quic-xdp-examples` first",
            path.display()
        );
    }
    Ok(path)
}

struct Server(Child);

impl Server {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: the servers shut down gracefully (XDP detaches).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn start(net: &TestNet, bin: &Path, extra: &[&str], dir: &Path) -> anyhow::Result<Server> {
    let mut child = net
        .server
        .command(bin)
        .args(["--port", "4433"])
        .args(extra)
        .arg("--cert")
        .arg(dir.join(certs::CERT_FILE))
        .arg("--key")
        .arg(dir.join(certs::KEY_FILE))
        .arg("--root")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("server stdout")?;
    let server = Server(child);
    for line in BufReader::new(stdout).lines() {
        if line?.starts_with("listening") {
            return Ok(server);
        }
    }
    bail!("{} exited before listening", bin.display())
}

/// One load run: req/s, p50 ms, p99 ms, errors, requests, and the load
/// generator's CPU time.
struct Run {
    rps: f64,
    p50: f64,
    p99: f64,
    errors: u64,
    requests: f64,
    client_cpu: std::time::Duration,
    /// How long the load ran (h3-load's own count).
    secs: f64,
    /// UDP datagrams the client received and sent, per request.
    received_per_req: f64,
    sent_per_req: f64,
}

fn load(net: &TestNet, args: &Args, dir: &Path) -> anyhow::Result<Run> {
    // h3-load is the only child reaped during the run (the server is
    // reaped after it): the children's CPU time grows by its own.
    let children_before = common::children_cpu();
    let out = net
        .client
        .command(binary("h3-load")?)
        .arg(format!("https://localhost:4433/bytes/{}", args.size))
        .args(["--connect", "10.77.0.2:4433", "--quiet", "--json", "-"])
        .arg("--ca")
        .arg(dir.join(certs::CA_FILE))
        .args([
            "-c",
            &args.connections.to_string(),
            "-m",
            &args.concurrency.to_string(),
        ])
        .args(["-d", &args.secs.to_string()])
        .args(if args.client_xdp {
            &["--xdp", "veth-c"][..]
        } else {
            &[]
        })
        .output()?;
    let client_cpu = common::children_cpu().saturating_sub(children_before);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find("\n{").context("h3-load summary")? + 1..])?;
    let errors: u64 = json["errors"]
        .as_object()
        .map_or(0, |e| e.values().filter_map(|v| v.as_u64()).sum());
    let requests = json["requests_ok"].as_f64().unwrap_or_default().max(1.0);
    let per_req = |key: &str| json["datagrams"][key].as_f64().unwrap_or(f64::NAN) / requests;
    Ok(Run {
        received_per_req: per_req("received"),
        sent_per_req: per_req("sent"),
        rps: json["requests_per_s"].as_f64().unwrap_or_default(),
        p50: json["latency_ms"]["p50"].as_f64().unwrap_or_default(),
        p99: json["latency_ms"]["p99"].as_f64().unwrap_or_default(),
        errors,
        requests: json["requests_ok"].as_f64().unwrap_or_default(),
        client_cpu,
        secs: json["elapsed_s"].as_f64().unwrap_or(f64::NAN),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    common::require_root()?;
    let net = TestNet::create(&TestNetConfig::default())?;
    let dir = std::env::temp_dir().join(format!("qx-h3bench-{}", std::process::id()));
    certs::DevCerts::localhost()?.write_pem(&dir)?;
    let mut rps = vec![Vec::new(); SERVERS.len()];
    let mut p50 = vec![Vec::new(); SERVERS.len()];
    let mut p99 = vec![Vec::new(); SERVERS.len()];
    let mut cpu = vec![Vec::new(); SERVERS.len()];
    let mut client_cpu = vec![Vec::new(); SERVERS.len()];
    let mut client_busy = vec![Vec::new(); SERVERS.len()];
    let mut received = vec![Vec::new(); SERVERS.len()];
    let mut sent = vec![Vec::new(); SERVERS.len()];
    let mut errors = vec![0u64; SERVERS.len()];
    for round in 0..args.rounds {
        for (i, (name, bin, extra)) in SERVERS.iter().enumerate() {
            let server = start(&net, &binary(bin)?, extra, &dir)?;
            let before = common::process_cpu(server.pid())?;
            let run = load(&net, &args, &dir)?;
            let used = common::process_cpu(server.pid())? - before;
            drop(server);
            let us_per_req = used.as_secs_f64() * 1e6 / run.requests.max(1.0);
            let client_us = run.client_cpu.as_secs_f64() * 1e6 / run.requests.max(1.0);
            eprintln!(
                "round {round}: {name:<34} {:>8.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {us_per_req:.1} us CPU/req (client {client_us:.1}), datagrams/req {:.2} from, {:.2} to the server, {} errors",
                run.rps, run.p50, run.p99, run.received_per_req, run.sent_per_req, run.errors
            );
            received[i].push(run.received_per_req);
            sent[i].push(run.sent_per_req);
            client_cpu[i].push(client_us);
            client_busy[i].push(run.client_cpu.as_secs_f64() / run.secs);
            rps[i].push(run.rps);
            p50[i].push(run.p50);
            p99[i].push(run.p99);
            cpu[i].push(us_per_req);
            errors[i] += run.errors;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let med = |v: &Vec<f64>| common::median(v.clone());
    let reference = REFERENCE;
    println!(
        "GET /bytes/{}, {} connections x {} in flight, client on {}, median of {} rounds (min-max)\n",
        args.size,
        args.connections,
        args.concurrency,
        if args.client_xdp {
            "AF_XDP"
        } else {
            "kernel UDP"
        },
        args.rounds
    );
    println!(
        "| server | req/s | req/s vs quinn | p50 ms | p99 ms | p99 vs quinn | server CPU us/req | CPU vs quinn | client CPU us/req | client CPUs busy | datagrams/req from server | to server | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, (name, ..)) in SERVERS.iter().enumerate() {
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2} | {} |",
            common::spread(&rps[i], 0),
            med(&rps[i]) / med(&rps[reference]),
            med(&p50[i]),
            med(&p99[i]),
            med(&p99[i]) / med(&p99[reference]),
            med(&cpu[i]),
            med(&cpu[i]) / med(&cpu[reference]),
            med(&client_cpu[i]),
            med(&client_busy[i]),
            med(&received[i]),
            med(&sent[i]),
            errors[i]
        );
    }
    Ok(())
}
