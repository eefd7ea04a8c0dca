//! The durable queue against a reference model, as `queue_model.rs` does for the in-memory one:
//! random sequences of add / add_after / add_rate_limited / add_with (priorities, delays, rate
//! limiting, payloads) / claim / done / succeed / fail / dead_letter / forget / requeue_failed /
//! time passing, on a real PostgreSQL. After every step the queue and the model agree on every
//! observable: what a claim hands out (key, priority, attempt, payload), what each completion
//! settles to, `len`, `waiting_len`, `processing_len`, the dead letters and `num_requeues`.
//!
//! Time: one model tick is a minute of the queue's clock, moved by `advance_time`, so the few
//! milliseconds that really pass during a case never change which keys are ready; keys ready at
//! the same model time are handed out in the order of the statements that set their ready times.
//! Cases: 256 with `CI` set, 64 otherwise; each case has a queue name of its own.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeMap;
use std::time::Duration;
use traceq_engine::postgres::testing::TestSchema;
use traceq_engine::postgres::{PgClaim, PgQueue, Settled};
use traceq_engine::AddOptions;

const KEYS: u8 = 5;
const TICK: Duration = Duration::from_secs(60);
const MAX_BACKOFF_TICKS: u64 = 16;
const MAX_RETRIES: u32 = 2;

#[derive(Debug, Clone)]
enum Op {
    Add(u8),
    AddAfter(u8, u64),
    AddRateLimited(u8),
    AddWith {
        key: u8,
        priority: i32,
        delay: u64,
        rate_limited: bool,
        payload: Option<u8>,
    },
    Claim,
    Done(u8),
    Succeed(u8),
    Fail(u8),
    DeadLetter(u8),
    Forget(u8),
    RequeueFailed(u8),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS;
    prop_oneof![
        3 => key.clone().prop_map(Op::Add),
        1 => (key.clone(), 1..20u64).prop_map(|(k, d)| Op::AddAfter(k, d)),
        1 => key.clone().prop_map(Op::AddRateLimited),
        3 => (key.clone(), prop_oneof![2 => Just(0), 1 => -1..=2i32],
              prop_oneof![3 => Just(0u64), 1 => 1..20u64], any::<bool>(),
              prop_oneof![Just(None), (0..3u8).prop_map(Some)])
            .prop_map(|(key, priority, delay, rl, payload)| Op::AddWith {
                key, priority, delay, rate_limited: rl && delay % 2 == 1, payload,
            }),
        5 => Just(Op::Claim),
        3 => key.clone().prop_map(Op::Done),
        2 => key.clone().prop_map(Op::Succeed),
        2 => key.clone().prop_map(Op::Fail),
        1 => key.clone().prop_map(Op::DeadLetter),
        1 => key.clone().prop_map(Op::Forget),
        1 => key.clone().prop_map(Op::RequeueFailed),
        2 => (0..20u64).prop_map(Op::Advance),
    ]
}

/// When a key becomes ready: the model time, then the step whose statement set it (ties).
type ReadyAt = (u64, usize);

#[derive(Debug, Clone, PartialEq)]
enum State {
    Queued { at: ReadyAt },
    Processing { dirty: Option<ReadyAt> },
    Idle,
    Failed,
}

#[derive(Debug, Clone)]
struct Row {
    state: State,
    priority: i32,
    /// Failures and requeues: the queue keeps both, and they move together.
    failures: u32,
    attempt: u32,
    payload: Option<u8>,
}

/// The semantics, written as plainly as possible (the table in the backend's `add` module).
#[derive(Default)]
struct Model {
    now: u64,
    rows: BTreeMap<u8, Row>,
}

fn backoff(failures: u32) -> u64 {
    (1u64 << failures.min(20)).min(MAX_BACKOFF_TICKS)
}

fn earlier(a: Option<ReadyAt>, b: ReadyAt) -> ReadyAt {
    match a {
        Some(a) if a.0 <= b.0 => a,
        _ => b,
    }
}

impl Model {
    fn add(
        &mut self,
        step: usize,
        k: u8,
        priority: i32,
        delay: u64,
        rl: bool,
        payload: Option<u8>,
    ) {
        let now = self.now;
        let Some(row) = self.rows.get_mut(&k) else {
            let d = if rl { cap(backoff(0), delay) } else { delay };
            self.rows.insert(
                k,
                Row {
                    state: State::Queued {
                        at: (now + d, step),
                    },
                    priority,
                    failures: u32::from(rl),
                    attempt: 0,
                    payload,
                },
            );
            return;
        };
        let live = matches!(row.state, State::Queued { .. } | State::Processing { .. });
        row.priority = if live {
            row.priority.max(priority)
        } else {
            priority
        };
        let f0 = if row.state == State::Failed {
            0
        } else {
            row.failures
        };
        let d = if rl { cap(backoff(f0), delay) } else { delay };
        let ready = (now + d, step);
        let counted = rl && !matches!(row.state, State::Queued { .. });
        row.state = match row.state {
            State::Queued { at } if rl => State::Queued { at },
            State::Queued { at } => State::Queued {
                at: earlier(Some(at), ready),
            },
            State::Processing { dirty } => State::Processing {
                dirty: Some(earlier(dirty, ready)),
            },
            State::Idle | State::Failed => State::Queued { at: ready },
        };
        row.failures = f0 + u32::from(counted);
        row.payload = payload.or(row.payload);
    }

    fn claim(&mut self) -> Option<(u8, i32, u32, Option<u8>)> {
        let now = self.now;
        let (&k, _) = self
            .rows
            .iter()
            .filter_map(|(k, r)| match r.state {
                State::Queued { at } if at.0 <= now => Some((k, (-r.priority, at))),
                _ => None,
            })
            .min_by_key(|(_, order)| *order)?;
        let row = self.rows.get_mut(&k).unwrap();
        row.state = State::Processing { dirty: None };
        row.attempt += 1;
        Some((k, row.priority, row.attempt, row.payload))
    }

    /// A completion of kind 0 done, 1 succeed, 2 fail, 3 dead letter.
    fn complete(&mut self, step: usize, k: u8, kind: u8) -> Settled {
        let now = self.now;
        let row = self.rows.get_mut(&k).unwrap();
        let State::Processing { dirty } = row.state else {
            unreachable!("completed only while claimed")
        };
        let exhausted = kind == 3 || (kind == 2 && row.failures >= MAX_RETRIES);
        let finish = dirty.is_none() && (kind == 1 || (kind == 0 && row.failures == 0));
        if finish {
            self.rows.remove(&k);
            return Settled::Finished;
        }
        let failed_again = kind == 2 && !exhausted;
        let at = if failed_again {
            earlier(dirty, (now + backoff(row.failures), step))
        } else {
            dirty.unwrap_or((now, step))
        };
        row.failures = if kind == 1 || (exhausted && dirty.is_some()) {
            0
        } else if failed_again {
            row.failures + 1
        } else {
            row.failures
        };
        if dirty.is_some() || failed_again {
            row.state = State::Queued { at };
            Settled::Requeued {
                delay: TICK * at.0.saturating_sub(now) as u32,
                exhausted: exhausted && dirty.is_some(),
            }
        } else if exhausted {
            row.state = State::Failed;
            Settled::DeadLettered
        } else {
            row.state = State::Idle;
            Settled::Kept
        }
    }

    fn forget(&mut self, k: u8) {
        match self.rows.get(&k).map(|r| &r.state) {
            Some(State::Idle) => {
                self.rows.remove(&k);
            }
            Some(State::Queued { .. } | State::Processing { .. }) => {
                self.rows.get_mut(&k).unwrap().failures = 0;
            }
            _ => {}
        }
    }

    fn requeue_failed(&mut self, step: usize, k: u8) -> bool {
        let now = self.now;
        match self.rows.get_mut(&k) {
            Some(row) if row.state == State::Failed => {
                row.state = State::Queued { at: (now, step) };
                row.failures = 0;
                row.attempt = 0;
                true
            }
            _ => false,
        }
    }

    fn count(&self, f: impl Fn(&State) -> bool) -> u64 {
        self.rows.values().filter(|r| f(&r.state)).count() as u64
    }

    fn num_requeues(&self, k: u8) -> u32 {
        self.rows
            .get(&k)
            .filter(|r| r.state != State::Failed)
            .map_or(0, |r| r.failures)
    }
}

/// A rate-limited add's delay, capped by the add's own delay when it has one.
fn cap(backoff: u64, delay: u64) -> u64 {
    if delay > 0 {
        backoff.min(delay)
    } else {
        backoff
    }
}

/// Compares settled outcomes; a requeue's delay is checked to the tick.
fn same(real: Settled, model: Settled) -> bool {
    match (real, model) {
        (
            Settled::Requeued {
                delay: d1,
                exhausted: e1,
            },
            Settled::Requeued {
                delay: d2,
                exhausted: e2,
            },
        ) => e1 == e2 && d1.abs_diff(d2) < TICK / 2,
        (a, b) => a == b,
    }
}

async fn run(db: &TestSchema, case: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let config = db
        .config(&format!("case{case}"))
        .with_lease_timeout(Duration::from_secs(600))
        .with_max_retries(MAX_RETRIES)
        .with_backoff(TICK, TICK * MAX_BACKOFF_TICKS as u32);
    let q = PgQueue::connect(config).await.expect("connect");
    let mut model = Model::default();
    let mut claims: BTreeMap<u8, PgClaim> = BTreeMap::new();
    let key = |k: u8| format!("k{k}");
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Add(k) => {
                q.add(&key(k)).await.unwrap();
                model.add(step, k, 0, 0, false, None);
            }
            Op::AddAfter(k, d) => {
                q.add_after(&key(k), TICK * d as u32).await.unwrap();
                model.add(step, k, 0, d, false, None);
            }
            Op::AddRateLimited(k) => {
                q.add_rate_limited(&key(k)).await.unwrap();
                model.add(step, k, 0, 0, true, None);
            }
            Op::AddWith {
                key: k,
                priority,
                delay,
                rate_limited,
                payload,
            } => {
                let options = AddOptions::new()
                    .with_priority(priority)
                    .with_delay(TICK * delay as u32)
                    .with_rate_limited(rate_limited);
                let bytes = payload.map(|p| vec![p]);
                q.add_many(&[(&key(k), bytes.as_deref())], options)
                    .await
                    .unwrap();
                model.add(step, k, priority, delay, rate_limited, payload);
            }
            Op::Claim => {
                let real = q.try_claim().await.unwrap();
                let got = real.as_ref().map(|c| {
                    let k: u8 = c.key[1..].parse().unwrap();
                    (k, c.priority, c.attempt, c.payload.as_ref().map(|p| p[0]))
                });
                prop_assert_eq!(got, model.claim(), "claim at step {} ({:?})", step, op);
                if let Some(c) = real {
                    let k = got.unwrap().0;
                    claims.insert(k, c);
                }
            }
            Op::Done(k) | Op::Succeed(k) | Op::Fail(k) | Op::DeadLetter(k) => {
                let Some(claim) = claims.remove(&k) else {
                    continue;
                };
                let (kind, real) = match op {
                    Op::Done(_) => (0, q.done(&claim).await),
                    Op::Succeed(_) => (1, q.succeed(&claim).await),
                    Op::Fail(_) => (2, q.fail(&claim, "boom").await),
                    _ => (3, q.dead_letter(&claim, "poison", "boom").await),
                };
                let real = real.unwrap();
                let expected = model.complete(step, k, kind);
                prop_assert!(
                    same(real, expected),
                    "step {} ({:?}): {:?} vs model {:?}",
                    step,
                    op,
                    real,
                    expected
                );
            }
            Op::Forget(k) => {
                q.forget(&key(k)).await.unwrap();
                model.forget(k);
            }
            Op::RequeueFailed(k) => {
                let real = q.requeue_failed(&key(k)).await.unwrap();
                prop_assert_eq!(
                    real,
                    model.requeue_failed(step, k),
                    "requeue_failed at step {}",
                    step
                );
            }
            Op::Advance(ticks) => {
                q.advance_time(TICK * ticks as u32).await.unwrap();
                model.now += ticks;
            }
        }
        let now = model.now;
        let stats = q.stats().await.unwrap();
        let expected = (
            model.count(|s| matches!(s, State::Queued { at } if at.0 <= now)),
            model.count(|s| matches!(s, State::Queued { at } if at.0 > now)),
            model.count(|s| matches!(s, State::Processing { .. })),
            model.count(|s| *s == State::Failed),
        );
        prop_assert_eq!(
            (stats.ready, stats.waiting, stats.processing, stats.failed),
            expected,
            "ready/waiting/processing/failed after step {} ({:?})",
            step,
            op
        );
        let requeues = futures::future::join_all((0..KEYS).map(|k| {
            let q = &q;
            async move { q.num_requeues(&format!("k{k}")).await.unwrap() }
        }))
        .await;
        let expected: Vec<u32> = (0..KEYS).map(|k| model.num_requeues(k)).collect();
        prop_assert_eq!(
            requeues,
            expected,
            "num_requeues after step {} ({:?})",
            step,
            op
        );
    }
    // Drain: the queue hands out exactly what the model does, in order.
    let mut rest = Vec::new();
    while let Some(c) = q.try_claim().await.unwrap() {
        rest.push((c.key[1..].parse::<u8>().unwrap(), c.priority, c.attempt));
    }
    let expected: Vec<_> =
        std::iter::from_fn(|| model.claim().map(|(k, p, a, _)| (k, p, a))).collect();
    prop_assert_eq!(rest, expected);
    q.shutdown().await.unwrap();
    Ok(())
}

#[test]
fn postgres_queue_should_agree_with_the_model_on_every_observable() {
    let Some(db) =
        TestSchema::new("postgres_queue_should_agree_with_the_model_on_every_observable")
    else {
        return;
    };
    let cases = if std::env::var_os("CI").is_some() {
        256
    } else {
        64
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(run(&db, n, ops))
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
