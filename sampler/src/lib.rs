//! traceq-sampler: tail sampling for traces, one core behind two front doors.
//!
//! ```text
//!  SDK spans ──► TailSamplingProcessor::on_end ─┐            ┌─► kept? ── annotate ──► exporter
//!                                               ├─► TailSampler (sharded buffer per trace id)
//!  OTLP spans ─► traceq collector receivers ────┘      │ decide when: root ended + quiet period,
//!                                                      │ decision_wait, max spans, memory pressure,
//!                                                      │ flush ── policies (Collector YAML syntax)
//!                                                      └─► decision caches: late spans follow
//! ```
//!
//! Spans are buffered per trace; a trace is decided when its local root span ended and
//! `decision_wait_after_root` passed quietly, when `decision_wait` passed since its first span,
//! when it reaches `max_spans_per_trace`, early (oldest first) when the buffer is full, or on
//! flush. Policies use the OpenTelemetry Collector `tail_sampling` syntax and semantics: any
//! sampling policy keeps a trace, a `drop` policy wins over all. Kept spans carry the deciding
//! policy and the adjusted count. Traces sharing a job id are kept together once one segment was
//! kept for an error.
//!
//! # Quick start
//!
//! ```
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use traceq_sampler::{SamplerConfig, TailSamplingProcessor};
//!
//! // Every trace with an error span, plus 10% of the rest:
//! let processor = TailSamplingProcessor::new(InMemorySpanExporter::default(), SamplerConfig::default())?;
//! let provider = SdkTracerProvider::builder().with_span_processor(processor).build();
//! # provider.shutdown().unwrap();
//! # Ok::<(), traceq_sampler::ConfigError>(())
//! ```
//!
//! # Where traceq differs from the Collector's `tail_sampling`
//!
//! - A trace is decided `decision_wait_after_root` (2 s) after its local root span ended, not
//!   only `decision_wait` after its first span; a span whose parent is remote is a local root.
//!   The Collector's `decision_wait_after_root_received` is read as this setting (its `0s`
//!   turning it off, as in the Collector); the wait restarts with each later span.
//! - `maximum_trace_size_bytes` decides a trace that grows past it at once, with the spans it
//!   has, where the Collector drops it; `block_on_overflow` is honoured by the collector
//!   (refusing senders with a retryable error while the buffer is full, or deciding early) and
//!   refused as `true` by the in-process processor, whose `on_end` never blocks.
//! - Memory is bounded in bytes too, and a full buffer decides its oldest traces early (counted
//!   in `traces_decided_early`) instead of dropping them undecided, preferring, among the 16
//!   oldest, one whose root span has ended. A trace decided early while still in progress
//!   decides its later spans too (they follow the cached decision), so a late error span of a
//!   trace dropped under pressure is dropped: size the buffer so pressure stays rare.
//! - Decision caches are on by default (`decision_cache` sizes of 0 turn them off); dropped ids
//!   are kept in a compact fingerprint filter.
//! - `invert_match` simply inverts a policy (the Collector's `disableinvertdecisions` behaviour);
//!   use `drop` to veto.
//! - `ottl_condition` compiles its conditions when the configuration is read and evaluates them
//!   on the spans as stored; it supports the OTTL subset the Collector's examples use (scalar
//!   paths of the span and span-event contexts, literals, comparisons, math, `and` / `or` /
//!   `not`, and the converters `IsMatch`, `IsString`, `IsInt`, `IsBool`, `IsDouble`,
//!   `IsRootSpan`, `Len`, `Concat`, `TraceID`, `SpanID`); anything else is refused when the
//!   configuration is read, naming the policy, the condition and the function or path.
//! - `composite` evaluates in `policy_order` (the Collector ignores it, contrib#36955), passes a
//!   trace that a sub-policy over its share matched on to the next sub-policy (the Collector
//!   drops it, contrib#36959), and holds `max_total_spans_per_second` across all sub-policies.
//! - `sample_on_first_match` stops at the first sampling policy; drop policies are always
//!   evaluated first. A kept trace is credited to the matching policy with the highest keep
//!   probability, so an error trace also picked by a 10% policy has adjusted count 1.
//! - Kept spans carry `traceq.sampling.policy` and `traceq.sampling.adjusted_count`, and for
//!   probabilistic keeps the tracestate `ot=th:<threshold>` of the keep probability. The
//!   threshold states the probability; the randomness it was compared with is the salted hash of
//!   the trace id (see the `probabilistic` policy), not the trace id's low 56 bits.
//! - `rate_limiting` and `bytes_limiting` keeps get adjusted count 1 (a rate is not a probability).

mod buffer;
mod cache;
mod clock;
#[cfg(test)]
mod collector_example;
mod config;
mod decision;
mod duration;
mod error;
mod hash;
mod metrics;
mod ottl;
mod policy;
mod processor;
mod sampler;
mod span;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(any(test, feature = "testing"))]
pub use clock::ManualClock;
pub use clock::{Clock, SystemClock};
pub use config::{
    DecisionCacheConfig, SamplerConfig, DEFAULT_DECISION_WAIT, DEFAULT_DECISION_WAIT_AFTER_ROOT,
    DEFAULT_JOB_CACHE_SIZE, DEFAULT_JOB_ID_KEY, DEFAULT_MAXIMUM_TRACE_SIZE_BYTES,
    DEFAULT_MAX_BUFFER_BYTES, DEFAULT_MAX_SPANS_PER_TRACE, DEFAULT_NON_SAMPLED_CACHE_SIZE,
    DEFAULT_NUM_SHARDS, DEFAULT_NUM_TRACES, DEFAULT_SAMPLED_CACHE_SIZE,
    DEFAULT_SAMPLING_PERCENTAGE,
};
pub use decision::{
    KeptDecision, ADJUSTED_COUNT_ATTRIBUTE, JOB_LINKAGE_POLICY, POLICY_ATTRIBUTE, SEGMENT_ATTRIBUTE,
};
pub use duration::{parse_duration, DurationError};
pub use error::ConfigError;
pub use metrics::{PolicyMetrics, SamplerMetrics};
pub use policy::{
    AndConfig, BooleanAttributeConfig, BytesLimitingConfig, CompositeConfig, DropConfig,
    LatencyConfig, NotConfig, NumericAttributeConfig, OttlConditionConfig, OttlErrorMode,
    PolicyConfig, PolicyType, ProbabilisticConfig, RateAllocationConfig, RateLimitingConfig,
    SpanCountConfig, StatusCodeConfig, StringAttributeConfig, TraceStateConfig,
};
pub use processor::{
    ProcessorConfig, SamplerMetricsHandle, TailSamplingProcessor, DEFAULT_FLUSH_TIMEOUT,
    DEFAULT_MAX_EXPORT_BATCH_SIZE, DEFAULT_MAX_QUEUE_SIZE, DEFAULT_POLL_INTERVAL,
};
pub use sampler::{DecisionHook, TailSampler};
pub use span::{AttrValue, SpanView, StatusKind};
pub use span::{EventView, SpanKindCode};
