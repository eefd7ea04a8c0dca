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
//!
//! Why no decision under a shard lock: evaluating policies and looking up job ids reads every
//! span of a trace, and can be slow. Each decision round takes due traces out of their shard
//! under its lock, releases it, decides them, and locks again only to record the decisions (see
//! [`crate::buffer`] for how spans arriving in between follow the decision). A slow decision
//! then delays only the caller that makes it, never the other spans of its shard.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use opentelemetry::trace::TraceId;
use opentelemetry::KeyValue;
use parking_lot::{Mutex, MutexGuard, RwLock};

use crate::buffer::{Due, Offer, Shard, TraceEntry};
use crate::cache::BoundedMap;
use crate::clock::{nanos, Clock, Elapsed, SystemClock};
use crate::config::SamplerConfig;
use crate::decision::{KeptDecision, JOB_LINKAGE_POLICY};
use crate::error::ConfigError;
use crate::hash::{id_state, IdState};
use crate::metrics::{Counters, PolicyMetrics, SamplerMetrics, Trigger};
use crate::policy::PolicySet;
use crate::span::SpanView;

mod decide;

use decide::Round;

/// Smallest share of `num_traces` a shard gets; fewer shards are used for tiny buffers.
const MIN_TRACES_PER_SHARD: usize = 16;

/// How far back the sampler's clock readings start: a trace replayed from a log kept across a
/// restart arrived before this sampler existed, and is stamped up to this long before its
/// creation (older arrivals are stamped at the horizon: their deadlines passed long ago
/// anyway).
const REPLAY_HORIZON: u64 = 7 * 24 * 3600 * 1_000_000_000;

/// Called with each round of decisions (trace id and, when kept, the decision) before the
/// decided spans are handed on or freed: how the collector logs decisions.
pub type DecisionHook = Box<dyn Fn(&[(TraceId, Option<Arc<KeptDecision>>)]) + Send + Sync>;

/// Most due traces one poll takes out of a shard at a time: bounds how long spans arriving for
/// them are held, and how much memory is out of the buffer's accounting while they are decided.
const POLL_BATCH: usize = 256;

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
    hasher: IdState,
    /// Replaced whole by [`Self::set_policies`]; each decision round works on one set.
    policies: RwLock<Arc<PolicySet>>,
    counters: Counters,
    clock: Elapsed,
    decision_wait: u64,
    after_root: u64,
    max_spans: usize,
    /// `maximum_trace_size_bytes`, `usize::MAX` when off.
    max_trace_bytes: usize,
    shard_traces: usize,
    shard_bytes: usize,
    job_key: String,
    /// Seeds the fingerprints of job ids in `jobs`.
    job_ids: IdState,
    /// Jobs kept for an error, with the earliest segment so kept (`i64::MIN` when unknown).
    jobs: Mutex<BoundedMap<u64, i64>>,
    /// True once any job was kept for an error: until then no trace needs its job id looked up.
    any_job: AtomicBool,
    job_decision: Arc<KeptDecision>,
    drop_pending_on_shutdown: bool,
    resource: RwLock<Arc<[KeyValue]>>,
    decision_hook: Option<DecisionHook>,
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
        // Traces arriving within one wait, the shorter of the two (the root-based one may be
        // off: `Duration::MAX`).
        let wait = config
            .decision_wait_after_root
            .min(config.decision_wait)
            .as_secs()
            .max(1);
        let expected = config
            .expected_new_traces_per_sec
            .saturating_mul(usize::try_from(wait).unwrap_or(usize::MAX))
            .min(config.num_traces)
            / shards;
        let shard_list = (0..shards)
            .map(|_| {
                Mutex::new(Shard::new(
                    per(config.decision_cache.sampled_cache_size),
                    per(config.decision_cache.non_sampled_cache_size),
                    expected,
                    Arc::clone(policies.names()),
                ))
            })
            .collect();
        Ok(Self {
            shards: shard_list,
            shard_mask: shards - 1,
            hasher: id_state(),
            policies: RwLock::new(Arc::new(policies)),
            counters: Counters::default(),
            clock: Elapsed::new(clock),
            decision_wait: nanos(config.decision_wait),
            after_root: nanos(config.decision_wait_after_root),
            max_spans: config.max_spans_per_trace,
            max_trace_bytes: match config.maximum_trace_size_bytes {
                0 => usize::MAX,
                n => n,
            },
            shard_traces: (config.num_traces / shards).max(1),
            shard_bytes: (config.max_buffer_bytes / shards).max(1),
            job_key: config.job_id_key.clone(),
            job_ids: id_state(),
            jobs: Mutex::new(BoundedMap::new(config.job_cache_size)),
            any_job: AtomicBool::new(false),
            job_decision: Arc::new(KeptDecision::new(Arc::from(JOB_LINKAGE_POLICY), 1.0)),
            drop_pending_on_shutdown: config.drop_pending_traces_on_shutdown,
            resource: RwLock::new(Arc::from(Vec::new())),
            decision_hook: None,
        })
    }

    /// Has `hook` called with every round of decisions, before the decided spans are handed
    /// on or freed (see [`DecisionHook`]). Late spans that follow a cached decision are not
    /// decisions and are not reported.
    #[must_use]
    pub fn with_decision_hook(mut self, hook: DecisionHook) -> Self {
        self.decision_hook = Some(hook);
        self
    }

    /// Replaces the policies with `config.policies` (and its `sample_on_first_match`), e.g. on
    /// a configuration reload: traces decided from now on (buffered ones included) are
    /// decided by the new set; a round already deciding finishes with the old one. Buffered
    /// spans, the decision caches and every other setting stay as they are. Counters of a
    /// policy whose name is in both sets carry on; rate-limiting policies start afresh.
    /// Returns the number of policies now.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` is invalid; the running policies stay.
    pub fn set_policies(&self, config: &SamplerConfig) -> Result<usize, ConfigError> {
        let set = Arc::new(config.compile()?);
        let n = set.len();
        *self.policies.write() = set;
        Ok(n)
    }

    /// The policy set decisions use now.
    fn policies(&self) -> Arc<PolicySet> {
        Arc::clone(&self.policies.read())
    }

    /// The clock reading stamped on spans arriving now (see [`REPLAY_HORIZON`]).
    fn now(&self) -> u64 {
        self.clock.nanos().saturating_add(REPLAY_HORIZON)
    }

    fn shard(&self, trace_id: TraceId) -> &Mutex<Shard<S>> {
        let h = self.hasher.hash_one(trace_id);
        &self.shards[(h >> 32) as usize & self.shard_mask]
    }

    /// Offers one finished span. Spans of traces decided here (late spans of kept traces, traces
    /// that reached `max_spans_per_trace`, traces decided early under pressure) that are kept are
    /// appended to `kept`, annotated. Never blocks on I/O; holds its shard's lock only briefly,
    /// and not while a trace it triggers is decided.
    pub fn ingest(&self, span: S, kept: &mut Vec<S>) {
        self.ingest_at(span, self.now(), kept);
    }

    /// [`Self::ingest`] for a run of spans, reading the clock once for all of them (spans that
    /// arrive together are stamped with the same time). Returns how many spans were offered.
    pub fn ingest_batch<I: IntoIterator<Item = S>>(&self, spans: I, kept: &mut Vec<S>) -> usize {
        self.ingest_batch_at(spans, self.now(), kept)
    }

    /// [`Self::ingest_batch`] for spans that arrived `age` ago (replayed from a log after a
    /// restart): their traces' deadlines count from then, so a decision timer resumes rather
    /// than restarts. Ages beyond a week are taken as a week.
    pub fn ingest_batch_aged<I: IntoIterator<Item = S>>(
        &self,
        spans: I,
        age: std::time::Duration,
        kept: &mut Vec<S>,
    ) -> usize {
        let now = self.now().saturating_sub(nanos(age).min(REPLAY_HORIZON));
        self.ingest_batch_at(spans, now, kept)
    }

    fn ingest_batch_at<I: IntoIterator<Item = S>>(
        &self,
        spans: I,
        now: u64,
        kept: &mut Vec<S>,
    ) -> usize {
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
        let slot = self.shard(trace_id);
        let mut shard = slot.lock();
        shard.stats.spans_received += 1;
        let (len, bytes) = match shard.offer(span, now, self.after_root) {
            Offer::Buffered(len, bytes) => (len, bytes),
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
            Offer::Deciding(span) => {
                shard.hold(span, now);
                return;
            }
        };
        let whole = len >= self.max_spans || bytes > self.max_trace_bytes;
        if !whole && shard.traces.len() <= self.shard_traces && shard.bytes <= self.shard_bytes {
            shard.compact();
            return;
        }
        let trigger = whole.then_some(if len >= self.max_spans {
            Trigger::MaxSpans
        } else {
            Trigger::MaxBytes
        });
        self.decide_now(slot, shard, trace_id, trigger, now, kept);
    }

    /// The ingest path that decides: `trace_id` reached `max_spans_per_trace` or
    /// `maximum_trace_size_bytes` (`whole` says which), or the shard is over a bound. Traces are
    /// only taken out under the lock; they are decided after it.
    #[inline(never)]
    fn decide_now(
        &self,
        slot: &Mutex<Shard<S>>,
        mut shard: MutexGuard<'_, Shard<S>>,
        trace_id: TraceId,
        whole: Option<Trigger>,
        now: u64,
        kept: &mut Vec<S>,
    ) {
        let mut taken = Vec::new();
        if let Some(trigger) = whole {
            taken.extend(shard.take(trace_id, trigger));
        }
        while shard.traces.len() > self.shard_traces || shard.bytes > self.shard_bytes {
            let Some(oldest) = shard.pop_for_pressure() else {
                break;
            };
            taken.extend(shard.take(oldest, Trigger::Pressure));
        }
        shard.compact();
        drop(shard);
        if !taken.is_empty() {
            let resource = self.resource.read().clone();
            let mut round = Round::new(self.policies());
            round.taken = taken;
            self.decide_round(slot, &mut round, now, &resource, kept);
        }
    }

    /// Decides every trace whose deadline passed; kept spans are appended to `kept`.
    /// Returns the number of traces decided.
    pub fn poll(&self, kept: &mut Vec<S>) -> usize {
        let now = self.now();
        let resource = self.resource.read().clone();
        let mut round = Round::new(self.policies());
        let mut decided = 0;
        for slot in self.shards.iter() {
            loop {
                {
                    let mut shard = slot.lock();
                    while round.taken.len() < POLL_BATCH {
                        let Some((trace_id, due)) =
                            shard.pop_due(now, self.decision_wait, self.after_root)
                        else {
                            break;
                        };
                        let trigger = match due {
                            Due::Root => Trigger::Root,
                            Due::Wait => Trigger::Wait,
                        };
                        round.taken.extend(shard.take(trace_id, trigger));
                    }
                    shard.compact();
                }
                if round.taken.is_empty() {
                    break;
                }
                decided += round.taken.len();
                self.decide_round(slot, &mut round, now, &resource, kept);
            }
        }
        decided
    }

    /// Decides every pending trace now; kept spans are appended to `kept`. Traces another
    /// thread is deciding at that moment are that thread's to finish (their kept spans go to
    /// its caller). Returns the number of traces decided.
    pub fn flush(&self, kept: &mut Vec<S>) -> usize {
        let now = self.now();
        let resource = self.resource.read().clone();
        let mut round = Round::new(self.policies());
        let mut decided = 0;
        for slot in self.shards.iter() {
            slot.lock().take_all(Trigger::Flush, &mut round.taken);
            if !round.taken.is_empty() {
                decided += round.taken.len();
                self.decide_round(slot, &mut round, now, &resource, kept);
            }
        }
        decided
    }

    /// What to do with pending traces at shutdown: [`Self::flush`] them, or, with
    /// `drop_pending_traces_on_shutdown`, drop them undecided (counted).
    pub fn shutdown(&self, kept: &mut Vec<S>) -> usize {
        if !self.drop_pending_on_shutdown {
            return self.flush(kept);
        }
        let mut entries: Vec<TraceEntry<S>> = Vec::new();
        let mut dropped = 0;
        for slot in self.shards.iter() {
            slot.lock().drain_undecided(&mut entries);
            // Counted and freed with the lock released.
            for entry in entries.drain(..) {
                self.counters
                    .traces_dropped_on_shutdown
                    .fetch_add(1, Relaxed);
                self.counters
                    .spans_dropped_on_shutdown
                    .fetch_add(entry.spans.len() as u64, Relaxed);
                dropped += 1;
            }
        }
        dropped
    }

    /// Writes a decision made by an earlier run (restored from a log) into the decision
    /// caches: late spans of `trace_id` follow it, kept (`Some`) or dropped (`None`).
    pub fn restore_decision(&self, trace_id: TraceId, decision: Option<Arc<KeptDecision>>) {
        self.shard(trace_id).lock().remember(trace_id, decision);
    }

    /// Sets the resource attributes that attribute policies consult besides span attributes
    /// (the SDK processor passes its tracer provider's resource).
    pub fn set_resource_attributes(&self, attributes: Vec<KeyValue>) {
        *self.resource.write() = Arc::from(attributes);
    }

    /// A snapshot of every counter.
    #[must_use]
    pub fn metrics(&self) -> SamplerMetrics {
        let policies = self.policies();
        let mut m = SamplerMetrics {
            policies: (0..policies.len())
                .map(|i| PolicyMetrics::named(policies.name(i)))
                .collect(),
            ..SamplerMetrics::default()
        };
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            if s.tally.names.generation < policies.names().generation {
                s.tally.follow(policies.names());
            }
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
