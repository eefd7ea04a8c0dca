//! Whole OTLP requests: splitting a received `ExportTraceServiceRequest` into [`OtlpSpan`]s and
//! putting kept spans back together, grouped under their original resource and scope.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::span::{Origin, OtlpSpan};
use super::wire::{self, Fields, WireError};

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

/// Splits a protobuf-encoded `ExportTraceServiceRequest` into spans, each keeping its encoded
/// bytes and a shared reference to its resource and scope.
///
/// # Errors
///
/// [`DecodeError`] when the bytes are not a well-formed request or a span lacks a valid trace id;
/// nothing is returned then (a request is taken whole or not at all).
///
/// # Examples
/// ```
/// use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
/// use traceq_exporter::otlp::decode_request;
///
/// assert!(decode_request(&[]).unwrap().is_empty()); // an empty request is valid
/// assert!(decode_request(b"\x0a\xff garbage").is_err());
/// ```
pub fn decode_request(body: &[u8]) -> Result<Vec<OtlpSpan>, DecodeError> {
    let mut spans = Vec::new();
    for field in Fields::new(body) {
        let (number, value) = field?;
        if number != REQUEST_RESOURCE_SPANS {
            continue;
        }
        let mut resource = None;
        let mut resource_schema_url = Bytes::new();
        let mut scope_spans = Vec::new();
        for field in Fields::new(value.bytes()?) {
            match field? {
                (RESOURCE_SPANS_RESOURCE, v) => resource = Some(v.bytes()?),
                (RESOURCE_SPANS_SCOPE_SPANS, v) => scope_spans.push(v.bytes()?),
                (RESOURCE_SPANS_SCHEMA_URL, v) => resource_schema_url = utf8(v.bytes()?)?,
                _ => {}
            }
        }
        let resource = resource.map(Bytes::copy_from_slice);
        for ss in scope_spans {
            let mut scope = None;
            let mut scope_schema_url = Bytes::new();
            let mut encoded_spans = Vec::new();
            for field in Fields::new(ss) {
                match field? {
                    (SCOPE_SPANS_SCOPE, v) => scope = Some(v.bytes()?),
                    (SCOPE_SPANS_SPANS, v) => encoded_spans.push(v.bytes()?),
                    (SCOPE_SPANS_SCHEMA_URL, v) => scope_schema_url = utf8(v.bytes()?)?,
                    _ => {}
                }
            }
            if encoded_spans.is_empty() {
                continue;
            }
            let origin = Arc::new(Origin {
                resource: resource.clone(),
                resource_schema_url: resource_schema_url.clone(),
                scope: scope.map(Bytes::copy_from_slice),
                scope_schema_url,
            });
            spans.reserve(encoded_spans.len());
            for encoded in encoded_spans {
                spans.push(OtlpSpan::parse(encoded, origin.clone())?);
            }
        }
    }
    Ok(spans)
}

fn utf8(b: &[u8]) -> Result<Bytes, DecodeError> {
    std::str::from_utf8(b).map_err(|_| DecodeError::new("schema_url is not UTF-8"))?;
    Ok(Bytes::copy_from_slice(b))
}

/// Splits an OTLP/JSON `ExportTraceServiceRequest` (hex ids, as the OTLP/HTTP JSON encoding
/// specifies) into spans.
///
/// # Errors
///
/// [`DecodeError`] when the body is not valid OTLP/JSON.
pub fn decode_json_request(body: &[u8]) -> Result<Vec<OtlpSpan>, DecodeError> {
    let request: ExportTraceServiceRequest =
        serde_json::from_slice(body).map_err(|e| DecodeError::new(e.to_string()))?;
    // The slow path: re-encode as protobuf, then split as usual. JSON is for people and
    // small clients; high-volume senders use protobuf.
    decode_request(&request.encode_to_vec())
}

/// Encodes spans as one `ExportTraceServiceRequest`, grouping them under their original
/// resource and scope (spans with equal resources share one `ResourceSpans`, in first-seen
/// order). Annotations added by the sampler are included.
#[must_use]
pub fn encode_request(spans: &[OtlpSpan]) -> Vec<u8> {
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
    let mut out = Vec::with_capacity(total);
    for (rkey, scopes) in &resources {
        wire::put_len_header(&mut out, REQUEST_RESOURCE_SPANS, resource_len(rkey, scopes));
        if let Some(resource) = rkey.0 {
            wire::put_len_field(&mut out, RESOURCE_SPANS_RESOURCE, resource);
        }
        for (skey, idx) in scopes {
            wire::put_len_header(&mut out, RESOURCE_SPANS_SCOPE_SPANS, scope_len(skey, idx));
            if let Some(scope) = skey.0 {
                wire::put_len_field(&mut out, SCOPE_SPANS_SCOPE, scope);
            }
            for &i in idx {
                wire::put_len_header(&mut out, SCOPE_SPANS_SPANS, spans[i].encoded_len());
                spans[i].write_encoded(&mut out);
            }
            if !skey.1.is_empty() {
                wire::put_len_field(&mut out, SCOPE_SPANS_SCHEMA_URL, skey.1);
            }
        }
        if !rkey.1.is_empty() {
            wire::put_len_field(&mut out, RESOURCE_SPANS_SCHEMA_URL, rkey.1);
        }
    }
    debug_assert_eq!(out.len(), total);
    out
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
