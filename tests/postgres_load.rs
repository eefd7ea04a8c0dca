//! Multi-process load test of the engine on the durable queue (`DATABASE_URL`): three worker
//! processes on one queue, 20,000 keys re-added at random while they run, 20% of attempts
//! failing, one worker killed with SIGKILL mid-run. Checked from the workers' own logs, not
//! trusted from their counters: every key ran (and succeeded) after its last add, no key ever
//! ran on two workers at once (the killed worker's attempts count as running until it died),
//! and nothing is left queued, leased or dead at the end. Stale completions are summed from the
//! survivors and reported.
//!
//! The workers are this test binary run again (`--exact postgres_load_worker --ignored`) with
//! its settings in the environment; each writes a line when an attempt starts and when it ends,
//! with `write(2)` straight to its log, so a SIGKILL loses nothing written. Bounded: the keys
//! are fixed, every wait has a deadline, and it uses loopback only.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use traceq_engine::postgres::testing::TestSchema;
use traceq_engine::postgres::{PgQueue, PgQueueConfig};
use traceq_engine::{AddOptions, Attempt, Engine};

const KEYS: usize = 20_000;
const READDS: usize = 10_000;
const WORKERS: usize = 3;
const FAIL_PERCENT: u64 = 20;
const LEASE: Duration = Duration::from_secs(2);
const ENV_CHILD: &str = "TRACEQ_LOAD_CHILD";

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn config(url: &str, schema: &str) -> PgQueueConfig {
    PgQueueConfig::new(url)
        .with_schema(schema)
        .with_queue("load")
        .with_lease_timeout(LEASE)
        .with_poll_interval(Duration::from_millis(100))
}

/// Whether attempt `n` of `key` fails: a fixed 20% of (key, attempt) pairs.
fn fails(key: &str, n: u32) -> bool {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (key, n).hash(&mut h);
    h.finish() % 100 < FAIL_PERCENT
}

/// One worker process: runs the engine until the stop file appears, logging every attempt.
#[test]
#[ignore = "a worker process of postgres_load_should_survive_a_killed_worker"]
fn postgres_load_worker() {
    let Ok(id) = std::env::var(ENV_CHILD) else {
        return;
    };
    let url = std::env::var("TRACEQ_LOAD_URL").unwrap();
    let schema = std::env::var("TRACEQ_LOAD_SCHEMA").unwrap();
    let log = PathBuf::from(std::env::var("TRACEQ_LOAD_LOG").unwrap());
    let stop = PathBuf::from(std::env::var("TRACEQ_LOAD_STOP").unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let engine = Engine::<String>::builder()
            .with_workers(32)
            .with_max_retries(30)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(20))
            .build_postgres(config(&url, &schema))
            .await
            .unwrap();
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap(),
        );
        let handle = engine.handle();
        let stopper = tokio::spawn(async move {
            while !stop.exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            handle.shutdown_with_drain().await.unwrap();
        });
        let pid = std::process::id();
        engine
            .run(move |attempt: Attempt<String>| {
                let file = file.clone();
                async move {
                    let line = |what: &str| {
                        // One write per line: the kernel has it even if we are killed next.
                        let text = format!(
                            "{what} {} {} {pid} {}\n",
                            attempt.key,
                            attempt.number,
                            now_ns()
                        );
                        (&*file).write_all(text.as_bytes()).unwrap();
                    };
                    line("S");
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    let failed = fails(&attempt.key, attempt.number);
                    line(if failed { "F" } else { "E" });
                    if failed {
                        Err("injected failure".to_owned())
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        stopper.await.unwrap();
        let c = engine.queue().counters();
        println!(
            "COUNTERS worker={id} stale={} reclaimed={} claimed={}",
            c.stale_completions, c.reclaimed, c.claimed
        );
    });
}

fn spawn_worker(id: usize, db: &TestSchema, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "postgres_load_worker",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_CHILD, id.to_string())
        .env("TRACEQ_LOAD_URL", db.url())
        .env("TRACEQ_LOAD_SCHEMA", db.schema())
        .env("TRACEQ_LOAD_LOG", dir.join(format!("worker-{id}.log")))
        .env("TRACEQ_LOAD_STOP", dir.join("stop"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a worker process")
}

/// One attempt as the logs tell it.
#[derive(Debug, Clone)]
#[allow(dead_code)] // `pid` and `number` are read through `Debug`, in failure messages
struct Run {
    pid: u32,
    number: u32,
    start: u128,
    /// `None`: the worker was killed while it ran.
    end: Option<u128>,
    ok: bool,
}

fn read_runs(dir: &Path) -> HashMap<String, Vec<Run>> {
    let mut runs: HashMap<String, Vec<Run>> = HashMap::new();
    for id in 0..WORKERS {
        let text =
            std::fs::read_to_string(dir.join(format!("worker-{id}.log"))).unwrap_or_default();
        let mut open: HashMap<(String, u32), Run> = HashMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 5, "log line {line:?}");
            let (key, number, pid, at) = (
                f[1].to_owned(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            );
            match f[0] {
                "S" => {
                    let run = Run {
                        pid,
                        number,
                        start: at,
                        end: None,
                        ok: false,
                    };
                    assert!(
                        open.insert((key.clone(), number), run).is_none(),
                        "attempt {number} of {key} started twice in one worker"
                    );
                }
                end => {
                    let mut run = open.remove(&(key.clone(), number)).expect("started");
                    run.end = Some(at);
                    run.ok = end == "E";
                    runs.entry(key).or_default().push(run);
                }
            }
        }
        for ((key, _), run) in open {
            runs.entry(key).or_default().push(run);
        }
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_load_should_survive_a_killed_worker() {
    let Some(db) = TestSchema::new("postgres_load_should_survive_a_killed_worker") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let producer = PgQueue::connect(config(db.url(), db.schema()))
        .await
        .unwrap();
    let mut workers: Vec<Option<Child>> = (0..WORKERS)
        .map(|id| Some(spawn_worker(id, &db, dir.path())))
        .collect();
    let started = Instant::now();
    // Every key once, then random re-adds while the workers run; the time before each key's
    // last add is what its last run must start after.
    let mut last_add: HashMap<String, u128> = HashMap::new();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i:05}")).collect();
    for chunk in keys.chunks(1000) {
        let before = now_ns();
        let items: Vec<(&str, Option<&[u8]>)> = chunk.iter().map(|k| (k.as_str(), None)).collect();
        producer.add_many(&items, AddOptions::new()).await.unwrap();
        for k in chunk {
            last_add.insert(k.clone(), before);
        }
    }
    let mut killed_at = None;
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..READDS / 50 {
        let before = now_ns();
        let batch: Vec<&str> = (0..50)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                keys[(rng % KEYS as u64) as usize].as_str()
            })
            .collect();
        let items: Vec<(&str, Option<&[u8]>)> = batch.iter().map(|k| (*k, None)).collect();
        producer.add_many(&items, AddOptions::new()).await.unwrap();
        for k in batch {
            last_add.insert(k.to_owned(), before);
        }
        if i == READDS / 100 {
            // Mid-run: one worker dies without a word; its leases must expire and move.
            let mut victim = workers[0].take().unwrap();
            killed_at = Some(now_ns());
            victim.kill().unwrap();
            victim.wait().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = killed_at.expect("a worker was killed");
    // Wait for the survivors to finish everything (the killed worker's keys after their lease).
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let s = producer.stats().await.unwrap();
        if s.ready + s.waiting + s.processing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queue did not drain: {s:?} after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(dir.path().join("stop"), b"").unwrap();
    let mut stale = 0u64;
    let mut reclaimed = 0u64;
    for child in workers.iter_mut().filter_map(Option::take) {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(output.status.success(), "a worker failed: {output:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        let counters = text
            .lines()
            .find_map(|l| l.split_once("COUNTERS").map(|(_, rest)| rest.to_owned()))
            .unwrap_or_else(|| panic!("no counters in {text}"));
        for field in counters.split_whitespace() {
            if let Some(n) = field.strip_prefix("stale=") {
                stale += n.parse::<u64>().unwrap();
            }
            if let Some(n) = field.strip_prefix("reclaimed=") {
                reclaimed += n.parse::<u64>().unwrap();
            }
        }
    }
    let runs = read_runs(dir.path());
    let mut attempts = 0usize;
    let mut failures = 0usize;
    for key in &keys {
        let mut list = runs.get(key).cloned().unwrap_or_default();
        attempts += list.len();
        failures += list.iter().filter(|r| r.end.is_some() && !r.ok).count();
        list.sort_by_key(|r| r.start);
        // Never two at once: each run starts after the one before it ended (a run cut by
        // the SIGKILL lasted until the kill).
        for pair in list.windows(2) {
            let end = pair[0].end.unwrap_or(killed_at);
            assert!(
                pair[1].start >= end,
                "{key} ran on two workers at once: {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }
        let last = last_add[key];
        assert!(
            list.iter().any(|r| r.ok && r.start > last),
            "{key} did not succeed after its last add: {list:?}"
        );
    }
    let cut = runs.values().flatten().filter(|r| r.end.is_none()).count();
    let s = producer.stats().await.unwrap();
    assert_eq!(
        (s.ready, s.waiting, s.processing, s.failed),
        (0, 0, 0, 0),
        "nothing left queued, leased or dead"
    );
    println!(
        "postgres_load: {KEYS} keys + {READDS} re-adds, {attempts} attempts ({failures} failed, \
         {cut} cut by the SIGKILL), {reclaimed} reclaimed, {stale} stale completions refused, \
         {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures * 100 >= attempts * 15,
        "about 20% of attempts failed"
    );
    producer.shutdown().await.unwrap();
}
