//! HTTP/3 load generator for any HTTP/3 server: N connections x M
//! concurrent requests, closed loop (each worker sends its next request
//! when the last one completes) or open loop (`--rate` requests/s on a
//! fixed schedule, latency measured from the scheduled time so a stalled
//! server cannot hide its queueing). Reports requests/s, bytes/s, latency
//! percentiles and errors by kind; `--json` writes the same as JSON.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::{Buf, Bytes};
use clap::Parser;
use hdrhistogram::Histogram;
use quinn::crypto::rustls::QuicClientConfig;
use rustls_pki_types::{CertificateDer, pem::PemObject};

mod common;
mod quinn_xdp;

#[derive(Parser)]
#[command(
    version,
    about = "HTTP/3 load generator for any server: closed or open loop, latency percentiles"
)]
struct Args {
    /// URLs to request, in turn (https://host:port/path).
    #[arg(required = true)]
    urls: Vec<http::Uri>,
    /// Connections to open.
    #[arg(short, long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection (closed loop).
    #[arg(short = 'm', long, default_value_t = 10)]
    concurrency: usize,
    /// Stop after this many seconds...
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// ...or after this many requests, whichever comes first.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Open loop: this many requests per second in total.
    #[arg(long)]
    rate: Option<f64>,
    /// CA certificate (PEM) to trust.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Accept any server certificate (for test servers only).
    #[arg(long)]
    insecure: bool,
    /// TLS server name (default: the URL's host).
    #[arg(long)]
    server_name: Option<String>,
    /// Connect to this address instead of resolving the URL's host.
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Write the summary as JSON to this file ("-" for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Send and receive through AF_XDP on this interface (quinn over the
    /// quic-xdp datapath: an XDP program steers the client's port), so the
    /// kernel's UDP path does not limit the load. Needs root or CAP_BPF +
    /// CAP_NET_ADMIN.
    #[arg(long, value_name = "IFACE")]
    xdp: Option<String>,
}

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// What every request task reports into.
struct Tally {
    latency_us: Mutex<Histogram<u64>>,
    ok: AtomicU64,
    bytes: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    started: AtomicU64,
    stop: AtomicBool,
}

impl Tally {
    fn error(&self, kind: impl Into<String>) {
        *self.errors.lock().unwrap().entry(kind.into()).or_default() += 1;
    }

    fn done(&self, since: Instant, bytes: u64) {
        let us = since.elapsed().as_micros().max(1) as u64;
        self.latency_us.lock().unwrap().saturating_record(us);
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Claims the next request slot; false once the count is reached.
    fn claim(&self, limit: Option<u64>) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        limit.is_none_or(|l| n < l)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_logging();
    common::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let first = &args.urls[0];
    let host = first.host().context("URL without a host")?.to_string();
    let port = first.port_u16().unwrap_or(443);
    let target = match args.connect {
        Some(addr) => addr,
        None => (host.trim_matches(['[', ']']), port)
            .to_socket_addrs()?
            .next()
            .with_context(|| format!("cannot resolve {host}"))?,
    };
    let server_name = args.server_name.clone().unwrap_or(host);
    let client = client_endpoint(&args, target)?;

    let mut senders = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..args.connections {
        let conn = client
            .connect(target, &server_name)?
            .await
            .with_context(|| format!("connecting to {target}"))?;
        conns.push(conn.clone());
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        senders.push(sender);
    }

    let tally = Arc::new(Tally {
        latency_us: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        ok: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        started: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let urls = Arc::new(args.urls.clone());
    let timeout = Duration::from_secs_f64(args.timeout);
    let progress = progress_bar(&args);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    {
        let (tally, progress) = (tally.clone(), progress.clone());
        tokio::spawn(async move {
            while !tally.stop.load(Ordering::Relaxed) {
                progress.set_position(tally.ok.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    let mut tasks = Vec::new();
    match args.rate {
        None => {
            for (c, sender) in senders.iter().enumerate() {
                for w in 0..args.concurrency {
                    let (mut sender, tally, urls) = (sender.clone(), tally.clone(), urls.clone());
                    let limit = args.requests;
                    tasks.push(tokio::spawn(async move {
                        let mut i = c * 7919 + w;
                        while Instant::now() < deadline && tally.claim(limit) {
                            let url = &urls[i % urls.len()];
                            i += 1;
                            if request(&mut sender, url, Instant::now(), timeout, &tally).await
                                == Outcome::ConnectionGone
                            {
                                break;
                            }
                        }
                    }));
                }
            }
        }
        Some(rate) => {
            if rate <= 0.0 {
                bail!("--rate must be positive");
            }
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut next = Instant::now();
            let mut i = 0usize;
            while Instant::now() < deadline && tally.claim(args.requests) {
                tokio::time::sleep_until(next.into()).await;
                let scheduled = next;
                next += interval;
                let (mut sender, tally, urls) = (
                    senders[i % senders.len()].clone(),
                    tally.clone(),
                    urls.clone(),
                );
                let url_index = i;
                i += 1;
                tasks.push(tokio::spawn(async move {
                    request(
                        &mut sender,
                        &urls[url_index % urls.len()],
                        scheduled,
                        timeout,
                        &tally,
                    )
                    .await;
                }));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    tally.stop.store(true, Ordering::Relaxed);
    progress.finish_and_clear();

    let summary = summarize(&args, &tally, elapsed, &conns);
    print_summary(&summary);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&summary)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    for sender in senders {
        drop(sender);
    }
    client.close(0u32.into(), b"done");
    client.wait_idle().await;
    if tally.ok.load(Ordering::Relaxed) == 0 {
        bail!("no request succeeded");
    }
    Ok(())
}

#[derive(PartialEq, Eq)]
enum Outcome {
    Done,
    /// The server is going away (GOAWAY) or the connection ended: no
    /// further request can be sent on it.
    ConnectionGone,
}

/// Error kinds a server's graceful shutdown causes: the request was never
/// processed and may be retried elsewhere (RFC 9114 5.2).
const NOT_SENT_GOAWAY: &str = "not sent: server going away";
const REJECTED: &str = "rejected: not processed (H3_REQUEST_REJECTED)";

/// What went wrong with a request, by kind; `fatal` when the connection
/// can carry no more requests.
fn stream_error(stage: &str, e: &h3::error::StreamError) -> (String, bool) {
    use h3::error::{Code, StreamError};
    match e {
        StreamError::RemoteClosing { .. } => (NOT_SENT_GOAWAY.into(), true),
        StreamError::RemoteTerminate { code, .. } if *code == Code::H3_REQUEST_REJECTED => {
            (REJECTED.into(), false)
        }
        StreamError::ConnectionError { .. } => (format!("{stage}: {e}"), true),
        _ => (stage.to_string(), false),
    }
}

/// One GET, timed from `since`; counts the body, or the error by kind.
async fn request(
    sender: &mut Sender,
    url: &http::Uri,
    since: Instant,
    timeout: Duration,
    tally: &Tally,
) -> Outcome {
    let exchange = async {
        let request = http::Request::get(url.clone())
            .body(())
            .map_err(|e| (format!("request: {e}"), false))?;
        let mut stream = sender
            .send_request(request)
            .await
            .map_err(|e| stream_error("send", &e))?;
        // The server may answer before it reads the request's end and stop
        // the request side (H3_NO_ERROR, RFC 9114 4.1.2): the response
        // still counts. A real failure shows in reading the response.
        let _ = stream.finish().await;
        let response = stream
            .recv_response()
            .await
            .map_err(|e| stream_error("response", &e))?;
        let mut bytes = 0u64;
        while let Some(chunk) = stream
            .recv_data()
            .await
            .map_err(|e| stream_error("body", &e))?
        {
            bytes += chunk.remaining() as u64;
        }
        if !response.status().is_success() {
            return Err((format!("status {}", response.status().as_u16()), false));
        }
        Ok(bytes)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(bytes)) => tally.done(since, bytes),
        Ok(Err((kind, fatal))) => {
            tally.error(kind);
            if fatal {
                return Outcome::ConnectionGone;
            }
        }
        Err(_) => tally.error("timeout"),
    }
    Outcome::Done
}

fn summarize(
    args: &Args,
    tally: &Tally,
    elapsed: Duration,
    conns: &[quinn::Connection],
) -> serde_json::Value {
    let h = tally.latency_us.lock().unwrap();
    let secs = elapsed.as_secs_f64();
    let ok = tally.ok.load(Ordering::Relaxed);
    let bytes = tally.bytes.load(Ordering::Relaxed);
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    // UDP datagrams over the run (handshakes included): how many packets
    // a request costs each side.
    let (received, sent) = conns.iter().map(|c| c.stats()).fold((0, 0), |(r, s), st| {
        (r + st.udp_rx.datagrams, s + st.udp_tx.datagrams)
    });
    serde_json::json!({
        "urls": args.urls.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "connections": args.connections,
        "mode": match args.rate { Some(r) => format!("open loop, {r} req/s"), None => format!("closed loop, {} in flight per connection", args.concurrency) },
        "elapsed_s": secs,
        "requests_ok": ok,
        "errors": *tally.errors.lock().unwrap(),
        "requests_per_s": ok as f64 / secs,
        "bytes_per_s": bytes as f64 / secs,
        "latency_ms": {
            "p50": ms(0.50), "p90": ms(0.90), "p99": ms(0.99),
            "max": h.max() as f64 / 1000.0,
        },
        "datagrams": { "received": received, "sent": sent },
    })
}

fn print_summary(s: &serde_json::Value) {
    let l = &s["latency_ms"];
    println!(
        "{} requests ok in {:.2}s: {:.0} req/s, {:.1} MB/s",
        s["requests_ok"],
        s["elapsed_s"].as_f64().unwrap_or_default(),
        s["requests_per_s"].as_f64().unwrap_or_default(),
        s["bytes_per_s"].as_f64().unwrap_or_default() / 1e6
    );
    println!(
        "latency ms: p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
        l["p50"].as_f64().unwrap_or_default(),
        l["p90"].as_f64().unwrap_or_default(),
        l["p99"].as_f64().unwrap_or_default(),
        l["max"].as_f64().unwrap_or_default()
    );
    let errors = s["errors"].as_object().cloned().unwrap_or_default();
    if errors.is_empty() {
        println!("errors: none");
    } else {
        let list: Vec<String> = errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!("errors: {}", list.join(", "));
    }
}

fn progress_bar(args: &Args) -> indicatif::ProgressBar {
    if args.quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match args.requests {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::no_length(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} {pos} requests ({per_sec})",
        )
        .expect("valid template"),
    );
    bar
}

fn client_endpoint(args: &Args, target: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut tls = if args.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let ca = args
            .ca
            .as_ref()
            .context("give --ca PEM to trust, or --insecure")?;
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading {}", ca.display()))?
        {
            roots.add(cert?)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let mut client = match &args.xdp {
        None => quinn::Endpoint::client(bind)?,
        Some(interface) => quinn_xdp::endpoint(bind, interface, None)?,
    };
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls)?,
    )));
    Ok(client)
}

/// `--insecure`: accepts any certificate, still checks handshake signatures.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
