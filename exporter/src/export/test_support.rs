//! Shared helpers of the exporter tests: batches of known spans, configs, polling.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use super::batch::ExportBatch;
use super::config::{ExportTarget, ExporterConfig};
use crate::client::{Compression, RetryConfig};

/// Longest any test waits for something to happen.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// A request with `spans` spans named `{prefix}-{i}`.
pub(crate) fn request(spans: usize, prefix: &str) -> ExportTraceServiceRequest {
    let spans = (0..spans)
        .map(|i| Span {
            trace_id: vec![7; 16],
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: format!("{prefix}-{i}"),
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000,
            ..Span::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// An encoded batch of `spans` spans named `{prefix}-{i}`.
pub(crate) fn batch_named(spans: usize, prefix: &str) -> ExportBatch {
    ExportBatch {
        body: Bytes::from(request(spans, prefix).encode_to_vec()),
        spans,
    }
}

/// An encoded batch of `spans` spans.
pub(crate) fn batch(spans: usize) -> ExportBatch {
    batch_named(spans, "span")
}

/// The span names in a request, in order.
pub(crate) fn span_names(request: &ExportTraceServiceRequest) -> Vec<String> {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| s.name.clone())
        .collect()
}

/// Fast retries (`ms`, doubling to 4 × `ms`), never given up.
pub(crate) fn fast_retry(ms: u64) -> RetryConfig {
    RetryConfig {
        enabled: true,
        initial_interval: Duration::from_millis(ms),
        max_interval: Duration::from_millis(ms * 4),
        max_elapsed_time: Duration::ZERO,
    }
}

/// An OTLP/gRPC exporter config for `addr`, uncompressed, 2 s timeout.
pub(crate) fn grpc_config(addr: SocketAddr, retry: RetryConfig) -> ExporterConfig {
    ExporterConfig {
        name: "otlp/test".into(),
        target: ExportTarget::OtlpGrpc {
            endpoint: addr.to_string(),
            compression: Compression::None,
            timeout: Duration::from_secs(2),
            headers: Vec::new(),
        },
        queue_size: 1000,
        queue_bytes: crate::export::DEFAULT_QUEUE_BYTES,
        max_export_bytes: crate::export::DEFAULT_MAX_EXPORT_BYTES,
        retry,
        tls: None,
    }
}

/// An address on loopback where nothing listens (bound, then released).
pub(crate) fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Polls `done` every few milliseconds until it holds or [`PATIENCE`] passes; says which.
pub(crate) async fn eventually(done: impl Fn() -> bool) -> bool {
    let until = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done()
}

/// Reads a counter.
pub(crate) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Relaxed)
}
