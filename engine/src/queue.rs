//! The work queue: client-go's rate-limited work-queue semantics, on tokio.
//!
//! - A key is queued at most once: adding a queued key is a no-op.
//! - Adding a key that a worker is processing marks it *dirty*; it is queued again when that worker
//!   calls [`Queue::done`]. So no key is ever handed to two workers at once, and no add is lost.
//! - [`Queue::add_after`] queues a key later; of several pending delays for one key the earliest
//!   wins. [`Queue::add_rate_limited`] queues it after the rate limiter's delay.
//! - A plain [`Queue::add`] of a key that waits out a delay queues it now; the pending delayed add
//!   stays and fires later (a no-op if the key is still queued then), as in client-go.
//!
//! Why one mutex and not a lock-free structure: every operation must see the queued, dirty,
//! processing and waiting sets together (that is what makes dedup exact), and each operation holds
//! the lock for a few hash-map steps only. Getters park on a `tokio::sync::Notify` and an add wakes
//! one only when a getter is parked, so the uncontended path is one lock and no atomics beyond it.

mod state;

use crate::clock::{Clock, TokioClock};
use crate::metrics::QueueMetrics;
use crate::rate_limit::{self, RateLimiter};
use parking_lot::Mutex;
use state::{Added, State};
use std::fmt;
use std::hash::Hash;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The longest delay a key can be given; longer delays are clamped to it, so no input delay can
/// overflow a deadline or a timer.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Default queue name, the `name` label of its metrics.
pub const DEFAULT_NAME: &str = "traceq";

/// How a [`Queue`] is built.
pub struct QueueConfig<K> {
    name: String,
    metrics: bool,
    rate_limiter: Arc<dyn RateLimiter<K>>,
    clock: Arc<dyn Clock>,
}

impl<K> fmt::Debug for QueueConfig<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueConfig")
            .field("name", &self.name)
            .field("metrics", &self.metrics)
            .field("rate_limiter", &self.rate_limiter)
            .finish()
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Default for QueueConfig<K> {
    fn default() -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            metrics: false,
            rate_limiter: Arc::new(rate_limit::default_controller()),
            clock: Arc::new(TokioClock),
        }
    }
}

impl<K> QueueConfig<K> {
    /// The queue's name, used as the `name` label of its metrics.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Whether to record time-based metrics (queue latency, work duration, unfinished work).
    /// Off by default, as client-go's no-op metrics provider: they read the clock on every add,
    /// get and done. Counters and depth are always kept.
    #[must_use]
    pub fn with_metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// The limiter behind [`Queue::add_rate_limited`]. Default: [`rate_limit::default_controller`].
    #[must_use]
    pub fn with_rate_limiter(mut self, limiter: impl RateLimiter<K> + 'static) -> Self {
        self.rate_limiter = Arc::new(limiter);
        self
    }

    /// The clock deadlines are measured with. Default: [`TokioClock`]. Async getters sleep on
    /// tokio's timer for the time the clock says is left, so a custom clock should run at real
    /// (or tokio's paused) speed.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

struct Shared<K> {
    name: String,
    state: Mutex<State<K>>,
    limiter: Arc<dyn RateLimiter<K>>,
    clock: Arc<dyn Clock>,
    /// Parked getters wait here.
    available: Notify,
    /// Drain waits here for the last key in process.
    drained: Notify,
}

/// A rate-limited work queue with client-go semantics. Cloning gives another handle to the same
/// queue.
///
/// # Examples
/// ```
/// use traceq_engine::Queue;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let queue = Queue::<&str>::new();
/// queue.add("a");
/// queue.add("a"); // coalesced: "a" is queued once
/// assert_eq!(queue.len(), 1);
///
/// let key = queue.get().await.unwrap();
/// queue.add("a"); // "a" is being processed: marked dirty, not handed out again
/// assert_eq!(queue.try_get(), None);
/// queue.done(&key); // dirty: queued again
/// assert_eq!(queue.try_get(), Some("a"));
/// # });
/// ```
pub struct Queue<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Queue<K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K> fmt::Debug for Queue<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Default for Queue<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Queue<K> {
    /// A queue with the default configuration (client-go's default controller rate limiter).
    pub fn new() -> Self {
        Self::with_config(QueueConfig::default())
    }

    /// A queue built from `config`.
    pub fn with_config(config: QueueConfig<K>) -> Self {
        Self {
            shared: Arc::new(Shared {
                name: config.name,
                state: Mutex::new(State::new(config.metrics)),
                limiter: config.rate_limiter,
                clock: config.clock,
                available: Notify::new(),
                drained: Notify::new(),
            }),
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Queues `key` unless it is queued already; marks it dirty if it is being processed.
    /// Ignored (and counted in `dropped_adds_total`) after shutdown.
    pub fn add(&self, key: K) {
        let s = &*self.shared;
        let mut st = s.state.lock();
        self.promote(&mut st);
        let added = st.add(key, || s.clock.now());
        let wake = added == Added::Queued && st.getters > 0;
        drop(st);
        if wake {
            s.available.notify_one();
        }
    }

    /// Queues `key` after `delay` (clamped to [`MAX_DELAY`]); a zero delay is a plain add. If the
    /// key already waits with an earlier deadline, that one stands; a later one moves earlier.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let s = &*self.shared;
        let mut st = s.state.lock();
        self.promote(&mut st);
        let at = deadline(s.clock.now(), delay);
        let added = st.add_at(key, at);
        let wake = matches!(added, Added::Delayed { earliest: true }) && st.getters > 0;
        drop(st);
        if wake {
            // A parked getter re-arms its timer for the new, earlier deadline.
            s.available.notify_one();
        }
    }

    /// Queues `key` after the rate limiter's delay and counts a requeue.
    ///
    /// An add that would coalesce — the key is already queued, or already waits out a delay — is
    /// a no-op: it takes no token from the limiter and counts no failure. So spurious re-adds of a
    /// failing key never make its backoff grow faster than once per failed attempt.
    pub fn add_rate_limited(&self, key: K) {
        let s = &*self.shared;
        let mut st = s.state.lock();
        self.promote(&mut st);
        if st.refuses_adds() {
            st.add(key, || s.clock.now());
            return;
        }
        if st.rate_limited_add_coalesces(&key) {
            return;
        }
        st.count_requeue(&key);
        let delay = s.limiter.when(&key);
        drop(st);
        self.add_after(key, delay);
    }

    /// Clears `key`'s failure history, in the queue and in the rate limiter.
    pub fn forget(&self, key: &K) {
        self.shared.state.lock().forget(key);
        self.shared.limiter.forget(key);
    }

    /// Rate-limited adds of `key` counted since it was last forgotten.
    pub fn num_requeues(&self, key: &K) -> u32 {
        self.shared.state.lock().num_requeues(key)
    }

    /// Keys queued and ready to be handed out (client-go's `Len`). Keys waiting out a delay are
    /// not counted here but in [`waiting_len`](Self::waiting_len); keys being processed in
    /// [`processing_len`](Self::processing_len).
    pub fn len(&self) -> usize {
        let s = &*self.shared;
        let mut st = s.state.lock();
        self.promote(&mut st);
        st.len()
    }

    /// Whether no key is queued and ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys waiting out a delay or backoff before they are queued.
    pub fn waiting_len(&self) -> usize {
        let s = &*self.shared;
        let mut st = s.state.lock();
        self.promote(&mut st);
        st.waiting_len()
    }

    /// Keys handed out and not yet done.
    pub fn processing_len(&self) -> usize {
        self.shared.state.lock().processing()
    }

    /// Whether [`shutdown`](Self::shutdown) (or a drain) has begun.
    pub fn is_shutting_down(&self) -> bool {
        let st = self.shared.state.lock();
        st.shutting_down || st.draining_queued
    }

    /// Queues every delayed key whose deadline has passed. Called first by every operation, so
    /// the FIFO order reflects deadlines however rarely the queue is touched; costs one branch
    /// while no key waits. After shutdown or during a drain, waiting keys stay waiting.
    fn promote(&self, st: &mut State<K>) -> usize {
        if st.next_deadline().is_none() || st.draining_queued || st.shutting_down {
            return 0;
        }
        st.promote(self.shared.clock.now())
    }

    fn take(&self, st: &mut State<K>) -> Option<K> {
        self.promote(st);
        st.pop(|| self.shared.clock.now())
    }

    /// Hands out the first queued key without waiting; `None` when none is ready or after
    /// shutdown. The caller must call [`done`](Self::done) with it.
    pub fn try_get(&self) -> Option<K> {
        let mut st = self.shared.state.lock();
        self.take(&mut st)
    }

    /// Waits for a key and hands it out; `None` once the queue is shut down. The caller must call
    /// [`done`](Self::done) with it. Cancel-safe: a dropped `get` takes no key.
    pub async fn get(&self) -> Option<K> {
        self.get_counted().await.map(|(key, _)| key)
    }

    /// As [`get`](Self::get), with the key's requeue count read under the same lock.
    pub(crate) async fn get_counted(&self) -> Option<(K, u32)> {
        let s = &*self.shared;
        let mut parked = Parked {
            queue: self,
            parked: false,
        };
        loop {
            let mut notified = pin!(s.available.notified());
            let sleep_for = {
                let mut st = s.state.lock();
                if parked.parked {
                    st.getters -= 1;
                    parked.parked = false;
                }
                if let Some(key) = self.take(&mut st) {
                    let requeues = st.num_requeues(&key);
                    // Pass the baton: more keys are ready and another getter is parked.
                    let chain = st.len() > 0 && st.getters > 0;
                    drop(st);
                    if chain {
                        s.available.notify_one();
                    }
                    return Some((key, requeues));
                }
                if st.shutting_down {
                    return None;
                }
                st.getters += 1;
                parked.parked = true;
                notified.as_mut().enable();
                if st.draining_queued {
                    None
                } else {
                    let now = s.clock.now();
                    st.next_deadline()
                        .map(|at| at.saturating_duration_since(now))
                }
            };
            match sleep_for {
                Some(d) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep(d) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` done. If it was added while it was being processed, it is queued again.
    pub fn done(&self, key: &K) {
        let s = &*self.shared;
        let mut st = s.state.lock();
        self.promote(&mut st);
        let requeued = st.done(key, || s.clock.now());
        self.after_done(st, requeued);
    }

    fn after_done(&self, mut st: parking_lot::MutexGuard<'_, State<K>>, requeued: bool) {
        let s = &*self.shared;
        let wake_one = requeued && st.getters > 0;
        let mut wake_all = false;
        if st.processing() == 0 {
            if st.draining_queued && st.len() == 0 {
                st.shutting_down = true;
                wake_all = true;
            }
            if st.shutting_down {
                wake_all = true;
            }
        }
        drop(st);
        if wake_all {
            s.available.notify_waiters();
            s.drained.notify_waiters();
        } else if wake_one {
            s.available.notify_one();
        }
    }

    /// Stops handing out work: getters return `None` at once, later adds are ignored and counted.
    /// Keys still queued or waiting stay unprocessed (see [`len`](Self::len) and
    /// [`waiting_len`](Self::waiting_len)). Idempotent.
    pub fn shutdown(&self) {
        self.shared.state.lock().shutting_down = true;
        self.shared.available.notify_waiters();
    }

    /// [`shutdown`](Self::shutdown), then waits until every key being processed is done.
    /// Does not wait for keys still queued or waiting; see
    /// [`shutdown_with_drain_queued`](Self::shutdown_with_drain_queued) for that.
    pub async fn shutdown_with_drain(&self) {
        self.shutdown();
        self.wait_drained().await;
    }

    /// Refuses new adds (counted) but keeps handing out the keys already queued, including those
    /// that workers add back dirty, and returns once none is queued or being processed; then the
    /// queue is shut down. Keys waiting out a delay are not waited for and stay unprocessed.
    pub async fn shutdown_with_drain_queued(&self) {
        let s = &*self.shared;
        {
            let mut st = s.state.lock();
            st.draining_queued = true;
            if st.len() == 0 && st.processing() == 0 {
                st.shutting_down = true;
            }
        }
        s.available.notify_waiters();
        self.wait_drained().await;
    }

    async fn wait_drained(&self) {
        let s = &*self.shared;
        loop {
            let mut notified = pin!(s.drained.notified());
            notified.as_mut().enable();
            {
                let st = s.state.lock();
                if st.shutting_down && st.processing() == 0 {
                    return;
                }
            }
            notified.await;
        }
    }

    /// A snapshot of the queue's metrics.
    pub fn metrics(&self) -> QueueMetrics {
        let s = &*self.shared;
        let now = s.clock.now();
        let mut st = s.state.lock();
        self.promote(&mut st);
        st.metrics(&s.name, now)
    }

    /// Engine path for a failed attempt: counts the failure and re-queues `key` after the limiter's
    /// delay while it has had fewer than `max_retries` requeues, else forgets it. Then marks it done.
    /// Unlike [`add_rate_limited`](Self::add_rate_limited) this always counts: it is a failed
    /// attempt, not an add.
    pub(crate) fn fail(&self, key: &K, max_retries: u32) -> Failure {
        let s = &*self.shared;
        let mut st = s.state.lock();
        self.promote(&mut st);
        let requeues = st.num_requeues(key);
        let mut rearm = false;
        let failure = if st.refuses_adds() {
            st.forget(key);
            Failure::Dropped
        } else if requeues < max_retries {
            st.count_requeue(key);
            let delay = s.limiter.when(key).min(MAX_DELAY);
            if delay.is_zero() {
                // The key is still in process: this marks it dirty, so `done` below re-queues it.
                st.add(key.clone(), || s.clock.now());
            } else {
                let at = deadline(s.clock.now(), delay);
                rearm = st.add_at(key.clone(), at) == Added::Delayed { earliest: true };
            }
            Failure::Requeued {
                attempt: requeues + 1,
                delay,
            }
        } else {
            st.forget(key);
            st.exhausted_total += 1;
            Failure::Exhausted { requeues }
        };
        let requeued = st.done(key, || s.clock.now());
        let rearm = rearm && st.getters > 0;
        self.after_done(st, requeued);
        if rearm {
            // A new earliest deadline: a parked getter re-arms its timer for it.
            s.available.notify_one();
        }
        if matches!(failure, Failure::Exhausted { .. } | Failure::Dropped) {
            s.limiter.forget(key);
        }
        failure
    }

    /// Engine path for a successful attempt: forgets `key`'s history and marks it done, under one
    /// lock.
    pub(crate) fn succeed(&self, key: &K) {
        let s = &*self.shared;
        let mut st = s.state.lock();
        self.promote(&mut st);
        let had_history = st.num_requeues(key) > 0;
        st.forget(key);
        let requeued = st.done(key, || s.clock.now());
        self.after_done(st, requeued);
        if had_history {
            s.limiter.forget(key);
        }
    }
}

/// What the engine did with a failed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Re-queued as requeue number `attempt` after `delay`.
    Requeued { attempt: u32, delay: Duration },
    /// Forgotten after `requeues` requeues.
    Exhausted { requeues: u32 },
    /// The queue is shutting down: no retry was scheduled.
    Dropped,
}

fn deadline(now: std::time::Instant, delay: Duration) -> std::time::Instant {
    let delay = delay.min(MAX_DELAY);
    now.checked_add(delay).unwrap_or(now)
}

/// Decrements the parked-getter count if a `get` is dropped while parked.
struct Parked<'a, K: Eq + Hash + Clone + Send + Sync + 'static> {
    queue: &'a Queue<K>,
    parked: bool,
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Drop for Parked<'_, K> {
    fn drop(&mut self) {
        if self.parked {
            self.queue.shared.state.lock().getters -= 1;
        }
    }
}

#[cfg(test)]
mod tests;
