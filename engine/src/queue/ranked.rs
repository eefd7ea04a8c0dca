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

mod groups;
mod ring;

use super::fairness::{Cost, FairPlan};
use super::keys::NO_SLOT;
use crate::metrics::PriorityLabel;
use groups::{Fair, Group};
use ring::Ring;
use std::collections::BTreeMap;
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

/// No band, no lane.
const NONE: u32 = u32::MAX;
/// Entries of the cache from a priority to its band (a power of two).
const HOT: usize = 8;

/// A slot's links and ranking, beside the slot.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ext {
    prev: u32,
    next: u32,
    /// While queued, the key's lane; in process (and while being queued), its group (0 without
    /// fairness).
    link: u32,
    /// While queued, the key's priority. In process: the priority it was handed out with, until
    /// an add marks it dirty; then the priority it will be queued again with.
    prio: i32,
}

impl Default for Ext {
    fn default() -> Self {
        Self {
            prev: NO_SLOT,
            next: NO_SLOT,
            link: 0,
            prio: DEFAULT_PRIORITY,
        }
    }
}

/// One group's FIFO within one band; empty when `head` is `NO_SLOT`.
#[derive(Debug)]
struct Lane {
    head: u32,
    tail: u32,
    band: u32,
    group: u32,
    in_ring: bool,
}

/// The keys queued at one priority.
#[derive(Debug)]
struct Band {
    prio: i32,
    /// Whether this entry of the slab is in use.
    alive: bool,
    len: u32,
    /// Lanes in turn order (fair queues only).
    ring: Ring,
    /// The band's one lane, without fairness.
    solo: u32,
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
    /// The bands, a slab; `order` finds them by priority, `top` is the highest.
    bands: Vec<Band>,
    free_bands: Vec<u32>,
    order: BTreeMap<i32, u32>,
    top: u32,
    /// Recently used bands by priority, so that most adds find theirs without a tree search.
    hot: [u32; HOT],
    /// `None`: priorities only, every key in group 0.
    fair: Option<Fair<K>>,
    labels: Labels,
}

impl<K> std::fmt::Debug for Ranked<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranked")
            .field("bands", &self.order.len())
            .field("groups", &self.groups_len())
            .field("fair", &self.fair.as_ref().map(|f| &f.plan))
            .finish_non_exhaustive()
    }
}

impl<K> Ranked<K> {
    pub(super) fn new(plan: Option<FairPlan<K>>) -> Self {
        let mut labels = Labels::default();
        labels.observe(DEFAULT_PRIORITY);
        Self {
            ext: Vec::new(),
            lanes: Vec::new(),
            free_lanes: Vec::new(),
            bands: Vec::new(),
            free_bands: Vec::new(),
            order: BTreeMap::new(),
            top: NONE,
            hot: [NONE; HOT],
            fair: plan.map(|plan| Fair {
                by_time: matches!(plan.cost, Cost::HandlerTime { .. }),
                cap: plan.max_in_process,
                plan,
                groups: Vec::new(),
                free_groups: Vec::new(),
                charged: Vec::new(),
                fallback: None,
                panics: 0,
            }),
            labels,
        }
    }

    /// Whether the queue is fair, so that `done` has group counts to settle.
    #[inline]
    pub(super) fn is_fair(&self) -> bool {
        self.fair.is_some()
    }

    /// Whether hand-outs are charged by handler time, so that `done` must say how long a key was
    /// in process.
    pub(super) fn times_handlers(&self) -> bool {
        self.fair
            .as_ref()
            .is_some_and(|f| matches!(f.plan.cost, Cost::HandlerTime { .. }))
    }

    #[inline]
    fn ext_mut(&mut self, at: u32) -> &mut Ext {
        let i = at as usize;
        if self.ext.len() <= i {
            self.ext.resize(i + 1, Ext::default());
        }
        &mut self.ext[i]
    }

    /// The priority of the key at `at`: queued, its own; in process, the one it was handed out
    /// with or (dirty) the one it will be queued again with.
    pub(super) fn prio(&self, at: u32) -> i32 {
        self.ext
            .get(at as usize)
            .map_or(DEFAULT_PRIORITY, |e| e.prio)
    }

    /// Sets the priority a dirty key in process will be queued again with.
    pub(super) fn set_dirty_prio(&mut self, at: u32, prio: i32) {
        self.ext_mut(at).prio = prio;
    }

    /// The name of the group of the key in process at `at`; `None` without fairness.
    pub(super) fn group_name(&self, at: u32) -> Option<&Arc<str>> {
        let fair = self.fair.as_ref()?;
        fair.groups[self.ext[at as usize].link as usize]
            .name
            .as_ref()
    }

    /// Takes over the queue's `slots` slots and its FIFO of keys of the default priority, first
    /// to last (see `keys`' upgrade). Keys in process then are in group 0 at the default priority.
    pub(super) fn adopt(&mut self, slots: usize, fifo: impl Iterator<Item = u32>) {
        self.ext.resize(slots, Ext::default());
        for at in fifo {
            self.push(at);
        }
    }

    /// The group of a key about to enter the queue (0 without fairness); counted as held from
    /// now, so [`enter`](Self::enter) must follow.
    #[inline(always)]
    pub(super) fn group_of(&mut self, key: &K) -> u32 {
        match &mut self.fair {
            None => 0,
            Some(fair) => {
                let g = fair.intern(key);
                fair.groups[g as usize].held += 1;
                g
            }
        }
    }

    /// Queues a key newly held at slot `at`, of `group` (from [`group_of`](Self::group_of)), at
    /// `prio`: it joins the end of its lane.
    #[inline(always)]
    pub(super) fn enter(&mut self, at: u32, group: u32, prio: i32) {
        if self.ext.len() <= at as usize {
            self.ext.resize(at as usize + 1, Ext::default());
        }
        let b = self.band_for(prio);
        let hint = match &self.fair {
            None => self.bands[b as usize].solo,
            Some(fair) => fair.groups[group as usize].hint,
        };
        let l = match self.lanes.get(hint as usize) {
            Some(lane) if lane.band == b => hint,
            _ => self.lane_for(group, b),
        };
        self.link(at, l, b, prio);
    }

    /// Frees group `g`: it has no key queued or in process.
    #[inline(never)]
    fn free_group(&mut self, g: u32) {
        let Some(fair) = &mut self.fair else { return };
        if fair.fallback == Some(g) {
            fair.fallback = None;
        } else {
            fair.plan.table.remove(g);
        }
        fair.groups[g as usize] = Group::new(None, 1, 0);
        fair.free_groups.push(g);
    }

    /// The band of `prio`, made if there is none.
    #[inline(always)]
    fn band_for(&mut self, prio: i32) -> u32 {
        let h = (prio as u32 as usize) & (HOT - 1);
        let b = self.hot[h];
        if b != NONE {
            let band = &self.bands[b as usize];
            if band.alive && band.prio == prio {
                return b;
            }
        }
        self.band_for_cold(prio, h)
    }

    #[inline(never)]
    fn band_for_cold(&mut self, prio: i32, h: usize) -> u32 {
        let b = match self.order.get(&prio) {
            Some(&b) => b,
            None => {
                self.labels.observe(prio);
                let band = Band {
                    prio,
                    alive: true,
                    len: 0,
                    ring: Ring::default(),
                    solo: NONE,
                };
                let b = match self.free_bands.pop() {
                    Some(b) => {
                        let ring = std::mem::take(&mut self.bands[b as usize].ring);
                        self.bands[b as usize] = Band { ring, ..band };
                        b
                    }
                    None => {
                        self.bands.push(band);
                        (self.bands.len() - 1) as u32
                    }
                };
                self.order.insert(prio, b);
                if self.top == NONE || prio > self.bands[self.top as usize].prio {
                    self.top = b;
                }
                b
            }
        };
        self.hot[h] = b;
        b
    }

    /// The lane of `group` in band `b`, made if it has none; a new lane joins the back of the
    /// band's ring unless its group is at its cap.
    #[inline(always)]
    fn lane_for(&mut self, group: u32, b: u32) -> u32 {
        let found = match &mut self.fair {
            None => self.bands[b as usize].solo,
            Some(fair) => {
                let g = &fair.groups[group as usize];
                if g.hint != NONE && self.lanes[g.hint as usize].band == b {
                    return g.hint;
                }
                let lanes = &self.lanes;
                let found = g
                    .lanes
                    .iter()
                    .copied()
                    .find(|&l| lanes[l as usize].band == b)
                    .unwrap_or(NONE);
                if found != NONE {
                    fair.groups[group as usize].hint = found;
                }
                found
            }
        };
        if found != NONE {
            return found;
        }
        self.new_lane(group, b)
    }

    fn new_lane(&mut self, group: u32, b: u32) -> u32 {
        let lane = Lane {
            head: NO_SLOT,
            tail: NO_SLOT,
            band: b,
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
        let band = &mut self.bands[b as usize];
        match &mut self.fair {
            None => band.solo = l,
            Some(fair) => {
                let blocked = fair.blocked(&fair.groups[group as usize]);
                fair.groups[group as usize].lanes.push(l);
                fair.groups[group as usize].hint = l;
                if !blocked {
                    band.ring.push_back(l);
                    self.lanes[l as usize].in_ring = true;
                }
            }
        }
        l
    }

    /// Appends the key at `at` to its lane, by the group (`link`) and priority in `ext`.
    #[inline]
    pub(super) fn push(&mut self, at: u32) {
        let Ext {
            link: group, prio, ..
        } = self.ext[at as usize];
        self.push_as(at, group, prio);
    }

    /// Appends the key at `at` to the lane of `group` at `prio`.
    #[inline(always)]
    fn push_as(&mut self, at: u32, group: u32, prio: i32) {
        let b = self.band_for(prio);
        let l = self.lane_for(group, b);
        self.link(at, l, b, prio);
    }

    /// Appends the key at `at`, of priority `prio`, to lane `l` of band `b`.
    #[inline(always)]
    fn link(&mut self, at: u32, l: u32, b: u32, prio: i32) {
        let Self {
            ext, lanes, bands, ..
        } = self;
        let lane = &mut lanes[l as usize];
        let tail = lane.tail;
        lane.tail = at;
        if tail == NO_SLOT {
            lane.head = at;
        } else {
            ext[tail as usize].next = at;
        }
        ext[at as usize] = Ext {
            prev: tail,
            next: NO_SLOT,
            link: l,
            prio,
        };
        bands[b as usize].len += 1;
    }

    /// Takes the queued key at `at` out of its lane (its `link` is its group again); drops the
    /// lane if it empties, and the band.
    #[inline(always)]
    fn unlink(&mut self, at: u32) {
        let Ext {
            prev, next, link, ..
        } = self.ext[at as usize];
        let lane = &mut self.lanes[link as usize];
        if prev == NO_SLOT {
            lane.head = next;
        } else {
            self.ext[prev as usize].next = next;
        }
        if next == NO_SLOT {
            lane.tail = prev;
        } else {
            self.ext[next as usize].prev = prev;
        }
        let (b, group, emptied) = (lane.band, lane.group, lane.head == NO_SLOT);
        self.ext[at as usize].link = group;
        let band = &mut self.bands[b as usize];
        band.len -= 1;
        if emptied {
            self.drop_lane(link);
        }
        if self.bands[b as usize].len == 0 {
            self.drop_band(b);
        }
    }

    /// Frees an empty lane: out of its band's ring and its group's list.
    fn drop_lane(&mut self, l: u32) {
        let Lane {
            band,
            group,
            in_ring,
            ..
        } = self.lanes[l as usize];
        if in_ring {
            self.leave_ring(l);
        }
        match &mut self.fair {
            Some(fair) => {
                let g = &mut fair.groups[group as usize];
                if let Some(i) = g.lanes.iter().position(|&x| x == l) {
                    g.lanes.swap_remove(i);
                }
                if g.hint == l {
                    g.hint = NONE;
                }
            }
            None => self.bands[band as usize].solo = NONE,
        }
        self.free_lanes.push(l);
    }

    /// Frees an empty band.
    fn drop_band(&mut self, b: u32) {
        let band = &mut self.bands[b as usize];
        debug_assert!(band.ring.is_empty());
        band.alive = false;
        let prio = band.prio;
        self.order.remove(&prio);
        self.free_bands.push(b);
        if self.top == b {
            self.top = self.order.last_key_value().map_or(NONE, |(_, &b)| b);
        }
    }

    /// Takes lane `l` out of its band's ring (at the front when it was just served, so the
    /// search is short).
    fn leave_ring(&mut self, l: u32) {
        let lane = &mut self.lanes[l as usize];
        lane.in_ring = false;
        let ring = &mut self.bands[lane.band as usize].ring;
        ring.remove(l);
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

    /// Hands out the next key: its slot, now in process (its `link` is its group).
    #[inline(always)]
    pub(super) fn pop(&mut self) -> Option<u32> {
        if self.fair.is_none() {
            if self.top == NONE {
                return None;
            }
            let l = self.bands[self.top as usize].solo;
            let at = self.lanes[l as usize].head;
            self.unlink(at);
            return Some(at);
        }
        self.pop_fair()
    }

    /// `pop` for a fair queue, written out for the common case (the lane at the front of the top
    /// band's ring keeps keys after this one): a dozen loads and stores.
    #[inline(always)]
    fn pop_fair(&mut self) -> Option<u32> {
        let mut b = self.top;
        loop {
            if b == NONE {
                return None;
            }
            match self.serve(b) {
                Served::Key(at) => return Some(at),
                Served::NoTurn => b = self.lower(b),
                Served::Broke => self.credit_rounds(b),
            }
        }
    }

    /// Hands out the first key of the lane whose turn it is in band `b`, with every structure
    /// indexed once: the common case of a fair hand-out.
    #[inline(always)]
    fn serve(&mut self, b: u32) -> Served {
        let Self {
            ext,
            lanes,
            bands,
            fair,
            ..
        } = self;
        let Some(fair) = fair.as_mut() else {
            return Served::NoTurn;
        };
        let band = &mut bands[b as usize];
        let mut broke = 0;
        let (l, lane, g) = loop {
            let Some(l) = band.ring.front() else {
                return Served::NoTurn;
            };
            let lane = &mut lanes[l as usize];
            let g = &mut fair.groups[lane.group as usize];
            debug_assert!(
                g.in_process < fair.cap,
                "a group at its cap has left every ring"
            );
            if g.credit > 0 {
                break (l, lane, g);
            }
            // The start of its turn. No overflow: the credit is not positive, the quantum is.
            g.credit += g.quantum;
            if g.credit > 0 {
                break (l, lane, g);
            }
            // Still in debt (handler-time cost): it sits this turn out.
            band.ring.rotate();
            broke += 1;
            if broke >= band.ring.len() {
                return Served::Broke;
            }
        };
        let (at, group) = (lane.head, lane.group);
        let e = &mut ext[at as usize];
        let next = e.next;
        e.link = group;
        lane.head = next;
        let emptied = next == NO_SLOT;
        if emptied {
            lane.tail = NO_SLOT;
        } else {
            ext[next as usize].prev = NO_SLOT;
        }
        g.in_process += 1;
        let charge = if fair.by_time {
            let i = at as usize;
            if fair.charged.len() <= i {
                fair.charged.resize(i + 1, 0);
            }
            fair.charged[i] = g.est;
            g.est
        } else {
            1
        };
        // No overflow: the credit is positive and the charge is not negative.
        g.credit -= charge;
        let blocked = g.in_process >= fair.cap;
        band.len -= 1;
        if !emptied && !blocked && g.credit <= 0 {
            // Its turn is over: to the back of the ring.
            band.ring.rotate();
        }
        if emptied || blocked || band.len == 0 {
            self.after_pop(b, l, group, emptied, blocked);
        }
        Served::Key(at)
    }

    /// The rarer ends of a fair hand-out from lane `l` of band `b`: the lane emptied (it goes,
    /// and a group with nothing left queued loses its leftover credit), the group reached its
    /// cap (it leaves the rings), the band emptied.
    #[inline(never)]
    fn after_pop(&mut self, b: u32, l: u32, group: u32, emptied: bool, blocked: bool) {
        if emptied {
            self.drop_lane(l);
            if let Some(fair) = &mut self.fair {
                let g = &mut fair.groups[group as usize];
                if g.lanes.is_empty() {
                    // Nothing left to serve: no credit carried over (debt is kept while the
                    // group lives).
                    g.credit = g.credit.min(0);
                }
            }
        }
        if blocked {
            self.block(group);
        }
        if self.bands[b as usize].len == 0 {
            self.drop_band(b);
        }
    }

    /// Takes every lane of `group`, now at its cap, out of the rings.
    #[inline(never)]
    fn block(&mut self, group: u32) {
        let mut i = 0;
        while let Some(l) = self
            .fair
            .as_ref()
            .and_then(|f| f.groups[group as usize].lanes.get(i).copied())
        {
            if self.lanes[l as usize].in_ring {
                self.leave_ring(l);
            }
            i += 1;
        }
    }

    /// See the free function [`credit_rounds`].
    #[cold]
    fn credit_rounds(&mut self, b: u32) {
        if let Some(fair) = &mut self.fair {
            credit_rounds(&self.bands[b as usize], &self.lanes, fair);
        }
    }

    /// The band below band `b`, or `NONE`.
    #[inline(never)]
    fn lower(&self, b: u32) -> u32 {
        let prio = self.bands[b as usize].prio;
        self.order
            .range(..prio)
            .next_back()
            .map_or(NONE, |(_, &b)| b)
    }

    /// Settles a key handed out from slot `at`: its group has one key fewer in process, and is
    /// charged the time it took (`worked`, handler-time cost only); unless the key is `dirty`
    /// (to be queued again), a group left with no key goes. Whether keys of a group that was at
    /// its cap can be handed out again.
    #[inline(always)]
    pub(super) fn settle(&mut self, at: u32, dirty: bool, worked: Option<Duration>) -> bool {
        let Some(fair) = &mut self.fair else {
            return false;
        };
        let group = self.ext[at as usize].link;
        let g = &mut fair.groups[group as usize];
        let was_blocked = g.in_process >= fair.cap;
        g.in_process -= 1;
        if let (true, Some(worked)) = (fair.by_time, worked) {
            let actual = i64::try_from(worked.as_nanos()).unwrap_or(i64::MAX);
            let charged = fair.charged.get(at as usize).copied().unwrap_or(0);
            g.credit = g.credit.saturating_add(charged).saturating_sub(actual);
            // Mean of about the last eight keys, weighted to the recent.
            g.est = (g.est - g.est / 8).saturating_add(actual / 8).max(1);
        }
        if !dirty {
            g.held -= 1;
            if g.held == 0 {
                self.free_group(group);
                return false;
            }
        }
        if !was_blocked || g.lanes.is_empty() {
            return false;
        }
        for &l in &g.lanes {
            let lane = &mut self.lanes[l as usize];
            if !lane.in_ring && lane.head != NO_SLOT {
                lane.in_ring = true;
                self.bands[lane.band as usize].ring.push_back(l);
            }
        }
        true
    }

    /// Keys queued per priority label, highest priority first; `other` last.
    pub(super) fn depth_by_priority(&self) -> Vec<(PriorityLabel, u64)> {
        let mut labelled = self.labels.labelled.clone();
        labelled.sort_unstable_by(|a, b| b.cmp(a));
        let depth = |p: &i32| {
            self.order
                .get(p)
                .map_or(0, |&b| u64::from(self.bands[b as usize].len))
        };
        let mut out: Vec<(PriorityLabel, u64)> = labelled
            .iter()
            .map(|p| (PriorityLabel::Priority(*p), depth(p)))
            .collect();
        if self.labels.overflowed {
            let other = self
                .order
                .keys()
                .filter(|p| !labelled.contains(p))
                .map(depth)
                .sum();
            out.push((PriorityLabel::Other, other));
        }
        out
    }

    /// Groups that have keys held (queued or in process); 0 without fairness.
    pub(super) fn groups_len(&self) -> usize {
        self.fair
            .as_ref()
            .map_or(0, |f| f.groups.len() - f.free_groups.len())
    }
}

/// What `serve` did in a band.
enum Served {
    /// Handed out the key at this slot.
    Key(u32),
    /// No lane can be served here: the ring is empty (every group with keys here is at its cap).
    NoTurn,
    /// Every lane of the ring is in debt (see `credit_rounds`).
    Broke,
}

/// Every lane of `band` is in debt: credits each group as many whole turns as the least indebted
/// needs to be out of debt, at once, rather than going round that many times.
fn credit_rounds<K>(band: &Band, lanes: &[Lane], fair: &mut Fair<K>) {
    let need = |g: &Group, q: i64| {
        let owed = 1 - g.credit;
        owed.div_euclid(q) + i64::from(owed.rem_euclid(q) != 0)
    };
    let rounds = band
        .ring
        .iter()
        .map(|l| {
            let g = &fair.groups[lanes[l as usize].group as usize];
            need(g, g.quantum.max(1))
        })
        .min()
        .unwrap_or(1)
        .max(1);
    for l in band.ring.iter() {
        let g = &mut fair.groups[lanes[l as usize].group as usize];
        g.credit = g.credit.saturating_add(rounds.saturating_mul(g.quantum));
    }
}

#[cfg(test)]
mod tests;
