//! The server endpoint: accepts connections, reports statistics, shuts
//! down gracefully (draining connections, then detaching XDP).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
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
    Connection, EndpointBuilder, Error, Incoming,
    cid::CidScheme,
    core::{Admission, EngineCore, Handler, ServeHandler},
    engine::{Engine, Peers},
    shared::lock,
    shared::{Command, EndpointShared, EngineShared, wait_for},
};

/// Connection admission counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EndpointCounters {
    /// Connection attempts accepted.
    pub accepted: u64,
    /// Connection attempts refused, by the endpoint (connection limit,
    /// draining, closing) or by the application.
    pub refused: u64,
    /// Connection attempts asked to prove their address with a Retry.
    pub retried: u64,
    /// Datagrams received by one engine for a connection another owns.
    pub forwarded: u64,
    /// Such datagrams dropped because the owner's inbox was full.
    pub forward_dropped: u64,
    /// Datagrams starting with a v1 Initial (a connection attempt, or a
    /// handshake's later Initials) dropped unread because Initials had used
    /// up their share of the engine's time: a flood of them (the README,
    /// "What is steered").
    pub initials_shed: u64,
}

/// A snapshot of an endpoint's counters (see `Endpoint::stats`).
#[derive(Debug, Clone)]
pub struct EndpointStats {
    /// Connections open now.
    pub open_connections: usize,
    /// Connection attempts waiting for [`Endpoint::accept`].
    pub waiting_attempts: usize,
    /// Connection attempts handed to the application (waiting for
    /// `accept`, or taken and not yet accepted, refused, retried or
    /// ignored by their engine): with the handshakes in progress, what
    /// [`RetryPolicy::WhenBusy`](crate::RetryPolicy::WhenBusy) counts.
    pub undecided_attempts: usize,
    /// Connection admission counts.
    pub admission: EndpointCounters,
    /// Datapath counters summed over the queues.
    pub datapath: CounterSnapshot,
    /// Datapath counters per queue.
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
    shared: Arc<EndpointShared>,
    engines: Vec<Arc<EngineShared>>,
    local: SocketAddr,
    mode: ActiveMode,
    dev_ca: Option<CertificateDer<'static>>,
    queues: Vec<(QueueKind, Arc<QueueCounters>)>,
    handler: ServeHandler,
    /// Taken and dropped by the engine thread when it stops: that closes
    /// the sockets and detaches the XDP program.
    datapath: Arc<Mutex<Option<Datapath>>>,
}

impl EndpointInner {
    fn close(&self, code: VarInt, reason: Bytes) {
        close_all(&self.engines, code, reason);
    }
}

/// Tells every engine in `engines` to close its connections and stop.
fn close_all(engines: &[Arc<EngineShared>], code: VarInt, reason: Bytes) {
    for engine in engines {
        engine.command(Command::Close {
            code,
            reason: reason.clone(),
        });
    }
}

/// Engine `index` panicked (its connections already failed as its core
/// unwound): the endpoint fails closed rather than serve part of its
/// queues. Every other engine closes and drains; the last one out detaches
/// XDP; `accept` returns None, so the application can stop or start anew.
fn fail_closed(engines: &[Arc<EngineShared>], index: usize) {
    tracing::error!(engine = index, "engine panicked: closing the endpoint");
    engines[index].die();
    let endpoint = &engines[index].endpoint;
    endpoint.closed.store(true, Ordering::Release);
    // Its attempts still waiting for `accept` can never be decided (each
    // holds the engine, which holds the endpoint: a cycle otherwise).
    drop(endpoint.take_attempts_of(&engines[index]));
    endpoint.incoming_ready.notify_waiters();
    close_all(
        engines,
        VarInt::from_u32(0),
        Bytes::from_static(b"server error"),
    );
    if endpoint.open_connections.load(Ordering::Acquire) == 0 {
        endpoint.idle.notify_waiters();
    }
}

/// `n` engine threads ended (or never started). The last one out closes
/// the sockets and detaches the XDP program, and only then says the
/// endpoint stopped, so that the port can be bound again at once.
fn engine_stopped(shared: &EndpointShared, datapath: &Mutex<Option<Datapath>>, n: usize) {
    if shared.engines_running.fetch_sub(n, Ordering::AcqRel) == n {
        drop(lock(datapath).take());
        shared.stopped.store(true, Ordering::Release);
        shared.stopped_notify.notify_waiters();
    }
}

impl Drop for EndpointInner {
    fn drop(&mut self) {
        self.close(VarInt::from_u32(0), Bytes::new());
    }
}

impl Endpoint {
    /// A builder for an endpoint listening on `listen`.
    pub fn builder(listen: SocketAddr) -> EndpointBuilder {
        EndpointBuilder::new(listen)
    }

    /// Starts one engine thread per queue group, each with its own
    /// quinn-proto endpoint (`protos`, in the same order).
    pub(crate) fn start(
        protos: Vec<quinn_proto::Endpoint>,
        datapath: Datapath,
        groups: Vec<Vec<Box<dyn PacketIo>>>,
        cids: CidScheme,
        admission: Admission,
        dev_ca: Option<CertificateDer<'static>>,
    ) -> Result<Self, Error> {
        if groups.is_empty() {
            // Nothing would ever read the datapath, or say it stopped.
            return Err(Error::Engine(std::io::Error::other(
                "the datapath has no queue to serve",
            )));
        }
        let shared = Arc::new(EndpointShared::default());
        let engines: Vec<_> = (0..groups.len())
            .map(|_| Arc::new(EngineShared::new(shared.clone())))
            .collect();
        // Each queue once, even where several engines hold a handle on it.
        let mut counters: Vec<(QueueKind, Arc<QueueCounters>)> = Vec::new();
        for q in groups.iter().flatten() {
            if !counters.iter().any(|(_, c)| Arc::ptr_eq(c, q.counters())) {
                counters.push((q.kind().clone(), q.counters().clone()));
            }
        }
        let local = datapath.local_addr();
        let mode = datapath.mode().clone();
        let datapath = Arc::new(Mutex::new(Some(datapath)));
        let engine_count = groups.len();
        shared
            .engines_running
            .store(engine_count, Ordering::Release);
        let admission = Arc::new(admission);
        let handler = ServeHandler::default();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for (index, (proto, queues)) in protos.into_iter().zip(groups).enumerate() {
            let peers = Peers {
                index,
                engines: engines.clone(),
                cids: cids.clone(),
            };
            let core = EngineCore::new(
                proto,
                engines[index].clone(),
                admission.clone(),
                handler.clone(),
            );
            let engine = Engine::new(core, queues, peers);
            let own_datapath = datapath.clone();
            let started = started_tx.clone();
            let all = engines.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("quic-xdp-engine-{index}"))
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(|| engine.run(started));
                    if std::panic::catch_unwind(run).is_err() {
                        fail_closed(&all, index);
                    }
                    engine_stopped(&all[index].endpoint, &own_datapath, 1);
                });
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    // The engines already started stop; the ones that
                    // never will are counted out here.
                    close_all(&engines[..index], VarInt::from_u32(0), Bytes::new());
                    engine_stopped(&shared, &datapath, engine_count - index);
                    for thread in threads {
                        let _ = thread.join();
                    }
                    return Err(e.into());
                }
            }
        }
        // Each engine drops its sender once it has reported: if one ends
        // before that, the channel closes instead of waiting forever.
        drop(started_tx);
        let engines_started = (0..threads.len()).try_for_each(|_| {
            started_rx
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("an engine thread ended early")))
        });
        let inner = EndpointInner {
            shared,
            engines,
            local,
            mode: mode.clone(),
            dev_ca,
            queues: counters,
            handler,
            datapath,
        };
        if let Err(e) = engines_started {
            // The engines that did start stop; the last one out detaches
            // XDP.
            inner.close(VarInt::from_u32(0), Bytes::new());
            for thread in threads {
                let _ = thread.join();
            }
            return Err(Error::Engine(e));
        }
        // Detached: `shutdown` waits for `stopped`, not for a join, so it
        // may run on an engine thread too.
        drop(threads);
        tracing::info!(%mode, %local, engines = inner.engines.len(), "endpoint bound");
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The next connection attempt; `None` once the endpoint is closed or
    /// serves (`serve`: the handler gets every attempt).
    pub async fn accept(&self) -> Option<Incoming> {
        let shared = &self.inner.shared;
        wait_for(&shared.incoming_ready, || {
            if let Some(incoming) = lock(&shared.incoming).pop_front() {
                return Some(Some(incoming));
            }
            let over = shared.closed.load(Ordering::Acquire) || self.inner.handler.get().is_some();
            over.then_some(None)
        })
        .await
    }

    /// Runs `handler` for every new connection, on the engine thread that
    /// owns the connection, once its handshake completes: the fast way to
    /// serve. A received batch, the handler's reaction and its transmit
    /// then run on one thread, to completion, with no thread hand-off.
    /// Tasks the handler spawns (`tokio::spawn`, `tokio::task::spawn_local`)
    /// run on that thread too; the handler must not block it.
    ///
    /// The engines accept every attempt that admission lets through
    /// (connection limit, Retry policy), including those that arrived
    /// since `bind` and wait for [`accept`](Self::accept), which returns
    /// `None` from then on. Fails if a handler is already set.
    ///
    /// The endpoint keeps the handler: a handler that holds a clone of the
    /// `Endpoint` keeps it alive after every other clone is gone, so stop
    /// such an endpoint with [`close`](Self::close) or
    /// [`shutdown`](Self::shutdown), which may also be called from the
    /// handler's tasks.
    pub fn serve<F, Fut>(&self, handler: F) -> Result<(), Error>
    where
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let handler: Handler = Arc::new(move |conn| Box::pin(handler(conn)));
        self.inner
            .handler
            .set(handler)
            .map_err(|_| Error::AlreadyServing)?;
        // Attempts that arrived between bind and now are the handler's too:
        // nobody may ever call accept. Taken after the handler is set (see
        // `EngineCore::admit_new`), so none is left behind.
        let waiting = std::mem::take(&mut *lock(&self.inner.shared.incoming));
        for incoming in waiting {
            incoming.serve();
        }
        self.inner.shared.incoming_ready.notify_waiters();
        for engine in &self.inner.engines {
            engine.waker.wake();
        }
        Ok(())
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// How many engine threads run (one per AF_XDP queue).
    pub fn engines(&self) -> usize {
        self.inner.engines.len()
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

    /// Test-only: makes engine `index` panic, to test containment.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn panic_engine_for_test(&self, index: usize) {
        self.inner.engines[index].command(Command::Panic);
    }

    /// Test-only: every Initial costs every engine `extra` more time, so
    /// that a test's flood outweighs the engine on any machine.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn slow_initials_for_test(&self, extra: std::time::Duration) {
        for engine in &self.inner.engines {
            engine.command(Command::SlowInitials(extra));
        }
    }

    /// Starts a graceful drain: from now on every new connection attempt
    /// is refused (CONNECTION_REFUSED) while the open connections carry
    /// on, so the application can finish them (e.g. HTTP/3 GOAWAY) and
    /// then [`close`](Self::close) or [`shutdown`](Self::shutdown).
    pub fn stop_accepting(&self) {
        self.inner.shared.refusing.store(true, Ordering::Release);
    }

    /// Closes every connection with `code` and stops accepting.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        self.inner.close(code, Bytes::copy_from_slice(reason));
    }

    /// Resolves when no connection is open.
    pub async fn wait_idle(&self) {
        let shared = &self.inner.shared;
        wait_for(&shared.idle, || {
            (shared.open_connections.load(Ordering::Acquire) == 0).then_some(())
        })
        .await
    }

    /// Graceful shutdown: closes the connections (code 0), lets them
    /// drain, stops the engines, closes the sockets and detaches the XDP
    /// program; returns once all that is done (the port can be bound
    /// again), however many callers wait.
    pub async fn shutdown(&self) {
        self.close(VarInt::from_u32(0), b"");
        self.wait_idle().await;
        let shared = &self.inner.shared;
        wait_for(&shared.stopped_notify, || {
            shared.stopped.load(Ordering::Acquire).then_some(())
        })
        .await
    }

    /// Adds this endpoint's metrics to `registry` (Prometheus text format
    /// via `prometheus_client::encoding::text::encode`): every counter of
    /// [`stats`](Self::stats), read at each scrape, plus handshake and RTT
    /// histograms. The registry does not keep the endpoint alive. Scrape
    /// on the thread that called `bind` when the builder dropped
    /// privileges (`run_as`): the XDP verdicts need CAP_BPF.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let endpoint = Arc::downgrade(&self.inner);
        registry.register_collector(Box::new(crate::metrics::EndpointCollector {
            stats: move || endpoint.upgrade().map(|inner| Endpoint { inner }.stats()),
            histograms: self.inner.shared.histograms.clone(),
        }));
    }

    /// The endpoint's counters now: connections, admission, the
    /// datapath's queues and (XDP mode) the steering program's verdicts.
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
            waiting_attempts: lock(&self.inner.shared.incoming).len(),
            undecided_attempts: self.inner.shared.undecided.load(Ordering::Relaxed),
            admission: *lock(&self.inner.shared.stats),
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
