//! `traceq loadgen` as a user runs it: bad flags are refused with a clear message and a non-zero
//! status, and a run against an OTLP/gRPC receiver on loopback prints a JSON report that matches
//! what the receiver got.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tonic::transport::server::TcpIncoming;

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_traceq"))
        .arg("loadgen")
        .args(args)
        .output()
        .expect("running traceq loadgen")
}

fn assert_refused(args: &[&str], code: i32, wanted: &[&str]) {
    let out = loadgen(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    for text in wanted {
        assert!(stderr.contains(text), "{args:?}: no `{text}` in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn loadgen_should_refuse_bad_flags_with_a_clear_message() {
    // Flags clap cannot parse: its usage error, status 2.
    assert_refused(
        &["--duration", "10 parsecs"],
        2,
        &["--duration", "is not a duration like `500ms`"],
    );
    assert_refused(&["--traces", "many"], 2, &["--traces", "invalid digit"]);
    assert_refused(&["--traces", "5", "--header", "novalue"], 2, &["KEY=VALUE"]);
    assert_refused(&["--rate", "100"], 2, &["--traces", "--duration"]);
    // Parsed but invalid: our validation, in the flags' words, status 1.
    assert_refused(
        &["--traces", "5", "--error-ratio", "1.5"],
        1,
        &["--error-ratio: must be from 0 to 1, got 1.5"],
    );
    assert_refused(
        &["--traces", "5", "--spans-per-trace", "0"],
        1,
        &["--spans-per-trace: must be from 1"],
    );
    assert_refused(
        &["--traces", "5", "--endpoint", "https://collector:4317"],
        1,
        &["--endpoint", "plain `http://` only"],
    );
}

/// Counts what it receives.
#[derive(Debug, Default)]
struct Receiver {
    requests: AtomicU64,
    spans: AtomicU64,
    error_spans: AtomicU64,
    service_name_ok: AtomicU64,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        for resource_spans in &request.get_ref().resource_spans {
            let named = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .any(|kv| {
                    kv.key == "service.name"
                        && kv.value.as_ref().and_then(|v| v.value.as_ref())
                            == Some(&Value::StringValue("checkout".into()))
                });
            if named {
                self.service_name_ok.fetch_add(1, Ordering::Relaxed);
            }
            for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
                self.spans.fetch_add(1, Ordering::Relaxed);
                if span.status.as_ref().is_some_and(|s| s.code == 2) {
                    self.error_spans.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[test]
fn loadgen_should_send_twenty_traces_and_print_a_json_report() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = Arc::new(Receiver::default());
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::from_arc(Arc::clone(&receiver)))
            .serve_with_incoming(TcpIncoming::from(listener));
        tokio::spawn(server);
        addr
    });

    let endpoint = addr.to_string();
    let out = loadgen(&[
        "--endpoint",
        &endpoint,
        "--traces",
        "20",
        // A bound in case the receiver misbehaves; 20 traces take milliseconds.
        "--duration",
        "20s",
        "--error-ratio",
        "0.25",
        "--service-name",
        "checkout",
        "--seed",
        "3",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{stdout}"));
    let number = |key: &str| {
        report[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no `{key}` in {report}"))
    };
    assert_eq!(number("traces_sent"), 20);
    assert_eq!(number("spans_sent"), 200);
    assert_eq!(number("error_traces_sent"), 5);
    assert_eq!(
        number("requests_ok"),
        1,
        "20 traces fit in one 512-span request"
    );
    assert_eq!(number("requests_failed"), 0);
    assert_eq!(number("requests_retried"), 0);
    assert!(report["first_error"].is_null(), "{report}");
    assert!(report["elapsed_seconds"].as_f64().is_some_and(|s| s > 0.0));
    assert!(report["spans_per_second"].as_f64().is_some_and(|s| s > 0.0));

    assert_eq!(receiver.requests.load(Ordering::Relaxed), 1);
    assert_eq!(receiver.spans.load(Ordering::Relaxed), 200);
    assert_eq!(receiver.error_spans.load(Ordering::Relaxed), 5);
    assert_eq!(receiver.service_name_ok.load(Ordering::Relaxed), 1);
}
