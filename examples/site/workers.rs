//! The request workers of one HTTP/3 connection. A worker takes requests
//! one after another, so a request costs no task of its own: a task
//! spawned per request was about 6% of the engine thread in a profile
//! (allocating the task, moving its future), and more for quinn's
//! multi-threaded runtime. A worker is started whenever every live one has
//! a request already, so requests never wait behind each other; `trim`,
//! called now and then, ends the workers a connection no longer needs.
//! (A timer per idle worker would end them too, but costs its arming and
//! disarming on every request: 15% of the rate, measured.)

use std::{
    collections::VecDeque,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
};

use futures_util::FutureExt;
use tokio::sync::Notify;

/// Hands requests of type `T` to workers running `work`.
pub struct Workers<T, W> {
    shared: Arc<Shared<T, W>>,
}

struct Shared<T, W> {
    work: W,
    waiting: Mutex<VecDeque<T>>,
    /// Told when a request waits, or when the pool closes.
    arrived: Notify,
    /// Requests waiting or being handled.
    open: AtomicUsize,
    /// Told whenever `open` falls to zero.
    all_done: Notify,
    live_workers: AtomicUsize,
    /// The most requests open at once since the last `trim`.
    peak: AtomicUsize,
    /// Idle workers still to end, as `trim` decided.
    to_retire: AtomicUsize,
    closed: AtomicBool,
}

impl<T, W, F> Workers<T, W>
where
    T: Send + 'static,
    W: Fn(T) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    pub fn new(work: W) -> Self {
        Self {
            shared: Arc::new(Shared {
                work,
                waiting: Mutex::new(VecDeque::new()),
                arrived: Notify::new(),
                open: AtomicUsize::new(0),
                all_done: Notify::new(),
                live_workers: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                to_retire: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Queues a request; a worker takes it at once.
    pub fn push(&self, request: T) {
        let shared = &self.shared;
        let open = shared.open.fetch_add(1, SeqCst) + 1;
        shared.peak.fetch_max(open, SeqCst);
        shared.lock().push_back(request);
        if open > shared.live_workers.load(SeqCst) {
            Shared::start_worker(shared);
        } else {
            shared.arrived.notify_one();
        }
    }

    /// Ends the idle workers beyond the most requests open at once since
    /// the last call.
    pub fn trim(&self) {
        let shared = &self.shared;
        let keep = shared.peak.swap(shared.open.load(SeqCst), SeqCst);
        let excess = shared.live_workers.load(SeqCst).saturating_sub(keep);
        shared.to_retire.store(excess, SeqCst);
        if excess > 0 {
            shared.arrived.notify_waiters();
        }
    }

    /// Workers started and not ended.
    pub fn live(&self) -> usize {
        self.shared.live_workers.load(SeqCst)
    }

    /// Requests waiting or being handled.
    pub fn open(&self) -> usize {
        self.shared.open.load(SeqCst)
    }

    /// Waits until no request is open.
    pub async fn all_done(&self) {
        while self.open() > 0 {
            let done = self.shared.all_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            done.await;
        }
    }
}

impl<T, W> Drop for Workers<T, W> {
    /// Idle workers end now; busy ones after their request, and requests
    /// still waiting are dropped with the connection.
    fn drop(&mut self) {
        self.shared.closed.store(true, SeqCst);
        self.shared.arrived.notify_waiters();
    }
}

impl<T, W, F> Shared<T, W>
where
    T: Send + 'static,
    W: Fn(T) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    fn start_worker(this: &Arc<Self>) {
        this.live_workers.fetch_add(1, SeqCst);
        tokio::spawn(Self::worker(this.clone()));
    }

    async fn worker(this: Arc<Self>) {
        loop {
            let next = this.lock().pop_front();
            if let Some(request) = next {
                let _open = Open(&this);
                // A panicking request ends alone, as a task of its own
                // would: the worker goes on to the next.
                let _ = AssertUnwindSafe((this.work)(request)).catch_unwind().await;
                continue;
            }
            // Registered only while idle: a busy worker must not be the
            // one a push wakes.
            let arrived = this.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            // A push between the look above and the registration woke
            // nobody: look again.
            if !this.lock().is_empty() {
                continue;
            }
            if this.closed.load(SeqCst) {
                this.live_workers.fetch_sub(1, SeqCst);
                return;
            }
            if this.take_retirement() {
                if this.retire() {
                    return;
                }
                continue;
            }
            arrived.await;
        }
    }

    fn take_retirement(&self) -> bool {
        self.to_retire
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Ends an idle worker unless a request came in meanwhile (then it
    /// stays: its pusher may have counted on it).
    fn retire(&self) -> bool {
        // In this order, against `push`'s: either the pusher sees one
        // worker fewer and starts another, or this one sees the request.
        self.live_workers.fetch_sub(1, SeqCst);
        if self.lock().is_empty() {
            return true;
        }
        self.live_workers.fetch_add(1, SeqCst);
        false
    }
}

impl<T, W> Shared<T, W> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request being handled; closes it even if its handler panics.
struct Open<'a, T, W>(&'a Shared<T, W>);

impl<T, W> Drop for Open<'_, T, W> {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, SeqCst) == 1 {
            self.0.all_done.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use tokio::sync::oneshot;

    type Request = (Option<oneshot::Receiver<()>>, oneshot::Sender<()>);

    type Work = fn(Request) -> futures_util::future::BoxFuture<'static, ()>;

    /// Workers whose requests wait for their first channel (if any), then
    /// answer on the second.
    fn pool() -> Workers<Request, Work> {
        Workers::new(|(wait, done)| {
            Box::pin(async move {
                if let Some(wait) = wait {
                    let _ = wait.await;
                }
                let _ = done.send(());
            })
        })
    }

    fn request(wait: Option<oneshot::Receiver<()>>) -> (Request, oneshot::Receiver<()>) {
        let (done, answered) = oneshot::channel();
        ((wait, done), answered)
    }

    #[tokio::test]
    async fn a_request_does_not_wait_behind_a_blocked_one() {
        let workers = pool();
        let (release, blocked) = oneshot::channel();
        let (first, first_answered) = request(Some(blocked));
        let (second, second_answered) = request(None);
        workers.push(first);
        workers.push(second);
        tokio::time::timeout(Duration::from_secs(5), second_answered)
            .await
            .expect("the second request answered while the first waits")
            .unwrap();
        assert_eq!(workers.open(), 1);
        release.send(()).unwrap();
        first_answered.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), workers.all_done())
            .await
            .expect("all done");
        assert_eq!(workers.open(), 0);
    }

    #[tokio::test]
    async fn one_worker_serves_requests_one_after_another() {
        let workers = pool();
        for _ in 0..100 {
            let (r, answered) = request(None);
            workers.push(r);
            answered.await.unwrap();
        }
        assert_eq!(workers.shared.live_workers.load(SeqCst), 1);
    }

    /// Waits until `workers` has `n` live workers.
    async fn live_workers_become(workers: &Workers<Request, Work>, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while workers.live() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} live workers, not {n}",
                workers.live()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn trim_ends_the_idle_workers_beyond_the_recent_peak() {
        let workers = pool();
        // Three requests at once: three workers.
        let mut releases = Vec::new();
        let mut answers = Vec::new();
        for _ in 0..3 {
            let (release, blocked) = oneshot::channel();
            let (r, answered) = request(Some(blocked));
            workers.push(r);
            releases.push(release);
            answers.push(answered);
        }
        for (release, answered) in releases.into_iter().zip(answers) {
            release.send(()).unwrap();
            answered.await.unwrap();
        }
        assert_eq!(workers.live(), 3);
        // The peak since the last trim was three: all stay.
        workers.trim();
        tokio::task::yield_now().await;
        assert_eq!(workers.live(), 3);
        // Then one request at a time: one worker is kept.
        let (r, answered) = request(None);
        workers.push(r);
        answered.await.unwrap();
        workers.trim();
        live_workers_become(&workers, 1).await;
        // And none once nothing came.
        workers.trim();
        live_workers_become(&workers, 0).await;
        let (r, answered) = request(None);
        workers.push(r);
        tokio::time::timeout(Duration::from_secs(5), answered)
            .await
            .expect("answered by a new worker")
            .unwrap();
    }

    #[tokio::test]
    async fn a_panicking_request_ends_alone() {
        let workers = Workers::new(|panics: bool| async move {
            assert!(!panics, "this request panics");
        });
        workers.push(true);
        workers.push(false);
        tokio::time::timeout(Duration::from_secs(5), workers.all_done())
            .await
            .expect("both requests closed");
        workers.push(false);
        tokio::time::timeout(Duration::from_secs(5), workers.all_done())
            .await
            .expect("the worker goes on after a panic");
    }

    #[tokio::test]
    async fn dropping_the_pool_ends_idle_workers() {
        let workers = pool();
        let (r, answered) = request(None);
        workers.push(r);
        answered.await.unwrap();
        let shared = workers.shared.clone();
        drop(workers);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while shared.live_workers.load(SeqCst) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "idle workers ended at once"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
