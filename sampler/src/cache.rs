//! Bounded decision caches.
//!
//! Why cache decisions at all: spans keep arriving after their trace was decided (a slow
//! child, a retry's span). Without a cache such a late span starts a new trace and may be decided
//! differently, leaving half a trace (contrib#14760). With it, a late span follows its trace's
//! decision while the trace id is remembered. Kept ids live in a bounded first-in-first-out map
//! (the oldest decision is forgotten first) with the decision itself, so late spans get the same
//! annotations. Dropped ids, usually the vast majority, live in a compact filter: a fixed table
//! of 64-bit fingerprints in two-way buckets, 8 bytes per remembered id, allocated once, no
//! per-insert allocation; a new id displaces the older of its bucket. A false "dropped" needs
//! two trace ids with equal 64-bit fingerprints (about 2^-64 per lookup).
//!
//! Both are keyed by ids that senders choose, so both hash with a random seed (see
//! [`crate::hash`]): the map through its hasher, the filter through the fingerprints its owner
//! computes with a seeded hasher, so nobody can aim ids at one bucket.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

use crate::hash::{id_state, IdState};

/// A map that forgets its oldest insertions beyond `capacity` (0 disables it).
#[derive(Debug)]
pub(crate) struct BoundedMap<K, V> {
    map: HashMap<K, V, IdState>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Copy, V> BoundedMap<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::with_hasher(id_state()),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        if self.capacity == 0 {
            return None;
        }
        self.map.get(key)
    }

    /// Inserts or replaces; returns how many old entries were forgotten to make room.
    pub(crate) fn insert(&mut self, key: K, value: V) -> usize {
        if self.capacity == 0 {
            return 0;
        }
        if self.map.insert(key, value).is_none() {
            self.order.push_back(key);
        }
        let mut evicted = 0;
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                    evicted += 1;
                }
                None => break,
            }
        }
        evicted
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Remembers up to about `capacity` 64-bit fingerprints (see the module docs). The fingerprints
/// must come from a seeded hash ([`fingerprint`] with a random [`IdState`]): their bits choose
/// the bucket.
#[derive(Debug)]
pub(crate) struct DropFilter {
    buckets: Vec<[u64; 2]>,
}

impl DropFilter {
    /// A filter for about `capacity` ids (0 disables it).
    pub(crate) fn new(capacity: usize) -> Self {
        let buckets = if capacity == 0 {
            0
        } else {
            capacity.div_ceil(2).next_power_of_two()
        };
        Self {
            buckets: vec![[0; 2]; buckets],
        }
    }

    fn slot(&self, fp: u64) -> Option<(usize, u64)> {
        if self.buckets.is_empty() {
            return None;
        }
        // 0 marks an empty slot, so fingerprint 0 is stored as 1.
        let fp = fp.max(1);
        let mixed = fp.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Some(((mixed >> 32) as usize & (self.buckets.len() - 1), fp))
    }

    pub(crate) fn contains(&self, fp: u64) -> bool {
        self.slot(fp)
            .is_some_and(|(i, fp)| self.buckets[i].contains(&fp))
    }

    pub(crate) fn insert(&mut self, fp: u64) {
        if let Some((i, fp)) = self.slot(fp) {
            let b = &mut self.buckets[i];
            if b[0] != fp {
                b[1] = b[0];
                b[0] = fp;
            }
        }
    }
}

/// A 64-bit fingerprint of a value, stable for one `state` (give each table its own).
pub(crate) fn fingerprint<T: Hash + ?Sized>(state: &IdState, value: &T) -> u64 {
    state.hash_one(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_map_should_forget_the_oldest_entries_first() {
        let mut m = BoundedMap::new(2);
        assert_eq!(m.insert(1, "a"), 0);
        assert_eq!(m.insert(2, "b"), 0);
        assert_eq!(m.insert(1, "a2"), 0);
        assert_eq!(m.insert(3, "c"), 1);
        assert!(m.get(&1).is_none());
        assert_eq!(m.get(&2), Some(&"b"));
        assert_eq!(m.get(&3), Some(&"c"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn bounded_map_of_capacity_zero_should_remember_nothing() {
        let mut m = BoundedMap::new(0);
        m.insert(1, ());
        assert!(m.get(&1).is_none());
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn drop_filter_should_remember_recent_ids_and_forget_old_ones() {
        let state = id_state();
        let fp = |v: &u64| fingerprint(&state, v);
        let mut f = DropFilter::new(1024);
        for id in 0..512u64 {
            f.insert(fp(&id));
        }
        let remembered = (0..512u64).filter(|id| f.contains(fp(id))).count();
        assert!(remembered > 400, "{remembered}");
        assert!(!f.contains(fp(&100_000u64)));
        for id in 1000..100_000u64 {
            f.insert(fp(&id));
        }
        let old = (0..512u64).filter(|id| f.contains(fp(id))).count();
        assert!(old < 5, "{old}");
        let mut off = DropFilter::new(0);
        off.insert(1);
        assert!(!off.contains(1));
    }

    #[test]
    fn fingerprint_should_be_stable_for_one_state_and_differ_between_states() {
        let (a, b) = (id_state(), id_state());
        assert_eq!(fingerprint(&a, "job-1"), fingerprint(&a, "job-1"));
        assert_ne!(fingerprint(&a, "job-1"), fingerprint(&a, "job-2"));
        assert_ne!(fingerprint(&a, "job-1"), fingerprint(&b, "job-1"));
    }
}
