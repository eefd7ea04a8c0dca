//! Test doubles shared by unit tests, integration tests, benches and users (feature `testing`):
//! a builder for finished SDK spans, and [`PolicyProbe`], which runs a configuration's policies
//! on one trace without the buffer (to measure a policy's own cost, or to see what a
//! configuration decides). The manual clock is [`ManualClock`](crate::ManualClock).

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::config::SamplerConfig;
use crate::error::ConfigError;
use crate::metrics::PolicyTally;
use crate::policy::{EvalContext, Outcome, PolicySet};
use crate::span::SpanView;

/// Builds a finished [`SpanData`] in one expression.
///
/// # Examples
///
/// ```
/// use traceq_sampler::testing::TestSpan;
///
/// let root = TestSpan::new(7, 1).build();
/// let child = TestSpan::new(7, 2).child_of(1).error().duration_ms(30).build();
/// assert_eq!(child.parent_span_id, opentelemetry::trace::SpanId::from(1));
/// # let _ = root;
/// ```
#[derive(Debug, Clone)]
pub struct TestSpan {
    data: SpanData,
}

impl TestSpan {
    /// A sampled, unparented (root) span of trace `trace_id`, lasting 1 ms from the Unix epoch.
    #[must_use]
    pub fn new(trace_id: u128, span_id: u64) -> Self {
        let start = SystemTime::UNIX_EPOCH;
        Self {
            data: SpanData {
                span_context: SpanContext::new(
                    TraceId::from(trace_id),
                    SpanId::from(span_id),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::NONE,
                ),
                parent_span_id: SpanId::INVALID,
                parent_span_is_remote: false,
                span_kind: SpanKind::Internal,
                name: Cow::Borrowed("test"),
                start_time: start,
                end_time: start + Duration::from_millis(1),
                attributes: Vec::new(),
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::Unset,
                instrumentation_scope: InstrumentationScope::builder("traceq-test").build(),
            },
        }
    }

    /// Makes the span a child of the local span `parent`.
    #[must_use]
    pub fn child_of(mut self, parent: u64) -> Self {
        self.data.parent_span_id = SpanId::from(parent);
        self.data.parent_span_is_remote = false;
        self
    }

    /// Makes the span a child of the remote span `parent` (so it is this process's root).
    #[must_use]
    pub fn remote_parent(mut self, parent: u64) -> Self {
        self.data.parent_span_id = SpanId::from(parent);
        self.data.parent_span_is_remote = true;
        self
    }

    /// Sets status Error.
    #[must_use]
    pub fn error(mut self) -> Self {
        self.data.status = Status::error("failed");
        self
    }

    /// Sets status Error with `message` as its description.
    #[must_use]
    pub fn error_message(mut self, message: &str) -> Self {
        self.data.status = Status::error(message.to_owned());
        self
    }

    /// Sets the span's name.
    #[must_use]
    pub fn name(mut self, name: &str) -> Self {
        self.data.name = Cow::Owned(name.to_owned());
        self
    }

    /// Sets the span's kind.
    #[must_use]
    pub fn kind(mut self, kind: SpanKind) -> Self {
        self.data.span_kind = kind;
        self
    }

    /// Adds an event at the span's start time.
    #[must_use]
    pub fn event(mut self, name: &str, attributes: Vec<KeyValue>) -> Self {
        let at = self.data.start_time;
        self.data
            .events
            .events
            .push(Event::new(name.to_owned(), at, attributes, 0));
        self
    }

    /// Sets the instrumentation scope's name and version.
    #[must_use]
    pub fn scope(mut self, name: &str, version: &str) -> Self {
        self.data.instrumentation_scope = InstrumentationScope::builder(name.to_owned())
            .with_version(version.to_owned())
            .build();
        self
    }

    /// Clears the sampled trace flag (a span recorded but not sampled upstream).
    #[must_use]
    pub fn unsampled(mut self) -> Self {
        let cx = &self.data.span_context;
        self.data.span_context = SpanContext::new(
            cx.trace_id(),
            cx.span_id(),
            TraceFlags::default(),
            cx.is_remote(),
            cx.trace_state().clone(),
        );
        self
    }

    /// Sets status Ok.
    #[must_use]
    pub fn ok(mut self) -> Self {
        self.data.status = Status::Ok;
        self
    }

    /// Adds an attribute.
    #[must_use]
    pub fn attr(mut self, kv: KeyValue) -> Self {
        self.data.attributes.push(kv);
        self
    }

    /// Starts the span `offset_ms` after the epoch, keeping its duration.
    #[must_use]
    pub fn start_ms(mut self, offset_ms: u64) -> Self {
        let d = self
            .data
            .end_time
            .duration_since(self.data.start_time)
            .unwrap_or_default();
        self.data.start_time = SystemTime::UNIX_EPOCH + Duration::from_millis(offset_ms);
        self.data.end_time = self.data.start_time + d;
        self
    }

    /// Sets the span's duration.
    #[must_use]
    pub fn duration_ms(mut self, ms: u64) -> Self {
        self.data.end_time = self.data.start_time + Duration::from_millis(ms);
        self
    }

    /// Sets a tracestate entry.
    #[must_use]
    pub fn trace_state(mut self, key: &str, value: &str) -> Self {
        let cx = &self.data.span_context;
        let state = cx
            .trace_state()
            .insert(key.to_owned(), value.to_owned())
            .unwrap_or_else(|_| cx.trace_state().clone());
        self.data.span_context = SpanContext::new(
            cx.trace_id(),
            cx.span_id(),
            cx.trace_flags(),
            cx.is_remote(),
            state,
        );
        self
    }

    /// The finished span.
    #[must_use]
    pub fn build(self) -> SpanData {
        self.data
    }
}

/// A configuration's policies, compiled, applied to one trace at a time without buffering it.
///
/// What the sampler decides for a whole trace, minus everything around it: no buffer, no
/// decision caches, no job linkage. Rate policies count every call at the clock reading given.
///
/// # Examples
///
/// ```
/// use traceq_sampler::testing::{PolicyProbe, TestSpan};
/// use traceq_sampler::SamplerConfig;
///
/// let cfg = SamplerConfig::from_yaml(
///     "policies: [{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]",
/// )?;
/// let mut probe = PolicyProbe::new(&cfg)?;
/// assert_eq!(probe.decide(&[TestSpan::new(1, 1).error().build()], 0), Some("errors"));
/// assert_eq!(probe.decide(&[TestSpan::new(2, 1).build()], 0), None);
/// # Ok::<(), traceq_sampler::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct PolicyProbe {
    policies: PolicySet,
    tallies: Vec<PolicyTally>,
}

impl PolicyProbe {
    /// Compiles the policies of `config`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the configuration is invalid.
    pub fn new(config: &SamplerConfig) -> Result<Self, ConfigError> {
        let policies = config.compile()?;
        let tallies = vec![PolicyTally::default(); policies.len()];
        Ok(Self { policies, tallies })
    }

    /// The policy credited with keeping the trace of `spans` (all of one trace, at least one),
    /// or `None` when it is not kept; `now_nanos` is the clock reading rate policies see.
    ///
    /// # Panics
    ///
    /// When `spans` is empty.
    pub fn decide<S: SpanView>(&mut self, spans: &[S], now_nanos: u64) -> Option<&str> {
        assert!(!spans.is_empty(), "a trace has at least one span");
        let cx = EvalContext {
            trace_id: spans[0].trace_id(),
            resource: &[],
            // Only `bytes_limiting` reads the size; summing it costs more than most policies.
            bytes: if self.policies.reads_bytes() {
                spans.iter().map(SpanView::size_bytes).sum()
            } else {
                0
            },
            now_nanos,
        };
        match self.policies.evaluate(spans, &cx, &mut self.tallies) {
            Outcome::Keep { index } => Some(self.policies.name(index)),
            Outcome::NotSampled | Outcome::Dropped { .. } => None,
        }
    }
}
