//! traceq-exporter: OTLP out. The span codec the collector keeps spans in (`otlp`), one OTLP
//! client (`client`), the exporters built on it (`export`), the OTLP-JSON lines file exporter for
//! SDK users and its reader, and a terminal waterfall of traces.
//!
//! ```text
//!  encoded spans ─▶ export::ExporterQueue ─▶ client::OtlpClient ─▶ OTLP/gRPC, OTLP/HTTP
//!                                        └─▶ JsonLinesWriter ─▶ file / stdout
//!
//!  SDK spans ─▶ OtlpJsonFileExporter ─▶ JsonLinesWriter ─▶ file: one request per line (OTLP/JSON)
//!                                                            │
//!  any OTLP file exporter's output ──────────────────────────┤
//!                                                            ▼
//!                    read_otlp_json_lines ─▶ SpanRecord ─▶ traces() ─▶ Waterfall::render
//! ```
//!
//! Features: `client` (on by default) brings the OTLP client and the exporters (tonic's client,
//! hyper, tokio); `loadgen` adds the load generator behind `traceq loadgen`. Without them the
//! crate is the file exporter, the reader, the waterfall and the span codec: no HTTP stack.
//!
//! Why OTLP/JSON lines: it is what the OpenTelemetry Collector's `file` exporter writes, so the
//! files traceq writes can be replayed into a collector, and `traceq show` reads the files a
//! collector writes. Why a waterfall of our own: a new user should see a kept trace without
//! running a tracing backend.

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod export;
mod file;
mod jsonl;
#[cfg(feature = "loadgen")]
pub mod loadgen;
pub mod otlp;
mod record;
mod waterfall;

pub use file::OtlpJsonFileExporter;
pub use jsonl::JsonLinesWriter;
pub use record::{
    read_otlp_json_lines, records_from_sdk, traces, LineError, LinkRecord, ReadOutcome, SpanRecord,
    TraceRecord,
};
pub use waterfall::{format_duration, Waterfall, DEFAULT_BAR_WIDTH, DEFAULT_NAME_WIDTH};
