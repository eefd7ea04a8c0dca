//! What an exporter is: a target, its bounded queue and its retry policy.

use std::path::PathBuf;
use std::time::Duration;

use crate::client::{ClientTlsConfig, Compression, RetryConfig};

/// Default bound on spans queued per exporter (about 300 MB of 300-byte spans at most).
pub const DEFAULT_QUEUE_SIZE: usize = 1_000_000;
/// Default bound on the encoded bytes of the batches an exporter holds, waiting or in flight
/// (256 MiB: 64 requests of the default [`DEFAULT_MAX_EXPORT_BYTES`]).
pub const DEFAULT_QUEUE_BYTES: usize = 256 << 20;
/// Default largest encoded export request: 4 MiB, the default message limit of gRPC servers
/// (grpc-go's, the Collector's, and traceq's own receiver).
pub const DEFAULT_MAX_EXPORT_BYTES: usize = 4 << 20;
/// Default per-request timeout of OTLP exporters.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = crate::client::DEFAULT_TIMEOUT;
/// Default longest a line written by the `file` exporter waits to be synced to disk.
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Default first delay before a failed file write is tried again (a file heals fast or not at
/// all: faster than the OTLP default).
pub const DEFAULT_FILE_RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Default longest delay between attempts at a failed file write.
pub const DEFAULT_FILE_RETRY_MAX_INTERVAL: Duration = Duration::from_secs(5);

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
        /// The file (created if missing, appended to; reopened at this path on request, for
        /// log rotation).
        path: PathBuf,
        /// Longest a written line waits to be synced to disk (`fsync`); zero syncs after every
        /// line. The file is synced at shutdown and before a reopen too.
        fsync_interval: Duration,
    },
    /// OTLP-JSON lines on standard output.
    Stdout,
}

impl ExportTarget {
    /// A [`File`](Self::File) target at `path`, synced every [`DEFAULT_FSYNC_INTERVAL`].
    #[must_use]
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self::File {
            path: path.into(),
            fsync_interval: DEFAULT_FSYNC_INTERVAL,
        }
    }
}

/// One exporter: a target, its bounded queue and its retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterConfig {
    /// The exporter's key in the configuration, e.g. `otlp/tempo` (names metrics and logs).
    pub name: String,
    /// Where spans go.
    pub target: ExportTarget,
    /// Most spans waiting in this exporter's queue or in flight; further batches are dropped
    /// and counted.
    pub queue_size: usize,
    /// Most encoded bytes of the batches waiting in this exporter's queue or in flight; further
    /// batches are dropped and counted. At least `max_export_bytes`, so a full batch fits.
    pub queue_bytes: usize,
    /// Largest encoded request sent to this exporter's downstream. The collector cuts batches
    /// at the smallest of its exporters' limits; a larger batch pushed to the queue is split
    /// before it is sent, and a span that alone is larger is dropped and counted.
    pub max_export_bytes: usize,
    /// Retries of retryable failures (for the `file` exporter: failed writes).
    pub retry: RetryConfig,
    /// TLS to an OTLP downstream (the `tls` block); `None`: plain text unless the endpoint is
    /// `https://`. Kept here rather than in [`ExportTarget`] so that a target re-pointed at
    /// another endpoint (the load-balancing exporter's backends) keeps it. Ignored by the
    /// `file` and stdout targets.
    pub tls: Option<ClientTlsConfig>,
}

impl ExporterConfig {
    /// An exporter named `name` sending to `target`, with the default bounds
    /// ([`DEFAULT_QUEUE_SIZE`], [`DEFAULT_QUEUE_BYTES`], [`DEFAULT_MAX_EXPORT_BYTES`]) and the
    /// default retry policy of the target: the OTLP defaults, the faster file defaults
    /// ([`file_retry`]), none for stdout (a closed pipe does not heal).
    #[must_use]
    pub fn new(name: impl Into<String>, target: ExportTarget) -> Self {
        let retry = match target {
            ExportTarget::File { .. } => file_retry(),
            ExportTarget::Stdout => RetryConfig {
                enabled: false,
                ..RetryConfig::default()
            },
            _ => RetryConfig::default(),
        };
        Self {
            name: name.into(),
            target,
            queue_size: DEFAULT_QUEUE_SIZE,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            max_export_bytes: DEFAULT_MAX_EXPORT_BYTES,
            retry,
            tls: None,
        }
    }

    /// Sets [`queue_size`](Self::queue_size).
    #[must_use]
    pub fn with_queue_size(mut self, spans: usize) -> Self {
        self.queue_size = spans;
        self
    }

    /// Sets [`queue_bytes`](Self::queue_bytes).
    #[must_use]
    pub fn with_queue_bytes(mut self, bytes: usize) -> Self {
        self.queue_bytes = bytes;
        self
    }

    /// Sets [`max_export_bytes`](Self::max_export_bytes).
    #[must_use]
    pub fn with_max_export_bytes(mut self, bytes: usize) -> Self {
        self.max_export_bytes = bytes;
        self
    }

    /// Sets [`retry`](Self::retry).
    #[must_use]
    pub fn with_retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Sets [`tls`](Self::tls).
    #[must_use]
    pub fn with_tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// The `file` exporter's default retry policy: [`DEFAULT_FILE_RETRY_INITIAL`] doubling to
/// [`DEFAULT_FILE_RETRY_MAX_INTERVAL`], given up after the OTLP default
/// [`DEFAULT_RETRY_MAX_ELAPSED`](crate::client::DEFAULT_RETRY_MAX_ELAPSED) (and at the
/// shutdown deadline).
#[must_use]
pub fn file_retry() -> RetryConfig {
    RetryConfig {
        enabled: true,
        initial_interval: DEFAULT_FILE_RETRY_INITIAL,
        max_interval: DEFAULT_FILE_RETRY_MAX_INTERVAL,
        ..RetryConfig::default()
    }
}
