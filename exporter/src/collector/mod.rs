//! `traceq collector`: OTLP in, tail sampling, OTLP out.
//!
//! ```text
//!  OTLP/gRPC :4317 ─┐                                            ┌─▶ otlp (gRPC) exporter queue
//!                   ├─▶ decode ─▶ SpanSink ─▶ TailSampler ─▶ batch ┼─▶ otlphttp exporter queue
//!  OTLP/HTTP :4318 ─┘  (encoded spans)   (refuse when full)       ├─▶ file (OTLP-JSON lines)
//!                                                                 └─▶ debug (stdout)
//!  /metrics, /healthz :8888
//! ```

mod config;
mod export;
mod metrics;
mod pipeline;
mod prometheus;
mod receiver;
mod service;
mod sink;

pub use config::{
    CollectorConfig, CollectorConfigError, Compression, ExportTarget, ExporterConfig, OnBufferFull,
    ReceiverConfig, RetryConfig, TlsConfig, DEFAULT_ADMIN_ENDPOINT, DEFAULT_BATCH_TIMEOUT,
    DEFAULT_EXPORT_TIMEOUT, DEFAULT_GRPC_ENDPOINT, DEFAULT_GRPC_MAX_REQUEST_BYTES,
    DEFAULT_HTTP_ENDPOINT, DEFAULT_HTTP_MAX_REQUEST_BYTES, DEFAULT_QUEUE_SIZE, DEFAULT_RETRY_AFTER,
    DEFAULT_RETRY_INITIAL, DEFAULT_RETRY_MAX_ELAPSED, DEFAULT_RETRY_MAX_INTERVAL,
    DEFAULT_SEND_BATCH_SIZE, DEFAULT_SHUTDOWN_TIMEOUT,
};
pub use export::{ExportBatch, ExportSetupError, ExporterQueue};
pub use metrics::{ExporterMetrics, ReceiverMetrics};
pub use receiver::{
    decode_grpc_body, decode_http_body, GrpcRejection, HttpRejection, OtlpReceiver, Protocol,
    ReceiverError,
};
pub use service::{Collector, CollectorError, CollectorStatus};
pub use sink::{Refused, SpanSink};
