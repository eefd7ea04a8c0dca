//! Bounded decision caches.
//!
//! Why cache decisions at all: spans keep arriving after their trace was decided (a slow
//! child, a retry's span). Without a cache such a late span starts a new trace and may be decided
//! differently, leaving half a trace (contrib#14760). With it, a late span follows its trace's
//! decision while the trace id is remembered. Both caches are bounded first-in-first-out maps:
//! the oldest decision is forgotten first, and lookups never allocate. Dropped ids are remembered
//! by a 64-bit fingerprint (8 bytes instead of 16; a false hit needs a 2^-64 collision).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

use foldhash::fast::FixedState;

/// A map that forgets its oldest insertions beyond `capacity` (0 disables it).
#[derive(Debug)]
pub(crate) struct BoundedMap<K, V> {
    map: HashMap<K, V, FixedState>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Copy, V> BoundedMap<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::with_hasher(FixedState::default()),
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

    pub(crate) fn contains(&self, key: &K) -> bool {
        self.get(key).is_some()
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

/// A 64-bit fingerprint of a value, stable within the process.
pub(crate) fn fingerprint<T: Hash + ?Sized>(value: &T) -> u64 {
    FixedState::with_seed(0x7472_6163_6571).hash_one(value)
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
        assert!(!m.contains(&1));
        assert_eq!(m.get(&2), Some(&"b"));
        assert_eq!(m.get(&3), Some(&"c"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn bounded_map_of_capacity_zero_should_remember_nothing() {
        let mut m = BoundedMap::new(0);
        m.insert(1, ());
        assert!(!m.contains(&1));
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn fingerprint_should_be_stable() {
        assert_eq!(fingerprint("job-1"), fingerprint("job-1"));
        assert_ne!(fingerprint("job-1"), fingerprint("job-2"));
    }
}
