//! HTTP/3: requests/s and p99 latency of h3-server over XDP, the same
//! server over kernel UDP, and quinn + h3-quinn (quinn-h3-server) serving
//! the same site, each driven by h3-load from a client namespace, in one
//! run, alternating round by round.
//!
//!     cargo build --release -p quic-xdp-examples
//!     sudo cargo bench -p quic-xdp-benches --bench h3_bench -- --secs 5 --rounds 5

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
    #[arg(long, hide = true)]
    bench: bool,
}

const SERVERS: [(&str, &str, &[&str]); 3] = [
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

fn load(net: &TestNet, args: &Args, dir: &Path) -> anyhow::Result<(f64, f64, u64)> {
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
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find('{').context("h3-load summary")?..])?;
    let errors: u64 = json["errors"]
        .as_object()
        .map_or(0, |e| e.values().filter_map(|v| v.as_u64()).sum());
    Ok((
        json["requests_per_s"].as_f64().unwrap_or_default(),
        json["latency_ms"]["p99"].as_f64().unwrap_or_default(),
        errors,
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    common::require_root()?;
    let net = TestNet::create(&TestNetConfig::default())?;
    let dir = std::env::temp_dir().join(format!("qx-h3bench-{}", std::process::id()));
    certs::DevCerts::localhost()?.write_pem(&dir)?;
    let mut rps = vec![Vec::new(); SERVERS.len()];
    let mut p99 = vec![Vec::new(); SERVERS.len()];
    let mut errors = vec![0u64; SERVERS.len()];
    for round in 0..args.rounds {
        for (i, (name, bin, extra)) in SERVERS.iter().enumerate() {
            let server = start(&net, &binary(bin)?, extra, &dir)?;
            let (r, p, e) = load(&net, &args, &dir)?;
            drop(server);
            eprintln!("round {round}: {name:<34} {r:>8.0} req/s, p99 {p:.2} ms, {e} errors");
            rps[i].push(r);
            p99[i].push(p);
            errors[i] += e;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let rps: Vec<f64> = rps.into_iter().map(common::median).collect();
    let p99: Vec<f64> = p99.into_iter().map(common::median).collect();
    let reference = SERVERS.len() - 1;
    println!(
        "| server | req/s (median of {}) | p99 ms | errors | req/s vs quinn | p99 vs quinn |",
        args.rounds
    );
    println!("|---|---|---|---|---|---|");
    for (i, (name, ..)) in SERVERS.iter().enumerate() {
        println!(
            "| {name} | {:.0} | {:.2} | {} | {:.2} | {:.2} |",
            rps[i],
            p99[i],
            errors[i],
            rps[i] / rps[reference],
            p99[i] / p99[reference]
        );
    }
    Ok(())
}
