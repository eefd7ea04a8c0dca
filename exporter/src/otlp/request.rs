//! Whole OTLP requests: splitting a received `ExportTraceServiceRequest` into [`OtlpSpan`]s and
//! putting kept spans back together, grouped under their original resource and scope.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::json;
use super::span::{Origin, OtlpSpan};
use super::validate::{self, Invalid};
use super::wire::{self, Fields, Value, WireError};

const REQUEST_RESOURCE_SPANS: u32 = 1;
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
const RESOURCE_SPANS_SCHEMA_URL: u32 = 3;
const SCOPE_SPANS_SCOPE: u32 = 1;
const SCOPE_SPANS_SPANS: u32 = 2;
const SCOPE_SPANS_SCHEMA_URL: u32 = 3;

/// A request that is not a valid OTLP `ExportTraceServiceRequest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid OTLP trace request: {message}")]
pub struct DecodeError {
    message: String,
}

impl DecodeError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl From<WireError> for DecodeError {
    fn from(e: WireError) -> Self {
        Self::new(e.0)
    }
}

impl From<Invalid> for DecodeError {
    fn from(e: Invalid) -> Self {
        Self::new(e.0)
    }
}

/// Splits a protobuf-encoded `ExportTraceServiceRequest` into spans, each keeping its encoded
/// bytes and a shared reference to its resource and scope.
///
/// Every message is validated as strictly as a strict protobuf decoder does (see
/// [`MAX_LIST_ITEMS`](super::MAX_LIST_ITEMS) and [`MAX_VALUE_DEPTH`](super::MAX_VALUE_DEPTH)
/// for the limits on top), so what is accepted here decodes with prost and can be forwarded to
/// any downstream. Memory: the spans are copied out of `body` once; per span that is its bytes
/// plus a fixed ~100 bytes, allocated only once the whole request is known to be valid.
///
/// # Errors
///
/// [`DecodeError`] when the bytes are not a well-formed request or a span lacks a valid trace id;
/// nothing is returned then (a request is taken whole or not at all).
///
/// # Examples
/// ```
/// use traceq_exporter::otlp::decode_request;
///
/// assert!(decode_request(&[]).unwrap().is_empty()); // an empty request is valid
/// assert!(decode_request(b"\x0a\xff garbage").is_err());
/// ```
pub fn decode_request(body: &[u8]) -> Result<Vec<OtlpSpan>, DecodeError> {
    decode_with(body, true)
}

/// Splits a protobuf-encoded `ExportTraceServiceRequest` into spans for routing by trace id:
/// like [`decode_request`], but only the request's structure (resource, scope and span
/// framing) and each span's trace id are read and checked. The spans are not validated (the
/// tier they are routed to does that), and the sampler's other fields (times, status, parent,
/// attributes) read as empty: such spans are for forwarding, not for sampling.
///
/// # Errors
///
/// [`DecodeError`] when the framing is malformed or a span lacks a valid trace id.
pub fn decode_request_for_routing(body: &[u8]) -> Result<Vec<OtlpSpan>, DecodeError> {
    decode_with(body, false)
}

fn decode_with(body: &[u8], validate_all: bool) -> Result<Vec<OtlpSpan>, DecodeError> {
    // First pass: structure, and the number of spans, before anything is allocated per span.
    let mut parts = Vec::new();
    let mut total = 0usize;
    for resource_spans in resource_spans(body) {
        let (resource, resource_schema_url, scopes) = resource_spans?;
        let scopes = scopes
            .into_iter()
            .map(split_scope_spans)
            .collect::<Result<Vec<_>, _>>()?;
        total += scopes
            .iter()
            .map(|(_, _, spans)| spans.clone().count())
            .sum::<usize>();
        parts.push((resource, resource_schema_url, scopes));
    }
    let mut out = Vec::with_capacity(total);
    for (resource, resource_schema_url, scopes) in parts {
        if let (Some(r), true) = (resource, validate_all) {
            validate::check(r, &validate::RESOURCE, 0)?;
        }
        let resource = resource.map(Bytes::copy_from_slice);
        let resource_schema_url = Bytes::copy_from_slice(resource_schema_url);
        for (scope, scope_schema_url, spans) in scopes {
            if let (Some(s), true) = (scope, validate_all) {
                validate::check(s, &validate::SCOPE, 0)?;
            }
            if spans.clone().next().is_none() {
                continue;
            }
            let parts = (
                resource.clone(),
                resource_schema_url.clone(),
                scope.map(Bytes::copy_from_slice),
                Bytes::copy_from_slice(scope_schema_url),
            );
            if validate_all {
                let origin = Arc::new(Origin::new(parts.0, parts.1, parts.2, parts.3));
                for encoded in spans {
                    out.push(OtlpSpan::parse(encoded, origin.clone())?);
                }
            } else {
                let origin = Arc::new(Origin::unindexed(parts.0, parts.1, parts.2, parts.3));
                for encoded in spans {
                    out.push(OtlpSpan::parse_trace_id(encoded, origin.clone())?);
                }
            }
        }
    }
    Ok(out)
}

/// The parts of one `ResourceSpans`: resource, schema URL, and its `ScopeSpans` messages.
type ResourceParts<'a> = (Option<&'a [u8]>, &'a [u8], Vec<&'a [u8]>);

/// Iterates over the `ResourceSpans` of a request, split into their parts.
fn resource_spans(body: &[u8]) -> impl Iterator<Item = Result<ResourceParts<'_>, DecodeError>> {
    Fields::new(body).filter_map(|field| match field {
        Err(e) => Some(Err(e.into())),
        Ok((REQUEST_RESOURCE_SPANS, value)) => Some(split_resource_spans(value)),
        Ok(_) => None,
    })
}

fn split_resource_spans(value: Value<'_>) -> Result<ResourceParts<'_>, DecodeError> {
    let mut resource = None;
    let mut schema_url: &[u8] = &[];
    let mut scopes = Vec::new();
    for field in Fields::new(len_delimited(value, "ResourceSpans")?) {
        match field? {
            // A decoder would merge two; we keep one encoding, so refuse.
            (RESOURCE_SPANS_RESOURCE, v) => set_once(&mut resource, v, "ResourceSpans.resource")?,
            (RESOURCE_SPANS_SCOPE_SPANS, v) => {
                scopes.push(len_delimited(v, "ResourceSpans.scope_spans")?);
            }
            (RESOURCE_SPANS_SCHEMA_URL, v) => {
                schema_url = utf8(len_delimited(v, "ResourceSpans.schema_url")?)?;
            }
            _ => {}
        }
    }
    Ok((resource, schema_url, scopes))
}

/// The parts of one `ScopeSpans`: scope, schema URL and its encoded spans.
type ScopeParts<'a> = (
    Option<&'a [u8]>,
    &'a [u8],
    std::iter::FilterMap<Fields<'a>, fn(WireResult<'a>) -> Option<&'a [u8]>>,
);
type WireResult<'a> = Result<(u32, Value<'a>), WireError>;

fn split_scope_spans(ss: &[u8]) -> Result<ScopeParts<'_>, DecodeError> {
    let mut scope = None;
    let mut schema_url: &[u8] = &[];
    for field in Fields::new(ss) {
        match field? {
            (SCOPE_SPANS_SCOPE, v) => set_once(&mut scope, v, "ScopeSpans.scope")?,
            (SCOPE_SPANS_SPANS, v) => {
                len_delimited(v, "ScopeSpans.spans")?;
            }
            (SCOPE_SPANS_SCHEMA_URL, v) => {
                schema_url = utf8(len_delimited(v, "ScopeSpans.schema_url")?)?;
            }
            _ => {}
        }
    }
    // Checked above: every field is well-formed and every span is length-delimited.
    fn span_of<'a>(field: WireResult<'a>) -> Option<&'a [u8]> {
        match field {
            Ok((SCOPE_SPANS_SPANS, Value::Bytes(b))) => Some(b),
            _ => None,
        }
    }
    let spans = Fields::new(ss).filter_map(span_of as fn(WireResult<'_>) -> Option<&[u8]>);
    Ok((scope, schema_url, spans))
}

/// Sets a singular message field, refusing a second occurrence.
fn set_once<'a>(
    slot: &mut Option<&'a [u8]>,
    value: Value<'a>,
    what: &str,
) -> Result<(), DecodeError> {
    if slot.replace(len_delimited(value, what)?).is_some() {
        return Err(DecodeError::new(format!("{what} is set twice")));
    }
    Ok(())
}

fn len_delimited<'a>(value: Value<'a>, what: &str) -> Result<&'a [u8], DecodeError> {
    value
        .bytes()
        .map_err(|_| DecodeError::new(format!("{what} must be length-delimited")))
}

fn utf8(b: &[u8]) -> Result<&[u8], DecodeError> {
    std::str::from_utf8(b).map_err(|_| DecodeError::new("schema_url is not UTF-8"))?;
    Ok(b)
}

/// Splits an OTLP/JSON `ExportTraceServiceRequest` (hex ids, as the OTLP/HTTP JSON encoding
/// specifies) into spans.
///
/// Memory: the JSON is transcoded to protobuf one span at a time (never the whole request as
/// owned structs, which take ~90 times the JSON of small spans), then split as protobuf.
///
/// # Errors
///
/// [`DecodeError`] when the body is not valid OTLP/JSON.
pub fn decode_json_request(body: &[u8]) -> Result<Vec<OtlpSpan>, DecodeError> {
    let encoded = json::transcode(body).map_err(|e| DecodeError::new(e.to_string()))?;
    decode_request(&encoded)
}

/// Encodes spans as one `ExportTraceServiceRequest`, grouping them under their original
/// resource and scope (spans with equal resources share one `ResourceSpans`, in first-seen
/// order). Annotations added by the sampler are included.
#[must_use]
pub fn encode_request(spans: &[OtlpSpan]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request_into(spans, &mut out);
    out
}

/// [`encode_request`] appending to `out` (after a header of the caller's, say), reserving
/// the exact size once.
pub fn encode_request_into(spans: &[OtlpSpan], out: &mut Vec<u8>) {
    // Group: resource -> scope -> span indices, keeping first-seen order.
    type ResourceKey<'a> = (Option<&'a [u8]>, &'a [u8]);
    type ScopeKey<'a> = (Option<&'a [u8]>, &'a [u8]);
    type Scopes<'a> = Vec<(ScopeKey<'a>, Vec<usize>)>;
    let mut resources: Vec<(ResourceKey<'_>, Scopes<'_>)> = Vec::new();
    let mut resource_index: HashMap<ResourceKey<'_>, usize> = HashMap::new();
    // Keyed by resource index and scope, so grouping stays linear in spans however many
    // distinct scopes a batch holds (a scan of a resource's scopes would be quadratic).
    let mut scope_index: HashMap<(usize, ScopeKey<'_>), usize> = HashMap::new();
    let mut last: Option<(*const Origin, usize, usize)> = None;
    for (i, span) in spans.iter().enumerate() {
        let origin = span.origin();
        let ptr = Arc::as_ptr(origin);
        if let Some((p, r, s)) = last {
            if p == ptr {
                resources[r].1[s].1.push(i);
                continue;
            }
        }
        let rkey = (origin.resource.as_deref(), &origin.resource_schema_url[..]);
        let r = *resource_index.entry(rkey).or_insert_with(|| {
            resources.push((rkey, Vec::new()));
            resources.len() - 1
        });
        let skey = (origin.scope.as_deref(), &origin.scope_schema_url[..]);
        let scopes = &mut resources[r].1;
        let s = *scope_index.entry((r, skey)).or_insert_with(|| {
            scopes.push((skey, Vec::new()));
            scopes.len() - 1
        });
        scopes[s].1.push(i);
        last = Some((ptr, r, s));
    }
    // Sizes first (protobuf needs each message's length before its body).
    let scope_len = |(scope, schema): &ScopeKey<'_>, idx: &[usize]| {
        scope.map_or(0, |b| wire::len_field_size(SCOPE_SPANS_SCOPE, b.len()))
            + idx
                .iter()
                .map(|&i| wire::len_field_size(SCOPE_SPANS_SPANS, spans[i].encoded_len()))
                .sum::<usize>()
            + opt_len(SCOPE_SPANS_SCHEMA_URL, schema)
    };
    let resource_len = |(resource, schema): &ResourceKey<'_>,
                        scopes: &[(ScopeKey<'_>, Vec<usize>)]| {
        resource.map_or(0, |b| {
            wire::len_field_size(RESOURCE_SPANS_RESOURCE, b.len())
        }) + scopes
            .iter()
            .map(|(k, idx)| wire::len_field_size(RESOURCE_SPANS_SCOPE_SPANS, scope_len(k, idx)))
            .sum::<usize>()
            + opt_len(RESOURCE_SPANS_SCHEMA_URL, schema)
    };
    let total: usize = resources
        .iter()
        .map(|(k, scopes)| wire::len_field_size(REQUEST_RESOURCE_SPANS, resource_len(k, scopes)))
        .sum();
    out.reserve_exact(total);
    let start = out.len();
    for (rkey, scopes) in &resources {
        wire::put_len_header(out, REQUEST_RESOURCE_SPANS, resource_len(rkey, scopes));
        if let Some(resource) = rkey.0 {
            wire::put_len_field(out, RESOURCE_SPANS_RESOURCE, resource);
        }
        for (skey, idx) in scopes {
            wire::put_len_header(out, RESOURCE_SPANS_SCOPE_SPANS, scope_len(skey, idx));
            if let Some(scope) = skey.0 {
                wire::put_len_field(out, SCOPE_SPANS_SCOPE, scope);
            }
            for &i in idx {
                wire::put_len_header(out, SCOPE_SPANS_SPANS, spans[i].encoded_len());
                spans[i].write_encoded(out);
            }
            if !skey.1.is_empty() {
                wire::put_len_field(out, SCOPE_SPANS_SCHEMA_URL, skey.1);
            }
        }
        if !rkey.1.is_empty() {
            wire::put_len_field(out, RESOURCE_SPANS_SCHEMA_URL, rkey.1);
        }
    }
    debug_assert_eq!(out.len() - start, total);
}

fn opt_len(field: u32, s: &[u8]) -> usize {
    if s.is_empty() {
        0
    } else {
        wire::len_field_size(field, s.len())
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod routing_tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    use super::*;

    fn request(spans: Vec<Span>) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn routing_decode_should_read_trace_ids_and_forward_spans_byte_for_byte() {
        let body = request(vec![
            Span {
                trace_id: vec![1; 16],
                name: "a".into(),
                ..Default::default()
            },
            Span {
                trace_id: vec![2; 16],
                name: "b".into(),
                ..Default::default()
            },
        ]);
        let spans = decode_request_for_routing(&body).unwrap();
        let ids: Vec<[u8; 16]> = spans.iter().map(OtlpSpan::trace_id_bytes).collect();
        assert_eq!(ids, vec![[1; 16], [2; 16]]);
        assert_eq!(encode_request(&spans), body);
    }

    #[test]
    fn routing_decode_should_refuse_bad_framing_and_missing_trace_ids() {
        let no_id = request(vec![Span {
            name: "x".into(),
            ..Default::default()
        }]);
        assert!(decode_request_for_routing(&no_id).is_err());
        let zero = request(vec![Span {
            trace_id: vec![0; 16],
            ..Default::default()
        }]);
        assert!(decode_request_for_routing(&zero).is_err());
        assert!(decode_request_for_routing(b"\x0a\xff garbage").is_err());
        // What full decoding refuses inside a span (a name that is not UTF-8) is left to the
        // samplers the span is routed to.
        let mut span = Vec::new();
        wire::put_len_field(&mut span, 1, &[3; 16]);
        wire::put_len_field(&mut span, 5, &[0xff, 0xfe]);
        let mut scope_spans = Vec::new();
        wire::put_len_field(&mut scope_spans, SCOPE_SPANS_SPANS, &span);
        let mut resource_spans = Vec::new();
        wire::put_len_field(
            &mut resource_spans,
            RESOURCE_SPANS_SCOPE_SPANS,
            &scope_spans,
        );
        let mut body = Vec::new();
        wire::put_len_field(&mut body, REQUEST_RESOURCE_SPANS, &resource_spans);
        assert!(decode_request(&body).is_err());
        let routed = decode_request_for_routing(&body).unwrap();
        assert_eq!(routed[0].trace_id_bytes(), [3; 16]);
    }
}
