//! A Kubernetes-style controller whose objects are processed with retries, and traced.
//!
//! Shows: one trace per object from its first add until it is forgotten; an attempt span per
//! attempt (retries counted, backoff recorded as a `requeue` event); the handler's own
//! `reconcile` span nested under the attempt, with the object's namespace and name as attributes;
//! the item key travelling as baggage (`traceq.item.key`) that the handler can read; and an object
//! that keeps failing being forgotten after `max_retries`, with the reason on its spans. The
//! in-process tail sampler keeps the traces with an error (and 10% of the rest); an in-memory
//! exporter collects them and they are drawn as waterfalls.
//!
//! Run it: `cargo run --example traced_controller`

use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::trace::{Span as _, Status, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use std::time::Duration;
use traceq::engine::{Attempt, Engine};
use traceq::exporter::{records_from_sdk, traces, Waterfall};
use traceq::sampler::{SamplerConfig, TailSamplingProcessor};

/// An object's identity, as a controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ObjectKey {
    namespace: String,
    name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// Runs the controller over a handful of objects; returns the spans the sampler kept.
pub(crate) async fn run() -> anyhow::Result<Vec<SpanData>> {
    let exporter = InMemorySpanExporter::default();
    let processor = TailSamplingProcessor::new(exporter.clone(), SamplerConfig::default())?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .build();
    let tracer = provider.tracer("traced-controller");

    let engine = Engine::<ObjectKey>::builder()
        .with_name("deployments")
        .with_workers(2)
        .with_max_retries(2) // a third failure forgets the object
        .with_backoff(Duration::from_millis(5), Duration::from_millis(50))
        .with_tracer(tracer.clone())
        .build()?;
    let handle = engine.handle();
    for (ns, name) in [("default", "web"), ("default", "api"), ("shop", "cart")] {
        handle.add(key(ns, name));
    }
    handle.add(key("shop", "flaky")); // fails once, then succeeds
    handle.add(key("shop", "broken")); // always fails: forgotten after max retries

    let workers = tokio::spawn(async move {
        engine
            .run(move |attempt: Attempt<ObjectKey>| {
                let tracer = tracer.clone();
                async move { reconcile(&tracer, attempt).await }
            })
            .await
    });
    // Wait for every object to be forgotten (success or retries exhausted), then stop.
    handle.queue().wait_idle().await;
    handle.shutdown_with_drain().await;
    workers.await?;

    // The SDK's flush must not run on an async worker thread.
    tokio::task::spawn_blocking(move || {
        provider.force_flush()?;
        let spans = exporter.get_finished_spans()?; // before shutdown, which clears them
        provider.shutdown()?;
        Ok(spans)
    })
    .await?
}

async fn reconcile(
    tracer: &opentelemetry_sdk::trace::SdkTracer,
    attempt: Attempt<ObjectKey>,
) -> Result<(), String> {
    let cx = attempt.context();
    // The engine put the item key in the baggage; anything downstream can read it.
    let baggage_key = cx
        .baggage()
        .get("traceq.item.key")
        .map(|v| v.to_string())
        .unwrap_or_default();
    let mut span = tracer
        .span_builder("reconcile")
        .with_attributes([
            KeyValue::new("k8s.namespace.name", attempt.key.namespace.clone()),
            KeyValue::new("k8s.deployment.name", attempt.key.name.clone()),
            KeyValue::new("traceq.item.key", baggage_key),
        ])
        .start_with_context(tracer, &cx);
    tokio::time::sleep(Duration::from_millis(2)).await;
    let result = match (attempt.key.name.as_str(), attempt.number) {
        ("flaky", 1) => Err("conflict: the object has been modified".to_owned()),
        ("broken", _) => Err("invalid spec: replicas must be positive".to_owned()),
        _ => Ok(()),
    };
    if let Err(e) = &result {
        span.set_status(Status::error(e.clone()));
    }
    span.end();
    result
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let spans = run().await?;
    let shown = traces(records_from_sdk(spans));
    println!(
        "kept {} traces: every one with an error, and 10% of the rest\n",
        shown.len()
    );
    for trace in &shown {
        println!("{}", Waterfall::plain().render(trace));
    }
    Ok(())
}
