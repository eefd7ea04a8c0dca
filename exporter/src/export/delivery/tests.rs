use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use prost::Message;

use crate::client::Compression;
use crate::export::test_support::{batch_named, fast_retry, get, span_names};
use crate::export::{ExportBatch, ExportTarget, ExporterConfig, ExporterMetrics, ExporterQueue};

/// An OTLP/HTTP downstream that answers 413 to bodies over `max_body` bytes and 400 to any
/// request holding a span whose name starts with `bad`, and keeps what it accepts.
#[derive(Default)]
struct Picky {
    max_body: usize,
    accepted: Mutex<Vec<String>>,
    sizes: Mutex<Vec<usize>>,
}

async fn traces(State(d): State<Arc<Picky>>, body: axum::body::Bytes) -> StatusCode {
    d.sizes.lock().push(body.len());
    if body.len() > d.max_body {
        return StatusCode::PAYLOAD_TOO_LARGE;
    }
    let Ok(request) = ExportTraceServiceRequest::decode(&body[..]) else {
        return StatusCode::BAD_REQUEST;
    };
    let names = span_names(&request);
    if names.iter().any(|n| n.starts_with("bad")) {
        return StatusCode::BAD_REQUEST;
    }
    d.accepted.lock().extend(names);
    StatusCode::OK
}

async fn serve(max_body: usize) -> (SocketAddr, Arc<Picky>) {
    let picky = Arc::new(Picky {
        max_body,
        ..Picky::default()
    });
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(Arc::clone(&picky));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, picky)
}

fn start(addr: SocketAddr, max_export_bytes: usize) -> (ExporterQueue, Arc<ExporterMetrics>) {
    let config = ExporterConfig::new(
        "otlphttp/picky",
        ExportTarget::OtlpHttp {
            endpoint: format!("http://{addr}"),
            compression: Compression::None,
            timeout: Duration::from_secs(2),
            headers: Vec::new(),
        },
    )
    .with_max_export_bytes(max_export_bytes)
    .with_retry(fast_retry(5));
    let metrics = Arc::new(ExporterMetrics::default());
    let queue = ExporterQueue::start(&config, Arc::clone(&metrics)).unwrap();
    (queue, metrics)
}

fn deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(20)
}

/// A batch of `good` spans named `ok-{i}` with spans named `bad-{i}` at the given positions.
fn marked(good: usize, bad_at: &[usize]) -> ExportBatch {
    let mut request = crate::export::test_support::request(good + bad_at.len(), "ok");
    let spans = &mut request.resource_spans[0].scope_spans[0].spans;
    for &i in bad_at {
        spans[i].name = format!("bad-{i}");
    }
    ExportBatch {
        body: bytes::Bytes::from(request.encode_to_vec()),
        spans: good + bad_at.len(),
    }
}

#[tokio::test]
async fn a_batch_refused_as_too_large_should_be_delivered_in_halves() {
    let (addr, picky) = serve(600).await;
    let (queue, metrics) = start(addr, crate::export::DEFAULT_MAX_EXPORT_BYTES);
    let batch = batch_named(100, "big");
    assert!(batch.body.len() > 4 * 600);
    queue.push(batch);
    queue.shutdown(deadline()).await;
    let accepted = picky.accepted.lock().clone();
    assert_eq!(accepted.len(), 100);
    let expected: Vec<_> = (0..100).map(|i| format!("big-{i}")).collect();
    assert_eq!(
        accepted, expected,
        "halves go out in order, first half first"
    );
    assert_eq!(get(&metrics.spans_sent), 100);
    assert_eq!(get(&metrics.spans_dropped), 0);
    assert!(get(&metrics.requests_split) >= 3);
    assert_eq!(get(&metrics.queue_bytes), 0);
}

#[tokio::test]
async fn a_batch_refused_as_malformed_should_lose_only_the_offending_spans() {
    let (addr, picky) = serve(usize::MAX).await;
    let (queue, metrics) = start(addr, crate::export::DEFAULT_MAX_EXPORT_BYTES);
    let bad_at = [0, 17, 18, 63];
    queue.push(marked(60, &bad_at));
    queue.shutdown(deadline()).await;
    let mut accepted = picky.accepted.lock().clone();
    accepted.sort();
    let mut expected: Vec<_> = (0..64)
        .filter(|i| !bad_at.contains(i))
        .map(|i| format!("ok-{i}"))
        .collect();
    expected.sort();
    assert_eq!(accepted, expected, "every good span once, no bad one");
    assert_eq!(get(&metrics.spans_sent), 60);
    assert_eq!(get(&metrics.spans_rejected), 4);
    assert_eq!(get(&metrics.spans_dropped), 4);
    // Isolating 4 spans of 64 takes far fewer requests than one per span.
    let requests = picky.sizes.lock().len();
    assert!(requests < 64, "{requests} requests");
}

#[tokio::test]
async fn a_batch_over_max_export_bytes_should_be_split_before_it_is_sent() {
    let (addr, picky) = serve(usize::MAX).await;
    let (queue, metrics) = start(addr, 1000);
    queue.push(batch_named(200, "s"));
    queue.shutdown(deadline()).await;
    assert_eq!(picky.accepted.lock().len(), 200);
    let sizes = picky.sizes.lock().clone();
    assert!(sizes.iter().all(|&n| n <= 1000), "{sizes:?}");
    assert_eq!(get(&metrics.send_failures), 0, "nothing oversize was sent");
    assert_eq!(get(&metrics.spans_sent), 200);
}

#[tokio::test]
async fn a_span_alone_over_the_limit_should_be_dropped_and_counted_without_a_request() {
    let (addr, picky) = serve(usize::MAX).await;
    let (queue, metrics) = start(addr, 30);
    queue.push(batch_named(1, "a-span-with-a-long-enough-name"));
    queue.shutdown(deadline()).await;
    assert!(picky.sizes.lock().is_empty());
    assert_eq!(get(&metrics.spans_dropped), 1);
    assert_eq!(get(&metrics.spans_rejected), 0);
}

#[tokio::test]
async fn a_single_span_refused_as_too_large_should_be_dropped_not_counted_as_rejected() {
    let (addr, picky) = serve(10).await;
    let (queue, metrics) = start(addr, crate::export::DEFAULT_MAX_EXPORT_BYTES);
    queue.push(batch_named(2, "s"));
    queue.shutdown(deadline()).await;
    assert_eq!(picky.sizes.lock().len(), 3, "the pair, then each span");
    assert_eq!(get(&metrics.spans_dropped), 2);
    assert_eq!(get(&metrics.spans_rejected), 0);
    assert_eq!(get(&metrics.requests_split), 1);
}

#[tokio::test]
async fn an_undecodable_batch_refused_as_malformed_should_be_dropped_once() {
    let (addr, picky) = serve(usize::MAX).await;
    let (queue, metrics) = start(addr, crate::export::DEFAULT_MAX_EXPORT_BYTES);
    queue.push(ExportBatch {
        body: bytes::Bytes::from_static(&[0x0a, 0xff]),
        spans: 5,
    });
    queue.shutdown(deadline()).await;
    assert_eq!(picky.sizes.lock().len(), 1);
    assert_eq!(get(&metrics.spans_dropped), 5);
}

#[tokio::test]
async fn a_downstream_refusing_every_span_should_cost_a_bounded_number_of_requests() {
    let (addr, picky) = serve(usize::MAX).await;
    let (queue, metrics) = start(addr, crate::export::DEFAULT_MAX_EXPORT_BYTES);
    // Every span is marked: a search down to single spans would take 2 × 1000 − 1 requests.
    let all: Vec<usize> = (0..1000).collect();
    queue.push(marked(0, &all));
    queue.shutdown(deadline()).await;
    assert_eq!(get(&metrics.spans_dropped), 1000);
    assert_eq!(get(&metrics.spans_rejected), 1000);
    assert_eq!(get(&metrics.spans_sent), 0);
    let requests = picky.sizes.lock().len();
    assert!(
        requests <= 2 * super::GIVE_UP_AFTER_REJECTED + 12,
        "{requests} requests"
    );
}

#[tokio::test]
async fn a_run_of_bad_spans_at_the_start_should_not_cost_the_good_ones() {
    let (addr, picky) = serve(usize::MAX).await;
    let (queue, metrics) = start(addr, crate::export::DEFAULT_MAX_EXPORT_BYTES);
    // More leading bad spans than the give-up threshold, before any part is taken.
    let bad: Vec<usize> = (0..2 * super::GIVE_UP_AFTER_REJECTED).collect();
    queue.push(marked(500, &bad));
    queue.shutdown(deadline()).await;
    assert_eq!(picky.accepted.lock().len(), 500);
    assert_eq!(get(&metrics.spans_sent), 500);
    assert_eq!(get(&metrics.spans_rejected), bad.len() as u64);
}
