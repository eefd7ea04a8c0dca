//! traceq-collector: `traceq collector` as a library. OTLP in, tail sampling, OTLP out.
//!
//! ```text
//!  OTLP/gRPC :4317 ─┐                                            ┌─▶ otlp (gRPC) exporter queue
//!                   ├─▶ decode ─▶ SpanSink ─▶ TailSampler ─▶ batch ┼─▶ otlphttp exporter queue
//!  OTLP/HTTP :4318 ─┘  (encoded spans)   (refuse when full)       ├─▶ file (OTLP-JSON lines)
//!                                                                 └─▶ debug (stdout)
//!  /metrics, /healthz :8888
//! ```
//!
//! The receivers, the pipeline around the sampler and the admin endpoints live here; spans stay
//! in their OTLP encoding throughout (`traceq_exporter::otlp`), the sampler is
//! `traceq_sampler`'s, and kept spans leave through `traceq_exporter`'s exporters. A program
//! embedding a collector needs [`CollectorConfig`] (read from the Collector's YAML shape with
//! [`CollectorConfig::from_yaml`], or built in code) and [`Collector`].
//!
//! # Examples
//!
//! ```
//! use traceq_collector::{Collector, CollectorConfig};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = CollectorConfig::from_yaml(
//!     "receivers: {otlp: {protocols: {grpc: {endpoint: '127.0.0.1:0'}}}}\n\
//!      exporters: {debug: {}}\n\
//!      service: {telemetry: {metrics: {address: none}}}",
//! )?;
//! let collector = Collector::start(&config).await?;
//! assert!(collector.grpc_addr().is_some());
//! let status = collector.shutdown().await;
//! assert_eq!(status.spans_received, 0);
//! # Ok(())
//! # }
//! ```

mod config;
mod metrics;
mod pipeline;
mod prometheus;
mod receiver;
mod route;
mod service;
mod sink;
mod storage;

pub use config::{
    CollectorConfig, CollectorConfigError, OnBufferFull, ReceiverConfig, TlsConfig,
    DEFAULT_ADMIN_ENDPOINT, DEFAULT_BATCH_TIMEOUT, DEFAULT_GRPC_ENDPOINT,
    DEFAULT_GRPC_MAX_REQUEST_BYTES, DEFAULT_HTTP_ENDPOINT, DEFAULT_HTTP_MAX_REQUEST_BYTES,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_HEADER_TIMEOUT,
    DEFAULT_RETRY_AFTER, DEFAULT_SEND_BATCH_SIZE, DEFAULT_SHUTDOWN_TIMEOUT, MAX_CONNECTION_TIMEOUT,
    MAX_MAX_CONNECTIONS,
};
pub(crate) use metrics::ReceiverMetrics;
pub use receiver::ReceiverError;
pub use route::ring::{Ring, POINTS_PER_BACKEND};
pub use route::{LoadBalancingConfig, Resolver, DEFAULT_DNS_INTERVAL, DEFAULT_DNS_TIMEOUT};
pub use service::{
    BackendSetter, Collector, CollectorError, CollectorStatus, FileReopener, ReloadReport,
    Reloader, StatusHandle,
};
pub(crate) use sink::{Refused, SpanSink};
pub use storage::{
    FsyncMode, StorageConfig, StorageError, DEFAULT_MAX_STORAGE_BYTES, DEFAULT_SEGMENT_BYTES,
    DEFAULT_STORAGE_FSYNC_INTERVAL,
};
/// The exporter parts of a [`CollectorConfig`], from `traceq_exporter`.
pub use traceq_exporter::client::{
    ClientTlsConfig, Compression, RetryConfig, DEFAULT_RETRY_INITIAL, DEFAULT_RETRY_MAX_ELAPSED,
    DEFAULT_RETRY_MAX_INTERVAL,
};
pub use traceq_exporter::export::{
    ExportSetupError, ExportTarget, ExporterConfig, DEFAULT_EXPORT_TIMEOUT, DEFAULT_FSYNC_INTERVAL,
    DEFAULT_MAX_EXPORT_BYTES, DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_SIZE,
};
