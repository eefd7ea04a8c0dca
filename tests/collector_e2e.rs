//! End to end on loopback: the OpenTelemetry SDK's own OTLP exporters (gRPC and HTTP) send
//! traces to a sampling collector, whose OTLP/gRPC exporter points at a second collector that
//! writes what it receives to a file. Checked: every error trace arrives whole with its resource
//! and scope intact, traces without errors arrive at the configured rate (within statistical
//! bounds), and nothing arrives twice.

use std::collections::{HashMap, HashSet};
use std::io::BufRead as _;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use traceq::collector::{Collector, CollectorConfig};

const SPANS_PER_TRACE: usize = 5;
/// One trace in this many has an error span.
const ERROR_EVERY: usize = 10;
const SAMPLE_PERCENT: f64 = 25.0;

fn resource(sender: &str) -> Resource {
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "e2e-checkout"),
            KeyValue::new("deployment.environment", "test"),
            KeyValue::new("e2e.sender", sender.to_owned()),
        ])
        .build()
}

/// `n` finished traces: a root and four children each; every tenth has an error child.
fn make_traces(n: usize) -> Vec<SpanData> {
    let memory = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(memory.clone())
        .build();
    let tracer = provider.tracer("e2e-scope");
    for i in 0..n {
        let root = tracer.start(format!("order {i}"));
        let cx = opentelemetry::Context::current_with_span(root);
        for c in 0..SPANS_PER_TRACE - 1 {
            let mut child = tracer.start_with_context(format!("step {c}"), &cx);
            child.set_attribute(KeyValue::new("step", c as i64));
            if i % ERROR_EVERY == 0 && c == 2 {
                child.set_status(Status::error("payment declined"));
            }
            child.end();
        }
        cx.span().end();
    }
    let spans = memory.get_finished_spans().unwrap();
    provider.shutdown().unwrap();
    assert_eq!(spans.len(), n * SPANS_PER_TRACE);
    spans
}

/// The second collector: OTLP/gRPC in, no sampling, everything to a file.
async fn downstream(file: &std::path::Path) -> Collector {
    let yaml = format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
         exporters: {{file: {{path: '{}'}}}}\n\
         processors: {{batch: {{timeout: 20ms}}}}\n\
         service: {{sampling: false, telemetry: {{metrics: {{address: none}}}}}}\n",
        file.display()
    );
    Collector::start(&CollectorConfig::from_yaml(&yaml).unwrap())
        .await
        .unwrap()
}

/// The sampling collector: both receivers, every error trace plus 25% of the rest, decided
/// 200 ms after a trace's root span ends; exports to `next` over OTLP/gRPC.
async fn sampler(next: std::net::SocketAddr) -> Collector {
    let yaml = format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}, http: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
         processors:\n  batch: {{send_batch_size: 512, timeout: 20ms}}\n  tail_sampling:\n    decision_wait: 10s\n    decision_wait_after_root: 200ms\n    policies:\n      - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}\n      - {{name: some, type: probabilistic, probabilistic: {{sampling_percentage: {SAMPLE_PERCENT}, hash_salt: e2e}}}}\n\
         exporters: {{otlp/next: {{endpoint: '{next}', retry_on_failure: {{initial_interval: 50ms, max_interval: 200ms}}}}}}\n\
         service: {{telemetry: {{metrics: {{address: '127.0.0.1:0'}}}}}}\n"
    );
    Collector::start(&CollectorConfig::from_yaml(&yaml).unwrap())
        .await
        .unwrap()
}

/// One span as the downstream file holds it: span id, resource attributes, scope name, and
/// whether it carries the sampling policy attribute.
type ReceivedSpan = (Vec<u8>, Vec<(String, String)>, String, bool);

/// What the downstream file holds, per trace id.
#[derive(Debug, Default)]
struct Received {
    spans: HashMap<Vec<u8>, Vec<ReceivedSpan>>,
    span_ids: Vec<Vec<u8>>,
}

fn string_of(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn read_downstream(file: &std::path::Path) -> Received {
    let mut out = Received::default();
    let text = std::fs::File::open(file).unwrap();
    for line in std::io::BufReader::new(text).lines() {
        let line = line.unwrap();
        if line.trim().is_empty() {
            continue;
        }
        let req: ExportTraceServiceRequest = serde_json::from_str(&line).unwrap();
        for rs in req.resource_spans {
            let mut resource: Vec<(String, String)> = rs
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default()
                .into_iter()
                .map(|kv| (kv.key.clone(), string_of(&kv.value)))
                .collect();
            resource.sort();
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                for span in ss.spans {
                    let policy = span
                        .attributes
                        .iter()
                        .any(|kv| kv.key == traceq::sampler::POLICY_ATTRIBUTE);
                    out.span_ids.push(span.span_id.clone());
                    out.spans.entry(span.trace_id.clone()).or_default().push((
                        span.span_id,
                        resource.clone(),
                        scope.clone(),
                        policy,
                    ));
                }
            }
        }
    }
    out
}

async fn send_grpc(addr: std::net::SocketAddr, spans: Vec<SpanData>) {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{addr}"))
        .with_compression(opentelemetry_otlp::Compression::Gzip)
        .with_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    exporter.set_resource(&resource("grpc"));
    for chunk in spans.chunks(400) {
        exporter.export(chunk.to_vec()).await.unwrap();
    }
}

/// The SDK's HTTP exporter uses a blocking client: run it on a plain thread.
fn send_http(addr: std::net::SocketAddr, spans: Vec<SpanData>) {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("http://{addr}/v1/traces"))
        .with_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    exporter.set_resource(&resource("http"));
    for chunk in spans.chunks(400) {
        futures::executor::block_on(exporter.export(chunk.to_vec())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_traces_should_arrive_whole_and_the_rest_at_the_sampled_rate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("downstream.jsonl");
    let down = downstream(&file).await;
    let front = sampler(down.grpc_addr().unwrap()).await;

    const TRACES_PER_SENDER: usize = 600;
    let grpc_spans = make_traces(TRACES_PER_SENDER);
    let http_spans = make_traces(TRACES_PER_SENDER);
    let mut sent: HashMap<Vec<u8>, (bool, &'static str)> = HashMap::new();
    for (spans, sender) in [(&grpc_spans, "grpc"), (&http_spans, "http")] {
        for s in spans.iter() {
            let id = s.span_context.trace_id().to_bytes().to_vec();
            let error = matches!(s.status, Status::Error { .. });
            let e = sent.entry(id).or_insert((false, sender));
            e.0 |= error;
        }
    }
    let http_addr = front.http_addr().unwrap();
    let http = std::thread::spawn(move || send_http(http_addr, http_spans));
    send_grpc(front.grpc_addr().unwrap(), grpc_spans).await;
    http.join().unwrap();

    // /metrics answers while running and counts what arrived.
    let admin = front.admin_addr().unwrap();
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("otelcol_receiver_accepted_spans"), "{text}");
    let health = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let front_status = front.shutdown().await;
    assert_eq!(
        front_status.spans_received,
        (2 * TRACES_PER_SENDER * SPANS_PER_TRACE) as u64
    );
    assert_eq!(front_status.spans_export_dropped, 0);
    let down_status = down.shutdown().await;
    assert_eq!(down_status.spans_received, front_status.spans_kept);

    let got = read_downstream(&file);
    let unique: HashSet<_> = got.span_ids.iter().collect();
    assert_eq!(unique.len(), got.span_ids.len(), "a span arrived twice");

    let mut kept_plain = 0usize;
    let mut plain = 0usize;
    for (trace, (error, sender)) in &sent {
        let spans = got.spans.get(trace);
        if *error {
            let spans = spans.unwrap_or_else(|| panic!("error trace {trace:02x?} missing"));
            assert_eq!(spans.len(), SPANS_PER_TRACE, "error trace not whole");
            for (_, resource, scope, policy) in spans {
                let expected = {
                    let mut r: Vec<(String, String)> = resource_attrs(sender);
                    r.sort();
                    r
                };
                // The SDK adds its telemetry.sdk.* attributes; ours must all be there intact.
                for kv in &expected {
                    assert!(resource.contains(kv), "{kv:?} missing from {resource:?}");
                }
                assert_eq!(scope, "e2e-scope");
                assert!(policy, "kept span without its sampling policy attribute");
            }
        } else {
            plain += 1;
            if let Some(spans) = spans {
                assert_eq!(spans.len(), SPANS_PER_TRACE, "kept trace not whole");
                kept_plain += 1;
            }
        }
    }
    // Binomial(plain, 0.25): within 5 standard deviations.
    let p = SAMPLE_PERCENT / 100.0;
    let mean = plain as f64 * p;
    let sd = (plain as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (kept_plain as f64 - mean).abs() <= 5.0 * sd,
        "kept {kept_plain} of {plain} traces without errors; expected about {mean:.0}"
    );
    assert_eq!(
        got.spans.len(),
        kept_plain + sent.values().filter(|(e, _)| *e).count(),
        "a trace that was never sent arrived"
    );
}

fn resource_attrs(sender: &str) -> Vec<(String, String)> {
    vec![
        ("service.name".into(), "e2e-checkout".into()),
        ("deployment.environment".into(), "test".into()),
        ("e2e.sender".into(), sender.into()),
    ]
}
