//! What tracing costs the engine per item, in one group with the untraced engine as baseline.
//!
//! Run: `cargo bench --bench tracing -- --warm-up-time 1 --measurement-time 3`
//!
//! Group `engine_per_item`: 1,000 distinct keys (a backlog of 1,000) added and run through an
//! `Engine` with one worker and a handler that succeeds at once, on a current-thread tokio runtime
//! (one item span and one attempt span per key, plus the handler's `Attempt::context()` call):
//! - `untraced`: no tracer configured (the baseline).
//! - `noop_provider`: the OpenTelemetry API's no-op tracer provider.
//! - `sdk_always_on_discard`: the SDK with the AlwaysOn sampler recording every span, and a span
//!   processor that drops every span it is given.
//!
//! Group `sdk_floor`: the same spans, attributes, baggage and contexts for 1,000 keys in the same
//! shape (a backlog of item traces, then each attempt), made with the API and SDK directly and no
//! engine: what the engine's tracing cannot go below with this SDK.
//!
//! Targets: no-op within 10% of untraced; SDK at most ~1 µs added per item. The SDK target is
//! out of reach with this SDK: `sdk_floor` alone takes 1.2 µs of CPU per item (below).
//!
//! Last measured: 2-core x86_64 Linux VM (AMD EPYC, 32 KiB L1i per core), release profile,
//! with other builds sharing the machine (load average 3 to 5).
//!
//! Instructions per item (callgrind, exact: this group's loop run for 12 and for 2 rounds of
//! 1,000 items, the difference divided by 10,000):
//!
//! | variant               | instructions | added per item   | allocations |
//! |-----------------------|--------------|------------------|-------------|
//! | untraced              | 1,104        | -                | 0.02        |
//! | noop_provider         | 1,163        | 59 (+5.3%)       | 0.04        |
//! | sdk_always_on_discard | 13,765       | 12,661           | 13.0        |
//! | sdk_floor (no engine) | 11,014       | -                | 12.0        |
//!
//! So the engine's own tracing work is ~1,650 instructions per item (13,765 - 1,104 - 11,014:
//! the trace table, the item's state and lock, three clock reads, the attribute vectors); before
//! this round of work it was ~2,900 (SDK 15,058 with 16.0 allocations; untraced 1,117). The floor
//! is the SDK's start, end and export of two spans (~5,300), `Baggage::insert` with its key
//! validation (~2,600: it looks each byte of the key up in a table of forbidden bytes, and no
//! public API skips it) and the rest (~3,100): the key's text, the baggage map, three contexts,
//! the attribute vectors.
//!
//! Time per item, the same loops, CPU time of the process (task-clock), least of 7 runs:
//! untraced 0.17 µs, noop_provider 0.18 µs, sdk_always_on_discard 2.0 µs, sdk_floor 1.2 µs.
//! Time does not follow instructions here: in the SDK variant the code run per item (tokio, the
//! queue, the engine, the SDK, malloc) no longer fits the 32 KiB instruction cache, so every
//! function misses it once per item (50 to 95 misses per item, depending on code layout, against
//! under 1 for sdk_floor's tight loop); 1,300 fewer instructions moved CPU time by less than
//! run-to-run noise.
//!
//! `cargo bench --bench tracing -- --warm-up-time 1 --measurement-time 3`, medians of three runs
//! (wall clock, so the load spreads them widely):
//!
//! | variant                                   | per 1,000 items    | per item        |
//! |-------------------------------------------|--------------------|-----------------|
//! | untraced                                  | 209 to 216 µs      | 0.21 µs         |
//! | noop_provider                             | 144 to 166 µs      | 0.14 to 0.17 µs |
//! | sdk_always_on_discard                     | 2.24 to 3.49 ms    | 2.2 to 3.5 µs   |
//! | sdk_floor (no engine)                     | 1.52 to 2.00 ms    | 1.5 to 2.0 µs   |
//! | sdk_spans_alone (the 2 spans, no baggage) | -                  | 0.83 to 1.22 µs |
//!
//! With a backlog of 10,000 keys instead of 1,000 the SDK path costs ~1.4 µs more per item:
//! ~3 KB of live span state per queued key no longer fits the caches.

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
        .with_workers(1)
        .with_metrics(false)
        .with_rate_limiter(NoDelay)
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
                    let engine = builder().with_tracer(tracer.clone()).build().unwrap();
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
                    let engine = builder().with_tracer(tracer.clone()).build().unwrap();
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

/// What the engine's tracing cannot go below with this API and SDK, in the shape of
/// `engine_per_item` but without the engine: for 1,000 keys, a backlog of item traces (the
/// item key as baggage, a context holding it, the item span under it), then per key the attempt
/// span in its own context, the handler's copy of that context, and both spans ended with their
/// outcome: the same spans, attributes, baggage and contexts the engine makes.
fn sdk_floor(c: &mut Criterion) {
    use opentelemetry::baggage::{Baggage, BaggageExt};
    use opentelemetry::trace::{SpanBuilder, SpanKind, TraceContextExt, Tracer};
    use opentelemetry::{KeyValue, StringValue, Value};
    use std::sync::Arc;

    fn copy_baggage(baggage: &Baggage, attrs: &mut Vec<KeyValue>) {
        let entries = baggage.iter();
        attrs.extend(entries.map(|(k, (v, _))| KeyValue::new(k.clone(), Value::String(v.clone()))));
    }

    let sdk = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_span_processor(Discard)
        .build();
    let tracer = sdk.tracer("traceq");
    let queue = StringValue::from("traceq");
    let mut g = c.benchmark_group("sdk_floor");
    g.throughput(Throughput::Elements(ITEMS));
    g.bench_function("item_and_attempt_span_with_baggage", |b| {
        b.iter(|| {
            let mut items = Vec::with_capacity(ITEMS as usize);
            for key in 0..ITEMS {
                let mut baggage = Baggage::new();
                baggage.insert("traceq.item.key", Arc::<str>::from(key.to_string()));
                let mut attrs = Vec::with_capacity(8);
                attrs.push(KeyValue::new("messaging.system", "traceq"));
                attrs.push(KeyValue::new("messaging.destination.name", queue.clone()));
                attrs.push(KeyValue::new("traceq.segment", 1));
                copy_baggage(&baggage, &mut attrs);
                let base = Context::new().with_baggage(baggage);
                let mut item = SpanBuilder::from_name("item traceq");
                item.attributes = Some(attrs);
                let item = tracer.build_with_context(item, &base);
                items.push(base.with_span(item));
            }
            for item_cx in items {
                let mut attrs = Vec::with_capacity(12);
                attrs.push(KeyValue::new("messaging.system", "traceq"));
                attrs.push(KeyValue::new("messaging.destination.name", queue.clone()));
                attrs.push(KeyValue::new("messaging.operation.type", "process"));
                attrs.push(KeyValue::new("traceq.attempt", 1));
                attrs.push(KeyValue::new("traceq.retry", false));
                attrs.push(KeyValue::new("traceq.queue_wait_ms", 0.5));
                attrs.push(KeyValue::new("traceq.segment", 1));
                copy_baggage(item_cx.baggage(), &mut attrs);
                let mut attempt =
                    SpanBuilder::from_name("process traceq").with_kind(SpanKind::Consumer);
                attempt.attributes = Some(attrs);
                let attempt = tracer.build_with_context(attempt, &item_cx);
                let attempt_cx = item_cx.with_span(attempt);
                black_box(attempt_cx.clone());
                let span = attempt_cx.span();
                span.set_attribute(KeyValue::new("traceq.outcome", "succeeded"));
                span.end();
                let span = item_cx.span();
                span.set_attributes([
                    KeyValue::new("traceq.attempts_total", 1),
                    KeyValue::new("traceq.outcome", "succeeded"),
                ]);
                span.end();
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = engine_per_item, sdk_spans_alone, sdk_floor
}
criterion_main!(benches);
