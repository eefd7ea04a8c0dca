//! Queue and engine throughput, each group with its baseline in the same run.
//!
//! Run: `cargo bench --bench queue`
//!
//! Groups:
//! - `cycle_single_thread`: add 1,000 distinct keys, then get + done each (traceq), beside
//!   crossbeam-channel and tokio mpsc send 1,000 + recv 1,000 on the same thread. Also with time
//!   metrics on, with scattered keys (see below), with each key at one of four priorities
//!   (`traceq_queue_priorities`), and on a queue fair across ten groups (`traceq_queue_fair`).
//! - `add_get_done_1000`: controller-runtime's priority-queue benchmark (`BenchmarkAddGetDone`):
//!   the same 1,000 keys added, then each taken with a waiting `get` and marked done, for the
//!   plain, priority and fair queues, beside tokio mpsc with a waiting `recv`.
//! - `cycle_two_threads`: the same cycle run by two threads at once on one shared queue/channel.
//! - `producer_consumer`: one thread adds 100,000 distinct keys, another gets + dones them.
//! - `engine_noop_handler`: 100,000 keys through an `Engine` with 4 workers and a no-op handler,
//!   beside 4 tokio tasks sharing one mpsc receiver.
//!
//! Last measured after priorities and fairness, same machine, `--warm-up-time 1
//! --measurement-time 3`, two runs alternating the build before them and this one; ratios are
//! to the plain queue of the same run.
//!   cycle_single_thread   traceq 33.9, 34.1 us / 1,000 (before: 34.3, 34.3 us: 0.99x)
//!                         priorities 40.7, 43.5 us (1.20x, 1.28x); fair 47.3, 48.6 us (1.40x,
//!                         1.42x); crossbeam 29.7, 30.6 us
//!   add_get_done_1000     traceq 39.7, 41.2 us; priorities 45.1, 46.8 us (1.13x, 1.14x); fair
//!                         52.7, 54.8 us (1.33x, 1.33x); tokio mpsc 43.3, 43.5 us
//!                         (controller-runtime reports 0.3 to 1.0 ms for this cycle, PR #3471)
//!   engine_noop_handler   57.8, 53.6, 57.0 ms against 52.3, 53.8, 53.1 ms before (+7%: each
//!                         attempt carries its priority, group and requeue ticket)
//!   cycle_two_threads     42.3, 40.0, 40.3 ms against 40.2, 40.8, 42.2 ms before
//! Per add + get + done cycle (valgrind, a driver's loop included): plain 438 instructions (465
//! before), with priorities 646, fair 760.
//!
//! Measured 2026-11-23 after the spin lock, the 16-byte slots, the linked FIFO and the
//! index clear (engine/src/queue.rs, engine/src/queue/keys.rs), 2-vCPU x86_64 VM (AMD EPYC).
//! Six runs alternating the build before those changes and this one (`--warm-up-time 1
//! --measurement-time 3`); each figure is the median of criterion's medians over the six, with
//! the range; ratios are taken within one run.
//!   cycle_single_thread   traceq 39.6 us / 1,000 (25.3 M cycles/s; 37.5-40.8 us)
//!                         scattered keys 36.5 us (34.5-46.1 us); with time metrics 137 us
//!                         crossbeam 19.4 us, tokio mpsc 22.1 us
//!                         traceq / crossbeam 2.01x (1.92-2.13x), scattered 1.82x (1.79-2.32x)
//!                         before: 48.9 us (43.4-59.5 us), 2.31x (2.20-2.84x)
//!   cycle_two_threads     traceq 12.8 ms / 200,000, crossbeam 4.01 ms: 3.15x
//!                         (before: 22.8 ms, 5.75x)
//!   producer_consumer     traceq try_get 10.7 ms, async get 11.1 ms / 100,000 (9.4, 9.0 M/s)
//!                         crossbeam 2.28 ms, tokio mpsc 10.8 ms
//!                         (before: 9.8 ms, 10.4 ms, beside crossbeam 1.91 ms)
//!   engine_noop_handler   traceq 4 workers 30.5 ms / 100,000 (3.3 M items/s)
//!                         tokio mpsc 4 tasks 24.3 ms: 1.25x (before: 32.2 ms)
//! Per single-thread add + get + done cycle, benchmark loop included (valgrind): 465
//! instructions and 0.05 first-level data-cache misses; 566 and 1.6 before.
//!
//! Design history, from earlier runs of this file (the reasons are in the module docs of
//! engine/src/queue.rs and engine/src/queue/keys.rs):
//! - The spin lock for the queue's core, against the parking mutex before it: the
//!   single-threaded cycle about a quarter faster, two threads sharing a queue 1.6x faster
//!   (16 OS threads on two cores: 1.8x, with half the CPU).
//! - The slab: 1,000 keys in flight take 16 KB of slots and a 10 KB index, and the cycle over
//!   them runs from the first-level cache: under cachegrind, 0.05 data-cache misses per cycle,
//!   against 0.6 with a separate `VecDeque` FIFO and the index grown twice as large by tombstones
//!   (and 40-byte slots before that, with the hash and times inside).
//! - Tried and dropped: a lock-free `SegQueue` inbox with an atomic length (three
//!   read-modify-writes per add, two more to pop it, and an emptiness check on every lock that
//!   cost more than a whole add does now); `std::sync::Mutex` instead of `parking_lot` (no gain:
//!   it too releases with a read-modify-write); settling one key and taking the next under one
//!   lock (no gain); keeping 32 bits of each key's hash in the index, so that it grows without
//!   reading the slots (fewer cache misses under callgrind, no difference in wall time).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use traceq_engine::rate_limit::NoDelay;
use traceq_engine::{AddOptions, Attempt, Engine, Queue, QueueConfig};

const BATCH: u64 = 1_000;
const STREAM: u64 = 100_000;
/// An odd constant (2^64 / golden ratio): multiplying by it permutes the `u64`s.
const SCATTER: u64 = 0x9e37_79b9_7f4a_7c15;

/// Priorities in the priority-mode cases: keys cycle through this many levels.
const LEVELS: u64 = 4;
/// Groups in the fair cases: key k is in group k % GROUPS.
const GROUPS: u64 = 10;

fn queue() -> Queue<u64> {
    Queue::with_config(QueueConfig::default().with_rate_limiter(NoDelay))
}

fn fair_queue() -> Queue<u64> {
    Queue::with_config(
        QueueConfig::default()
            .with_rate_limiter(NoDelay)
            .with_fairness(|k: &u64| k % GROUPS),
    )
}

fn level(k: u64) -> AddOptions {
    AddOptions::new().with_priority((k % LEVELS) as i32)
}

/// The plain cycle, each key at one of `LEVELS` priorities.
fn priority_cycle(q: &Queue<u64>, base: u64) {
    for k in base..base + BATCH {
        q.add_with(k, level(k));
    }
    while let Some(k) = q.try_get() {
        q.done(black_box(&k));
    }
}

fn traceq_cycle(q: &Queue<u64>, base: u64) {
    for k in base..base + BATCH {
        q.add(k);
    }
    while let Some(k) = q.try_get() {
        q.done(black_box(&k));
    }
}

fn cycle_single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("cycle_single_thread");
    g.throughput(Throughput::Elements(BATCH));
    let q = queue();
    let mut base = 0;
    g.bench_function("traceq_queue", |b| {
        b.iter(|| {
            traceq_cycle(&q, base);
            base += BATCH;
        })
    });
    let qm = Queue::with_config(
        QueueConfig::default()
            .with_rate_limiter(NoDelay)
            .with_metrics(true),
    );
    g.bench_function("traceq_queue_with_time_metrics", |b| {
        b.iter(|| {
            traceq_cycle(&qm, base);
            base += BATCH;
        })
    });
    // Consecutive integers hash to neighbouring buckets for many of foldhash's per-process seeds,
    // which keeps the index's working set small; real keys (names, UIDs) land anywhere. These
    // keys are distinct too (multiplying by an odd constant is a bijection) but scattered.
    let qs = queue();
    g.bench_function("traceq_queue_scattered_keys", |b| {
        b.iter(|| {
            for k in base..base + BATCH {
                qs.add(k.wrapping_mul(SCATTER));
            }
            while let Some(k) = qs.try_get() {
                qs.done(black_box(&k));
            }
            base += BATCH;
        })
    });
    let qp = queue();
    g.bench_function("traceq_queue_priorities", |b| {
        b.iter(|| {
            priority_cycle(&qp, base);
            base += BATCH;
        })
    });
    let qf = fair_queue();
    g.bench_function("traceq_queue_fair", |b| {
        b.iter(|| {
            traceq_cycle(&qf, base);
            base += BATCH;
        })
    });
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    g.bench_function("crossbeam_channel", |b| {
        b.iter(|| {
            for k in 0..BATCH {
                tx.send(k).unwrap();
            }
            while let Ok(k) = rx.try_recv() {
                black_box(k);
            }
        })
    });
    let (ttx, mut trx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    g.bench_function("tokio_mpsc", |b| {
        b.iter(|| {
            for k in 0..BATCH {
                ttx.send(k).unwrap();
            }
            while let Ok(k) = trx.try_recv() {
                black_box(k);
            }
        })
    });
    g.finish();
}

/// A benchmark's name, its queue, and the options each key is added with.
type Case = (&'static str, Queue<u64>, fn(u64) -> AddOptions);

/// controller-runtime's priority-queue benchmark (`BenchmarkAddGetDone`): the same 1,000 keys
/// added, then each taken with a waiting `get` and marked done, on one queue for the whole run.
fn add_get_done(c: &mut Criterion) {
    let mut g = c.benchmark_group("add_get_done_1000");
    g.throughput(Throughput::Elements(BATCH));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let cases: [Case; 3] = [
        ("traceq_queue", queue(), |_| AddOptions::new()),
        ("traceq_queue_priorities", queue(), level),
        ("traceq_queue_fair", fair_queue(), |_| AddOptions::new()),
    ];
    for (name, q, options) in cases {
        g.bench_function(name, |b| {
            b.iter(|| {
                for k in 0..BATCH {
                    q.add_with(k, options(k));
                }
                rt.block_on(async {
                    for _ in 0..BATCH {
                        let k = q.get().await.unwrap();
                        q.done(black_box(&k));
                    }
                });
            })
        });
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    g.bench_function("tokio_mpsc", |b| {
        b.iter(|| {
            for k in 0..BATCH {
                tx.send(k).unwrap();
            }
            rt.block_on(async {
                for _ in 0..BATCH {
                    black_box(rx.recv().await.unwrap());
                }
            });
        })
    });
    g.finish();
}

fn cycle_two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("cycle_two_threads");
    g.throughput(Throughput::Elements(2 * BATCH * 100));
    g.bench_function("traceq_queue", |b| {
        b.iter_custom(|iters| {
            let q = queue();
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2u64 {
                    let q = &q;
                    s.spawn(move || {
                        for i in 0..iters * 100 {
                            traceq_cycle(q, (t << 48) | (i * BATCH));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.bench_function("crossbeam_channel", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = crossbeam_channel::unbounded::<u64>();
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let (tx, rx) = (tx.clone(), rx.clone());
                    s.spawn(move || {
                        for _ in 0..iters * 100 {
                            for k in 0..BATCH {
                                tx.send(k).unwrap();
                            }
                            for _ in 0..BATCH {
                                black_box(rx.try_recv().ok());
                            }
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

fn producer_consumer(c: &mut Criterion) {
    let mut g = c.benchmark_group("producer_consumer");
    g.throughput(Throughput::Elements(STREAM));
    g.bench_function("traceq_queue_try_get", |b| {
        b.iter_batched(
            queue,
            |q| {
                std::thread::scope(|s| {
                    s.spawn(|| {
                        for k in 0..STREAM {
                            q.add(k);
                        }
                    });
                    let mut seen = 0;
                    while seen < STREAM {
                        match q.try_get() {
                            Some(k) => {
                                q.done(&k);
                                seen += 1;
                            }
                            None => std::hint::spin_loop(),
                        }
                    }
                });
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("traceq_queue_async_get", |b| {
        b.iter_batched(
            queue,
            |q| {
                std::thread::scope(|s| {
                    s.spawn(|| {
                        for k in 0..STREAM {
                            q.add(k);
                        }
                    });
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        for _ in 0..STREAM {
                            let k = q.get().await.unwrap();
                            q.done(&k);
                        }
                    });
                });
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("crossbeam_channel", |b| {
        b.iter(|| {
            let (tx, rx) = crossbeam_channel::unbounded::<u64>();
            std::thread::scope(|s| {
                s.spawn(move || {
                    for k in 0..STREAM {
                        tx.send(k).unwrap();
                    }
                });
                for _ in 0..STREAM {
                    black_box(rx.recv().unwrap());
                }
            });
        })
    });
    g.bench_function("tokio_mpsc", |b| {
        b.iter(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
            std::thread::scope(|s| {
                s.spawn(move || {
                    for k in 0..STREAM {
                        tx.send(k).unwrap();
                    }
                });
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for _ in 0..STREAM {
                        black_box(rx.recv().await.unwrap());
                    }
                });
            });
        })
    });
    g.finish();
}

fn engine_noop_handler(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine_noop_handler");
    g.throughput(Throughput::Elements(STREAM));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    g.bench_function("traceq_engine_4_workers", |b| {
        b.to_async(&rt).iter(|| async {
            let engine = Engine::<u64>::builder().with_workers(4).build().unwrap();
            let handle = engine.handle();
            for k in 0..STREAM {
                handle.add(k);
            }
            let run = tokio::spawn(async move {
                engine
                    .run(|a: Attempt<u64>| async move {
                        black_box(a.key);
                        Ok::<(), std::convert::Infallible>(())
                    })
                    .await
            });
            handle.shutdown_with_drain_queued().await;
            run.await.unwrap();
        })
    });
    g.bench_function("tokio_mpsc_4_tasks", |b| {
        b.to_async(&rt).iter(|| async {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
            for k in 0..STREAM {
                tx.send(k).unwrap();
            }
            drop(tx);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let rx = Arc::clone(&rx);
                    tokio::spawn(async move {
                        while let Some(k) = rx.lock().await.recv().await {
                            black_box(k);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = cycle_single_thread, add_get_done, cycle_two_threads, producer_consumer,
        engine_noop_handler
}
criterion_main!(benches);
