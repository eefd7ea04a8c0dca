//! Long jobs become linked traces: past the maximum age or the span budget, the item's trace
//! continues in a new segment, linked to the previous one and sharing its job id, also in the
//! middle of a running attempt. Time is a manual clock, so nothing sleeps.

use opentelemetry::trace::{Span, SpanId, TraceId, Tracer, TracerProvider};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use traceq_engine::clock::ManualClock;
use traceq_engine::trace::attributes as attr;
use traceq_engine::{Attempt, Engine};

mod common;

use common::{attr_of, provider};

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    let mut v: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    v.sort_by_key(|s| s.start_time);
    v
}

/// Runs `key` through an engine with one worker and waits until its item trace has ended.
async fn run_one<H>(engine: Engine<&'static str>, exporter: &InMemorySpanExporter, handler: H)
where
    H: traceq_engine::Handler<&'static str>,
{
    let handle = engine.handle();
    handle.add("long-job");
    let run = tokio::spawn(async move { engine.run(handler).await });
    for _ in 0..5_000 {
        let done = exporter.get_finished_spans().unwrap().iter().any(|s| {
            attr_of(s, attr::OUTCOME) == Some(&Value::from(attr::OUTCOME_SUCCEEDED))
                && s.name == "item traceq"
        });
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    handle.shutdown_with_drain().await;
    run.await.unwrap();
}

#[tokio::test]
async fn job_running_past_the_max_age_should_continue_in_a_linked_trace() {
    let (provider, exporter) = provider();
    let clock = ManualClock::new();
    let engine = Engine::<&'static str>::builder()
        .with_workers(1)
        .with_tracer(provider.tracer("traceq"))
        .with_trace_clock(Arc::new(clock.clone()))
        .with_max_trace_age(Duration::from_secs(3600))
        .with_job_id_of(|_| Some("job-42".to_owned()))
        .build()
        .unwrap();
    let tracer = provider.tracer("handler");
    run_one(engine, &exporter, move |attempt: Attempt<&'static str>| {
        let job = attempt.job().clone();
        let tracer = tracer.clone();
        let clock = clock.clone();
        async move {
            tracer
                .start_with_context("early step", &job.context())
                .end();
            clock.advance(Duration::from_secs(61 * 60)); // the job runs past an hour
            tracer.start_with_context("late step", &job.context()).end();
            Ok::<(), String>(())
        }
    })
    .await;

    let spans = exporter.get_finished_spans().unwrap();
    let items = named(&spans, "item traceq");
    assert_eq!(items.len(), 2, "two segments");
    let (first, second) = (items[0], items[1]);
    let traces: HashSet<TraceId> = spans.iter().map(|s| s.span_context.trace_id()).collect();
    assert_eq!(traces.len(), 2);
    assert_ne!(
        first.span_context.trace_id(),
        second.span_context.trace_id()
    );
    assert_eq!(
        second.parent_span_id,
        SpanId::INVALID,
        "a segment is a new root"
    );

    // Linked both ways, same job id, numbered segments.
    assert!(second
        .links
        .iter()
        .any(|l| l.span_context.span_id() == first.span_context.span_id()));
    assert!(first
        .links
        .iter()
        .any(|l| l.span_context.span_id() == second.span_context.span_id()));
    for item in [first, second] {
        assert_eq!(attr_of(item, attr::JOB_ID), Some(&Value::from("job-42")));
    }
    assert_eq!(attr_of(first, attr::SEGMENT), Some(&Value::I64(1)));
    assert_eq!(attr_of(second, attr::SEGMENT), Some(&Value::I64(2)));
    assert_eq!(
        attr_of(first, attr::SEGMENT_CONTINUED),
        Some(&Value::Bool(true))
    );
    assert_eq!(attr_of(second, attr::SEGMENT_CONTINUED), None);
    assert_eq!(
        attr_of(second, attr::OUTCOME),
        Some(&Value::from(attr::OUTCOME_SUCCEEDED))
    );

    // The attempt was cut too; the handler's later span landed in the new segment.
    let attempts = named(&spans, "process traceq");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].parent_span_id, first.span_context.span_id());
    assert_eq!(
        attr_of(attempts[0], attr::SEGMENT_CONTINUED),
        Some(&Value::Bool(true))
    );
    assert_eq!(attempts[1].parent_span_id, second.span_context.span_id());
    assert_eq!(attr_of(attempts[1], attr::ATTEMPT), Some(&Value::I64(1)));
    assert_eq!(
        attr_of(attempts[1], attr::JOB_ID),
        Some(&Value::from("job-42"))
    );
    let early = named(&spans, "early step")[0];
    let late = named(&spans, "late step")[0];
    assert_eq!(early.parent_span_id, attempts[0].span_context.span_id());
    assert_eq!(late.parent_span_id, attempts[1].span_context.span_id());
    assert_eq!(late.span_context.trace_id(), second.span_context.trace_id());
}

#[tokio::test]
async fn span_budget_should_cut_segments_and_default_the_job_id_to_the_first_trace() {
    let (provider, exporter) = provider();
    let engine = Engine::<&'static str>::builder()
        .with_workers(1)
        .with_tracer(provider.tracer("traceq"))
        .with_max_spans_per_segment(4)
        .build()
        .unwrap();
    let tracer = provider.tracer("handler");
    run_one(engine, &exporter, move |attempt: Attempt<&'static str>| {
        let job = attempt.job().clone();
        let tracer = tracer.clone();
        async move {
            for _ in 0..5 {
                tracer.start_with_context("step", &job.context()).end();
            }
            Ok::<(), String>(())
        }
    })
    .await;

    let spans = exporter.get_finished_spans().unwrap();
    let items = named(&spans, "item traceq");
    // item + attempt + 2 steps fill a segment; the next two segments hold 2 steps each,
    // then 1.
    assert_eq!(items.len(), 3);
    let first_trace = items[0].span_context.trace_id().to_string();
    for (i, item) in items.iter().enumerate() {
        assert_eq!(
            attr_of(item, attr::SEGMENT),
            Some(&Value::I64(i as i64 + 1))
        );
        assert_eq!(
            attr_of(item, attr::JOB_ID),
            Some(&Value::from(first_trace.clone()))
        );
        let in_trace = spans
            .iter()
            .filter(|s| s.span_context.trace_id() == item.span_context.trace_id())
            .count();
        assert!(in_trace <= 4, "segment {i} holds {in_trace} spans");
    }
    assert_eq!(named(&spans, "step").len(), 5);
}
