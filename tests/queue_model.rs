//! The queue against a reference model: random sequences of add / add_after / add_rate_limited /
//! add_with (priorities, delays, rate limiting) / get / done / forget / shutdown / time passing,
//! on a plain queue (whose first non-default priority switches it to the order by priority) or a
//! fair one (one to three groups, a weight, a cap on keys in process per group). After every step
//! the queue and the model agree on every observable: what `try_claim` hands out (key, priority
//! and group), `len`, `waiting_len`, `processing_len`, `num_requeues`.

use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;
use traceq_engine::clock::ManualClock;
use traceq_engine::rate_limit::ExponentialBackoff;
use traceq_engine::{AddOptions, Fairness, Queue, QueueConfig};

const KEYS: u8 = 6;
const BASE_MS: u64 = 1;
const MAX_MS: u64 = 16;

#[derive(Debug, Clone)]
enum Op {
    Add(u8),
    AddAfter(u8, u64),
    AddRateLimited(u8),
    AddWith {
        key: u8,
        priority: i32,
        delay_ms: u64,
        rate_limited: bool,
    },
    Get,
    Done(u8),
    Forget(u8),
    Advance(u64),
    Shutdown,
}

fn priority() -> impl Strategy<Value = i32> {
    prop_oneof![3 => Just(0), 1 => Just(-1), 1 => Just(1), 1 => Just(2)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..KEYS).prop_map(Op::Add),
        1 => (0..KEYS, 0..30u64).prop_map(|(k, d)| Op::AddAfter(k, d)),
        1 => (0..KEYS).prop_map(Op::AddRateLimited),
        4 => (0..KEYS, priority(), prop_oneof![3 => Just(0u64), 1 => 1..30u64], any::<bool>())
            .prop_map(|(key, priority, delay_ms, rl)| Op::AddWith {
                key,
                priority,
                delay_ms,
                // Rate-limited adds are rarer, so that keys are not always waiting.
                rate_limited: rl && delay_ms % 2 == 1,
            }),
        5 => Just(Op::Get),
        4 => (0..KEYS).prop_map(Op::Done),
        1 => (0..KEYS).prop_map(Op::Forget),
        2 => (0..20u64).prop_map(Op::Advance),
        1 => Just(Op::Shutdown),
    ]
}

/// How the queue under test is built.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Not fair: one FIFO per priority (and a plain FIFO until the first other priority).
    Plain,
    /// Fair across `groups` groups (key k in group k % groups); group 0 has weight `weight0`,
    /// the others 1; at most `cap` keys of a group in process.
    Fair {
        groups: u8,
        weight0: u32,
        cap: Option<u32>,
    },
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        1 => Just(Mode::Plain),
        2 => (1..=3u8, 0..=3u32, prop_oneof![Just(None), (1..=2u32).prop_map(Some)])
            .prop_map(|(groups, weight0, cap)| Mode::Fair { groups, weight0, cap }),
    ]
}

/// One priority's keys: a FIFO per group, and the groups with keys here in turn order.
#[derive(Default, Debug)]
struct Band {
    ring: VecDeque<u8>,
    lanes: BTreeMap<u8, VecDeque<u8>>,
}

#[derive(Default, Debug)]
struct GroupState {
    credit: i64,
    in_process: u32,
}

/// The semantics, written as plainly as possible.
struct Model {
    mode: Mode,
    now: u64,
    bands: BTreeMap<i32, Band>,
    /// Queued keys and their priority.
    queued: HashMap<u8, i32>,
    /// Keys in process, with the priority to queue them again at when dirty.
    processing: HashMap<u8, Option<i32>>,
    /// key -> (deadline, sequence of the add that set it, priority)
    waiting: HashMap<u8, (u64, u64, i32)>,
    seq: u64,
    requeues: HashMap<u8, u32>,
    groups: HashMap<u8, GroupState>,
    shutdown: bool,
}

impl Model {
    fn new(mode: Mode) -> Self {
        Self {
            mode,
            now: 0,
            bands: BTreeMap::new(),
            queued: HashMap::new(),
            processing: HashMap::new(),
            waiting: HashMap::new(),
            seq: 0,
            requeues: HashMap::new(),
            groups: HashMap::new(),
            shutdown: false,
        }
    }

    fn group_of(&self, k: u8) -> u8 {
        match self.mode {
            Mode::Plain => 0,
            Mode::Fair { groups, .. } => k % groups,
        }
    }

    fn group_name(&self, k: u8) -> Option<String> {
        match self.mode {
            Mode::Plain => None,
            Mode::Fair { .. } => Some(self.group_of(k).to_string()),
        }
    }

    fn weight(&self, g: u8) -> i64 {
        match self.mode {
            Mode::Fair { weight0, .. } if g == 0 => i64::from(weight0.max(1)),
            _ => 1,
        }
    }

    fn blocked(&self, g: u8) -> bool {
        let cap = match self.mode {
            Mode::Fair { cap: Some(cap), .. } => cap,
            _ => u32::MAX,
        };
        self.groups.get(&g).map_or(0, |s| s.in_process) >= cap
    }

    fn has_queued(&self, g: u8) -> bool {
        self.bands.values().any(|b| b.lanes.contains_key(&g))
    }

    /// Appends `k` to its group's FIFO at `p`; a group new to the band joins the back of its
    /// ring, unless the group is at its cap.
    fn push_queued(&mut self, k: u8, p: i32) {
        let g = self.group_of(k);
        let blocked = self.blocked(g);
        self.groups.entry(g).or_default();
        self.queued.insert(k, p);
        let band = self.bands.entry(p).or_default();
        if !band.lanes.contains_key(&g) && !blocked {
            band.ring.push_back(g);
        }
        band.lanes.entry(g).or_default().push_back(k);
    }

    /// Takes queued `k` out of its group's FIFO.
    fn unqueue(&mut self, k: u8) {
        let p = self.queued.remove(&k).expect("queued");
        let g = self.group_of(k);
        let band = self.bands.get_mut(&p).unwrap();
        let lane = band.lanes.get_mut(&g).unwrap();
        lane.retain(|&x| x != k);
        if lane.is_empty() {
            band.lanes.remove(&g);
            band.ring.retain(|&x| x != g);
        }
        if band.lanes.is_empty() {
            self.bands.remove(&p);
        }
    }

    /// An add of priority `p`: every pending instance of the key (queued, dirty, waiting) takes
    /// the highest of their priorities and `p`; a queued key raised joins the end of its level.
    fn share(&mut self, k: u8, p: i32) -> i32 {
        let mut shared = p;
        if let Some(w) = self.waiting.get(&k) {
            shared = shared.max(w.2);
        }
        if let Some(&q) = self.queued.get(&k) {
            shared = shared.max(q);
        }
        if let Some(Some(d)) = self.processing.get(&k) {
            shared = shared.max(*d);
        }
        if let Some(w) = self.waiting.get_mut(&k) {
            w.2 = shared;
        }
        if let Some(&q) = self.queued.get(&k) {
            if shared > q {
                self.unqueue(k);
                self.push_queued(k, shared);
            }
        }
        if let Some(Some(d)) = self.processing.get_mut(&k) {
            *d = shared;
        }
        shared
    }

    fn promote(&mut self) {
        if self.shutdown {
            return;
        }
        let mut due: Vec<_> = self
            .waiting
            .iter()
            .filter(|(_, (at, _, _))| *at <= self.now)
            .map(|(k, (at, seq, p))| (*at, *seq, *k, *p))
            .collect();
        due.sort_unstable();
        for (_, _, k, p) in due {
            self.waiting.remove(&k);
            self.add_now(k, p);
        }
    }

    fn add_now(&mut self, k: u8, p: i32) {
        let p = self.share(k, p);
        if self.queued.contains_key(&k) {
        } else if let Some(dirty) = self.processing.get_mut(&k) {
            *dirty = Some(p);
        } else {
            self.push_queued(k, p);
        }
    }

    fn add(&mut self, k: u8, p: i32) {
        self.promote();
        if !self.shutdown {
            self.add_now(k, p);
        }
    }

    fn add_after(&mut self, k: u8, ms: u64, p: i32) {
        if ms == 0 {
            return self.add(k, p);
        }
        self.promote();
        if self.shutdown {
            return;
        }
        self.schedule(k, ms, p);
    }

    fn schedule(&mut self, k: u8, ms: u64, p: i32) {
        let p = self.share(k, p);
        let at = self.now + ms;
        if self.waiting.get(&k).is_some_and(|(old, _, _)| *old <= at) {
            return;
        }
        self.seq += 1;
        self.waiting.insert(k, (at, self.seq, p));
    }

    fn add_rate_limited(&mut self, k: u8, cap_ms: u64, p: i32) {
        self.promote();
        if self.shutdown {
            return;
        }
        if self.waiting.contains_key(&k) || self.queued.contains_key(&k) {
            self.share(k, p);
            return;
        }
        let before = self.requeues.get(&k).copied().unwrap_or(0);
        self.requeues.insert(k, before + 1);
        let mut delay = (BASE_MS << before.min(32)).min(MAX_MS);
        if cap_ms > 0 {
            delay = delay.min(cap_ms);
        }
        self.schedule(k, delay, p);
    }

    /// Hands out the next key: in the highest band whose ring is not empty, the first key of the
    /// group at the front, once it has credit (its weight per turn); a group out of credit goes
    /// to the back, a group at its cap leaves every ring.
    fn get(&mut self) -> Option<(u8, i32, Option<String>)> {
        self.promote();
        if self.shutdown {
            return None;
        }
        let prios: Vec<i32> = self.bands.keys().rev().copied().collect();
        for p in prios {
            let Some(&g) = self.bands[&p].ring.front() else {
                continue;
            };
            let weight = self.weight(g);
            let state = self.groups.get_mut(&g).unwrap();
            if state.credit <= 0 {
                state.credit += weight;
            }
            state.credit -= 1;
            state.in_process += 1;
            let credit = state.credit;
            let band = self.bands.get_mut(&p).unwrap();
            let lane = band.lanes.get_mut(&g).unwrap();
            let k = lane.pop_front().unwrap();
            let emptied = lane.is_empty();
            if emptied {
                band.lanes.remove(&g);
                band.ring.pop_front();
            }
            self.queued.remove(&k);
            self.processing.insert(k, None);
            if emptied && !self.has_queued(g) {
                let state = self.groups.get_mut(&g).unwrap();
                state.credit = state.credit.min(0);
            }
            let blocked = self.blocked(g);
            let band = self.bands.get_mut(&p).unwrap();
            if blocked {
                for band in self.bands.values_mut() {
                    band.ring.retain(|&x| x != g);
                }
            } else if !emptied && credit <= 0 {
                band.ring.rotate_left(1);
            }
            if self.bands.get(&p).is_some_and(|b| b.lanes.is_empty()) {
                self.bands.remove(&p);
            }
            return Some((k, p, self.group_name(k)));
        }
        None
    }

    fn done(&mut self, k: u8) {
        self.promote();
        let Some(dirty) = self.processing.remove(&k) else {
            return;
        };
        let g = self.group_of(k);
        let was_blocked = self.blocked(g);
        self.groups.get_mut(&g).unwrap().in_process -= 1;
        if was_blocked {
            for band in self.bands.values_mut() {
                if band.lanes.contains_key(&g) && !band.ring.contains(&g) {
                    band.ring.push_back(g);
                }
            }
        }
        if let Some(p) = dirty {
            self.push_queued(k, p);
        }
        let held = self.has_queued(g) || self.processing.keys().any(|&x| self.group_of(x) == g);
        if !held {
            self.groups.remove(&g);
        }
    }
}

fn queue(mode: Mode, clock: &ManualClock) -> Queue<u8> {
    let config = QueueConfig::default()
        .with_clock(Arc::new(clock.clone()))
        .with_rate_limiter(
            ExponentialBackoff::new(
                Duration::from_millis(BASE_MS),
                Duration::from_millis(MAX_MS),
            )
            .unwrap(),
        );
    let config =
        match mode {
            Mode::Plain => config,
            Mode::Fair {
                groups,
                weight0,
                cap,
            } => {
                let mut fairness = Fairness::by(move |k: &u8| k % groups)
                    .with_weight(move |g: &u8| if *g == 0 { weight0 } else { 1 });
                if let Some(cap) = cap {
                    fairness =
                        fairness.with_max_in_process(NonZeroUsize::new(cap as usize).unwrap());
                }
                config.with_fairness(fairness)
            }
        };
    Queue::with_config(config)
}

fn run(mode: Mode, ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let queue = queue(mode, &clock);
    let mut model = Model::new(mode);
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Add(k) => {
                queue.add(k);
                model.add(k, 0);
            }
            Op::AddAfter(k, ms) => {
                queue.add_after(k, Duration::from_millis(ms));
                model.add_after(k, ms, 0);
            }
            Op::AddRateLimited(k) => {
                queue.add_rate_limited(k);
                model.add_rate_limited(k, 0, 0);
            }
            Op::AddWith {
                key,
                priority,
                delay_ms,
                rate_limited,
            } => {
                let options = AddOptions::new()
                    .with_priority(priority)
                    .with_delay(Duration::from_millis(delay_ms))
                    .with_rate_limited(rate_limited);
                queue.add_with(key, options);
                if rate_limited {
                    model.add_rate_limited(key, delay_ms, priority);
                } else {
                    model.add_after(key, delay_ms, priority);
                }
            }
            Op::Get => {
                let got = queue
                    .try_claim()
                    .map(|c| (c.key, c.priority, c.group.map(|g| g.to_string())));
                prop_assert_eq!(got, model.get(), "get at step {} ({:?})", step, op);
            }
            Op::Done(k) => {
                queue.done(&k);
                model.done(k);
            }
            Op::Forget(k) => {
                queue.forget(&k);
                model.requeues.remove(&k);
            }
            Op::Advance(ms) => {
                clock.advance(Duration::from_millis(ms));
                model.now += ms;
            }
            Op::Shutdown => {
                queue.shutdown();
                model.promote();
                model.shutdown = true;
            }
        }
        model.promote();
        prop_assert_eq!(
            queue.len(),
            model.queued.len(),
            "len after step {} ({:?})",
            step,
            op
        );
        prop_assert_eq!(
            queue.waiting_len(),
            model.waiting.len(),
            "waiting_len after step {}",
            step
        );
        prop_assert_eq!(queue.processing_len(), model.processing.len());
        for k in 0..KEYS {
            prop_assert_eq!(
                queue.num_requeues(&k),
                model.requeues.get(&k).copied().unwrap_or(0),
                "num_requeues({}) after step {}",
                k,
                step
            );
        }
    }
    // Drain what is left: the queue hands out exactly what the model does, in order.
    let mut rest = Vec::new();
    while let Some(c) = queue.try_claim() {
        rest.push((c.key, c.priority, c.group.map(|g| g.to_string())));
    }
    let expected: Vec<_> = std::iter::from_fn(|| model.get()).collect();
    prop_assert_eq!(rest, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn queue_should_agree_with_the_model_on_every_observable(
        mode in mode(),
        ops in proptest::collection::vec(op(), 1..120)
    ) {
        run(mode, &ops)?;
    }
}
