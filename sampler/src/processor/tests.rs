//! Tests of the SDK front door.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    InMemorySpanExporter, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};

use super::{ProcessorConfig, TailSamplingProcessor};
use crate::testing::TestSpan;
use crate::{ManualClock, PolicyConfig, SamplerConfig};

fn errors_only() -> SamplerConfig {
    SamplerConfig::default().with_policies(vec![PolicyConfig::status_code("errors", &["ERROR"])])
}

fn processor(
    exporter: InMemorySpanExporter,
    poll: Duration,
) -> (TailSamplingProcessor, ManualClock) {
    let clock = ManualClock::new();
    let cfg = ProcessorConfig {
        poll_interval: poll,
        ..ProcessorConfig::default()
    };
    let p =
        TailSamplingProcessor::with_parts(exporter, errors_only(), cfg, Arc::new(clock.clone()))
            .unwrap();
    (p, clock)
}

#[test]
fn processor_should_export_whole_error_traces_and_nothing_else() {
    let exporter = InMemorySpanExporter::default();
    let (p, _clock) = processor(exporter.clone(), Duration::from_secs(60));
    let provider = SdkTracerProvider::builder().with_span_processor(p).build();
    let tracer = provider.tracer("test");
    tracer.in_span("ok-root", |_| tracer.in_span("ok-child", |_| {}));
    tracer.in_span("bad-root", |cx| {
        tracer.in_span("bad-child", |cx| {
            cx.span().set_status(Status::error("boom"))
        });
        let _ = cx;
    });
    provider.force_flush().unwrap();
    let mut names: Vec<String> = exporter
        .get_finished_spans()
        .unwrap()
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["bad-child", "bad-root"]);
    provider.shutdown().unwrap();
}

#[test]
fn force_flush_and_shutdown_should_be_idempotent() {
    let exporter = InMemorySpanExporter::default();
    let (p, _clock) = processor(exporter.clone(), Duration::from_secs(60));
    p.on_end(TestSpan::new(1, 1).error().build());
    p.force_flush().unwrap();
    p.force_flush().unwrap();
    assert_eq!(exporter.get_finished_spans().unwrap().len(), 1);
    p.on_end(TestSpan::new(2, 1).error().build());
    p.shutdown().unwrap();
    assert!(p.shutdown().is_ok());
    assert!(p.force_flush().is_ok());
    p.on_end(TestSpan::new(3, 1).error().build());
    let m = p.metrics();
    assert_eq!(m.spans_exported, 2);
    assert_eq!(m.spans_dropped_after_shutdown, 1);
}

#[test]
fn the_background_thread_should_decide_a_trace_once_its_root_is_quiet() {
    let exporter = InMemorySpanExporter::default();
    let (p, clock) = processor(exporter.clone(), Duration::from_millis(5));
    p.on_end(TestSpan::new(1, 2).child_of(1).error().build());
    p.on_end(TestSpan::new(1, 1).build());
    std::thread::sleep(Duration::from_millis(30));
    assert!(exporter.get_finished_spans().unwrap().is_empty());
    clock.advance(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(10);
    while exporter.get_finished_spans().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "trace not exported after its root was quiet"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(p.metrics().traces_decided_after_root, 1);
}

#[test]
fn late_spans_of_kept_traces_should_be_exported_too() {
    let exporter = InMemorySpanExporter::default();
    let (p, _clock) = processor(exporter.clone(), Duration::from_secs(60));
    p.on_end(TestSpan::new(1, 1).error().build());
    p.force_flush().unwrap();
    p.on_end(TestSpan::new(1, 2).child_of(1).build());
    p.force_flush().unwrap();
    assert_eq!(exporter.get_finished_spans().unwrap().len(), 2);
    assert_eq!(p.metrics().late_spans_sampled, 1);
}

#[derive(Debug)]
struct FailingExporter;

impl SpanExporter for FailingExporter {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Err(OTelSdkError::InternalFailure("backend down".to_owned()))
    }
}

#[test]
fn export_failures_should_be_reported_and_counted() {
    let p = TailSamplingProcessor::new(FailingExporter, errors_only()).unwrap();
    p.on_end(TestSpan::new(1, 1).error().build());
    assert!(p.force_flush().is_err());
    assert_eq!(p.metrics().export_failures, 1);
    p.shutdown().unwrap();
}

#[test]
fn invalid_settings_should_be_refused() {
    let cfg = ProcessorConfig {
        max_export_batch_size: 0,
        ..ProcessorConfig::default()
    };
    let err = TailSamplingProcessor::with_parts(
        InMemorySpanExporter::default(),
        errors_only(),
        cfg,
        Arc::new(ManualClock::new()),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `max_export_batch_size`: must be positive"
    );
    assert!(
        TailSamplingProcessor::from_yaml(InMemorySpanExporter::default(), "policies: 3").is_err()
    );
}

#[test]
fn from_yaml_should_refuse_what_validation_refuses() {
    for (yaml, message) in [
        (
            "num_traces: 0\npolicies: [{name: a, type: always_sample}]",
            "field `num_traces`: must be positive",
        ),
        (
            "policies: [{name: l, type: latency}]",
            "policy `l`: field `latency` section is required for this type",
        ),
    ] {
        let err = TailSamplingProcessor::from_yaml(InMemorySpanExporter::default(), yaml);
        assert_eq!(err.unwrap_err().to_string(), message);
    }
}

#[test]
fn attribute_policies_should_see_the_provider_resource() {
    let exporter = InMemorySpanExporter::default();
    let p = TailSamplingProcessor::from_yaml(
        exporter.clone(),
        "policies: [{name: checkout, type: string_attribute, string_attribute: {key: service.name, values: [checkout]}}]",
    )
    .unwrap();
    let provider = SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("checkout")
                .build(),
        )
        .with_span_processor(p)
        .build();
    provider.tracer("t").in_span("work", |_| {});
    provider.force_flush().unwrap();
    assert_eq!(exporter.get_finished_spans().unwrap().len(), 1);
    provider.shutdown().unwrap();
}

#[test]
fn a_metrics_handle_should_read_the_counters_after_the_provider_owns_and_shuts_the_processor() {
    let (p, _clock) = processor(InMemorySpanExporter::default(), Duration::from_secs(3600));
    let metrics = p.metrics_handle();
    let before = metrics.clone().snapshot();
    assert_eq!(before, p.metrics());
    let provider = SdkTracerProvider::builder().with_span_processor(p).build();
    let tracer = provider.tracer("test");
    tracer.in_span("fine", |_| {});
    tracer.in_span("failed", |cx| cx.span().set_status(Status::error("boom")));
    provider.shutdown().unwrap();
    drop(provider);
    let m = metrics.snapshot();
    assert_eq!(m.new_trace_id_received, 2);
    assert_eq!(
        (
            m.global_count_traces_sampled,
            m.global_count_traces_not_sampled
        ),
        (1, 1)
    );
    // (The in-memory exporter forgets its spans when shut down; the counter remains.)
    assert_eq!(m.spans_exported, 1);
}
