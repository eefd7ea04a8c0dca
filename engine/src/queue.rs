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
//! How it is built, and why: the queue's state (each key's slot, the FIFO, the delay heap) sits
//! behind one lock, `core`. Every operation takes it once, so a single-threaded add → get → done
//! cycle costs three uncontended lock round trips and two hash-table probes (the add's and the
//! `done`'s); see `keys` for the slab that keeps those probes few and small.
//!
//! `core` is a spin lock (`spin::mutex::SpinMutex`): taking it is one atomic compare-and-swap,
//! releasing it a plain store, where a parking mutex pays a second read-modify-write to release (it
//! must learn whether anyone sleeps on it). That halves the atomic work of the cycle above
//! (`benches/queue.rs` has the figures). A thread that finds it taken spins a few rounds and then
//! yields its time slice between tries (`crossbeam_utils::Backoff`, as crossbeam's channels do for
//! their own locks); it never sleeps on it. That is sound here because nobody waits on `core` for
//! long: it is held for one operation on the key structures, never across user code other than the
//! rate limiter's `when` and the key's `Hash`/`Eq`/`Clone`, and never while waiting; getters wait
//! for keys on a `Notify`, not on the lock, and producers never wait on it at all (below). The
//! longest holds are applying a full inbox ([`INBOX_BOUND`] adds) and a metrics snapshot with time
//! metrics on (one pass over the slots).
//!
//! A plain [`Queue::add`] that finds the lock free applies the add at once. One that finds it
//! taken does not wait behind the holder's work: it pushes the key onto the inbox, a `Vec` behind
//! a lock held only for that push, and whoever next takes the core's lock (a getter, `done`,
//! `len`, a later add, ...) first applies every pending add in order: dedup, dirty marking, FIFO
//! push. So every operation observes all adds that returned before it started, exactly as if
//! they had been applied at once, and a fast producer never stalls behind its consumers: they take
//! its adds in batches, one swap of the inbox's buffer each. A producer that finds the inbox past
//! [`INBOX_BOUND`] applies it itself, so duplicates cannot pile up while no getter runs.
//!
//! Getters park on a `tokio::sync::Notify`. Whoever makes a key ready checks, under the lock it
//! made the key ready with, whether a getter is parked, and wakes one only then. A getter
//! registers as parked under both locks before its last look (`take_or_park`), so the two cannot
//! miss each other, and the fast path pays no fence for it.
//!
//! Priorities and fairness ([`Queue::add_with`], [`QueueConfig::with_fairness`]) change only the
//! order in which queued keys are handed out, never which keys are: dedup, dirty marking, delays,
//! rate limiting and drains are the same in every mode. Priority bands are strict (a key of a
//! higher priority is handed out before any of a lower one); fairness takes turns between groups
//! within a band. See `ranked` for how, and why the plain FIFO pays nothing for them until a key
//! with another priority arrives.

mod fairness;
mod keys;
mod options;
mod ranked;

pub use fairness::{Fairness, MAX_QUANTUM, MIN_QUANTUM, PANICKED_GROUP};
pub use options::{AddOptions, Claim};
pub use ranked::{DEFAULT_PRIORITY, LOW_PRIORITY, MAX_PRIORITY_LABELS};

use crate::clock::{Clock, TokioClock};
use crate::metrics::QueueMetrics;
use crate::rate_limit::{self, RateLimiter};
use crossbeam_utils::{Backoff, CachePadded};
pub(crate) use fairness::FairPlan;
use foldhash::fast::RandomState;
use keys::{Done, Keys};
use parking_lot::Mutex;
use spin::mutex::{SpinMutex, SpinMutexGuard};
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
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
    fairness: Option<FairPlan<K>>,
}

impl<K> fmt::Debug for QueueConfig<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueConfig")
            .field("name", &self.name)
            .field("metrics", &self.metrics)
            .field("rate_limiter", &self.rate_limiter)
            .field("fairness", &self.fairness)
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
            fairness: None,
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

    /// Makes the queue fair across groups of keys: ready keys are handed out round-robin across
    /// the groups that have keys ready, FIFO within a group, so that one group's burst cannot
    /// starve another's single key. Takes a function from a key to its group (`|key| group`), or
    /// a [`Fairness`] with weights, a cap on keys in process per group, or sharing by handler
    /// time. Priorities stay strict: groups take turns within the highest priority that has keys
    /// ready. Default: not fair (one FIFO per priority).
    #[must_use]
    pub fn with_fairness<G>(mut self, fairness: impl Into<Fairness<K, G>>) -> Self
    where
        K: 'static,
        G: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
    {
        self.fairness = Some(fairness.into().plan());
        self
    }

    /// The erased fairness plan, for the engine's builder to pass on.
    pub(crate) fn with_fair_plan(mut self, plan: Option<FairPlan<K>>) -> Self {
        self.fairness = plan;
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

/// An add with no delay not yet applied: the key's hash, the key, the time of the add when
/// metrics are on, and its priority.
type Pending<K> = (u64, K, Option<Instant>, i32);

/// Everything behind the lock.
struct Core<K> {
    /// Each key's slot and the FIFO.
    keys: Keys<K>,
    heap: BinaryHeap<Delayed<K>>,
    next_seq: u64,
    /// Keys handed out and not yet done.
    processing: usize,
    /// An empty buffer swapped with the inbox's, so applying the inbox allocates nothing.
    spare: Vec<Pending<K>>,
}

/// Plain adds that found the core's lock taken, in order. A producer holds `adds`'s lock only
/// to push one entry, so it never waits behind a consumer's work.
struct Inbox<K> {
    adds: Mutex<Vec<Pending<K>>>,
    /// `adds.len()`, stored under its lock: whoever holds the core's lock reads it to skip an
    /// empty inbox without touching the inbox's lock.
    len: AtomicUsize,
}

struct Shared<K> {
    name: String,
    hasher: RandomState,
    /// Plain adds not yet applied.
    inbox: CachePadded<Inbox<K>>,
    core: CachePadded<SpinMutex<Core<K>>>,
    /// Earliest pending deadline in nanoseconds after `epoch`, or `NO_DEADLINE`: lets a producer
    /// skip the clock and the lock while no delayed add is pending.
    next_deadline: AtomicU64,
    epoch: Instant,
    state: AtomicU8,
    /// Getters parked on `available`. Raised under both locks (see `take_or_park`) and read
    /// under one of them by whoever makes a key ready, so a wake-up is never missed.
    getters: AtomicUsize,
    dropped_adds_total: AtomicU64,
    exhausted_total: AtomicU64,
    metrics_on: bool,
    /// Whether the queue was built fair across groups.
    fair: bool,
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
type Locked<'a, K> = SpinMutexGuard<'a, Core<K>>;

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Queue<K> {
    /// A queue with the default configuration (client-go's default controller rate limiter).
    pub fn new() -> Self {
        Self::with_config(QueueConfig::default())
    }

    /// A queue built from `config`.
    pub fn with_config(config: QueueConfig<K>) -> Self {
        let epoch = config.clock.now();
        let hasher = RandomState::default();
        let fair = config.fairness.is_some();
        let keys = Keys::new(hasher.clone(), config.fairness);
        // Sharing handler time measures what the time metrics measure.
        let metrics_on = config.metrics || keys.times_handlers();
        Self {
            shared: Arc::new(Shared {
                name: config.name,
                hasher: hasher.clone(),
                inbox: CachePadded::new(Inbox {
                    adds: Mutex::new(Vec::new()),
                    len: AtomicUsize::new(0),
                }),
                core: CachePadded::new(SpinMutex::new(Core {
                    keys,
                    heap: BinaryHeap::new(),
                    next_seq: 0,
                    processing: 0,
                    spare: Vec::new(),
                })),
                next_deadline: AtomicU64::new(NO_DEADLINE),
                epoch,
                state: AtomicU8::new(RUNNING),
                getters: AtomicUsize::new(0),
                dropped_adds_total: AtomicU64::new(0),
                exhausted_total: AtomicU64::new(0),
                metrics_on,
                fair,
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
    #[inline]
    fn lock(&self) -> Locked<'_, K> {
        let mut core = self.lock_core();
        self.apply(&mut core);
        if !core.heap.is_empty() {
            self.promote(&mut core);
        }
        core
    }

    /// Takes the core's lock as it is, nothing applied.
    #[inline]
    fn lock_core(&self) -> Locked<'_, K> {
        match self.shared.core.try_lock() {
            Some(core) => core,
            None => self.lock_core_contended(),
        }
    }

    /// `lock_core` when the lock is taken: spins, then yields the thread's time slice, between
    /// tries, as crossbeam's own locks do.
    #[cold]
    #[inline(never)]
    fn lock_core_contended(&self) -> Locked<'_, K> {
        let backoff = Backoff::new();
        loop {
            backoff.snooze();
            if !self.shared.core.is_locked() {
                if let Some(core) = self.shared.core.try_lock() {
                    return core;
                }
            }
        }
    }

    /// Applies the inbox: each pending add, in order, as a plain add.
    #[inline]
    fn apply(&self, core: &mut Core<K>) {
        // An add that returned before this call stored its `len` first (see `add`).
        if self.shared.inbox.len.load(Ordering::Acquire) != 0 {
            self.apply_pending(core);
        }
    }

    /// `apply`'s work, out of line: the empty check is what every operation pays.
    #[inline(never)]
    fn apply_pending(&self, core: &mut Core<K>) {
        let inbox = &self.shared.inbox;
        let mut batch = std::mem::take(&mut core.spare);
        {
            let mut adds = inbox.adds.lock();
            std::mem::swap(&mut *adds, &mut batch);
            inbox.len.store(0, Ordering::Relaxed);
        }
        for (hash, key, added_at, prio) in batch.drain(..) {
            core.keys.add(hash, key, added_at, prio);
        }
        core.spare = batch;
    }

    /// Queues every delayed key whose deadline has passed, in deadline order. After shutdown or
    /// during a drain, waiting keys stay waiting.
    #[inline(never)]
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
            if let Some(prio) = core.keys.take_due(&d.key, d.seq) {
                core.keys.add(d.hash, d.key, metrics_now, prio);
            }
        }
        // The entries that fired were live: the stale ones left may now outnumber the rest.
        compact(core);
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

    /// Whether a getter is parked. Called while holding the core's or the inbox's lock after
    /// making a key ready: a getter registers under both locks (see `take_or_park`) before it
    /// looks a last time, so either it sees the key or we see it.
    fn any_parked(&self) -> bool {
        self.shared.getters.load(Ordering::Relaxed) > 0
    }

    fn wake_one(&self) {
        self.shared.available.notify_one();
    }

    /// Queues `key` unless it is queued already; marks it dirty if it is being processed.
    /// Ignored (and counted in `dropped_adds_total`) after shutdown. The same as
    /// [`add_with`](Self::add_with) with the default [`AddOptions`].
    pub fn add(&self, key: K) {
        self.add_now(key, DEFAULT_PRIORITY);
    }

    /// Adds `key` as `options` say: at its priority, now, after a delay, or after the rate
    /// limiter's delay. Higher priorities are handed out first, FIFO within a priority.
    ///
    /// A key already queued (or waiting out a delay, or in process and dirty) takes the higher of
    /// its priority and the add's, and the earlier ready time: a queued key raised to a higher
    /// priority joins the end of its new level. Every pending add of a key shares that priority;
    /// it is the key's until it is handed out. Otherwise an add with options does what
    /// [`add`](Self::add), [`add_after`](Self::add_after) and
    /// [`add_rate_limited`](Self::add_rate_limited) do; a rate-limited add that coalesces takes
    /// no token and counts no requeue, but still raises the key's priority.
    ///
    /// The first add of a priority other than [`DEFAULT_PRIORITY`] switches the queue from its
    /// plain FIFO to the order by priority, for good; a queue that never sees one pays nothing
    /// for priorities.
    pub fn add_with(&self, key: K, options: AddOptions) {
        let AddOptions {
            priority,
            delay,
            rate_limited,
        } = options;
        if rate_limited {
            self.add_rate_limited_at(key, delay, priority);
        } else if delay.is_zero() {
            self.add_now(key, priority);
        } else {
            self.add_after_at(key, delay, priority);
        }
    }

    /// An add with no delay, at `prio`.
    #[inline]
    fn add_now(&self, key: K, prio: i32) {
        let s = &*self.shared;
        if self.deadline_due() {
            drop(self.lock());
        }
        if self.refuses_adds() {
            return self.refuse();
        }
        let hash = self.hash(&key);
        let now = self.metrics_now();
        if let Some(mut core) = s.core.try_lock() {
            // Uncontended: apply it now, after the adds that found the lock taken.
            self.apply(&mut core);
            let wake = core.keys.add(hash, key, now, prio) && self.any_parked();
            drop(core);
            if wake {
                self.wake_one();
            }
            return;
        }
        let (wake, full) = {
            let mut adds = s.inbox.adds.lock();
            adds.push((hash, key, now, prio));
            s.inbox.len.store(adds.len(), Ordering::Release);
            (self.any_parked(), adds.len() > INBOX_BOUND)
        };
        if full {
            drop(self.lock());
        }
        if wake {
            self.wake_one();
        }
    }

    /// Queues `key` after `delay` (clamped to [`MAX_DELAY`]); a zero delay is a plain add. If the
    /// key already waits with an earlier deadline, that one stands; a later one moves earlier.
    pub fn add_after(&self, key: K, delay: Duration) {
        self.add_after_at(key, delay, DEFAULT_PRIORITY);
    }

    fn add_after_at(&self, key: K, delay: Duration, prio: i32) {
        if delay.is_zero() {
            return self.add_now(key, prio);
        }
        let mut core = self.lock();
        if self.refuses_adds() {
            return self.refuse();
        }
        let hash = self.hash(&key);
        let at = deadline(self.shared.clock.now(), delay);
        self.schedule(&mut core, hash, key, at, prio);
    }

    /// Records a delayed add under the lock; wakes a parked getter if it is the new earliest.
    fn schedule(&self, core: &mut Locked<'_, K>, hash: u64, key: K, at: Instant, prio: i32) {
        let seq = core.next_seq;
        if !core.keys.schedule(hash, &key, at, seq, prio) {
            return;
        }
        core.next_seq += 1;
        let earliest = core.heap.peek().is_none_or(|top| at < top.at);
        core.heap.push(Delayed { at, seq, hash, key });
        // A deadline moved earlier leaves the key's previous entry stale.
        let compacted = compact(core);
        if earliest || compacted {
            self.store_next_deadline(core);
        }
        if earliest && self.any_parked() {
            // A parked getter re-arms its timer for the new, earlier deadline.
            self.wake_one();
        }
    }

    /// Queues `key` after the rate limiter's delay and counts a requeue.
    ///
    /// An add that would coalesce — the key is already queued, or already waits out a delay — is
    /// a no-op: it takes no token from the limiter and counts no failure. So spurious re-adds of a
    /// failing key never make its backoff grow faster than once per failed attempt.
    pub fn add_rate_limited(&self, key: K) {
        self.add_rate_limited_at(key, Duration::ZERO, DEFAULT_PRIORITY);
    }

    /// A rate-limited add at `prio`; a non-zero `cap` is a delay not to exceed.
    fn add_rate_limited_at(&self, key: K, cap: Duration, prio: i32) {
        let s = &*self.shared;
        let mut core = self.lock();
        if self.refuses_adds() {
            return self.refuse();
        }
        let hash = self.hash(&key);
        if core.keys.rate_limited_add_coalesces(hash, &key) {
            core.keys.raise(hash, &key, prio);
            return;
        }
        core.keys.count_requeue(&key);
        let mut delay = s.limiter.when(&key);
        if !cap.is_zero() {
            delay = delay.min(cap);
        }
        if delay.is_zero() {
            let now = self.metrics_now();
            if core.keys.add(hash, key, now, prio) && self.any_parked() {
                drop(core);
                self.wake_one();
            }
            return;
        }
        let at = deadline(s.clock.now(), delay);
        self.schedule(&mut core, hash, key, at, prio);
    }

    /// Clears `key`'s failure history, in the queue and in the rate limiter.
    pub fn forget(&self, key: &K) {
        self.lock_core().keys.forget(key);
        self.shared.limiter.forget(key);
    }

    /// Rate-limited adds of `key` counted since it was last forgotten.
    pub fn num_requeues(&self, key: &K) -> u32 {
        self.lock_core().keys.num_requeues(key)
    }

    /// Keys queued and ready to be handed out (client-go's `Len`). Keys waiting out a delay are
    /// not counted here but in [`waiting_len`](Self::waiting_len); keys being processed in
    /// [`processing_len`](Self::processing_len).
    pub fn len(&self) -> usize {
        self.lock().keys.len()
    }

    /// Whether no key is queued and ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys waiting out a delay or backoff before they are queued.
    pub fn waiting_len(&self) -> usize {
        self.lock().keys.waiting_len()
    }

    /// Entries in the delay heap, stale ones included.
    #[cfg(test)]
    fn heap_len(&self) -> usize {
        self.lock().heap.len()
    }

    /// Keys handed out and not yet done.
    pub fn processing_len(&self) -> usize {
        self.lock_core().processing
    }

    /// Whether [`shutdown`](Self::shutdown) (or a drain) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.refuses_adds()
    }

    /// Pops the next queued key and marks it in process; with its requeue count. `None` when
    /// none is queued (or every queued key's group is at its cap), or after shutdown.
    fn start_next(&self, core: &mut Core<K>) -> Option<(K, u32)> {
        if self.shared.state.load(Ordering::SeqCst) == SHUT_DOWN {
            return None;
        }
        if core.keys.len() == 0 {
            return None;
        }
        let taken = core.keys.pop(self.metrics_now())?;
        core.processing += 1;
        Some(taken)
    }

    /// As `start_next`, with the key's priority and group: a [`Claim`] and the requeue count.
    fn start_claim(&self, core: &mut Core<K>) -> Option<(Claim<K>, u32)> {
        let (key, requeues) = self.start_next(core)?;
        let (priority, group) = core.keys.handed(true);
        let claim = Claim {
            key,
            priority,
            group,
        };
        Some((claim, requeues))
    }

    /// Whether more keys are ready and a getter is parked that should take them.
    fn more_for_parked(&self, core: &Core<K>) -> bool {
        core.keys.len() > 0 && self.any_parked()
    }

    /// Takes the next queued key with `start` (`start_next` or `start_claim`). The second value
    /// says whether to wake a parked getter for the keys left.
    #[inline]
    fn take<T>(&self, start: impl Fn(&Self, &mut Core<K>) -> Option<T>) -> Option<(T, bool)> {
        let mut core = self.lock();
        let taken = start(self, &mut core)?;
        Some((taken, self.more_for_parked(&core)))
    }

    /// As [`take`](Self::take), but registers as a parked getter first, under both locks, so
    /// that an add that lands after this look sees the registration (see `any_parked`). The
    /// registration is kept only when no key was taken.
    fn take_or_park<T>(
        &self,
        start: impl Fn(&Self, &mut Core<K>) -> Option<T>,
    ) -> Result<(T, bool), Parked<'_>> {
        let s = &*self.shared;
        let mut core = self.lock_core();
        let parked = {
            let _adds = s.inbox.adds.lock();
            Parked::new(&s.getters)
        };
        self.apply(&mut core);
        self.promote(&mut core);
        match start(self, &mut core) {
            Some(taken) => {
                drop(parked);
                Ok((taken, self.more_for_parked(&core)))
            }
            None => Err(parked),
        }
    }

    /// Hands out the next queued key without waiting; `None` when none is ready or after
    /// shutdown. The caller must call [`done`](Self::done) with it.
    pub fn try_get(&self) -> Option<K> {
        self.take(Self::start_next).map(|((key, _), _)| key)
    }

    /// Waits for a key and hands it out; `None` once the queue is shut down. The caller must call
    /// [`done`](Self::done) with it. Cancel-safe: a dropped `get` takes no key.
    pub async fn get(&self) -> Option<K> {
        self.wait_for(Self::start_next).await.map(|(key, _)| key)
    }

    /// As [`try_get`](Self::try_get), with the key's priority and group.
    pub fn try_claim(&self) -> Option<Claim<K>> {
        self.take(Self::start_claim).map(|((claim, _), _)| claim)
    }

    /// As [`get`](Self::get), with the key's priority (to requeue it at, as
    /// controller-runtime's `GetWithPriority`) and, for a fair queue, its group.
    pub async fn claim(&self) -> Option<Claim<K>> {
        self.claim_counted().await.map(|(claim, _)| claim)
    }

    /// As [`claim`](Self::claim), with the key's requeue count read under the same lock.
    pub(crate) async fn claim_counted(&self) -> Option<(Claim<K>, u32)> {
        self.wait_for(Self::start_claim).await
    }

    /// As [`claim_counted`](Self::claim_counted) without the group, for a queue that is not fair:
    /// the key, its requeue count and its priority. Smaller than a claim, so cheaper to pass up
    /// through the awaits of the engine's workers.
    pub(crate) async fn get_ranked(&self) -> Option<(K, u32, i32)> {
        self.wait_for(|q: &Self, core: &mut Core<K>| {
            let (key, requeues) = q.start_next(core)?;
            Some((key, requeues, core.keys.handed(false).0))
        })
        .await
    }

    /// Whether the queue is fair across groups (fixed at construction).
    pub(crate) fn is_fair(&self) -> bool {
        self.shared.fair
    }

    /// Waits until `start` takes a key (see `take`), or the queue is finished.
    async fn wait_for<T>(&self, start: impl Fn(&Self, &mut Core<K>) -> Option<T>) -> Option<T> {
        let s = &*self.shared;
        loop {
            if let Some((taken, wake)) = self.take(&start) {
                // More keys are ready (a batch promoted, say): wake another getter for them.
                if wake {
                    self.wake_one();
                }
                return Some(taken);
            }
            if self.finished() {
                return None;
            }
            let mut notified = pin!(s.available.notified());
            notified.as_mut().enable();
            let parked = match self.take_or_park(&start) {
                Ok((taken, wake)) => {
                    // We may have absorbed a wake-up meant for another getter: pass it on.
                    if wake {
                        self.wake_one();
                    }
                    return Some(taken);
                }
                Err(parked) => parked,
            };
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
                if core.keys.len() == 0 && core.processing == 0 {
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
        let settled = core.keys.done(hash, key, self.metrics_now());
        self.after_done(core, settled);
    }

    fn after_done(&self, mut core: Locked<'_, K>, settled: Option<Done>) {
        let s = &*self.shared;
        let Some(Done {
            requeued,
            unblocked,
        }) = settled
        else {
            return;
        };
        core.processing -= 1;
        let idle = core.processing == 0;
        let empty = core.keys.len() == 0;
        let settled = idle && empty && core.keys.waiting_len() == 0;
        // A requeued key, or the keys of a group that was at its cap, can be handed out.
        let wake = (requeued || unblocked) && self.any_parked();
        drop(core);
        if settled {
            s.idle.notify_waiters();
        }
        if wake {
            self.wake_one();
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
            core.keys.len() == 0 && core.processing == 0
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
        core.keys.len() == 0 && core.processing == 0 && core.keys.waiting_len() == 0
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
            depth: core.keys.len() as u64,
            depth_by_priority: core.keys.depth_by_priority(),
            groups: core.keys.groups_len() as u64,
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

    /// Engine path for a failed attempt: counts the failure and re-queues `key` at `prio` after
    /// the limiter's delay while it has had fewer than `max_retries` requeues, else forgets it.
    /// Then marks it done. Unlike [`add_rate_limited`](Self::add_rate_limited) this always
    /// counts: it is a failed attempt, not an add.
    pub(crate) fn fail(&self, key: &K, max_retries: u32, prio: i32) -> Failure {
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
                core.keys.mark_dirty(hash, key, prio);
            } else {
                let at = deadline(s.clock.now(), delay);
                self.schedule(&mut core, hash, key.clone(), at, prio);
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
        let settled = core.keys.done(hash, key, self.metrics_now());
        self.after_done(core, settled);
        if matches!(failure, Failure::Exhausted { .. } | Failure::Dropped) {
            s.limiter.forget(key);
        }
        failure
    }

    /// Engine path for an attempt that never finished, its worker dropped (the engine's `run`
    /// future was): marks `key` done, queued again at `prio` unless the queue is shutting down,
    /// so the interrupted work is handed out again. Whether it was queued again.
    pub(crate) fn abandon(&self, key: &K, prio: i32) -> bool {
        let hash = self.hash(key);
        let mut core = self.lock();
        if !self.refuses_adds() {
            core.keys.mark_dirty(hash, key, prio);
        }
        let settled = core.keys.done(hash, key, self.metrics_now());
        self.after_done(core, settled);
        settled.is_some_and(|d| d.requeued)
    }

    /// Engine path for a successful attempt: forgets `key`'s history and marks it done, under one
    /// lock.
    pub(crate) fn succeed(&self, key: &K) {
        let hash = self.hash(key);
        let mut core = self.lock();
        let had_history = core.keys.forget(key);
        let settled = core.keys.done(hash, key, self.metrics_now());
        self.after_done(core, settled);
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

/// Drops the heap's stale entries once they outnumber its live ones, so that a key whose
/// deadline moves earlier does not leave its later entries in the heap until they expire (up to
/// [`MAX_DELAY`]). Whether it did.
///
/// Why a count and not a removal: a binary heap cannot remove an entry from its middle, so a
/// superseded entry stays until it surfaces or the heap is rebuilt. Every live entry is its key's
/// pending delayed add, so the stale ones number `heap.len() - waiting_len()`; rebuilding only
/// when they are more than half the heap removes at least half of what it visits, so its cost is
/// at most two entry visits per entry ever pushed. It runs on the delay paths only (`schedule`,
/// and `promote` when entries fired); a plain add, get and done never reach it.
fn compact<K: Eq + Hash + Clone>(core: &mut Core<K>) -> bool {
    let live = core.keys.waiting_len();
    if core.heap.len().saturating_sub(live) <= live {
        return false;
    }
    let keys = &core.keys;
    core.heap.retain(|d| keys.is_pending(&d.key, d.seq));
    true
}

fn deadline(now: Instant, delay: Duration) -> Instant {
    let delay = delay.min(MAX_DELAY);
    now.checked_add(delay).unwrap_or(now)
}

/// Counts a parked getter for as long as it lives, so a dropped `get` unparks too. Created under
/// both locks (see `take_or_park`); dropped anywhere, as a stale count costs only a spare wake-up.
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
