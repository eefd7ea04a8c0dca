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
use std::sync::Arc;

/// Numbers each compiled policy set, so a tally knows which set its per-policy counts follow.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// The policy names of one compiled set, in evaluation order, and the set's generation (later
/// sets, e.g. after a reload, have higher ones).
#[derive(Debug, Default)]
pub(crate) struct PolicyNames {
    pub(crate) generation: u64,
    pub(crate) names: Box<[Arc<str>]>,
}

impl PolicyNames {
    pub(crate) fn new(names: Box<[Arc<str>]>) -> Self {
        Self {
            generation: GENERATIONS.fetch_add(1, Relaxed),
            names,
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| &**n == name)
    }
}

/// Per-policy vote counts (`count_traces_sampled{policy, decision}`), kept per shard under the
/// shard's lock, so deciding touches no shared cache line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PolicyTally {
    pub(crate) sampled: u64,
    pub(crate) not_sampled: u64,
    pub(crate) dropped: u64,
    pub(crate) credited_traces: u64,
    pub(crate) credited_spans: u64,
    pub(crate) errors: u64,
}

impl PolicyTally {
    fn add(&mut self, from: &Self) {
        self.sampled += from.sampled;
        self.not_sampled += from.not_sampled;
        self.dropped += from.dropped;
        self.credited_traces += from.credited_traces;
        self.credited_spans += from.credited_spans;
        self.errors += from.errors;
    }

    pub(crate) fn add_to(&self, m: &mut PolicyMetrics) {
        m.traces_sampled += self.sampled;
        m.traces_not_sampled += self.not_sampled;
        m.traces_dropped += self.dropped;
        m.evaluation_errors += self.errors;
        m.traces_kept += self.credited_traces;
        m.spans_kept += self.credited_spans;
    }
}

/// Decision counts of one shard.
#[derive(Debug, Default, Clone)]
pub(crate) struct DecisionTally {
    pub(crate) traces_sampled: u64,
    pub(crate) traces_not_sampled: u64,
    pub(crate) spans_sampled: u64,
    pub(crate) spans_not_sampled: u64,
    pub(crate) by_trigger: [u64; 6],
    pub(crate) early_sampled: u64,
    pub(crate) job_linked: u64,
    pub(crate) latency_count: u64,
    pub(crate) latency_sum_nanos: u64,
    pub(crate) latency_max_nanos: u64,
    /// One per policy of `names`, in its order.
    pub(crate) policies: Vec<PolicyTally>,
    pub(crate) names: Arc<PolicyNames>,
}

impl DecisionTally {
    pub(crate) fn new(names: Arc<PolicyNames>) -> Self {
        Self {
            policies: vec![PolicyTally::default(); names.names.len()],
            names,
            ..Self::default()
        }
    }

    /// Follows the newer policy set `names`: counts of a policy it still has (by name) carry
    /// over, so a counter of an unchanged policy never goes back; those of a removed one go.
    pub(crate) fn follow(&mut self, names: &Arc<PolicyNames>) {
        if Arc::ptr_eq(&self.names, names) {
            return;
        }
        let mut policies = vec![PolicyTally::default(); names.names.len()];
        for (name, tally) in self.names.names.iter().zip(&self.policies) {
            if let Some(i) = names.position(name) {
                policies[i].add(tally);
            }
        }
        self.policies = policies;
        self.names = Arc::clone(names);
    }

    pub(crate) fn record_latency(&mut self, nanos: u64) {
        self.latency_count += 1;
        self.latency_sum_nanos = self.latency_sum_nanos.saturating_add(nanos);
        self.latency_max_nanos = self.latency_max_nanos.max(nanos);
    }

    /// Adds these counts to `into` and zeroes them (the policy list keeps its room).
    pub(crate) fn drain_into(&mut self, into: &mut Self) {
        into.traces_sampled += self.traces_sampled;
        into.traces_not_sampled += self.traces_not_sampled;
        into.spans_sampled += self.spans_sampled;
        into.spans_not_sampled += self.spans_not_sampled;
        for (to, from) in into.by_trigger.iter_mut().zip(self.by_trigger) {
            *to += from;
        }
        into.early_sampled += self.early_sampled;
        into.job_linked += self.job_linked;
        into.latency_count += self.latency_count;
        into.latency_sum_nanos = into
            .latency_sum_nanos
            .saturating_add(self.latency_sum_nanos);
        into.latency_max_nanos = into.latency_max_nanos.max(self.latency_max_nanos);
        // A round decided on a newer policy set than the shard's moves the shard to it; one
        // decided on an older set (a reload came in between) adds its counts by name.
        if self.names.generation > into.names.generation {
            into.follow(&self.names);
        }
        if Arc::ptr_eq(&into.names, &self.names) {
            for (to, from) in into.policies.iter_mut().zip(&self.policies) {
                to.add(from);
            }
        } else {
            for (name, from) in self.names.names.iter().zip(&self.policies) {
                if let Some(i) = into.names.position(name) {
                    into.policies[i].add(from);
                }
            }
        }
        let mut policies = std::mem::take(&mut self.policies);
        policies.fill(PolicyTally::default());
        let names = std::mem::take(&mut self.names);
        *self = Self {
            policies,
            names,
            ..Self::default()
        };
    }

    pub(crate) fn add_to(&self, m: &mut SamplerMetrics) {
        m.global_count_traces_sampled += self.traces_sampled;
        m.global_count_traces_not_sampled += self.traces_not_sampled;
        m.count_spans_sampled += self.spans_sampled;
        m.count_spans_not_sampled += self.spans_not_sampled;
        m.traces_decided_after_root += self.by_trigger[Trigger::Root as usize];
        m.traces_decided_on_wait += self.by_trigger[Trigger::Wait as usize];
        m.traces_decided_on_max_spans += self.by_trigger[Trigger::MaxSpans as usize];
        m.traces_decided_on_max_bytes += self.by_trigger[Trigger::MaxBytes as usize];
        m.traces_decided_early += self.by_trigger[Trigger::Pressure as usize];
        m.traces_decided_on_flush += self.by_trigger[Trigger::Flush as usize];
        m.early_traces_sampled += self.early_sampled;
        m.traces_kept_by_job_linkage += self.job_linked;
        m.decision_latency_count += self.latency_count;
        m.decision_latency_sum_nanos = m
            .decision_latency_sum_nanos
            .saturating_add(self.latency_sum_nanos);
        m.decision_latency_max_nanos = m.decision_latency_max_nanos.max(self.latency_max_nanos);
        for (t, pm) in self.policies.iter().zip(m.policies.iter_mut()) {
            t.add_to(pm);
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
    MaxBytes = 5,
}

/// Sampler-wide counters of rare events (per-span and per-decision ones live in the shards).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) traces_dropped_on_shutdown: AtomicU64,
    pub(crate) spans_dropped_on_shutdown: AtomicU64,
    pub(crate) spans_dropped_queue_full: AtomicU64,
    pub(crate) spans_dropped_after_shutdown: AtomicU64,
    pub(crate) spans_exported: AtomicU64,
    pub(crate) export_failures: AtomicU64,
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
    /// Evaluations that failed (`sampling_policy_evaluation_error`): an `ottl_condition` that
    /// could not be evaluated on a span, in `propagate` mode once per trace (the policy did
    /// not sample it), in `ignore` mode once per failed condition.
    pub evaluation_errors: u64,
}

impl PolicyMetrics {
    pub(crate) fn named(policy: &str) -> Self {
        Self {
            policy: policy.to_owned(),
            traces_sampled: 0,
            traces_not_sampled: 0,
            traces_dropped: 0,
            traces_kept: 0,
            spans_kept: 0,
            evaluation_errors: 0,
        }
    }
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
    /// Traces decided at once for passing `maximum_trace_size_bytes` (the Collector drops such
    /// traces undecided; traceq decides them with the spans they have).
    pub traces_decided_on_max_bytes: u64,
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
    /// Spans lost because the processor's queue was full (processor only).
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
