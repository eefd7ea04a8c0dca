//! The queue's per-key state: each key's slot (queued, or in process and maybe dirty), the FIFO of
//! queued keys, each key's pending delayed add and its requeue count, plus the counters that go
//! with them. It lives behind the queue's lock, so every decision about a key sees all of its
//! state at once.
//!
//! Why a slab: the keys the queue holds live in `slots`, a vector reused through a free list,
//! and the hash table `index` maps a key to its slot's position. The FIFO is a list linked
//! through the slots, so handing out the next key (`pop`) finds its slot without hashing or
//! probing, and `done` re-queues a dirty key by linking the slot it found; only an add and a
//! `done` look a key up. So a getter taking keys from a backlog that a fast producer built
//! neither probes a table nor misses the cache on each key.
//!
//! Why so small: a slot holds the key, a one-byte state and the FIFO link (16 bytes for a `u64`
//! key); the index holds 4-byte positions and needs a key's hash only to place it, so it computes
//! the hash again from the slot's key when it grows; the times that time metrics need live in a
//! vector beside the slots, touched only with metrics on. The index is cleared when its last key
//! leaves (at most once per eighth of its buckets removed), which also clears the tombstones that
//! removals leave and that would otherwise make it grow. So the keys in flight and their index
//! stay small enough for an add → get → done cycle over a backlog to run from the first-level
//! cache (`benches/queue.rs` has the figures).
//!
//! Priorities and fairness: the FIFO above holds keys of the default priority only. The first
//! key of another priority (or, for a fair queue, construction) hands the order over to `ranked`,
//! for good; each path below pays one branch on `ranked` until then and nothing else.
//!
//! Priorities across a key's pending adds: a key can be queued (or in process and dirty) and wait
//! out a delay at once, as in client-go. All of them share one priority, the highest that any
//! add since the key was last handed out gave it: an add raises every pending instance of the key
//! (a queued key joins the end of its new level), and a new instance starts at that shared
//! priority. So a re-add takes the higher priority and the earlier ready time, as in
//! controller-runtime's priority queue.

use super::fairness::FairPlan;
use super::ranked::{Ranked, DEFAULT_PRIORITY};
use crate::metrics::{Histogram, PriorityLabel};
use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::time::Instant;

/// Where a key the queue holds stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the FIFO, waiting for a getter.
    Queued,
    /// Handed to a worker; `dirty` when it was added again meanwhile.
    Processing { dirty: bool },
}

/// A slot of the slab: a key the queue holds, or a link of the free list.
#[derive(Debug)]
enum Slot<K> {
    /// `next` links the FIFO: the position of the key queued after this one, or `NO_SLOT`;
    /// meaningful while the key is queued.
    Used {
        key: K,
        state: State,
        next: u32,
    },
    Free {
        next: u32,
    },
}

/// End of the free list, and of a FIFO or lane.
pub(super) const NO_SLOT: u32 = u32::MAX;

/// What `done` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Done {
    /// The key was dirty and is queued again.
    pub(super) requeued: bool,
    /// Keys of a group that was at its cap can be handed out again.
    pub(super) unblocked: bool,
}

#[derive(Debug)]
pub(super) struct Keys<K> {
    /// The queue's hasher, with which `index` hashes a slot's key again when it grows.
    hasher: RandomState,
    /// The position in `slots` of each key held, found by the key's hash.
    index: HashTable<u32>,
    slots: Vec<Slot<K>>,
    /// When each slot's key was queued or handed out, by position in `slots`; kept only when
    /// metrics are on, so that a slot stays small without them.
    since: Vec<Option<Instant>>,
    /// Keys taken out of `index` since it was last cleared (see `done`).
    removed: usize,
    /// First free slot, or `NO_SLOT`.
    free: u32,
    /// The FIFO of queued keys, linked through the slots: first and last position (`NO_SLOT`
    /// when empty) and length.
    head: u32,
    tail: u32,
    queued: usize,
    /// Pending delayed add of a key: its deadline, the sequence number of its heap entry and
    /// its priority.
    waiting: HashMap<K, (Instant, u64, i32), RandomState>,
    requeues: HashMap<K, u32, RandomState>,
    pub(super) adds_total: u64,
    pub(super) retries_total: u64,
    pub(super) queue_duration: Histogram,
    pub(super) work_duration: Histogram,
    /// The order of queued keys once the queue has priorities or is fair; `None` while the
    /// FIFO above is the order.
    ranked: Option<Box<Ranked<K>>>,
    /// The slot of the key `pop` last handed out, once ranked (see `handed`).
    last: u32,
}

impl<K> Keys<K> {
    /// No keys; `hasher` is the one the queue hashes keys with; fair across groups when `fair`
    /// is given.
    pub(super) fn new(hasher: RandomState, fair: Option<FairPlan<K>>) -> Self {
        Self {
            hasher,
            index: HashTable::new(),
            slots: Vec::new(),
            since: Vec::new(),
            removed: 0,
            free: NO_SLOT,
            head: NO_SLOT,
            tail: NO_SLOT,
            queued: 0,
            waiting: HashMap::default(),
            requeues: HashMap::default(),
            adds_total: 0,
            retries_total: 0,
            queue_duration: Histogram::default(),
            work_duration: Histogram::default(),
            ranked: fair.map(|plan| Box::new(Ranked::new(Some(plan)))),
            last: NO_SLOT,
        }
    }

    /// Whether `done` must be given the time (fair by handler time).
    pub(super) fn times_handlers(&self) -> bool {
        self.ranked.as_ref().is_some_and(|r| r.times_handlers())
    }
}

/// `done`'s work on the ranked order for the key in process at `at`, handed out at `since`: its
/// group's counts. Whether a group at its cap can go on.
#[inline]
fn settle_ranked<K>(
    ranked: &mut Ranked<K>,
    at: u32,
    dirty: bool,
    now: Option<Instant>,
    since: &[Option<Instant>],
) -> bool {
    let worked = if ranked.times_handlers() {
        match (now, since.get(at as usize).copied().flatten()) {
            (Some(now), Some(t)) => Some(now.saturating_duration_since(t)),
            _ => None,
        }
    } else {
        None
    };
    ranked.settle(at, dirty, worked)
}

/// Whether the slot at `at` holds `key`.
fn holds<K: Eq>(slots: &[Slot<K>], at: u32, key: &K) -> bool {
    matches!(&slots[at as usize], Slot::Used { key: k, .. } if k == key)
}

/// The hash of the key in the slot at `at`, for the index to grow by.
fn hash_at<K: Hash>(hasher: &RandomState, slots: &[Slot<K>], at: u32) -> u64 {
    match &slots[at as usize] {
        Slot::Used { key, .. } => hasher.hash_one(key),
        Slot::Free { .. } => unreachable!("the index points at used slots only"),
    }
}

/// Puts `used` in the first free slot, or a new one; its position.
#[inline(always)]
fn alloc<K>(slots: &mut Vec<Slot<K>>, free: &mut u32, used: Slot<K>) -> u32 {
    if *free == NO_SLOT {
        let at = u32::try_from(slots.len())
            .ok()
            .filter(|&at| at != NO_SLOT)
            .expect("fewer than 2^32 - 1 keys held at once");
        slots.push(used);
        at
    } else {
        let at = *free;
        let Slot::Free { next } = std::mem::replace(&mut slots[at as usize], used) else {
            unreachable!("the free list links free slots only");
        };
        *free = next;
        at
    }
}

impl<K: Eq + Hash + Clone> Keys<K> {
    /// The state of `key`'s slot, if the queue holds it.
    fn state_mut(&mut self, hash: u64, key: &K) -> Option<&mut State> {
        let slots = &self.slots;
        let at = *self.index.find(hash, |&at| holds(slots, at, key))?;
        match &mut self.slots[at as usize] {
            Slot::Used { state, .. } => Some(state),
            Slot::Free { .. } => None,
        }
    }

    /// An add with no delay, the shutdown check already done. Queues `key` at `prio` unless the
    /// queue holds it already; marks it dirty if it is in process. Whether it was queued.
    #[inline]
    pub(super) fn add(&mut self, hash: u64, key: K, now: Option<Instant>, prio: i32) -> bool {
        if self.ranked.is_some() || prio != DEFAULT_PRIORITY {
            return self.add_ranked(hash, key, now, prio);
        }
        let slots = &self.slots;
        if let Some(&at) = self.index.find(hash, |&at| holds(slots, at, &key)) {
            if let Slot::Used {
                state: State::Processing { dirty },
                ..
            } = &mut self.slots[at as usize]
            {
                *dirty = true;
            }
            return false;
        }
        let at = self.hold(hash, key);
        self.push_queued(at);
        self.added(at, now);
        true
    }

    /// Puts `key`, not held yet, in a slot of its own and in the index; its position.
    #[inline(always)]
    fn hold(&mut self, hash: u64, key: K) -> u32 {
        let (state, next) = (State::Queued, NO_SLOT);
        let at = alloc(
            &mut self.slots,
            &mut self.free,
            Slot::Used { key, state, next },
        );
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hash, at, |&at| hash_at(hasher, slots, at));
        at
    }

    /// Counts the add that queued the key at `at`.
    #[inline(always)]
    fn added(&mut self, at: u32, now: Option<Instant>) {
        self.adds_total += 1;
        if now.is_some() {
            self.set_since(at, now);
        }
    }

    /// `add` once the queue is ranked (or is to be). Inlined, as `pop`'s and `done`'s ranked
    /// parts are: out of line, each cost a fair cycle a tenth more in saved registers, and
    /// inlined they leave the plain path's code as it was (`benches/queue.rs`).
    #[inline]
    fn add_ranked(&mut self, hash: u64, key: K, now: Option<Instant>, prio: i32) -> bool {
        self.upgrade();
        let (prio, found) = self.share_priority(hash, &key, prio);
        if let Some(at) = found {
            self.mark_dirty_at(at, prio);
            return false;
        }
        let Some(ranked) = self.ranked.as_deref_mut() else {
            unreachable!("upgraded above")
        };
        let group = ranked.group_of(&key);
        let at = self.hold(hash, key);
        if let Some(ranked) = self.ranked.as_deref_mut() {
            ranked.enter(at, group, prio);
        }
        self.queued += 1;
        self.added(at, now);
        true
    }

    /// Hands the order over from the FIFO to `ranked`, if it has not been already.
    #[inline(always)]
    fn upgrade(&mut self) {
        if self.ranked.is_none() {
            self.upgrade_now();
        }
    }

    #[cold]
    #[inline(never)]
    fn upgrade_now(&mut self) {
        let mut ranked = Ranked::new(None);
        let slots = &self.slots;
        let mut at = self.head;
        let fifo = std::iter::from_fn(|| {
            let this = at;
            if this == NO_SLOT {
                return None;
            }
            let Slot::Used { next, .. } = &slots[this as usize] else {
                unreachable!("the FIFO links used slots only");
            };
            at = *next;
            Some(this)
        });
        ranked.adopt(slots.len(), fifo);
        self.head = NO_SLOT;
        self.tail = NO_SLOT;
        self.ranked = Some(Box::new(ranked));
    }

    /// Applies an add of priority `prio` to every pending instance of `key` (queued, dirty,
    /// waiting): each takes the highest priority among them and `prio` (see the module docs).
    /// That priority, and the key's slot if it holds one. The queue is ranked.
    #[inline(always)]
    fn share_priority(&mut self, hash: u64, key: &K, prio: i32) -> (i32, Option<u32>) {
        let Some(ranked) = self.ranked.as_deref_mut() else {
            unreachable!("ranked queues only")
        };
        let waiting = if self.waiting.is_empty() {
            None
        } else {
            self.waiting.get_mut(key)
        };
        let slots = &self.slots;
        let found = self.index.find(hash, |&at| holds(slots, at, key)).copied();
        // The slot's own instance: queued, or in process and dirty.
        let held = found.filter(|&at| {
            !matches!(
                &slots[at as usize],
                Slot::Used {
                    state: State::Processing { dirty: false },
                    ..
                }
            )
        });
        let mut shared = prio;
        if let Some((_, _, p)) = waiting.as_deref() {
            shared = shared.max(*p);
        }
        if let Some(at) = held {
            shared = shared.max(ranked.prio(at));
        }
        if let Some((_, _, p)) = waiting {
            *p = shared;
        }
        if let Some(at) = held {
            match &slots[at as usize] {
                Slot::Used {
                    state: State::Queued,
                    ..
                } => ranked.raise(at, shared),
                _ => ranked.set_dirty_prio(at, shared),
            }
        }
        (shared, found)
    }

    /// Marks the key at `at` dirty, to be queued again at `prio`, if it is in process.
    fn mark_dirty_at(&mut self, at: u32, prio: i32) {
        if let Slot::Used {
            state: State::Processing { dirty },
            ..
        } = &mut self.slots[at as usize]
        {
            *dirty = true;
            if let Some(ranked) = self.ranked.as_deref_mut() {
                ranked.set_dirty_prio(at, prio);
            }
        }
    }

    /// An add of priority `prio` that queues nothing (a rate-limited add that coalesced): raises
    /// the key's pending instances to it.
    pub(super) fn raise(&mut self, hash: u64, key: &K, prio: i32) {
        if self.ranked.is_some() || prio != DEFAULT_PRIORITY {
            self.upgrade();
            self.share_priority(hash, key, prio);
        }
    }

    /// Records when the key at `at` was queued or handed out (metrics on).
    fn set_since(&mut self, at: u32, now: Option<Instant>) {
        let at = at as usize;
        if self.since.len() <= at {
            self.since.resize(at + 1, None);
        }
        self.since[at] = now;
    }

    /// The time recorded for the key at `at` (metrics on).
    fn since(&self, at: u32) -> Option<Instant> {
        self.since.get(at as usize).copied().flatten()
    }

    /// Keys queued and ready.
    pub(super) fn len(&self) -> usize {
        self.queued
    }

    /// Queues the key at `at`: appends it to the FIFO, or to its lane once ranked.
    #[inline]
    fn push_queued(&mut self, at: u32) {
        self.queued += 1;
        if self.ranked.is_some() {
            return self.push_ranked(at);
        }
        if let Slot::Used { next, .. } = &mut self.slots[at as usize] {
            *next = NO_SLOT;
        }
        if self.tail == NO_SLOT {
            self.head = at;
        } else if let Slot::Used { next, .. } = &mut self.slots[self.tail as usize] {
            *next = at;
        }
        self.tail = at;
    }

    #[inline(never)]
    fn push_ranked(&mut self, at: u32) {
        if let Some(ranked) = self.ranked.as_deref_mut() {
            ranked.push(at);
        }
    }

    /// Takes the first key's position off the FIFO.
    #[inline]
    fn pop_fifo(&mut self) -> Option<u32> {
        let at = self.head;
        if at == NO_SLOT {
            return None;
        }
        let Slot::Used { next, .. } = &self.slots[at as usize] else {
            unreachable!("the FIFO links used slots only");
        };
        self.head = *next;
        if self.head == NO_SLOT {
            self.tail = NO_SLOT;
        }
        self.queued -= 1;
        Some(at)
    }

    /// Hands out the next queued key: marks it in process and returns it with its requeue
    /// count. Its priority and group are then given by [`handed`](Self::handed).
    #[inline]
    pub(super) fn pop(&mut self, now: Option<Instant>) -> Option<(K, u32)> {
        let at = if self.ranked.is_some() {
            self.pop_ranked()?
        } else {
            self.pop_fifo()?
        };
        let Slot::Used { key, state, .. } = &mut self.slots[at as usize] else {
            unreachable!("the FIFO links used slots only");
        };
        *state = State::Processing { dirty: false };
        let key = key.clone();
        if let Some(now) = now {
            if let Some(t) = self.since(at) {
                self.queue_duration
                    .observe(now.saturating_duration_since(t));
            }
            self.set_since(at, Some(now));
        }
        let requeues = self.num_requeues(&key);
        Some((key, requeues))
    }

    /// `pop`'s choice once ranked: the slot of the next key in the ranked order.
    #[inline]
    fn pop_ranked(&mut self) -> Option<u32> {
        let at = self.ranked.as_deref_mut()?.pop()?;
        self.queued -= 1;
        self.last = at;
        Some(at)
    }

    /// The priority of the key `pop` last handed out and, if `with_group` and the queue is fair,
    /// its group's name. Called under the same lock as that `pop`.
    pub(super) fn handed(&self, with_group: bool) -> (i32, Option<Arc<str>>) {
        match &self.ranked {
            None => (DEFAULT_PRIORITY, None),
            Some(ranked) => {
                let group = if with_group {
                    ranked.group_name(self.last).cloned()
                } else {
                    None
                };
                (ranked.prio(self.last), group)
            }
        }
    }

    /// Marks `key` done, queued again if it was dirty. `None` when it was not in process.
    #[inline]
    pub(super) fn done(&mut self, hash: u64, key: &K, now: Option<Instant>) -> Option<Done> {
        let (held, buckets) = (self.index.len(), self.index.num_buckets());
        let slots = &self.slots;
        let Ok(entry) = self.index.find_entry(hash, |&at| holds(slots, at, key)) else {
            return None;
        };
        let at = *entry.get();
        let Slot::Used { state, .. } = &mut self.slots[at as usize] else {
            unreachable!("the index points at used slots only");
        };
        let State::Processing { dirty } = *state else {
            return None;
        };
        let unblocked = match self.ranked.as_deref_mut() {
            Some(ranked) if ranked.is_fair() => settle_ranked(ranked, at, dirty, now, &self.since),
            _ => false,
        };
        if dirty {
            if let Slot::Used { state, .. } = &mut self.slots[at as usize] {
                *state = State::Queued;
            }
            self.push_queued(at);
        } else {
            self.removed += 1;
            // A removal can leave a tombstone, which only a rehash clears, and tombstones make
            // the index grow. Taking out its last key by clearing it is one small `memset` that
            // clears them too; doing so once per eighth of its buckets removed costs at most a
            // byte per removal.
            if held == 1 && self.removed >= buckets / 8 {
                self.index.clear();
                self.removed = 0;
            } else {
                entry.remove();
            }
            self.slots[at as usize] = Slot::Free { next: self.free };
            self.free = at;
        }
        if let Some(now) = now {
            if let Some(t) = self.since(at) {
                self.work_duration.observe(now.saturating_duration_since(t));
            }
            if dirty {
                // Queued again since now; a freed slot's time is set by its next add.
                self.set_since(at, Some(now));
            }
        }
        Some(Done {
            requeued: dirty,
            unblocked,
        })
    }

    /// Marks `key` dirty if it is in process (a retry with no delay), to be queued again at
    /// `prio` (or higher, see the module docs).
    pub(super) fn mark_dirty(&mut self, hash: u64, key: &K, prio: i32) {
        if self.ranked.is_some() || prio != DEFAULT_PRIORITY {
            self.upgrade();
            if let (prio, Some(at)) = self.share_priority(hash, key, prio) {
                self.mark_dirty_at(at, prio);
            }
        } else if let Some(State::Processing { dirty }) = self.state_mut(hash, key) {
            *dirty = true;
        }
    }

    /// Records `seq` as `key`'s pending delayed add at `at`, of priority `prio`, unless an
    /// earlier one is pending (whose priority is raised to `prio` if that is higher). Returns
    /// whether a heap entry must be pushed.
    pub(super) fn schedule(
        &mut self,
        hash: u64,
        key: &K,
        at: Instant,
        seq: u64,
        prio: i32,
    ) -> bool {
        let prio = if self.ranked.is_some() || prio != DEFAULT_PRIORITY {
            self.upgrade();
            self.share_priority(hash, key, prio).0
        } else {
            prio
        };
        if let Some(&(existing, _, _)) = self.waiting.get(key) {
            if existing <= at {
                return false;
            }
        }
        self.waiting.insert(key.clone(), (at, seq, prio));
        true
    }

    /// Takes `key` out of waiting if `seq` is still its pending delayed add; its priority.
    pub(super) fn take_due(&mut self, key: &K, seq: u64) -> Option<i32> {
        if self.is_pending(key, seq) {
            self.waiting.remove(key).map(|(_, _, prio)| prio)
        } else {
            None
        }
    }

    /// Whether `seq` is `key`'s pending delayed add: its heap entry is live, not superseded.
    pub(super) fn is_pending(&self, key: &K, seq: u64) -> bool {
        self.waiting.get(key).is_some_and(|&(_, s, _)| s == seq)
    }

    /// Whether a rate-limited add of `key` coalesces: it is queued, or already waits.
    pub(super) fn rate_limited_add_coalesces(&mut self, hash: u64, key: &K) -> bool {
        self.waiting.contains_key(key) || matches!(self.state_mut(hash, key), Some(State::Queued))
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

    pub(super) fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Keys queued per priority label (see [`PriorityLabel`]).
    pub(super) fn depth_by_priority(&self) -> Vec<(PriorityLabel, u64)> {
        match &self.ranked {
            None => vec![(
                PriorityLabel::Priority(DEFAULT_PRIORITY),
                self.queued as u64,
            )],
            Some(ranked) => ranked.depth_by_priority(),
        }
    }

    /// Groups with keys held, for a fair queue.
    pub(super) fn groups_len(&self) -> usize {
        self.ranked.as_ref().map_or(0, |r| r.groups_len())
    }

    /// Time in process of every key in process: (sum, longest), in seconds.
    pub(super) fn in_process_seconds(&self, now: Instant) -> (f64, f64) {
        let mut sum = 0.0;
        let mut longest: f64 = 0.0;
        for (at, slot) in self.slots.iter().enumerate() {
            let in_process = matches!(
                slot,
                Slot::Used {
                    state: State::Processing { .. },
                    ..
                }
            );
            if let Some(Some(t)) = self.since.get(at).filter(|_| in_process) {
                let s = now.saturating_duration_since(*t).as_secs_f64();
                sum += s;
                longest = longest.max(s);
            }
        }
        (sum, longest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(keys: &mut Keys<u32>, key: u32) -> bool {
        add_at(keys, key, None)
    }

    fn add_at(keys: &mut Keys<u32>, key: u32, now: Option<Instant>) -> bool {
        keys.add(keys.hasher.hash_one(key), key, now, DEFAULT_PRIORITY)
    }

    fn done(keys: &mut Keys<u32>, key: u32) -> Option<bool> {
        done_at(keys, key, None)
    }

    fn done_at(keys: &mut Keys<u32>, key: u32, now: Option<Instant>) -> Option<bool> {
        keys.done(keys.hasher.hash_one(key), &key, now)
            .map(|d| d.requeued)
    }

    /// The next key and its requeue count.
    fn pop(keys: &mut Keys<u32>, now: Option<Instant>) -> Option<(u32, u32)> {
        keys.pop(now)
    }

    #[test]
    fn keys_should_reuse_freed_slots_and_keep_fifo_order() {
        let mut keys = Keys::new(RandomState::default(), None);
        for k in 0..4 {
            assert!(add(&mut keys, k));
        }
        assert!(!add(&mut keys, 2), "a queued key is queued once");
        assert_eq!(pop(&mut keys, None), Some((0, 0)));
        assert_eq!(pop(&mut keys, None), Some((1, 0)));
        assert!(
            !add(&mut keys, 1),
            "a key in process is marked dirty, not queued"
        );
        assert_eq!(done(&mut keys, 0), Some(false));
        assert_eq!(done(&mut keys, 1), Some(true), "dirty: queued again");
        assert_eq!(done(&mut keys, 1), None, "queued, not in process");
        // Slot 0 is free again and is taken by the next new key.
        assert!(add(&mut keys, 7));
        assert_eq!(keys.slots.len(), 4);
        let order: Vec<u32> = std::iter::from_fn(|| pop(&mut keys, None).map(|(k, _)| k)).collect();
        assert_eq!(order, [2, 3, 1, 7]);
        for k in order {
            assert_eq!(done(&mut keys, k), Some(false));
        }
        assert_eq!(keys.len(), 0);
        assert_eq!(keys.index.len(), 0);
        assert_eq!(keys.adds_total, 5);
    }

    #[test]
    fn keys_should_clear_the_index_tombstones_once_it_is_empty() {
        let mut keys = Keys::new(RandomState::default(), None);
        keys.index
            .reserve(100, |_| unreachable!("the index is empty"));
        let room = keys.index.capacity();
        // Keys that hash alike fill one run of buckets, so taking them out leaves tombstones,
        // which take room (`capacity` is items plus room left) until a rehash or a clear.
        for k in 0..64u32 {
            assert!(keys.add(0, k, None, DEFAULT_PRIORITY));
        }
        for _ in 0..63 {
            let (k, _) = pop(&mut keys, None).expect("queued");
            assert_eq!(keys.done(0, &k, None).map(|d| d.requeued), Some(false));
        }
        assert!(
            keys.index.capacity() < room,
            "tombstones left while a key is held"
        );
        let (k, _) = pop(&mut keys, None).expect("queued");
        assert_eq!(keys.done(0, &k, None).map(|d| d.requeued), Some(false));
        assert_eq!(keys.index.capacity(), room, "empty: tombstones cleared");
        assert!(add(&mut keys, 7));
        assert_eq!(pop(&mut keys, None), Some((7, 0)));
    }

    #[test]
    fn keys_should_find_every_key_after_the_index_grows() {
        let mut keys = Keys::new(RandomState::default(), None);
        for k in 0..10_000 {
            assert!(add(&mut keys, k));
        }
        for k in 0..10_000 {
            assert!(!add(&mut keys, k), "{k} is queued already");
        }
        let order: Vec<u32> = std::iter::from_fn(|| pop(&mut keys, None).map(|(k, _)| k)).collect();
        assert_eq!(order, (0..10_000).collect::<Vec<_>>());
        for k in (0..10_000).rev() {
            assert_eq!(done(&mut keys, k), Some(false));
        }
        assert_eq!(keys.index.len(), 0);
    }

    #[test]
    fn keys_should_time_each_key_from_its_own_add_when_slots_are_reused() {
        let t0 = Instant::now();
        let at = |ms: u64| Some(t0 + std::time::Duration::from_millis(ms));
        let mut keys = Keys::new(RandomState::default(), None);
        assert!(add_at(&mut keys, 1, at(0)));
        assert_eq!(pop(&mut keys, at(10)), Some((1, 0)));
        assert_eq!(done_at(&mut keys, 1, at(30)), Some(false));
        // Key 2 takes key 1's freed slot: its times are its own, not key 1's.
        assert!(add_at(&mut keys, 2, at(100)));
        assert_eq!(keys.slots.len(), 1);
        assert_eq!(pop(&mut keys, at(101)), Some((2, 0)));
        assert_eq!(
            keys.in_process_seconds(t0 + std::time::Duration::from_millis(105))
                .1,
            0.004
        );
        assert_eq!(done_at(&mut keys, 2, at(103)), Some(false));
        assert_eq!(keys.queue_duration.count, 2);
        assert!((keys.queue_duration.sum_seconds - 0.011).abs() < 1e-9);
        assert!((keys.work_duration.sum_seconds - 0.022).abs() < 1e-9);
    }
}
