//! The receivers' counters, rendered as Prometheus text on `/metrics` beside the exporters' and
//! the sampler's.
//!
//! Counters are plain atomics bumped where things happen (receivers, exporter queues), read
//! without locks; names follow the OpenTelemetry Collector's `otelcol_*` metrics where one exists
//! so dashboards carry over.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

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
    /// The receiver's connections.
    pub connections: Arc<ConnectionMetrics>,
}

/// Connection counters of one listener (a receiver or the admin endpoint).
#[derive(Debug, Default)]
pub(crate) struct ConnectionMetrics {
    /// Connections open now (a gauge).
    pub open: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections closed at once because the listener had `max_connections` open.
    pub refused: AtomicU64,
    /// Connections closed because the client did not send a whole request head within
    /// `read_header_timeout`, or did not finish its TLS handshake in time.
    pub timed_out: AtomicU64,
    /// Keep-alive connections closed after `idle_timeout` with no request in flight.
    pub idle_closed: AtomicU64,
}

/// Reads a counter.
pub(crate) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Relaxed)
}
