//! The collector's own counters, rendered as Prometheus text on `/metrics` beside the sampler's.
//!
//! Counters are plain atomics bumped where things happen (receivers, exporter queues), read
//! without locks; names follow the OpenTelemetry Collector's `otelcol_*` metrics where one exists
//! so dashboards carry over.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one receiver (gRPC or HTTP).
#[derive(Debug, Default)]
pub struct ReceiverMetrics {
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

/// Counters of one exporter and its queue.
#[derive(Debug, Default)]
pub struct ExporterMetrics {
    /// Spans delivered (`otelcol_exporter_sent_spans`).
    pub spans_sent: AtomicU64,
    /// Export requests delivered.
    pub requests_sent: AtomicU64,
    /// Export attempts that failed (retryable or not).
    pub send_failures: AtomicU64,
    /// Attempts that were retries of a failed batch.
    pub retries: AtomicU64,
    /// Spans dropped: queue full, a permanent error, or retries given up
    /// (`otelcol_exporter_send_failed_spans` + `otelcol_exporter_enqueue_failed_spans`).
    pub spans_dropped: AtomicU64,
    /// Spans waiting in the queue now (`otelcol_exporter_queue_size`, in spans).
    pub queue_spans: AtomicU64,
}

impl ExporterMetrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

/// Reads a counter.
pub(crate) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Relaxed)
}
