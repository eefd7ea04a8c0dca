//! The collector's configuration file.
//!
//! The shape follows the OpenTelemetry Collector's, so an operator can paste their `receivers`,
//! `processors.tail_sampling` and `exporters` blocks in: the `tail_sampling` block is read by
//! [`SamplerConfig::from_yaml`] unchanged. What traceq adds or leaves out, and why:
//!
//! - There is one pipeline (traces, every receiver into every exporter), so `service.pipelines`
//!   is not needed; `service` carries traceq's own settings instead.
//! - Receivers take `auth.bearer_token` directly (the Collector needs an extension for it).
//! - The `otlp` and `otlphttp` exporters speak TLS (and mutual TLS) with the Collector's `tls`
//!   keys, but no CA roots are built in: verifying a server takes `tls.ca_file`.
//! - `sending_queue.queue_size` counts spans, not batches: memory is what an operator sizes; and
//!   `sending_queue.max_bytes` bounds the queue's encoded bytes too.
//! - Each exporter has a `max_export_bytes` (default 4 MiB, the gRPC message limit): batches are
//!   cut at the smallest exporter's, so no request passes any downstream's limit. The `file`
//!   exporter takes `fsync_interval` and `retry_on_failure` (for failed writes).
//!
//! Every unknown key and every invalid value is an error naming the field.
//!
//! The typed model is here; `yaml` translates the Collector's YAML shape into it, and
//! `template` writes the commented defaults that `traceq collector --print-config` prints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use traceq_exporter::export::ExporterConfig;
use traceq_sampler::SamplerConfig;

use crate::route::LoadBalancingConfig;
use crate::storage::StorageConfig;

mod template;
#[cfg(test)]
mod tests;
mod yaml;

/// Default OTLP/gRPC receiver address (loopback only unless configured).
pub const DEFAULT_GRPC_ENDPOINT: &str = "127.0.0.1:4317";
/// Default OTLP/HTTP receiver address.
pub const DEFAULT_HTTP_ENDPOINT: &str = "127.0.0.1:4318";
/// Default address of `/metrics` and `/healthz`.
pub const DEFAULT_ADMIN_ENDPOINT: &str = "127.0.0.1:8888";
/// Default largest gRPC request, after decompression (the Collector's and gRPC's 4 MiB).
pub const DEFAULT_GRPC_MAX_REQUEST_BYTES: usize = 4 << 20;
/// Default largest HTTP request body, after decompression (16 MiB).
pub const DEFAULT_HTTP_MAX_REQUEST_BYTES: usize = 16 << 20;
/// Default number of kept spans per outgoing export request (the Collector's `batch` default).
pub const DEFAULT_SEND_BATCH_SIZE: usize = 8192;
/// Default longest a kept span waits for its batch to fill.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_millis(200);
/// Default `Retry-After` sent when the buffer is full.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Default deadline for deciding pending traces and flushing exporters at shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default most connections one receiver keeps open at once (TLS handshakes included); more
/// are closed at once. Raise the process's file-descriptor limit (`ulimit -n`) to match.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default longest a client may take to send a whole request head (the Collector's
/// `read_header_timeout`).
pub const DEFAULT_READ_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest a receiver connection stays open with no request in flight (the Collector's
/// `idle_timeout`). Longer than the common client pool idle times (90 s for Go), so the client
/// closes first and never reuses a connection the server is closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest `max_connections` accepted.
pub const MAX_MAX_CONNECTIONS: usize = 1 << 20;
/// Longest `read_header_timeout` or `idle_timeout` accepted.
pub const MAX_CONNECTION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// An invalid collector configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectorConfigError {
    /// The YAML is malformed, or has an unknown or mistyped key (the message names it).
    #[error("invalid collector configuration: {0}")]
    Yaml(String),
    /// A field has an invalid value.
    #[error("field `{field}`: {reason}")]
    Field {
        /// The field's path, e.g. `exporters.otlp.endpoint`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `tail_sampling` block is invalid. (Its message is shown inline, not as a source, so
    /// an error chain prints it once.)
    #[error("processors.tail_sampling: {0}")]
    Sampler(traceq_sampler::ConfigError),
}

impl From<traceq_sampler::ConfigError> for CollectorConfigError {
    fn from(e: traceq_sampler::ConfigError) -> Self {
        Self::Sampler(e)
    }
}

pub(crate) fn field_error(
    field: impl Into<String>,
    reason: impl Into<String>,
) -> CollectorConfigError {
    CollectorConfigError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What a receiver does with data that would take the sampler's buffer past its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBufferFull {
    /// Refuse the request with a retryable error (gRPC `UNAVAILABLE`, HTTP 503 with
    /// `Retry-After`), so well-behaved clients retry later.
    Refuse {
        /// The delay suggested to the client.
        retry_after: Duration,
    },
    /// Accept it and decide the oldest buffered traces early to make room.
    DecideEarly,
}

/// TLS for a receiver: PEM certificate chain and private key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// One OTLP receiver (gRPC or HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Address to listen on.
    pub endpoint: SocketAddr,
    /// Largest request accepted, in bytes after decompression.
    pub max_request_bytes: usize,
    /// Serve TLS instead of plain text.
    pub tls: Option<TlsConfig>,
    /// Require `authorization: Bearer <token>` on every request.
    pub bearer_token: Option<String>,
    /// Most connections open at once (TLS handshakes included); a connection over it is
    /// closed at once and counted (`traceq_receiver_connections_refused_total`).
    pub max_connections: usize,
    /// Longest a client may take to send a whole request head, from connecting (after the TLS
    /// handshake) or from its first byte after the previous response; then the connection is
    /// closed (`traceq_receiver_connections_timed_out_total`).
    pub read_header_timeout: Duration,
    /// Longest a connection stays open with no request in flight; then it is closed gracefully
    /// (`traceq_receiver_connections_idle_closed_total`). HTTP/2 pings do not count as requests.
    pub idle_timeout: Duration,
}

impl ReceiverConfig {
    /// A receiver on `endpoint` taking requests up to `max_request_bytes`, without TLS or
    /// authentication, with the default connection bounds.
    #[must_use]
    pub fn new(endpoint: SocketAddr, max_request_bytes: usize) -> Self {
        Self {
            endpoint,
            max_request_bytes,
            tls: None,
            bearer_token: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            read_header_timeout: DEFAULT_READ_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// The whole collector: receivers, the sampler, exporters and operations.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// The OTLP/gRPC receiver, if enabled.
    pub grpc: Option<ReceiverConfig>,
    /// The OTLP/HTTP receiver, if enabled.
    pub http: Option<ReceiverConfig>,
    /// Tail sampling (`processors.tail_sampling`).
    pub sampler: SamplerConfig,
    /// Tail sampling on; off passes every span straight to the exporters (a baseline).
    pub sampling: bool,
    /// Kept spans per outgoing request (`processors.batch.send_batch_size`).
    pub send_batch_size: usize,
    /// Longest a kept span waits for a batch (`processors.batch.timeout`).
    pub batch_timeout: Duration,
    /// What receivers do when the buffer is full.
    pub on_buffer_full: OnBufferFull,
    /// The exporters; every kept span goes to each.
    pub exporters: Vec<ExporterConfig>,
    /// Address of `/metrics` and `/healthz`, if enabled.
    pub admin: Option<SocketAddr>,
    /// Require `authorization: Bearer <token>` on `/metrics` (`/healthz` stays open).
    pub metrics_bearer_token: Option<String>,
    /// Deadline for the final decisions and exporter flush on shutdown.
    pub shutdown_timeout: Duration,
    /// Crash-safe storage (the `file_storage` extension), if on.
    pub storage: Option<StorageConfig>,
    /// The `loadbalancing` exporter (routing by trace id to a sampling tier), if any.
    pub loadbalancing: Option<LoadBalancingConfig>,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("default addresses are valid")
}

impl Default for CollectorConfig {
    /// Both receivers and `/metrics` on loopback, the default sampler (every error trace, 10% of
    /// the rest), and no exporter (add one).
    fn default() -> Self {
        Self {
            grpc: Some(ReceiverConfig::new(
                addr(DEFAULT_GRPC_ENDPOINT),
                DEFAULT_GRPC_MAX_REQUEST_BYTES,
            )),
            http: Some(ReceiverConfig::new(
                addr(DEFAULT_HTTP_ENDPOINT),
                DEFAULT_HTTP_MAX_REQUEST_BYTES,
            )),
            sampler: SamplerConfig::default(),
            sampling: true,
            send_batch_size: DEFAULT_SEND_BATCH_SIZE,
            batch_timeout: DEFAULT_BATCH_TIMEOUT,
            on_buffer_full: OnBufferFull::Refuse {
                retry_after: DEFAULT_RETRY_AFTER,
            },
            exporters: Vec::new(),
            admin: Some(addr(DEFAULT_ADMIN_ENDPOINT)),
            metrics_bearer_token: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            storage: None,
            loadbalancing: None,
        }
    }
}

impl CollectorConfig {
    /// Turns storage on in `directory` (what `--storage DIR` does): for the sampler and every
    /// exporter, with the other settings of a configured `file_storage` kept.
    pub fn with_storage_directory(mut self, directory: impl Into<PathBuf>) -> Self {
        let mut storage = self
            .storage
            .take()
            .unwrap_or_else(|| StorageConfig::new(PathBuf::new()));
        storage.directory = directory.into();
        storage.exporters = self.exporters.iter().map(|e| e.name.clone()).collect();
        self.storage = Some(storage);
        self
    }
}
