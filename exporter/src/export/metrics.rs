//! An exporter's counters: plain atomics bumped where things happen, read without locks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    /// Spans dropped: queue full, a permanent error, retries given up, or rejected by the
    /// downstream (`otelcol_exporter_send_failed_spans` +
    /// `otelcol_exporter_enqueue_failed_spans`).
    pub spans_dropped: AtomicU64,
    /// Of `spans_dropped`, the spans the downstream refused as invalid: each isolated by
    /// splitting a request refused as malformed, or counted in a partial success.
    pub spans_rejected: AtomicU64,
    /// Requests split in two because the downstream refused them as too large or malformed,
    /// or because they were larger than `max_export_bytes`.
    pub requests_split: AtomicU64,
    /// Spans waiting in the queue or in flight now (`otelcol_exporter_queue_size`, in spans).
    pub queue_spans: AtomicU64,
    /// Encoded bytes of the batches waiting in the queue or in flight now.
    pub queue_bytes: AtomicU64,
}

impl ExporterMetrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Reads a counter.
    #[must_use]
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}
