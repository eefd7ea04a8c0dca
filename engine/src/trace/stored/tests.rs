//! Two tracer providers stand for two worker processes sharing one durable key.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanId, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, InMemorySpanExporter, SdkTracerProvider, SpanData};

use super::*;

fn worker(stored_ids: bool) -> (SdkTracerProvider, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let mut builder = SdkTracerProvider::builder().with_simple_exporter(exporter.clone());
    if stored_ids {
        builder = builder.with_id_generator(StoredIdGenerator::default());
    }
    (builder.build(), exporter)
}

fn attempt(provider: &SdkTracerProvider, stored: &StoredTrace, number: i64, error: bool) {
    let tracer = provider.tracer("traceq");
    let cx = stored.parent_context();
    let mut span = tracer.start_with_context("attempt", &cx);
    span.set_attribute(KeyValue::new("traceq.attempt", number));
    // the handler's own span nests under the attempt
    let handler_cx = Context::current_with_span(span);
    tracer.start_with_context("charge card", &handler_cx).end();
    if error {
        handler_cx.span().set_status(Status::error("card declined"));
    }
    handler_cx.span().end();
}

fn finished(exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    exporter.get_finished_spans().unwrap()
}

#[test]
fn attempts_on_two_workers_and_the_root_ended_on_the_second_should_be_one_trace() {
    let (a, a_spans) = worker(true);
    let (b, b_spans) = worker(true);
    let stored = StoredTrace::begin("order-1", Some("job-7"), None);
    attempt(&a, &stored, 1, true);
    // the identity crosses machines as bytes in the key's row
    let on_b = StoredTrace::decode(&stored.encode()).unwrap();
    assert_eq!(on_b, stored);
    attempt(&b, &on_b, 2, false);
    let builder = SpanBuilder::from_name("item")
        .with_attributes([KeyValue::new("traceq.outcome", "succeeded")]);
    assert!(on_b.end_root(&b.tracer("traceq"), builder));

    let mut spans = finished(&a_spans);
    spans.extend(finished(&b_spans));
    assert_eq!(spans.len(), 5, "two attempts, two handler spans, one root");
    assert!(spans
        .iter()
        .all(|s| s.span_context.trace_id() == stored.trace_id));
    let root = spans.iter().find(|s| s.name == "item").unwrap();
    assert_eq!(root.span_context.span_id(), stored.root_span_id);
    assert_eq!(
        root.parent_span_id,
        SpanId::INVALID,
        "the root has no parent"
    );
    assert_eq!(root.start_time, stored.start);
    assert!(root.end_time >= spans.iter().map(|s| s.end_time).max().unwrap());
    let attempts: Vec<_> = spans.iter().filter(|s| s.name == "attempt").collect();
    assert_eq!(attempts.len(), 2);
    for attempt in &attempts {
        assert_eq!(attempt.parent_span_id, stored.root_span_id);
    }
    for handler in spans.iter().filter(|s| s.name == "charge card") {
        assert!(attempts
            .iter()
            .any(|a| a.span_context.span_id() == handler.parent_span_id));
    }
    // baggage on the root
    assert!(root
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "traceq.job.id" && kv.value.as_str() == "job-7"));
    // and the generator handed the stored ids out once: the next span is random again
    let generator = StoredIdGenerator::default();
    assert_ne!(generator.new_span_id(), stored.root_span_id);
}

#[test]
fn without_the_stored_id_generator_the_root_should_say_it_has_other_ids() {
    let (plain, spans) = worker(false);
    let stored = StoredTrace::begin("k", None, None);
    assert!(!stored.end_root(&plain.tracer("traceq"), SpanBuilder::from_name("item")));
    assert_eq!(finished(&spans).len(), 1);
}

#[test]
fn ids_offered_for_one_build_should_not_leak_to_the_next_span() {
    let generator = StoredIdGenerator::default();
    let (trace, span) = (TraceId::from(7u128), SpanId::from(9u64));
    // a build that takes only the span id (its span has a parent): the trace id is withdrawn
    let taken = with_ids(trace, span, || generator.new_span_id());
    assert_eq!(taken, span);
    assert_ne!(generator.new_trace_id(), trace);
    assert_ne!(generator.new_span_id(), span);
}

#[test]
fn an_add_with_a_producer_context_should_continue_its_trace_and_baggage() {
    let (provider, spans) = worker(true);
    let tracer = provider.tracer("producer");
    let producer = tracer.start("publish");
    let producer_sc = producer.span_context().clone();
    let baggage: Baggage = [KeyValue::new("tenant", "acme")].into_iter().collect();
    let cx = Context::current_with_span(producer).with_baggage(baggage);
    let stored = StoredTrace::begin("k", None, Some(&cx));
    assert_eq!(stored.trace_id, producer_sc.trace_id());
    assert_eq!(stored.parent_span_id, Some(producer_sc.span_id()));
    assert!(stored.baggage.contains(&("tenant".into(), "acme".into())));
    assert!(stored
        .baggage
        .contains(&(attr::ITEM_KEY.into(), "k".into())));
    cx.span().end();
    assert!(stored.end_root(&provider.tracer("traceq"), SpanBuilder::from_name("item")));
    let root = finished(&spans)
        .into_iter()
        .find(|s| s.name == "item")
        .unwrap();
    assert_eq!(root.parent_span_id, producer_sc.span_id());
    assert_eq!(root.span_context.trace_id(), producer_sc.trace_id());
}

#[test]
fn a_next_segment_should_be_a_new_trace_with_the_same_baggage() {
    let first = StoredTrace::begin("k", Some("j"), None);
    let next = first.next_segment();
    assert_ne!(next.trace_id, first.trace_id);
    assert_eq!(next.segment, 2);
    assert_eq!(next.baggage, first.baggage);
}

#[test]
fn decoding_should_refuse_damaged_bytes_without_panicking() {
    let mut stored = StoredTrace::begin("k", Some("j"), None);
    stored.start = SystemTime::UNIX_EPOCH - Duration::from_secs(5);
    let bytes = stored.encode();
    assert_eq!(StoredTrace::decode(&bytes).unwrap(), stored);
    for cut in 0..bytes.len() {
        assert!(StoredTrace::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(StoredTrace::decode(&longer).is_err());
    let mut newer = bytes.clone();
    newer[0] = 2;
    assert_eq!(
        StoredTrace::decode(&newer),
        Err(StoredTraceError::Version(2))
    );
    // every single flipped byte is refused or read as some other identity, never a panic
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0xff;
        let _ = StoredTrace::decode(&flipped);
    }
    assert!(StoredTrace::decode(&vec![1; MAX_ENCODED_BYTES + 1]).is_err());
}
