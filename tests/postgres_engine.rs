//! The engine on the durable queue, against a real PostgreSQL (`DATABASE_URL`; each test in a
//! schema of its own): the handler, retries, dead letters, outcomes, payloads and metrics as in
//! memory, and one trace per item across two engines (two tracer providers, as two processes
//! would have). Without `DATABASE_URL` the tests say they are skipped, unless `CI` is set: then
//! they fail.

use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use traceq_engine::postgres::testing::TestSchema;
use traceq_engine::postgres::{PgBuildError, PgEngine};
use traceq_engine::trace::attributes as attr;
use traceq_engine::trace::stored::StoredIdGenerator;
use traceq_engine::{AddOptions, Attempt, Engine, EngineBuilder, Fairness, Outcome, OutcomeKind};

macro_rules! db_or_skip {
    ($name:expr) => {
        match TestSchema::new($name) {
            Some(db) => db,
            None => return,
        }
    };
}

type Outcomes = Arc<Mutex<Vec<Outcome<String>>>>;

fn builder(outcomes: &Outcomes) -> EngineBuilder<String> {
    let seen = outcomes.clone();
    Engine::<String>::builder()
        .with_workers(4)
        .with_max_retries(2)
        .with_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .with_outcome_hook(move |o| seen.lock().push(o.clone()))
}

async fn run_until_idle<F, Fut>(engine: &PgEngine, handler: F)
where
    F: Fn(Attempt<String>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let handle = engine.handle();
    let stop = tokio::spawn(async move {
        handle.wait_idle(Duration::from_millis(20)).await.unwrap();
        handle.shutdown_with_drain().await.unwrap();
    });
    tokio::time::timeout(Duration::from_secs(60), engine.run(handler))
        .await
        .expect("the engine finished the queue");
    stop.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_engine_should_retry_then_dead_letter_and_report_each_outcome() {
    let db = db_or_skip!("postgres_engine_should_retry_then_dead_letter");
    let outcomes = Outcomes::default();
    let engine = builder(&outcomes)
        .build_postgres(db.config("jobs"))
        .await
        .unwrap();
    let handle = engine.handle();
    for key in ["a", "b", "poison", "flaky"] {
        handle.add(key).await.unwrap();
    }
    handle
        .add_payload("a", b"payload of a", AddOptions::new())
        .await
        .unwrap();
    let payloads = Arc::new(Mutex::new(HashMap::new()));
    let seen = payloads.clone();
    run_until_idle(&engine, move |attempt: Attempt<String>| {
        seen.lock()
            .insert(attempt.key.clone(), attempt.payload().map(<[u8]>::to_vec));
        async move {
            match (attempt.key.as_str(), attempt.number) {
                ("poison", _) => Err("always fails".to_owned()),
                ("flaky", 1) => Err("fails once".to_owned()),
                _ => Ok(()),
            }
        }
    })
    .await;
    let outcomes = outcomes.lock().clone();
    let of = |key: &str| -> Vec<(u32, &OutcomeKind)> {
        outcomes
            .iter()
            .filter(|o| o.key == key)
            .map(|o| (o.attempt, &o.kind))
            .collect()
    };
    assert!(matches!(of("a")[..], [(1, OutcomeKind::Succeeded)]));
    assert!(matches!(of("b")[..], [(1, OutcomeKind::Succeeded)]));
    assert!(
        matches!(
            of("flaky")[..],
            [
                (1, OutcomeKind::Requeued { .. }),
                (2, OutcomeKind::Succeeded)
            ]
        ),
        "{:?}",
        of("flaky")
    );
    let poison = of("poison");
    assert_eq!(poison.len(), 3, "max_retries 2: three attempts");
    assert!(matches!(poison[2], (3, OutcomeKind::Exhausted { .. })));
    assert_eq!(
        payloads.lock().get("a"),
        Some(&Some(b"payload of a".to_vec()))
    );
    assert_eq!(payloads.lock().get("b"), Some(&None));
    let failed = engine.queue().failed(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].key, "poison");
    assert_eq!(failed[0].attempts, 3);
    assert_eq!(failed[0].last_error.as_deref(), Some("always fails"));
    let metrics = handle.metrics().await.unwrap();
    assert_eq!(metrics.name, "jobs", "the engine is named after its queue");
    assert_eq!(metrics.exhausted_total, 1);
    assert_eq!(metrics.retries_total, 3, "flaky once, poison twice");
    assert_eq!(metrics.work_duration.count, 7);
    assert_eq!((metrics.depth, metrics.processing), (0, 0));
    let text = metrics.to_prometheus();
    for name in [
        "workqueue_depth",
        "workqueue_adds_total",
        "workqueue_retries_total",
        "workqueue_work_duration_seconds_bucket",
        "traceq_workqueue_exhausted_total",
    ] {
        assert!(text.contains(name), "{name} in\n{text}");
    }
}

#[tokio::test]
async fn postgres_engine_should_refuse_what_the_backend_cannot_do_before_connecting() {
    // No database needed: refused before connecting.
    let config = traceq_engine::postgres::PgQueueConfig::new("postgres://nobody@127.0.0.1:1/x");
    let fair = Engine::<String>::builder()
        .with_fairness(Fairness::by(|key: &String| key.len()))
        .build_postgres(config.clone())
        .await;
    assert!(matches!(fair, Err(PgBuildError::Fairness)), "{fair:?}");
    let zero = Engine::<String>::builder()
        .with_workers(0)
        .build_postgres(config.clone())
        .await;
    assert!(matches!(zero, Err(PgBuildError::Engine(_))), "{zero:?}");
    let unreachable = Engine::<String>::builder().build_postgres(config).await;
    let error = unreachable.unwrap_err();
    assert!(matches!(error, PgBuildError::Queue(_)), "{error:?}");
    assert!(error.to_string().contains("connect"), "{error}");
}

fn provider() -> (SdkTracerProvider, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_id_generator(StoredIdGenerator::default())
        .with_simple_exporter(exporter.clone())
        .build();
    (provider, exporter)
}

fn attr_of<'a>(span: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_engine_should_keep_one_trace_per_item_across_two_engines() {
    let db = db_or_skip!("postgres_engine_should_keep_one_trace_across_engines");
    // Two engines with providers of their own: what two worker processes have.
    let (provider_a, spans_a) = provider();
    let (provider_b, spans_b) = provider();
    let outcomes = Outcomes::default();
    let a = builder(&outcomes)
        // a stops before the retry is due.
        .with_backoff(Duration::from_secs(1), Duration::from_secs(1))
        .with_tracer(provider_a.tracer("a"))
        .build_postgres(db.config("jobs"))
        .await
        .unwrap();
    a.handle().add("order-7").await.unwrap();
    // Engine a fails the first attempt, then stops; engine b runs the retry.
    let handle_a = a.handle();
    let first = tokio::spawn(async move {
        while handle_a.metrics().await.unwrap().retries_total == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        handle_a.shutdown_with_drain().await.unwrap();
    });
    a.run(|_attempt: Attempt<String>| async { Err::<(), _>("card declined".to_owned()) })
        .await;
    first.await.unwrap();
    let b = builder(&outcomes)
        .with_tracer(provider_b.tracer("b"))
        .build_postgres(db.config("jobs"))
        .await
        .unwrap();
    let tracer_b = provider_b.tracer("handler");
    run_until_idle(&b, move |attempt: Attempt<String>| {
        use opentelemetry::trace::{Span as _, Tracer as _};
        let mut span = tracer_b.start_with_context("charge card", &attempt.context());
        span.end();
        async { Ok(()) }
    })
    .await;
    provider_a.force_flush().unwrap();
    provider_b.force_flush().unwrap();
    let from_a = spans_a.get_finished_spans().unwrap();
    let from_b = spans_b.get_finished_spans().unwrap();
    assert_eq!(from_a.len(), 1, "a ran one attempt: {from_a:?}");
    let roots: Vec<&SpanData> = from_b.iter().filter(|s| s.name == "item jobs").collect();
    assert_eq!(roots.len(), 1, "b ended the item");
    let root = roots[0];
    let trace_id: TraceId = root.span_context.trace_id();
    let all: Vec<&SpanData> = from_a.iter().chain(from_b.iter()).collect();
    assert!(
        all.iter().all(|s| s.span_context.trace_id() == trace_id),
        "one trace: {all:#?}"
    );
    assert_eq!(
        root.parent_span_id,
        SpanId::INVALID,
        "the item span is the root"
    );
    let attempts: Vec<&&SpanData> = all.iter().filter(|s| s.name == "process jobs").collect();
    assert_eq!(attempts.len(), 2);
    for attempt in &attempts {
        assert_eq!(attempt.parent_span_id, root.span_context.span_id());
        assert_eq!(attempt.span_kind, SpanKind::Consumer);
        assert!(attempt.end_time <= root.end_time, "the root ends last");
        assert!(attempt.start_time >= root.start_time);
    }
    assert_eq!(
        attr_of(&from_a[0], attr::OUTCOME).map(ToString::to_string),
        Some("requeued".to_owned())
    );
    assert_eq!(
        attr_of(root, attr::OUTCOME).map(ToString::to_string),
        Some("succeeded".to_owned())
    );
    assert_eq!(
        attr_of(root, attr::ITEM_KEY).map(ToString::to_string),
        Some("order-7".to_owned())
    );
    let handler_span = from_b.iter().find(|s| s.name == "charge card").unwrap();
    let second = attempts
        .iter()
        .find(|s| attr_of(s, attr::ATTEMPT).map(ToString::to_string) == Some("2".to_owned()))
        .unwrap();
    assert_eq!(handler_span.parent_span_id, second.span_context.span_id());
    // The identity went with the forgotten key.
    let ids: HashSet<TraceId> = all.iter().map(|s| s.span_context.trace_id()).collect();
    assert_eq!(ids.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_engine_should_start_a_new_trace_for_an_item_added_again_after_it_finished() {
    let db = db_or_skip!("postgres_engine_should_start_a_new_trace_after_finish");
    let (provider, spans) = provider();
    let outcomes = Outcomes::default();
    let engine = builder(&outcomes)
        .with_tracer(provider.tracer("t"))
        .build_postgres(db.config("jobs"))
        .await
        .unwrap();
    let handle = engine.handle();
    handle.add("k").await.unwrap();
    let handler = |_a: Attempt<String>| async { Ok::<(), String>(()) };
    let first = engine.clone();
    let runner = tokio::spawn(async move { first.run(handler).await });
    while outcomes.lock().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.add("k").await.unwrap();
    while outcomes.lock().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown_with_drain().await.unwrap();
    runner.await.unwrap();
    provider.force_flush().unwrap();
    let roots: Vec<SpanData> = spans
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == "item jobs")
        .collect();
    assert_eq!(roots.len(), 2, "two lives, two items");
    assert_ne!(
        roots[0].span_context.trace_id(),
        roots[1].span_context.trace_id(),
        "a key forgotten and added again is a new trace"
    );
}
