//! traceq-exporter: spans to and from OTLP-JSON lines files, a terminal waterfall of traces, and
//! the OTLP collector (`collector`: receivers, the tail-sampling pipeline, exporters) with its
//! span codec (`otlp`) and load generator (`loadgen`).
//!
//! ```text
//!  OTLP/gRPC, OTLP/HTTP ─▶ collector::OtlpReceiver ─▶ otlp::OtlpSpan (encoded) ─▶ TailSampler
//!                                    ─▶ collector::ExporterQueue ─▶ otlp / otlphttp / file / debug
//!
//!  SDK spans ─▶ OtlpJsonFileExporter ─▶ file: one ExportTraceServiceRequest per line (OTLP/JSON)
//!                                                   │
//!  any OTLP file exporter's output ─────────────────┤
//!                                                   ▼
//!                    read_otlp_json_lines ─▶ SpanRecord ─▶ traces() ─▶ Waterfall::render
//! ```
//!
//! Why OTLP/JSON lines: it is what the OpenTelemetry Collector's `file` exporter writes, so the
//! files traceq writes can be replayed into a collector, and `traceq show` reads the files a
//! collector writes. Why a waterfall of our own: a new user should see a kept trace without
//! running a tracing backend.

pub mod collector;
mod file;
pub mod loadgen;
pub mod otlp;
mod record;
mod waterfall;

pub use file::OtlpJsonFileExporter;
pub use record::{
    read_otlp_json_lines, records_from_sdk, traces, LineError, LinkRecord, ReadOutcome, SpanRecord,
    TraceRecord,
};
pub use waterfall::{format_duration, Waterfall, DEFAULT_BAR_WIDTH, DEFAULT_NAME_WIDTH};
