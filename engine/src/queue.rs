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
//! How it is built, and why: the queue's state (the FIFO, each key's slot, the delay heap) sits
//! behind one lock that only consumers take on the fast path. A plain [`Queue::add`] does not take
//! it: it pushes the key onto a lock-free inbox, and whoever next takes the lock (a getter, `done`,
//! `len`, ...) first applies every pending add in order: dedup, dirty marking, FIFO push. So every
//! operation observes all adds that returned before it started, exactly as if they had been
//! applied at once, while producers and consumers no longer write the same memory per key: the
//! per-key table stays in the consumers' cache. A producer that finds the inbox past
//! [`INBOX_BOUND`] applies it itself, so duplicates cannot pile up while no getter runs. Getters
//! park on a `tokio::sync::Notify`; an add wakes one only when a getter is parked.

mod keys;

use crate::clock::{Clock, TokioClock};
use crate::metrics::QueueMetrics;
use crate::rate_limit::{self, RateLimiter};
use crossbeam_queue::SegQueue;
use crossbeam_utils::CachePadded;
use foldhash::fast::RandomState;
use keys::{Added, Keys};
use parking_lot::{Mutex, MutexGuard};
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, VecDeque};
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

/// Pending plain adds past which a producer applies the inbox itself, bounding the memory that
/// duplicate adds can take while no getter runs.
pub const INBOX_BOUND: usize = 4096;
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

/// Everything behind the lock.
struct Core<K> {
    keys: Keys<K>,
    fifo: VecDeque<(u64, K)>,
    heap: BinaryHeap<Delayed<K>>,
    next_seq: u64,
    /// Keys handed out and not yet done.
    processing: usize,
}

struct Shared<K> {
    name: String,
    hasher: RandomState,
    /// Plain adds not yet applied, in order, with the time of the add when metrics are on.
    inbox: SegQueue<(u64, K, Option<Instant>)>,
    /// Length of the inbox, maintained by producers (up) and appliers (down, per batch).
    inbox_len: CachePadded<AtomicUsize>,
    core: CachePadded<Mutex<Core<K>>>,
    /// Earliest pending deadline in nanoseconds after `epoch`, or `NO_DEADLINE`: lets a producer
    /// skip the clock and the lock while no delayed add is pending.
    next_deadline: AtomicU64,
    epoch: Instant,
    state: AtomicU8,
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
    /// `wait_idle` waits here for nothing to be queued, waiting or in process.
    idle: Notify,
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

/// The locked core, with every pending add applied and every due delayed add promoted.
type Locked<'a, K> = MutexGuard<'a, Core<K>>;

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
                inbox: SegQueue::new(),
                inbox_len: CachePadded::new(AtomicUsize::new(0)),
                core: CachePadded::new(Mutex::new(Core {
                    keys: Keys::default(),
                    fifo: VecDeque::new(),
                    heap: BinaryHeap::new(),
                    next_seq: 0,
                    processing: 0,
                })),
                next_deadline: AtomicU64::new(NO_DEADLINE),
                epoch,
                state: AtomicU8::new(RUNNING),
                getters: AtomicUsize::new(0),
                dropped_adds_total: AtomicU64::new(0),
                exhausted_total: AtomicU64::new(0),
                metrics_on: config.metrics,
                limiter: config.rate_limiter,
                clock: config.clock,
                available: Notify::new(),
                drained: Notify::new(),
                idle: Notify::new(),
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

    /// Takes the lock, applies every pending add and promotes every due delayed add.
    fn lock(&self) -> Locked<'_, K> {
        let mut core = self.shared.core.lock();
        self.apply(&mut core);
        self.promote(&mut core);
        core
    }

    /// Applies the inbox: each pending add, in order, as a plain add.
    fn apply(&self, core: &mut Core<K>) {
        let s = &*self.shared;
        let mut applied = 0;
        while let Some((hash, key, added_at)) = s.inbox.pop() {
            applied += 1;
            if core.keys.add(hash, &key, added_at) == Added::Queued {
                core.fifo.push_back((hash, key));
            }
        }
        if applied > 0 {
            s.inbox_len.fetch_sub(applied, Ordering::Relaxed);
        }
    }

    /// Queues every delayed key whose deadline has passed, in deadline order. After shutdown or
    /// during a drain, waiting keys stay waiting.
    fn promote(&self, core: &mut Core<K>) {
        let s = &*self.shared;
        let Some(top) = core.heap.peek() else {
            return;
        };
        if s.state.load(Ordering::Relaxed) != RUNNING {
            return;
        }
        let now = s.clock.now();
        if top.at > now {
            return;
        }
        let metrics_now = s.metrics_on.then_some(now);
        while core.heap.peek().is_some_and(|top| top.at <= now) {
            let Some(d) = core.heap.pop() else { break };
            if core.keys.take_due(&d.key, d.seq)
                && core.keys.add(d.hash, &d.key, metrics_now) == Added::Queued
            {
                core.fifo.push_back((d.hash, d.key));
            }
        }
        self.store_next_deadline(core);
    }

    fn store_next_deadline(&self, core: &Core<K>) {
        let s = &*self.shared;
        let next = core.heap.peek().map_or(NO_DEADLINE, |top| {
            let offset = top.at.saturating_duration_since(s.epoch).as_nanos();
            u64::try_from(offset).unwrap_or(NO_DEADLINE - 1)
        });
        s.next_deadline.store(next, Ordering::Release);
    }

    /// Whether a delayed add is due: the one check a producer makes before its lock-free push, so
    /// that deadlines that passed are queued before its key, as they would have been on time.
    fn deadline_due(&self) -> bool {
        let s = &*self.shared;
        let next = s.next_deadline.load(Ordering::Acquire);
        next != NO_DEADLINE
            && s.clock.now().saturating_duration_since(s.epoch).as_nanos() >= u128::from(next)
    }

    fn wake_one_if_parked(&self) {
        // Either the parked getter sees the key, or we see the getter. The getter side is
        // `getters += 1; fence(SeqCst); look`. Ours follows a `SeqCst` read-modify-write (the
        // inbox push's tail update, or the lock's release and a fence), then this `SeqCst` load.
        if self.shared.getters.load(Ordering::SeqCst) > 0 {
            self.shared.available.notify_one();
        }
    }

    /// Queues `key` unless it is queued already; marks it dirty if it is being processed.
    /// Ignored (and counted in `dropped_adds_total`) after shutdown.
    pub fn add(&self, key: K) {
        let s = &*self.shared;
        if self.deadline_due() {
            drop(self.lock());
        }
        if self.refuses_adds() {
            return self.refuse();
        }
        let hash = self.hash(&key);
        s.inbox.push((hash, key, self.metrics_now()));
        if s.inbox_len.fetch_add(1, Ordering::Relaxed) >= INBOX_BOUND {
            drop(self.lock());
        }
        self.wake_one_if_parked();
    }

    /// Queues `key` after `delay` (clamped to [`MAX_DELAY`]); a zero delay is a plain add. If the
    /// key already waits with an earlier deadline, that one stands; a later one moves earlier.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let mut core = self.lock();
        if self.refuses_adds() {
            return self.refuse();
        }
        let hash = self.hash(&key);
        let at = deadline(self.shared.clock.now(), delay);
        self.schedule(&mut core, hash, key, at);
    }

    /// Records a delayed add under the lock; wakes a parked getter if it is the new earliest.
    fn schedule(&self, core: &mut Locked<'_, K>, hash: u64, key: K, at: Instant) {
        let seq = core.next_seq;
        if !core.keys.schedule(&key, at, seq) {
            return;
        }
        core.next_seq += 1;
        let earliest = core.heap.peek().is_none_or(|top| at < top.at);
        core.heap.push(Delayed { at, seq, hash, key });
        if earliest {
            self.store_next_deadline(core);
            fence(Ordering::SeqCst);
            // A parked getter re-arms its timer for the new, earlier deadline.
            self.wake_one_if_parked();
        }
    }

    /// Queues `key` after the rate limiter's delay and counts a requeue.
    ///
    /// An add that would coalesce — the key is already queued, or already waits out a delay — is
    /// a no-op: it takes no token from the limiter and counts no failure. So spurious re-adds of a
    /// failing key never make its backoff grow faster than once per failed attempt.
    pub fn add_rate_limited(&self, key: K) {
        let s = &*self.shared;
        let mut core = self.lock();
        if self.refuses_adds() {
            return self.refuse();
        }
        let hash = self.hash(&key);
        if core.keys.rate_limited_add_coalesces(hash, &key) {
            return;
        }
        core.keys.count_requeue(&key);
        let delay = s.limiter.when(&key);
        if delay.is_zero() {
            let now = self.metrics_now();
            if core.keys.add(hash, &key, now) == Added::Queued {
                core.fifo.push_back((hash, key));
                drop(core);
                fence(Ordering::SeqCst);
                self.wake_one_if_parked();
            }
            return;
        }
        let at = deadline(s.clock.now(), delay);
        self.schedule(&mut core, hash, key, at);
    }

    /// Clears `key`'s failure history, in the queue and in the rate limiter.
    pub fn forget(&self, key: &K) {
        self.shared.core.lock().keys.forget(key);
        self.shared.limiter.forget(key);
    }

    /// Rate-limited adds of `key` counted since it was last forgotten.
    pub fn num_requeues(&self, key: &K) -> u32 {
        self.shared.core.lock().keys.num_requeues(key)
    }

    /// Keys queued and ready to be handed out (client-go's `Len`). Keys waiting out a delay are
    /// not counted here but in [`waiting_len`](Self::waiting_len); keys being processed in
    /// [`processing_len`](Self::processing_len).
    pub fn len(&self) -> usize {
        self.lock().fifo.len()
    }

    /// Whether no key is queued and ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys waiting out a delay or backoff before they are queued.
    pub fn waiting_len(&self) -> usize {
        self.lock().keys.waiting_len()
    }

    /// Keys handed out and not yet done.
    pub fn processing_len(&self) -> usize {
        self.shared.core.lock().processing
    }

    /// Whether [`shutdown`](Self::shutdown) (or a drain) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.refuses_adds()
    }

    /// Takes the first queued key and marks it in process; with its requeue count. The second
    /// value says whether more keys are ready.
    fn take(&self) -> Option<((K, u32), bool)> {
        let s = &*self.shared;
        let mut core = self.lock();
        if s.state.load(Ordering::SeqCst) == SHUT_DOWN {
            return None;
        }
        let (hash, key) = core.fifo.pop_front()?;
        let requeues = core.keys.start(hash, &key, self.metrics_now());
        core.processing += 1;
        Some(((key, requeues), !core.fifo.is_empty()))
    }

    /// Hands out the first queued key without waiting; `None` when none is ready or after
    /// shutdown. The caller must call [`done`](Self::done) with it.
    pub fn try_get(&self) -> Option<K> {
        self.take().map(|((key, _), _)| key)
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
            if let Some((taken, more)) = self.take() {
                // More keys are ready (a batch promoted, say): wake another getter for them.
                if more {
                    self.wake_one_if_parked();
                }
                return Some(taken);
            }
            if self.finished() {
                return None;
            }
            let mut notified = pin!(s.available.notified());
            notified.as_mut().enable();
            let parked = Parked::new(&s.getters);
            // Pairs with `wake_one_if_parked`.
            fence(Ordering::SeqCst);
            if let Some((taken, more)) = self.take() {
                drop(parked);
                // We may have absorbed a wake-up meant for another getter: pass it on.
                if more {
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
            DRAINING => {
                let core = self.lock();
                if core.fifo.is_empty() && core.processing == 0 {
                    drop(core);
                    self.finish_drain();
                    true
                } else {
                    false
                }
            }
            _ => false,
        }
    }

    /// Marks `key` done. If it was added while it was being processed, it is queued again.
    pub fn done(&self, key: &K) {
        let hash = self.hash(key);
        let mut core = self.lock();
        let requeued = core.keys.done(hash, key, self.metrics_now());
        self.after_done(core, hash, key, requeued);
    }

    fn after_done(&self, mut core: Locked<'_, K>, hash: u64, key: &K, requeued: Option<bool>) {
        let s = &*self.shared;
        let Some(requeued) = requeued else { return };
        if requeued {
            core.fifo.push_back((hash, key.clone()));
        }
        core.processing -= 1;
        let idle = core.processing == 0;
        let empty = core.fifo.is_empty();
        let settled = idle && empty && core.keys.waiting_len() == 0;
        drop(core);
        if settled {
            s.idle.notify_waiters();
        }
        if requeued {
            fence(Ordering::SeqCst);
            self.wake_one_if_parked();
        }
        if idle {
            match s.state.load(Ordering::SeqCst) {
                SHUT_DOWN => s.drained.notify_waiters(),
                DRAINING if empty => self.finish_drain(),
                _ => {}
            }
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
        if self.processing_len() == 0 {
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
        // Apply (and promote) what was accepted before the drain began.
        drop(self.lock());
        let _ = s
            .state
            .compare_exchange(RUNNING, DRAINING, Ordering::SeqCst, Ordering::SeqCst);
        let idle = {
            let core = self.lock();
            core.fifo.is_empty() && core.processing == 0
        };
        if idle {
            self.finish_drain();
        }
        s.available.notify_waiters();
        self.wait_drained().await;
    }

    /// Waits until the queue is idle: no key queued, waiting out a delay, or in process (and no
    /// add pending). Returns at once if it is idle now. Later adds can make it busy again; this
    /// says only that it was idle at one moment, which is what a producer that has finished adding
    /// needs before [`shutdown_with_drain`](Self::shutdown_with_drain).
    pub async fn wait_idle(&self) {
        let s = &*self.shared;
        loop {
            let mut notified = pin!(s.idle.notified());
            notified.as_mut().enable();
            if self.is_idle() {
                return;
            }
            notified.await;
        }
    }

    fn is_idle(&self) -> bool {
        let core = self.lock();
        core.fifo.is_empty() && core.processing == 0 && core.keys.waiting_len() == 0
    }

    async fn wait_drained(&self) {
        let s = &*self.shared;
        loop {
            let mut notified = pin!(s.drained.notified());
            notified.as_mut().enable();
            if s.state.load(Ordering::SeqCst) == SHUT_DOWN && self.processing_len() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// A snapshot of the queue's metrics.
    pub fn metrics(&self) -> QueueMetrics {
        let s = &*self.shared;
        let core = self.lock();
        let now = s.clock.now();
        let (unfinished, longest) = if s.metrics_on {
            core.keys.in_process_seconds(now)
        } else {
            (0.0, 0.0)
        };
        QueueMetrics {
            name: s.name.clone(),
            depth: core.fifo.len() as u64,
            waiting: core.keys.waiting_len() as u64,
            processing: core.processing as u64,
            adds_total: core.keys.adds_total,
            retries_total: core.keys.retries_total,
            queue_duration: core.keys.queue_duration.clone(),
            work_duration: core.keys.work_duration.clone(),
            unfinished_work_seconds: unfinished,
            longest_running_processor_seconds: longest,
            dropped_adds_total: s.dropped_adds_total.load(Ordering::Relaxed),
            exhausted_total: s.exhausted_total.load(Ordering::Relaxed),
        }
    }

    /// Engine path for a failed attempt: counts the failure and re-queues `key` after the limiter's
    /// delay while it has had fewer than `max_retries` requeues, else forgets it. Then marks it done.
    /// Unlike [`add_rate_limited`](Self::add_rate_limited) this always counts: it is a failed
    /// attempt, not an add.
    pub(crate) fn fail(&self, key: &K, max_retries: u32) -> Failure {
        let s = &*self.shared;
        let hash = self.hash(key);
        let mut core = self.lock();
        let requeues = core.keys.num_requeues(key);
        let failure = if self.refuses_adds() {
            core.keys.forget(key);
            Failure::Dropped
        } else if requeues < max_retries {
            core.keys.count_requeue(key);
            let delay = s.limiter.when(key).min(MAX_DELAY);
            if delay.is_zero() {
                // Still in process: dirty, so `done` below queues it again.
                core.keys.mark_dirty(hash, key);
            } else {
                let at = deadline(s.clock.now(), delay);
                self.schedule(&mut core, hash, key.clone(), at);
            }
            Failure::Requeued {
                attempt: requeues + 1,
                delay,
            }
        } else {
            core.keys.forget(key);
            s.exhausted_total.fetch_add(1, Ordering::Relaxed);
            Failure::Exhausted { requeues }
        };
        let requeued = core.keys.done(hash, key, self.metrics_now());
        self.after_done(core, hash, key, requeued);
        if matches!(failure, Failure::Exhausted { .. } | Failure::Dropped) {
            s.limiter.forget(key);
        }
        failure
    }

    /// Engine path for a successful attempt: forgets `key`'s history and marks it done, under one
    /// lock.
    pub(crate) fn succeed(&self, key: &K) {
        let hash = self.hash(key);
        let mut core = self.lock();
        let had_history = core.keys.forget(key);
        let requeued = core.keys.done(hash, key, self.metrics_now());
        self.after_done(core, hash, key, requeued);
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
