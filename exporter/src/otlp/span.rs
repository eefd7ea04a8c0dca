//! [`OtlpSpan`]: one received span, kept encoded.

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::mem::size_of;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry::trace::{TraceId, TraceState};
use opentelemetry::Value as OtelValue;
use traceq_sampler::{AttrValue, KeptDecision, SpanView, StatusKind};

use super::validate::{self, Invalid};
use super::wire::{self, Fields, Value};
use traceq_sampler::{EventView, SpanKindCode};

// Field numbers of `opentelemetry.proto.trace.v1.Span` and friends.
pub(crate) const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
pub(crate) const SPAN_TRACE_STATE: u32 = 3;
pub(crate) const SPAN_PARENT_SPAN_ID: u32 = 4;
pub(crate) const SPAN_START: u32 = 7;
pub(crate) const SPAN_END: u32 = 8;
pub(crate) const SPAN_ATTRIBUTES: u32 = 9;
pub(crate) const SPAN_STATUS: u32 = 15;
const STATUS_CODE: u32 = 3;
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;
const ANY_DOUBLE: u32 = 4;
/// `Resource.attributes`.
const RESOURCE_ATTRIBUTES: u32 = 1;
// Fields read only when a policy (an `ottl_condition`) asks for them.
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_EVENTS: u32 = 11;
const SPAN_FLAGS: u32 = 16;
const STATUS_MESSAGE: u32 = 2;
const EVENT_TIME: u32 = 1;
const EVENT_NAME: u32 = 2;
const EVENT_ATTRIBUTES: u32 = 3;
const SCOPE_NAME: u32 = 1;
const SCOPE_VERSION: u32 = 2;

/// Where a span came from: its resource and instrumentation scope, encoded as received, shared
/// by every span of one `ScopeSpans`, with the resource's attributes indexed once (so a policy
/// that looks up a key the spans lack costs a binary search per span, not a walk of the
/// resource).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    /// The encoded `Resource`, if the request had one.
    pub(crate) resource: Option<Bytes>,
    pub(crate) resource_schema_url: Bytes,
    /// The encoded `InstrumentationScope`, if any.
    pub(crate) scope: Option<Bytes>,
    pub(crate) scope_schema_url: Bytes,
    /// The resource's attributes: key and the byte range of the encoded `AnyValue` within
    /// `resource`, sorted by key, first occurrence of a key only.
    resource_attributes: AttributeIndex,
    /// What the spans of this origin keep alive (see [`OtlpSpan::retain`]). Not part of the
    /// origin's identity.
    retained: Retain,
}

/// A value kept alive for as long as any span of one decoded request is (see
/// [`OtlpSpan::retain`]): dropped when the last of them is.
pub type Retained = Arc<dyn Any + Send + Sync>;

/// [`Retained`] inside an [`Origin`], outside its identity: every origin equals every other
/// on it, and it hashes to nothing.
#[derive(Clone, Default)]
struct Retain(OnceLock<Retained>);

impl fmt::Debug for Retain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Retain")
    }
}

impl PartialEq for Retain {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Retain {}

impl Hash for Retain {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

impl Origin {
    /// An origin of already validated parts.
    pub(crate) fn new(
        resource: Option<Bytes>,
        resource_schema_url: Bytes,
        scope: Option<Bytes>,
        scope_schema_url: Bytes,
    ) -> Self {
        let resource_attributes = resource.as_deref().map_or_else(Box::default, index);
        Self {
            resource,
            resource_schema_url,
            scope,
            scope_schema_url,
            resource_attributes,
            retained: Retain::default(),
        }
    }

    /// An origin of parts only framed, not validated: for routing, where no attribute is read.
    pub(crate) fn unindexed(
        resource: Option<Bytes>,
        resource_schema_url: Bytes,
        scope: Option<Bytes>,
        scope_schema_url: Bytes,
    ) -> Self {
        Self {
            resource,
            resource_schema_url,
            scope,
            scope_schema_url,
            resource_attributes: Box::default(),
            retained: Retain::default(),
        }
    }

    /// A resource attribute, by key.
    fn resource_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        let resource = self.resource.as_deref()?;
        let i = self
            .resource_attributes
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()?;
        let (start, end) = self.resource_attributes[i].1;
        any_value(resource.get(start as usize..end as usize)?)
    }

    /// Heap bytes this origin holds, with the shared allocation's own header.
    pub(crate) fn heap_bytes(&self) -> usize {
        // The `Arc` allocation: two counters and the struct.
        2 * size_of::<usize>()
            + size_of::<Self>()
            + self.resource.as_ref().map_or(0, Bytes::len)
            + self.resource_schema_url.len()
            + self.scope.as_ref().map_or(0, Bytes::len)
            + self.scope_schema_url.len()
            + self
                .resource_attributes
                .iter()
                .map(|(k, _)| size_of::<(Box<str>, (u32, u32))>() + k.len())
                .sum::<usize>()
    }
}

/// Keys and the byte ranges of their encoded values (see [`Origin`]).
type AttributeIndex = Box<[(Box<str>, (u32, u32))]>;

/// The attribute index of an encoded `Resource` (see [`Origin`]).
fn index(resource: &[u8]) -> AttributeIndex {
    let base = resource.as_ptr() as usize;
    let mut out: Vec<(Box<str>, (u32, u32))> = Vec::new();
    for f in Fields::new(resource) {
        let Ok((RESOURCE_ATTRIBUTES, Value::Bytes(kv))) = f else {
            continue;
        };
        let mut key = None;
        let mut value: &[u8] = &[];
        for f in Fields::new(kv) {
            match f {
                Ok((KEY_VALUE_KEY, Value::Bytes(b))) => key = std::str::from_utf8(b).ok(),
                Ok((KEY_VALUE_VALUE, Value::Bytes(b))) => value = b,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let Some(key) = key else { continue };
        let start = value.as_ptr() as usize - base;
        let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(start + value.len()))
        else {
            continue;
        };
        out.push((key.into(), (start, end)));
    }
    // Stable: among equal keys the first stays first, and is the one kept.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|later, first| later.0 == first.0);
    out.into_boxed_slice()
}

/// What annotating a kept span added: encoded attributes appended after the span's own fields,
/// and the new tracestate (a repeated singular field: the last one wins when decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Annotation {
    encoded: Vec<u8>,
    trace_state: Option<String>,
}

/// A span received over OTLP: the encoded `Span` message as it arrived, with its resource and
/// scope, plus the fields the sampler reads on every span (trace id, parent, times, status)
/// decoded once. Attributes are looked up in the encoded bytes when a policy asks, without
/// copying.
///
/// Why encoded: a span of ~300 encoded bytes takes ~400 bytes here, against well over a
/// kilobyte decoded into owned structs, and a kept span is forwarded byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSpan {
    bytes: Box<[u8]>,
    origin: Arc<Origin>,
    annotation: Option<Box<Annotation>>,
    trace_id: [u8; 16],
    start_nanos: u64,
    end_nanos: u64,
    status: StatusKind,
    root: bool,
}

impl OtlpSpan {
    /// Validates an encoded `Span` (see [`validate`](super::validate)) and reads the sampler's
    /// fields out of it.
    pub(crate) fn parse(bytes: &[u8], origin: Arc<Origin>) -> Result<Self, Invalid> {
        let mut trace_id = None;
        let mut parent_empty = true;
        let mut start_nanos = 0;
        let mut end_nanos = 0;
        let mut status = StatusKind::Unset;
        let invalid = |what: &str| Invalid(format!("Span.{what}"));
        // Each field is handed over once its type is checked: only the values matter here.
        validate::check_with(bytes, &validate::SPAN, 0, |number, value| {
            match (number, value) {
                (SPAN_TRACE_ID, Value::Bytes(id)) => {
                    trace_id = Some(
                        <[u8; 16]>::try_from(id)
                            .map_err(|_| invalid("trace_id must be 16 bytes"))?,
                    );
                }
                (SPAN_SPAN_ID, Value::Bytes(id)) if !(id.is_empty() || id.len() == 8) => {
                    return Err(invalid("span_id must be empty or 8 bytes"));
                }
                (SPAN_PARENT_SPAN_ID, Value::Bytes(id)) => {
                    if !(id.is_empty() || id.len() == 8) {
                        return Err(invalid("parent_span_id must be empty or 8 bytes"));
                    }
                    parent_empty = id.iter().all(|&b| b == 0);
                }
                (SPAN_START, Value::Fixed64(t)) => start_nanos = t,
                (SPAN_END, Value::Fixed64(t)) => end_nanos = t,
                (SPAN_STATUS, Value::Bytes(b)) => {
                    for f in Fields::new(b).flatten() {
                        if let (STATUS_CODE, Value::Varint(code)) = f {
                            status = match code {
                                1 => StatusKind::Ok,
                                2 => StatusKind::Error,
                                _ => StatusKind::Unset,
                            };
                        }
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
        let trace_id = trace_id.ok_or_else(|| invalid("trace_id is missing"))?;
        if trace_id == [0; 16] {
            return Err(invalid("trace_id must not be all zeros"));
        }
        Ok(Self {
            bytes: bytes.into(),
            origin,
            annotation: None,
            trace_id,
            start_nanos,
            end_nanos,
            status,
            root: parent_empty,
        })
    }

    /// Reads only the trace id of an encoded `Span` (for routing; see
    /// [`decode_request_for_routing`](super::decode_request_for_routing)): the first field 1,
    /// which must be 16 bytes and not all zeros.
    pub(crate) fn parse_trace_id(bytes: &[u8], origin: Arc<Origin>) -> Result<Self, Invalid> {
        let mut trace_id = None;
        for field in Fields::new(bytes) {
            match field {
                Ok((SPAN_TRACE_ID, Value::Bytes(id))) => {
                    trace_id = <[u8; 16]>::try_from(id).ok();
                    break;
                }
                Ok(_) => {}
                Err(_) => return Err(Invalid("Span is malformed".into())),
            }
        }
        let trace_id = trace_id
            .filter(|id| *id != [0; 16])
            .ok_or_else(|| Invalid("Span.trace_id must be 16 bytes, not all zeros".into()))?;
        Ok(Self {
            bytes: bytes.into(),
            origin,
            annotation: None,
            trace_id,
            start_nanos: 0,
            end_nanos: 0,
            status: StatusKind::Unset,
            root: false,
        })
    }

    /// The encoded `Span` as it will be sent: the received bytes, then any annotation.
    pub(crate) fn encoded_len(&self) -> usize {
        self.bytes.len() + self.annotation.as_ref().map_or(0, |a| a.encoded.len())
    }

    pub(crate) fn write_encoded(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bytes);
        if let Some(a) = &self.annotation {
            out.extend_from_slice(&a.encoded);
        }
    }

    pub(crate) fn origin(&self) -> &Arc<Origin> {
        &self.origin
    }

    /// Makes `value` live as long as any span of this span's resource and scope in its
    /// request does (they share one origin): how the collector learns that every span of a
    /// logged request was decided and delivered. The first value given to an origin stays;
    /// returns whether this one was taken.
    pub fn retain(&self, value: &Retained) -> bool {
        self.origin.retained.0.set(value.clone()).is_ok()
    }

    /// The value given to [`Self::retain`] for this span's origin, if any.
    #[must_use]
    pub fn retained(&self) -> Option<&Retained> {
        self.origin.retained.0.get()
    }

    /// Whether `self` and `other` share one origin (resource and scope of one request): spans
    /// that do share what they [`retain`](Self::retain).
    #[must_use]
    pub fn same_origin(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.origin, &other.origin)
    }

    /// The span's trace id bytes.
    #[must_use]
    pub fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The encoded size of the span as received, in bytes.
    #[must_use]
    pub fn received_len(&self) -> usize {
        self.bytes.len()
    }

    fn own_trace_state(&self) -> Option<&str> {
        if let Some(state) = self
            .annotation
            .as_ref()
            .and_then(|a| a.trace_state.as_deref())
        {
            return Some(state);
        }
        let mut last = None;
        for field in Fields::new(&self.bytes) {
            if let Ok((SPAN_TRACE_STATE, Value::Bytes(b))) = field {
                last = std::str::from_utf8(b).ok();
            }
        }
        last.filter(|s| !s.is_empty())
    }
}

/// The last occurrence of field `number` in an encoded message (a singular field repeated on
/// the wire: the last one wins when decoded, so it is the one read).
fn last_field<'a>(message: &'a [u8], number: u32) -> Option<Value<'a>> {
    Fields::new(message)
        .flatten()
        .filter(|(n, _)| *n == number)
        .last()
        .map(|(_, v)| v)
}

/// The last string field `number` of an encoded message, `""` when absent.
fn last_str(message: &[u8], number: u32) -> &str {
    match last_field(message, number) {
        Some(Value::Bytes(b)) => std::str::from_utf8(b).unwrap_or(""),
        _ => "",
    }
}

/// An 8-byte id field (`span_id`, `parent_span_id`); zeros when absent or empty.
fn id8(message: &[u8], number: u32) -> [u8; 8] {
    match last_field(message, number) {
        Some(Value::Bytes(b)) => <[u8; 8]>::try_from(b).unwrap_or_default(),
        _ => [0; 8],
    }
}

/// One event of a received span, read in its encoded bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OtlpEvent<'a> {
    bytes: &'a [u8],
}

impl EventView for OtlpEvent<'_> {
    fn name(&self) -> &str {
        last_str(self.bytes, EVENT_NAME)
    }

    fn time_unix_nano(&self) -> u64 {
        match last_field(self.bytes, EVENT_TIME) {
            Some(Value::Fixed64(t)) => t,
            _ => 0,
        }
    }

    fn attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        find_attribute(self.bytes, EVENT_ATTRIBUTES, key)
    }
}

/// Looks `key` up among the `KeyValue`s (field `field`) of an encoded message.
fn find_attribute<'a>(message: &'a [u8], field: u32, key: &str) -> Option<AttrValue<'a>> {
    for f in Fields::new(message) {
        let Ok((number, Value::Bytes(kv))) = f else {
            continue;
        };
        if number != field {
            continue;
        }
        let mut k = None;
        let mut value = None;
        for f in Fields::new(kv) {
            match f {
                Ok((KEY_VALUE_KEY, Value::Bytes(b))) => k = Some(b),
                Ok((KEY_VALUE_VALUE, Value::Bytes(b))) => value = Some(b),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if k != Some(key.as_bytes()) {
            continue;
        }
        return value.and_then(any_value);
    }
    None
}

fn any_value(encoded: &[u8]) -> Option<AttrValue<'_>> {
    let mut out = None;
    for f in Fields::new(encoded) {
        out = match f.ok()? {
            (ANY_STRING, Value::Bytes(b)) => Some(AttrValue::Str(std::str::from_utf8(b).ok()?)),
            (ANY_BOOL, Value::Varint(v)) => Some(AttrValue::Bool(v != 0)),
            (ANY_INT, Value::Varint(v)) => Some(AttrValue::I64(v as i64)),
            (ANY_DOUBLE, Value::Fixed64(v)) => Some(AttrValue::F64(f64::from_bits(v))),
            _ => None,
        };
    }
    out
}

/// Encodes one `KeyValue` (field `field` of the enclosing message) with a string or double.
fn put_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &OtelValue) {
    let mut any = Vec::with_capacity(16);
    match value {
        OtelValue::String(s) => wire::put_len_field(&mut any, ANY_STRING, s.as_str().as_bytes()),
        OtelValue::F64(f) => wire::put_fixed64_field(&mut any, ANY_DOUBLE, f.to_bits()),
        OtelValue::I64(i) => {
            wire::put_varint(&mut any, u64::from(ANY_INT) << 3);
            wire::put_varint(&mut any, *i as u64);
        }
        OtelValue::Bool(b) => {
            wire::put_varint(&mut any, u64::from(ANY_BOOL) << 3);
            wire::put_varint(&mut any, u64::from(*b));
        }
        // The sampler only annotates with scalars.
        _ => return,
    }
    let len = wire::len_field_size(KEY_VALUE_KEY, key.len())
        + wire::len_field_size(KEY_VALUE_VALUE, any.len());
    wire::put_len_header(out, field, len);
    wire::put_len_field(out, KEY_VALUE_KEY, key.as_bytes());
    wire::put_len_field(out, KEY_VALUE_VALUE, &any);
}

fn nanos_to_time(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

impl SpanView for OtlpSpan {
    fn trace_id(&self) -> TraceId {
        TraceId::from_bytes(self.trace_id)
    }

    /// In a collector the spans of one trace come from many processes, so only a span without a
    /// parent is the root: a service's entry span (remote parent) ending says nothing about
    /// whether the trace is complete.
    fn is_local_root(&self) -> bool {
        self.root
    }

    fn status(&self) -> StatusKind {
        self.status
    }

    fn start_time(&self) -> SystemTime {
        nanos_to_time(self.start_nanos)
    }

    fn end_time(&self) -> SystemTime {
        nanos_to_time(self.end_nanos)
    }

    /// The span's attribute, else its resource's (as the Collector's attribute policies do).
    fn attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        find_attribute(&self.bytes, SPAN_ATTRIBUTES, key)
            .or_else(|| self.origin.resource_attribute(key))
    }

    fn trace_state(&self, key: &str) -> Option<&str> {
        self.own_trace_state()?.split(',').find_map(|member| {
            let (k, v) = member.trim().split_once('=')?;
            (k == key).then_some(v)
        })
    }

    fn span_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        find_attribute(&self.bytes, SPAN_ATTRIBUTES, key)
    }

    fn resource_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        self.origin.resource_attribute(key)
    }

    fn name(&self) -> &str {
        last_str(&self.bytes, SPAN_NAME)
    }

    fn kind(&self) -> SpanKindCode {
        match last_field(&self.bytes, SPAN_KIND) {
            Some(Value::Varint(k)) => SpanKindCode::from_otlp(k),
            _ => SpanKindCode::Unspecified,
        }
    }

    fn span_id(&self) -> [u8; 8] {
        id8(&self.bytes, SPAN_SPAN_ID)
    }

    fn parent_span_id(&self) -> [u8; 8] {
        id8(&self.bytes, SPAN_PARENT_SPAN_ID)
    }

    /// The message of the last `Status` field that has one (status fields merge when decoded).
    fn status_message(&self) -> &str {
        let mut out = "";
        for f in Fields::new(&self.bytes).flatten() {
            if let (SPAN_STATUS, Value::Bytes(status)) = f {
                if let Some(Value::Bytes(m)) = last_field(status, STATUS_MESSAGE) {
                    out = std::str::from_utf8(m).unwrap_or("");
                }
            }
        }
        out
    }

    /// The low byte of `Span.flags` (the W3C trace flags); 0 when the sender set none.
    fn trace_flags(&self) -> u8 {
        match last_field(&self.bytes, SPAN_FLAGS) {
            Some(Value::Fixed32(f)) => (f & 0xff) as u8,
            _ => 0,
        }
    }

    fn scope_name(&self) -> &str {
        self.origin
            .scope
            .as_deref()
            .map_or("", |scope| last_str(scope, SCOPE_NAME))
    }

    fn scope_version(&self) -> &str {
        self.origin
            .scope
            .as_deref()
            .map_or("", |scope| last_str(scope, SCOPE_VERSION))
    }

    fn events(&self) -> impl Iterator<Item = impl EventView + '_> + '_ {
        Fields::new(&self.bytes).flatten().filter_map(|f| match f {
            (SPAN_EVENTS, Value::Bytes(bytes)) => Some(OtlpEvent { bytes }),
            _ => None,
        })
    }

    /// The struct, the encoded bytes and the annotation; the origin is [`shared_bytes`].
    ///
    /// [`shared_bytes`]: SpanView::shared_bytes
    fn size_bytes(&self) -> usize {
        size_of::<Self>()
            + self.bytes.len()
            + self.annotation.as_ref().map_or(0, |a| {
                size_of::<Annotation>()
                    + a.encoded.capacity()
                    + a.trace_state.as_ref().map_or(0, String::capacity)
            })
    }

    /// The origin (resource and scope), shared by the spans of one `ScopeSpans`: identified by
    /// its allocation, which lives as long as any span holding it.
    fn shared_bytes(&self) -> Option<(usize, usize)> {
        Some((Arc::as_ptr(&self.origin) as usize, self.origin.heap_bytes()))
    }

    fn annotate(&mut self, decision: &KeptDecision) {
        let mut encoded = Vec::with_capacity(96);
        for kv in decision.attributes() {
            put_key_value(&mut encoded, SPAN_ATTRIBUTES, kv.key.as_str(), &kv.value);
        }
        let current = self
            .own_trace_state()
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        let trace_state = decision.trace_state_for(&current).map(|s| s.header());
        if let Some(state) = &trace_state {
            wire::put_len_field(&mut encoded, SPAN_TRACE_STATE, state.as_bytes());
        }
        self.annotation = Some(Box::new(Annotation {
            encoded,
            trace_state,
        }));
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, InstrumentationScope, KeyValue,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{
        span::{Event, SpanKind},
        status, ResourceSpans, ScopeSpans, Span, Status,
    };
    use prost::Message;
    use traceq_sampler::{AttrValue, EventView, SpanKindCode, SpanView};

    use crate::otlp::decode_request;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn decode(span: Span, scope: Option<InstrumentationScope>) -> super::OtlpSpan {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "checkout")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope,
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        decode_request(&request.encode_to_vec()).unwrap().remove(0)
    }

    #[test]
    fn encoded_spans_should_show_every_field_ottl_reads() {
        let span = decode(
            Span {
                trace_id: vec![7; 16],
                span_id: vec![3; 8],
                parent_span_id: vec![2; 8],
                name: "GET /orders".into(),
                kind: SpanKind::Server as i32,
                flags: 0x301,
                start_time_unix_nano: 1_000,
                end_time_unix_nano: 5_000,
                attributes: vec![kv("route", "/orders")],
                events: vec![
                    Event {
                        time_unix_nano: 2_000,
                        name: "exception".into(),
                        attributes: vec![kv("exception.type", "Timeout")],
                        ..Default::default()
                    },
                    Event {
                        name: "retry".into(),
                        ..Default::default()
                    },
                ],
                status: Some(Status {
                    code: status::StatusCode::Error as i32,
                    message: "timed out".into(),
                }),
                ..Default::default()
            },
            Some(InstrumentationScope {
                name: "orders-lib".into(),
                version: "1.2.0".into(),
                ..Default::default()
            }),
        );
        assert_eq!(span.name(), "GET /orders");
        assert_eq!(span.kind(), SpanKindCode::Server);
        assert_eq!(span.span_id(), [3; 8]);
        assert_eq!(span.parent_span_id(), [2; 8]);
        assert_eq!(span.status_message(), "timed out");
        assert_eq!(span.trace_flags(), 0x01, "the low byte of Span.flags");
        assert_eq!(
            (span.scope_name(), span.scope_version()),
            ("orders-lib", "1.2.0")
        );
        assert_eq!(
            span.span_attribute("route"),
            Some(AttrValue::Str("/orders"))
        );
        assert_eq!(span.span_attribute("service.name"), None);
        assert_eq!(
            span.resource_attribute("service.name"),
            Some(AttrValue::Str("checkout"))
        );
        assert_eq!(
            span.attribute("service.name"),
            Some(AttrValue::Str("checkout"))
        );
        let events: Vec<_> = span.events().collect();
        assert_eq!(events.len(), 2);
        assert_eq!(
            (events[0].name(), events[0].time_unix_nano()),
            ("exception", 2_000)
        );
        assert_eq!(
            events[0].attribute("exception.type"),
            Some(AttrValue::Str("Timeout"))
        );
        assert_eq!(
            (events[1].name(), events[1].attribute("x")),
            ("retry", None)
        );
    }

    #[test]
    fn absent_fields_should_read_as_empty() {
        let span = decode(
            Span {
                trace_id: vec![7; 16],
                ..Default::default()
            },
            None,
        );
        assert_eq!((span.name(), span.kind()), ("", SpanKindCode::Unspecified));
        assert_eq!((span.span_id(), span.parent_span_id()), ([0; 8], [0; 8]));
        assert_eq!((span.status_message(), span.trace_flags()), ("", 0));
        assert_eq!((span.scope_name(), span.scope_version()), ("", ""));
        assert_eq!(span.events().count(), 0);
    }
}
