//! What an exporter is: a target, its bounded queue and its retry policy.

use std::path::PathBuf;
use std::time::Duration;

use crate::client::{Compression, RetryConfig};

/// Default bound on spans queued per exporter (about 300 MB of 300-byte spans at most).
pub const DEFAULT_QUEUE_SIZE: usize = 1_000_000;
/// Default per-request timeout of OTLP exporters.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = crate::client::DEFAULT_TIMEOUT;

/// Where an exporter sends kept spans.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportTarget {
    /// OTLP/gRPC `TraceService/Export` at `endpoint` (`host:port` or `http://host:port`).
    OtlpGrpc {
        /// The downstream address.
        endpoint: String,
        /// Request compression.
        compression: Compression,
        /// Per-request timeout.
        timeout: Duration,
        /// Extra request metadata (e.g. `authorization`).
        headers: Vec<(String, String)>,
    },
    /// OTLP/HTTP protobuf `POST` to `endpoint` (a full URL; `/v1/traces` is appended when the URL
    /// has no path, as the Collector's `otlphttp` exporter does).
    OtlpHttp {
        /// The URL posted to.
        endpoint: String,
        /// Request compression.
        compression: Compression,
        /// Per-request timeout.
        timeout: Duration,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// OTLP-JSON lines appended to a file (one `ExportTraceServiceRequest` per line).
    File {
        /// The file (created if missing, appended to).
        path: PathBuf,
    },
    /// OTLP-JSON lines on standard output.
    Stdout,
}

/// One exporter: a target, its bounded queue and its retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterConfig {
    /// The exporter's key in the configuration, e.g. `otlp/tempo` (names metrics and logs).
    pub name: String,
    /// Where spans go.
    pub target: ExportTarget,
    /// Most spans waiting in this exporter's queue; further batches are dropped and counted.
    pub queue_size: usize,
    /// Retries of retryable failures.
    pub retry: RetryConfig,
}
