//! The queue's state machine, without locking or waking: every operation of [`Queue`] is one call
//! here under one lock.
//!
//! [`Queue`]: super::Queue

use crate::metrics::{Histogram, QueueMetrics};
use foldhash::fast::RandomState;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::Hash;
use std::time::Instant;

type Map<K, V> = HashMap<K, V, RandomState>;

/// Where a key that the queue knows of stands.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// In the FIFO, waiting for a getter. `since` is set when metrics are on.
    Queued { since: Option<Instant> },
    /// Handed to a worker; `dirty` when it was added again meanwhile.
    Processing { dirty: bool, since: Option<Instant> },
}

/// A delayed add in the heap; stale when the key's `waiting` entry has another `seq`.
#[derive(Debug)]
struct Delayed<K> {
    at: Instant,
    seq: u64,
    key: K,
}

impl<K> PartialEq for Delayed<K> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<K> Eq for Delayed<K> {}
impl<K> PartialOrd for Delayed<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Delayed<K> {
    // Reversed: `BinaryHeap` is a max-heap and the earliest deadline must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What an add did, so the caller knows whether to wake a getter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    /// The key entered the FIFO.
    Queued,
    /// The key was already queued, or was being processed and is now dirty.
    Coalesced,
    /// The key waits in the delay heap; `earliest` when it became the next deadline.
    Delayed { earliest: bool },
    /// The queue is shut down; the add was ignored and counted.
    Refused,
}

#[derive(Debug)]
pub(crate) struct State<K> {
    fifo: VecDeque<K>,
    slots: Map<K, Slot>,
    waiting: Map<K, (Instant, u64)>,
    heap: BinaryHeap<Delayed<K>>,
    requeues: Map<K, u32>,
    next_seq: u64,
    processing: usize,
    pub(crate) shutting_down: bool,
    /// While draining queued keys: getters still receive them, adds are refused.
    pub(crate) draining_queued: bool,
    /// Getters parked on the notifier; an add wakes one only when this is non-zero.
    pub(crate) getters: usize,
    metrics_on: bool,
    adds_total: u64,
    retries_total: u64,
    dropped_adds_total: u64,
    pub(crate) exhausted_total: u64,
    queue_duration: Histogram,
    work_duration: Histogram,
}

impl<K: Eq + Hash + Clone> State<K> {
    pub(crate) fn new(metrics_on: bool) -> Self {
        Self {
            fifo: VecDeque::new(),
            slots: Map::default(),
            waiting: Map::default(),
            heap: BinaryHeap::new(),
            requeues: Map::default(),
            next_seq: 0,
            processing: 0,
            shutting_down: false,
            draining_queued: false,
            getters: 0,
            metrics_on,
            adds_total: 0,
            retries_total: 0,
            dropped_adds_total: 0,
            exhausted_total: 0,
            queue_duration: Histogram::default(),
            work_duration: Histogram::default(),
        }
    }

    pub(crate) fn refuses_adds(&self) -> bool {
        self.shutting_down || self.draining_queued
    }

    /// A plain add. `now` is read only when metrics are on.
    pub(crate) fn add(&mut self, key: K, now: impl FnOnce() -> Instant) -> Added {
        if self.refuses_adds() {
            self.dropped_adds_total += 1;
            return Added::Refused;
        }
        self.add_unchecked(key, now)
    }

    fn add_unchecked(&mut self, key: K, now: impl FnOnce() -> Instant) -> Added {
        match self.slots.get_mut(&key) {
            Some(Slot::Queued { .. }) => Added::Coalesced,
            Some(Slot::Processing { dirty, .. }) => {
                *dirty = true;
                Added::Coalesced
            }
            None => {
                let since = self.metrics_on.then(now);
                self.fifo.push_back(key.clone());
                self.slots.insert(key, Slot::Queued { since });
                self.adds_total += 1;
                Added::Queued
            }
        }
    }

    /// Adds `key` at `at`; the earliest of several pending deadlines for one key wins.
    pub(crate) fn add_at(&mut self, key: K, at: Instant) -> Added {
        if self.refuses_adds() {
            self.dropped_adds_total += 1;
            return Added::Refused;
        }
        if let Some(&(existing, _)) = self.waiting.get(&key) {
            if existing <= at {
                return Added::Delayed { earliest: false };
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let earliest = self.heap.peek().is_none_or(|top| at < top.at);
        self.waiting.insert(key.clone(), (at, seq));
        self.heap.push(Delayed { at, seq, key });
        Added::Delayed { earliest }
    }

    /// Whether a rate-limited add of `key` would coalesce: the key is queued, or already waits.
    /// Such an add takes no token and counts no failure.
    pub(crate) fn rate_limited_add_coalesces(&self, key: &K) -> bool {
        self.waiting.contains_key(key) || matches!(self.slots.get(key), Some(Slot::Queued { .. }))
    }

    /// Counts a failure of `key` that is about to be re-added with a delay.
    pub(crate) fn count_requeue(&mut self, key: &K) {
        self.retries_total += 1;
        match self.requeues.get_mut(key) {
            Some(n) => *n = n.saturating_add(1),
            None => {
                self.requeues.insert(key.clone(), 1);
            }
        }
    }

    pub(crate) fn forget(&mut self, key: &K) {
        if !self.requeues.is_empty() {
            self.requeues.remove(key);
        }
    }

    pub(crate) fn num_requeues(&self, key: &K) -> u32 {
        if self.requeues.is_empty() {
            return 0;
        }
        self.requeues.get(key).copied().unwrap_or(0)
    }

    /// The next deadline in the delay heap, if any (possibly stale, which only wakes early).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|d| d.at)
    }

    /// Moves every delayed key whose deadline has passed into the queue. Returns how many.
    pub(crate) fn promote(&mut self, now: Instant) -> usize {
        let mut moved = 0;
        while self.heap.peek().is_some_and(|top| top.at <= now) {
            let Some(d) = self.heap.pop() else { break };
            if self
                .waiting
                .get(&d.key)
                .is_some_and(|&(_, seq)| seq == d.seq)
            {
                self.waiting.remove(&d.key);
                if self.add_unchecked(d.key, || now) == Added::Queued {
                    moved += 1;
                }
            }
        }
        moved
    }

    /// Hands out the first queued key, if any. Does not promote delayed keys.
    pub(crate) fn pop(&mut self, now: impl FnOnce() -> Instant) -> Option<K> {
        if self.shutting_down {
            return None;
        }
        let key = self.fifo.pop_front()?;
        let since = if self.metrics_on {
            let now = now();
            if let Some(Slot::Queued { since: Some(t) }) = self.slots.get(&key) {
                self.queue_duration
                    .observe(now.saturating_duration_since(*t));
            }
            Some(now)
        } else {
            None
        };
        if let Some(slot) = self.slots.get_mut(&key) {
            *slot = Slot::Processing {
                dirty: false,
                since,
            };
        }
        self.processing += 1;
        Some(key)
    }

    /// Marks `key` done. Returns true when it was dirty and is queued again.
    pub(crate) fn done(&mut self, key: &K, now: impl FnOnce() -> Instant) -> bool {
        let Some(Slot::Processing { dirty, since }) = self.slots.get(key).copied() else {
            return false;
        };
        self.processing -= 1;
        let now = self.metrics_on.then(now);
        if let (Some(now), Some(t)) = (now, since) {
            self.work_duration.observe(now.saturating_duration_since(t));
        }
        if dirty {
            self.fifo.push_back(key.clone());
            self.slots.insert(key.clone(), Slot::Queued { since: now });
            true
        } else {
            self.slots.remove(key);
            false
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.fifo.len()
    }

    pub(crate) fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub(crate) fn processing(&self) -> usize {
        self.processing
    }

    pub(crate) fn metrics(&self, name: &str, now: Instant) -> QueueMetrics {
        let mut unfinished = 0.0;
        let mut longest: f64 = 0.0;
        if self.metrics_on {
            for slot in self.slots.values() {
                if let Slot::Processing { since: Some(t), .. } = slot {
                    let s = now.saturating_duration_since(*t).as_secs_f64();
                    unfinished += s;
                    longest = longest.max(s);
                }
            }
        }
        QueueMetrics {
            name: name.to_owned(),
            depth: self.fifo.len() as u64,
            waiting: self.waiting.len() as u64,
            processing: self.processing as u64,
            adds_total: self.adds_total,
            retries_total: self.retries_total,
            queue_duration: self.queue_duration.clone(),
            work_duration: self.work_duration.clone(),
            unfinished_work_seconds: unfinished,
            longest_running_processor_seconds: longest,
            dropped_adds_total: self.dropped_adds_total,
            exhausted_total: self.exhausted_total,
        }
    }
}
