//! Live reload against the real `traceq collector`: SIGHUP re-reads the configuration file;
//! policies and exporters change for traces decided after it, a trace buffered across the
//! reload is kept by the new policies and delivered by the new exporter, and an invalid file
//! is refused with its error while the running configuration goes on.

#[path = "common/process.rs"]
mod process;

use std::collections::HashSet;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use process::{scrape, CollectorProcess};
use prost::Message as _;

const LIMIT: Duration = Duration::from_secs(60);

/// A collector keeping the traces whose `team` is `team`, exported to a file `file_name`
/// in `dir` by the exporter `exporter`; decisions 1.5 s after a trace's last span.
fn yaml(dir: &Path, team: &str, exporter: &str, file_name: &str) -> String {
    format!(
        "receivers: {{otlp: {{protocols: {{http: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
         processors:\n  batch: {{timeout: 20ms}}\n  tail_sampling:\n    decision_wait: 1500ms\n    \
         policies:\n      - {{name: team-{team}, type: string_attribute, string_attribute: \
         {{key: team, values: [{team}]}}}}\n\
         exporters: {{'{exporter}': {{path: '{}', fsync_interval: 10ms}}}}\n\
         service: {{shutdown_timeout: 10s, telemetry: {{metrics: {{address: '127.0.0.1:0'}}}}}}\n",
        dir.join(file_name).display()
    )
}

/// One span (not a root: decided on `decision_wait`) of trace `trace` with `team` set.
async fn send(http: SocketAddr, trace: u8, team: &str) {
    let span = Span {
        trace_id: vec![trace; 16],
        span_id: vec![trace, 1, 1, 1, 1, 1, 1, 1],
        parent_span_id: vec![9; 8],
        name: format!("work-{trace}"),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        attributes: vec![KeyValue {
            key: "team".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(team.into())),
            }),
            ..KeyValue::default()
        }],
        ..Span::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    let response = reqwest::Client::new()
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// The first byte of each trace id in an OTLP-JSON lines file.
fn traces_in(file: &Path) -> HashSet<u8> {
    let Ok(f) = std::fs::File::open(file) else {
        return HashSet::new();
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .flat_map(|line| {
            let req: ExportTraceServiceRequest = serde_json::from_str(&line).unwrap();
            req.resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans)
                .map(|s| s.trace_id[0])
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn until(what: &str, collector: &CollectorProcess, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < LIMIT, "{what}: {}", collector.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_should_swap_policies_and_exporters_for_traces_decided_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one.jsonl"), dir.path().join("two.jsonl"));
    let collector = CollectorProcess::start(
        dir.path(),
        &yaml(dir.path(), "a", "file/one", "one.jsonl"),
        &[],
    );
    let (http, admin) = (collector.http.unwrap(), collector.admin.unwrap());

    // Before the reload: team a kept, to file one; team b dropped.
    send(http, 1, "a").await;
    send(http, 2, "b").await;
    until("trace 1 in file one", &collector, || {
        traces_in(&one).contains(&1)
    })
    .await;
    // Buffered across the reload: decided by the new policies, delivered by the new exporter.
    send(http, 3, "b").await;
    std::fs::write(
        dir.path().join("collector.yaml"),
        yaml(dir.path(), "b", "file/two", "two.jsonl"),
    )
    .unwrap();
    collector.signal("HUP");
    until("the reload line", &collector, || {
        collector.stderr().contains("configuration reloaded")
    })
    .await;
    let stderr = collector.stderr();
    assert!(stderr.contains("1 policies"), "{stderr}");
    assert!(stderr.contains("exporters started: file/two"), "{stderr}");
    assert!(stderr.contains("stopped: file/one"), "{stderr}");
    send(http, 4, "a").await;
    send(http, 5, "b").await;
    until("traces 3 and 5 in file two", &collector, || {
        let two = traces_in(&two);
        two.contains(&3) && two.contains(&5)
    })
    .await;
    let metrics = scrape(admin).await;
    assert!(metrics.contains("policy=\"team-b\""), "{metrics}");
    assert!(!metrics.contains("policy=\"team-a\""), "{metrics}");
    assert!(metrics.contains("exporter=\"file/two\""), "{metrics}");

    // An invalid file is refused with its error; the running configuration stays.
    std::fs::write(
        dir.path().join("collector.yaml"),
        "processors: {tail_sampling: {policies: [{name: x, type: no_such_policy}]}}\n",
    )
    .unwrap();
    collector.signal("HUP");
    until("the refusal", &collector, || {
        collector
            .stderr()
            .contains("keeping the running configuration")
    })
    .await;
    assert!(
        collector.stderr().contains("no_such_policy"),
        "{}",
        collector.stderr()
    );
    send(http, 6, "b").await;
    send(http, 7, "a").await;
    until("trace 6 in file two", &collector, || {
        traces_in(&two).contains(&6)
    })
    .await;

    let exit = collector.stop(LIMIT);
    assert!(exit.status.success(), "{}", exit.stderr);
    // Each trace went where the configuration of its decision sent it, and nowhere else.
    assert_eq!(traces_in(&one), HashSet::from([1]));
    assert_eq!(traces_in(&two), HashSet::from([3, 5, 6]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_should_name_settings_that_need_a_restart_and_keep_unchanged_exporters() {
    let dir = tempfile::tempdir().unwrap();
    let config = yaml(dir.path(), "a", "file/one", "one.jsonl");
    let collector = CollectorProcess::start(dir.path(), &config, &[]);
    // Same exporter, other policy, another batch timeout.
    let changed = yaml(dir.path(), "b", "file/one", "one.jsonl").replace("20ms", "30ms");
    std::fs::write(dir.path().join("collector.yaml"), changed).unwrap();
    collector.signal("HUP");
    until("the restart note", &collector, || {
        collector.stderr().contains("processors.batch changed")
    })
    .await;
    let stderr = collector.stderr();
    assert!(stderr.contains("exporters started: none"), "{stderr}");
    assert!(stderr.contains("unchanged: file/one"), "{stderr}");
    let exit = collector.stop(LIMIT);
    assert!(exit.status.success(), "{}", exit.stderr);
}
