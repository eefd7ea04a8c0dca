//! `traceq demo`: a controller reconciling a few thousand synthetic objects for a few seconds.
//!
//! Watch events add object keys to the engine's queue; the handler "reconciles" an object (a short
//! simulated delay), fails at random at `--error-rate`, is slow for a few objects, and always fails
//! for a few poisoned ones, which exhaust their retries and are forgotten.

use anyhow::{bail, Context};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use traceq::engine::{Attempt, AttemptError, Engine, OutcomeKind};

/// Options of `traceq demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How long producers send watch events, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Concurrent workers.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Probability that an attempt fails, from 0 to 1.
    #[arg(long, default_value_t = 0.1)]
    error_rate: f64,
    /// Number of synthetic objects.
    #[arg(long, default_value_t = 3000)]
    objects: usize,
    /// Seed of the random events and failures.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Default)]
struct Tally {
    attempts: AtomicU64,
    succeeded: AtomicU64,
    requeued: AtomicU64,
    exhausted: AtomicU64,
    dropped: AtomicU64,
    timed_out: AtomicU64,
    panicked: AtomicU64,
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.error_rate) {
        bail!(
            "--error-rate must be between 0 and 1, got {}",
            args.error_rate
        );
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!(
            "--duration must be a positive number of seconds, got {}",
            args.duration
        );
    }
    if args.objects == 0 {
        bail!("--objects must be at least 1");
    }
    // The engine catches handler panics and records them; one line is enough on the terminal.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("panic");
        eprintln!("\rhandler panicked (caught, will retry): {msg}");
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(demo(args))
}

fn object_key(i: usize) -> String {
    format!("ns-{}/object-{i:05}", i % 7)
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let tally = Arc::new(Tally::default());
    let hook_tally = Arc::clone(&tally);
    let engine = Engine::<String>::builder()
        .name("demo-controller")
        .workers(args.workers)
        .max_retries(5)
        .backoff(Duration::from_millis(5), Duration::from_millis(500))
        .attempt_timeout(Duration::from_millis(200))
        .on_outcome(move |o| {
            let t = &hook_tally;
            t.attempts.fetch_add(1, Ordering::Relaxed);
            let counter = match &o.kind {
                OutcomeKind::Succeeded => &t.succeeded,
                OutcomeKind::Requeued { .. } => &t.requeued,
                OutcomeKind::Exhausted { .. } => &t.exhausted,
                _ => &t.dropped,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            match o.kind.error() {
                Some(AttemptError::TimedOut(_)) => t.timed_out.fetch_add(1, Ordering::Relaxed),
                Some(AttemptError::Panicked(_)) => t.panicked.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
        })
        .build()
        .context("building the engine")?;
    let handle = engine.handle();

    // A few objects are slow, a few are poisoned (always fail), one panics on its first attempt.
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut traits: HashMap<String, &'static str> = HashMap::new();
    for _ in 0..(args.objects / 100).max(1) {
        traits.insert(object_key(rng.random_range(0..args.objects)), "slow");
        traits.insert(object_key(rng.random_range(0..args.objects)), "poisoned");
    }
    traits.insert(object_key(0), "panics-once");
    let traits = Arc::new(traits);
    let error_rate = args.error_rate;
    let seed = args.seed;
    let handler = move |a: Attempt<String>| {
        let traits = Arc::clone(&traits);
        async move {
            let mut rng = StdRng::seed_from_u64(seed ^ hash(&a.key) ^ u64::from(a.number));
            let kind = traits.get(&a.key).copied();
            let work = match kind {
                Some("slow") => Duration::from_millis(rng.random_range(50..150)),
                _ => Duration::from_micros(rng.random_range(100..2_000)),
            };
            tokio::time::sleep(work).await;
            match kind {
                Some("poisoned") => return Err(format!("{}: invalid spec", a.key)),
                Some("panics-once") if a.number == 1 => panic!("{}: nil pointer", a.key),
                _ => {}
            }
            if rng.random_bool(error_rate) {
                return Err(format!("{}: conflict updating status", a.key));
            }
            Ok(())
        }
    };
    let run = tokio::spawn(async move { engine.run(handler).await });

    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let mut events = 0u64;
    let mut next_report = started + Duration::from_secs(1);
    for i in 0..args.objects {
        handle.add(object_key(i));
    }
    while Instant::now() < until {
        for _ in 0..20 {
            handle.add(object_key(rng.random_range(0..args.objects)));
            events += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            let m = handle.metrics();
            print!(
                "\r{:>5.1}s  events {events:>8}  queued {:>5}  waiting {:>4}  processing {:>3}  attempts {:>8}",
                started.elapsed().as_secs_f64(),
                m.depth,
                m.waiting,
                m.processing,
                tally.attempts.load(Ordering::Relaxed)
            );
            std::io::stdout().flush().ok();
        }
    }
    println!();
    // Let retries in backoff finish, then drain whatever is in flight.
    let settle = Instant::now() + Duration::from_secs(10);
    let q = handle.queue().clone();
    while q.len() + q.waiting_len() + q.processing_len() > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown_with_drain().await;
    run.await.context("joining the workers")?;

    let m = handle.metrics();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "\ntraceq demo: {} objects, {} workers, {:.1} s",
        args.objects,
        args.workers,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {:<34} {:>10}",
        "watch events (adds)",
        events + args.objects as u64
    );
    println!("  {:<34} {:>10}", "adds that queued a key", m.adds_total);
    println!("  {:<34} {:>10}", "attempts", load(&tally.attempts));
    println!("  {:<34} {:>10}", "succeeded", load(&tally.succeeded));
    println!(
        "  {:<34} {:>10}",
        "retried (requeued with backoff)",
        load(&tally.requeued)
    );
    println!(
        "  {:<34} {:>10}",
        "forgotten after max retries",
        load(&tally.exhausted)
    );
    println!(
        "  {:<34} {:>10}",
        "timed out / panicked attempts",
        format!("{} / {}", load(&tally.timed_out), load(&tally.panicked))
    );
    println!(
        "  {:<34} {:>10}",
        "left unprocessed at shutdown",
        m.depth + m.waiting
    );
    println!(
        "  {:<34} {:>10.3}",
        "mean queue wait (ms)",
        m.queue_duration.mean().as_secs_f64() * 1e3
    );
    println!(
        "  {:<34} {:>10.3}",
        "mean work duration (ms)",
        m.work_duration.mean().as_secs_f64() * 1e3
    );
    Ok(())
}

fn hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}
