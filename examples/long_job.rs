//! A week-long job, simulated in milliseconds with an injected clock, split into linked traces.
//!
//! Shows: the engine's maximum trace age (here one day) cutting a long-running attempt into
//! segments, each a new trace linked to the previous one (`continues trace ...`) and carrying the
//! same job id (`traceq.job.id`); handler spans started after a cut landing in the new segment;
//! and the tail sampler's job linkage: the job fails on day 6, so the segment with the failure is
//! kept for its error and every later segment of the job is kept too, while the quiet segments
//! before it are dropped. The clock is a plain `Clock` implementation the example advances by a
//! day per step, the way a test or a simulation would; the engine and the sampler read the same
//! one, so the sampler's decision timers live in the simulated week too.
//!
//! Run it: `cargo run --example long_job`

use opentelemetry::trace::{Span as _, Status, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracer, SdkTracerProvider, SpanData};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use traceq::engine::clock::Clock;
use traceq::engine::{Attempt, Engine};
use traceq::exporter::{records_from_sdk, traces, Waterfall};
use traceq::sampler::{ProcessorConfig, SamplerConfig, TailSamplingProcessor};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const DAYS: u32 = 7;
const FAILING_DAY: u32 = 6;

/// Simulated time: real time plus whatever the simulation skipped ahead.
#[derive(Debug, Clone)]
struct SimulatedClock {
    skipped: Arc<Mutex<Duration>>,
}

impl SimulatedClock {
    fn new() -> Self {
        Self {
            skipped: Arc::new(Mutex::new(Duration::ZERO)),
        }
    }

    fn advance(&self, by: Duration) {
        *self.skipped.lock() += by;
    }
}

impl Clock for SimulatedClock {
    fn now(&self) -> Instant {
        Instant::now() + *self.skipped.lock()
    }
}

/// Runs the week-long job; returns the spans the sampler kept.
pub(crate) async fn run() -> anyhow::Result<Vec<SpanData>> {
    let exporter = InMemorySpanExporter::default();
    // Errors only: a quiet segment is dropped, unless an earlier segment of its job failed.
    // A segment is decided shortly after its root span ends (the cut), as in a real week where
    // Monday's segment is decided long before Saturday's failure.
    let config = SamplerConfig::from_yaml(
        "decision_wait_after_root: 10ms
policies: [{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]",
    )?;
    let export = ProcessorConfig {
        poll_interval: Duration::from_millis(2),
        ..ProcessorConfig::default()
    };
    let clock = SimulatedClock::new();
    let processor = TailSamplingProcessor::with_parts(
        exporter.clone(),
        config,
        export,
        Arc::new(clock.clone()),
    )?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .build();
    let tracer = provider.tracer("long-job");

    let engine = Engine::<String>::builder()
        .with_name("scheduler")
        .with_workers(1)
        .with_backoff(Duration::from_millis(5), Duration::from_millis(50))
        .with_tracer(tracer.clone())
        .with_trace_clock(Arc::new(clock.clone()))
        .with_max_trace_age(DAY)
        .with_job_id_of(|key: &String| Some(format!("{key}@2024-w01")))
        .build()?;
    let handle = engine.handle();
    handle.add("weekly-backup".to_owned());

    // The job's progress survives a failed attempt: the retry resumes at the failing day.
    let done = Arc::new(AtomicU32::new(0));
    let workers = tokio::spawn(async move {
        engine
            .run(move |attempt: Attempt<String>| {
                let (tracer, clock, done) = (tracer.clone(), clock.clone(), done.clone());
                async move { week(&tracer, &clock, &done, &attempt).await }
            })
            .await
    });
    handle.queue().wait_idle().await;
    handle.shutdown_with_drain().await;
    workers.await?;

    tokio::task::spawn_blocking(move || {
        provider.force_flush()?;
        let spans = exporter.get_finished_spans()?; // before shutdown, which clears them
        provider.shutdown()?;
        Ok(spans)
    })
    .await?
}

/// One attempt: the remaining days, a span each, started under the job's *current* context.
async fn week(
    tracer: &SdkTracer,
    clock: &SimulatedClock,
    done: &AtomicU32,
    attempt: &Attempt<String>,
) -> Result<(), String> {
    let job = attempt.job().clone();
    for day in done.load(Ordering::SeqCst) + 1..=DAYS {
        let mut span = tracer.start_with_context(format!("day {day}"), &job.context());
        tokio::time::sleep(Duration::from_millis(30)).await; // the day's work
        if day == FAILING_DAY && !attempt.is_retry() {
            let error = format!("day {day}: backup target unreachable");
            span.set_status(Status::error(error.clone()));
            span.end();
            return Err(error);
        }
        span.end();
        done.store(day, Ordering::SeqCst);
        clock.advance(DAY); // a day passes: the next span starts a new segment
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let spans = run().await?;
    let kept = traces(records_from_sdk(spans));
    println!(
        "a {DAYS}-day job failing on day {FAILING_DAY}: {} of its segments kept\n",
        kept.len()
    );
    for trace in &kept {
        println!("{}", Waterfall::plain().render(trace));
    }
    Ok(())
}
