//! `traceq loadgen`: synthetic traces sent over OTLP at a target rate, like the OpenTelemetry
//! Collector's `telemetrygen traces`, to load a collector or a tail sampler.
//!
//! ```text
//!  Plan (trace indices, send times, end) ─▶ worker × N: TraceGenerator ─▶ encode ─▶ TraceSender
//!                                                                                   │ OTLP/gRPC
//!  LoadReport ◀── counters ◀── outcome (ok, retried, failed) ◀──────────────────────┘ OTLP/HTTP
//! ```
//!
//! Why whole traces per request: a tail sampler decides per trace, and a trace split across
//! requests from different workers would arrive interleaved with others in ways a real service
//! rarely produces. So a request holds `batch_spans / spans_per_trace` traces (at least one),
//! and `--batch-spans 512` with 10-span traces sends 510-span requests.
//!
//! Why the generator and sender are public: a benchmark can pre-build requests with
//! [`TraceGenerator`], encode them with [`TraceSender::encode`] and time only the sending.

mod config;
mod generate;
mod run;
mod send;

#[cfg(test)]
mod tests;

pub use crate::client::{SendError, SendOutcome};
pub use config::{
    LoadgenConfig, LoadgenError, Protocol, DEFAULT_BATCH_SPANS, DEFAULT_ERROR_RATIO,
    DEFAULT_GRPC_ENDPOINT, DEFAULT_HTTP_ENDPOINT, DEFAULT_MAX_RETRIES, DEFAULT_RETRY_INITIAL,
    DEFAULT_SERVICE_NAME, DEFAULT_SPANS_PER_TRACE, DEFAULT_TIMEOUT, DEFAULT_WORKERS, MAX_DURATION,
    MAX_RETRY_DELAY, MAX_SPANS_PER_REQUEST, MAX_TIMEOUT, MAX_WORKERS,
};
pub use generate::{is_error_trace, GeneratedRequest, TraceGenerator, SCOPE_NAME};
pub use run::{run, LoadReport};
pub use send::TraceSender;
