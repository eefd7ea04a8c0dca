//! The engine's per-item traces, checked with the SDK's in-memory exporter: one trace per key
//! across attempts, attempt spans under the item span, the handler's spans (OpenTelemetry API and
//! `tracing`) under the attempt, baggage copied onto spans, and the end of the item span when the
//! key is forgotten.

use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use traceq_engine::trace::attributes as attr;
use traceq_engine::{Attempt, Engine, EngineHandle};

mod common;

use common::{attr_of, provider};

fn event_attr<'a>(span: &'a SpanData, event: &str, key: &str) -> Option<&'a Value> {
    span.events
        .iter()
        .find(|e| e.name == event)
        .and_then(|e| e.attributes.iter().find(|kv| kv.key.as_str() == key))
        .map(|kv| &kv.value)
}

fn has_event(span: &SpanData, event: &str) -> bool {
    span.events.iter().any(|e| e.name == event)
}

/// Waits (bounded) until `n` spans named `name` have ended.
async fn wait_for_spans(exporter: &InMemorySpanExporter, name: &str, n: usize) -> Vec<SpanData> {
    for _ in 0..5_000 {
        let spans = exporter.get_finished_spans().unwrap();
        if spans.iter().filter(|s| s.name == name).count() >= n {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for {n} spans named {name}");
}

async fn stop<K>(handle: &EngineHandle<K>, run: tokio::task::JoinHandle<()>)
where
    K: Eq + std::hash::Hash + Clone + Send + Sync + 'static,
{
    handle.shutdown_with_drain().await;
    run.await.unwrap();
}

#[tokio::test]
async fn key_that_fails_twice_then_succeeds_should_be_one_trace_with_three_attempts() {
    let (provider, exporter) = provider();
    let engine = Engine::<String>::builder()
        .with_name("orders")
        .with_workers(1)
        .with_backoff(Duration::from_millis(1), Duration::from_secs(1))
        .with_tracer(provider.tracer("traceq"))
        .with_job_id_of(|key| Some(format!("job-{key}")))
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add("a".to_owned());
    let handler_tracer = provider.tracer("handler");
    let seen_baggage = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&seen_baggage);
    let run = tokio::spawn(async move {
        engine
            .run(move |attempt: Attempt<String>| {
                let cx = attempt.context();
                let bag = cx.baggage();
                seen.lock().push((
                    bag.get(attr::ITEM_KEY).map(|v| v.to_string()),
                    bag.get(attr::JOB_ID).map(|v| v.to_string()),
                ));
                let mut span = handler_tracer.start_with_context("handler work", &cx);
                opentelemetry::trace::Span::end(&mut span);
                async move {
                    if attempt.number < 3 {
                        Err(format!("boom {}", attempt.number))
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
    });
    let spans = wait_for_spans(&exporter, "item orders", 1).await;
    stop(&handle, run).await;

    let item = spans.iter().find(|s| s.name == "item orders").unwrap();
    assert_eq!(
        item.parent_span_id,
        SpanId::INVALID,
        "the item span is the root"
    );
    let trace_id = item.span_context.trace_id();
    assert!(
        spans.iter().all(|s| s.span_context.trace_id() == trace_id),
        "one trace"
    );
    assert_eq!(
        attr_of(item, attr::OUTCOME),
        Some(&Value::from(attr::OUTCOME_SUCCEEDED))
    );
    assert_eq!(attr_of(item, attr::ATTEMPTS_TOTAL), Some(&Value::I64(3)));
    assert_eq!(
        attr_of(item, attr::MESSAGING_SYSTEM),
        Some(&Value::from("traceq"))
    );
    assert_eq!(
        attr_of(item, attr::MESSAGING_DESTINATION_NAME),
        Some(&Value::from("orders"))
    );
    assert_eq!(item.status, Status::Unset);

    let mut attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "process orders")
        .collect();
    attempts.sort_by_key(|s| s.start_time);
    assert_eq!(attempts.len(), 3);
    let mut backoffs = Vec::new();
    for (i, a) in attempts.iter().enumerate() {
        let n = i as i64 + 1;
        assert_eq!(a.span_kind, SpanKind::Consumer);
        assert_eq!(a.parent_span_id, item.span_context.span_id());
        assert_eq!(attr_of(a, attr::ATTEMPT), Some(&Value::I64(n)));
        assert_eq!(attr_of(a, attr::RETRY), Some(&Value::Bool(n > 1)));
        assert_eq!(
            attr_of(a, attr::MESSAGING_OPERATION_TYPE),
            Some(&Value::from("process"))
        );
        assert!(matches!(attr_of(a, attr::QUEUE_WAIT_MS), Some(Value::F64(ms)) if *ms >= 0.0));
        // Baggage copied onto every engine span.
        assert_eq!(attr_of(a, attr::ITEM_KEY), Some(&Value::from("a")));
        assert_eq!(attr_of(a, attr::JOB_ID), Some(&Value::from("job-a")));
        if n < 3 {
            assert_eq!(a.status, Status::error(format!("boom {n}")));
            assert_eq!(
                attr_of(a, attr::OUTCOME),
                Some(&Value::from(attr::OUTCOME_REQUEUED))
            );
            match event_attr(a, attr::EVENT_REQUEUE, attr::BACKOFF_MS) {
                Some(Value::F64(ms)) => backoffs.push(*ms),
                other => panic!("requeue event without backoff: {other:?}"),
            }
        } else {
            assert_eq!(a.status, Status::Unset);
            assert!(!has_event(a, attr::EVENT_REQUEUE));
            assert_eq!(
                attr_of(a, attr::OUTCOME),
                Some(&Value::from(attr::OUTCOME_SUCCEEDED))
            );
        }
    }
    assert_eq!(backoffs, vec![1.0, 2.0], "backoff grows per failed attempt");
    assert_eq!(attr_of(item, attr::ITEM_KEY), Some(&Value::from("a")));
    assert_eq!(attr_of(item, attr::JOB_ID), Some(&Value::from("job-a")));

    // The handler's spans nest under their attempt.
    let children: Vec<&SpanData> = spans.iter().filter(|s| s.name == "handler work").collect();
    assert_eq!(children.len(), 3);
    for a in &attempts {
        let id = a.span_context.span_id();
        assert_eq!(
            children.iter().filter(|c| c.parent_span_id == id).count(),
            1
        );
    }
    // The handler saw the item key and job id as baggage.
    let expected = (Some("a".to_owned()), Some("job-a".to_owned()));
    assert_eq!(
        *seen_baggage.lock(),
        vec![expected.clone(), expected.clone(), expected]
    );
}

#[tokio::test]
async fn key_that_exhausts_retries_should_end_its_item_span_with_error_and_forget_event() {
    let (provider, exporter) = provider();
    let engine = Engine::<u32>::builder()
        .with_workers(1)
        .with_max_retries(1)
        .with_backoff(Duration::from_millis(1), Duration::from_millis(10))
        .with_tracer(provider.tracer("traceq"))
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add(7);
    let run = tokio::spawn(async move {
        engine
            .run(|_: Attempt<u32>| async { Err::<(), _>("always fails") })
            .await;
    });
    let spans = wait_for_spans(&exporter, "item traceq", 1).await;
    stop(&handle, run).await;

    let item = spans.iter().find(|s| s.name == "item traceq").unwrap();
    assert_eq!(item.status, Status::error("always fails"));
    assert_eq!(
        attr_of(item, attr::OUTCOME),
        Some(&Value::from(attr::OUTCOME_EXHAUSTED))
    );
    assert_eq!(attr_of(item, attr::ATTEMPTS_TOTAL), Some(&Value::I64(2)));
    assert_eq!(
        event_attr(item, attr::EVENT_FORGET, attr::REASON),
        Some(&Value::from("max retries reached"))
    );
    assert_eq!(attr_of(item, attr::ITEM_KEY), Some(&Value::from("7")));
    let mut attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "process traceq")
        .collect();
    attempts.sort_by_key(|s| s.start_time);
    assert_eq!(attempts.len(), 2);
    assert!(has_event(attempts[0], attr::EVENT_REQUEUE));
    assert_eq!(
        event_attr(attempts[1], attr::EVENT_FORGET, attr::REASON),
        Some(&Value::from("max retries reached"))
    );
    assert_eq!(attempts[1].status, Status::error("always fails"));
}

#[tokio::test]
async fn tracing_spans_in_the_handler_should_nest_under_the_attempt() {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    let (provider, exporter) = provider();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tracing")));
    // Current-thread runtime: the handler runs on this thread, under this default subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let engine = Engine::<&'static str>::builder()
        .with_workers(1)
        .with_tracer(provider.tracer("traceq"))
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add("k");
    let run = tokio::spawn(async move {
        engine
            .run(|attempt: Attempt<&'static str>| {
                let span = tracing::info_span!("db query");
                span.set_parent(attempt.context()).unwrap();
                drop(span.enter());
                async { Ok::<(), String>(()) }
            })
            .await;
    });
    let spans = wait_for_spans(&exporter, "item traceq", 1).await;
    stop(&handle, run).await;

    let attempt = spans.iter().find(|s| s.name == "process traceq").unwrap();
    let query = spans.iter().find(|s| s.name == "db query").unwrap();
    assert_eq!(query.parent_span_id, attempt.span_context.span_id());
    assert_eq!(
        query.span_context.trace_id(),
        attempt.span_context.trace_id()
    );
}

#[tokio::test]
async fn adds_of_a_queued_key_should_become_events_on_its_item_span() {
    let (provider, exporter) = provider();
    let engine = Engine::<u8>::builder()
        .with_workers(1)
        .with_tracer(provider.tracer("traceq"))
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add(1);
    handle.add(1);
    handle.add_after(1, Duration::from_millis(1));
    let run = tokio::spawn(async move {
        engine
            .run(|_: Attempt<u8>| async { Ok::<(), String>(()) })
            .await;
    });
    let spans = wait_for_spans(&exporter, "item traceq", 1).await;
    // The delayed add may fire after the first trace ended: then it is a trace of its own.
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop(&handle, run).await;
    let spans = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .chain(spans)
        .collect::<Vec<_>>();
    let first = spans.iter().find(|s| s.name == "item traceq").unwrap();
    let coalesced = first
        .events
        .iter()
        .filter(|e| e.name == attr::EVENT_COALESCED_ADD)
        .count();
    assert_eq!(coalesced, 2);
}

#[tokio::test]
async fn keys_left_at_shutdown_should_end_their_traces_as_dropped() {
    let (provider, exporter) = provider();
    let engine = Engine::<u8>::builder()
        .with_tracer(provider.tracer("traceq"))
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add_after(9, Duration::from_secs(3600));
    let run = tokio::spawn(async move {
        engine
            .run(|_: Attempt<u8>| async { Ok::<(), String>(()) })
            .await;
    });
    handle.shutdown();
    run.await.unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(
        attr_of(&spans[0], attr::OUTCOME),
        Some(&Value::from(attr::OUTCOME_DROPPED))
    );
    assert_eq!(
        attr_of(&spans[0], attr::ATTEMPTS_TOTAL),
        Some(&Value::I64(0))
    );
    // After shutdown adds are refused and start no trace.
    handle.add(10);
    assert_eq!(exporter.get_finished_spans().unwrap().len(), 1);
}

#[tokio::test]
async fn a_key_added_again_after_it_was_forgotten_should_get_a_new_trace() {
    let (provider, exporter) = provider();
    let engine = Engine::<u8>::builder()
        .with_workers(1)
        .with_tracer(provider.tracer("traceq"))
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add(3);
    let run = tokio::spawn(async move {
        engine
            .run(|_: Attempt<u8>| async { Ok::<(), String>(()) })
            .await;
    });
    wait_for_spans(&exporter, "item traceq", 1).await;
    handle.add(3);
    let spans = wait_for_spans(&exporter, "item traceq", 2).await;
    stop(&handle, run).await;
    let items: Vec<&SpanData> = spans.iter().filter(|s| s.name == "item traceq").collect();
    assert_ne!(
        items[0].span_context.trace_id(),
        items[1].span_context.trace_id()
    );
}

/// The one way a key reaches a worker without a trace: added while it is processed (dirty), then
/// forgotten by that attempt's success, so `done` queues it again after its trace ended.
#[tokio::test]
async fn a_key_added_while_processed_and_then_forgotten_should_run_again_in_a_new_trace() {
    let (provider, exporter) = provider();
    let engine = Engine::<u8>::builder()
        .with_workers(1)
        .with_tracer(provider.tracer("traceq"))
        .build()
        .unwrap();
    let handle = engine.handle();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let first = Arc::new(Mutex::new(Some((started_tx, release_rx))));
    handle.add(5);
    let run = tokio::spawn(async move {
        engine
            .run(move |_: Attempt<u8>| {
                let first = first.lock().take();
                async move {
                    if let Some((started, release)) = first {
                        started.send(()).unwrap();
                        release.await.unwrap();
                    }
                    Ok::<(), String>(())
                }
            })
            .await;
    });
    started_rx.await.unwrap();
    handle.add(5); // in process: marked dirty, recorded on the running trace
    release_tx.send(()).unwrap();
    let spans = wait_for_spans(&exporter, "item traceq", 2).await;
    stop(&handle, run).await;

    let items: Vec<&SpanData> = spans.iter().filter(|s| s.name == "item traceq").collect();
    assert_eq!(items.len(), 2);
    assert_ne!(
        items[0].span_context.trace_id(),
        items[1].span_context.trace_id()
    );
    assert!(has_event(items[0], attr::EVENT_COALESCED_ADD));
    for item in &items {
        let attempts = spans
            .iter()
            .filter(|s| {
                s.name == "process traceq" && s.parent_span_id == item.span_context.span_id()
            })
            .count();
        assert_eq!(attempts, 1, "each life ran once, in its own trace");
        assert_eq!(
            attr_of(item, attr::OUTCOME),
            Some(&Value::from(attr::OUTCOME_SUCCEEDED))
        );
    }
}

#[tokio::test]
async fn untraced_engine_should_hand_the_current_context_to_the_handler() {
    let engine = Engine::<u8>::builder().with_workers(1).build().unwrap();
    let handle = engine.handle();
    handle.add(1);
    let saw = Arc::new(Mutex::new(None));
    let sink = Arc::clone(&saw);
    let run = tokio::spawn(async move {
        engine
            .run(move |attempt: Attempt<u8>| {
                *sink.lock() = Some((
                    attempt.job().is_traced(),
                    attempt.context().span().span_context().is_valid(),
                ));
                async { Ok::<(), String>(()) }
            })
            .await;
    });
    for _ in 0..1000 {
        if saw.lock().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop(&handle, run).await;
    assert_eq!(*saw.lock(), Some((false, false)));
}

/// A producer in another service starts a span, sends its context in headers; the engine's item
/// span must continue it (same trace, child of the producer's span), and the producer's baggage
/// must reach the engine's spans.
async fn producer_context_should_be_continued(
    inject: impl Fn(&opentelemetry::Context, &mut std::collections::HashMap<String, String>),
    with_baggage: bool,
) {
    use traceq_engine::trace::propagation;

    let (provider, exporter) = provider();
    let producer = provider.tracer("producer");
    let span = producer.start("produce");
    let producer_sc = opentelemetry::trace::Span::span_context(&span).clone();
    let cx = opentelemetry::Context::new()
        .with_span(span)
        .with_baggage([opentelemetry::KeyValue::new("tenant", "acme")]);
    let mut headers = std::collections::HashMap::new();
    inject(&cx, &mut headers);
    cx.span().end();

    let engine = Engine::<&'static str>::builder()
        .with_workers(1)
        .with_tracer(provider.tracer("traceq"))
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add_with_context("k", &propagation::extract(&headers));
    let run = tokio::spawn(async move {
        engine
            .run(|_: Attempt<&'static str>| async { Ok::<(), String>(()) })
            .await;
    });
    let spans = wait_for_spans(&exporter, "item traceq", 1).await;
    stop(&handle, run).await;

    let item = spans.iter().find(|s| s.name == "item traceq").unwrap();
    assert_eq!(item.span_context.trace_id(), producer_sc.trace_id());
    assert_eq!(item.parent_span_id, producer_sc.span_id());
    assert!(item.parent_span_is_remote);
    let attempt = spans.iter().find(|s| s.name == "process traceq").unwrap();
    assert_eq!(attempt.span_context.trace_id(), producer_sc.trace_id());
    let tenant = with_baggage.then(|| Value::from("acme"));
    assert_eq!(attr_of(item, "tenant"), tenant.as_ref());
    assert_eq!(attr_of(attempt, "tenant"), tenant.as_ref());
}

#[tokio::test]
async fn w3c_producer_context_should_be_continued_by_the_item_span() {
    producer_context_should_be_continued(
        |cx, h| traceq_engine::trace::propagation::inject_w3c(cx, h),
        true,
    )
    .await;
}

#[tokio::test]
async fn b3_single_producer_context_should_be_continued_by_the_item_span() {
    use traceq_engine::trace::propagation::{inject_b3, B3Encoding};
    producer_context_should_be_continued(|cx, h| inject_b3(cx, h, B3Encoding::SingleHeader), false)
        .await;
}

#[tokio::test]
async fn b3_multi_producer_context_should_be_continued_by_the_item_span() {
    use traceq_engine::trace::propagation::{inject_b3, B3Encoding};
    producer_context_should_be_continued(
        |cx, h| inject_b3(cx, h, B3Encoding::MultipleHeader),
        false,
    )
    .await;
}

#[tokio::test]
async fn noop_tracer_should_leave_the_engine_untraced() {
    // `global::tracer` with no provider installed is the API's no-op tracer.
    let engine = Engine::<u8>::builder()
        .with_workers(1)
        .with_tracer(opentelemetry::global::tracer("traceq"))
        .build()
        .unwrap();
    let handle = engine.handle();
    for key in 0..3 {
        handle.add(key);
    }
    let traced = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&traced);
    let run = tokio::spawn(async move {
        engine
            .run(move |attempt: Attempt<u8>| {
                sink.lock().push(attempt.job().is_traced());
                async { Ok::<(), String>(()) }
            })
            .await;
    });
    handle.shutdown_with_drain_queued().await;
    run.await.unwrap();
    assert_eq!(*traced.lock(), vec![false, false, false]);
}

#[tokio::test]
async fn timed_out_and_panicking_attempts_should_have_error_status() {
    let (provider, exporter) = provider();
    let engine = Engine::<u8>::builder()
        .with_workers(1)
        .with_max_retries(1)
        .with_attempt_timeout(Duration::from_millis(5))
        .with_backoff(Duration::from_millis(1), Duration::from_millis(1))
        .with_tracer(provider.tracer("traceq"))
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add(1);
    let run = tokio::spawn(async move {
        engine
            .run(|attempt: Attempt<u8>| async move {
                if attempt.number == 1 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                } else {
                    panic!("handler blew up");
                }
                Ok::<(), String>(())
            })
            .await;
    });
    let spans = wait_for_spans(&exporter, "item traceq", 1).await;
    stop(&handle, run).await;
    let mut attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "process traceq")
        .collect();
    attempts.sort_by_key(|s| s.start_time);
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        attempts[0].status,
        Status::error("attempt timed out after 5ms")
    );
    assert_eq!(
        attempts[1].status,
        Status::error("handler panicked: handler blew up")
    );
    let item = spans.iter().find(|s| s.name == "item traceq").unwrap();
    assert_eq!(
        item.status,
        Status::error("handler panicked: handler blew up")
    );
}

#[test]
fn job_context_should_be_send_sync_and_cheap_to_clone() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<traceq_engine::JobContext>();
    assert_send_sync_clone::<Attempt<String>>();
}

#[tokio::test]
async fn delayed_add_should_start_the_trace_and_count_the_delay_as_queue_wait() {
    let (provider, exporter) = provider();
    let engine = Engine::<u8>::builder()
        .with_workers(1)
        .with_tracer(provider.tracer("traceq"))
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add_after(5, Duration::from_millis(30));
    let run = tokio::spawn(async move {
        engine
            .run(|_: Attempt<u8>| async { Ok::<(), String>(()) })
            .await;
    });
    let spans = wait_for_spans(&exporter, "item traceq", 1).await;
    stop(&handle, run).await;
    let item = spans.iter().find(|s| s.name == "item traceq").unwrap();
    let attempt = spans.iter().find(|s| s.name == "process traceq").unwrap();
    assert_eq!(attempt.parent_span_id, item.span_context.span_id());
    match attr_of(attempt, attr::QUEUE_WAIT_MS) {
        Some(Value::F64(ms)) => assert!(*ms >= 30.0, "waited {ms} ms"),
        other => panic!("no queue wait: {other:?}"),
    }
}

#[tokio::test]
async fn dropping_an_engine_that_never_ran_should_end_its_traces() {
    let (provider, exporter) = provider();
    let engine = Engine::<u8>::builder()
        .with_tracer(provider.tracer("traceq"))
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add(1);
    drop(handle);
    drop(engine);
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(
        attr_of(&spans[0], attr::OUTCOME),
        Some(&Value::from(attr::OUTCOME_DROPPED))
    );
}

/// Many keys, re-added while queued or in process, failing at random, on several workers: every
/// trace must still be whole (one item span with an outcome, every attempt span under it, the
/// attempts counted), whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_and_failures_should_keep_every_trace_whole() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    let (provider, exporter) = provider();
    let engine = Engine::<u32>::builder()
        .with_workers(4)
        .with_max_retries(2)
        .with_backoff(Duration::from_micros(100), Duration::from_millis(1))
        .with_tracer(provider.tracer("traceq"))
        .build()
        .unwrap();
    let handle = engine.handle();
    let calls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    let run = tokio::spawn(async move {
        engine
            .run(move |attempt: Attempt<u32>| {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                async move {
                    tokio::task::yield_now().await;
                    if (n * 7 + u64::from(attempt.key)).is_multiple_of(3) {
                        Err("flaky")
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
    });
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let handle = handle.clone();
            tokio::spawn(async move {
                for round in 0..20u32 {
                    for key in 0..50u32 {
                        handle.add((key + p * 7 + round) % 50);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), handle.queue().wait_idle())
        .await
        .expect("the queue settles");
    handle.shutdown_with_drain().await;
    run.await.unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let items: HashMap<_, &SpanData> = spans
        .iter()
        .filter(|s| s.name == "item traceq")
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    let attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "process traceq")
        .collect();
    assert!(!items.is_empty());
    assert_eq!(attempts.len() as u64, calls.load(Ordering::Relaxed));
    let mut per_item: HashMap<_, i64> = HashMap::new();
    for a in &attempts {
        let item = items
            .get(&a.parent_span_id)
            .unwrap_or_else(|| panic!("attempt without its item span: {a:?}"));
        assert_eq!(a.span_context.trace_id(), item.span_context.trace_id());
        assert_eq!(attr_of(a, attr::ITEM_KEY), attr_of(item, attr::ITEM_KEY));
        *per_item.entry(a.parent_span_id).or_default() += 1;
    }
    for (id, item) in &items {
        assert!(
            attr_of(item, attr::OUTCOME).is_some(),
            "item without outcome"
        );
        let total = match attr_of(item, attr::ATTEMPTS_TOTAL) {
            Some(Value::I64(n)) => *n,
            other => panic!("no attempts_total: {other:?}"),
        };
        assert_eq!(total, per_item.get(id).copied().unwrap_or(0));
    }
}
