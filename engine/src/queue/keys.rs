//! The queue's per-key state: each key's slot (queued, or in process and maybe dirty), its pending
//! delayed add and its requeue count, plus the counters that go with them. It lives behind the
//! queue's lock, so every decision about a key sees all of its state at once.

use crate::metrics::Histogram;
use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// Where a key the queue holds stands.
#[derive(Debug, Clone, Copy)]
pub(super) enum Slot {
    /// In the FIFO, waiting for a getter. `since` is set when metrics are on.
    Queued { since: Option<Instant> },
    /// Handed to a worker; `dirty` when it was added again meanwhile.
    Processing { dirty: bool, since: Option<Instant> },
}

/// What an add did to a key's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Added {
    /// The key is new: the caller pushes it onto the FIFO.
    Queued,
    /// The key was already queued, or is in process and is now dirty.
    Coalesced,
}

#[derive(Debug)]
pub(super) struct Keys<K> {
    slots: HashTable<(u64, K, Slot)>,
    /// Pending delayed add of a key: its deadline and the sequence number of its heap entry.
    waiting: HashMap<K, (Instant, u64), RandomState>,
    requeues: HashMap<K, u32, RandomState>,
    pub(super) adds_total: u64,
    pub(super) retries_total: u64,
    pub(super) queue_duration: Histogram,
    pub(super) work_duration: Histogram,
}

impl<K> Default for Keys<K> {
    fn default() -> Self {
        Self {
            slots: HashTable::new(),
            waiting: HashMap::default(),
            requeues: HashMap::default(),
            adds_total: 0,
            retries_total: 0,
            queue_duration: Histogram::default(),
            work_duration: Histogram::default(),
        }
    }
}

impl<K: Eq + Hash + Clone> Keys<K> {
    fn slot_mut(&mut self, hash: u64, key: &K) -> Option<&mut Slot> {
        self.slots
            .find_mut(hash, |(h, k, _)| *h == hash && k == key)
            .map(|(_, _, slot)| slot)
    }

    /// A plain add, the shutdown check already done.
    pub(super) fn add(&mut self, hash: u64, key: &K, now: Option<Instant>) -> Added {
        let entry = self
            .slots
            .entry(hash, |(h, k, _)| *h == hash && k == key, |(h, _, _)| *h);
        match entry {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                if let Slot::Processing { dirty, .. } = &mut e.get_mut().2 {
                    *dirty = true;
                }
                Added::Coalesced
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert((hash, key.clone(), Slot::Queued { since: now }));
                self.adds_total += 1;
                Added::Queued
            }
        }
    }

    /// Records a delayed add of `key` at `at`; the earliest pending deadline wins. Returns the
    /// sequence number for the heap entry when one must be pushed.
    /// Records `seq` as `key`'s pending delayed add at `at`, unless an earlier one is pending.
    /// Returns whether a heap entry must be pushed.
    pub(super) fn schedule(&mut self, key: &K, at: Instant, seq: u64) -> bool {
        if let Some(&(existing, _)) = self.waiting.get(key) {
            if existing <= at {
                return false;
            }
        }
        self.waiting.insert(key.clone(), (at, seq));
        true
    }

    /// Takes `key` out of waiting if `seq` is still its pending delayed add.
    pub(super) fn take_due(&mut self, key: &K, seq: u64) -> bool {
        if self.waiting.get(key).is_some_and(|&(_, s)| s == seq) {
            self.waiting.remove(key);
            true
        } else {
            false
        }
    }

    /// Whether a rate-limited add of `key` coalesces: it is queued, or already waits.
    pub(super) fn rate_limited_add_coalesces(&mut self, hash: u64, key: &K) -> bool {
        self.waiting.contains_key(key)
            || matches!(self.slot_mut(hash, key), Some(Slot::Queued { .. }))
    }

    pub(super) fn count_requeue(&mut self, key: &K) {
        self.retries_total += 1;
        match self.requeues.get_mut(key) {
            Some(n) => *n = n.saturating_add(1),
            None => {
                self.requeues.insert(key.clone(), 1);
            }
        }
    }

    /// Clears `key`'s requeue count; whether it had one.
    pub(super) fn forget(&mut self, key: &K) -> bool {
        !self.requeues.is_empty() && self.requeues.remove(key).is_some()
    }

    pub(super) fn num_requeues(&self, key: &K) -> u32 {
        if self.requeues.is_empty() {
            return 0;
        }
        self.requeues.get(key).copied().unwrap_or(0)
    }

    /// Marks a key popped from the FIFO as in process. Returns its requeue count.
    pub(super) fn start(&mut self, hash: u64, key: &K, now: Option<Instant>) -> u32 {
        if let Some(slot) = self.slot_mut(hash, key) {
            if let (Some(now), Slot::Queued { since: Some(t) }) = (now, *slot) {
                let waited = now.saturating_duration_since(t);
                *slot = Slot::Processing {
                    dirty: false,
                    since: Some(now),
                };
                self.queue_duration.observe(waited);
            } else {
                *slot = Slot::Processing {
                    dirty: false,
                    since: now,
                };
            }
        }
        self.num_requeues(key)
    }

    /// Marks `key` dirty if it is in process (a retry with no delay).
    pub(super) fn mark_dirty(&mut self, hash: u64, key: &K) {
        if let Some(Slot::Processing { dirty, .. }) = self.slot_mut(hash, key) {
            *dirty = true;
        }
    }

    /// Marks `key` done. `None` when it was not in process; `Some(true)` when it was dirty and
    /// must be pushed onto the FIFO again.
    pub(super) fn done(&mut self, hash: u64, key: &K, now: Option<Instant>) -> Option<bool> {
        let Ok(mut entry) = self
            .slots
            .find_entry(hash, |(h, k, _)| *h == hash && k == key)
        else {
            return None;
        };
        let Slot::Processing { dirty, since } = entry.get().2 else {
            return None;
        };
        if let (Some(now), Some(t)) = (now, since) {
            self.work_duration.observe(now.saturating_duration_since(t));
        }
        if dirty {
            entry.get_mut().2 = Slot::Queued { since: now };
        } else {
            entry.remove();
        }
        Some(dirty)
    }

    pub(super) fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Time in process of every key in process: (sum, longest), in seconds.
    pub(super) fn in_process_seconds(&self, now: Instant) -> (f64, f64) {
        let mut sum = 0.0;
        let mut longest: f64 = 0.0;
        for (_, _, slot) in &self.slots {
            if let Slot::Processing { since: Some(t), .. } = slot {
                let s = now.saturating_duration_since(*t).as_secs_f64();
                sum += s;
                longest = longest.max(s);
            }
        }
        (sum, longest)
    }
}
