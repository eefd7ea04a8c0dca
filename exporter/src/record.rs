//! Reading OTLP-JSON lines back: flat span records, grouped into traces.
//!
//! Why flat records: a waterfall, a test or a script wants "the spans of trace X with their
//! parent, times, status and links", not the resource/scope nesting of the wire format. A line
//! that does not parse is reported with its number and skipped, so one bad line does not hide
//! the rest of the file.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_sdk::trace::SpanData;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead};

/// One span, as read from a file.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SpanRecord {
    /// Trace id, 32 lower-case hex digits.
    pub trace_id: String,
    /// Span id, 16 lower-case hex digits.
    pub span_id: String,
    /// The parent's span id; `None` for a root.
    pub parent_span_id: Option<String>,
    /// The span's name.
    pub name: String,
    /// `service.name` of the span's resource, if any.
    pub service: Option<String>,
    /// Start, nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_unix_nano: u64,
    /// `Some(message)` when the span's status is Error (the message may be empty).
    pub error: Option<String>,
    /// Attributes, values as text, in the file's order.
    pub attributes: Vec<(String, String)>,
    /// Span links.
    pub links: Vec<LinkRecord>,
}

impl SpanRecord {
    /// The text of attribute `key`, if present.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The span's duration in nanoseconds (zero if it ends before it starts).
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }
}

/// A span link, as read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkRecord {
    /// The linked span's trace id.
    pub trace_id: String,
    /// The linked span's id.
    pub span_id: String,
    /// The link's `traceq.link.kind` attribute (`previous_segment`, `next_segment`, ...).
    pub kind: Option<String>,
}

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong with it.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// What [`read_otlp_json_lines`] found: the spans of every good line, and the bad lines.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ReadOutcome {
    /// Every span of every line that parsed, in file order.
    pub spans: Vec<SpanRecord>,
    /// Lines that did not parse, skipped.
    pub errors: Vec<LineError>,
}

/// Reads OTLP-JSON lines: one `ExportTraceServiceRequest` per line, blank lines ignored. Ours
/// and the OpenTelemetry Collector `file` exporter's output both read.
///
/// # Errors
/// Only an I/O error reading `input`; malformed lines are reported in [`ReadOutcome::errors`].
pub fn read_otlp_json_lines(input: impl BufRead) -> io::Result<ReadOutcome> {
    let mut out = ReadOutcome::default();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ExportTraceServiceRequest>(&line) {
            Ok(request) => out.spans.extend(flatten(request)),
            Err(e) => out.errors.push(LineError {
                line: i + 1,
                message: format!("not an OTLP/JSON trace request: {e}"),
            }),
        }
    }
    Ok(out)
}

/// Converts SDK spans (from an in-memory exporter, say) to records, through the same OTLP
/// conversion the file exporter uses.
pub fn records_from_sdk(spans: Vec<SpanData>) -> Vec<SpanRecord> {
    let resource = (&opentelemetry_sdk::Resource::builder_empty().build()).into();
    let resource_spans =
        opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(
            spans, &resource,
        );
    flatten(ExportTraceServiceRequest { resource_spans })
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<SpanRecord> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let service = rs.resource.as_ref().and_then(|r| {
            r.attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .map(|kv| value_text(kv.value.as_ref()))
        });
        for ss in rs.scope_spans {
            out.extend(ss.spans.into_iter().map(|s| record(s, service.clone())));
        }
    }
    out
}

fn record(s: Span, service: Option<String>) -> SpanRecord {
    let error = s
        .status
        .as_ref()
        .filter(|st| st.code == StatusCode::Error as i32)
        .map(|st| st.message.clone());
    SpanRecord {
        trace_id: hex(&s.trace_id),
        span_id: hex(&s.span_id),
        parent_span_id: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
        name: s.name,
        service,
        start_unix_nano: s.start_time_unix_nano,
        end_unix_nano: s.end_time_unix_nano,
        error,
        attributes: attributes(&s.attributes),
        links: s
            .links
            .into_iter()
            .map(|l| LinkRecord {
                trace_id: hex(&l.trace_id),
                span_id: hex(&l.span_id),
                kind: l
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "traceq.link.kind")
                    .map(|kv| value_text(kv.value.as_ref())),
            })
            .collect(),
    }
}

fn attributes(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value_text(kv.value.as_ref())))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value_text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex(b),
        Some(Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(|v| value_text(Some(v))).collect();
            format!("[{}]", items.join(", "))
        }
        Some(Value::KvlistValue(l)) => {
            let items: Vec<String> = attributes(&l.values)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        #[allow(unreachable_patterns)] // newer OTLP value kinds, if any
        Some(_) => String::from("?"),
    }
}

/// The spans of one trace.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TraceRecord {
    /// The trace id.
    pub trace_id: String,
    /// Its spans, by start time.
    pub spans: Vec<SpanRecord>,
}

impl TraceRecord {
    /// Whether any span has an Error status.
    pub fn has_error(&self) -> bool {
        self.spans.iter().any(|s| s.error.is_some())
    }

    /// Earliest start, nanoseconds since the Unix epoch.
    pub fn start_unix_nano(&self) -> u64 {
        self.spans
            .iter()
            .map(|s| s.start_unix_nano)
            .min()
            .unwrap_or(0)
    }

    /// Latest end, nanoseconds since the Unix epoch.
    pub fn end_unix_nano(&self) -> u64 {
        self.spans
            .iter()
            .map(|s| s.end_unix_nano)
            .max()
            .unwrap_or(0)
    }

    /// The spans without a parent in this trace (normally one: the root).
    pub fn roots(&self) -> impl Iterator<Item = &SpanRecord> {
        self.spans.iter().filter(|s| {
            s.parent_span_id
                .as_ref()
                .is_none_or(|p| !self.spans.iter().any(|o| &o.span_id == p))
        })
    }
}

/// Groups spans into traces, ordered by their first span's start (then trace id); the spans of
/// a trace by start time (then span id). A span that appears twice is kept once.
pub fn traces(spans: Vec<SpanRecord>) -> Vec<TraceRecord> {
    let mut by_trace: BTreeMap<String, Vec<SpanRecord>> = BTreeMap::new();
    for s in spans {
        let list = by_trace.entry(s.trace_id.clone()).or_default();
        if !list.iter().any(|o| o.span_id == s.span_id) {
            list.push(s);
        }
    }
    let mut out: Vec<TraceRecord> = by_trace
        .into_iter()
        .map(|(trace_id, mut spans)| {
            spans.sort_by(|a, b| {
                (a.start_unix_nano, &a.span_id).cmp(&(b.start_unix_nano, &b.span_id))
            });
            TraceRecord { trace_id, spans }
        })
        .collect();
    out.sort_by(|a, b| (a.start_unix_nano(), &a.trace_id).cmp(&(b.start_unix_nano(), &b.trace_id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web"}}]},"scopeSpans":[{"scope":{"name":"x"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"","name":"GET /","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000","attributes":[{"key":"http.status","value":{"intValue":"500"}}],"links":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","attributes":[{"key":"traceq.link.kind","value":{"stringValue":"previous_segment"}}]}],"status":{"code":2,"message":"bad"}}]}]}]}"#;

    #[test]
    fn reader_should_read_collector_file_exporter_lines() {
        let text = format!("{LINE}\n\n");
        let read = read_otlp_json_lines(text.as_bytes()).unwrap();
        assert!(read.errors.is_empty());
        let s = &read.spans[0];
        assert_eq!(s.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(s.parent_span_id, None);
        assert_eq!(s.service.as_deref(), Some("web"));
        assert_eq!(s.error.as_deref(), Some("bad"));
        assert_eq!(s.attribute("http.status"), Some("500"));
        assert_eq!(s.duration_nanos(), 1_000_000_000);
        assert_eq!(s.links[0].kind.as_deref(), Some("previous_segment"));
    }

    #[test]
    fn reader_should_report_bad_lines_by_number_and_keep_the_rest() {
        let text = format!("{LINE}\nnot json\n{{\"resourceSpans\": 3}}\n{LINE}\n");
        let read = read_otlp_json_lines(text.as_bytes()).unwrap();
        assert_eq!(read.spans.len(), 2);
        let lines: Vec<usize> = read.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3]);
        assert!(read.errors[0].to_string().starts_with("line 2: "));
        assert_eq!(traces(read.spans).len(), 1, "duplicate spans are kept once");
    }
}
