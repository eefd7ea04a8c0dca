//! [`RequestSize`]: how large the export request of a growing set of spans will be, so a batch
//! can be cut before it passes a byte limit rather than split after it was refused.
//!
//! Why a bound and not the exact size: the exact size of a resource or scope group depends on
//! the length prefixes of its group, which change as spans join it. Counting each group's
//! prefix at its widest (the width of the limit itself) over-counts by a few bytes per group
//! and never under-counts, so a request kept under the bound is under the limit.

use std::collections::HashSet;

use bytes::Bytes;

use crate::otlp::OtlpSpan;

/// A resource as `encode_request` groups it: the encoded `Resource` and its schema URL.
type ResourceKey = (Option<Bytes>, Bytes);
/// A scope within a resource: the resource, the encoded scope and its schema URL.
type ScopeKey = (ResourceKey, Option<Bytes>, Bytes);

/// An upper bound of the encoded size of [`encode_request`](crate::otlp::encode_request) of
/// the spans added so far, kept under a limit.
///
/// # Examples
/// ```
/// use traceq_exporter::export::RequestSize;
/// use traceq_exporter::otlp::{decode_request, encode_request};
///
/// # let body = {
/// #     use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
/// #     use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
/// #     use prost::Message;
/// #     let span = |i: u8| Span { trace_id: vec![1; 16], span_id: vec![i; 8], ..Span::default() };
/// #     ExportTraceServiceRequest { resource_spans: vec![ResourceSpans {
/// #         scope_spans: vec![ScopeSpans { spans: (1..=3).map(span).collect(), ..Default::default() }],
/// #         ..Default::default() }] }.encode_to_vec()
/// # };
/// let spans = decode_request(&body)?;
/// let mut size = RequestSize::new(64);
/// let fit = spans.iter().take_while(|s| size.try_add(s)).count();
/// assert!(fit < spans.len());
/// assert!(encode_request(&spans[..fit]).len() <= size.bound());
/// assert!(size.bound() <= 64);
/// # Ok::<(), traceq_exporter::otlp::DecodeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RequestSize {
    limit: usize,
    /// Width of the widest length prefix of a group under `limit`.
    prefix: usize,
    bound: usize,
    resources: HashSet<ResourceKey>,
    scopes: HashSet<ScopeKey>,
    /// The last span's group, to skip hashing for runs of spans from one `ScopeSpans`.
    last: Option<ScopeKey>,
}

impl RequestSize {
    /// An empty request that must stay at or under `limit` bytes.
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            prefix: varint_len(limit as u64),
            bound: 0,
            resources: HashSet::new(),
            scopes: HashSet::new(),
            last: None,
        }
    }

    /// The limit.
    #[must_use]
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The bound of the request so far: at least its encoded size, at most the limit.
    #[must_use]
    pub fn bound(&self) -> usize {
        self.bound
    }

    /// Whether nothing was added since the last [`clear`](Self::clear).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bound == 0
    }

    /// Forgets every span added: the next request starts empty.
    pub fn clear(&mut self) {
        self.bound = 0;
        self.resources.clear();
        self.scopes.clear();
        self.last = None;
    }

    /// Adds `span` if the request stays under the limit with it; `false` (and nothing added)
    /// otherwise. A span refused by an empty request can never be sent under this limit.
    pub fn try_add(&mut self, span: &OtlpSpan) -> bool {
        let origin = span.origin();
        let rkey: ResourceKey = (origin.resource.clone(), origin.resource_schema_url.clone());
        let skey: ScopeKey = (rkey, origin.scope.clone(), origin.scope_schema_url.clone());
        let same_group = self
            .last
            .as_ref()
            .is_some_and(|last| same_bytes(last, &skey));
        let mut added = len_field_size(span.encoded_len());
        let (new_resource, new_scope) = if same_group {
            (false, false)
        } else {
            let new_resource = !self.resources.contains(&skey.0);
            let new_scope = new_resource || !self.scopes.contains(&skey);
            (new_resource, new_scope)
        };
        if new_resource {
            added += 1 + self.prefix;
            added += skey.0 .0.as_ref().map_or(0, |r| len_field_size(r.len()));
            added += opt_len(&skey.0 .1);
        }
        if new_scope {
            added += 1 + self.prefix;
            added += skey.1.as_ref().map_or(0, |s| len_field_size(s.len()));
            added += opt_len(&skey.2);
        }
        match self.bound.checked_add(added) {
            Some(total) if total <= self.limit => self.bound = total,
            _ => return false,
        }
        if new_resource {
            self.resources.insert(skey.0.clone());
        }
        if new_scope {
            self.scopes.insert(skey.clone());
        }
        self.last = Some(skey);
        true
    }
}

/// Whether two groups are the very same bytes (same buffers), which implies equal content:
/// the common case of consecutive spans from one received `ScopeSpans`, checked without
/// hashing. Buffers are kept alive by `last`, so an address cannot be reused meanwhile.
fn same_bytes(a: &ScopeKey, b: &ScopeKey) -> bool {
    fn same(x: &Bytes, y: &Bytes) -> bool {
        x.as_ptr() == y.as_ptr() && x.len() == y.len()
    }
    fn same_opt(x: Option<&Bytes>, y: Option<&Bytes>) -> bool {
        match (x, y) {
            (Some(x), Some(y)) => same(x, y),
            (None, None) => true,
            _ => false,
        }
    }
    same_opt(a.0 .0.as_ref(), b.0 .0.as_ref())
        && same(&a.0 .1, &b.0 .1)
        && same_opt(a.1.as_ref(), b.1.as_ref())
        && same(&a.2, &b.2)
}

fn varint_len(v: u64) -> usize {
    // 7 bits per byte; at least one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A length-delimited field of a field number under 16 (one tag byte).
fn len_field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn opt_len(s: &[u8]) -> usize {
    if s.is_empty() {
        0
    } else {
        len_field_size(s.len())
    }
}

#[cfg(test)]
mod tests;
