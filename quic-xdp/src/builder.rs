//! Configuring and binding an [`Endpoint`].

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use datapath::{Datapath, DatapathConfig, Mode};
use quinn_proto::{
    EndpointConfig, ServerConfig, TransportConfig, VarInt, crypto::rustls::QuicServerConfig,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use quinn_proto::crypto::HmacKey;
use ring::{
    hmac,
    rand::{SecureRandom, SystemRandom},
};

use crate::{Endpoint, Error, QuicLbConfig, cid::CidScheme, core::Admission};

/// How long a silent connection lives, unless configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams per direction a client may have open at once, unless configured.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Unread received bytes one connection may cause, unless configured.
pub const DEFAULT_RECEIVE_WINDOW: u64 = 8 << 20;
/// Unread received bytes per stream, unless configured.
pub const DEFAULT_STREAM_RECEIVE_WINDOW: u64 = 1 << 20;
/// Written, unacknowledged bytes per connection, unless configured.
pub const DEFAULT_SEND_WINDOW: u64 = 8 << 20;

/// When new connections must first prove their address with a Retry
/// round trip (costs the client one RTT, protects against spoofed floods).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Never send Retry.
    Never,
    /// Send Retry to every new connection attempt.
    Always,
    /// Once this many attempts are undecided by the application or still
    /// handshaking.
    WhenBusy {
        /// Attempts undecided or handshaking at which Retry starts.
        unvalidated: usize,
    },
}

enum Identity {
    /// A fresh development CA and leaf (see `Endpoint::dev_ca_certificate`).
    Dev,
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    Chain {
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    },
}

/// Configures an [`Endpoint`] and binds it (see `Endpoint::builder`).
pub struct EndpointBuilder {
    datapath: DatapathConfig,
    identity: Identity,
    alpn: Vec<Vec<u8>>,
    crypto: Option<Arc<rustls::crypto::CryptoProvider>>,
    transport: Option<Arc<TransportConfig>>,
    limits: TransportLimits,
    server_config: Option<ServerConfig>,
    max_connections: usize,
    retry: RetryPolicy,
    reset_secret: Option<[u8; 32]>,
    quic_lb: Option<QuicLbConfig>,
    run_as: Option<String>,
    #[cfg(feature = "qlog")]
    qlog_dir: Option<PathBuf>,
}

impl EndpointBuilder {
    /// A builder for an endpoint listening on `listen`, with the defaults:
    /// a generated development certificate, up to 10,000 connections, and
    /// Retry once 256 attempts are unvalidated.
    pub fn new(listen: SocketAddr) -> Self {
        let mut datapath = DatapathConfig::new(listen);
        // The engines speak QUIC v1 only (`QuicConfig::endpoints`): the XDP
        // program answers other versions without waking them.
        datapath.answer_version_negotiation = true;
        Self {
            datapath,
            identity: Identity::Dev,
            alpn: Vec::new(),
            crypto: None,
            transport: None,
            limits: TransportLimits::default(),
            server_config: None,
            max_connections: 10_000,
            retry: RetryPolicy::WhenBusy { unvalidated: 256 },
            reset_secret: None,
            quic_lb: None,
            run_as: None,
            #[cfg(feature = "qlog")]
            qlog_dir: None,
        }
    }

    /// The interface to steer on (XDP); by default the one owning the
    /// listen address.
    pub fn interface(mut self, name: impl Into<String>) -> Self {
        self.datapath.interface = Some(name.into());
        self
    }

    /// XDP, kernel UDP, or XDP where possible (the default).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.datapath.mode = mode;
        self
    }

    /// Finer datapath settings: attach mode, zero-copy, queues, rings.
    pub fn datapath(mut self, edit: impl FnOnce(&mut DatapathConfig)) -> Self {
        edit(&mut self.datapath);
        self
    }

    /// PEM files: the certificate chain (leaf first) and its private key.
    pub fn cert_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Identity::Files {
            cert: cert.into(),
            key: key.into(),
        };
        self
    }

    /// The certificate chain (leaf first) and its private key, in DER.
    pub fn certificate(
        mut self,
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.identity = Identity::Chain { certs, key };
        self
    }

    /// Application protocols offered in ALPN, in order of preference.
    pub fn alpn<P: AsRef<[u8]>>(mut self, protocols: impl IntoIterator<Item = P>) -> Self {
        self.alpn = protocols.into_iter().map(|p| p.as_ref().to_vec()).collect();
        self
    }

    /// The cryptography TLS uses; ring by default. With the `aws-lc-rs`
    /// feature, `rustls::crypto::aws_lc_rs::default_provider()` adds the
    /// X25519MLKEM768 post-quantum hybrid key exchange browsers offer.
    pub fn crypto_provider(mut self, provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        self.crypto = Some(provider);
        self
    }

    /// A connection that hears nothing from its peer for this long is
    /// closed (QUIC max_idle_timeout; the lower of both sides' values
    /// applies). Default 30 s.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.limits.idle_timeout = timeout;
        self
    }

    /// Streams a client may have open at once on one connection, per
    /// direction (for HTTP/3: requests in flight). Default 100.
    pub fn max_concurrent_streams(mut self, n: u32) -> Self {
        self.limits.max_concurrent_streams = n;
        self
    }

    /// Bytes a peer may send on one connection that the application has
    /// not read yet (QUIC connection flow control): what one connection can
    /// make the endpoint buffer on receive. Default 8 MiB.
    pub fn receive_window(mut self, bytes: u64) -> Self {
        self.limits.receive_window = bytes;
        self
    }

    /// The same per stream. Default 1 MiB.
    pub fn stream_receive_window(mut self, bytes: u64) -> Self {
        self.limits.stream_receive_window = bytes;
        self
    }

    /// Bytes the application may have written on one connection that the
    /// peer has not acknowledged yet; writes wait beyond it. Default 8 MiB.
    pub fn send_window(mut self, bytes: u64) -> Self {
        self.limits.send_window = bytes;
        self
    }

    /// Every transport setting at once; `idle_timeout`,
    /// `max_concurrent_streams` and the windows are then ignored.
    pub fn transport_config(mut self, config: TransportConfig) -> Self {
        self.transport = Some(Arc::new(config));
        self
    }

    /// A complete quinn-proto server configuration; identity, ALPN and
    /// transport settings given here are then ignored.
    pub fn server_config(mut self, config: ServerConfig) -> Self {
        self.server_config = Some(config);
        self
    }

    /// Attempts beyond this many open connections are refused, those the
    /// application accepts itself included.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// When new connections must prove their address first; by default
    /// `RetryPolicy::WhenBusy` with 256 unvalidated attempts.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// A secret kept across restarts: a restarted endpoint then recognizes
    /// the connection IDs of the previous run and answers their datagrams
    /// with stateless resets the peers accept, so they fail fast instead of
    /// timing out. Random (per run) by default.
    pub fn reset_secret(mut self, secret: [u8; 32]) -> Self {
        self.reset_secret = Some(secret);
        self
    }

    /// Issue connection IDs in the QUIC-LB format of `config`, so that a
    /// load balancer in front of several servers routes each datagram to
    /// the server that owns its connection, also after the client migrated.
    /// Engines inside the host still route by the nonce, whose first two
    /// octets they use; six more are random: the nonce must be at least 8
    /// octets. Give every server the same `config`, but its own server ID.
    /// A server answers only its own server ID's CIDs (with a stateless
    /// reset when it lost the connection); with the same
    /// [`reset_secret`](Self::reset_secret) across restarts, its resets
    /// are ones the clients accept.
    pub fn quic_lb(mut self, config: QuicLbConfig) -> Self {
        self.quic_lb = Some(config);
        self
    }

    /// Once the datapath is open (program attached, sockets bound), switch
    /// the process to `user`, keeping only the capabilities serving needs
    /// (CAP_BPF, CAP_NET_ADMIN: see `datapath::privileges`). The engine
    /// threads start after the switch. Call `bind` on the thread that
    /// will read `Endpoint::stats` (the steering counters take CAP_BPF):
    /// threads that already exist keep no capability.
    pub fn run_as(mut self, user: impl Into<String>) -> Self {
        self.run_as = Some(user.into());
        self
    }

    /// Writes a qlog trace of every accepted connection into `dir`, one
    /// file each (`<n>-<remote address>.qlog`, JSON-SEQ), for qvis and
    /// similar tools. Uses the builder's transport settings: it cannot be
    /// combined with `transport_config` or `server_config`. With `run_as`,
    /// `dir` must be writable by that user.
    #[cfg(feature = "qlog")]
    pub fn qlog_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.qlog_dir = Some(dir.into());
        self
    }

    /// Opens the datapath and starts the engine threads.
    pub fn bind(mut self) -> Result<Endpoint, Error> {
        // TLS and keys first: a bad certificate fails before XDP attaches.
        #[cfg(feature = "qlog")]
        if self.qlog_dir.is_some() && (self.transport.is_some() || self.server_config.is_some()) {
            return Err(Error::Config(
                "qlog_dir uses the builder's transport settings: not with transport_config or server_config".into(),
            ));
        }
        let quic = self.quic_config()?;
        let needed = crate::cid::MIN_NONCE_LEN;
        if let Some(config) = &self.quic_lb
            && config.nonce_len() < needed
        {
            return Err(Error::Config(format!(
                "QUIC-LB: a nonce of at least {needed} octets (two name the engine, six are random), not {}",
                config.nonce_len()
            )));
        }
        let mut datapath = Datapath::open(&self.datapath)?;
        let groups = datapath.take_queue_groups();
        let (protos, cids) = quic.endpoints(groups.len(), self.quic_lb.clone());
        // Clients address us only by CIDs we issued once the handshake is
        // under way: the XDP program drops the rest (junk floods).
        if let (Some(check), Some(mut steering)) = (cids.xdp_check(), datapath.steering()) {
            steering.set_cid_check(Some(&check))?;
        }
        // Last: loading and configuring the program take privileges.
        if let Some(user) = &self.run_as {
            datapath::privileges::drop_to_user(user)?;
        }
        #[allow(unused_mut)]
        let mut admission = self.admission();
        #[cfg(feature = "qlog")]
        if let Some(dir) = self.qlog_dir.take() {
            let limits = self.limits;
            // Validated when the shared configuration was built.
            let transport = move || limits.config().expect("valid settings");
            admission.qlog = Some(Arc::new(crate::qlog::QlogWriter::new(
                dir,
                quic.server.clone(),
                transport,
            )));
        }
        Endpoint::start(protos, datapath, groups, cids, admission, quic.dev_ca)
    }

    /// The admission settings this builder describes.
    pub(crate) fn admission(&self) -> Admission {
        Admission {
            max_connections: self.max_connections,
            retry: self.retry,
            #[cfg(feature = "qlog")]
            qlog: None,
        }
    }

    /// The QUIC configuration this builder describes, taken out of it.
    pub(crate) fn quic_config(&mut self) -> Result<QuicConfig, Error> {
        let (server_config, dev_ca) = match self.server_config.take() {
            Some(config) => (config, None),
            None => {
                let identity = std::mem::replace(&mut self.identity, Identity::Dev);
                let (certs, key, dev_ca) = identity_chain(identity, &self.datapath)?;
                let provider = self
                    .crypto
                    .take()
                    .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
                let mut tls = rustls::ServerConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(|e| Error::Tls(e.to_string()))?
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .map_err(|e| Error::Tls(e.to_string()))?;
                tls.alpn_protocols = std::mem::take(&mut self.alpn);
                // TLS secrets go to the file SSLKEYLOGFILE names, if set
                // (for Wireshark); without it this logs nothing.
                tls.key_log = Arc::new(rustls::KeyLogFile::new());
                // 0-RTT: quinn-proto requires exactly this value to enable it.
                tls.max_early_data_size = u32::MAX;
                let crypto =
                    QuicServerConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
                let mut config = ServerConfig::with_crypto(Arc::new(crypto));
                let transport = match self.transport.take() {
                    Some(t) => t,
                    None => Arc::new(self.limits.config()?),
                };
                config.transport_config(transport);
                (config, dev_ca)
            }
        };
        let secret = match self.reset_secret {
            Some(secret) => secret,
            None => {
                let mut secret = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut secret)
                    .map_err(|_| Error::Tls("no system randomness for the reset key".into()))?;
                secret
            }
        };
        Ok(QuicConfig {
            server: Arc::new(server_config),
            dev_ca,
            secret,
        })
    }
}

/// The transport settings the builder exposes, with their defaults.
#[derive(Clone, Copy, Debug)]
struct TransportLimits {
    idle_timeout: Duration,
    max_concurrent_streams: u32,
    receive_window: u64,
    stream_receive_window: u64,
    send_window: u64,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            receive_window: DEFAULT_RECEIVE_WINDOW,
            stream_receive_window: DEFAULT_STREAM_RECEIVE_WINDOW,
            send_window: DEFAULT_SEND_WINDOW,
        }
    }
}

impl TransportLimits {
    fn config(&self) -> Result<TransportConfig, Error> {
        let idle = quinn_proto::IdleTimeout::try_from(self.idle_timeout).map_err(|_| {
            Error::Config(format!("idle timeout {:?} too large", self.idle_timeout))
        })?;
        let window = |name: &str, bytes: u64| {
            VarInt::from_u64(bytes).map_err(|_| Error::Config(format!("{name} {bytes} too large")))
        };
        let streams = VarInt::from_u32(self.max_concurrent_streams);
        let mut t = TransportConfig::default();
        t.max_idle_timeout(Some(idle))
            .max_concurrent_bidi_streams(streams)
            .max_concurrent_uni_streams(streams)
            .receive_window(window("receive window", self.receive_window)?)
            .stream_receive_window(window("stream receive window", self.stream_receive_window)?)
            .send_window(self.send_window);
        Ok(t)
    }
}

/// Server configuration, identity and keys, shared by every engine.
pub(crate) struct QuicConfig {
    server: Arc<ServerConfig>,
    pub dev_ca: Option<CertificateDer<'static>>,
    secret: [u8; 32],
}

impl QuicConfig {
    /// One quinn-proto endpoint per engine: its own CIDs, but one server
    /// configuration (Retry token and session ticket keys) and one
    /// stateless-reset key, so any engine can answer for any other.
    pub fn endpoints(
        &self,
        engines: usize,
        quic_lb: Option<QuicLbConfig>,
    ) -> (Vec<quinn_proto::Endpoint>, CidScheme) {
        let derive =
            |label: &[u8]| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.secret), label);
        let cid_key = derive(b"quic-xdp cid check").as_ref()[..crate::cid::CID_KEY_LEN]
            .try_into()
            .expect("16 bytes");
        let mut cids = CidScheme::new(engines, cid_key);
        if let Some(config) = quic_lb {
            cids = cids.with_quic_lb(config);
        }
        let reset_key: Arc<dyn HmacKey> = Arc::new(hmac::Key::new(
            hmac::HMAC_SHA256,
            derive(b"quic-xdp stateless reset").as_ref(),
        ));
        let protos = (0..engines)
            .map(|engine| {
                let mut config = EndpointConfig::new(reset_key.clone());
                // QUIC v1 only (quinn-proto also offers old drafts): the XDP
                // program's Initial checks know v1, and drafts are obsolete.
                config.supported_versions(vec![1]);
                let cids = cids.clone();
                config.cid_generator(move || Box::new(cids.generator(engine)));
                quinn_proto::Endpoint::new(Arc::new(config), Some(self.server.clone()), true, None)
            })
            .collect();
        (protos, cids)
    }
}

type Chain = (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    Option<CertificateDer<'static>>,
);

fn identity_chain(identity: Identity, datapath: &DatapathConfig) -> Result<Chain, Error> {
    match identity {
        Identity::Chain { certs, key } => Ok((certs, key, None)),
        Identity::Files { cert, key } => {
            let certs = CertificateDer::pem_file_iter(&cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Error::Certificate {
                    path: cert.clone(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(Error::Certificate {
                    path: cert,
                    reason: "no CERTIFICATE block".into(),
                });
            }
            let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| Error::Certificate {
                path: key.clone(),
                reason: e.to_string(),
            })?;
            Ok((certs, key, None))
        }
        Identity::Dev => {
            let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
            let ip = datapath.listen.ip();
            if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
                names.push(ip.to_string());
            }
            let dev = certs::DevCerts::generate(&names).map_err(|e| Error::Tls(e.to_string()))?;
            tracing::warn!(
                ?names,
                "no certificate configured: serving a generated development certificate"
            );
            Ok((dev.chain(), dev.key(), Some(dev.ca_der())))
        }
    }
}
