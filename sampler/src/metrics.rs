//! Counters, and the snapshot users read them through.
//!
//! Names follow the Collector's tail-sampling metrics where one exists (the Collector's name is
//! given on each field, without its `otelcol_processor_tail_sampling_` prefix), so dashboards
//! carry over. The counters add up, which the pressure test checks:
//!
//! ```text
//! new_trace_id_received = global_count_traces_sampled + global_count_traces_not_sampled
//!                       + sampling_traces_on_memory + traces_dropped_on_shutdown
//! spans_received        = count_spans_sampled + count_spans_not_sampled + spans_buffered
//!                       + late_spans_sampled + late_spans_not_sampled + spans_dropped_on_shutdown
//! ```
//!
//! Early (pressure) decisions are a subset of the decided traces: `traces_decided_early` of the
//! sampled plus not-sampled traces were decided before their time, `early_traces_sampled` of
//! them were kept. Unlike the Collector, which drops such traces undecided
//! (`sampling_trace_dropped_too_early`), traceq decides them, so error traces survive pressure.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Per-policy vote counters (`count_traces_sampled{policy, decision}`).
#[derive(Debug, Default)]
pub(crate) struct PolicyCounters {
    sampled: AtomicU64,
    not_sampled: AtomicU64,
    dropped: AtomicU64,
    credited_traces: AtomicU64,
    credited_spans: AtomicU64,
}

impl PolicyCounters {
    pub(crate) fn record_sampled(&self) {
        self.sampled.fetch_add(1, Relaxed);
    }
    pub(crate) fn record_not_sampled(&self) {
        self.not_sampled.fetch_add(1, Relaxed);
    }
    pub(crate) fn record_dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }
    pub(crate) fn record_credited(&self, spans: usize) {
        self.credited_traces.fetch_add(1, Relaxed);
        self.credited_spans.fetch_add(spans as u64, Relaxed);
    }
    pub(crate) fn snapshot(&self, name: &str) -> PolicyMetrics {
        PolicyMetrics {
            policy: name.to_owned(),
            traces_sampled: self.sampled.load(Relaxed),
            traces_not_sampled: self.not_sampled.load(Relaxed),
            traces_dropped: self.dropped.load(Relaxed),
            traces_kept: self.credited_traces.load(Relaxed),
            spans_kept: self.credited_spans.load(Relaxed),
        }
    }
}

/// What made the sampler decide a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Root = 0,
    Wait = 1,
    MaxSpans = 2,
    Pressure = 3,
    Flush = 4,
}

/// Sampler-wide counters (per-shard ones live in the shards).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) traces_sampled: AtomicU64,
    pub(crate) traces_not_sampled: AtomicU64,
    pub(crate) spans_sampled: AtomicU64,
    pub(crate) spans_not_sampled: AtomicU64,
    pub(crate) by_trigger: [AtomicU64; 5],
    pub(crate) early_sampled: AtomicU64,
    pub(crate) job_linked: AtomicU64,
    pub(crate) latency_count: AtomicU64,
    pub(crate) latency_sum_nanos: AtomicU64,
    pub(crate) latency_max_nanos: AtomicU64,
    pub(crate) traces_dropped_on_shutdown: AtomicU64,
    pub(crate) spans_dropped_on_shutdown: AtomicU64,
    pub(crate) spans_dropped_queue_full: AtomicU64,
    pub(crate) spans_dropped_after_shutdown: AtomicU64,
    pub(crate) spans_exported: AtomicU64,
    pub(crate) export_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn record_latency(&self, nanos: u64) {
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_nanos.fetch_add(nanos, Relaxed);
        self.latency_max_nanos.fetch_max(nanos, Relaxed);
    }
}

/// One policy's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyMetrics {
    /// The policy's name.
    pub policy: String,
    /// Traces this policy voted to sample (`count_traces_sampled{decision="sampled"}`).
    pub traces_sampled: u64,
    /// Traces this policy did not vote for (`count_traces_sampled{decision="not_sampled"}`).
    pub traces_not_sampled: u64,
    /// Traces this drop policy dropped (`count_traces_sampled{decision="dropped"}`).
    pub traces_dropped: u64,
    /// Traces kept and credited to this policy (recorded as `traceq.sampling.policy`).
    pub traces_kept: u64,
    /// Spans in the traces credited to this policy (`count_spans_sampled`).
    pub spans_kept: u64,
}

/// A consistent-enough snapshot of every counter (each field read once, without a global lock).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SamplerMetrics {
    /// Traces started in the buffer (`new_trace_id_received`).
    pub new_trace_id_received: u64,
    /// Spans offered to the sampler.
    pub spans_received: u64,
    /// Traces kept (`global_count_traces_sampled{sampled="true"}`).
    pub global_count_traces_sampled: u64,
    /// Traces not kept (`global_count_traces_sampled{sampled="false"}`).
    pub global_count_traces_not_sampled: u64,
    /// Spans of kept traces, at decision time (`count_spans_sampled`).
    pub count_spans_sampled: u64,
    /// Spans of traces not kept, at decision time.
    pub count_spans_not_sampled: u64,
    /// Spans that arrived after their trace was kept and were kept too (`sampling_late_span_age`).
    pub late_spans_sampled: u64,
    /// Spans that arrived after their trace was dropped and were dropped too.
    pub late_spans_not_sampled: u64,
    /// Traces decided because the root ended and the quiet period passed.
    pub traces_decided_after_root: u64,
    /// Traces decided because `decision_wait` passed.
    pub traces_decided_on_wait: u64,
    /// Traces decided at once for reaching `max_spans_per_trace`.
    pub traces_decided_on_max_spans: u64,
    /// Traces decided early because the buffer was full (traces or bytes).
    pub traces_decided_early: u64,
    /// Of the early decisions, the traces kept.
    pub early_traces_sampled: u64,
    /// Traces decided by `force_flush` or shutdown.
    pub traces_decided_on_flush: u64,
    /// Traces kept only because their job was kept for an error.
    pub traces_kept_by_job_linkage: u64,
    /// Traces in the buffer now (`sampling_traces_on_memory`).
    pub sampling_traces_on_memory: u64,
    /// Spans in the buffer now.
    pub spans_buffered: u64,
    /// Accounted bytes in the buffer now.
    pub bytes_buffered: u64,
    /// Decisions timed (`sampling_decision_latency`: first span to decision).
    pub decision_latency_count: u64,
    /// Sum of decision latencies, nanoseconds.
    pub decision_latency_sum_nanos: u64,
    /// Largest decision latency, nanoseconds.
    pub decision_latency_max_nanos: u64,
    /// Pending traces dropped undecided at shutdown (`drop_pending_traces_on_shutdown`).
    pub traces_dropped_on_shutdown: u64,
    /// Spans of those traces.
    pub spans_dropped_on_shutdown: u64,
    /// Kept spans lost because the export queue was full (processor only).
    pub spans_dropped_queue_full: u64,
    /// Spans offered after shutdown and ignored (processor only).
    pub spans_dropped_after_shutdown: u64,
    /// Spans handed to the exporter successfully (processor only).
    pub spans_exported: u64,
    /// Export calls that failed (processor only).
    pub export_failures: u64,
    /// Per-policy counters, in configuration order.
    pub policies: Vec<PolicyMetrics>,
}

impl SamplerMetrics {
    pub(crate) fn fill_from(&mut self, c: &Counters) {
        let l = |a: &AtomicU64| a.load(Relaxed);
        self.global_count_traces_sampled = l(&c.traces_sampled);
        self.global_count_traces_not_sampled = l(&c.traces_not_sampled);
        self.count_spans_sampled = l(&c.spans_sampled);
        self.count_spans_not_sampled = l(&c.spans_not_sampled);
        self.traces_decided_after_root = l(&c.by_trigger[Trigger::Root as usize]);
        self.traces_decided_on_wait = l(&c.by_trigger[Trigger::Wait as usize]);
        self.traces_decided_on_max_spans = l(&c.by_trigger[Trigger::MaxSpans as usize]);
        self.traces_decided_early = l(&c.by_trigger[Trigger::Pressure as usize]);
        self.traces_decided_on_flush = l(&c.by_trigger[Trigger::Flush as usize]);
        self.early_traces_sampled = l(&c.early_sampled);
        self.traces_kept_by_job_linkage = l(&c.job_linked);
        self.decision_latency_count = l(&c.latency_count);
        self.decision_latency_sum_nanos = l(&c.latency_sum_nanos);
        self.decision_latency_max_nanos = l(&c.latency_max_nanos);
        self.traces_dropped_on_shutdown = l(&c.traces_dropped_on_shutdown);
        self.spans_dropped_on_shutdown = l(&c.spans_dropped_on_shutdown);
        self.spans_dropped_queue_full = l(&c.spans_dropped_queue_full);
        self.spans_dropped_after_shutdown = l(&c.spans_dropped_after_shutdown);
        self.spans_exported = l(&c.spans_exported);
        self.export_failures = l(&c.export_failures);
    }

    /// Mean decision latency, if any decision was timed.
    #[must_use]
    pub fn mean_decision_latency(&self) -> Option<std::time::Duration> {
        (self.decision_latency_count > 0).then(|| {
            std::time::Duration::from_nanos(
                self.decision_latency_sum_nanos / self.decision_latency_count,
            )
        })
    }
}
