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
//!
//! By role: `engine` builds the tail sampler, the tracer and the engine; `handler` is the
//! reconcile handler and the objects' behaviours; `producer` sends the watch events; `report`
//! counts the outcomes and prints the progress, the summary and the waterfall. This file holds the
//! options and the run from start to end.

mod engine;
mod handler;
mod producer;
mod report;

use anyhow::{bail, Context as _};
use clap::Args;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use rand::rngs::StdRng;
use rand::SeedableRng;
use report::Tally;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use traceq::sampler::TailSamplingProcessor;

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
    /// Run on the durable queue in this PostgreSQL database (e.g.
    /// postgres://user@127.0.0.1:5432/db) instead of in memory. Several demo processes given
    /// one database share the work; give them all `--otlp-endpoint` of one `traceq collector`,
    /// which then sees every item's spans from every process and tail-samples whole traces.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// The durable queue's schema (with `--postgres`).
    #[arg(long, default_value = "traceq", requires = "postgres")]
    schema: String,
    /// The durable queue's name (with `--postgres`).
    #[arg(long, default_value = "demo-controller", requires = "postgres")]
    queue: String,
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
    let processor = engine::processor(&args, &resource)?;
    if args.postgres.is_some() && args.otlp_endpoint.is_none() {
        eprintln!(
            "traceq demo: --postgres without --otlp-endpoint samples in this process: run \
             several demo processes with --otlp-endpoint of one traceq collector to keep \
             traces whose attempts ran on several of them whole"
        );
    }
    runtime.block_on(demo(args, resource, processor))
}

/// The key of synthetic object `i`: `namespace/name`, over seven namespaces.
fn object_key(i: usize) -> String {
    format!("ns-{}/object-{i:05}", i % 7)
}

async fn demo(
    args: DemoArgs,
    resource: Resource,
    processor: TailSamplingProcessor,
) -> anyhow::Result<()> {
    let sampler_metrics = processor.metrics_handle();
    let provider = engine::tracer_provider(resource, processor);
    let tracer = provider.tracer("traceq-demo");
    let long_job_len = Duration::from_secs_f64((args.duration * 0.8).clamp(0.5, 60.0));
    let progress = report::progress_bar(args.duration);
    let tally = Arc::new(Tally::new(progress.clone()));
    report::quiet_caught_panics();

    // One generator, seeded once: it picks the misbehaving objects, then the watch events.
    let mut rng = StdRng::seed_from_u64(args.seed);
    let behaviours = handler::pick_behaviours(&mut rng, args.objects);
    let reconciler = handler::Reconciler::new(tracer.clone(), behaviours, &args, long_job_len);
    let tally_hook = Arc::clone(&tally);
    let (backend, run) = match &args.postgres {
        None => {
            let engine = engine::build(&args, tracer, long_job_len, tally_hook)?;
            let handle = engine.handle();
            let run = tokio::spawn(async move { engine.run(reconciler).await });
            (producer::Backend::Memory(handle), run)
        }
        Some(url) => {
            let engine =
                engine::build_postgres(&args, url, tracer, long_job_len, tally_hook).await?;
            let handle = engine.handle();
            let run = tokio::spawn(async move { engine.run(reconciler).await });
            (producer::Backend::Durable(handle), run)
        }
    };

    let started = Instant::now();
    let watch = Duration::from_secs_f64(args.duration);
    let adds =
        producer::send_watch_events(&backend, rng, args.objects, watch, &progress, &tally).await?;
    progress.set_message("draining: retries in backoff, the long job");
    // Let retries in backoff and the long job finish, then drain whatever is in flight. Past
    // the deadline, whatever is still queued or waiting is left and counted below.
    let settle = long_job_len + Duration::from_secs(10);
    let metrics = backend.drain(settle).await?;
    run.await.context("joining the workers")?;
    let ran_for = started.elapsed();
    progress.finish_and_clear();

    engine::shut_down_tracing(provider).await?;
    let sampled = sampler_metrics.snapshot();
    report::print_summary(&args, ran_for, adds, &metrics, &sampled, &tally);
    if let producer::Backend::Durable(handle) = &backend {
        report::print_durable(&args, handle.queue().counters());
    }
    match &args.otlp_endpoint {
        Some(endpoint) => report::sent_over_otlp(endpoint, &sampled),
        None => report::show_kept(&args.output),
    }
}
