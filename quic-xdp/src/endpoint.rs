//! The server endpoint: accepts connections, reports statistics, shuts
//! down gracefully (draining connections, then detaching XDP).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
};

use bytes::Bytes;
use datapath::{
    ActiveMode, Datapath, PacketIo, QueueKind,
    counters::{CounterSnapshot, QueueCounters},
    program::SteerStats,
};
use quinn_proto::VarInt;
use rustls_pki_types::CertificateDer;

use crate::{
    EndpointBuilder, Error, Incoming,
    engine::{Admission, Engine},
    shared::{Command, EngineShared, EngineWaker},
};

/// Connection admission counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EndpointCounters {
    pub accepted: u64,
    pub refused: u64,
    pub retried: u64,
}

#[derive(Debug, Clone)]
pub struct EndpointStats {
    pub open_connections: usize,
    pub admission: EndpointCounters,
    /// Datapath counters summed over the queues.
    pub datapath: CounterSnapshot,
    pub queues: Vec<(QueueKind, CounterSnapshot)>,
    /// The XDP program's verdicts (XDP mode).
    pub steering: Option<SteerStats>,
}

/// A QUIC server endpoint. Cheap to clone; the last clone dropped closes
/// every connection (code 0), and the XDP program detaches once they have
/// drained. [`Endpoint::shutdown`] does the same and waits for it.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<EndpointInner>,
}

struct EndpointInner {
    shared: Arc<EngineShared>,
    local: SocketAddr,
    mode: ActiveMode,
    dev_ca: Option<CertificateDer<'static>>,
    queues: Vec<(QueueKind, Arc<QueueCounters>)>,
    /// Taken and dropped by the engine thread when it stops: that closes
    /// the sockets and detaches the XDP program.
    datapath: Arc<Mutex<Option<Datapath>>>,
    engine: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for EndpointInner {
    fn drop(&mut self) {
        self.shared.command(Command::Close {
            code: VarInt::from_u32(0),
            reason: Bytes::new(),
        });
    }
}

impl Endpoint {
    pub fn builder(listen: SocketAddr) -> EndpointBuilder {
        EndpointBuilder::new(listen)
    }

    pub(crate) fn start(
        proto: quinn_proto::Endpoint,
        datapath: Datapath,
        queues: Vec<Box<dyn PacketIo>>,
        admission: Admission,
        dev_ca: Option<CertificateDer<'static>>,
    ) -> Result<Self, Error> {
        let shared = Arc::new(EngineShared {
            waker: EngineWaker::new()?,
            commands: Mutex::new(Vec::new()),
            dirty: Mutex::new(Vec::new()),
            incoming: Mutex::new(VecDeque::new()),
            incoming_ready: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            idle: tokio::sync::Notify::new(),
            open_connections: AtomicUsize::new(0),
            stats: Mutex::new(EndpointCounters::default()),
        });
        let counters = queues
            .iter()
            .map(|q| (q.kind().clone(), q.counters().clone()))
            .collect();
        let local = datapath.local_addr();
        let mode = datapath.mode().clone();
        let datapath = Arc::new(Mutex::new(Some(datapath)));
        let engine = Engine::new(proto, queues, shared.clone(), admission);
        let held = datapath.clone();
        let thread = std::thread::Builder::new()
            .name("quic-xdp-engine".into())
            .spawn(move || {
                engine.run();
                drop(held.lock().unwrap().take());
            })?;
        tracing::info!(%mode, %local, "endpoint bound");
        Ok(Self {
            inner: Arc::new(EndpointInner {
                shared,
                local,
                mode,
                dev_ca,
                queues: counters,
                datapath,
                engine: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The next connection attempt; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Incoming> {
        let shared = &self.inner.shared;
        loop {
            let notified = shared.incoming_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(incoming) = shared.incoming.lock().unwrap().pop_front() {
                return Some(incoming);
            }
            if shared.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// The datapath actually in use (XDP details, or why it fell back).
    pub fn mode(&self) -> &ActiveMode {
        &self.inner.mode
    }

    /// The CA that signed the generated development certificate, when no
    /// certificate was configured: what clients must trust.
    pub fn dev_ca_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.inner.dev_ca.as_ref()
    }

    /// Closes every connection with `code` and stops accepting.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        self.inner.shared.command(Command::Close {
            code,
            reason: Bytes::copy_from_slice(reason),
        });
    }

    /// Resolves when no connection is open.
    pub async fn wait_idle(&self) {
        let shared = &self.inner.shared;
        loop {
            let notified = shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.open_connections.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Graceful shutdown: closes the connections (code 0), lets them
    /// drain, stops the engine, closes the sockets and detaches the XDP
    /// program.
    pub async fn shutdown(&self) {
        self.close(VarInt::from_u32(0), b"");
        self.wait_idle().await;
        let thread = self.inner.engine.lock().unwrap().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    pub fn stats(&self) -> EndpointStats {
        let queues: Vec<(QueueKind, CounterSnapshot)> = self
            .inner
            .queues
            .iter()
            .map(|(k, c)| (k.clone(), c.snapshot()))
            .collect();
        let mut datapath = CounterSnapshot::default();
        for (_, c) in &queues {
            datapath += *c;
        }
        EndpointStats {
            open_connections: self.inner.shared.open_connections.load(Ordering::Relaxed),
            admission: *self.inner.shared.stats.lock().unwrap(),
            datapath,
            queues,
            steering: self
                .inner
                .datapath
                .lock()
                .unwrap()
                .as_ref()
                .and_then(Datapath::steering_stats),
        }
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local", &self.inner.local)
            .field("mode", &self.inner.mode)
            .finish_non_exhaustive()
    }
}
