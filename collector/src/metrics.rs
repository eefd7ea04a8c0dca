//! The receivers' counters, rendered as Prometheus text on `/metrics` beside the exporters' and
//! the sampler's.
//!
//! Counters are plain atomics bumped where things happen (receivers, exporter queues), read
//! without locks; names follow the OpenTelemetry Collector's `otelcol_*` metrics where one exists
//! so dashboards carry over.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one receiver (gRPC or HTTP).
#[derive(Debug, Default)]
pub(crate) struct ReceiverMetrics {
    /// Requests whose spans were accepted (`otelcol_receiver_accepted_spans` counts spans).
    pub requests_accepted: AtomicU64,
    /// Spans accepted.
    pub spans_accepted: AtomicU64,
    /// Requests refused with a retryable error (buffer full or shutting down).
    pub requests_refused: AtomicU64,
    /// Spans in refused requests (`otelcol_receiver_refused_spans`).
    pub spans_refused: AtomicU64,
    /// Requests rejected as malformed, oversized, unauthenticated or of an unsupported type.
    pub requests_rejected: AtomicU64,
}

/// Reads a counter.
pub(crate) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Relaxed)
}
