//! `traceq demo`: a traced controller reconciling a few thousand synthetic objects, tail-sampled
//! in process, the kept traces written to an OTLP-JSON lines file.
//!
//! Watch events add object keys to the engine's queue; the handler "reconciles" an object (a short
//! simulated delay, in a span under the attempt's), fails at random at `--error-rate`, is slow for
//! a few objects, always fails for a few poisoned ones (they exhaust their retries and are
//! forgotten) and panics once for one. One long job runs beside them for most of the run; the
//! demo's short maximum trace age splits it into linked segments sharing a job id. The tail
//! sampler keeps every trace with an error, every segment of the long job, and a sample of the
//! rest; at the end the demo reads its own file back and draws one kept error trace.

use crate::sampling::SharedProcessor;
use anyhow::{bail, Context as _};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use opentelemetry::trace::{Span as _, Status, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter as _};
use opentelemetry_sdk::Resource;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::{BufReader, IsTerminal};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use traceq::engine::{Attempt, AttemptError, Engine, OutcomeKind};
use traceq::exporter::{
    read_otlp_json_lines, traces, OtlpJsonFileExporter, TraceRecord, Waterfall,
};
use traceq::sampler::{SamplerConfig, TailSamplingProcessor};

/// The long job's key; its job id is what follows `jobs/`.
const LONG_JOB_KEY: &str = "jobs/reindex-all";
/// The long job's id, shared by its segments.
const LONG_JOB_ID: &str = "reindex-all";
/// How many segments the long job is cut into, roughly.
const LONG_JOB_SEGMENTS: f64 = 3.0;

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
    /// Percentage of the traces without errors that the sampler keeps.
    #[arg(long, default_value_t = 10.0)]
    sample_percent: f64,
    /// Where the kept traces are written, as OTLP-JSON lines.
    #[arg(long, default_value = "traceq-traces.jsonl")]
    output: PathBuf,
    /// Send the kept traces to this OTLP/HTTP receiver instead of the file: the base URL of a
    /// collector's or Jaeger's OTLP/HTTP port, e.g. http://localhost:4318 (`/v1/traces` is
    /// appended). Plain http only.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

#[derive(Default)]
struct Tally {
    attempts: AtomicU64,
    succeeded: AtomicU64,
    requeued: AtomicU64,
    exhausted: AtomicU64,
    dropped: AtomicU64,
    panicked: AtomicU64,
    /// Item lives with at least one failed attempt: each has a trace with an error span.
    items_failed: AtomicU64,
}

fn validate(args: &DemoArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.error_rate) {
        bail!(
            "--error-rate must be between 0 and 1, got {}",
            args.error_rate
        );
    }
    if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= 3600.0) {
        bail!(
            "--duration must be a number of seconds above 0 and at most 3600, got {}",
            args.duration
        );
    }
    if args.objects == 0 {
        bail!("--objects must be at least 1");
    }
    if !(0.0..=100.0).contains(&args.sample_percent) {
        bail!(
            "--sample-percent must be between 0 and 100, got {}",
            args.sample_percent
        );
    }
    Ok(())
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let resource = Resource::builder().with_service_name("traceq-demo").build();
    // Built before entering the runtime: the OTLP exporter's blocking HTTP client must not be
    // created on an async thread.
    let processor = Arc::new(processor(&args, &resource)?);
    runtime.block_on(demo(args, resource, processor))
}

/// The URL OTLP/HTTP traces are posted to.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The tail sampler, exporting to the file or, with `--otlp-endpoint`, over OTLP/HTTP.
fn processor(args: &DemoArgs, resource: &Resource) -> anyhow::Result<TailSamplingProcessor> {
    let config = sampler_config(args.sample_percent)?;
    Ok(match &args.otlp_endpoint {
        None => {
            let exporter = OtlpJsonFileExporter::create(&args.output)
                .with_context(|| format!("creating {}", args.output.display()))?
                .with_resource(resource);
            TailSamplingProcessor::new(exporter, config)?
        }
        Some(endpoint) => {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(traces_url(endpoint))
                .with_timeout(Duration::from_secs(5))
                .build()
                .with_context(|| format!("the OTLP exporter for {endpoint}"))?;
            exporter.set_resource(resource);
            TailSamplingProcessor::new(exporter, config)?
        }
    })
}

fn object_key(i: usize) -> String {
    format!("ns-{}/object-{i:05}", i % 7)
}

/// Errors, the long job's segments (any job's, if its id were listed), and a sample of the rest, in the Collector's syntax.
fn sampler_config(sample_percent: f64) -> anyhow::Result<SamplerConfig> {
    let yaml = format!(
        "decision_wait: 60s
decision_wait_after_root: 300ms
policies:
  - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}
  - name: long-jobs
    type: string_attribute
    string_attribute: {{key: traceq.job.id, values: [{job_id}]}}
  - {{name: probabilistic, type: probabilistic, probabilistic: {{sampling_percentage: {sample_percent}}}}}
",
        job_id = LONG_JOB_ID
    );
    SamplerConfig::from_yaml(&yaml).context("the demo's sampler configuration")
}

async fn demo(
    args: DemoArgs,
    resource: Resource,
    processor: Arc<TailSamplingProcessor>,
) -> anyhow::Result<()> {
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(SharedProcessor::new(Arc::clone(&processor)))
        .build();
    let tracer = provider.tracer("traceq-demo");

    let long_job_len = Duration::from_secs_f64((args.duration * 0.8).clamp(0.5, 60.0));
    let tally = Arc::new(Tally::default());
    let hook_tally = Arc::clone(&tally);
    let engine = Engine::<String>::builder()
        .with_name("demo-controller")
        .with_workers(args.workers)
        .with_max_retries(5)
        .with_backoff(Duration::from_millis(5), Duration::from_millis(500))
        .with_tracer(tracer.clone())
        // Shortened from the default hour so the long job is split within the run.
        .with_max_trace_age(long_job_len.div_f64(LONG_JOB_SEGMENTS - 0.5))
        .with_job_id_of(|key: &String| key.strip_prefix("jobs/").map(str::to_owned))
        .with_outcome_hook(move |o| {
            let t = &hook_tally;
            t.attempts.fetch_add(1, Ordering::Relaxed);
            let counter = match &o.kind {
                OutcomeKind::Succeeded => &t.succeeded,
                OutcomeKind::Requeued { .. } => &t.requeued,
                OutcomeKind::Exhausted { .. } => &t.exhausted,
                _ => &t.dropped,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(error) = o.kind.error() {
                // Success forgets a key, so a life with a failure fails its first attempt.
                if o.attempt == 1 {
                    t.items_failed.fetch_add(1, Ordering::Relaxed);
                }
                if matches!(error, AttemptError::Panicked(_)) {
                    t.panicked.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .build()
        .context("building the engine")?;
    let handle = engine.handle();

    let progress = progress_bar(args.duration);
    let hook_progress = progress.clone();
    // The engine catches handler panics and records them; one line is enough on the terminal.
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("panic");
        let line = format!("handler panicked (caught, will retry): {msg}");
        if hook_progress.is_hidden() {
            eprintln!("{line}");
        } else {
            hook_progress.println(line);
        }
    }));

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
        let tracer = tracer.clone();
        async move {
            if a.key == LONG_JOB_KEY {
                return long_job(&tracer, &a, long_job_len).await;
            }
            let (namespace, name) = a.key.split_once('/').unwrap_or(("", a.key.as_str()));
            let mut span = tracer
                .span_builder("reconcile")
                .with_attributes([
                    KeyValue::new("k8s.namespace.name", namespace.to_owned()),
                    KeyValue::new("k8s.object.name", name.to_owned()),
                ])
                .start_with_context(&tracer, &a.context());
            let mut rng = StdRng::seed_from_u64(seed ^ hash(&a.key) ^ u64::from(a.number));
            let kind = traits.get(&a.key).copied();
            match kind {
                Some("slow") => {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(50..150))).await;
                }
                // Most reconciles find nothing to do; some wait on an API call.
                _ if rng.random_bool(0.8) => tokio::task::yield_now().await,
                _ => tokio::time::sleep(Duration::from_millis(rng.random_range(1..4))).await,
            }
            let result = match kind {
                Some("poisoned") => Err(format!("{}: invalid spec", a.key)),
                Some("panics-once") if a.number == 1 => {
                    span.end();
                    panic!("{}: nil pointer", a.key)
                }
                _ if rng.random_bool(error_rate) => {
                    Err(format!("{}: conflict updating status", a.key))
                }
                _ => Ok(()),
            };
            if let Err(e) = &result {
                span.set_status(Status::error(e.clone()));
            }
            span.end();
            result
        }
    };
    let run = tokio::spawn(async move { engine.run(handler).await });

    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let mut events = 0u64;
    let mut next_tick = started;
    handle.add(LONG_JOB_KEY.to_owned());
    for i in 0..args.objects {
        handle.add(object_key(i));
    }
    while Instant::now() < until {
        for _ in 0..20 {
            handle.add(object_key(rng.random_range(0..args.objects)));
            events += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        if Instant::now() >= next_tick {
            next_tick += Duration::from_millis(100);
            progress.set_position(started.elapsed().as_millis() as u64);
            progress.set_message(format!(
                "attempts {}  retries {}  forgotten {}",
                tally.attempts.load(Ordering::Relaxed),
                tally.requeued.load(Ordering::Relaxed),
                tally.exhausted.load(Ordering::Relaxed),
            ));
        }
    }
    progress.set_message("draining: retries in backoff, the long job");
    // Let retries in backoff and the long job finish, then drain whatever is in flight.
    let settle = long_job_len + Duration::from_secs(10);
    // Past the deadline, whatever is still queued or waiting is left and counted below.
    let _ = tokio::time::timeout(settle, handle.queue().wait_idle()).await;
    handle.shutdown_with_drain().await;
    run.await.context("joining the workers")?;
    let ran_for = started.elapsed();
    progress.finish_and_clear();

    // The SDK's flush and shutdown must not run on an async worker (see PITFALLS).
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        provider.force_flush().context("flushing the tracer")?;
        provider.shutdown().context("shutting the tracer down")?;
        Ok(())
    })
    .await
    .context("joining the flush")??;

    let m = handle.metrics();
    let s = processor.metrics();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let row = |label: &str, value: String| println!("  {label:<48} {value:>10}");
    println!(
        "traceq demo: {} objects, {} workers, {:.1} s of events, {:.1} s in all",
        args.objects,
        args.workers,
        args.duration,
        ran_for.as_secs_f64()
    );
    println!("\n work queue");
    let adds = events + args.objects as u64 + 1;
    row("watch events (adds)", adds.to_string());
    row(
        "queue adds (workqueue_adds_total, retries incl.)",
        m.adds_total.to_string(),
    );
    let processed = load(&tally.succeeded) + load(&tally.exhausted);
    row(
        "items processed (succeeded or forgotten)",
        processed.to_string(),
    );
    row("attempts", load(&tally.attempts).to_string());
    row(
        "retries (requeued with backoff)",
        load(&tally.requeued).to_string(),
    );
    row(
        "items that failed at least once",
        load(&tally.items_failed).to_string(),
    );
    row(
        "forgotten after max retries",
        load(&tally.exhausted).to_string(),
    );
    row(
        "panicked attempts (caught)",
        load(&tally.panicked).to_string(),
    );
    row(
        "left unprocessed at shutdown",
        (m.depth + m.waiting).to_string(),
    );
    println!("\n tail sampling");
    row("traces seen", s.new_trace_id_received.to_string());
    row("traces kept", s.global_count_traces_sampled.to_string());
    for p in &s.policies {
        row(
            &format!("  by policy {}", p.policy),
            p.traces_kept.to_string(),
        );
    }
    if s.traces_kept_by_job_linkage > 0 {
        row("  by job linkage", s.traces_kept_by_job_linkage.to_string());
    }
    row(
        "traces dropped",
        s.global_count_traces_not_sampled.to_string(),
    );
    row("spans exported", s.spans_exported.to_string());
    let lost = s.spans_dropped_queue_full + s.export_failures;
    if lost > 0 {
        row(
            "spans lost (export queue full) + failed exports",
            lost.to_string(),
        );
    }
    match &args.otlp_endpoint {
        Some(endpoint) => {
            println!("\n kept traces sent to {}", traces_url(endpoint));
            if s.export_failures > 0 {
                bail!("{} exports to {endpoint} failed", s.export_failures);
            }
            Ok(())
        }
        None => show_kept(&args.output),
    }
}

/// Reads the demo's file back: the long job's segments, and the waterfall of one error trace.
fn show_kept(output: &std::path::Path) -> anyhow::Result<()> {
    let read = {
        let file = std::fs::File::open(output)
            .with_context(|| format!("reading back {}", output.display()))?;
        read_otlp_json_lines(BufReader::new(file))?
    };
    let kept = traces(read.spans);
    let segments = kept
        .iter()
        .filter(|t| {
            t.spans
                .iter()
                .any(|s| s.attribute("traceq.job.id") == Some(LONG_JOB_ID))
        })
        .count();
    println!(
        "\n kept traces: {} ({} with errors, {} segments of the long job) in {}",
        kept.len(),
        kept.iter().filter(|t| t.has_error()).count(),
        segments,
        output.display()
    );

    // One kept error trace: preferably an object that exhausted its retries, in one segment.
    let exhausted = |t: &TraceRecord| {
        t.spans
            .iter()
            .any(|s| s.attribute("traceq.outcome") == Some("exhausted_retries"))
    };
    let whole = |t: &TraceRecord| t.spans.iter().all(|s| s.links.is_empty());
    let errors: Vec<&TraceRecord> = kept.iter().filter(|t| t.has_error()).collect();
    let example = errors
        .iter()
        .find(|t| exhausted(t) && whole(t))
        .or_else(|| errors.iter().find(|t| exhausted(t)))
        .or_else(|| errors.first());
    if let Some(trace) = example {
        let style = if std::io::stdout().is_terminal() {
            Waterfall::terminal()
        } else {
            Waterfall::plain()
        };
        println!("\n a kept error trace:\n");
        print!("{}", style.render(trace));
    }
    println!(
        "\n see them all: traceq show {} [--errors] [--trace ID]",
        output.display()
    );
    Ok(())
}

/// The long job: steps for `len`, each a span started under the job's current context, so the
/// steps after a cut land in the next segment.
async fn long_job(
    tracer: &opentelemetry_sdk::trace::SdkTracer,
    attempt: &Attempt<String>,
    len: Duration,
) -> Result<(), String> {
    let job = attempt.job().clone();
    let step = Duration::from_millis(50);
    let started = Instant::now();
    let mut shard = 0;
    while started.elapsed() < len {
        let mut span = tracer.start_with_context(format!("reindex shard {shard}"), &job.context());
        tokio::time::sleep(step).await;
        span.end();
        shard += 1;
    }
    Ok(())
}

fn progress_bar(duration_s: f64) -> ProgressBar {
    let bar = ProgressBar::new((duration_s * 1000.0) as u64);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>3} [{bar:30}] {msg}")
        .map(|s| s.progress_chars("=> "))
    {
        bar.set_style(style);
    }
    bar
}

fn hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}
