//! The tail sampler core: ingest spans, find due traces, decide, hand back kept spans.
//!
//! Why decide on root end: a work-queue item's trace is complete when its root span (the item,
//! or the first span after a remote parent) ends. Waiting a short quiet period after that, not a
//! fixed `decision_wait` from the first span, means retries and backoffs that outlive 30 s are
//! still decided with all their spans (contrib#36291), and short items are decided in ~2 s.
//! `decision_wait` remains the upper bound for traces whose root never ends here.
//!
//! The core does no I/O and owns no thread: callers ingest spans, call [`TailSampler::poll`]
//! periodically and [`TailSampler::flush`] at the end, and export what they are handed. The
//! [`TailSamplingProcessor`](crate::TailSamplingProcessor) does exactly that, and so does the
//! pipeline of `traceq collector` with the OTLP spans its receivers decode.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use foldhash::fast::FixedState;
use opentelemetry::trace::TraceId;
use opentelemetry::KeyValue;
use parking_lot::{Mutex, RwLock};

use crate::buffer::{fold, Due, Offer, Shard, TraceEntry};
use crate::cache::{fingerprint, BoundedMap};
use crate::clock::{nanos, Clock, Elapsed, SystemClock};
use crate::config::SamplerConfig;
use crate::decision::{KeptDecision, JOB_LINKAGE_POLICY, SEGMENT_ATTRIBUTE};
use crate::error::ConfigError;
use crate::metrics::{Counters, PolicyMetrics, SamplerMetrics, Trigger};
use crate::policy::{EvalContext, Outcome, PolicySet};
use crate::span::{AttrValue, SpanView, StatusKind};

/// Smallest share of `num_traces` a shard gets; fewer shards are used for tiny buffers.
const MIN_TRACES_PER_SHARD: usize = 16;

/// Buffers spans per trace and decides which traces to keep.
///
/// Generic over the span type through [`SpanView`]: the processor buffers SDK `SpanData` as is,
/// the collector buffers OTLP spans; `Box<S>` works too when spans are large.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use traceq_sampler::{testing::TestSpan, ManualClock, SamplerConfig, TailSampler};
///
/// let sampler = TailSampler::with_clock(SamplerConfig::default(), Arc::new(ManualClock::new()))?;
/// let mut kept = Vec::new();
/// sampler.ingest(Box::new(TestSpan::new(1, 2).child_of(1).error().build()), &mut kept);
/// sampler.ingest(Box::new(TestSpan::new(1, 1).build()), &mut kept);
/// sampler.flush(&mut kept);
/// assert_eq!(kept.len(), 2); // the trace has an error: kept whole
/// # Ok::<(), traceq_sampler::ConfigError>(())
/// ```
pub struct TailSampler<S> {
    shards: Box<[Mutex<Shard<S>>]>,
    shard_mask: usize,
    hasher: FixedState,
    policies: PolicySet,
    counters: Counters,
    clock: Elapsed,
    decision_wait: u64,
    after_root: u64,
    max_spans: usize,
    shard_traces: usize,
    shard_bytes: usize,
    job_key: String,
    /// Jobs kept for an error, with the earliest segment so kept (`i64::MIN` when unknown).
    jobs: Mutex<BoundedMap<u64, i64>>,
    /// True once any job was kept for an error: until then no trace needs its job id looked up.
    any_job: AtomicBool,
    job_decision: Arc<KeptDecision>,
    drop_pending_on_shutdown: bool,
    resource: RwLock<Arc<[KeyValue]>>,
}

impl<S> fmt::Debug for TailSampler<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TailSampler")
            .field("shards", &self.shards.len())
            .field("policies", &self.policies)
            .field("shard_traces", &self.shard_traces)
            .field("shard_bytes", &self.shard_bytes)
            .finish_non_exhaustive()
    }
}

fn floor_pow2(n: usize) -> usize {
    if n == 0 {
        1
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

impl<S: SpanView> TailSampler<S> {
    /// A sampler on the real clock.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the configuration is invalid.
    pub fn new(config: SamplerConfig) -> Result<Self, ConfigError> {
        Self::with_clock(config, Arc::new(SystemClock::new()))
    }

    /// A sampler reading deadlines from `clock`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the configuration is invalid.
    pub fn with_clock(config: SamplerConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        let policies = config.compile()?;
        let shards = floor_pow2(
            config
                .num_shards
                .min(config.num_traces / MIN_TRACES_PER_SHARD)
                .min(config.max_buffer_bytes / 4096)
                .max(1),
        );
        let per = |n: usize| n.div_ceil(shards);
        let expected = (config.expected_new_traces_per_sec
            * config.decision_wait_after_root.as_secs().max(1) as usize)
            .min(config.num_traces)
            / shards;
        let shard_list = (0..shards)
            .map(|_| {
                Mutex::new(Shard::new(
                    per(config.decision_cache.sampled_cache_size),
                    per(config.decision_cache.non_sampled_cache_size),
                    expected,
                    policies.len(),
                ))
            })
            .collect();
        Ok(Self {
            shards: shard_list,
            shard_mask: shards - 1,
            hasher: FixedState::with_seed(0x5eed),
            policies,
            counters: Counters::default(),
            clock: Elapsed::new(clock),
            decision_wait: nanos(config.decision_wait),
            after_root: nanos(config.decision_wait_after_root),
            max_spans: config.max_spans_per_trace,
            shard_traces: (config.num_traces / shards).max(1),
            shard_bytes: (config.max_buffer_bytes / shards).max(1),
            job_key: config.job_id_key.clone(),
            jobs: Mutex::new(BoundedMap::new(config.job_cache_size)),
            any_job: AtomicBool::new(false),
            job_decision: Arc::new(KeptDecision::new(Arc::from(JOB_LINKAGE_POLICY), 1.0)),
            drop_pending_on_shutdown: config.drop_pending_traces_on_shutdown,
            resource: RwLock::new(Arc::from(Vec::new())),
        })
    }

    fn shard(&self, trace_id: TraceId) -> &Mutex<Shard<S>> {
        let h = self.hasher.hash_one(trace_id);
        &self.shards[(h >> 32) as usize & self.shard_mask]
    }

    /// Offers one finished span. Spans of traces decided here (late spans of kept traces, traces
    /// that reached `max_spans_per_trace`, traces decided early under pressure) that are kept are
    /// appended to `kept`, annotated. Never blocks on I/O; holds one shard lock briefly.
    pub fn ingest(&self, span: S, kept: &mut Vec<S>) {
        self.ingest_at(span, self.clock.nanos(), kept);
    }

    /// [`Self::ingest`] for a run of spans, reading the clock once for all of them (spans that
    /// arrive together are stamped with the same time). Returns how many spans were offered.
    pub fn ingest_batch<I: IntoIterator<Item = S>>(&self, spans: I, kept: &mut Vec<S>) -> usize {
        let now = self.clock.nanos();
        let mut n = 0;
        for span in spans {
            self.ingest_at(span, now, kept);
            n += 1;
        }
        n
    }

    // Inlined so a large span is moved from the queue into the buffer without extra copies.
    #[inline(always)]
    fn ingest_at(&self, span: S, now: u64, kept: &mut Vec<S>) {
        let trace_id = span.trace_id();
        let mut shard = self.shard(trace_id).lock();
        shard.stats.spans_received += 1;
        let len = match shard.offer(span, now, self.after_root) {
            Offer::Buffered(len) => len,
            Offer::Kept(mut span, decision) => {
                drop(shard);
                span.annotate(&decision);
                kept.push(span);
                return;
            }
            Offer::NotKept(span) => {
                drop(shard);
                drop(span);
                return;
            }
        };
        if len >= self.max_spans {
            let resource = self.resource.read().clone();
            self.decide(
                &mut shard,
                trace_id,
                Trigger::MaxSpans,
                now,
                &resource,
                kept,
            );
        }
        if shard.traces.len() > self.shard_traces || shard.bytes > self.shard_bytes {
            let resource = self.resource.read().clone();
            while shard.traces.len() > self.shard_traces || shard.bytes > self.shard_bytes {
                let Some(oldest) = shard.pop_for_pressure() else {
                    break;
                };
                self.decide(&mut shard, oldest, Trigger::Pressure, now, &resource, kept);
            }
        }
        shard.compact();
    }

    /// Decides every trace whose deadline passed; kept spans are appended to `kept`.
    /// Returns the number of traces decided.
    pub fn poll(&self, kept: &mut Vec<S>) -> usize {
        let now = self.clock.nanos();
        let resource = self.resource.read().clone();
        let mut decided = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            while let Some((trace_id, due)) =
                shard.pop_due(now, self.decision_wait, self.after_root)
            {
                let trigger = match due {
                    Due::Root => Trigger::Root,
                    Due::Wait => Trigger::Wait,
                };
                self.decide(&mut shard, trace_id, trigger, now, &resource, kept);
                decided += 1;
            }
            shard.compact();
        }
        decided
    }

    /// Decides every pending trace now; kept spans are appended to `kept`.
    /// Returns the number of traces decided.
    pub fn flush(&self, kept: &mut Vec<S>) -> usize {
        let now = self.clock.nanos();
        let resource = self.resource.read().clone();
        let mut decided = 0;
        for shard in self.shards.iter() {
            shard.lock().drain_with(|shard, trace_id, entry| {
                self.decide_entry(shard, trace_id, entry, Trigger::Flush, now, &resource, kept);
                decided += 1;
            });
        }
        decided
    }

    /// What to do with pending traces at shutdown: [`Self::flush`] them, or, with
    /// `drop_pending_traces_on_shutdown`, drop them undecided (counted).
    pub fn shutdown(&self, kept: &mut Vec<S>) -> usize {
        if !self.drop_pending_on_shutdown {
            return self.flush(kept);
        }
        let mut dropped = 0;
        for shard in self.shards.iter() {
            shard.lock().drain_with(|_, _, entry| {
                self.counters
                    .traces_dropped_on_shutdown
                    .fetch_add(1, Relaxed);
                self.counters
                    .spans_dropped_on_shutdown
                    .fetch_add(entry.spans.len() as u64, Relaxed);
                dropped += 1;
            });
        }
        dropped
    }

    /// The job id of a trace: the first span carrying the job attribute decides.
    fn job_of(&self, spans: &[S]) -> Option<u64> {
        if self.job_key.is_empty() {
            return None;
        }
        spans
            .iter()
            .find_map(|s| match s.attribute(&self.job_key)? {
                AttrValue::Str(v) => Some(fingerprint(v)),
                AttrValue::I64(i) => Some(fingerprint(i.to_string().as_str())),
                _ => None,
            })
    }

    /// The trace's segment number within its job, if the engine split it.
    fn segment_of(spans: &[S]) -> Option<i64> {
        spans
            .iter()
            .find_map(|s| match s.attribute(SEGMENT_ATTRIBUTE)? {
                AttrValue::I64(i) => Some(i),
                _ => None,
            })
    }

    fn decide(
        &self,
        shard: &mut Shard<S>,
        trace_id: TraceId,
        trigger: Trigger,
        now: u64,
        resource: &[KeyValue],
        kept: &mut Vec<S>,
    ) {
        if let Some(entry) = shard.remove(trace_id) {
            self.decide_entry(shard, trace_id, entry, trigger, now, resource, kept);
        }
    }

    /// Decides `entry`, a trace already taken out of `shard`.
    #[allow(clippy::too_many_arguments)] // the shard, the trace and its context, all needed
    fn decide_entry(
        &self,
        shard: &mut Shard<S>,
        trace_id: TraceId,
        mut entry: TraceEntry<S>,
        trigger: Trigger,
        now: u64,
        resource: &[KeyValue],
        kept: &mut Vec<S>,
    ) {
        let cx = EvalContext {
            trace_id,
            resource,
            bytes: entry.bytes,
            now_nanos: now,
        };
        let outcome = self
            .policies
            .evaluate(&entry.spans, &cx, &mut shard.tally.policies);
        let tally = &mut shard.tally;
        let mut credited = None;
        // Job ids are only looked up when they can matter: a kept error trace records its job,
        // and a trace no policy kept is kept if its job was.
        let decision = match outcome {
            Outcome::Keep { index } => {
                credited = Some(index);
                Some(self.policies.decision(index).clone())
            }
            Outcome::Dropped { .. } => None,
            // Later segments follow an error segment; earlier ones, decided after it, do not.
            Outcome::NotSampled if self.any_job.load(Relaxed) => match self.job_of(&entry.spans) {
                Some(job) => {
                    let from = self.jobs.lock().get(&job).copied();
                    let segment = Self::segment_of(&entry.spans);
                    match from {
                        Some(from) if segment.is_none_or(|seg| seg >= from) => {
                            tally.job_linked += 1;
                            Some(self.job_decision.clone())
                        }
                        _ => None,
                    }
                }
                None => None,
            },
            Outcome::NotSampled => None,
        };
        if decision.is_some() && entry.spans.iter().any(|s| s.status() == StatusKind::Error) {
            if let Some(job) = self.job_of(&entry.spans) {
                let segment = Self::segment_of(&entry.spans).unwrap_or(i64::MIN);
                let mut jobs = self.jobs.lock();
                if jobs.get(&job).is_none_or(|&from| segment < from) {
                    jobs.insert(job, segment);
                }
                self.any_job.store(true, Relaxed);
            }
        }
        tally.by_trigger[trigger as usize] += 1;
        tally.record_latency(now.saturating_sub(entry.first_seen));
        let spans = entry.spans.len() as u64;
        match decision {
            Some(decision) => {
                tally.traces_sampled += 1;
                tally.spans_sampled += spans;
                if trigger == Trigger::Pressure {
                    tally.early_sampled += 1;
                }
                if let Some(index) = credited {
                    tally.policies[index].credited_traces += 1;
                    tally.policies[index].credited_spans += spans;
                }
                for span in &mut entry.spans {
                    span.annotate(&decision);
                }
                shard.kept.insert(trace_id, decision);
                kept.append(&mut entry.spans);
            }
            None => {
                tally.traces_not_sampled += 1;
                tally.spans_not_sampled += spans;
                shard.dropped.insert(fold(trace_id));
            }
        }
    }

    /// Sets the resource attributes that attribute policies consult besides span attributes
    /// (the SDK processor passes its tracer provider's resource).
    pub fn set_resource_attributes(&self, attributes: Vec<KeyValue>) {
        *self.resource.write() = Arc::from(attributes);
    }

    /// A snapshot of every counter.
    #[must_use]
    pub fn metrics(&self) -> SamplerMetrics {
        let mut m = SamplerMetrics {
            policies: (0..self.policies.len())
                .map(|i| PolicyMetrics::named(self.policies.name(i)))
                .collect(),
            ..SamplerMetrics::default()
        };
        for shard in self.shards.iter() {
            let s = shard.lock();
            s.tally.add_to(&mut m);
            m.new_trace_id_received += s.stats.traces_received;
            m.spans_received += s.stats.spans_received;
            m.late_spans_sampled += s.stats.late_sampled;
            m.late_spans_not_sampled += s.stats.late_not_sampled;
            m.sampling_traces_on_memory += s.traces.len() as u64;
            m.spans_buffered += s.spans as u64;
            m.bytes_buffered += s.bytes as u64;
        }
        m.fill_from(&self.counters);
        m
    }

    /// The largest number of bytes the buffer may hold (the sum of the shards' shares).
    #[must_use]
    pub fn byte_capacity(&self) -> usize {
        self.shard_bytes * self.shards.len()
    }

    /// The largest number of traces the buffer may hold (the sum of the shards' shares).
    #[must_use]
    pub fn trace_capacity(&self) -> usize {
        self.shard_traces * self.shards.len()
    }

    /// Traces and accounted bytes in the buffer now. Cheaper than [`Self::metrics`]: one brief
    /// lock per shard, no allocation; a front door checks it to refuse data before the buffer
    /// would have to decide traces early.
    #[must_use]
    pub fn occupancy(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(traces, bytes), shard| {
            let s = shard.lock();
            (traces + s.traces.len(), bytes + s.bytes)
        })
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }
}

#[cfg(test)]
mod tests;
