//! `EndpointBuilder::qlog_dir`: a qlog trace per connection, written by
//! quinn-proto (its `qlog` feature) into a file of its own.
//!
//! quinn-proto takes a qlog stream from the transport configuration, so
//! each accepted connection gets a copy of the server configuration with
//! a transport configuration of its own: built from the builder's
//! settings, since a `TransportConfig` cannot be cloned.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use quinn_proto::{QlogConfig, ServerConfig, TransportConfig};

pub(crate) struct QlogWriter {
    dir: PathBuf,
    base: Arc<ServerConfig>,
    transport: Box<dyn Fn() -> TransportConfig + Send + Sync>,
    /// Numbers the files: several connections may share a remote address
    /// over time.
    next: AtomicU64,
}

impl QlogWriter {
    pub fn new(
        dir: PathBuf,
        base: Arc<ServerConfig>,
        transport: impl Fn() -> TransportConfig + Send + Sync + 'static,
    ) -> Self {
        Self {
            dir,
            base,
            transport: Box::new(transport),
            next: AtomicU64::new(0),
        }
    }

    /// The server configuration for a connection from `remote`, tracing
    /// into `<dir>/<n>-<remote>.qlog`; None (the shared configuration,
    /// no trace) if the file cannot be created.
    pub fn server_config_for(&self, remote: SocketAddr, now: Instant) -> Option<Arc<ServerConfig>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("{n}-{remote}.qlog").replace([':', '[', ']'], "_");
        let path = self.dir.join(name);
        let file = match std::fs::File::create(&path) {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write qlog");
                return None;
            }
        };
        let mut qlog = QlogConfig::default();
        qlog.writer(Box::new(std::io::BufWriter::new(file)))
            .title(Some(format!("quic-xdp connection from {remote}")))
            .start_time(now);
        let mut transport = (self.transport)();
        transport.qlog_stream(qlog.into_stream());
        let mut config = (*self.base).clone();
        config.transport_config(Arc::new(transport));
        Some(Arc::new(config))
    }
}
