//! The demo's tracing and engine: the tail sampler (exporting to the file, or over OTLP/HTTP), the
//! tracer provider in front of it, and the engine that traces every object with it.

use super::report::Tally;
use super::{DemoArgs, LONG_JOB_ID, LONG_JOB_SEGMENTS};
use anyhow::Context as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanExporter as _};
use opentelemetry_sdk::Resource;
use std::sync::Arc;
use std::time::Duration;
use traceq::engine::postgres::{PgEngine, PgQueueConfig};
use traceq::engine::trace::stored::StoredIdGenerator;
use traceq::engine::{Engine, EngineBuilder};
use traceq::exporter::client::http_traces_url;
use traceq::exporter::OtlpJsonFileExporter;
use traceq::sampler::{SamplerConfig, TailSamplingProcessor};

/// The URL OTLP/HTTP traces are posted to: the OTLP client's one rule (`http://` assumed,
/// `/v1/traces` appended when the URL has no path).
pub(super) fn traces_url(endpoint: &str) -> String {
    http_traces_url(endpoint).unwrap_or_else(|| endpoint.to_owned())
}

/// The tail sampler, exporting to the file or, with `--otlp-endpoint`, over OTLP/HTTP.
pub(super) fn processor(
    args: &DemoArgs,
    resource: &Resource,
) -> anyhow::Result<TailSamplingProcessor> {
    // On the durable queue with a collector, an item's spans come from several processes: the
    // collector decides, so this process forwards every trace.
    let config = if args.postgres.is_some() && args.otlp_endpoint.is_some() {
        SamplerConfig::from_yaml(
            "decision_wait: 60s\ndecision_wait_after_root: 300ms\npolicies:\n  - {name: all, type: always_sample}\n",
        )
        .context("the forwarding sampler configuration")?
    } else {
        sampler_config(args.sample_percent)?
    };
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

/// Errors, the long job's segments (any job's, if its id were listed), and a sample of the rest,
/// in the Collector's syntax.
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

/// The tracer provider, sending every span to the tail sampler (whose counters the summary
/// reads through the sampler's metrics handle after the provider is shut down).
///
/// Its id generator gives a durable item's root span the ids stored with the key (random ids
/// otherwise, as the SDK's own).
pub(super) fn tracer_provider(
    resource: Resource,
    processor: TailSamplingProcessor,
) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_resource(resource)
        .with_id_generator(StoredIdGenerator::default())
        .with_span_processor(processor)
        .build()
}

/// The demo's controller, as both backends build it: traced with `tracer`, every outcome
/// counted in `tally`.
fn controller(
    args: &DemoArgs,
    tracer: SdkTracer,
    long_job_len: Duration,
    tally: Arc<Tally>,
) -> EngineBuilder<String> {
    Engine::<String>::builder()
        .with_workers(args.workers)
        .with_max_retries(5)
        .with_backoff(Duration::from_millis(5), Duration::from_millis(500))
        .with_tracer(tracer)
        // Shortened from the default hour so the long job is split within the run.
        .with_max_trace_age(long_job_len.div_f64(LONG_JOB_SEGMENTS - 0.5))
        .with_job_id_of(|key: &String| key.strip_prefix("jobs/").map(str::to_owned))
        .with_outcome_hook(move |outcome| tally.record(outcome))
}

/// The demo's controller in memory.
pub(super) fn build(
    args: &DemoArgs,
    tracer: SdkTracer,
    long_job_len: Duration,
    tally: Arc<Tally>,
) -> anyhow::Result<Engine<String>> {
    controller(args, tracer, long_job_len, tally)
        .with_name("demo-controller")
        .build()
        .context("building the engine")
}

/// The demo's controller on the durable queue at `url` (named after the queue), sharing it
/// with every demo process given the same database.
pub(super) async fn build_postgres(
    args: &DemoArgs,
    url: &str,
    tracer: SdkTracer,
    long_job_len: Duration,
    tally: Arc<Tally>,
) -> anyhow::Result<PgEngine> {
    let config = PgQueueConfig::new(url)
        .with_schema(args.schema.clone())
        .with_queue(args.queue.clone());
    // Bounded: a database that does not answer is an error here, not a hang.
    tokio::time::timeout(
        Duration::from_secs(30),
        controller(args, tracer, long_job_len, tally).build_postgres(config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to postgres: no answer within 30 s"))?
    .with_context(|| format!("opening the durable queue at {}", redacted(url)))
}

/// `url` without its password.
pub(super) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Flushes the tracer (the sampler decides every trace still pending) and shuts it down.
pub(super) async fn shut_down_tracing(provider: SdkTracerProvider) -> anyhow::Result<()> {
    // The SDK's flush and shutdown must not run on an async worker: on a current-thread
    // runtime they can deadlock (opentelemetry-rust #3176), and they block whatever the runtime.
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        provider.force_flush().context("flushing the tracer")?;
        provider.shutdown().context("shutting the tracer down")?;
        Ok(())
    })
    .await
    .context("joining the flush")?
}
