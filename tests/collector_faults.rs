//! Fault tests on loopback: the downstream goes away and comes back, the exporter queue bound
//! is hit, bad requests arrive on both receivers, and the process gets SIGTERM with traces
//! still pending.

use std::collections::HashSet;
use std::io::{BufRead as _, Read as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message as _;
use traceq::collector::{Collector, CollectorConfig};

/// A request of `traces` traces of 3 spans each, trace ids starting at `first`; all with an
/// error span when `errors`.
fn request(first: u32, traces: u32, errors: bool) -> ExportTraceServiceRequest {
    let mut spans = Vec::new();
    for t in first..first + traces {
        let mut trace_id = vec![0xab; 16];
        trace_id[12..].copy_from_slice(&t.to_be_bytes());
        for s in 0..3u8 {
            spans.push(Span {
                trace_id: trace_id.clone(),
                span_id: vec![s + 1, 0, 0, 0, 0, 0, 0, 1],
                parent_span_id: if s == 0 {
                    vec![]
                } else {
                    vec![1, 0, 0, 0, 0, 0, 0, 1]
                },
                name: format!("op-{s}"),
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_001_000_000,
                status: (errors && s == 2).then(|| Status {
                    code: status::StatusCode::Error as i32,
                    message: "failed".into(),
                }),
                ..Default::default()
            });
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("faults".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn start(yaml: &str) -> Collector {
    Collector::start(&CollectorConfig::from_yaml(yaml).unwrap())
        .await
        .unwrap()
}

fn downstream_yaml(addr: SocketAddr, file: &std::path::Path) -> String {
    format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '{addr}'}}}}}}}}\n\
         exporters: {{file: {{path: '{}'}}}}\n\
         processors: {{batch: {{timeout: 10ms}}}}\n\
         service: {{sampling: false, telemetry: {{metrics: {{address: none}}}}}}\n",
        file.display()
    )
}

fn front_yaml(next: SocketAddr, queue_size: usize) -> String {
    format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}, http: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
         processors:\n  batch: {{send_batch_size: 30, timeout: 10ms}}\n  tail_sampling:\n    decision_wait_after_root: 50ms\n    policies: [{{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}]\n\
         exporters: {{otlp: {{endpoint: '{next}', compression: none, timeout: 1s, sending_queue: {{queue_size: {queue_size}}}, retry_on_failure: {{initial_interval: 20ms, max_interval: 100ms, max_elapsed_time: 0s}}}}}}\n\
         service: {{telemetry: {{metrics: {{address: none}}}}}}\n"
    )
}

fn trace_ids_in(file: &std::path::Path) -> (HashSet<Vec<u8>>, usize) {
    let mut ids = HashSet::new();
    let mut spans = 0;
    let Ok(f) = std::fs::File::open(file) else {
        return (ids, 0);
    };
    for line in std::io::BufReader::new(f).lines() {
        let req: ExportTraceServiceRequest = serde_json::from_str(&line.unwrap()).unwrap();
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    ids.insert(s.trace_id);
                    spans += 1;
                }
            }
        }
    }
    (ids, spans)
}

async fn export(addr: SocketAddr, req: ExportTraceServiceRequest) -> Result<(), tonic::Status> {
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client.export(req).await.map(|_| ())
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_traces_should_be_delivered_once_the_downstream_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("down.jsonl");
    let down_addr = free_port(); // nothing listens here yet
    let front = start(&front_yaml(down_addr, 100_000)).await;
    export(front.grpc_addr().unwrap(), request(0, 40, true))
        .await
        .unwrap();
    export(front.grpc_addr().unwrap(), request(1000, 40, false))
        .await
        .unwrap();
    // Decided and exported, but the downstream is down: failures, retries, nothing dropped.
    wait_for("failed export attempts", Duration::from_secs(10), || {
        front
            .metrics_text()
            .lines()
            .any(|l| l.starts_with("traceq_exporter_send_failures_total") && !l.ends_with(" 0"))
    })
    .await;
    let down = start(&downstream_yaml(down_addr, &file)).await;
    wait_for(
        "delivery after the downstream returned",
        Duration::from_secs(20),
        || front.status().spans_exported == 120,
    )
    .await;
    let status = front.shutdown().await;
    assert_eq!(status.spans_export_dropped, 0);
    assert_eq!(status.traces_kept, 40);
    down.shutdown().await;
    let (ids, spans) = trace_ids_in(&file);
    assert_eq!(
        (ids.len(), spans),
        (40, 120),
        "error traces delivered whole, once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_exporter_queue_should_drop_and_count_the_excess() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("down.jsonl");
    let down_addr = free_port();
    // Room for 60 spans (two batches of 30) while the downstream is down.
    let front = start(&front_yaml(down_addr, 60)).await;
    export(front.grpc_addr().unwrap(), request(0, 100, true))
        .await
        .unwrap();
    wait_for("every trace decided", Duration::from_secs(10), || {
        front.status().traces_kept == 100
    })
    .await;
    wait_for("drops counted", Duration::from_secs(10), || {
        front.status().spans_export_dropped > 0
    })
    .await;
    let metrics = front.metrics_text();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("otelcol_exporter_send_failed_spans{exporter=\"otlp\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    let down = start(&downstream_yaml(down_addr, &file)).await;
    wait_for(
        "the queued batches delivered",
        Duration::from_secs(20),
        || {
            let s = front.status();
            s.spans_exported + s.spans_export_dropped == 300
        },
    )
    .await;
    let status = front.shutdown().await;
    down.shutdown().await;
    // The queue held 60 spans (plus the batches already in flight to the dead downstream);
    // the rest were dropped and counted.
    assert!(status.spans_exported >= 60, "{status:?}");
    assert!(status.spans_export_dropped >= 60, "{status:?}");
    assert_eq!(status.spans_exported + status.spans_export_dropped, 300);
    let (_, spans) = trace_ids_in(&file);
    assert_eq!(spans as u64, status.spans_exported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_should_get_protocol_errors_and_the_collector_should_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0', max_recv_msg_size_mib: 1}}, http: {{endpoint: '127.0.0.1:0', max_request_body_size: 100000}}}}}}}}\n\
         exporters: {{file: {{path: '{}'}}}}\n\
         service: {{telemetry: {{metrics: {{address: none}}}}}}\n",
        dir.path().join("out.jsonl").display()
    );
    let c = start(&yaml).await;
    let grpc = c.grpc_addr().unwrap();
    let http = format!("http://{}/v1/traces", c.http_addr().unwrap());
    let client = reqwest::Client::new();
    let post = |body: Vec<u8>, ct: &'static str| {
        client
            .post(&http)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    // HTTP: garbage protobuf, garbage JSON, oversized, wrong type, then a good one.
    assert_eq!(
        post(b"\x0a\xff\xff garbage".to_vec(), "application/x-protobuf")
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post(b"{\"resourceSpans\": 7".to_vec(), "application/json")
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post(vec![0u8; 200_000], "application/x-protobuf")
            .await
            .unwrap()
            .status(),
        413
    );
    assert_eq!(
        post(b"hello".to_vec(), "text/plain")
            .await
            .unwrap()
            .status(),
        415
    );
    assert_eq!(
        post(
            request(0, 2, true).encode_to_vec(),
            "application/x-protobuf"
        )
        .await
        .unwrap()
        .status(),
        200
    );
    // gRPC: oversized, then a good one.
    let mut big = request(0, 1, false);
    big.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(2 << 20);
    let err = export(grpc, big).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    export(grpc, request(10, 2, true)).await.unwrap();
    let status = c.shutdown().await;
    assert_eq!(status.requests_rejected, 5);
    assert_eq!(status.spans_received, 12);
}

#[test]
fn sigterm_should_decide_pending_traces_and_lose_no_kept_trace() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kept.jsonl");
    let config = dir.path().join("collector.yaml");
    // Decisions far in the future: only the shutdown can decide these traces.
    std::fs::write(
        &config,
        format!(
            "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
             processors: {{tail_sampling: {{decision_wait: 10m, decision_wait_after_root: 10m, policies: [{{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}]}}}}\n\
             exporters: {{file: {{path: '{}'}}}}\n\
             service: {{telemetry: {{metrics: {{address: none}}}}}}\n",
            out.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_traceq"))
        .args(["collector", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let grpc: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        export(grpc, request(0, 50, true)).await.unwrap();
        export(grpc, request(500, 50, false)).await.unwrap();
    });
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "exit {status:?}: {rest}");
    assert!(rest.contains("SIGTERM"), "{rest}");
    let (ids, spans) = trace_ids_in(&out);
    assert_eq!((ids.len(), spans), (50, 150), "{rest}");
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
}

fn small_buffer_yaml(mode: &str, out: &std::path::Path) -> String {
    format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}, http: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
         processors: {{tail_sampling: {{decision_wait: 10m, decision_wait_after_root: 10m, max_buffer_bytes: 100000, policies: [{{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}]}}}}\n\
         exporters: {{file: {{path: '{}'}}}}\n\
         service: {{on_buffer_full: {mode}, retry_after: 3s, telemetry: {{metrics: {{address: none}}}}}}\n",
        out.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_should_refuse_with_retryable_errors_and_stay_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(&small_buffer_yaml("refuse", &dir.path().join("out.jsonl"))).await;
    let grpc = c.grpc_addr().unwrap();
    let mut refused = None;
    for i in 0..200 {
        if let Err(status) = export(grpc, request(i * 10, 10, false)).await {
            refused = Some(status);
            break;
        }
    }
    let status = refused.expect("a 100 kB buffer never filled");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", c.http_addr().unwrap()))
        .header("content-type", "application/x-protobuf")
        .body(request(90_000, 10, false).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "3");
    let text = c.metrics_text();
    assert!(metric(&text, "traceq_bytes_buffered") <= 100_000, "{text}");
    assert!(
        metric(
            &text,
            "otelcol_receiver_refused_spans{receiver=\"otlp\",transport=\"grpc\"}"
        ) > 0
    );
    let s = c.shutdown().await;
    assert!(s.spans_refused >= 60, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_early_mode_should_accept_everything_and_decide_the_oldest_traces_early() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(&small_buffer_yaml(
        "decide_early",
        &dir.path().join("out.jsonl"),
    ))
    .await;
    let grpc = c.grpc_addr().unwrap();
    for i in 0..100 {
        export(grpc, request(i * 10, 10, i % 10 == 0))
            .await
            .unwrap();
    }
    let text = c.metrics_text();
    assert!(metric(&text, "traceq_bytes_buffered") <= 100_000, "{text}");
    assert!(
        metric(
            &text,
            "traceq_traces_decided_total{trigger=\"early_under_pressure\"}"
        ) > 0,
        "{text}"
    );
    let s = c.shutdown().await;
    assert_eq!(s.spans_received, 3000);
    assert_eq!(s.spans_refused, 0);
    // Every error trace was kept, early or at shutdown.
    assert_eq!(s.traces_kept, 100);
}
