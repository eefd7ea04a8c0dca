use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use super::*;
use crate::client::RetryConfig;
use crate::export::test_support::{
    batch, batch_named, closed_port, eventually, fast_retry, get, grpc_config, span_names,
};
use crate::export::{
    ExportSetupError, ExportTarget, ExporterConfig, ExporterMetrics, ExporterQueue,
};

/// What the test downstream answers, in order; once empty it accepts everything.
enum Reply {
    Fail(Code),
    Reject(i64),
    /// `RESOURCE_EXHAUSTED` with a `RetryInfo` of this delay.
    Throttle(Duration),
}

#[derive(Default)]
struct Downstream {
    script: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<ExportTraceServiceRequest>>,
    authorization: Mutex<Vec<String>>,
    calls: AtomicUsize,
}

struct Service(Arc<Downstream>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        let d = &self.0;
        d.calls.fetch_add(1, Relaxed);
        if let Some(auth) = request.metadata().get("authorization") {
            d.authorization
                .lock()
                .push(auth.to_str().unwrap_or("?").to_owned());
        }
        let reply = d.script.lock().pop_front();
        let rejected = match reply {
            Some(Reply::Fail(code)) => return Err(Status::new(code, "scripted failure")),
            Some(Reply::Throttle(delay)) => {
                return Err(Status::with_details(
                    Code::ResourceExhausted,
                    "scripted throttle",
                    crate::client::retry::retry_info_details(delay).into(),
                ))
            }
            Some(Reply::Reject(n)) => n,
            None => 0,
        };
        d.received.lock().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message: "scripted rejection".into(),
            }),
        }))
    }
}

/// Serves a scripted downstream on `listener` (gzip accepted).
fn serve_on(listener: TcpListener, script: Vec<Reply>) -> Arc<Downstream> {
    let downstream = Arc::new(Downstream::default());
    downstream.script.lock().extend(script);
    let service = TraceServiceServer::new(Service(Arc::clone(&downstream)))
        .accept_compressed(CompressionEncoding::Gzip);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    downstream
}

async fn serve(script: Vec<Reply>) -> (SocketAddr, Arc<Downstream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, serve_on(listener, script))
}

fn start(config: &ExporterConfig) -> (ExporterQueue, Arc<ExporterMetrics>) {
    let metrics = Arc::new(ExporterMetrics::default());
    let queue = ExporterQueue::start(config, Arc::clone(&metrics)).unwrap();
    (queue, metrics)
}

#[tokio::test]
async fn grpc_exporter_should_retry_unavailable_and_deliver_the_batch_once() {
    let (addr, downstream) = serve(vec![
        Reply::Fail(Code::Unavailable),
        Reply::Fail(Code::Unavailable),
    ])
    .await;
    let mut config = grpc_config(addr, fast_retry(10));
    config.target = ExportTarget::OtlpGrpc {
        endpoint: format!("http://{addr}"),
        compression: Compression::Gzip,
        timeout: Duration::from_secs(2),
        headers: vec![("Authorization".into(), "Bearer s3cret".into())],
    };
    let (queue, metrics) = start(&config);
    queue.push(batch_named(3, "retried"));
    assert!(eventually(|| get(&metrics.spans_sent) == 3).await);

    assert_eq!(downstream.calls.load(Relaxed), 3);
    let received = downstream.received.lock();
    assert_eq!(received.len(), 1);
    assert_eq!(
        span_names(&received[0]),
        ["retried-0", "retried-1", "retried-2"]
    );
    assert_eq!(
        *downstream.authorization.lock(),
        ["Bearer s3cret", "Bearer s3cret", "Bearer s3cret"]
    );
    assert_eq!(get(&metrics.retries), 2);
    assert_eq!(get(&metrics.send_failures), 2);
    assert_eq!(get(&metrics.requests_sent), 1);
    assert_eq!(get(&metrics.spans_dropped), 0);
    assert_eq!(get(&metrics.queue_spans), 0);
}

#[tokio::test]
async fn grpc_exporter_should_drop_a_permanent_error_without_retrying() {
    let (addr, downstream) = serve(vec![Reply::Fail(Code::PermissionDenied)]).await;
    let (queue, metrics) = start(&grpc_config(addr, fast_retry(10)));
    queue.push(batch(2));
    assert!(eventually(|| get(&metrics.spans_dropped) == 2).await);
    assert_eq!(downstream.calls.load(Relaxed), 1);
    assert_eq!(get(&metrics.send_failures), 1);
    assert_eq!(get(&metrics.retries), 0);
    assert_eq!(get(&metrics.spans_sent), 0);

    // The exporter goes on with the next batch.
    queue.push(batch(1));
    assert!(eventually(|| get(&metrics.spans_sent) == 1).await);
    assert_eq!(downstream.calls.load(Relaxed), 2);
}

#[tokio::test]
async fn grpc_exporter_should_split_resource_exhausted_without_retry_info_not_retry_it() {
    let (addr, downstream) = serve(vec![Reply::Fail(Code::ResourceExhausted)]).await;
    let (queue, metrics) = start(&grpc_config(addr, fast_retry(10)));
    queue.push(batch(4));
    assert!(eventually(|| get(&metrics.spans_sent) == 4).await);
    // The refused request, then its two halves.
    assert_eq!(downstream.calls.load(Relaxed), 3);
    assert_eq!(get(&metrics.retries), 0);
    assert_eq!(get(&metrics.requests_split), 1);
    assert_eq!(get(&metrics.spans_dropped), 0);
}

#[tokio::test]
async fn grpc_exporter_should_retry_resource_exhausted_with_retry_info_after_its_delay() {
    let delay = Duration::from_millis(300);
    let (addr, downstream) = serve(vec![Reply::Throttle(delay)]).await;
    let (queue, metrics) = start(&grpc_config(addr, fast_retry(1)));
    let started = std::time::Instant::now();
    queue.push(batch(4));
    assert!(eventually(|| get(&metrics.spans_sent) == 4).await);
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    assert_eq!(downstream.calls.load(Relaxed), 2, "the same request again");
    assert_eq!(get(&metrics.retries), 1);
    assert_eq!(get(&metrics.requests_split), 0);
}

#[tokio::test]
async fn grpc_exporter_should_split_invalid_argument_and_drop_nothing_that_passes() {
    let (addr, downstream) = serve(vec![Reply::Fail(Code::InvalidArgument)]).await;
    let (queue, metrics) = start(&grpc_config(addr, fast_retry(10)));
    queue.push(batch(2));
    assert!(eventually(|| get(&metrics.spans_sent) == 2).await);
    assert_eq!(downstream.calls.load(Relaxed), 3);
    assert_eq!(get(&metrics.spans_rejected), 0);
}

#[tokio::test]
async fn grpc_exporter_should_deliver_once_the_downstream_comes_up() {
    let addr = closed_port();
    let (queue, metrics) = start(&grpc_config(addr, fast_retry(10)));
    queue.push(batch(2));
    assert!(eventually(|| get(&metrics.send_failures) >= 2).await);
    assert_eq!(get(&metrics.spans_sent), 0);

    let downstream = serve_on(TcpListener::bind(addr).await.unwrap(), Vec::new());
    assert!(eventually(|| get(&metrics.spans_sent) == 2).await);
    assert_eq!(downstream.received.lock().len(), 1);
    assert!(get(&metrics.retries) >= 2);
    assert_eq!(get(&metrics.spans_dropped), 0);
}

#[tokio::test]
async fn grpc_exporter_should_drop_batches_past_the_queue_bound_and_deliver_the_rest() {
    let (addr, downstream) = serve(Vec::new()).await;
    let mut config = grpc_config(addr, fast_retry(10));
    config.queue_size = 5;
    let (queue, metrics) = start(&config);
    // No await between pushes: on this single-threaded runtime the sender cannot drain meanwhile.
    queue.push(batch_named(2, "a"));
    queue.push(batch_named(2, "b"));
    queue.push(batch_named(2, "c"));
    queue.push(batch_named(1, "d"));
    assert_eq!(get(&metrics.queue_spans), 5);
    assert_eq!(get(&metrics.spans_dropped), 2);

    assert!(eventually(|| get(&metrics.spans_sent) == 5).await);
    let mut names: Vec<_> = downstream
        .received
        .lock()
        .iter()
        .flat_map(span_names)
        .collect();
    names.sort();
    assert_eq!(names, ["a-0", "a-1", "b-0", "b-1", "d-0"]);
    assert!(eventually(|| get(&metrics.queue_spans) == 0).await);
}

#[tokio::test]
async fn grpc_shutdown_with_a_dead_downstream_should_return_by_the_deadline_and_count_drops() {
    let (queue, metrics) = start(&grpc_config(closed_port(), fast_retry(10)));
    for _ in 0..6 {
        queue.push(batch(3)); // more batches than requests in flight
    }
    assert!(eventually(|| get(&metrics.send_failures) >= 1).await);
    let started = tokio::time::Instant::now();
    queue.shutdown(started + Duration::from_millis(200)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(get(&metrics.spans_dropped), 18);
    assert_eq!(get(&metrics.spans_sent), 0);
    assert_eq!(get(&metrics.queue_spans), 0);
}

#[tokio::test]
async fn grpc_exporter_should_give_a_batch_up_after_max_elapsed_time() {
    let retry = RetryConfig {
        max_elapsed_time: Duration::from_millis(60),
        ..fast_retry(10)
    };
    let (queue, metrics) = start(&grpc_config(closed_port(), retry));
    queue.push(batch(3));
    assert!(eventually(|| get(&metrics.spans_dropped) == 3).await);
    assert!(get(&metrics.retries) >= 1);
    assert_eq!(get(&metrics.send_failures), get(&metrics.retries) + 1);
}

#[tokio::test]
async fn grpc_exporter_without_retry_should_drop_on_the_first_retryable_failure() {
    let (addr, downstream) = serve(vec![Reply::Fail(Code::Unavailable)]).await;
    let retry = RetryConfig {
        enabled: false,
        ..fast_retry(10)
    };
    let (queue, metrics) = start(&grpc_config(addr, retry));
    queue.push(batch(2));
    assert!(eventually(|| get(&metrics.spans_dropped) == 2).await);
    assert_eq!(downstream.calls.load(Relaxed), 1);
    assert_eq!(get(&metrics.retries), 0);
}

#[tokio::test]
async fn grpc_partial_success_should_count_rejected_spans_as_dropped() {
    let (addr, _downstream) = serve(vec![Reply::Reject(2)]).await;
    let (queue, metrics) = start(&grpc_config(addr, fast_retry(10)));
    queue.push(batch(5));
    assert!(eventually(|| get(&metrics.spans_sent) + get(&metrics.spans_dropped) == 5).await);
    assert_eq!(get(&metrics.spans_sent), 3);
    assert_eq!(get(&metrics.spans_dropped), 2);
    assert_eq!(get(&metrics.requests_sent), 1);
    assert_eq!(get(&metrics.send_failures), 0);
}

#[tokio::test]
async fn grpc_setup_should_refuse_bad_schemes_and_bad_headers() {
    let mut config = grpc_config(closed_port(), fast_retry(10));
    let set = |c: &mut ExporterConfig, endpoint: &str, headers: Vec<(String, String)>| {
        c.target = ExportTarget::OtlpGrpc {
            endpoint: endpoint.into(),
            compression: Compression::None,
            timeout: Duration::from_secs(1),
            headers,
        };
    };
    // https without a ca_file: no roots to verify the server against
    set(&mut config, "https://collector:4317", Vec::new());
    let err = ExporterQueue::start(&config, Arc::default()).unwrap_err();
    assert!(matches!(err, ExportSetupError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("tls.ca_file is required"), "{err}");
    set(&mut config, "ftp://collector:4317", Vec::new());
    let err = ExporterQueue::start(&config, Arc::default()).unwrap_err();
    assert!(
        matches!(err, ExportSetupError::InvalidEndpoint { .. }),
        "{err}"
    );
    set(
        &mut config,
        "collector:4317",
        vec![("bad header".into(), "x".into())],
    );
    let err = ExporterQueue::start(&config, Arc::default()).unwrap_err();
    assert!(
        matches!(err, ExportSetupError::InvalidHeader { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("otlp/test"), "{err}");
    set(
        &mut config,
        "collector:4317",
        vec![("x-tenant".into(), "a".into())],
    );
    assert!(ExporterQueue::start(&config, Arc::default()).is_ok());
}

#[test]
fn grpc_classification_should_follow_the_otlp_specification() {
    for code in [
        Code::Cancelled,
        Code::DeadlineExceeded,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unavailable,
        Code::DataLoss,
    ] {
        assert!(classify(&Status::new(code, "")).is_retryable(), "{code:?}");
    }
    for code in [
        Code::InvalidArgument,
        Code::ResourceExhausted,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::Unimplemented,
        Code::Internal,
        Code::Unknown,
    ] {
        assert!(!classify(&Status::new(code, "")).is_retryable(), "{code:?}");
    }
}
