//! The durable queue's guarantees, against a real PostgreSQL (`DATABASE_URL`; each test in a
//! schema of its own, dropped at the end). Without `DATABASE_URL` the tests say they are skipped,
//! unless `CI` is set: then they fail.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use traceq_engine::postgres::testing::TestSchema;
use traceq_engine::postgres::{PgQueue, PgQueueConfig, Settled};
use traceq_engine::AddOptions;

macro_rules! db_or_skip {
    ($name:expr) => {
        match TestSchema::new($name) {
            Some(db) => db,
            None => return,
        }
    };
}

async fn queue(db: &TestSchema, config: PgQueueConfig) -> PgQueue {
    db.queue(config).await.expect("connect")
}

/// Keys claimable now, in hand-out order (claimed and then given back).
async fn ready_keys(q: &PgQueue) -> Vec<String> {
    let claims = q.try_claim_batch(100).await.unwrap();
    let keys = claims.iter().map(|c| c.key.clone()).collect();
    for c in &claims {
        q.release(c).await.unwrap();
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_hold_a_queued_key_once() {
    let db = db_or_skip!("postgres_queue_should_hold_a_queued_key_once");
    let q = queue(&db, db.config("q")).await;
    for _ in 0..3 {
        q.add("a").await.unwrap();
    }
    q.add("b").await.unwrap();
    assert_eq!(q.len().await.unwrap(), 2);
    let first = q.try_claim().await.unwrap().unwrap();
    let second = q.try_claim().await.unwrap().unwrap();
    assert_eq!((first.key.as_str(), second.key.as_str()), ("a", "b"));
    assert!(q.try_claim().await.unwrap().is_none(), "a was queued once");
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_run_a_dirty_key_again_after_done() {
    let db = db_or_skip!("postgres_queue_should_run_a_dirty_key_again_after_done");
    let q = queue(&db, db.config("q")).await;
    q.add("k").await.unwrap();
    let claim = q.try_claim().await.unwrap().unwrap();
    q.add("k").await.unwrap();
    q.add("k").await.unwrap();
    assert!(
        q.try_claim().await.unwrap().is_none(),
        "never on two workers"
    );
    assert_eq!(q.processing_len().await.unwrap(), 1);
    assert!(matches!(
        q.done(&claim).await.unwrap(),
        Settled::Requeued { .. }
    ));
    let again = q.try_claim().await.unwrap().expect("runs once more");
    assert_eq!(again.attempt, 2);
    assert_eq!(q.done(&again).await.unwrap(), Settled::Finished);
    assert!(q.try_claim().await.unwrap().is_none(), "and only once");
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_let_the_earliest_delay_win() {
    let db = db_or_skip!("postgres_queue_should_let_the_earliest_delay_win");
    let q = queue(&db, db.config("q")).await;
    q.add_after("k", Duration::from_secs(100)).await.unwrap();
    q.add_after("k", Duration::from_secs(10)).await.unwrap();
    q.add_after("k", Duration::from_secs(50)).await.unwrap();
    assert_eq!(
        (q.len().await.unwrap(), q.waiting_len().await.unwrap()),
        (0, 1)
    );
    q.advance_time(Duration::from_secs(9)).await.unwrap();
    assert!(q.try_claim().await.unwrap().is_none());
    q.advance_time(Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        ready_keys(&q).await,
        ["k"],
        "ready after the earliest delay"
    );
    // A plain add of a waiting key queues it now.
    q.add_after("w", Duration::from_secs(100)).await.unwrap();
    q.add("w").await.unwrap();
    assert_eq!(q.len().await.unwrap(), 2);
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_back_off_exponentially_per_key_and_forget() {
    let db = db_or_skip!("postgres_queue_should_back_off_exponentially_per_key_and_forget");
    let config = db
        .config("q")
        .with_backoff(Duration::from_secs(10), Duration::from_secs(60));
    let q = queue(&db, config).await;
    // Delays 10, 20, 40, 60 (capped), 60 s: each found by advancing just short of it, then past.
    for (n, secs) in [10u64, 20, 40, 60, 60].into_iter().enumerate() {
        q.add_rate_limited("k").await.unwrap();
        q.add_rate_limited("k").await.unwrap(); // coalesces: not counted
        assert_eq!(q.num_requeues("k").await.unwrap(), n as u32 + 1);
        q.advance_time(Duration::from_secs(secs - 1)).await.unwrap();
        assert_eq!(q.len().await.unwrap(), 0, "failure {n}: still waiting");
        q.advance_time(Duration::from_secs(2)).await.unwrap();
        let claim = q
            .try_claim()
            .await
            .unwrap()
            .expect("ready after its backoff");
        assert_eq!(q.done(&claim).await.unwrap(), Settled::Kept);
    }
    q.forget("k").await.unwrap();
    assert_eq!(q.num_requeues("k").await.unwrap(), 0);
    q.add_rate_limited("k").await.unwrap();
    q.advance_time(Duration::from_secs(11)).await.unwrap();
    assert_eq!(
        q.len().await.unwrap(),
        1,
        "forgotten: back to the base delay"
    );

    // fail() counts the same history, and a success forgets it.
    let claim = q.try_claim().await.unwrap().unwrap();
    assert!(matches!(
        q.fail(&claim, "boom").await.unwrap(),
        Settled::Requeued { delay, exhausted: false } if delay > Duration::from_secs(15)
    ));
    assert_eq!(q.num_requeues("k").await.unwrap(), 2);
    q.advance_time(Duration::from_secs(21)).await.unwrap();
    let claim = q.try_claim().await.unwrap().unwrap();
    assert_eq!(q.succeed(&claim).await.unwrap(), Settled::Finished);
    assert_eq!(q.num_requeues("k").await.unwrap(), 0);
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_count_keys_by_state_across_handles() {
    let db = db_or_skip!("postgres_queue_should_count_keys_by_state_across_handles");
    let a = queue(&db, db.config("q")).await;
    let b = queue(&db, db.config("q")).await;
    let other = queue(&db, db.config("other")).await;
    for k in ["1", "2", "3"] {
        a.add(k).await.unwrap();
    }
    a.add_after("later", Duration::from_secs(60)).await.unwrap();
    other.add("elsewhere").await.unwrap();
    let claim = b.try_claim().await.unwrap().unwrap();
    for q in [&a, &b] {
        assert_eq!(q.len().await.unwrap(), 2);
        assert_eq!(q.waiting_len().await.unwrap(), 1);
        assert_eq!(q.processing_len().await.unwrap(), 1);
    }
    assert_eq!(other.len().await.unwrap(), 1, "queues are separate");
    b.done(&claim).await.unwrap();
    assert_eq!(a.processing_len().await.unwrap(), 0);
    for q in [a, b, other] {
        q.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_replace_the_payload_of_a_queued_key() {
    let db = db_or_skip!("postgres_queue_should_replace_the_payload_of_a_queued_key");
    let q = queue(&db, db.config("q")).await;
    let plain = AddOptions::new();
    q.add_payload("k", b"v1", plain).await.unwrap();
    q.add_payload("k", b"v2", plain).await.unwrap();
    q.add("k").await.unwrap(); // no payload: keeps v2
    let claim = q.try_claim().await.unwrap().unwrap();
    assert_eq!(claim.payload.as_deref(), Some(b"v2".as_slice()));
    q.add_payload("k", b"v3", plain).await.unwrap(); // while processing: for the next run
    q.done(&claim).await.unwrap();
    let next = q.try_claim().await.unwrap().unwrap();
    assert_eq!(next.payload.as_deref(), Some(b"v3".as_slice()));
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_add_only_when_the_callers_transaction_commits() {
    let db = db_or_skip!("postgres_queue_should_add_only_when_the_callers_transaction_commits");
    let q = queue(&db, db.config("q")).await;
    let mut client = db.client().await.unwrap();
    let tx = client.transaction().await.unwrap();
    q.add_in(&tx, "rolled-back", None, AddOptions::new())
        .await
        .unwrap();
    assert_eq!(q.len().await.unwrap(), 0, "not visible before commit");
    tx.rollback().await.unwrap();
    let tx = client.transaction().await.unwrap();
    q.add_in(&tx, "committed", Some(b"p"), AddOptions::new())
        .await
        .unwrap();
    assert!(
        q.try_claim().await.unwrap().is_none(),
        "not claimable before commit"
    );
    tx.commit().await.unwrap();
    let claim = q.try_claim().await.unwrap().expect("visible after commit");
    assert_eq!(claim.key, "committed");
    assert_eq!(claim.payload.as_deref(), Some(b"p".as_slice()));
    assert!(
        q.try_claim().await.unwrap().is_none(),
        "the rolled-back add was never seen"
    );
    q.shutdown().await.unwrap();
}

fn short_lease(db: &TestSchema) -> PgQueueConfig {
    db.config("q")
        .with_lease_timeout(Duration::from_millis(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_keep_a_renewed_lease_and_reclaim_an_expired_one() {
    let db = db_or_skip!("postgres_queue_should_keep_a_renewed_lease_and_reclaim_an_expired_one");
    let a = queue(&db, short_lease(&db)).await;
    let b = queue(&db, short_lease(&db)).await;
    a.add("k").await.unwrap();
    let held = a.try_claim().await.unwrap().unwrap();
    // Three lease timeouts with renewals: a long handler keeps its key.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        b.try_claim().await.unwrap().is_none(),
        "a renewed lease holds"
    );
    // A stalls (no renewals): its lease expires and b takes the key.
    a.pause_renewals(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    let taken = loop {
        if let Some(c) = b.try_claim().await.unwrap() {
            break c;
        }
        assert!(Instant::now() < deadline, "never reclaimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(taken.reclaimed);
    assert_eq!((taken.key.as_str(), taken.attempt), ("k", 2));
    assert_eq!(b.counters().reclaimed, 1);
    assert_eq!(b.succeed(&taken).await.unwrap(), Settled::Finished);
    drop(held);
    for q in [a, b] {
        q.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_refuse_and_count_a_stale_workers_completion() {
    let db = db_or_skip!("postgres_queue_should_refuse_and_count_a_stale_workers_completion");
    let stale = queue(&db, short_lease(&db)).await;
    let fresh = queue(&db, short_lease(&db)).await;
    stale
        .add_payload("k", b"v", AddOptions::new())
        .await
        .unwrap();
    let old = stale.try_claim().await.unwrap().unwrap();
    stale.pause_renewals(true);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = fresh.try_claim().await.unwrap().expect("reclaimed");
    assert_eq!(new.attempt, 2);
    // Every kind of late completion is refused and changes nothing.
    assert_eq!(stale.done(&old).await.unwrap(), Settled::Stale);
    assert_eq!(stale.fail(&old, "late").await.unwrap(), Settled::Stale);
    assert_eq!(
        stale.dead_letter(&old, "late", "late").await.unwrap(),
        Settled::Stale
    );
    assert_eq!(stale.counters().stale_completions, 3);
    assert_eq!(
        fresh.processing_len().await.unwrap(),
        1,
        "the newer attempt is intact"
    );
    assert_eq!(fresh.failed(10).await.unwrap(), []);
    assert_eq!(fresh.num_requeues("k").await.unwrap(), 0);
    assert_eq!(fresh.done(&new).await.unwrap(), Settled::Finished);
    for q in [stale, fresh] {
        q.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_keep_dead_letters_list_requeue_and_purge_them() {
    let db = db_or_skip!("postgres_queue_should_keep_dead_letters_list_requeue_and_purge_them");
    let config = db
        .config("q")
        .with_max_retries(2)
        .with_backoff(Duration::from_millis(1), Duration::from_millis(1));
    let q = queue(&db, config).await;
    q.add_payload("k", b"job", AddOptions::new()).await.unwrap();
    let mut outcomes = Vec::new();
    for attempt in 1..=3 {
        q.advance_time(Duration::from_secs(1)).await.unwrap();
        let claim = q.try_claim().await.unwrap().expect("retried");
        assert_eq!(claim.attempt, attempt);
        outcomes.push(q.fail(&claim, &format!("error {attempt}")).await.unwrap());
    }
    assert!(matches!(outcomes[0], Settled::Requeued { .. }));
    assert!(matches!(outcomes[1], Settled::Requeued { .. }));
    assert_eq!(outcomes[2], Settled::DeadLettered, "after max_retries");
    let failed = q.failed(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    let f = &failed[0];
    assert_eq!(
        (f.key.as_str(), f.reason.as_str()),
        ("k", "retries exhausted")
    );
    assert_eq!(f.last_error.as_deref(), Some("error 3"));
    assert_eq!((f.attempts, f.failures), (3, 2));
    assert_eq!(f.payload.as_deref(), Some(b"job".as_slice()));
    assert_eq!(q.stats().await.unwrap().failed, 1);
    assert!(
        q.try_claim().await.unwrap().is_none(),
        "a dead letter is not claimed"
    );

    assert!(q.requeue_failed("k").await.unwrap());
    assert!(!q.requeue_failed("k").await.unwrap(), "no longer failed");
    let claim = q.try_claim().await.unwrap().expect("re-queued");
    assert_eq!(
        (claim.attempt, claim.payload.as_deref()),
        (1, Some(b"job".as_slice()))
    );
    q.dead_letter(&claim, "poison", "cannot parse")
        .await
        .unwrap();

    // Retention: kept while younger, purged once older.
    assert_eq!(q.purge_failed(Duration::from_secs(3600)).await.unwrap(), 0);
    q.advance_time(Duration::from_secs(7200)).await.unwrap();
    assert_eq!(q.purge_failed(Duration::from_secs(3600)).await.unwrap(), 1);
    assert_eq!(q.failed(10).await.unwrap(), []);
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_purge_dead_letters_past_the_configured_retention() {
    let db = db_or_skip!("postgres_queue_should_purge_dead_letters_past_the_configured_retention");
    let config = db
        .config("q")
        .with_lease_timeout(Duration::from_millis(150))
        .with_failed_retention(Duration::from_secs(60));
    let q = queue(&db, config).await;
    q.add("k").await.unwrap();
    let claim = q.try_claim().await.unwrap().unwrap();
    q.dead_letter(&claim, "poison", "e").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(q.failed(10).await.unwrap().len(), 1, "within its retention");
    q.advance_time(Duration::from_secs(61)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !q.failed(10).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the background purge never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_wake_an_idle_claimer_within_50ms_by_notification() {
    let db = db_or_skip!("postgres_queue_should_wake_an_idle_claimer_within_50ms_by_notification");
    // A poll far longer than the bound: only the notification can meet it. Producer and
    // claimer are separate handles (separate connections), as on two machines.
    let config = db.config("q").with_poll_interval(Duration::from_secs(30));
    let producer = queue(&db, config.clone()).await;
    let worker = queue(&db, config).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !worker.counters().listening {
        assert!(Instant::now() < deadline, "listener never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut latencies = Vec::new();
    for i in 0..9 {
        let waiting = tokio::spawn({
            let worker = worker.clone();
            async move { worker.claim().await }
        });
        // Let the claimer find nothing and go idle.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let start = Instant::now();
        producer.add(&format!("k{i}")).await.unwrap();
        let claim = waiting.await.unwrap().expect("claimed");
        latencies.push(start.elapsed());
        worker.done(&claim).await.unwrap();
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    println!("notify-to-claim latencies: {latencies:?}, median {median:?}");
    assert!(median < Duration::from_millis(50), "median {median:?}");
    assert!(worker.counters().notifications >= 9);
    for q in [producer, worker] {
        q.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_migrate_once_when_many_start_at_once() {
    let db = db_or_skip!("postgres_queue_should_migrate_once_when_many_start_at_once");
    let config = db.config("q");
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move { PgQueue::migrate(&config).await })
        })
        .collect();
    for run in runs {
        assert_eq!(
            run.await.unwrap().unwrap(),
            traceq_engine::postgres::SCHEMA_VERSION
        );
    }
    let client = db.client().await.unwrap();
    let sql = format!("SELECT count(*) FROM {}.migrations", db.schema());
    let n: i64 = client.query_one(&sql, &[]).await.unwrap().get(0);
    assert_eq!(
        n,
        i64::from(traceq_engine::postgres::SCHEMA_VERSION),
        "each migration recorded once"
    );
    // And queues open on the migrated schema.
    let q = queue(&db, config).await;
    q.add("k").await.unwrap();
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_give_held_keys_back_at_shutdown() {
    let db = db_or_skip!("postgres_queue_should_give_held_keys_back_at_shutdown");
    let a = queue(&db, db.config("q")).await;
    let b = queue(&db, db.config("q")).await;
    a.add("k").await.unwrap();
    let claim = a.try_claim().await.unwrap().unwrap();
    a.shutdown().await.unwrap();
    assert!(a.add("x").await.is_err(), "adds refused after shutdown");
    assert!(
        a.done(&claim).await.is_err(),
        "completions refused after shutdown"
    );
    let taken = b
        .try_claim()
        .await
        .unwrap()
        .expect("given back, not waiting for the lease");
    assert_eq!(taken.attempt, 1, "the unfinished attempt is not counted");
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_keep_working_after_its_connections_are_cut() {
    let db = db_or_skip!("postgres_queue_should_keep_working_after_its_connections_are_cut");
    let config = db
        .config("q")
        .with_poll_interval(Duration::from_millis(100))
        .with_reconnect(Duration::from_millis(20), Duration::from_millis(200));
    let q = queue(&db, config).await;
    q.add("before").await.unwrap();
    let claim = q.claim().await.unwrap();
    let cut = db.terminate_connections().await.unwrap();
    assert!(cut >= 3, "cut {cut} connections");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The completer reconnects and applies the acknowledged completion.
    assert_eq!(q.done(&claim).await.unwrap(), Settled::Finished);
    // The shared connection reconnects for the next add, the claimer for the next claim.
    let mut added = q.add("after").await;
    if added.is_err() {
        added = q.add("after").await; // the first may meet the cut connection
    }
    added.unwrap();
    let claim = tokio::time::timeout(Duration::from_secs(5), q.claim())
        .await
        .expect("claimed after reconnecting")
        .unwrap();
    assert_eq!(claim.key, "after");
    q.done(&claim).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !q.counters().listening {
        assert!(Instant::now() < deadline, "listener never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        q.len().await.unwrap() + q.processing_len().await.unwrap(),
        0
    );
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_never_run_a_key_on_two_workers_at_once() {
    let db = db_or_skip!("postgres_queue_should_never_run_a_key_on_two_workers_at_once");
    const KEYS: usize = 200;
    const ROUNDS: usize = 3;
    let handles: Vec<PgQueue> = futures::future::join_all((0..3).map(|_| db.queue(db.config("q"))))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let running = Arc::new(parking_lot::Mutex::new(HashSet::<String>::new()));
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for q in &handles {
        for _ in 0..4 {
            let (q, running, runs) = (q.clone(), running.clone(), runs.clone());
            workers.push(tokio::spawn(async move {
                while let Some(claim) = q.claim().await {
                    assert!(
                        running.lock().insert(claim.key.clone()),
                        "{} twice",
                        claim.key
                    );
                    tokio::task::yield_now().await;
                    running.lock().remove(&claim.key);
                    runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    q.succeed(&claim).await.unwrap();
                }
            }));
        }
    }
    for round in 0..ROUNDS {
        for k in 0..KEYS {
            handles[k % 3].add(&format!("k{k}")).await.unwrap();
        }
        let _ = round;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = handles[0].stats().await.unwrap();
        if s.ready + s.processing + s.waiting == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not drained: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runs = runs.load(std::sync::atomic::Ordering::Relaxed);
    assert!((KEYS..=KEYS * ROUNDS).contains(&runs), "{runs} runs");
    for q in &handles {
        q.shutdown().await.unwrap();
        let c = q.counters();
        assert_eq!(c.stale_completions, 0);
        // Closed by the shutdown, not lost: only a connection that ends in error counts.
        assert_eq!(c.connections_lost, 0, "{c:?}");
    }
    for w in workers {
        w.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_give_prefetched_keys_back_at_shutdown() {
    let db = db_or_skip!("postgres_queue_should_give_prefetched_keys_back_at_shutdown");
    let a = queue(&db, db.config("q").with_prefetch(5)).await;
    let b = queue(&db, db.config("q")).await;
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let items: Vec<(&str, Option<&[u8]>)> = keys.iter().map(|k| (k.as_str(), None)).collect();
    a.add_many(&items, AddOptions::new()).await.unwrap();
    let first = a.claim().await.unwrap();
    assert_eq!(first.key, "k0");
    // One statement took the waiting worker's key and five more, held for the next claims.
    assert_eq!(a.processing_len().await.unwrap(), 6);
    assert_eq!(a.counters().claim_statements, 1);
    let second = a.claim().await.unwrap();
    assert_eq!(
        second.key, "k1",
        "served from the prefetched keys, in order"
    );
    assert_eq!(
        a.counters().claim_statements,
        1,
        "without another statement"
    );
    a.shutdown().await.unwrap();
    assert_eq!(b.processing_len().await.unwrap(), 0, "all given back");
    let claims = b.try_claim_batch(20).await.unwrap();
    assert_eq!(claims.len(), 10);
    assert!(
        claims.iter().all(|c| c.attempt == 1),
        "given-back attempts are not counted"
    );
    b.shutdown().await.unwrap();
}
