//! Cross-process propagation: a producer in another service hands its trace context to the queue
//! (and a handler hands the item's context on) through a text carrier such as HTTP headers or a
//! `HashMap<String, String>`.
//!
//! Formats: W3C Trace Context (`traceparent`, `tracestate`), W3C Baggage (`baggage`), and
//! Zipkin B3 in its single-header (`b3`) and multi-header (`x-b3-traceid`, `x-b3-spanid`,
//! `x-b3-sampled`, `x-b3-flags`) forms. Each is a [`TextMapPropagator`], so they compose with
//! `opentelemetry::propagation::TextMapCompositePropagator` and any SDK setup.
//!
//! Why our own propagators: the SDK's W3C propagators live in `opentelemetry_sdk` and B3 in the
//! Zipkin exporter crate, and the engine depends on the OpenTelemetry API only, so that it works
//! under whatever SDK its user runs. The formats are small and fully tested here.
//!
//! Header names are lower case, as HTTP/2 requires; header lookups of the `HashMap` carriers are
//! case-insensitive already. Malformed input never panics: it yields no remote span context.
//!
//! # Examples
//! ```
//! use std::collections::HashMap;
//! use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
//! use opentelemetry::Context;
//! use traceq_engine::trace::propagation;
//!
//! // The producer's side.
//! let sc = SpanContext::new(
//!     TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
//!     SpanId::from_hex("00f067aa0ba902b7").unwrap(),
//!     TraceFlags::SAMPLED,
//!     false,
//!     TraceState::NONE,
//! );
//! let mut headers = HashMap::new();
//! propagation::inject_w3c(&Context::new().with_remote_span_context(sc), &mut headers);
//! assert_eq!(headers["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//!
//! // The queue's side: `handle.add_with_context(key, &cx)` continues the producer's trace.
//! let cx = propagation::extract(&headers);
//! assert_eq!(cx.span().span_context().span_id(), SpanId::from_hex("00f067aa0ba902b7").unwrap());
//! ```

use opentelemetry::baggage::{BaggageExt, KeyValueMetadata};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::OnceLock;

/// The W3C Trace Context header carrying version, trace id, parent id and flags.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C Trace Context vendor header.
pub const TRACESTATE: &str = "tracestate";
/// The W3C Baggage header.
pub const BAGGAGE: &str = "baggage";
/// The B3 single header: `{trace id}-{span id}-{sampling}[-{parent span id}]`.
pub const B3_SINGLE: &str = "b3";
/// B3 multi-header: the trace id (16 or 32 hex digits).
pub const B3_TRACE_ID: &str = "x-b3-traceid";
/// B3 multi-header: the span id (16 hex digits).
pub const B3_SPAN_ID: &str = "x-b3-spanid";
/// B3 multi-header: the sampling decision, `1` or `0`.
pub const B3_SAMPLED: &str = "x-b3-sampled";
/// B3 multi-header: `1` for debug, which implies sampled.
pub const B3_FLAGS: &str = "x-b3-flags";
/// B3 multi-header: the parent span id; not needed to continue a trace, read by no one here.
pub const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";

fn fields(cell: &'static OnceLock<Vec<String>>, names: &[&str]) -> FieldIter<'static> {
    FieldIter::new(cell.get_or_init(|| names.iter().map(|n| (*n).to_owned()).collect()))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn remote(trace_id: TraceId, span_id: SpanId, sampled: bool, state: TraceState) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(trace_id, span_id, flags, true, state)
}

// ---------------------------------------------------------------------------------------------
// W3C Trace Context

/// W3C Trace Context (`traceparent` + `tracestate`).
#[derive(Debug, Clone, Copy, Default)]
pub struct W3cTraceContext;

impl W3cTraceContext {
    fn parse(extractor: &dyn Extractor) -> Option<SpanContext> {
        let header = extractor.get(TRACEPARENT)?.trim();
        let mut parts = header.split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let span_id = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && rest.is_some() {
            return None;
        }
        if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
            return None;
        }
        if !is_lower_hex(trace_id) || !is_lower_hex(span_id) || !is_lower_hex(flags) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace_id).ok()?;
        let span_id = SpanId::from_hex(span_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return None;
        }
        let state = extractor
            .get(TRACESTATE)
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        Some(remote(trace_id, span_id, flags & 1 == 1, state))
    }
}

impl TextMapPropagator for W3cTraceContext {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let flags = sc.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8();
        injector.set(
            TRACEPARENT,
            format!("00-{}-{}-{flags:02x}", sc.trace_id(), sc.span_id()),
        );
        let state = sc.trace_state().header();
        if !state.is_empty() {
            injector.set(TRACESTATE, state);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match Self::parse(extractor) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        static FIELDS: OnceLock<Vec<String>> = OnceLock::new();
        fields(&FIELDS, &[TRACEPARENT, TRACESTATE])
    }
}

// ---------------------------------------------------------------------------------------------
// W3C Baggage

/// W3C Baggage (`baggage: key=value;metadata,key2=value2`). Values are percent-encoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct W3cBaggage;

/// Percent-encodes everything but unreserved characters: always valid in a baggage value.
fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Decodes `%XX` escapes; a malformed escape is kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl TextMapPropagator for W3cBaggage {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let baggage = cx.baggage();
        if baggage.is_empty() {
            return;
        }
        let mut header = String::new();
        for (key, (value, metadata)) in baggage {
            if !header.is_empty() {
                header.push(',');
            }
            percent_encode(key.as_str(), &mut header);
            header.push('=');
            percent_encode(value.as_str(), &mut header);
            if !metadata.as_str().is_empty() {
                header.push(';');
                header.push_str(metadata.as_str());
            }
        }
        injector.set(BAGGAGE, header);
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let Some(header) = extractor.get(BAGGAGE) else {
            return cx.clone();
        };
        let entries = header.split(',').filter_map(|member| {
            let (pair, metadata) = member.split_once(';').unwrap_or((member, ""));
            let (key, value) = pair.split_once('=')?;
            let key = percent_decode(key.trim());
            if key.is_empty() {
                return None;
            }
            let value = percent_decode(value.trim());
            Some(KeyValueMetadata::new(
                key,
                value,
                metadata.trim().to_owned(),
            ))
        });
        let entries: Vec<KeyValueMetadata> = entries.collect();
        if entries.is_empty() {
            return cx.clone();
        }
        cx.with_baggage(entries)
    }

    fn fields(&self) -> FieldIter<'_> {
        static FIELDS: OnceLock<Vec<String>> = OnceLock::new();
        fields(&FIELDS, &[BAGGAGE])
    }
}

// ---------------------------------------------------------------------------------------------
// Zipkin B3

/// Which B3 headers [`B3`] writes. It reads both, the single header first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum B3Encoding {
    /// `b3: {trace id}-{span id}-{sampled}`.
    #[default]
    SingleHeader,
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`.
    MultipleHeader,
    /// Both, for receivers of either kind.
    SingleAndMultiHeader,
}

/// Zipkin B3 propagation, single- and multi-header.
///
/// A missing sampling state ("defer") is read as not sampled; `d` (debug) as sampled. A 64-bit
/// trace id is left-padded to 128 bits. A single header holding only a sampling decision
/// carries no span to continue and is ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct B3 {
    encoding: B3Encoding,
}

fn b3_trace_id(s: &str) -> Option<TraceId> {
    if (s.len() != 16 && s.len() != 32) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    TraceId::from_hex(s)
        .ok()
        .filter(|id| *id != TraceId::INVALID)
}

fn b3_span_id(s: &str) -> Option<SpanId> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    SpanId::from_hex(s).ok().filter(|id| *id != SpanId::INVALID)
}

impl B3 {
    /// A B3 propagator writing `encoding`.
    pub fn new(encoding: B3Encoding) -> Self {
        Self { encoding }
    }

    fn parse_single(extractor: &dyn Extractor) -> Option<SpanContext> {
        let header = extractor.get(B3_SINGLE)?.trim();
        let mut parts = header.split('-');
        let trace_id = b3_trace_id(parts.next()?)?;
        let span_id = b3_span_id(parts.next()?)?;
        let sampled = match parts.next() {
            None => false,
            Some("1" | "d") => true,
            Some("0") => false,
            Some(_) => return None,
        };
        if let Some(parent) = parts.next() {
            b3_span_id(parent)?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(remote(trace_id, span_id, sampled, TraceState::NONE))
    }

    fn parse_multi(extractor: &dyn Extractor) -> Option<SpanContext> {
        let trace_id = b3_trace_id(extractor.get(B3_TRACE_ID)?.trim())?;
        let span_id = b3_span_id(extractor.get(B3_SPAN_ID)?.trim())?;
        let debug = extractor.get(B3_FLAGS).map(str::trim) == Some("1");
        let sampled = match extractor.get(B3_SAMPLED).map(str::trim) {
            None => false,
            Some("1" | "true") => true,
            Some("0" | "false") => false,
            Some(_) => return None,
        };
        Some(remote(
            trace_id,
            span_id,
            sampled || debug,
            TraceState::NONE,
        ))
    }
}

impl TextMapPropagator for B3 {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let sampled = if sc.is_sampled() { "1" } else { "0" };
        if matches!(
            self.encoding,
            B3Encoding::SingleHeader | B3Encoding::SingleAndMultiHeader
        ) {
            injector.set(
                B3_SINGLE,
                format!("{}-{}-{sampled}", sc.trace_id(), sc.span_id()),
            );
        }
        if matches!(
            self.encoding,
            B3Encoding::MultipleHeader | B3Encoding::SingleAndMultiHeader
        ) {
            injector.set(B3_TRACE_ID, sc.trace_id().to_string());
            injector.set(B3_SPAN_ID, sc.span_id().to_string());
            injector.set(B3_SAMPLED, sampled.to_owned());
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match Self::parse_single(extractor).or_else(|| Self::parse_multi(extractor)) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        static FIELDS: OnceLock<Vec<String>> = OnceLock::new();
        fields(
            &FIELDS,
            &[B3_SINGLE, B3_TRACE_ID, B3_SPAN_ID, B3_SAMPLED, B3_FLAGS],
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Writes `cx`'s span context (`traceparent`, `tracestate`) and baggage (`baggage`) in the W3C
/// formats.
pub fn inject_w3c(cx: &Context, injector: &mut dyn Injector) {
    W3cTraceContext.inject_context(cx, injector);
    W3cBaggage.inject_context(cx, injector);
}

/// Reads a W3C span context and baggage into a new context (no span when `traceparent` is
/// missing or malformed).
pub fn extract_w3c(extractor: &dyn Extractor) -> Context {
    let cx = W3cTraceContext.extract(extractor);
    W3cBaggage.extract_with_context(&cx, extractor)
}

/// Writes `cx`'s span context as B3 headers.
pub fn inject_b3(cx: &Context, injector: &mut dyn Injector, encoding: B3Encoding) {
    B3::new(encoding).inject_context(cx, injector);
}

/// Reads a B3 span context (single header first, then multi-header) into a new context.
pub fn extract_b3(extractor: &dyn Extractor) -> Context {
    B3::default().extract(extractor)
}

/// Reads whatever the producer sent: W3C `traceparent` if valid, else B3 single, else B3
/// multi-header; W3C `baggage` in any case.
pub fn extract(extractor: &dyn Extractor) -> Context {
    let cx = match W3cTraceContext::parse(extractor) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => B3::default().extract(extractor),
    };
    W3cBaggage.extract_with_context(&cx, extractor)
}

#[cfg(test)]
mod tests;
