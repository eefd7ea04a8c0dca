//! A fair queue's groups: each group's counts, credit and lanes, and the table that finds a key's
//! group (see `ranked` for how they take turns).

use super::super::fairness::{intern_caught, Cost, FairPlan, NEW, PANICKED_GROUP};
use super::NONE;
use std::sync::Arc;

/// A group with keys held; it goes once it has none queued or in process.
#[derive(Debug)]
pub(super) struct Group {
    /// Its keys queued or in process.
    pub(super) held: u32,
    pub(super) in_process: u32,
    /// Hand-outs (or nanoseconds of handler time) the group may still take this turn.
    pub(super) credit: i64,
    /// Estimated handler time per key, nanoseconds (handler-time cost only).
    pub(super) est: i64,
    /// What a turn credits: its weight, or its weight × the time quantum.
    pub(super) quantum: i64,
    /// The group's lanes, one per band it has keys queued in.
    pub(super) lanes: Vec<u32>,
    /// The lane it was last queued in (`NONE` if gone): where the next key most likely goes.
    pub(super) hint: u32,
    pub(super) name: Option<Arc<str>>,
}

impl Group {
    pub(super) fn new(name: Option<Arc<str>>, quantum: i64, est: i64) -> Self {
        Self {
            held: 0,
            in_process: 0,
            credit: 0,
            est,
            quantum,
            lanes: Vec::new(),
            hint: NONE,
            name,
        }
    }
}

/// Fair scheduling's state: the group table and the settings.
pub(super) struct Fair<K> {
    pub(super) plan: FairPlan<K>,
    /// The plan's settings, unpacked: whether hand-outs cost handler time, and the cap.
    pub(super) by_time: bool,
    pub(super) cap: u32,
    pub(super) groups: Vec<Group>,
    pub(super) free_groups: Vec<u32>,
    /// What each slot's key was charged at hand-out (handler-time cost only).
    pub(super) charged: Vec<i64>,
    /// The group of keys whose group function panicked, while it has keys.
    pub(super) fallback: Option<u32>,
    /// Panics of the group function, reported once.
    pub(super) panics: u64,
}

impl<K> Fair<K> {
    pub(super) fn quantum(&self, weight: u32) -> i64 {
        match self.plan.cost {
            Cost::HandOuts => i64::from(weight),
            Cost::HandlerTime { quantum_ns } => quantum_ns.saturating_mul(i64::from(weight)),
        }
    }

    pub(super) fn blocked(&self, g: &Group) -> bool {
        g.in_process >= self.cap
    }

    /// The group of a key entering the queue.
    #[inline(always)]
    pub(super) fn intern(&mut self, key: &K) -> u32 {
        let next = self
            .free_groups
            .last()
            .copied()
            .unwrap_or(self.groups.len() as u32);
        match intern_caught(&mut *self.plan.table, key, next) {
            Ok(found) if found & NEW == 0 => found as u32,
            found => self.make(next, found.err()),
        }
    }

    /// Makes the group at `next` that `intern` found new, or the group of keys whose group
    /// function panicked (with the panic's message).
    #[inline(never)]
    fn make(&mut self, next: u32, panicked: Option<String>) -> u32 {
        let (name, weight) = match panicked {
            None => self.plan.table.take_new(),
            Some(message) => {
                self.panics += 1;
                if self.panics == 1 {
                    eprintln!(
                        "traceq: fair queue: the group function panicked: {message}; such keys \
                         join group `{PANICKED_GROUP}`"
                    );
                }
                if let Some(g) = self.fallback {
                    return g;
                }
                self.fallback = Some(next);
                (PANICKED_GROUP.into(), 1)
            }
        };
        let group = Group::new(Some(name), self.quantum(weight), self.quantum(1));
        if self.free_groups.pop().is_some() {
            self.groups[next as usize] = group;
        } else {
            self.groups.push(group);
        }
        next
    }
}
