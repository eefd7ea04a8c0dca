//! What tracing costs the engine per item, in one group with the untraced engine as baseline.
//!
//! Run: `cargo bench --bench tracing -- --warm-up-time 1 --measurement-time 3`
//!
//! Group `engine_per_item`: 1,000 distinct keys (a backlog of 1,000) added and run through an `Engine` with one
//! worker and a handler that succeeds at once, on a current-thread tokio runtime (one item span
//! and one attempt span per key, plus the handler's `Attempt::context()` call):
//! - `untraced`: no tracer configured (the baseline).
//! - `noop_provider`: the OpenTelemetry API's no-op tracer provider.
//! - `sdk_always_on_discard`: the SDK with the AlwaysOn sampler recording every span, and a span
//!   processor that drops every span it is given.
//!
//! Targets: no-op within 10% of untraced; SDK at most ~1 µs added per item.
//!
//! Last measured: 2-core x86_64 Linux VM, release profile, while two other builds shared the
//! machine (load average ~3: wall-clock figures are noisy; the instruction counts are exact).
//! `cargo bench --bench tracing -- --warm-up-time 1 --measurement-time 3`, medians:
//!
//! | variant                                  | per 1,000 items | per item | added per item |
//! |------------------------------------------|-----------------|----------|----------------|
//! | untraced                                 | 211.9 µs        | 0.21 µs  | -              |
//! | noop_provider                            | 218.5 µs        | 0.22 µs  | 0.007 µs (+3%) |
//! | sdk_always_on_discard                    | 2.412 ms        | 2.41 µs  | 2.20 µs        |
//! | sdk_spans_alone (the 2 spans, no engine) | -               | 1.18 µs  | -              |
//!
//! Runs under heavier load spread from 0.16 to 0.30 µs per item for both untraced and
//! noop_provider (either one ahead), and from 2.1 to 3.1 µs for sdk_always_on_discard.
//!
//! Instructions per item (callgrind, exact, the same loop as this group): untraced 1,113;
//! noop_provider 1,177 (+5.8%: an atomic load and a branch per add and per attempt); SDK
//! 15,181, of which the SDK's own span start, end and drop take about 5,000, and
//! `Baggage::insert` (its key validation) 2,600 for the item key and job id baggage. With a
//! backlog of 10,000 keys instead of 1,000 the SDK path costs ~1.4 µs more per item: ~3 KB of
//! live span state per queued key no longer fits the caches.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry::trace::noop::NoopTracerProvider;
use opentelemetry::trace::TracerProvider;
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Span, SpanData, SpanProcessor};
use std::hint::black_box;
use std::time::{Duration, Instant};
use traceq_engine::rate_limit::NoDelay;
use traceq_engine::{Attempt, Engine, EngineBuilder};

const ITEMS: u64 = 1_000;

/// Records nothing: isolates the cost of creating, filling and ending spans.
#[derive(Debug)]
struct Discard;

impl SpanProcessor for Discard {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}
    fn on_end(&self, span: SpanData) {
        black_box(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn builder() -> EngineBuilder<u64> {
    Engine::<u64>::builder()
        .workers(1)
        .metrics(false)
        .rate_limiter(NoDelay)
}

/// Adds `ITEMS` keys and runs them all; returns the time taken.
async fn run_items(engine: Engine<u64>) -> Duration {
    let handle = engine.handle();
    let start = Instant::now();
    for key in 0..ITEMS {
        handle.add(key);
    }
    let run = tokio::spawn(async move {
        engine
            .run(|attempt: Attempt<u64>| {
                black_box(attempt.context());
                async { Ok::<(), std::convert::Infallible>(()) }
            })
            .await;
    });
    handle.shutdown_with_drain_queued().await;
    run.await.unwrap();
    start.elapsed()
}

fn engine_per_item(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("engine_per_item");
    g.throughput(Throughput::Elements(ITEMS));

    g.bench_function("untraced", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += run_items(builder().build().unwrap()).await;
            }
            total
        })
    });

    let noop = NoopTracerProvider::new();
    g.bench_function("noop_provider", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let tracer = noop.tracer("traceq");
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let engine = builder().tracer(tracer.clone()).build().unwrap();
                    total += run_items(engine).await;
                }
                total
            }
        })
    });

    let sdk = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_span_processor(Discard)
        .build();
    g.bench_function("sdk_always_on_discard", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let tracer = sdk.tracer("traceq");
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let engine = builder().tracer(tracer.clone()).build().unwrap();
                    total += run_items(engine).await;
                }
                total
            }
        })
    });
    g.finish();
}

/// The SDK's own cost for the spans the engine makes per item, without the engine: a root with
/// 5 attributes, a Consumer child with 9, three attributes set at end. What the engine cannot
/// go below with this SDK.
fn sdk_spans_alone(c: &mut Criterion) {
    use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer};
    use opentelemetry::KeyValue;
    let sdk = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_span_processor(Discard)
        .build();
    let tracer = sdk.tracer("traceq");
    let mut g = c.benchmark_group("sdk_spans_alone");
    g.throughput(Throughput::Elements(1));
    g.bench_function("item_and_attempt_span", |b| {
        b.iter(|| {
            let item = tracer
                .span_builder("item traceq")
                .with_attributes([
                    KeyValue::new("messaging.system", "traceq"),
                    KeyValue::new("messaging.destination.name", "traceq"),
                    KeyValue::new("traceq.segment", 1),
                    KeyValue::new("traceq.item.key", "1"),
                    KeyValue::new("traceq.job.id", "j"),
                ])
                .start_with_context(&tracer, &Context::new());
            let cx = Context::new().with_span(item);
            let mut attempt = tracer
                .span_builder("process traceq")
                .with_kind(SpanKind::Consumer)
                .with_attributes([
                    KeyValue::new("messaging.system", "traceq"),
                    KeyValue::new("messaging.destination.name", "traceq"),
                    KeyValue::new("messaging.operation.type", "process"),
                    KeyValue::new("traceq.attempt", 1),
                    KeyValue::new("traceq.retry", false),
                    KeyValue::new("traceq.queue_wait_ms", 0.5),
                    KeyValue::new("traceq.segment", 1),
                    KeyValue::new("traceq.item.key", "1"),
                    KeyValue::new("traceq.job.id", "j"),
                ])
                .start_with_context(&tracer, &cx);
            attempt.set_attribute(KeyValue::new("traceq.outcome", "succeeded"));
            attempt.end();
            let item = cx.span();
            item.set_attribute(KeyValue::new("traceq.attempts_total", 1));
            item.set_attribute(KeyValue::new("traceq.outcome", "succeeded"));
            item.end();
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = engine_per_item, sdk_spans_alone
}
criterion_main!(benches);
