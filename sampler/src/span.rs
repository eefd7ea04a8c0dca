//! The span view: the little the sampler needs to know about a span.
//!
//! Why a trait: the same buffer and policies serve two front doors, the SDK's [`SpanData`] (this
//! crate's [`TailSamplingProcessor`](crate::TailSamplingProcessor)) and OTLP protobuf spans in
//! the collector. Each span type implements [`SpanView`]; the core is generic over it and never
//! copies a span into another representation.
//!
//! Why so many read methods, some with defaults: the attribute policies need little, but an
//! `ottl_condition` may read any field OTTL names (name, kind, ids, scope, events). Every read
//! borrows from the span as it is stored (the collector's encoded bytes), so a condition costs
//! no allocation. The defaults describe a span that lacks the field (no name, no events), so a
//! span type made only for the attribute policies stays small.

use std::mem::size_of;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Event, SpanContext, SpanKind, Status, TraceId};
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

/// A span's kind, numbered as OTLP numbers it (OTTL's `kind` path reads these numbers, and its
/// `SPAN_KIND_*` names stand for them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SpanKindCode {
    /// No kind was given (0).
    #[default]
    Unspecified = 0,
    /// An internal operation (1).
    Internal = 1,
    /// The server side of a request (2).
    Server = 2,
    /// The client side of a request (3).
    Client = 3,
    /// A producer of a message (4).
    Producer = 4,
    /// A consumer of a message (5).
    Consumer = 5,
}

impl SpanKindCode {
    /// The kind for an OTLP `Span.kind` number; numbers OTLP does not define are `Unspecified`.
    #[must_use]
    pub fn from_otlp(n: u64) -> Self {
        match n {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }

    /// The kind's name as the Collector prints it (`Server`), what OTTL's `kind.string` reads.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "Unspecified",
            Self::Internal => "Internal",
            Self::Server => "Server",
            Self::Client => "Client",
            Self::Producer => "Producer",
            Self::Consumer => "Consumer",
        }
    }
}

impl From<&SpanKind> for SpanKindCode {
    fn from(kind: &SpanKind) -> Self {
        match kind {
            SpanKind::Internal => Self::Internal,
            SpanKind::Server => Self::Server,
            SpanKind::Client => Self::Client,
            SpanKind::Producer => Self::Producer,
            SpanKind::Consumer => Self::Consumer,
        }
    }
}

/// Read access to one event of a span (what an `ottl_condition`'s `spanevent` conditions read).
pub trait EventView {
    /// The event's name.
    fn name(&self) -> &str;
    /// When the event happened, in nanoseconds since the Unix epoch.
    fn time_unix_nano(&self) -> u64;
    /// The event's scalar attribute under `key`, if any.
    fn attribute(&self, key: &str) -> Option<AttrValue<'_>>;
}

impl<T: EventView + ?Sized> EventView for &T {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn time_unix_nano(&self) -> u64 {
        (**self).time_unix_nano()
    }
    fn attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        (**self).attribute(key)
    }
}

/// The event type of spans that carry no events (the default of [`SpanView::events`]).
#[derive(Debug, Clone, Copy)]
enum NoEvent {}

impl EventView for NoEvent {
    fn name(&self) -> &str {
        match *self {}
    }
    fn time_unix_nano(&self) -> u64 {
        match *self {}
    }
    fn attribute(&self, _: &str) -> Option<AttrValue<'_>> {
        match *self {}
    }
}

/// Nanoseconds since the Unix epoch (0 before it, saturating far after it).
pub(crate) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
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
    /// The scalar attribute under `key`, if any: the span's own, or (for span types that carry
    /// their resource, as the collector's do) the resource's, as the Collector's attribute
    /// policies look at both.
    fn attribute(&self, key: &str) -> Option<AttrValue<'_>>;
    /// The value of `key` in the span's W3C tracestate, if any.
    fn trace_state(&self, key: &str) -> Option<&str>;
    /// The span's own scalar attribute under `key`, never its resource's (OTTL's
    /// `attributes["key"]`). Defaults to [`Self::attribute`], right for span types whose
    /// `attribute` reads only the span.
    fn span_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        self.attribute(key)
    }
    /// The scalar attribute under `key` of the resource the span came with (OTTL's
    /// `resource.attributes["key"]`); `None` for span types that do not carry their resource
    /// (the SDK's spans: their resource is the tracer provider's, given to the sampler once).
    fn resource_attribute(&self, _key: &str) -> Option<AttrValue<'_>> {
        None
    }
    /// The span's name.
    fn name(&self) -> &str {
        ""
    }
    /// The span's kind.
    fn kind(&self) -> SpanKindCode {
        SpanKindCode::Unspecified
    }
    /// The span's id (all zeros when unknown).
    fn span_id(&self) -> [u8; 8] {
        [0; 8]
    }
    /// The parent span's id, all zeros for a span without a parent.
    fn parent_span_id(&self) -> [u8; 8] {
        [0; 8]
    }
    /// The status message (empty unless the status is an error with a description).
    fn status_message(&self) -> &str {
        ""
    }
    /// The W3C trace flags of the span (bit 0: sampled), as OTLP's `Span.flags` low byte.
    fn trace_flags(&self) -> u8 {
        0
    }
    /// The instrumentation scope's name.
    fn scope_name(&self) -> &str {
        ""
    }
    /// The instrumentation scope's version.
    fn scope_version(&self) -> &str {
        ""
    }
    /// The span's events, in order.
    fn events(&self) -> impl Iterator<Item = impl EventView + '_> + '_ {
        std::iter::empty::<NoEvent>()
    }
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
    fn span_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        (**self).span_attribute(key)
    }
    fn resource_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        (**self).resource_attribute(key)
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn kind(&self) -> SpanKindCode {
        (**self).kind()
    }
    fn span_id(&self) -> [u8; 8] {
        (**self).span_id()
    }
    fn parent_span_id(&self) -> [u8; 8] {
        (**self).parent_span_id()
    }
    fn status_message(&self) -> &str {
        (**self).status_message()
    }
    fn trace_flags(&self) -> u8 {
        (**self).trace_flags()
    }
    fn scope_name(&self) -> &str {
        (**self).scope_name()
    }
    fn scope_version(&self) -> &str {
        (**self).scope_version()
    }
    fn events(&self) -> impl Iterator<Item = impl EventView + '_> + '_ {
        (**self).events()
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

impl EventView for Event {
    fn name(&self) -> &str {
        &self.name
    }

    fn time_unix_nano(&self) -> u64 {
        unix_nanos(self.timestamp)
    }

    fn attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        find_attribute(&self.attributes, key)
    }
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

    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SpanKindCode {
        SpanKindCode::from(&self.span_kind)
    }

    fn span_id(&self) -> [u8; 8] {
        self.span_context.span_id().to_bytes()
    }

    fn parent_span_id(&self) -> [u8; 8] {
        self.parent_span_id.to_bytes()
    }

    fn status_message(&self) -> &str {
        match &self.status {
            Status::Error { description } => description,
            _ => "",
        }
    }

    fn trace_flags(&self) -> u8 {
        self.span_context.trace_flags().to_u8()
    }

    fn scope_name(&self) -> &str {
        self.instrumentation_scope.name()
    }

    fn scope_version(&self) -> &str {
        self.instrumentation_scope.version().unwrap_or("")
    }

    fn events(&self) -> impl Iterator<Item = impl EventView + '_> + '_ {
        self.events.events.iter()
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
    fn sdk_spans_should_show_every_field_ottl_reads() {
        let span = TestSpan::new(7, 3)
            .child_of(2)
            .name("GET /orders")
            .kind(SpanKind::Server)
            .error_message("timed out")
            .scope("orders-lib", "1.2.0")
            .event("retry", vec![KeyValue::new("attempt", 2)])
            .attr(KeyValue::new("route", "/orders"))
            .build();
        assert_eq!(span.name(), "GET /orders");
        assert_eq!(span.kind(), SpanKindCode::Server);
        assert_eq!(span.span_id(), 3u64.to_be_bytes());
        assert_eq!(span.parent_span_id(), 2u64.to_be_bytes());
        assert_eq!(span.status_message(), "timed out");
        assert_eq!(span.trace_flags(), 1);
        assert_eq!(TestSpan::new(7, 3).unsampled().build().trace_flags(), 0);
        assert_eq!(
            (span.scope_name(), span.scope_version()),
            ("orders-lib", "1.2.0")
        );
        assert_eq!(
            span.span_attribute("route"),
            Some(AttrValue::Str("/orders"))
        );
        assert_eq!(span.resource_attribute("route"), None);
        let events: Vec<_> = span.events().collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].name(), "retry");
        assert_eq!(events[0].attribute("attempt"), Some(AttrValue::I64(2)));
        assert_eq!(events[0].time_unix_nano(), 0);
        let boxed = Box::new(span.clone());
        assert_eq!(boxed.events().count(), 1);
        assert_eq!(boxed.name(), "GET /orders");
        assert_eq!(boxed.parent_span_id(), 2u64.to_be_bytes());
    }

    #[test]
    fn span_kind_codes_should_follow_otlp_numbers() {
        for n in 0..=5 {
            assert_eq!(SpanKindCode::from_otlp(n) as u64, n);
        }
        assert_eq!(SpanKindCode::from_otlp(9), SpanKindCode::Unspecified);
        assert_eq!(SpanKindCode::Consumer.name(), "Consumer");
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
