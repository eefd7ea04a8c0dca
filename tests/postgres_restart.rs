//! The durable queue across a real database restart: workers claiming and succeeding keys while
//! the server is restarted (`pg_ctl restart -m fast`, every connection cut), producers adding
//! before, during and after. Every key runs after its last add, an acknowledged completion is
//! never undone, and the queue drains to nothing.
//!
//! A restart cuts every connection to the server, so this is the only test of its binary (cargo
//! runs test binaries one after another). It needs `DATABASE_URL` and `TRACEQ_TEST_PG_RESTART`,
//! an executable that restarts that server and returns once it accepts connections again
//! (`.ci/run` writes one for its throwaway cluster). Without them the test says it is skipped,
//! unless `CI` is set: then it fails.
//!
//! The guarantee checked is at-least-once: a run whose claim reply was lost with the connection
//! (or whose lease lapsed while the server was away) is reclaimed after the lease and runs again.
//! What must never happen is a key left unrun after an add, or a key run again after its
//! `succeed` returned `Finished` without a new add.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use traceq_engine::postgres::testing::TestSchema;
use traceq_engine::postgres::{PgQueue, PgQueueConfig, Settled};

/// The variable naming the restart executable.
const RESTART: &str = "TRACEQ_TEST_PG_RESTART";
/// The whole test, restart included, never takes longer.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The restart itself.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);
/// A handler's run.
const HANDLER_TIME: Duration = Duration::from_millis(20);
const WORKERS: usize = 4;

/// One run of a key by a worker.
#[derive(Debug, Clone)]
struct Run {
    /// When the worker had the claim.
    claimed: Instant,
    /// When it called `succeed`, and what came back (at the time it came back).
    succeed_called: Instant,
    settled: Instant,
    outcome: Result<Settled, String>,
}

/// One successful add of a key: when the call started and returned.
#[derive(Debug, Clone, Copy)]
struct Add {
    started: Instant,
    returned: Instant,
}

#[derive(Debug, Default)]
struct Log {
    runs: Mutex<HashMap<String, Vec<Run>>>,
    adds: Mutex<HashMap<String, Vec<Add>>>,
    add_retries: AtomicU64,
}

/// Adds `key`, retrying (the database may be restarting) until an add returns `Ok`.
async fn add_until_ok(q: &PgQueue, log: &Log, key: &str) {
    loop {
        let started = Instant::now();
        match q.add(key).await {
            Ok(()) => {
                let returned = Instant::now();
                log.adds
                    .lock()
                    .entry(key.to_owned())
                    .or_default()
                    .push(Add { started, returned });
                return;
            }
            Err(error) => {
                assert!(error.is_connection(), "add {key}: {error}");
                log.add_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn worker(q: PgQueue, log: Arc<Log>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let claim = tokio::select! {
            c = q.claim() => c,
            () = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        let Some(claim) = claim else { return };
        let claimed = Instant::now();
        tokio::time::sleep(HANDLER_TIME).await;
        let succeed_called = Instant::now();
        let outcome = q.succeed(&claim).await.map_err(|e| e.to_string());
        let settled = Instant::now();
        log.runs
            .lock()
            .entry(claim.key.clone())
            .or_default()
            .push(Run {
                claimed,
                succeed_called,
                settled,
                outcome,
            });
    }
}

/// Whether every key added has a run claimed after its last add began.
fn all_covered(log: &Log) -> bool {
    let adds = log.adds.lock();
    let runs = log.runs.lock();
    adds.iter().all(|(key, adds)| {
        let last = adds.iter().map(|a| a.started).max().expect("an add");
        runs.get(key)
            .is_some_and(|r| r.iter().any(|run| run.claimed > last))
    })
}

fn restart_command() -> Option<String> {
    match std::env::var(RESTART) {
        Ok(path) if !path.is_empty() => Some(path),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("{RESTART} must be set when CI is (the restart test may not be skipped)");
            }
            println!("postgres_restart: skipped: {RESTART} not set");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_keep_every_add_and_completion_across_a_server_restart() {
    let Some(db) = TestSchema::new("postgres_restart") else {
        return;
    };
    let Some(restart) = restart_command() else {
        return;
    };
    tokio::time::timeout(TEST_TIMEOUT, run(&db, restart))
        .await
        .expect("the restart test took too long: something hangs");
}

fn config(db: &TestSchema) -> PgQueueConfig {
    db.config("q")
        // A claim whose reply was lost with its connection is reclaimed soon.
        .with_lease_timeout(Duration::from_secs(3))
        .with_poll_interval(Duration::from_millis(200))
        .with_reconnect(Duration::from_millis(50), Duration::from_millis(500))
}

async fn run(db: &TestSchema, restart: String) {
    let workers_q = db.queue(config(db)).await.expect("connect the workers");
    let producer = db.queue(config(db)).await.expect("connect the producer");
    let log = Arc::new(Log::default());
    let stop = Arc::new(AtomicBool::new(false));

    // Before: 100 keys queued before any worker runs.
    for i in 0..100 {
        add_until_ok(&producer, &log, &format!("k-{i:03}")).await;
    }
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| tokio::spawn(worker(workers_q.clone(), log.clone(), stop.clone())))
        .collect();
    // Watch the listener's state, to see it drop and come back.
    let listener_flaps = Arc::new(AtomicU64::new(0));
    let watch = {
        let (q, flaps, stop) = (workers_q.clone(), listener_flaps.clone(), stop.clone());
        tokio::spawn(async move {
            let mut was = q.counters().listening;
            while !stop.load(Ordering::Relaxed) {
                let now = q.counters().listening;
                if was && !now {
                    flaps.fetch_add(1, Ordering::Relaxed);
                }
                was = now;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Let some run, so the restart cuts a queue at work.
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.runs.lock().len() < 20 {
        assert!(Instant::now() < deadline, "no progress before the restart");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // During: a producer adds a key every 10 ms while the server restarts.
    let during = {
        let (q, log) = (producer.clone(), log.clone());
        tokio::spawn(async move {
            for i in 100..200 {
                add_until_ok(&q, &log, &format!("k-{i:03}")).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let runs_before = log.runs.lock().values().map(Vec::len).sum::<usize>();
    let started = Instant::now();
    let out = tokio::time::timeout(
        RESTART_TIMEOUT,
        tokio::task::spawn_blocking(move || std::process::Command::new(&restart).output()),
    )
    .await
    .expect("the restart script took too long")
    .expect("the restart thread")
    .expect("running the restart script");
    let restart_took = started.elapsed();
    let restarted = Instant::now();
    assert!(
        out.status.success(),
        "restart failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Back: how long until a worker finished a key again.
    let back = Instant::now();
    let runs_at_restart = log.runs.lock().values().map(Vec::len).sum::<usize>();
    let deadline = back + Duration::from_secs(30);
    while log.runs.lock().values().map(Vec::len).sum::<usize>() == runs_at_restart {
        assert!(
            Instant::now() < deadline,
            "no run finished after the restart"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recovery = back.elapsed();

    // After: keys run before are added again, and new ones.
    for i in (0..20).chain(200..250) {
        add_until_ok(&producer, &log, &format!("k-{i:03}")).await;
    }
    during.await.expect("the producer");

    // Drained: every add covered by a later run, nothing queued or processing.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = producer.stats().await;
        let idle = stats
            .as_ref()
            .is_ok_and(|s| s.ready == 0 && s.waiting == 0 && s.processing == 0 && s.failed == 0);
        if idle && all_covered(&log) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not drained within 60 s: {stats:?}, every add covered: {}",
            all_covered(&log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("a worker stops")
            .expect("a worker");
    }
    watch.await.unwrap();
    let counters = workers_q.counters();
    let producer_counters = producer.counters();
    tokio::time::timeout(Duration::from_secs(10), async {
        workers_q.shutdown().await.expect("workers' shutdown");
        producer.shutdown().await.expect("producer's shutdown");
    })
    .await
    .expect("shutdown hangs");

    let adds = log.adds.lock();
    let runs = log.runs.lock();
    // Completions asked for before the server came back and answered after it went down.
    let across = runs
        .values()
        .flatten()
        .filter(|r| r.succeed_called < restarted && r.settled > started)
        .count();
    let mut extra_runs = 0;
    let mut stale = 0;
    for (key, key_runs) in runs.iter() {
        let key_adds = &adds[key];
        for (i, run) in key_runs.iter().enumerate() {
            let outcome = run.outcome.as_ref();
            assert!(outcome.is_ok(), "{key}: succeed failed: {:?}", run.outcome);
            if outcome == Ok(&Settled::Stale) {
                stale += 1;
            }
            if outcome != Ok(&Settled::Finished) {
                continue;
            }
            // An acknowledged completion: any later run of the key needs an add that ended
            // after the completion was asked for and began before that run's claim.
            for later in key_runs.iter().skip(i + 1) {
                let re_added = key_adds
                    .iter()
                    .any(|a| a.returned > run.succeed_called && a.started < later.claimed);
                assert!(
                    re_added,
                    "{key} ran again after its completion was acknowledged, with no add: {key_runs:?} {key_adds:?}"
                );
            }
        }
        let needed = key_adds.len();
        extra_runs += key_runs.len().saturating_sub(needed);
    }
    assert_eq!(adds.len(), 250, "every key added");
    assert!(adds.keys().all(|k| runs.contains_key(k)), "every key ran");
    println!(
        "postgres_restart: restart {restart_took:?}, first run finished {recovery:?} after it; \
         {runs_before} runs before; {} runs of {} adds in all ({extra_runs} beyond one per add, \
         {stale} stale); {across} completions across the restart; adds retried {}; listener lost {} times; counters {counters:?}",
        runs.values().map(Vec::len).sum::<usize>(),
        adds.values().map(Vec::len).sum::<usize>(),
        log.add_retries.load(Ordering::Relaxed),
        listener_flaps.load(Ordering::Relaxed),
    );
    assert!(
        listener_flaps.load(Ordering::Relaxed) >= 1,
        "the restart cut the listener's connection"
    );
    assert!(counters.listening, "listening again after the restart");
    // The workers' handle had its claimer, completer, listener and shared connections open
    // when the server went down: each loss is counted.
    assert!(
        counters.connections_lost >= 3,
        "the restart cut the workers' connections: {counters:?}"
    );
    assert!(
        producer_counters.connections_lost >= 1,
        "the restart cut the producer's connections: {producer_counters:?}"
    );
}
