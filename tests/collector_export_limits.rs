//! The export side's bounds against real downstreams on loopback: batches cut under a gRPC
//! message limit, requests refused as too large or malformed split rather than dropped, and
//! the file exporter reopened on SIGHUP for log rotation (the real binary).

// The harness's items are `pub` for every test file that includes it; in one test crate they
// are unreachable from outside, which is fine.
#[allow(unreachable_pub)]
#[path = "common/process.rs"]
mod process;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use tokio::net::TcpListener;
use traceq::collector::{Collector, CollectorConfig};

/// A span of about 512 encoded bytes: trace `trace`, span id `id`, named `name`.
fn span(trace: u32, id: u64, name: &str) -> Span {
    let mut trace_id = vec![0x5a; 16];
    trace_id[12..].copy_from_slice(&trace.to_be_bytes());
    Span {
        trace_id,
        span_id: id.to_be_bytes().to_vec(),
        name: name.into(),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_001_000_000,
        attributes: vec![KeyValue {
            key: "payload".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("p".repeat(460))),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A request of the spans with ids `ids`, all root spans of their own trace; the spans whose
/// id is in `marked` are named `poison`.
fn request(ids: std::ops::Range<u64>, marked: &HashSet<u64>) -> ExportTraceServiceRequest {
    let spans = ids
        .map(|id| {
            let name = if marked.contains(&id) { "poison" } else { "op" };
            span(id as u32, id + 1, name)
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("limits".into())),
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

/// Sends `total` spans (ids `0..total`) to `addr` in requests of `per_request`.
async fn send(addr: SocketAddr, total: u64, per_request: u64, marked: &HashSet<u64>) {
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut start = 0;
    while start < total {
        let end = (start + per_request).min(total);
        client
            .export(request(start..end, marked))
            .await
            .expect("the upstream collector accepts");
        start = end;
    }
}

async fn start(yaml: &str) -> Collector {
    Collector::start(&CollectorConfig::from_yaml(yaml).unwrap())
        .await
        .unwrap()
}

/// An upstream collector passing every span (sampling off) to `down` over OTLP/gRPC; a
/// batch waits `batch_timeout` at most (30 s: only its span and byte bounds, and shutdown,
/// cut it).
fn upstream_yaml(down: SocketAddr, compression: &str, batch_timeout: &str) -> String {
    format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
         processors: {{batch: {{timeout: {batch_timeout}}}}}\n\
         exporters: {{otlp: {{endpoint: '{down}', compression: {compression}, timeout: 5s, retry_on_failure: {{initial_interval: 20ms, max_interval: 100ms, max_elapsed_time: 20s}}}}}}\n\
         service: {{sampling: false, shutdown_timeout: 30s, telemetry: {{metrics: {{address: none}}}}}}\n"
    )
}

/// Waits until the exporters resolved `total` spans (sent or dropped), then returns the
/// collector's `/metrics` text.
async fn settled_metrics(collector: &Collector, total: u64) -> String {
    let start = Instant::now();
    loop {
        let s = collector.status();
        if s.spans_exported + s.spans_export_dropped >= total {
            return collector.metrics_text();
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "timed out: {s:?}\n{}",
            collector.metrics_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn the_test_spans_should_be_about_512_bytes() {
    let len = span(1, 1, "op").encoded_len();
    assert!((512..=560).contains(&len), "{len}");
    // so that 8,192 of them are more than one 4 MiB request
    assert!(8192 * len > 4 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_with_the_grpc_default_limit_should_get_8192_spans_of_512_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("down.jsonl");
    // The downstream: traceq's own receiver with its default 4 MiB message limit.
    let down = start(&format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
         exporters: {{file: {{path: '{}'}}}}\n\
         service: {{sampling: false, telemetry: {{metrics: {{address: none}}}}}}\n",
        file.display()
    ))
    .await;
    let up = start(&upstream_yaml(down.grpc_addr().unwrap(), "gzip", "30s")).await;
    // 8,192 spans of ~512 bytes: one batch of send_batch_size would be over 4 MiB.
    send(up.grpc_addr().unwrap(), 8192, 1024, &HashSet::new()).await;
    let sent = up.shutdown().await;
    let received = down.metrics_text();
    let status = down.shutdown().await;
    assert_eq!(sent.spans_exported, 8192);
    assert_eq!(sent.spans_export_dropped, 0);
    assert_eq!(status.spans_received, 8192);
    assert_eq!(status.requests_rejected, 0, "no request over the limit");
    let requests = process::metric(&received, "traceq_receiver_requests_accepted_total");
    assert!(requests >= 2.0, "cut by bytes into {requests} requests");
    let kept = std::fs::read_to_string(&file).unwrap();
    let spans: usize = kept
        .lines()
        .map(|l| {
            let r: ExportTraceServiceRequest = serde_json::from_str(l).unwrap();
            r.resource_spans[0].scope_spans[0].spans.len()
        })
        .sum();
    assert_eq!(spans, 8192);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_cut_by_bytes_should_need_no_split_and_no_retry() {
    let (addr, down) = serve(Rule::TooLargeOver(4 << 20)).await;
    let up = start(&upstream_yaml(addr, "none", "30s")).await;
    send(up.grpc_addr().unwrap(), 8192, 1024, &HashSet::new()).await;
    let sent = up.shutdown().await;
    assert_eq!(sent.spans_exported, 8192);
    assert_eq!(sent.spans_export_dropped, 0);
    let sizes = down.sizes();
    assert_eq!(
        sizes,
        down.accepted_sizes(),
        "nothing refused, so nothing split"
    );
    assert!(sizes.len() >= 2, "{sizes:?}");
    assert!(sizes.iter().all(|&s| s <= 4 << 20), "{sizes:?}");
    // Cut close to the limit, not at an arbitrary fraction of it.
    assert!(
        sizes.iter().max().unwrap() * 10 > (4 << 20) * 9,
        "{sizes:?}"
    );
    assert_eq!(down.ids().len(), 8192);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_refusing_large_requests_should_get_every_span_after_splits() {
    let limit = 300_000;
    let (addr, down) = serve(Rule::TooLargeOver(limit)).await;
    let up = start(&upstream_yaml(addr, "none", "100ms")).await;
    send(up.grpc_addr().unwrap(), 4000, 1000, &HashSet::new()).await;
    let metrics = settled_metrics(&up, 4000).await;
    let sent = up.shutdown().await;
    assert_eq!(sent.spans_exported, 4000);
    assert_eq!(sent.spans_export_dropped, 0);
    let ids = down.ids();
    assert_eq!(ids.len(), 4000, "every span once");
    assert_eq!(down.accepted_spans(), 4000, "no duplicates");
    assert!(down.accepted_sizes().iter().all(|&s| s <= limit));
    // 1000-span requests (~520 kB) are refused, and must be halved at least twice.
    assert!(process::metric(&metrics, "traceq_exporter_requests_split_total") >= 4.0);
    assert_eq!(
        process::metric(&metrics, "traceq_exporter_rejected_spans_total"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_rejecting_marked_spans_should_lose_only_them_and_count_them() {
    let (addr, down) = serve(Rule::MalformedIfPoisoned).await;
    let up = start(&upstream_yaml(addr, "none", "100ms")).await;
    let marked: HashSet<u64> = [3, 500, 501, 1234, 1999].into_iter().collect();
    send(up.grpc_addr().unwrap(), 2000, 500, &marked).await;
    let metrics = settled_metrics(&up, 2000).await;
    let sent = up.shutdown().await;
    let expected: HashSet<u64> = (0..2000)
        .filter(|i| !marked.contains(i))
        .map(|i| i + 1)
        .collect();
    assert_eq!(down.ids(), expected, "every unmarked span, no marked one");
    assert_eq!(down.accepted_spans(), 1995, "no duplicates");
    assert_eq!(sent.spans_exported, 1995);
    assert_eq!(sent.spans_export_dropped, 5);
    assert_eq!(
        process::metric(&metrics, "traceq_exporter_rejected_spans_total"),
        5.0
    );
    assert_eq!(
        process::metric(&metrics, "otelcol_exporter_send_failed_spans"),
        5.0
    );
    // Isolating 5 spans of 2000 takes a few dozen requests, not one per span.
    let requests = down.sizes().len();
    assert!(requests < 200, "{requests} requests");
}

#[test]
fn sighup_should_reopen_the_file_so_new_lines_go_to_a_new_file_at_the_old_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kept.jsonl");
    let rotated = dir.path().join("kept.jsonl.1");
    let yaml = format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
         processors: {{batch: {{timeout: 10ms}}}}\n\
         exporters: {{file: {{path: '{}', fsync_interval: 100ms}}}}\n\
         service: {{sampling: false, telemetry: {{metrics: {{address: none}}}}}}\n",
        path.display()
    );
    let collector = process::CollectorProcess::start(dir.path(), &yaml, &[]);
    let grpc = collector.grpc.unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lines_in = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}:\n{}",
                collector.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    runtime.block_on(send(grpc, 3, 3, &HashSet::new()));
    wait("the first line", &|| lines_in(&path) == 1);
    std::fs::rename(&path, &rotated).unwrap();
    collector.signal("HUP");
    wait("the reopen", &|| {
        collector.stderr().contains("reopened 1 file")
    });
    assert!(path.exists(), "a new file at the old path");
    runtime.block_on(async {
        let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        client
            .export(request(100..102, &HashSet::new()))
            .await
            .unwrap();
    });
    wait("the second line", &|| lines_in(&path) == 1);
    let exit = collector.stop(Duration::from_secs(20));
    assert!(exit.status.success(), "{}", exit.stderr);
    assert_eq!(lines_in(&rotated), 1, "the rotated file keeps what it had");
    let new = std::fs::read_to_string(&path).unwrap();
    let old = std::fs::read_to_string(&rotated).unwrap();
    let request: ExportTraceServiceRequest = serde_json::from_str(new.trim()).unwrap();
    let spans = &request.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), 2, "{new}");
    let old_request: ExportTraceServiceRequest = serde_json::from_str(old.trim()).unwrap();
    assert_eq!(old_request.resource_spans[0].scope_spans[0].spans.len(), 3);
}

/// What the test downstream refuses.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// `RESOURCE_EXHAUSTED` for requests over this many encoded bytes.
    TooLargeOver(usize),
    /// `INVALID_ARGUMENT` for requests holding a span named `poison`.
    MalformedIfPoisoned,
}

/// An OTLP/gRPC downstream that refuses by its rule and keeps what it accepts.
struct Downstream {
    rule: Rule,
    /// Encoded size of every request received, accepted or not.
    sizes: parking_lot::Mutex<Vec<usize>>,
    /// Encoded size and span ids of every accepted request.
    accepted: parking_lot::Mutex<Vec<(usize, Vec<u64>)>>,
}

impl Downstream {
    fn sizes(&self) -> Vec<usize> {
        self.sizes.lock().clone()
    }
    fn accepted_sizes(&self) -> Vec<usize> {
        self.accepted.lock().iter().map(|(s, _)| *s).collect()
    }
    fn accepted_spans(&self) -> usize {
        self.accepted.lock().iter().map(|(_, ids)| ids.len()).sum()
    }
    fn ids(&self) -> HashSet<u64> {
        self.accepted
            .lock()
            .iter()
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect()
    }
}

struct Service(Arc<Downstream>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let size = request.encoded_len();
        self.0.sizes.lock().push(size);
        let spans: Vec<&Span> = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        match self.0.rule {
            Rule::TooLargeOver(limit) if size > limit => {
                return Err(tonic::Status::resource_exhausted(format!(
                    "request of {size} bytes is over {limit}"
                )))
            }
            Rule::MalformedIfPoisoned if spans.iter().any(|s| s.name == "poison") => {
                return Err(tonic::Status::invalid_argument("poisoned span"))
            }
            _ => {}
        }
        let ids = spans
            .iter()
            .map(|s| u64::from_be_bytes(s.span_id[..].try_into().unwrap()))
            .collect();
        self.0.accepted.lock().push((size, ids));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn serve(rule: Rule) -> (SocketAddr, Arc<Downstream>) {
    let downstream = Arc::new(Downstream {
        rule,
        sizes: parking_lot::Mutex::default(),
        accepted: parking_lot::Mutex::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(Service(Arc::clone(&downstream)))
        .max_decoding_message_size(64 << 20);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, downstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_files_should_count_the_file_exporters_and_name_one_that_fails() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let collector = start(&format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
         exporters: {{file/a: {{path: '{}'}}, file/b: {{path: '{}'}}, debug: {{}}}}\n\
         service: {{telemetry: {{metrics: {{address: none}}}}}}\n",
        sub.join("a.jsonl").display(),
        dir.path().join("b.jsonl").display()
    ))
    .await;
    assert_eq!(collector.reopen_files().await.unwrap(), 2);
    std::fs::rename(&sub, dir.path().join("gone")).unwrap();
    let err = collector.reopen_files().await.unwrap_err().to_string();
    assert!(err.contains("file/a"), "{err}");
    collector.shutdown().await;
}

/// The real binaries, two tiers: a pass-through upstream sends 8,192 spans of ~512 bytes
/// (4.3 MB, over the downstream's 4 MiB gRPC default in one batch) to a downstream; the
/// downstream takes every request (none refused as too large) and gets every span, and the
/// upstream's peak resident memory stays within a bound stated here.
#[test]
fn two_real_collectors_should_pass_full_batches_under_the_grpc_limit_within_a_memory_bound() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (down_dir, up_dir) = (dir.path().join("down"), dir.path().join("up"));
    std::fs::create_dir_all(&down_dir).unwrap();
    std::fs::create_dir_all(&up_dir).unwrap();
    let out = dir.path().join("down.jsonl");
    let down = process::CollectorProcess::start(
        &down_dir,
        &format!(
            "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
             exporters: {{file: {{path: '{}'}}}}\n\
             service: {{sampling: false, telemetry: {{metrics: {{address: none}}}}}}\n",
            out.display()
        ),
        &[],
    );
    let down_addr = down.grpc.unwrap();
    let up =
        process::CollectorProcess::start(&up_dir, &upstream_yaml(down_addr, "none", "30s"), &[]);
    let up_addr = up.grpc.unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(send(up_addr, 8192, 512, &HashSet::new()));
    let peak = up.peak_rss();
    // Shutdown sends the partial batch too; the upstream waits for the downstream.
    let up_exit = up.stop(Duration::from_secs(40));
    assert!(up_exit.status.success(), "{}", up_exit.stderr);
    let down_exit = down.stop(Duration::from_secs(20));
    assert!(down_exit.status.success(), "{}", down_exit.stderr);
    assert!(
        down_exit.stderr.contains("rejected 0 requests"),
        "{}",
        down_exit.stderr
    );
    assert!(
        up_exit.stderr.contains("export drops 0"),
        "{}",
        up_exit.stderr
    );
    let spans: usize = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| {
            let req: ExportTraceServiceRequest = serde_json::from_str(line).unwrap();
            req.resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum::<usize>()
        })
        .sum();
    assert_eq!(spans, 8192);
    let bound = 100 * MIB;
    eprintln!(
        "upstream peak resident {} MiB (bound {} MiB)",
        peak / MIB,
        bound / MIB
    );
    assert!(peak < bound, "upstream peak resident {} MiB", peak / MIB);
}

/// The real binary encoding one batch of 50,000 spans, each under its own scope: scope grouping
/// is linear (it was quadratic: about 4 s of CPU for this batch), asserted on the collector's CPU
/// time.
#[test]
fn a_batch_of_many_distinct_scopes_should_encode_in_linear_time() {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let c = process::CollectorProcess::start(
        dir.path(),
        &format!(
            "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
             processors: {{batch: {{send_batch_size: 100000, timeout: 200ms}}}}\n\
             exporters: {{file: {{path: '{}', max_export_bytes: 67108864}}}}\n\
             service: {{sampling: false, telemetry: {{metrics: {{address: none}}}}}}\n",
            out.display()
        ),
        &[],
    );
    let scopes = (0..50_000u32)
        .map(|i| {
            let mut trace_id = vec![0x11; 16];
            trace_id[12..].copy_from_slice(&i.to_be_bytes());
            ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: format!("lib{i}"),
                    ..Default::default()
                }),
                spans: vec![Span {
                    trace_id,
                    span_id: vec![1; 8],
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: scopes,
            ..Default::default()
        }],
    };
    let addr = c.grpc.unwrap();
    let before = c.cpu_time();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut client = TraceServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        client.export(req).await.unwrap();
    });
    // The batch goes out after its 200 ms timeout: wait for its line.
    let started = Instant::now();
    let line = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(line) = text.lines().next().filter(|_| text.ends_with('\n')) {
            break line.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no batch written"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let used = c.cpu_time() - before;
    let req: ExportTraceServiceRequest = serde_json::from_str(&line).unwrap();
    assert_eq!(req.resource_spans[0].scope_spans.len(), 50_000);
    let exit = c.stop(Duration::from_secs(30));
    assert!(exit.status.success(), "{}", exit.stderr);
    eprintln!("decode, batch and encode of 50,000 distinct scopes: CPU {used:?}");
    assert!(used < Duration::from_secs(2), "CPU {used:?}");
}
