//! Load runs against in-test OTLP/gRPC and OTLP/HTTP servers on loopback.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatusCode;
use parking_lot::Mutex;
use prost::Message as _;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;

use super::*;

/// Bound on every run in these tests.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// An OTLP receiver that refuses its first `refuse` requests, may require a header, and
/// remembers every span id it accepted.
#[derive(Debug, Default)]
struct Collector {
    refuse: AtomicU64,
    required_authorization: Option<String>,
    requests: AtomicU64,
    span_ids: Mutex<Vec<Vec<u8>>>,
    error_spans: AtomicU64,
}

/// Why the collector refused a request.
enum Refusal {
    Unavailable,
    Unauthenticated,
}

impl Collector {
    fn refusing_first(refuse: u64) -> Arc<Self> {
        Arc::new(Self {
            refuse: AtomicU64::new(refuse),
            ..Self::default()
        })
    }

    fn accept(
        &self,
        request: &ExportTraceServiceRequest,
        authorization: Option<&str>,
    ) -> Result<(), Refusal> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(want) = &self.required_authorization {
            if authorization != Some(want.as_str()) {
                return Err(Refusal::Unauthenticated);
            }
        }
        let refuse = self
            .refuse
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if refuse.is_ok() {
            return Err(Refusal::Unavailable);
        }
        let mut ids = self.span_ids.lock();
        for span in request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            ids.push(span.span_id.clone());
            if span.status.as_ref().map(|s| s.code) == Some(SpanStatusCode::Error as i32) {
                self.error_spans.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// (spans received, distinct span ids received)
    fn spans(&self) -> (usize, usize) {
        let ids = self.span_ids.lock();
        (ids.len(), ids.iter().collect::<HashSet<_>>().len())
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match self.accept(request.get_ref(), authorization) {
            Ok(()) => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
            Err(Refusal::Unavailable) => Err(tonic::Status::unavailable("busy, try again")),
            Err(Refusal::Unauthenticated) => Err(tonic::Status::unauthenticated("no token")),
        }
    }
}

async fn grpc_server(collector: Arc<Collector>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service =
        TraceServiceServer::from_arc(collector).accept_compressed(CompressionEncoding::Gzip);
    let server = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);
    addr
}

async fn http_export(
    State(collector): State<Arc<Collector>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        let mut plain = Vec::new();
        let read =
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain);
        if read.is_err() {
            return (StatusCode::BAD_REQUEST, "bad gzip").into_response();
        }
        Bytes::from(plain)
    } else {
        body
    };
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, "not an ExportTraceServiceRequest").into_response();
    };
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    match collector.accept(&request, authorization) {
        Ok(()) => ExportTraceServiceResponse::default()
            .encode_to_vec()
            .into_response(),
        Err(Refusal::Unavailable) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            "busy",
        )
            .into_response(),
        Err(Refusal::Unauthenticated) => (StatusCode::UNAUTHORIZED, "no token").into_response(),
    }
}

async fn http_server(collector: Arc<Collector>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(http_export))
        .with_state(collector);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn bounded_run(config: &LoadgenConfig) -> LoadReport {
    tokio::time::timeout(RUN_LIMIT, run(config))
        .await
        .expect("the run should end within its bound")
        .expect("the run should start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_run_should_deliver_every_span_once_and_retry_an_unavailable_refusal() {
    let collector = Collector::refusing_first(1);
    let addr = grpc_server(Arc::clone(&collector)).await;
    let config = LoadgenConfig::default()
        .with_endpoint(addr.to_string())
        .with_traces(300)
        .with_error_ratio(0.1)
        .with_workers(3)
        .with_seed(1)
        .with_retry_initial(Duration::from_millis(10));
    let report = bounded_run(&config).await;

    assert_eq!(report.first_error, None);
    assert_eq!((report.traces_sent, report.spans_sent), (300, 3000));
    assert_eq!(report.error_traces_sent, 30);
    // 51 + 51 + ... + 45: six requests, one of them sent twice.
    assert_eq!((report.requests_ok, report.requests_failed), (6, 0));
    assert_eq!(report.requests_retried, 1);
    assert_eq!(collector.requests.load(Ordering::Relaxed), 7);
    assert_eq!(collector.spans(), (3000, 3000), "every span once");
    assert_eq!(collector.error_spans.load(Ordering::Relaxed), 30);
    assert!(report.bytes_sent > 3000 * 250, "{}", report.bytes_sent);
    assert!(report.spans_per_second > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_run_should_send_headers_and_gzip() {
    let collector = Arc::new(Collector {
        required_authorization: Some("Bearer s3cret".into()),
        ..Collector::default()
    });
    let addr = grpc_server(Arc::clone(&collector)).await;
    let config = LoadgenConfig::default()
        .with_endpoint(format!("http://{addr}"))
        .with_traces(60)
        .with_gzip(true)
        .with_header("authorization", "Bearer s3cret");
    let report = bounded_run(&config).await;
    assert_eq!(report.first_error, None);
    assert_eq!(report.spans_sent, 600);
    assert_eq!(collector.spans().1, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_that_is_not_retryable_should_fail_the_request_with_its_message() {
    let collector = Arc::new(Collector {
        required_authorization: Some("Bearer s3cret".into()),
        ..Collector::default()
    });
    let addr = grpc_server(Arc::clone(&collector)).await;
    let config = LoadgenConfig::default()
        .with_endpoint(addr.to_string())
        .with_traces(102);
    let report = bounded_run(&config).await;
    assert_eq!((report.requests_ok, report.requests_failed), (0, 2));
    assert_eq!((report.requests_retried, report.spans_sent), (0, 0));
    assert_eq!(report.spans_failed, 1020);
    let error = report.first_error.unwrap();
    assert!(
        error.contains("Unauthenticated") && error.contains("no token"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_run_should_wait_for_retry_after_and_deliver_every_span_once() {
    let collector = Collector::refusing_first(1);
    let addr = http_server(Arc::clone(&collector)).await;
    let config = LoadgenConfig::default()
        .with_protocol(Protocol::Http)
        .with_endpoint(format!("http://{addr}"))
        .with_traces(200)
        .with_workers(2)
        .with_gzip(true);
    let report = bounded_run(&config).await;

    assert_eq!(report.first_error, None);
    assert_eq!((report.traces_sent, report.spans_sent), (200, 2000));
    assert_eq!(report.error_traces_sent, 2);
    assert_eq!((report.requests_retried, report.requests_failed), (1, 0));
    assert_eq!(collector.spans(), (2000, 2000), "every span once");
    assert!(
        report.elapsed >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured: {:?}",
        report.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_should_fail_each_request_after_its_retries() {
    // A port that was just free: connections are refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for protocol in [Protocol::Grpc, Protocol::Http] {
        let config = LoadgenConfig::default()
            .with_protocol(protocol)
            .with_endpoint(format!("http://{addr}"))
            .with_traces(20)
            .with_batch_spans(100)
            .with_max_retries(2)
            .with_retry_initial(Duration::from_millis(5));
        let report = bounded_run(&config).await;
        assert_eq!(
            (report.requests_ok, report.requests_failed),
            (0, 2),
            "{protocol:?}"
        );
        assert_eq!(report.requests_retried, 4, "{protocol:?}");
        let error = report.first_error.unwrap();
        assert!(error.ends_with("(after 2 retries)"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_run_should_keep_to_its_rate_and_duration() {
    let collector = Collector::refusing_first(0);
    let addr = grpc_server(Arc::clone(&collector)).await;
    let config = LoadgenConfig::default()
        .with_endpoint(addr.to_string())
        .with_rate(2000.0)
        .with_duration(Duration::from_millis(1000));
    let report = bounded_run(&config).await;
    // Slots every 100 ms from 0 to 900 ms, 200 spans each: 2000 spans, fewer if the machine is
    // too busy to keep up, never more.
    assert!((1000..=2000).contains(&report.spans_sent), "{report:?}");
    assert!(report.elapsed >= Duration::from_millis(900), "{report:?}");
    assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
}

#[test]
fn public_types_and_the_run_future_should_be_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<LoadgenConfig>();
    send_sync::<LoadgenError>();
    send_sync::<LoadReport>();
    send_sync::<TraceGenerator>();
    send_sync::<GeneratedRequest>();
    send_sync::<TraceSender>();
    send_sync::<SendOutcome>();
    send_sync::<SendError>();
    let config = LoadgenConfig::default();
    send(&run(&config));
}
