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
//! How it is built, and why: dedup is exact only if every decision about one key sees that key's
//! queued / dirty / in-process / waiting state at once, but nothing requires seeing other keys'.
//! So per-key state lives in 64 cache-padded shards chosen by the key's hash (computed once per
//! operation), the FIFO is a lock-free segmented queue, and delayed adds sit in a heap behind their
//! own lock. A producer and a consumer then touch the same lock only when they touch the same shard
//! at the same moment. Getters park on a `tokio::sync::Notify`; an add wakes one only when a
//! getter is parked.

mod shard;

use crate::clock::{Clock, TokioClock};
use crate::metrics::{Histogram, QueueMetrics};
use crate::rate_limit::{self, RateLimiter};
use crossbeam_queue::SegQueue;
use crossbeam_utils::CachePadded;
use foldhash::fast::RandomState;
use parking_lot::{Mutex, MutexGuard};
use shard::{Added, Shard};
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::pin::pin;
use std::sync::atomic::{fence, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
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

/// Shards of per-key state; a power of two.
const SHARDS: usize = 64;
/// `next_deadline` when no delayed add is pending.
const NO_DEADLINE: u64 = u64::MAX;

const RUNNING: u8 = 0;
/// Adds are refused; getters still receive queued keys.
const DRAINING: u8 = 1;
/// Adds are refused; getters receive nothing.
const SHUT_DOWN: u8 = 2;

/// A delayed add in the heap; stale when the key's pending entry has another `seq`.
struct Delayed<K> {
    at: Instant,
    seq: u64,
    hash: u64,
    key: K,
}

impl<K> PartialEq for Delayed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl<K> Eq for Delayed<K> {}
impl<K> PartialOrd for Delayed<K> {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Delayed<K> {
    // Reversed: `BinaryHeap` is a max-heap and the earliest deadline must come out first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Shared<K> {
    name: String,
    hasher: RandomState,
    shards: Box<[CachePadded<Mutex<Shard<K>>>]>,
    fifo: SegQueue<(u64, K)>,
    delays: Mutex<BinaryHeap<Delayed<K>>>,
    /// Earliest pending deadline in nanoseconds after `epoch`, or `NO_DEADLINE`: lets every
    /// operation skip the heap (and the clock) while no delayed add is pending.
    next_deadline: AtomicU64,
    epoch: Instant,
    /// Numbers delayed adds, so equal deadlines are queued in add order.
    next_seq: AtomicU64,
    state: AtomicU8,
    /// Keys handed out and not yet done, plus getters between taking a key and marking it.
    processing: AtomicUsize,
    /// Getters parked on `available`.
    getters: AtomicUsize,
    dropped_adds_total: AtomicU64,
    exhausted_total: AtomicU64,
    metrics_on: bool,
    limiter: Arc<dyn RateLimiter<K>>,
    clock: Arc<dyn Clock>,
    /// Parked getters wait here.
    available: Notify,
    /// Drains wait here for the last key in process.
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
        let epoch = config.clock.now();
        Self {
            shared: Arc::new(Shared {
                name: config.name,
                hasher: RandomState::default(),
                shards: (0..SHARDS)
                    .map(|_| CachePadded::new(Mutex::new(Shard::default())))
                    .collect(),
                fifo: SegQueue::new(),
                delays: Mutex::new(BinaryHeap::new()),
                next_deadline: AtomicU64::new(NO_DEADLINE),
                epoch,
                next_seq: AtomicU64::new(0),
                state: AtomicU8::new(RUNNING),
                processing: AtomicUsize::new(0),
                getters: AtomicUsize::new(0),
                dropped_adds_total: AtomicU64::new(0),
                exhausted_total: AtomicU64::new(0),
                metrics_on: config.metrics,
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

    fn hash(&self, key: &K) -> u64 {
        self.shared.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard<K>> {
        // Bits 32.. pick the shard; the table inside uses the low bits and the top seven.
        self.shared.shards[(hash >> 32) as usize & (SHARDS - 1)].lock()
    }

    fn metrics_now(&self) -> Option<Instant> {
        self.shared.metrics_on.then(|| self.shared.clock.now())
    }

    fn refuses_adds(&self) -> bool {
        self.shared.state.load(Ordering::SeqCst) != RUNNING
    }

    fn refuse(&self) {
        self.shared
            .dropped_adds_total
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Pushes a key onto the FIFO and wakes a parked getter, if any.
    fn push(&self, hash: u64, key: K) {
        self.shared.fifo.push((hash, key));
        self.wake_one_if_parked();
    }

    fn wake_one_if_parked(&self) {
        // Either the parked getter sees the key, or we see the getter. The getter side is
        // `getters += 1; fence(SeqCst); pop`. Ours is the FIFO push, whose tail update is a
        // `SeqCst` read-modify-write (crossbeam-queue's `SegQueue::push`), then this `SeqCst`
        // load; a fence here as well would cost a full barrier on every add for nothing.
        if self.shared.getters.load(Ordering::SeqCst) > 0 {
            self.shared.available.notify_one();
        }
    }

    /// Queues `key` unless it is queued already; marks it dirty if it is being processed.
    /// Ignored (and counted in `dropped_adds_total`) after shutdown.
    pub fn add(&self, key: K) {
        self.promote();
        if self.refuses_adds() {
            return self.refuse();
        }
        let hash = self.hash(&key);
        let added = self.shard(hash).add(hash, &key, self.metrics_now());
        if added == Added::Queued {
            self.push(hash, key);
        }
    }

    /// Queues `key` after `delay` (clamped to [`MAX_DELAY`]); a zero delay is a plain add. If the
    /// key already waits with an earlier deadline, that one stands; a later one moves earlier.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        self.promote();
        if self.refuses_adds() {
            return self.refuse();
        }
        let hash = self.hash(&key);
        let at = deadline(self.shared.clock.now(), delay);
        let seq = self.shard(hash).schedule(&key, at, &self.shared.next_seq);
        if let Some(seq) = seq {
            self.push_delayed(Delayed { at, seq, hash, key });
        }
    }

    fn push_delayed(&self, d: Delayed<K>) {
        let s = &*self.shared;
        let offset = d.at.saturating_duration_since(s.epoch).as_nanos();
        let offset = u64::try_from(offset).unwrap_or(NO_DEADLINE - 1);
        let earliest = {
            let mut heap = s.delays.lock();
            heap.push(d);
            s.next_deadline.fetch_min(offset, Ordering::SeqCst) > offset
        };
        if earliest {
            // A parked getter re-arms its timer for the new, earlier deadline. No FIFO push
            // precedes this, so order the heap update before the check explicitly.
            fence(Ordering::SeqCst);
            self.wake_one_if_parked();
        }
    }

    /// Queues `key` after the rate limiter's delay and counts a requeue.
    ///
    /// An add that would coalesce — the key is already queued, or already waits out a delay — is
    /// a no-op: it takes no token from the limiter and counts no failure. So spurious re-adds of a
    /// failing key never make its backoff grow faster than once per failed attempt.
    pub fn add_rate_limited(&self, key: K) {
        self.promote();
        if self.refuses_adds() {
            return self.refuse();
        }
        let s = &*self.shared;
        let hash = self.hash(&key);
        let mut shard = self.shard(hash);
        if shard.rate_limited_add_coalesces(hash, &key) {
            return;
        }
        shard.count_requeue(&key);
        let delay = s.limiter.when(&key);
        if delay.is_zero() {
            let added = shard.add(hash, &key, self.metrics_now());
            drop(shard);
            if added == Added::Queued {
                self.push(hash, key);
            }
            return;
        }
        let at = deadline(s.clock.now(), delay);
        let seq = shard.schedule(&key, at, &self.shared.next_seq);
        drop(shard);
        if let Some(seq) = seq {
            self.push_delayed(Delayed { at, seq, hash, key });
        }
    }

    /// Clears `key`'s failure history, in the queue and in the rate limiter.
    pub fn forget(&self, key: &K) {
        self.shard(self.hash(key)).forget(key);
        self.shared.limiter.forget(key);
    }

    /// Rate-limited adds of `key` counted since it was last forgotten.
    pub fn num_requeues(&self, key: &K) -> u32 {
        self.shard(self.hash(key)).num_requeues(key)
    }

    /// Keys queued and ready to be handed out (client-go's `Len`). Keys waiting out a delay are
    /// not counted here but in [`waiting_len`](Self::waiting_len); keys being processed in
    /// [`processing_len`](Self::processing_len).
    pub fn len(&self) -> usize {
        self.promote();
        self.shared.fifo.len()
    }

    /// Whether no key is queued and ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys waiting out a delay or backoff before they are queued.
    pub fn waiting_len(&self) -> usize {
        self.promote();
        self.shared
            .shards
            .iter()
            .map(|s| s.lock().waiting_len())
            .sum()
    }

    /// Keys handed out and not yet done.
    pub fn processing_len(&self) -> usize {
        self.shared.processing.load(Ordering::SeqCst)
    }

    /// Whether [`shutdown`](Self::shutdown) (or a drain) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.refuses_adds()
    }

    /// Queues every delayed key whose deadline has passed, in deadline order. Called first by
    /// every operation, so the FIFO order follows deadlines however rarely the queue is touched;
    /// one atomic load while no delayed add is pending. After shutdown or during a drain, waiting
    /// keys stay waiting.
    fn promote(&self) {
        let s = &*self.shared;
        let next = s.next_deadline.load(Ordering::Acquire);
        if next == NO_DEADLINE || s.state.load(Ordering::Relaxed) != RUNNING {
            return;
        }
        let now = s.clock.now();
        if now.saturating_duration_since(s.epoch).as_nanos() < u128::from(next) {
            return;
        }
        let due: Vec<Delayed<K>> = {
            let mut heap = s.delays.lock();
            let mut due = Vec::new();
            while heap.peek().is_some_and(|top| top.at <= now) {
                due.extend(heap.pop());
            }
            let next = heap.peek().map_or(NO_DEADLINE, |top| {
                let offset = top.at.saturating_duration_since(s.epoch).as_nanos();
                u64::try_from(offset).unwrap_or(NO_DEADLINE - 1)
            });
            s.next_deadline.store(next, Ordering::Release);
            due
        };
        let metrics_now = s.metrics_on.then_some(now);
        for d in due {
            let mut shard = self.shard(d.hash);
            if shard.take_due(&d.key, d.seq)
                && shard.add(d.hash, &d.key, metrics_now) == Added::Queued
            {
                drop(shard);
                self.push(d.hash, d.key);
            }
        }
    }

    /// Takes the first queued key and marks it in process; with its requeue count.
    fn take(&self) -> Option<(K, u32)> {
        let s = &*self.shared;
        self.promote();
        if s.state.load(Ordering::SeqCst) == SHUT_DOWN {
            return None;
        }
        // Counted before the pop, so a drain never sees an empty FIFO and nothing in process
        // while a key is between the two.
        s.processing.fetch_add(1, Ordering::SeqCst);
        let Some((hash, key)) = s.fifo.pop() else {
            self.finish_one();
            return None;
        };
        let requeues = self.shard(hash).start(hash, &key, self.metrics_now());
        Some((key, requeues))
    }

    /// Hands out the first queued key without waiting; `None` when none is ready or after
    /// shutdown. The caller must call [`done`](Self::done) with it.
    pub fn try_get(&self) -> Option<K> {
        self.take().map(|(key, _)| key)
    }

    /// Waits for a key and hands it out; `None` once the queue is shut down. The caller must call
    /// [`done`](Self::done) with it. Cancel-safe: a dropped `get` takes no key.
    pub async fn get(&self) -> Option<K> {
        self.get_counted().await.map(|(key, _)| key)
    }

    /// As [`get`](Self::get), with the key's requeue count read under the same lock.
    pub(crate) async fn get_counted(&self) -> Option<(K, u32)> {
        let s = &*self.shared;
        loop {
            if let Some(taken) = self.take() {
                return Some(taken);
            }
            if self.finished() {
                return None;
            }
            let mut notified = pin!(s.available.notified());
            notified.as_mut().enable();
            let parked = Parked::new(&s.getters);
            // Pairs with the fence in `wake_one_if_parked`.
            fence(Ordering::SeqCst);
            if let Some(taken) = self.take() {
                drop(parked);
                // We may have absorbed a wake-up meant for another getter: pass it on.
                if !s.fifo.is_empty() {
                    self.wake_one_if_parked();
                }
                return Some(taken);
            }
            if self.finished() {
                return None;
            }
            let sleep_for = if s.state.load(Ordering::SeqCst) == RUNNING {
                let next = s.next_deadline.load(Ordering::Acquire);
                (next != NO_DEADLINE).then(|| {
                    let at = s.epoch + Duration::from_nanos(next);
                    at.saturating_duration_since(s.clock.now())
                })
            } else {
                None
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
            drop(parked);
        }
    }

    /// Whether getters are done for good: shut down, or draining with nothing left.
    fn finished(&self) -> bool {
        let s = &*self.shared;
        match s.state.load(Ordering::SeqCst) {
            SHUT_DOWN => true,
            DRAINING if s.fifo.is_empty() && s.processing.load(Ordering::SeqCst) == 0 => {
                self.finish_drain();
                true
            }
            _ => false,
        }
    }

    /// Marks `key` done. If it was added while it was being processed, it is queued again.
    pub fn done(&self, key: &K) {
        self.promote();
        let hash = self.hash(key);
        let requeued = self.shard(hash).done(hash, key, self.metrics_now());
        self.after_done(hash, key, requeued);
    }

    fn after_done(&self, hash: u64, key: &K, requeued: Option<bool>) {
        match requeued {
            None => {}
            Some(true) => {
                self.push(hash, key.clone());
                self.finish_one();
            }
            Some(false) => self.finish_one(),
        }
    }

    /// One key less in process; the last one out completes a shutdown or drain.
    fn finish_one(&self) {
        let s = &*self.shared;
        if s.processing.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        match s.state.load(Ordering::SeqCst) {
            SHUT_DOWN => s.drained.notify_waiters(),
            DRAINING if s.fifo.is_empty() => self.finish_drain(),
            _ => {}
        }
    }

    fn finish_drain(&self) {
        let s = &*self.shared;
        let _ = s
            .state
            .compare_exchange(DRAINING, SHUT_DOWN, Ordering::SeqCst, Ordering::SeqCst);
        s.available.notify_waiters();
        s.drained.notify_waiters();
    }

    /// Stops handing out work: getters return `None` at once, later adds are ignored and counted.
    /// Keys still queued or waiting stay unprocessed (see [`len`](Self::len) and
    /// [`waiting_len`](Self::waiting_len)). Idempotent.
    pub fn shutdown(&self) {
        self.shared.state.store(SHUT_DOWN, Ordering::SeqCst);
        self.shared.available.notify_waiters();
        if self.shared.processing.load(Ordering::SeqCst) == 0 {
            self.shared.drained.notify_waiters();
        }
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
        let _ = s
            .state
            .compare_exchange(RUNNING, DRAINING, Ordering::SeqCst, Ordering::SeqCst);
        if s.fifo.is_empty() && s.processing.load(Ordering::SeqCst) == 0 {
            self.finish_drain();
        }
        s.available.notify_waiters();
        self.wait_drained().await;
    }

    async fn wait_drained(&self) {
        let s = &*self.shared;
        loop {
            let mut notified = pin!(s.drained.notified());
            notified.as_mut().enable();
            if s.state.load(Ordering::SeqCst) == SHUT_DOWN
                && s.processing.load(Ordering::SeqCst) == 0
            {
                return;
            }
            notified.await;
        }
    }

    /// A snapshot of the queue's metrics.
    pub fn metrics(&self) -> QueueMetrics {
        self.promote();
        let s = &*self.shared;
        let now = s.clock.now();
        let mut m = QueueMetrics {
            name: s.name.clone(),
            depth: s.fifo.len() as u64,
            processing: s.processing.load(Ordering::SeqCst) as u64,
            dropped_adds_total: s.dropped_adds_total.load(Ordering::Relaxed),
            exhausted_total: s.exhausted_total.load(Ordering::Relaxed),
            ..QueueMetrics::default()
        };
        let (mut queue_duration, mut work_duration) = (Histogram::default(), Histogram::default());
        for shard in s.shards.iter() {
            let shard = shard.lock();
            m.waiting += shard.waiting_len() as u64;
            m.adds_total += shard.adds_total;
            m.retries_total += shard.retries_total;
            queue_duration.merge(&shard.queue_duration);
            work_duration.merge(&shard.work_duration);
            if s.metrics_on {
                let (sum, longest) = shard.in_process_seconds(now);
                m.unfinished_work_seconds += sum;
                m.longest_running_processor_seconds =
                    m.longest_running_processor_seconds.max(longest);
            }
        }
        m.queue_duration = queue_duration;
        m.work_duration = work_duration;
        m
    }

    /// Engine path for a failed attempt: counts the failure and re-queues `key` after the limiter's
    /// delay while it has had fewer than `max_retries` requeues, else forgets it. Then marks it done.
    /// Unlike [`add_rate_limited`](Self::add_rate_limited) this always counts: it is a failed
    /// attempt, not an add.
    pub(crate) fn fail(&self, key: &K, max_retries: u32) -> Failure {
        self.promote();
        let s = &*self.shared;
        let hash = self.hash(key);
        let mut delayed = None;
        let mut shard = self.shard(hash);
        let requeues = shard.num_requeues(key);
        let failure = if self.refuses_adds() {
            shard.forget(key);
            Failure::Dropped
        } else if requeues < max_retries {
            shard.count_requeue(key);
            let delay = s.limiter.when(key).min(MAX_DELAY);
            if delay.is_zero() {
                // Still in process: dirty, so `done` below queues it again.
                shard.mark_dirty(hash, key);
            } else {
                let at = deadline(s.clock.now(), delay);
                delayed = shard.schedule(key, at, &s.next_seq).map(|seq| Delayed {
                    at,
                    seq,
                    hash,
                    key: key.clone(),
                });
            }
            Failure::Requeued {
                attempt: requeues + 1,
                delay,
            }
        } else {
            shard.forget(key);
            s.exhausted_total.fetch_add(1, Ordering::Relaxed);
            Failure::Exhausted { requeues }
        };
        let requeued = shard.done(hash, key, self.metrics_now());
        drop(shard);
        if let Some(d) = delayed {
            self.push_delayed(d);
        }
        self.after_done(hash, key, requeued);
        if matches!(failure, Failure::Exhausted { .. } | Failure::Dropped) {
            s.limiter.forget(key);
        }
        failure
    }

    /// Engine path for a successful attempt: forgets `key`'s history and marks it done, under one
    /// shard lock.
    pub(crate) fn succeed(&self, key: &K) {
        self.promote();
        let hash = self.hash(key);
        let (had_history, requeued) = {
            let mut shard = self.shard(hash);
            let had_history = shard.forget(key);
            (had_history, shard.done(hash, key, self.metrics_now()))
        };
        self.after_done(hash, key, requeued);
        if had_history {
            self.shared.limiter.forget(key);
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

fn deadline(now: Instant, delay: Duration) -> Instant {
    let delay = delay.min(MAX_DELAY);
    now.checked_add(delay).unwrap_or(now)
}

/// Counts a parked getter for as long as it lives, so a dropped `get` unparks too.
struct Parked<'a> {
    getters: &'a AtomicUsize,
}

impl<'a> Parked<'a> {
    fn new(getters: &'a AtomicUsize) -> Self {
        getters.fetch_add(1, Ordering::SeqCst);
        Self { getters }
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.getters.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests;
