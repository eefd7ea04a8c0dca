//! The queue against a reference model: random sequences of add / add_after / add_rate_limited /
//! get / done / forget / shutdown / time passing, and after every step the queue and the model
//! agree on every observable (what `try_get` hands out, `len`, `waiting_len`, `num_requeues`).

use proptest::prelude::*;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use traceq_engine::clock::ManualClock;
use traceq_engine::rate_limit::ExponentialBackoff;
use traceq_engine::{Queue, QueueConfig};

const KEYS: u8 = 6;
const BASE_MS: u64 = 1;
const MAX_MS: u64 = 16;

#[derive(Debug, Clone)]
enum Op {
    Add(u8),
    AddAfter(u8, u64),
    AddRateLimited(u8),
    Get,
    Done(u8),
    Forget(u8),
    Advance(u64),
    Shutdown,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS).prop_map(Op::Add),
        2 => (0..KEYS, 0..30u64).prop_map(|(k, d)| Op::AddAfter(k, d)),
        2 => (0..KEYS).prop_map(Op::AddRateLimited),
        4 => Just(Op::Get),
        3 => (0..KEYS).prop_map(Op::Done),
        1 => (0..KEYS).prop_map(Op::Forget),
        2 => (0..20u64).prop_map(Op::Advance),
        1 => Just(Op::Shutdown),
    ]
}

/// The semantics, written as plainly as possible.
#[derive(Default)]
struct Model {
    now: u64,
    fifo: VecDeque<u8>,
    processing: HashSet<u8>,
    dirty: HashSet<u8>,
    /// key -> (deadline, sequence of the add that set it)
    waiting: HashMap<u8, (u64, u64)>,
    seq: u64,
    requeues: HashMap<u8, u32>,
    shutdown: bool,
}

impl Model {
    fn promote(&mut self) {
        if self.shutdown {
            return;
        }
        let mut due: Vec<_> = self
            .waiting
            .iter()
            .filter(|(_, (at, _))| *at <= self.now)
            .map(|(k, (at, seq))| (*at, *seq, *k))
            .collect();
        due.sort_unstable();
        for (_, _, k) in due {
            self.waiting.remove(&k);
            self.add_now(k);
        }
    }

    fn add_now(&mut self, k: u8) {
        if self.fifo.contains(&k) {
        } else if self.processing.contains(&k) {
            self.dirty.insert(k);
        } else {
            self.fifo.push_back(k);
        }
    }

    fn add(&mut self, k: u8) {
        self.promote();
        if !self.shutdown {
            self.add_now(k);
        }
    }

    fn add_after(&mut self, k: u8, ms: u64) {
        if ms == 0 {
            return self.add(k);
        }
        self.promote();
        if self.shutdown {
            return;
        }
        let at = self.now + ms;
        if self.waiting.get(&k).is_some_and(|(old, _)| *old <= at) {
            return;
        }
        self.seq += 1;
        self.waiting.insert(k, (at, self.seq));
    }

    fn add_rate_limited(&mut self, k: u8) {
        self.promote();
        if self.shutdown || self.waiting.contains_key(&k) || self.fifo.contains(&k) {
            return;
        }
        let before = self.requeues.get(&k).copied().unwrap_or(0);
        self.requeues.insert(k, before + 1);
        let delay = (BASE_MS << before.min(32)).min(MAX_MS);
        self.add_after(k, delay);
    }

    fn get(&mut self) -> Option<u8> {
        self.promote();
        if self.shutdown {
            return None;
        }
        let k = self.fifo.pop_front()?;
        self.processing.insert(k);
        Some(k)
    }

    fn done(&mut self, k: u8) {
        self.promote();
        if self.processing.remove(&k) && self.dirty.remove(&k) {
            self.fifo.push_back(k);
        }
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let queue = Queue::with_config(
        QueueConfig::default()
            .with_clock(Arc::new(clock.clone()))
            .with_rate_limiter(
                ExponentialBackoff::new(
                    Duration::from_millis(BASE_MS),
                    Duration::from_millis(MAX_MS),
                )
                .unwrap(),
            ),
    );
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Add(k) => {
                queue.add(k);
                model.add(k);
            }
            Op::AddAfter(k, ms) => {
                queue.add_after(k, Duration::from_millis(ms));
                model.add_after(k, ms);
            }
            Op::AddRateLimited(k) => {
                queue.add_rate_limited(k);
                model.add_rate_limited(k);
            }
            Op::Get => {
                let got = queue.try_get();
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
            model.fifo.len(),
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
    // Drain what is left: the queue hands out exactly the model's FIFO, in order.
    let mut rest = Vec::new();
    while let Some(k) = queue.try_get() {
        rest.push(k);
    }
    let expected: Vec<_> = std::iter::from_fn(|| model.get()).collect();
    prop_assert_eq!(rest, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn queue_should_agree_with_the_model_on_every_observable(
        ops in proptest::collection::vec(op(), 1..120)
    ) {
        run(&ops)?;
    }
}
