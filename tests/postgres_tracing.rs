//! One trace per durable item across processes, through the real `traceq collector`
//! (`DATABASE_URL`): worker process A adds two keys and runs their first attempts (one fails,
//! the other succeeds), then stops; worker process B runs the retry, which succeeds. Each exports
//! its spans with the SDK's own OTLP/HTTP exporter to the collector, which tail-samples errors.
//! The failing key must arrive as one kept trace, whole: its root (built by B with the ids A
//! stored), both attempts (one from each process) under it, B's handler span; the key that
//! only succeeded must not be kept.
//!
//! The workers are this test binary run again (`--exact postgres_tracing_worker --ignored`).

#[path = "common/process.rs"]
mod process;

use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue as ProtoKeyValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use process::CollectorProcess;
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use traceq_engine::postgres::testing::TestSchema;
use traceq_engine::postgres::PgQueueConfig;
use traceq_engine::trace::stored::StoredIdGenerator;
use traceq_engine::{Attempt, Engine, OutcomeKind};

const ENV_ROLE: &str = "TRACEQ_TRACING_ROLE";
const FAILING: &str = "order-42";
const FINE: &str = "order-7";

fn provider(role: &str, endpoint: &str) -> SdkTracerProvider {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("http://{endpoint}/v1/traces"))
        .with_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name(format!("worker-{role}"))
                .build(),
        )
        .with_id_generator(StoredIdGenerator::default())
        .with_batch_exporter(exporter)
        .build()
}

/// A worker process: `a` adds both keys and runs until each had one attempt; `b` runs until
/// the queue is empty.
#[test]
#[ignore = "a worker process of postgres_tracing_should_keep_one_whole_trace_across_processes"]
fn postgres_tracing_worker() {
    let Ok(role) = std::env::var(ENV_ROLE) else {
        return;
    };
    let url = std::env::var("TRACEQ_TRACING_URL").unwrap();
    let schema = std::env::var("TRACEQ_TRACING_SCHEMA").unwrap();
    let endpoint = std::env::var("TRACEQ_TRACING_ENDPOINT").unwrap();
    // Built outside the runtime: the SDK's HTTP exporter has a blocking client.
    let provider = provider(&role, &endpoint);
    let tracer = provider.tracer("traceq");
    let handler_tracer = provider.tracer("handler");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let engine = Engine::<String>::builder()
            .with_workers(2)
            .with_max_retries(3)
            // Long enough that A stops before the retry is due.
            .with_backoff(Duration::from_secs(1), Duration::from_secs(2))
            .with_tracer(tracer)
            .with_outcome_hook(move |o| {
                let _ = done_tx.send((o.key.clone(), o.kind.clone()));
            })
            .build_postgres(
                PgQueueConfig::new(url)
                    .with_schema(schema)
                    .with_queue("orders"),
            )
            .await
            .unwrap();
        let handle = engine.handle();
        let is_a = role == "a";
        if is_a {
            handle.add(FAILING).await.unwrap();
            handle.add(FINE).await.unwrap();
        }
        let stopper = tokio::spawn(async move {
            if is_a {
                let mut seen = 0;
                while let Some((key, kind)) = done_rx.recv().await {
                    match (key.as_str(), kind) {
                        (FAILING, OutcomeKind::Requeued { .. })
                        | (FINE, OutcomeKind::Succeeded) => seen += 1,
                        other => panic!("unexpected outcome in a: {other:?}"),
                    }
                    if seen == 2 {
                        break;
                    }
                }
            } else {
                handle.wait_idle(Duration::from_millis(50)).await.unwrap();
            }
            handle.shutdown_with_drain().await.unwrap();
        });
        engine
            .run(move |attempt: Attempt<String>| {
                let mut span = handler_tracer.start_with_context("charge card", &attempt.context());
                let fail = is_a && attempt.key == FAILING;
                if fail {
                    span.set_status(opentelemetry::trace::Status::error("card declined"));
                }
                span.end();
                async move {
                    if fail {
                        Err("card declined".to_owned())
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        stopper.await.unwrap();
    });
    provider.force_flush().unwrap();
    provider.shutdown().unwrap();
}

fn run_worker(role: &str, db: &TestSchema, endpoint: &str) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "postgres_tracing_worker",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_ROLE, role)
        .env("TRACEQ_TRACING_URL", db.url())
        .env("TRACEQ_TRACING_SCHEMA", db.schema())
        .env("TRACEQ_TRACING_ENDPOINT", endpoint)
        .stdin(Stdio::null())
        .output()
        .expect("run a worker process");
    assert!(
        output.status.success(),
        "worker {role} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A span as the collector exported it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    key: Option<String>,
    attempt: Option<i64>,
}

fn string_of(attrs: &[ProtoKeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

fn int_of(attrs: &[ProtoKeyValue], key: &str) -> Option<i64> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::IntValue(n) => Some(*n),
            _ => None,
        }
    })
}

fn exported(file: &Path) -> Vec<Exported> {
    let Ok(f) = std::fs::File::open(file) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.unwrap();
        let request: ExportTraceServiceRequest = serde_json::from_str(&line).unwrap();
        for rs in request.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| string_of(&r.attributes, "service.name"))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                out.push(Exported {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: span.trace_id.clone(),
                    span_id: span.span_id.clone(),
                    parent: span.parent_span_id.clone(),
                    key: string_of(&span.attributes, "traceq.item.key"),
                    attempt: int_of(&span.attributes, "traceq.attempt"),
                });
            }
        }
    }
    out
}

#[test]
fn postgres_tracing_should_keep_one_whole_trace_across_processes() {
    let Some(db) = TestSchema::new("postgres_tracing_should_keep_one_whole_trace") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kept.jsonl");
    let yaml = process::errors_to_file_config(&file);
    let collector = CollectorProcess::start(dir.path(), &yaml, &[]);
    let endpoint = collector.http.expect("the http receiver").to_string();
    run_worker("a", &db, &endpoint);
    run_worker("b", &db, &endpoint);
    // The root came last (from b); the collector decides the trace after its quiet period.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = exported(&file);
        if spans.iter().any(|s| s.name == "item orders") {
            // Let a straggling request land.
            std::thread::sleep(Duration::from_millis(300));
            break exported(&file);
        }
        assert!(
            Instant::now() < deadline,
            "no kept trace after 30 s; collector said:\n{}",
            collector.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let roots: Vec<&Exported> = spans.iter().filter(|s| s.name == "item orders").collect();
    assert_eq!(roots.len(), 1, "one kept item: {spans:#?}");
    let root = roots[0];
    assert_eq!(root.key.as_deref(), Some(FAILING));
    assert!(root.parent.is_empty(), "the item span is the root");
    assert_eq!(root.service, "worker-b", "b finished the item");
    assert!(
        spans.iter().all(|s| s.trace_id == root.trace_id),
        "only the failing key's trace was kept: {spans:#?}"
    );
    assert!(
        !spans.iter().any(|s| s.key.as_deref() == Some(FINE)),
        "the key that only succeeded was not kept"
    );
    let mut attempts: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.name == "process orders")
        .collect();
    attempts.sort_by_key(|s| s.attempt);
    assert_eq!(attempts.len(), 2, "both attempts: {spans:#?}");
    assert_eq!(
        (attempts[0].service.as_str(), attempts[0].attempt),
        ("worker-a", Some(1))
    );
    assert_eq!(
        (attempts[1].service.as_str(), attempts[1].attempt),
        ("worker-b", Some(2))
    );
    for attempt in &attempts {
        assert_eq!(attempt.parent, root.span_id, "attempts under the root");
    }
    let handlers: Vec<&Exported> = spans.iter().filter(|s| s.name == "charge card").collect();
    assert_eq!(handlers.len(), 2, "each attempt's handler span");
    for h in handlers {
        assert!(attempts.iter().any(|a| a.span_id == h.parent));
    }
    assert_eq!(spans.len(), 5, "whole, and nothing else: {spans:#?}");
    let _ = collector.stop(Duration::from_secs(10));
}
