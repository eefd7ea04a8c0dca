//! The span view: the little the sampler needs to know about a span.
//!
//! Why a trait: the same buffer and policies serve two front doors, the SDK's [`SpanData`] (this
//! crate's [`TailSamplingProcessor`](crate::TailSamplingProcessor)) and OTLP protobuf spans in
//! the collector. Each span type implements [`SpanView`]; the core is generic over it and never
//! copies a span into another representation.

use std::mem::size_of;
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, Status, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;

use crate::decision::KeptDecision;
#[cfg(test)]
use crate::decision::{ADJUSTED_COUNT_ATTRIBUTE, POLICY_ATTRIBUTE};

/// A borrowed scalar attribute value, as policies see it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum AttrValue<'a> {
    /// A string.
    Str(&'a str),
    /// A signed integer.
    I64(i64),
    /// A double.
    F64(f64),
    /// A boolean.
    Bool(bool),
}

/// A span's status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusKind {
    /// No status was set.
    Unset,
    /// The span was marked successful.
    Ok,
    /// The span failed.
    Error,
}

/// Read access to a finished span, plus the one write the sampler does: annotating kept spans.
pub trait SpanView: Send + 'static {
    /// The span's trace id.
    fn trace_id(&self) -> TraceId;
    /// True when this span is this process's root: it has no parent, or its parent is remote.
    fn is_local_root(&self) -> bool;
    /// The span's status code.
    fn status(&self) -> StatusKind;
    /// When the span started.
    fn start_time(&self) -> SystemTime;
    /// When the span ended.
    fn end_time(&self) -> SystemTime;
    /// The scalar attribute under `key`, if any.
    fn attribute(&self, key: &str) -> Option<AttrValue<'_>>;
    /// The value of `key` in the span's W3C tracestate, if any.
    fn trace_state(&self, key: &str) -> Option<&str>;
    /// Bytes the span occupies: its inline size (`size_of::<Self>()`) plus its heap allocations
    /// (an estimate). The buffer charges the inline part through its vector's capacity.
    fn size_bytes(&self) -> usize;
    /// An identity and the size of memory this span shares with other spans (in the collector:
    /// its resource and scope); a trace is charged that size once for each run of consecutive
    /// spans with the same identity.
    ///
    /// The identity must tell apart any two shared blocks alive at once (the address of the
    /// shared allocation will do: the span keeps it alive). A span returning `None` shares
    /// nothing and leaves the run of the spans around it unbroken. The size is charged to the
    /// trace (so it counts towards `max_buffer_bytes`) and released when the trace leaves the
    /// buffer.
    fn shared_bytes(&self) -> Option<(usize, usize)> {
        None
    }
    /// Records a keep decision on the span (policy, adjusted count, tracestate threshold).
    fn annotate(&mut self, decision: &KeptDecision);
}

impl<T: SpanView> SpanView for Box<T> {
    fn trace_id(&self) -> TraceId {
        (**self).trace_id()
    }
    fn is_local_root(&self) -> bool {
        (**self).is_local_root()
    }
    fn status(&self) -> StatusKind {
        (**self).status()
    }
    fn start_time(&self) -> SystemTime {
        (**self).start_time()
    }
    fn end_time(&self) -> SystemTime {
        (**self).end_time()
    }
    fn attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        (**self).attribute(key)
    }
    fn trace_state(&self, key: &str) -> Option<&str> {
        (**self).trace_state(key)
    }
    fn size_bytes(&self) -> usize {
        size_of::<Self>() + (**self).size_bytes()
    }
    fn shared_bytes(&self) -> Option<(usize, usize)> {
        (**self).shared_bytes()
    }
    fn annotate(&mut self, decision: &KeptDecision) {
        (**self).annotate(decision);
    }
}

/// The scalar view of an attribute value (arrays are not matched by policies).
pub(crate) fn value_view(v: &Value) -> Option<AttrValue<'_>> {
    match v {
        Value::String(s) => Some(AttrValue::Str(s.as_str())),
        Value::I64(i) => Some(AttrValue::I64(*i)),
        Value::F64(f) => Some(AttrValue::F64(*f)),
        Value::Bool(b) => Some(AttrValue::Bool(*b)),
        _ => None,
    }
}

/// Looks `key` up in a list of attributes (a resource's, for instance).
pub(crate) fn find_attribute<'a>(attrs: &'a [KeyValue], key: &str) -> Option<AttrValue<'a>> {
    attrs
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .and_then(|kv| value_view(&kv.value))
}

fn value_heap(v: &Value) -> usize {
    match v {
        Value::String(s) => s.as_str().len(),
        Value::Array(_) => 64,
        _ => 0,
    }
}

fn attributes_heap(attrs: &[KeyValue], capacity: usize) -> usize {
    capacity * size_of::<KeyValue>() + attrs.iter().map(|kv| value_heap(&kv.value)).sum::<usize>()
}

impl SpanView for SpanData {
    fn trace_id(&self) -> TraceId {
        self.span_context.trace_id()
    }

    fn is_local_root(&self) -> bool {
        self.parent_span_is_remote || self.parent_span_id == opentelemetry::trace::SpanId::INVALID
    }

    fn status(&self) -> StatusKind {
        match self.status {
            Status::Unset => StatusKind::Unset,
            Status::Ok => StatusKind::Ok,
            Status::Error { .. } => StatusKind::Error,
        }
    }

    fn start_time(&self) -> SystemTime {
        self.start_time
    }

    fn end_time(&self) -> SystemTime {
        self.end_time
    }

    fn attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        find_attribute(&self.attributes, key)
    }

    fn trace_state(&self, key: &str) -> Option<&str> {
        self.span_context.trace_state().get(key)
    }

    fn size_bytes(&self) -> usize {
        let name = match &self.name {
            std::borrow::Cow::Owned(s) => s.capacity(),
            std::borrow::Cow::Borrowed(_) => 0,
        };
        let status = match &self.status {
            Status::Error { description } => description.len(),
            _ => 0,
        };
        let events: usize = self.events.events.capacity()
            * size_of::<opentelemetry::trace::Event>()
            + self
                .events
                .events
                .iter()
                .map(|e| attributes_heap(&e.attributes, e.attributes.capacity()))
                .sum::<usize>();
        let links: usize = self.links.links.capacity() * size_of::<opentelemetry::trace::Link>()
            + self
                .links
                .links
                .iter()
                .map(|l| attributes_heap(&l.attributes, l.attributes.capacity()))
                .sum::<usize>();
        size_of::<SpanData>()
            + name
            + status
            + attributes_heap(&self.attributes, self.attributes.capacity())
            + events
            + links
    }

    fn annotate(&mut self, decision: &KeptDecision) {
        self.attributes.extend_from_slice(decision.attributes());
        let cx = &self.span_context;
        if let Some(state) = decision.trace_state_for(cx.trace_state()) {
            self.span_context = SpanContext::new(
                cx.trace_id(),
                cx.span_id(),
                cx.trace_flags(),
                cx.is_remote(),
                state,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestSpan;

    #[test]
    fn span_without_parent_or_with_remote_parent_should_be_a_local_root() {
        assert!(TestSpan::new(1, 1).build().is_local_root());
        assert!(TestSpan::new(1, 2).remote_parent(9).build().is_local_root());
        assert!(!TestSpan::new(1, 3).child_of(1).build().is_local_root());
    }

    #[test]
    fn annotate_should_add_policy_count_and_threshold() {
        let mut span = TestSpan::new(1, 1).build();
        span.annotate(&KeptDecision::new("p10".into(), 0.5));
        assert_eq!(
            span.attribute(POLICY_ATTRIBUTE),
            Some(AttrValue::Str("p10"))
        );
        assert_eq!(
            span.attribute(ADJUSTED_COUNT_ATTRIBUTE),
            Some(AttrValue::F64(2.0))
        );
        assert_eq!(span.trace_state("ot"), Some("th:8"));
    }

    #[test]
    fn annotate_with_certainty_should_not_touch_tracestate() {
        let mut span = TestSpan::new(1, 1).build();
        span.annotate(&KeptDecision::new("errors".into(), 1.0));
        assert_eq!(span.trace_state("ot"), None);
    }

    #[test]
    fn size_should_count_inline_and_heap_bytes() {
        let small = TestSpan::new(1, 1).build();
        let big = TestSpan::new(1, 1)
            .attr(KeyValue::new("k", "x".repeat(1000)))
            .build();
        assert!(small.size_bytes() >= size_of::<SpanData>());
        assert!(big.size_bytes() >= small.size_bytes() + 1000);
    }
}
