use std::collections::VecDeque;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap as AxumHeaders, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest,
};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::*;
use crate::client::RetryConfig;
use crate::export::test_support::{batch, batch_named, eventually, fast_retry, get, span_names};
use crate::export::{
    ExportSetupError, ExportTarget, ExporterConfig, ExporterMetrics, ExporterQueue,
};

/// One scripted answer; once the script is empty the downstream answers 200 with no body.
struct Reply {
    status: u16,
    retry_after: Option<&'static str>,
    body: Vec<u8>,
}

fn status(status: u16) -> Reply {
    Reply {
        status,
        retry_after: None,
        body: Vec::new(),
    }
}

struct Received {
    at: Instant,
    headers: AxumHeaders,
    body: Bytes,
}

#[derive(Default)]
struct Downstream {
    script: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
}

async fn traces(
    State(d): State<Arc<Downstream>>,
    headers: AxumHeaders,
    body: axum::body::Bytes,
) -> Response {
    d.received.lock().push(Received {
        at: Instant::now(),
        headers,
        body,
    });
    let reply = d.script.lock().pop_front().unwrap_or_else(|| status(200));
    let mut response = Response::new(axum::body::Body::from(reply.body));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    if let Some(after) = reply.retry_after {
        response
            .headers_mut()
            .insert("retry-after", after.parse().unwrap());
    }
    response
}

/// Serves a scripted OTLP/HTTP downstream on loopback (only `/v1/traces`).
async fn serve(script: Vec<Reply>) -> (SocketAddr, Arc<Downstream>) {
    let downstream = Arc::new(Downstream::default());
    downstream.script.lock().extend(script);
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(Arc::clone(&downstream));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, downstream)
}

fn http_config(
    addr: SocketAddr,
    compression: Compression,
    headers: Vec<(String, String)>,
    retry: RetryConfig,
) -> ExporterConfig {
    ExporterConfig {
        name: "otlphttp/test".into(),
        target: ExportTarget::OtlpHttp {
            endpoint: format!("http://{addr}"),
            compression,
            timeout: Duration::from_secs(2),
            headers,
        },
        queue_size: 1000,
        queue_bytes: crate::export::DEFAULT_QUEUE_BYTES,
        max_export_bytes: crate::export::DEFAULT_MAX_EXPORT_BYTES,
        retry,
        tls: None,
    }
}

fn start(config: &ExporterConfig) -> (ExporterQueue, Arc<ExporterMetrics>) {
    let metrics = Arc::new(ExporterMetrics::default());
    let queue = ExporterQueue::start(config, Arc::clone(&metrics)).unwrap();
    (queue, metrics)
}

#[tokio::test]
async fn http_exporter_should_wait_for_a_longer_retry_after_then_deliver() {
    let (addr, downstream) = serve(vec![Reply {
        retry_after: Some("1"),
        ..status(503)
    }])
    .await;
    let (queue, metrics) = start(&http_config(
        addr,
        Compression::None,
        Vec::new(),
        fast_retry(10),
    ));
    queue.push(batch(2));
    assert!(eventually(|| get(&metrics.spans_sent) == 2).await);
    let received = downstream.received.lock();
    assert_eq!(received.len(), 2);
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_millis(900), "retried after {gap:?}");
    assert_eq!(get(&metrics.retries), 1);
    assert_eq!(get(&metrics.send_failures), 1);
    assert_eq!(get(&metrics.spans_dropped), 0);
}

#[tokio::test]
async fn http_exporter_should_retry_429_and_502_with_its_own_backoff() {
    let (addr, downstream) = serve(vec![status(429), status(502), status(504)]).await;
    let (queue, metrics) = start(&http_config(
        addr,
        Compression::None,
        Vec::new(),
        fast_retry(10),
    ));
    queue.push(batch(1));
    assert!(eventually(|| get(&metrics.spans_sent) == 1).await);
    assert_eq!(downstream.received.lock().len(), 4);
    assert_eq!(get(&metrics.retries), 3);
}

#[tokio::test]
async fn http_exporter_should_gzip_the_protobuf_body_and_send_the_headers() {
    let (addr, downstream) = serve(Vec::new()).await;
    let headers = vec![("authorization".into(), "Bearer s3cret".into())];
    let (queue, metrics) = start(&http_config(
        addr,
        Compression::Gzip,
        headers,
        fast_retry(10),
    ));
    queue.push(batch_named(3, "zipped"));
    assert!(eventually(|| get(&metrics.spans_sent) == 3).await);

    let received = downstream.received.lock();
    let r = &received[0];
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert_eq!(r.headers["content-type"], "application/x-protobuf");
    assert_eq!(r.headers["authorization"], "Bearer s3cret");
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(r.body.as_ref())
        .read_to_end(&mut plain)
        .unwrap();
    let request = ExportTraceServiceRequest::decode(plain.as_slice()).unwrap();
    assert_eq!(span_names(&request), ["zipped-0", "zipped-1", "zipped-2"]);
}

#[tokio::test]
async fn http_partial_success_should_count_rejected_spans_as_dropped() {
    let response = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: 1,
            error_message: "too old".into(),
        }),
    };
    let (addr, downstream) = serve(vec![Reply {
        body: response.encode_to_vec(),
        ..status(200)
    }])
    .await;
    let (queue, metrics) = start(&http_config(
        addr,
        Compression::None,
        Vec::new(),
        fast_retry(10),
    ));
    let sent = batch(3);
    queue.push(sent.clone());
    assert!(eventually(|| get(&metrics.spans_sent) + get(&metrics.spans_dropped) == 3).await);
    assert_eq!(get(&metrics.spans_sent), 2);
    assert_eq!(get(&metrics.spans_dropped), 1);
    let received = downstream.received.lock();
    assert!(received[0].headers.get("content-encoding").is_none());
    assert_eq!(received[0].body, sent.body);
}

#[tokio::test]
async fn http_client_errors_and_other_server_errors_should_be_permanent() {
    // (400 and 413 are rejections of the content, split rather than dropped: see
    // `export::delivery`.)
    let (addr, downstream) = serve(vec![status(401), status(403), status(404), status(500)]).await;
    let (queue, metrics) = start(&http_config(
        addr,
        Compression::None,
        Vec::new(),
        fast_retry(10),
    ));
    for _ in 0..4 {
        queue.push(batch(2));
    }
    assert!(eventually(|| get(&metrics.spans_dropped) == 8).await);
    assert_eq!(downstream.received.lock().len(), 4);
    assert_eq!(get(&metrics.retries), 0);
    assert_eq!(get(&metrics.send_failures), 4);
    assert_eq!(get(&metrics.spans_sent), 0);
}

#[test]
fn traces_path_should_be_appended_only_when_the_url_has_no_path() {
    let url = |e: &str| traces_url("x", e).map(|u| u.to_string());
    assert_eq!(url("http://a:1").unwrap(), "http://a:1/v1/traces");
    assert_eq!(url("http://a:1/").unwrap(), "http://a:1/v1/traces");
    assert_eq!(
        url("http://a:1/otlp/v1/traces").unwrap(),
        "http://a:1/otlp/v1/traces"
    );
    assert!(matches!(
        url("ftp://a:1"),
        Err(ExportSetupError::InvalidEndpoint { .. })
    ));
    assert!(matches!(
        url("a:1:2"),
        Err(ExportSetupError::InvalidEndpoint { .. })
    ));
}

#[test]
fn retry_after_should_read_seconds_and_dates_and_ignore_garbage() {
    let headers = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(
            hyper::header::RETRY_AFTER,
            HeaderValue::from_str(v).unwrap(),
        );
        h
    };
    assert_eq!(retry_after(&headers(" 7 ")), Some(Duration::from_secs(7)));
    // a date long past: retry at once
    assert_eq!(
        retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")),
        Some(Duration::ZERO)
    );
    assert_eq!(retry_after(&headers("-1")), None);
    assert_eq!(retry_after(&HeaderMap::new()), None);
}

#[test]
fn responses_should_decode_as_protobuf_or_json_and_ignore_garbage() {
    let response = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: 4,
            error_message: "bad".into(),
        }),
    };
    let proto = decode_response(&response.encode_to_vec(), false);
    assert_eq!((proto.rejected_spans, proto.message.as_str()), (4, "bad"));
    let json = br#"{"partialSuccess":{"rejectedSpans":"4","errorMessage":"bad"}}"#;
    assert_eq!(decode_response(json, true).rejected_spans, 4);
    let numeric = br#"{"partialSuccess":{"rejectedSpans":4}}"#;
    assert_eq!(decode_response(numeric, true).rejected_spans, 4);
    assert_eq!(decode_response(b"{not json", true), Accepted::default());
    assert_eq!(decode_response(&[0xff, 0xff], false), Accepted::default());
    assert_eq!(decode_response(b"", false), Accepted::default());
}

#[test]
fn invalid_headers_should_fail_setup() {
    let err = header_map("x", &[("bad name".into(), "v".into())]).unwrap_err();
    assert!(
        matches!(err, ExportSetupError::InvalidHeader { .. }),
        "{err}"
    );
    let err = header_map("x", &[("ok".into(), "line\nbreak".into())]).unwrap_err();
    assert!(
        matches!(err, ExportSetupError::InvalidHeader { .. }),
        "{err}"
    );
}
