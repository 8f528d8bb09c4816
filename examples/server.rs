//! What the example servers share: flags, binding, stopping, reporting.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use quic_xdp::{Endpoint, EndpointStats, Mode, RetryPolicy, VarInt};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// A duration given on the command line in seconds.
pub fn seconds(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).with_context(|| format!("{flag} {secs}: not a duration"))
}

/// What every example server takes on the command line.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// Interface to steer on (XDP); default: the one owning --address.
    #[arg(short, long)]
    pub interface: Option<String>,
    /// Address to serve; `[::]` serves IPv4 and IPv6.
    #[arg(short, long, default_value = "::")]
    pub address: std::net::IpAddr,
    #[arg(short, long, default_value_t = 4433)]
    pub port: u16,
    #[arg(short, long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,
    /// Certificate chain (PEM, leaf first); default: a generated dev CA + leaf.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Where to write the generated dev CA (PEM) for clients to trust.
    #[arg(long, default_value = "dev-ca.pem")]
    pub ca_out: PathBuf,
    /// Exit after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// XDP: client Initials per second allowed from one source address,
    /// enforced in the XDP program (beyond it they are dropped and
    /// counted); off by default, since one address can stand for many
    /// clients (NAT).
    #[arg(long, value_name = "PER_SECOND")]
    pub initial_rate: Option<u32>,
    /// With --initial-rate: Initials a source may send at once beyond the
    /// rate (default: one second's worth).
    #[arg(long, requires = "initial_rate")]
    pub initial_burst: Option<u32>,
    /// XDP: slots in each AF_XDP ring (a power of two, 64 to 32768); each
    /// queue's UMEM holds twice as many 4 KiB frames. Larger rings absorb
    /// longer bursts while the engine is busy.
    #[arg(long, default_value_t = 2048)]
    pub ring_size: u32,
    /// Once the program is attached and the sockets are open, run as this
    /// user, keeping only CAP_BPF and CAP_NET_ADMIN.
    #[arg(long)]
    pub user: Option<String>,
    /// When new clients must first prove their address with a Retry
    /// round trip: never, always, or when-busy (once 256 handshakes are
    /// pending).
    #[arg(long, value_enum, default_value_t = RetryArg::WhenBusy)]
    pub retry: RetryArg,
    /// Connection attempts beyond this many open connections are refused.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Seconds a silent connection lives (QUIC idle timeout).
    #[arg(long, value_name = "SECS", default_value_t = quic_xdp::DEFAULT_IDLE_TIMEOUT.as_secs_f64())]
    pub idle_timeout: f64,
    /// Streams a client may have open at once per connection (requests in
    /// flight, for HTTP/3).
    #[arg(long, default_value_t = quic_xdp::DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_streams: u32,
    /// Bytes one connection may have received that the server has not
    /// read yet (connection flow control).
    #[arg(long, value_name = "BYTES", default_value_t = quic_xdp::DEFAULT_RECEIVE_WINDOW)]
    pub receive_window: u64,
    /// The same per stream.
    #[arg(long, value_name = "BYTES", default_value_t = quic_xdp::DEFAULT_STREAM_RECEIVE_WINDOW)]
    pub stream_receive_window: u64,
    /// Bytes written on one connection and not yet acknowledged; writes
    /// wait beyond it.
    #[arg(long, value_name = "BYTES", default_value_t = quic_xdp::DEFAULT_SEND_WINDOW)]
    pub send_window: u64,
    /// On SIGINT/SIGTERM: refuse new connections and let the open ones
    /// finish (HTTP/3: GOAWAY) for up to this many seconds, then close
    /// them. A second signal closes them at once.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Admit only sources in this prefix (repeatable, e.g. 10.0.0.0/8,
    /// 2001:db8::/32); the longest matching --allow/--deny prefix decides.
    #[arg(long, value_name = "PREFIX")]
    pub allow: Vec<quic_xdp::datapath::source_policy::IpNet>,
    /// Refuse sources in this prefix (repeatable). Enforced in the XDP
    /// program, which nftables rules for the port no longer reach.
    #[arg(long, value_name = "PREFIX")]
    pub deny: Vec<quic_xdp::datapath::source_policy::IpNet>,
    /// Write every datagram the endpoint receives and sends to this pcap
    /// file (steered traffic never reaches tcpdump). Flushed at exit.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// With --pcap: stop capturing before the file exceeds this size.
    #[arg(long, value_name = "MIB", default_value_t = 1024, requires = "pcap")]
    pub pcap_max_mib: u64,
    /// Write a qlog trace of each connection into this directory (one
    /// file per connection; with --user, writable by that user).
    #[arg(long, value_name = "DIR")]
    pub qlog: Option<PathBuf>,
    /// TLS cryptography: aws-lc-rs offers the X25519MLKEM768 post-quantum
    /// hybrid key exchange that browsers use; ring does not.
    #[arg(long, value_enum, default_value_t = CryptoArg::AwsLcRs)]
    pub crypto: CryptoArg,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// A file holding 32 bytes in hex: the secret behind stateless resets
    /// and connection-ID checks. Give every server of a fleet (and every
    /// restart) the same one; default: random per run.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Issue connection IDs in the QUIC-LB format with this server ID
    /// (hex, 1-15 bytes), for a load balancer that routes by them.
    #[arg(long, value_name = "HEX")]
    pub quic_lb_server_id: Option<String>,
    /// With --quic-lb-server-id: the configuration's ID (0-6).
    #[arg(long, default_value_t = 0, requires = "quic_lb_server_id")]
    pub quic_lb_config_id: u8,
    /// With --quic-lb-server-id: nonce bytes per connection ID (8 or more).
    #[arg(long, default_value_t = 8, requires = "quic_lb_server_id")]
    pub quic_lb_nonce_len: usize,
    /// With --quic-lb-server-id: a file holding the fleet's 16-byte key in
    /// hex, to encrypt connection IDs; without it server IDs are visible.
    #[arg(long, value_name = "FILE", requires = "quic_lb_server_id")]
    pub quic_lb_key_file: Option<PathBuf>,
}

/// `N` bytes written in hex in `path` (surrounding whitespace ignored).
fn hex_file<const N: usize>(flag: &str, path: &std::path::Path) -> anyhow::Result<[u8; N]> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag}: reading {}", path.display()))?;
    let bytes = hex::decode(text.trim())
        .with_context(|| format!("{flag}: {} is not hex", path.display()))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        anyhow::anyhow!(
            "{flag}: {} holds {} bytes, not {N}",
            path.display(),
            b.len()
        )
    })
}

/// A bound endpoint, and the metrics listener if asked for (bound before
/// the endpoint: after `--user` a low port could no longer be bound).
pub struct Bound {
    pub endpoint: Endpoint,
    metrics: Option<std::net::TcpListener>,
    /// The certificate and key the endpoint serves (for a TCP listener
    /// to serve the same; echo-server has none).
    #[allow(dead_code)]
    pub identity: Identity,
}

/// A certificate chain (leaf first) and its private key.
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum CryptoArg {
    AwsLcRs,
    Ring,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RetryArg {
    Never,
    Always,
    WhenBusy,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    Auto,
    Xdp,
    Udp,
}

impl ServerArgs {
    /// Binds the endpoint, writes the dev CA if one was generated, and
    /// prints the mode it really runs in.
    pub fn bind(&self, alpn: &str) -> anyhow::Result<Bound> {
        let metrics = match self.metrics {
            Some(addr) => Some(
                std::net::TcpListener::bind(addr)
                    .with_context(|| format!("binding the metrics listener {addr}"))?,
            ),
            None => None,
        };
        let mut builder = Endpoint::builder(SocketAddr::new(self.address, self.port))
            .mode(match self.mode {
                ModeArg::Auto => Mode::Auto,
                ModeArg::Xdp => Mode::Xdp,
                ModeArg::Udp => Mode::Udp,
            })
            .alpn([alpn])
            .retry(match self.retry {
                RetryArg::Never => RetryPolicy::Never,
                RetryArg::Always => RetryPolicy::Always,
                RetryArg::WhenBusy => RetryPolicy::WhenBusy { unvalidated: 256 },
            })
            .crypto_provider(self.crypto_provider())
            .max_connections(self.max_connections)
            .idle_timeout(seconds("--idle-timeout", self.idle_timeout)?)
            .max_concurrent_streams(self.max_streams)
            .receive_window(self.receive_window)
            .stream_receive_window(self.stream_receive_window)
            .send_window(self.send_window);
        if let Some(interface) = &self.interface {
            builder = builder.interface(interface);
        }
        if let Some(user) = &self.user {
            builder = builder.run_as(user);
        }
        if let Some(dir) = &self.qlog {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the qlog directory {}", dir.display()))?;
            builder = builder.qlog_dir(dir);
        }
        let (capture, max_bytes) = (self.pcap.clone(), self.pcap_max_mib.saturating_mul(1 << 20));
        builder = builder.datapath(move |c| {
            c.capture = capture;
            c.capture_max_bytes = max_bytes;
        });
        let policy = self.source_policy()?;
        let ring_size = self.ring_size;
        builder = builder.datapath(move |c| {
            c.source_policy = policy;
            c.ring_size = ring_size;
        });
        if let Some(per_second) = self.initial_rate {
            let rate = quic_xdp::datapath::program::InitialRate {
                per_second,
                burst: self.initial_burst.unwrap_or(per_second),
            };
            builder = builder.datapath(move |c| c.initial_rate = Some(rate));
        }
        if let Some(path) = &self.secret_file {
            builder = builder.reset_secret(hex_file("--secret-file", path)?);
        }
        if let Some(config) = self.quic_lb()? {
            builder = builder.quic_lb(config);
        }
        let identity = self.identity()?;
        builder = builder.certificate(identity.certs.clone(), identity.key.clone_key());
        let endpoint = builder.bind().context("starting the endpoint")?;
        println!("mode: {}", endpoint.mode());
        if let Some(listener) = &metrics {
            println!("metrics on http://{}/metrics", listener.local_addr()?);
        }
        Ok(Bound {
            endpoint,
            metrics,
            identity,
        })
    }

    /// The QUIC-LB configuration of the `--quic-lb-*` flags.
    fn quic_lb(&self) -> anyhow::Result<Option<quic_xdp::QuicLbConfig>> {
        let Some(server_id) = &self.quic_lb_server_id else {
            return Ok(None);
        };
        let server_id = hex::decode(server_id).context("--quic-lb-server-id: not hex")?;
        let key = match &self.quic_lb_key_file {
            Some(path) => Some(hex_file("--quic-lb-key-file", path)?),
            None => None,
        };
        Ok(Some(quic_xdp::QuicLbConfig::new(
            self.quic_lb_config_id,
            &server_id,
            self.quic_lb_nonce_len,
            key,
        )?))
    }

    /// The sources `--allow` and `--deny` admit.
    pub fn source_policy(&self) -> anyhow::Result<quic_xdp::datapath::SourcePolicy> {
        Ok(quic_xdp::datapath::SourcePolicy::new(
            self.allow.clone(),
            self.deny.clone(),
        )?)
    }

    /// The TLS cryptography `--crypto` names.
    pub fn crypto_provider(&self) -> std::sync::Arc<rustls::crypto::CryptoProvider> {
        std::sync::Arc::new(match self.crypto {
            CryptoArg::AwsLcRs => rustls::crypto::aws_lc_rs::default_provider(),
            CryptoArg::Ring => rustls::crypto::ring::default_provider(),
        })
    }

    /// `--cert`/`--key`, or a generated development CA and leaf (for
    /// localhost, the loopback addresses and `--address`) whose CA is
    /// written to `--ca-out` for clients to trust.
    fn identity(&self) -> anyhow::Result<Identity> {
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading {}", cert.display()))?;
            anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading {}", key.display()))?;
            return Ok(Identity { certs, key });
        }
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        if !self.address.is_unspecified() && !names.contains(&self.address.to_string()) {
            names.push(self.address.to_string());
        }
        let dev = certs::DevCerts::generate(&names)?;
        std::fs::write(&self.ca_out, certs::certificate_pem(&dev.ca_der()))
            .with_context(|| format!("writing {}", self.ca_out.display()))?;
        println!(
            "no --cert: serving a development certificate for {names:?}; its CA is in {}",
            self.ca_out.display()
        );
        Ok(Identity {
            certs: dev.chain(),
            key: dev.key(),
        })
    }
}

/// The counters a server prints on exit.
pub fn print_stats(stats: &EndpointStats) {
    let a = stats.admission;
    println!(
        "connections: accepted {} refused {} retried {} forwarded datagrams {} (dropped {})",
        a.accepted, a.refused, a.retried, a.forwarded, a.forward_dropped
    );
    for (kind, counters) in &stats.queues {
        println!("  {kind:?}: {counters}");
    }
    if let Some(steering) = stats.steering {
        println!("  steering: {steering}");
    }
}

/// Set once the server starts draining: handlers finish what is in
/// flight and accept no more (HTTP/3: GOAWAY).
pub type Draining = tokio::sync::watch::Receiver<bool>;

/// Runs `handle` for every connection on the engine thread that owns it
/// (`Endpoint::serve`: run to completion, no thread hand-off) until the
/// server is stopped; then drains (see `--drain-timeout`), closes what is
/// left with `close_code`, and prints the counters.
pub async fn serve<F, Fut>(
    args: &ServerArgs,
    bound: Bound,
    close_code: VarInt,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(quic_xdp::Connection, Draining) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let Bound {
        endpoint, metrics, ..
    } = bound;
    if let Some(listener) = metrics {
        crate::metrics::serve(listener, &endpoint)?;
    }
    let drain_timeout = seconds("--drain-timeout", args.drain_timeout)?;
    let (drain, draining) = tokio::sync::watch::channel(false);
    endpoint.serve(move |conn| {
        tracing::debug!(remote = %conn.remote_address(), "connection established");
        handle(conn, draining.clone())
    })?;
    crate::stop::until_stopped(args.duration).await?;

    let open = endpoint.stats().open_connections;
    println!("draining: refusing new connections; {open} open, up to {drain_timeout:?}");
    endpoint.stop_accepting();
    drain.send_replace(true);
    tokio::select! {
        _ = endpoint.wait_idle() => println!("drained"),
        _ = tokio::time::sleep(drain_timeout) => println!(
            "drain timeout: closing {} connections",
            endpoint.stats().open_connections
        ),
        _ = crate::stop::until_stopped(None) => println!("stopped again: closing now"),
    }
    // The steering counters need the datapath, which shutdown closes; the
    // queue counters are final only after it.
    let steering = endpoint.stats().steering;
    endpoint.close(close_code, b"server shutting down");
    endpoint.shutdown().await;
    let mut stats = endpoint.stats();
    stats.steering = steering;
    print_stats(&stats);
    Ok(())
}
