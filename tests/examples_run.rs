//! Runs every example's scenario, so CI proves each one works, and checks what it claims to show.
//!
//! The example files are compiled here as modules; each has a `run` that its `main` prints.

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanData;
use std::collections::{BTreeMap, HashSet};
use traceq::exporter::{records_from_sdk, traces};

#[allow(dead_code)] // the example's `main` is its binary's entry point, unused here
#[path = "../examples/traced_controller.rs"]
mod traced_controller;

#[allow(dead_code)]
#[path = "../examples/long_job.rs"]
mod long_job;

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traced_controller_should_keep_failed_objects_whole_and_forget_the_broken_one() {
    let spans = traced_controller::run().await.unwrap();
    let by_key = |key: &str| -> Vec<&SpanData> {
        let kv = KeyValue::new("traceq.item.key", key.to_owned());
        spans
            .iter()
            .filter(|s| s.attributes.contains(&kv))
            .collect()
    };
    let broken = by_key("shop/broken");
    let attempts = broken
        .iter()
        .filter(|s| s.name == "process deployments")
        .count();
    assert_eq!(
        attempts, 3,
        "max_retries(2): three attempts, then forgotten"
    );
    let reconciles: Vec<_> = broken.iter().filter(|s| s.name == "reconcile").collect();
    assert_eq!(reconciles.len(), 3, "handler spans carry the baggage key");
    assert!(reconciles
        .iter()
        .all(|s| attr(s, "k8s.namespace.name") == Some(&opentelemetry::Value::from("shop"))));
    let item = broken
        .iter()
        .find(|s| s.name == "item deployments")
        .unwrap();
    assert_eq!(
        attr(item, "traceq.outcome"),
        Some(&opentelemetry::Value::from("exhausted_retries"))
    );
    assert!(item.events.iter().any(|e| e.name == "forget"));
    let trace_ids: HashSet<_> = broken.iter().map(|s| s.span_context.trace_id()).collect();
    assert_eq!(trace_ids.len(), 1, "one trace for the object's whole life");

    let flaky = by_key("shop/flaky");
    assert_eq!(
        flaky
            .iter()
            .filter(|s| s.name == "process deployments")
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_job_should_keep_the_failing_segment_and_the_ones_after_it() {
    let spans = long_job::run().await.unwrap();
    let kept = traces(records_from_sdk(spans));
    // Segment number of every kept trace, and the days in it.
    let mut segments: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for t in &kept {
        let item = t.spans.iter().find(|s| s.name == "item scheduler").unwrap();
        assert_eq!(
            item.attribute("traceq.job.id"),
            Some("weekly-backup@2024-w01")
        );
        let n: i64 = item.attribute("traceq.segment").unwrap().parse().unwrap();
        let days = t
            .spans
            .iter()
            .filter(|s| s.name.starts_with("day "))
            .map(|s| s.name.clone());
        segments.entry(n).or_default().extend(days);
    }
    let numbers: Vec<i64> = segments.keys().copied().collect();
    assert_eq!(
        numbers,
        [6, 7],
        "the failing segment and the one after: {segments:?}"
    );
    assert!(segments[&6].contains(&"day 6".to_owned()));
    assert!(segments[&7].contains(&"day 7".to_owned()));
    // Segment 7 continues segment 6.
    let seven = kept
        .iter()
        .find(|t| t.spans.iter().any(|s| s.name == "day 7"))
        .unwrap();
    let six = kept.iter().find(|t| t.trace_id != seven.trace_id).unwrap();
    let root = seven.roots().next().unwrap();
    assert!(root
        .links
        .iter()
        .any(|l| l.trace_id == six.trace_id && l.kind.as_deref() == Some("previous_segment")));
}
