//! The order of queued keys once a queue has priorities or is fair: priority bands, and within a
//! band one FIFO (a *lane*) per group, the groups taking turns.
//!
//! Why a separate order and not the plain FIFO with a comparison: the plain queue's add → get →
//! done cycle is a few dozen nanoseconds, and a tree or heap ordered by (priority, arrival) would
//! double it. So a queue starts with the FIFO of `keys` and switches to this order, once and for
//! good, when the first key with a priority other than [`DEFAULT_PRIORITY`] arrives (or at
//! construction, for a fair queue). Until then nothing here runs.
//!
//! How: each priority that has keys queued is a *band*; each group that has keys queued in a band
//! has a *lane* there, a FIFO linked through `ext` (the per-slot links, beside the slots). A band
//! keeps a *ring* of its lanes, in turn order. Handing out takes the highest band whose ring is not
//! empty and the lane at the front of its ring:
//! - a lane whose group has no credit left is credited the group's quantum (its weight, or its
//!   weight × the time quantum); if that is still not positive, the lane goes to the back;
//! - the front lane's first key is handed out, and the group is charged for it (1, or its estimated
//!   handler time); a group out of credit goes to the back of the ring;
//! - a group at its cap of keys in process leaves every ring until one of its keys is done, then
//!   joins the back;
//! - a lane that empties leaves its ring; a new lane joins at the back.
//!
//! So with F lanes in a band's ring, a lane that joins waits at most F - 1 hand-outs (with
//! weights: the sum of the other groups' weights) before it is served. Without fairness every key
//! is in group 0, each band has one lane, and this is a FIFO per priority.
//!
//! Raising a queued key's priority unlinks it from its lane (hence the back links) and appends it
//! to the lane of its new band: it joins the end of its new level.

use super::fairness::{intern_caught, Cost, FairPlan, Interned, PANICKED_GROUP};
use super::keys::NO_SLOT;
use crate::metrics::PriorityLabel;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// The priority of a plain add: what [`AddOptions::default`](crate::AddOptions) carries.
pub const DEFAULT_PRIORITY: i32 = 0;
/// A priority for adds that can wait behind everything else: the initial list and the periodic
/// resyncs of a controller (controller-runtime's `handler.LowPriority`), so that a changed object
/// is not queued behind thousands of unchanged ones after a restart.
pub const LOW_PRIORITY: i32 = -100;
/// Distinct priorities that get their own `priority` label on `workqueue_depth`; keys of any
/// further priority are counted under `priority="other"` (as controller-runtime caps it).
pub const MAX_PRIORITY_LABELS: usize = 25;

/// No group: what a key of a queue without fairness reports.
pub(super) const NO_GROUP: u32 = u32::MAX;

/// A slot's links and ranking, beside the slot.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ext {
    prev: u32,
    next: u32,
    /// The key's group; 0 without fairness.
    group: u32,
    /// While queued, the key's priority. While in process: the priority a dirty key will be
    /// queued again with (set by the add that marked it dirty).
    prio: i32,
}

impl Default for Ext {
    fn default() -> Self {
        Self {
            prev: NO_SLOT,
            next: NO_SLOT,
            group: 0,
            prio: DEFAULT_PRIORITY,
        }
    }
}

/// One group's FIFO within one band.
#[derive(Debug)]
struct Lane {
    head: u32,
    tail: u32,
    len: u32,
    prio: i32,
    group: u32,
    in_ring: bool,
}

#[derive(Debug, Default)]
struct Band {
    /// Keys queued at this priority.
    len: usize,
    /// Lanes in turn order (fair queues only).
    ring: VecDeque<u32>,
    /// The band's one lane, without fairness.
    solo: u32,
}

#[derive(Debug)]
struct Group {
    /// Slots of this group's keys (queued or in process).
    refs: u32,
    queued: u32,
    in_process: u32,
    /// Hand-outs (or nanoseconds of handler time) the group may still take this turn.
    credit: i64,
    /// Estimated handler time per key, nanoseconds (handler-time cost only).
    est: i64,
    weight: u32,
    /// The group's lanes, one per band it has keys queued in.
    lanes: Vec<u32>,
    name: Option<Arc<str>>,
}

impl Group {
    fn new(name: Option<Arc<str>>, weight: u32, est: i64) -> Self {
        Self {
            refs: 0,
            queued: 0,
            in_process: 0,
            credit: 0,
            est,
            weight,
            lanes: Vec::new(),
            name,
        }
    }
}

/// Fair scheduling's state: the group table and the settings.
struct Fair<K> {
    plan: FairPlan<K>,
    /// What each slot's key was charged at hand-out (handler-time cost only).
    charged: Vec<i64>,
    /// The group of keys whose group function panicked, while it has keys.
    fallback: Option<u32>,
    /// Panics of the group function, reported once.
    panics: u64,
}

impl<K> Fair<K> {
    fn quantum(&self, weight: u32) -> i64 {
        match self.plan.cost {
            Cost::HandOuts => i64::from(weight),
            Cost::HandlerTime { quantum_ns } => quantum_ns.saturating_mul(i64::from(weight)),
        }
    }

    fn blocked(&self, g: &Group) -> bool {
        g.in_process >= self.plan.max_in_process
    }
}

/// Which priorities have their own label on the depth metric.
#[derive(Debug, Default)]
struct Labels {
    labelled: Vec<i32>,
    /// Whether a priority past the cap was seen: `other` is reported from then on.
    overflowed: bool,
}

impl Labels {
    fn observe(&mut self, prio: i32) {
        if self.labelled.contains(&prio) {
        } else if self.labelled.len() < MAX_PRIORITY_LABELS {
            self.labelled.push(prio);
        } else {
            self.overflowed = true;
        }
    }
}

pub(super) struct Ranked<K> {
    ext: Vec<Ext>,
    lanes: Vec<Lane>,
    free_lanes: Vec<u32>,
    bands: BTreeMap<i32, Band>,
    groups: Vec<Group>,
    free_groups: Vec<u32>,
    /// `None`: priorities only, every key in group 0.
    fair: Option<Fair<K>>,
    labels: Labels,
}

impl<K> std::fmt::Debug for Ranked<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranked")
            .field("bands", &self.bands.len())
            .field("groups", &(self.groups.len() - self.free_groups.len()))
            .field("fair", &self.fair.as_ref().map(|f| &f.plan))
            .finish_non_exhaustive()
    }
}

impl<K> Ranked<K> {
    pub(super) fn new(plan: Option<FairPlan<K>>) -> Self {
        let mut labels = Labels::default();
        labels.observe(DEFAULT_PRIORITY);
        let mut ranked = Self {
            ext: Vec::new(),
            lanes: Vec::new(),
            free_lanes: Vec::new(),
            bands: BTreeMap::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            fair: plan.map(|plan| Fair {
                plan,
                charged: Vec::new(),
                fallback: None,
                panics: 0,
            }),
            labels,
        };
        if ranked.fair.is_none() {
            // Group 0 holds every key and lives as long as the queue.
            ranked.groups.push(Group::new(None, 1, 0));
        }
        ranked
    }

    /// Whether hand-outs are charged by handler time, so that `done` must say how long a key was
    /// in process.
    pub(super) fn times_handlers(&self) -> bool {
        self.fair
            .as_ref()
            .is_some_and(|f| matches!(f.plan.cost, Cost::HandlerTime { .. }))
    }

    fn ext_mut(&mut self, at: u32) -> &mut Ext {
        let i = at as usize;
        if self.ext.len() <= i {
            self.ext.resize(i + 1, Ext::default());
        }
        &mut self.ext[i]
    }

    /// The priority of the key at `at`: queued, its own; in process and dirty, the one it will
    /// be queued again with.
    pub(super) fn prio(&self, at: u32) -> i32 {
        self.ext
            .get(at as usize)
            .map_or(DEFAULT_PRIORITY, |e| e.prio)
    }

    /// Sets the priority a dirty key in process will be queued again with.
    pub(super) fn set_dirty_prio(&mut self, at: u32, prio: i32) {
        self.ext_mut(at).prio = prio;
    }

    /// The group of the key at `at`: its index and name (`NO_GROUP` and `None` without
    /// fairness).
    pub(super) fn group(&self, at: u32) -> (u32, Option<&Arc<str>>) {
        if self.fair.is_none() {
            return (NO_GROUP, None);
        }
        let g = self.ext[at as usize].group;
        (g, self.groups[g as usize].name.as_ref())
    }

    /// Takes over the queue's `slots` slots and its FIFO of keys of the default priority, first
    /// to last (see `keys`' upgrade). Keys in process then are in group 0 at the default priority.
    pub(super) fn adopt(&mut self, slots: usize, fifo: impl Iterator<Item = u32>) {
        self.ext.resize(slots, Ext::default());
        for at in fifo {
            self.push(at);
        }
    }

    /// A key newly held at slot `at`, to be queued at `prio`: its group is looked up (with
    /// fairness). The caller then queues it with [`push`](Self::push).
    pub(super) fn enter(&mut self, key: &K, at: u32, prio: i32) {
        let group = self.intern(key);
        if self.fair.is_some() {
            self.groups[group as usize].refs += 1;
        }
        *self.ext_mut(at) = Ext {
            prev: NO_SLOT,
            next: NO_SLOT,
            group,
            prio,
        };
    }

    /// The group of a key entering the queue; 0 without fairness.
    fn intern(&mut self, key: &K) -> u32 {
        let Some(fair) = &mut self.fair else { return 0 };
        let next = self
            .free_groups
            .last()
            .copied()
            .unwrap_or(self.groups.len() as u32);
        let (name, weight) = match intern_caught(&mut *fair.plan.table, key, next) {
            Ok(Interned::Known(g)) => return g,
            Ok(Interned::New { name, weight }) => (name, weight),
            Err(message) => {
                fair.panics += 1;
                if fair.panics == 1 {
                    eprintln!(
                        "traceq: fair queue: the group function panicked: {message}; such keys \
                         join group `{PANICKED_GROUP}`"
                    );
                }
                if let Some(g) = fair.fallback {
                    return g;
                }
                fair.fallback = Some(next);
                (PANICKED_GROUP.into(), 1)
            }
        };
        let est = fair.quantum(1);
        let group = Group::new(Some(name), weight, est);
        if self.free_groups.pop().is_some() {
            self.groups[next as usize] = group;
        } else {
            self.groups.push(group);
        }
        next
    }

    /// Lets go of the slot at `at`: its key left the queue. Frees its group once no key of it is
    /// held.
    pub(super) fn leave(&mut self, at: u32) {
        let Some(fair) = &mut self.fair else { return };
        let g = self.ext[at as usize].group;
        let group = &mut self.groups[g as usize];
        group.refs -= 1;
        if group.refs > 0 {
            return;
        }
        debug_assert!(group.lanes.is_empty() && group.in_process == 0);
        if fair.fallback == Some(g) {
            fair.fallback = None;
        } else {
            fair.plan.table.remove(g);
        }
        *group = Group::new(None, 1, 0);
        self.free_groups.push(g);
    }

    /// The lane of `group` in band `prio`, if it has one.
    fn lane_of(&self, group: u32, prio: i32) -> Option<u32> {
        if self.fair.is_none() {
            return self.bands.get(&prio).map(|b| b.solo);
        }
        let lanes = &self.lanes;
        self.groups[group as usize]
            .lanes
            .iter()
            .copied()
            .find(|&l| lanes[l as usize].prio == prio)
    }

    /// The lane of `group` in band `prio`, made (and the band too) if it has none; a new lane
    /// joins the back of its band's ring unless its group is at its cap.
    fn lane_for(&mut self, group: u32, prio: i32) -> u32 {
        if let Some(l) = self.lane_of(group, prio) {
            return l;
        }
        let lane = Lane {
            head: NO_SLOT,
            tail: NO_SLOT,
            len: 0,
            prio,
            group,
            in_ring: false,
        };
        let l = match self.free_lanes.pop() {
            Some(l) => {
                self.lanes[l as usize] = lane;
                l
            }
            None => {
                self.lanes.push(lane);
                (self.lanes.len() - 1) as u32
            }
        };
        let labels = &mut self.labels;
        let band = self.bands.entry(prio).or_insert_with(|| {
            labels.observe(prio);
            Band::default()
        });
        match &self.fair {
            None => band.solo = l,
            Some(fair) => {
                let g = &mut self.groups[group as usize];
                g.lanes.push(l);
                if !fair.blocked(g) {
                    band.ring.push_back(l);
                    self.lanes[l as usize].in_ring = true;
                }
            }
        }
        l
    }

    /// Appends the key at `at` to its lane, by its group and priority in `ext`.
    pub(super) fn push(&mut self, at: u32) {
        let Ext { group, prio, .. } = self.ext[at as usize];
        let l = self.lane_for(group, prio);
        let lane = &mut self.lanes[l as usize];
        let tail = lane.tail;
        lane.tail = at;
        if tail == NO_SLOT {
            lane.head = at;
        }
        lane.len += 1;
        if tail != NO_SLOT {
            self.ext[tail as usize].next = at;
        }
        let e = &mut self.ext[at as usize];
        e.prev = tail;
        e.next = NO_SLOT;
        self.groups[group as usize].queued += 1;
        if let Some(band) = self.bands.get_mut(&prio) {
            band.len += 1;
        }
    }

    /// Takes the queued key at `at` out of its lane; drops the lane if it empties, and the band.
    fn unlink(&mut self, at: u32) {
        let Ext {
            prev,
            next,
            group,
            prio,
        } = self.ext[at as usize];
        let Some(l) = self.lane_of(group, prio) else {
            unreachable!("a queued key is in its lane")
        };
        if prev == NO_SLOT {
            self.lanes[l as usize].head = next;
        } else {
            self.ext[prev as usize].next = next;
        }
        if next == NO_SLOT {
            self.lanes[l as usize].tail = prev;
        } else {
            self.ext[next as usize].prev = prev;
        }
        let lane = &mut self.lanes[l as usize];
        lane.len -= 1;
        let emptied = lane.len == 0;
        self.groups[group as usize].queued -= 1;
        let band = self.bands.get_mut(&prio).expect("a lane's band exists");
        band.len -= 1;
        if emptied {
            self.drop_lane(l);
        }
        if self.bands.get(&prio).is_some_and(|b| b.len == 0) {
            self.bands.remove(&prio);
        }
    }

    /// Frees an empty lane: out of its band's ring and its group's list.
    fn drop_lane(&mut self, l: u32) {
        let Lane {
            prio,
            group,
            in_ring,
            ..
        } = self.lanes[l as usize];
        if self.fair.is_some() {
            if in_ring {
                self.leave_ring(l);
            }
            let lanes = &mut self.groups[group as usize].lanes;
            if let Some(i) = lanes.iter().position(|&x| x == l) {
                lanes.swap_remove(i);
            }
        } else if let Some(band) = self.bands.get_mut(&prio) {
            band.solo = NO_SLOT;
        }
        self.free_lanes.push(l);
    }

    /// Takes lane `l` out of its band's ring (at the front when it was just served, so the
    /// search is short).
    fn leave_ring(&mut self, l: u32) {
        let lane = &mut self.lanes[l as usize];
        lane.in_ring = false;
        if let Some(band) = self.bands.get_mut(&lane.prio) {
            if let Some(i) = band.ring.iter().position(|&x| x == l) {
                band.ring.remove(i);
            }
        }
    }

    /// Raises the queued key at `at` to `prio` if that is higher: it joins the end of its new
    /// level.
    pub(super) fn raise(&mut self, at: u32, prio: i32) {
        if prio <= self.ext[at as usize].prio {
            return;
        }
        self.unlink(at);
        self.ext[at as usize].prio = prio;
        self.push(at);
    }

    /// Hands out the next key: its slot, now counted in process.
    pub(super) fn pop(&mut self) -> Option<u32> {
        if self.fair.is_none() {
            let (_, band) = self.bands.last_key_value()?;
            let at = self.lanes[band.solo as usize].head;
            self.unlink(at);
            return Some(at);
        }
        self.pop_fair()
    }

    fn pop_fair(&mut self) -> Option<u32> {
        let l = {
            let Self {
                bands,
                lanes,
                groups,
                fair,
                ..
            } = self;
            let fair = fair.as_ref()?;
            bands
                .values_mut()
                .rev()
                .find_map(|band| next_turn(band, lanes, groups, fair))?
        };
        let Lane {
            head: at, group, ..
        } = self.lanes[l as usize];
        self.unlink(at);
        let Some(fair) = &mut self.fair else {
            unreachable!("fair queues only")
        };
        let g = &mut self.groups[group as usize];
        g.in_process += 1;
        let charge = match fair.plan.cost {
            Cost::HandOuts => 1,
            Cost::HandlerTime { .. } => {
                let i = at as usize;
                if fair.charged.len() <= i {
                    fair.charged.resize(i + 1, 0);
                }
                fair.charged[i] = g.est;
                g.est
            }
        };
        g.credit = g.credit.saturating_sub(charge);
        if g.queued == 0 {
            // Nothing left to serve: no credit carried over (debt is kept while the group lives).
            g.credit = g.credit.min(0);
        }
        let blocked = fair.blocked(g);
        let spent = g.credit <= 0;
        if blocked {
            for i in 0..self.groups[group as usize].lanes.len() {
                let l = self.groups[group as usize].lanes[i];
                if self.lanes[l as usize].in_ring {
                    self.leave_ring(l);
                }
            }
        } else if spent && self.lanes[l as usize].in_ring && self.lanes[l as usize].head != NO_SLOT
        {
            // Its turn is over: to the back of the ring.
            let prio = self.lanes[l as usize].prio;
            if let Some(band) = self.bands.get_mut(&prio) {
                debug_assert_eq!(band.ring.front(), Some(&l));
                band.ring.rotate_left(1);
            }
        }
        Some(at)
    }

    /// Settles a key handed out from slot `at`: its group has one key fewer in process, and is
    /// charged the time it took (`worked`, handler-time cost only). Whether keys of a group that
    /// was at its cap can be handed out again.
    pub(super) fn settle(&mut self, at: u32, worked: Option<Duration>) -> bool {
        let Some(fair) = &mut self.fair else {
            return false;
        };
        let group = self.ext[at as usize].group;
        let g = &mut self.groups[group as usize];
        let was_blocked = fair.blocked(g);
        g.in_process -= 1;
        if let (Cost::HandlerTime { .. }, Some(worked)) = (fair.plan.cost, worked) {
            let actual = i64::try_from(worked.as_nanos()).unwrap_or(i64::MAX);
            let charged = fair.charged.get(at as usize).copied().unwrap_or(0);
            g.credit = g.credit.saturating_add(charged).saturating_sub(actual);
            // Mean of about the last eight keys, weighted to the recent.
            g.est = g.est - g.est / 8 + actual / 8;
            g.est = g.est.max(1);
        }
        if !was_blocked || fair.blocked(g) || g.queued == 0 {
            return false;
        }
        for i in 0..g.lanes.len() {
            let l = g.lanes[i];
            let lane = &mut self.lanes[l as usize];
            if !lane.in_ring && lane.len > 0 {
                lane.in_ring = true;
                if let Some(band) = self.bands.get_mut(&lane.prio) {
                    band.ring.push_back(l);
                }
            }
        }
        true
    }

    /// Keys queued per priority label, highest priority first; `other` last.
    pub(super) fn depth_by_priority(&self) -> Vec<(PriorityLabel, u64)> {
        let mut labelled = self.labels.labelled.clone();
        labelled.sort_unstable_by(|a, b| b.cmp(a));
        let mut out: Vec<(PriorityLabel, u64)> = labelled
            .iter()
            .map(|&p| {
                let depth = self.bands.get(&p).map_or(0, |b| b.len as u64);
                (PriorityLabel::Priority(p), depth)
            })
            .collect();
        if self.labels.overflowed {
            let other = self
                .bands
                .iter()
                .filter(|(p, _)| !labelled.contains(p))
                .map(|(_, b)| b.len as u64)
                .sum();
            out.push((PriorityLabel::Other, other));
        }
        out
    }

    /// Groups that have keys held (queued or in process).
    pub(super) fn groups_len(&self) -> usize {
        if self.fair.is_none() {
            return 0;
        }
        self.groups.len() - self.free_groups.len()
    }
}

/// The lane whose turn it is in `band`: the front of its ring, once it has credit. Lanes that
/// cannot get credit this turn go to the back. `None` when the ring is empty (no keys, or every
/// group with keys here is at its cap).
fn next_turn<K>(
    band: &mut Band,
    lanes: &[Lane],
    groups: &mut [Group],
    fair: &Fair<K>,
) -> Option<u32> {
    let mut broke = 0;
    loop {
        let &l = band.ring.front()?;
        let g = &mut groups[lanes[l as usize].group as usize];
        debug_assert!(!fair.blocked(g), "a group at its cap has left every ring");
        if g.credit > 0 {
            return Some(l);
        }
        // The start of its turn.
        g.credit = g.credit.saturating_add(fair.quantum(g.weight));
        if g.credit > 0 {
            return Some(l);
        }
        // Still in debt (handler-time cost): it sits this turn out.
        band.ring.rotate_left(1);
        broke += 1;
        if broke >= band.ring.len() {
            // Every lane is in debt: credit each as many whole turns as the least indebted needs,
            // at once, rather than going round that many times.
            let need = |g: &Group| {
                let q = fair.quantum(g.weight).max(1);
                (1 - g.credit).div_euclid(q) + i64::from((1 - g.credit).rem_euclid(q) != 0)
            };
            let rounds = band
                .ring
                .iter()
                .map(|&l| need(&groups[lanes[l as usize].group as usize]))
                .min()
                .unwrap_or(1)
                .max(1);
            for &l in &band.ring {
                let g = &mut groups[lanes[l as usize].group as usize];
                g.credit = g
                    .credit
                    .saturating_add(rounds.saturating_mul(fair.quantum(g.weight)));
            }
            broke = 0;
        }
    }
}

#[cfg(test)]
mod tests;
