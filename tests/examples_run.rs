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

#[allow(dead_code)]
#[path = "../examples/operation_tasks.rs"]
mod operation_tasks;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_tasks_should_nest_steps_under_tasks_and_compose_operations() {
    let records = records_from_sdk(operation_tasks::run().await.unwrap());
    let all = traces(records);
    let release: Vec<_> = all
        .iter()
        .filter(|t| t.spans.iter().any(|s| s.name == "operation release"))
        .collect();
    assert_eq!(
        release.len(),
        1,
        "one trace for the release, retries included"
    );
    let release = release[0];
    let ops = release
        .spans
        .iter()
        .filter(|s| s.name == "operation release");
    assert_eq!(
        ops.count(),
        2,
        "the flaky post-run failed the first attempt"
    );
    assert!(release.has_error());
    // Every task span has its three steps as children, and says where it came from.
    for task in release.spans.iter().filter(|s| s.name.starts_with("task ")) {
        let steps: Vec<&str> = release
            .spans
            .iter()
            .filter(|s| s.parent_span_id.as_deref() == Some(task.span_id.as_str()))
            .map(|s| s.name.as_str())
            .collect();
        assert!(
            steps == ["pre-run", "run", "post-run"],
            "{}: {steps:?}",
            task.name
        );
        let origin = task.attribute("operation.origin").unwrap();
        assert!(origin == "build" || origin == "migrate");
    }
    let origins: HashSet<&str> = release
        .spans
        .iter()
        .filter_map(|s| s.attribute("operation.origin"))
        .collect();
    assert_eq!(origins, HashSet::from(["build", "migrate"]));
    assert!(all
        .iter()
        .any(|t| t.spans.iter().any(|s| s.name == "operation build")));
}

#[allow(dead_code)]
#[path = "../examples/cli_root_span.rs"]
mod cli_root_span;

fn read_file(path: &std::path::Path) -> Vec<traceq::exporter::SpanRecord> {
    let file = std::fs::File::open(path).unwrap();
    let read = traceq::exporter::read_otlp_json_lines(std::io::BufReader::new(file)).unwrap();
    assert!(read.errors.is_empty());
    read.spans
}

#[test]
fn cli_root_span_should_name_the_root_after_the_command_and_flush_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cli.jsonl");
    let path = file.to_str().unwrap();
    cli_root_span::run(["inventory", "--traces-file", path, "sync", "--items", "4"]).unwrap();
    let all = traces(read_file(&file));
    assert_eq!(all.len(), 1, "one run, one trace");
    let roots: Vec<_> = all[0].roots().collect();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].name, "sync");
    assert_eq!(roots[0].attribute("cli.args.items"), Some("4"));
    let items = all[0]
        .spans
        .iter()
        .filter(|s| s.name == "item sync")
        .count();
    assert_eq!(items, 4, "every item's span was flushed before exit");

    // An error still flushes, and marks the root.
    let failed = dir.path().join("failed.jsonl");
    let path = failed.to_str().unwrap();
    let result = cli_root_span::run([
        "inventory",
        "--traces-file",
        path,
        "sync",
        "--fail-item",
        "1",
    ]);
    assert!(result.is_err(), "an item failed, so the command fails");
    let all = traces(read_file(&failed));
    assert_eq!(all.len(), 1);
    let root = all[0].roots().next().unwrap();
    assert_eq!(root.name, "sync");
    assert_eq!(root.error.as_deref(), Some("1 item(s) failed to sync"));

    // No exporter configured: nothing written, the command still works.
    cli_root_span::run(["inventory", "status"]).unwrap();
    // A bad command line is refused before any span exists.
    assert!(cli_root_span::run(["inventory", "--traces-file", path, "nope"]).is_err());
}

#[allow(dead_code)]
#[path = "../examples/http_propagation.rs"]
mod http_propagation;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_propagation_should_continue_the_callers_trace_across_both_services() {
    let report = tokio::time::timeout(std::time::Duration::from_secs(30), http_propagation::run())
        .await
        .expect("bounded in time")
        .unwrap();
    let records = records_from_sdk(report.spans);
    let all = traces(records);
    for (client, order) in [
        (report.w3c_client_trace, "1001"),
        (report.b3_client_trace, "1002"),
    ] {
        let id = format!("{client:032x}");
        let trace = all
            .iter()
            .find(|t| t.trace_id == id)
            .expect("the client's trace");
        let names: HashSet<&str> = trace.spans.iter().map(|s| s.name.as_str()).collect();
        for name in [
            "POST /orders",
            "item orders",
            "process orders",
            &format!("POST /payments/{order}"),
        ] {
            assert!(names.contains(name), "{name} missing from {names:?}");
        }
        assert_eq!(trace.roots().count(), 1, "one tree under the client span");
    }
    // W3C baggage from the first client reached the engine's spans.
    let item = all
        .iter()
        .flat_map(|t| &t.spans)
        .find(|s| s.name == "item orders" && s.attribute("traceq.item.key") == Some("1001"))
        .unwrap();
    assert_eq!(item.attribute("tenant"), Some("acme"));
}
