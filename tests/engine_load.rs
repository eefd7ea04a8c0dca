//! Load test: 1,000,000 adds over 100,000 keys from 4 producer tasks, 16 workers, 20% of attempts
//! failing at random. Checks the engine's guarantees at the end. Bounded: a minute at most.

use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use traceq_engine::{Attempt, Engine, OutcomeKind};

const KEYS: usize = 100_000;
const ADDS: usize = 1_000_000;
const PRODUCERS: usize = 4;
const WORKERS: usize = 16;
const MAX_RETRIES: u32 = 3;

struct Ledger {
    /// Stamp of the last add of each key (from one global sequence).
    last_add: Vec<AtomicU64>,
    /// Stamp of the last attempt started for each key.
    last_start: Vec<AtomicU64>,
    /// Workers running each key right now.
    in_flight: Vec<AtomicU32>,
    /// Consecutive failed attempts of each key since it was last forgotten.
    streak: Vec<AtomicU32>,
    clock: AtomicU64,
    overlaps: AtomicU64,
    over_retried: AtomicU64,
    attempts: AtomicU64,
}

fn atomics<T: Default>(n: usize) -> Vec<T> {
    (0..n).map(|_| T::default()).collect()
}

#[test]
fn engine_should_keep_its_guarantees_under_load() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), load())
            .await
            .expect("load test finishes within a minute");
    });
}

async fn load() {
    let ledger = Arc::new(Ledger {
        last_add: atomics(KEYS),
        last_start: atomics(KEYS),
        in_flight: atomics(KEYS),
        streak: atomics(KEYS),
        clock: AtomicU64::new(1),
        overlaps: AtomicU64::new(0),
        over_retried: AtomicU64::new(0),
        attempts: AtomicU64::new(0),
    });
    let book = Arc::clone(&ledger);
    let engine = Engine::<u32>::builder()
        .with_workers(WORKERS)
        .with_max_retries(MAX_RETRIES)
        .with_backoff(Duration::from_micros(50), Duration::from_millis(2))
        .with_outcome_hook(move |o| {
            let streak = &book.streak[o.key as usize];
            match &o.kind {
                OutcomeKind::Requeued { .. } => {
                    if streak.fetch_add(1, Ordering::SeqCst) + 1 > MAX_RETRIES {
                        book.over_retried.fetch_add(1, Ordering::SeqCst);
                    }
                }
                _ => streak.store(0, Ordering::SeqCst),
            }
        })
        .build()
        .unwrap();
    let handle = engine.handle();

    let worker_ledger = Arc::clone(&ledger);
    let run = tokio::spawn(async move {
        engine
            .run(move |a: Attempt<u32>| {
                let l = Arc::clone(&worker_ledger);
                async move {
                    let k = a.key as usize;
                    let stamp = l.clock.fetch_add(1, Ordering::SeqCst);
                    l.last_start[k].fetch_max(stamp, Ordering::SeqCst);
                    l.attempts.fetch_add(1, Ordering::Relaxed);
                    if l.in_flight[k].fetch_add(1, Ordering::SeqCst) != 0 {
                        l.overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    if stamp.is_multiple_of(7) {
                        tokio::task::yield_now().await;
                    }
                    let fail = rand::rng().random_bool(0.2);
                    l.in_flight[k].fetch_sub(1, Ordering::SeqCst);
                    if fail {
                        Err("random failure")
                    } else {
                        Ok(())
                    }
                }
            })
            .await
    });

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let handle = handle.clone();
            let l = Arc::clone(&ledger);
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(p as u64);
                for i in 0..ADDS / PRODUCERS {
                    let k = rng.random_range(0..KEYS);
                    let stamp = l.clock.fetch_add(1, Ordering::SeqCst);
                    l.last_add[k].fetch_max(stamp, Ordering::SeqCst);
                    handle.add(k as u32);
                    if i % 256 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    // Wait for the queue to settle: nothing queued, waiting out a backoff, or in process.
    handle.queue().wait_idle().await;
    handle.shutdown_with_drain().await;
    run.await.unwrap();

    assert_eq!(
        ledger.overlaps.load(Ordering::SeqCst),
        0,
        "a key ran on two workers at once"
    );
    assert_eq!(
        ledger.over_retried.load(Ordering::SeqCst),
        0,
        "a key was retried more than max_retries times in a row"
    );
    let mut never_added = 0;
    for k in 0..KEYS {
        let added = ledger.last_add[k].load(Ordering::SeqCst);
        if added == 0 {
            never_added += 1;
            continue;
        }
        assert!(
            ledger.last_start[k].load(Ordering::SeqCst) > added,
            "key {k} was not processed after its last add"
        );
    }
    assert!(
        never_added < KEYS / 100,
        "the producers covered the key space"
    );
    let m = handle.metrics();
    assert_eq!(
        (m.depth, m.waiting, m.processing),
        (0, 0, 0),
        "nothing left queued"
    );
    assert!(ledger.attempts.load(Ordering::SeqCst) as usize >= KEYS - never_added);
    assert!(
        m.retries_total > 0 && m.exhausted_total > 0,
        "failures were exercised: {m:?}"
    );
}
