//! The OTLP client: encoded `ExportTraceServiceRequest`s to one downstream over OTLP/gRPC or
//! OTLP/HTTP, with gzip, timeouts, headers and one retry policy. The collector's `otlp` and
//! `otlphttp` exporters and `traceq loadgen` all send through it.
//!
//! ```text
//!  encoded request ─▶ prepare (gzip once, HTTP) ─▶ attempt ─▶ backoff / Retry-After ─▶ attempt …
//!                                                     │
//!                                         OTLP/gRPC (tonic, pass-through codec)
//!                                         OTLP/HTTP (hyper, POST …/v1/traces)
//! ```
//!
//! Why requests are encoded once, before the first attempt: a retry then re-sends the same bytes
//! instead of cloning a message of hundreds of spans, and both transports send the same protobuf
//! body. For gRPC this takes a pass-through codec on tonic's generic client rather than the
//! generated `TraceServiceClient`, which wants the message itself; the call (path, framing,
//! compression, metadata, status) is the same.

mod error;
mod grpc;
mod http;
mod retry;
mod tls;

use std::time::Duration;

use bytes::Bytes;
use url::Url;

pub use error::{Accepted, Rejection, SendError};
pub(crate) use retry::{with_retries, RetryEvent};
pub use retry::{
    RetryConfig, RetryLimits, SendOutcome, DEFAULT_RETRY_INITIAL, DEFAULT_RETRY_MAX_ELAPSED,
    DEFAULT_RETRY_MAX_INTERVAL, MAX_RETRY_AFTER,
};
pub use tls::ClientTlsConfig;

use crate::export::ExportSetupError;
use grpc::GrpcTransport;
use http::HttpTransport;

/// The `user-agent` of outgoing requests.
pub(crate) const USER_AGENT: &str = concat!("traceq/", env!("CARGO_PKG_VERSION"));

/// The path appended to an OTLP/HTTP endpoint given without one, as the Collector's `otlphttp`
/// exporter does.
pub const TRACES_PATH: &str = "/v1/traces";

/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// OTLP/gRPC: unary `TraceService/Export` calls over one HTTP/2 connection.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies: `POST <endpoint>/v1/traces`.
    Http,
}

/// Compression of outgoing OTLP requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed.
    None,
    /// gzip (the Collector's default).
    Gzip,
}

/// Where and how an [`OtlpClient`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// OTLP/gRPC or OTLP/HTTP.
    pub protocol: Protocol,
    /// gRPC: `host:port` or `http://host:port`. HTTP: a URL (`http://` is assumed without a
    /// scheme); [`TRACES_PATH`] is appended when it has no path.
    pub endpoint: String,
    /// Request compression.
    pub compression: Compression,
    /// Timeout of each attempt, connecting included.
    pub timeout: Duration,
    /// Extra request headers (gRPC metadata), e.g. `authorization`.
    pub headers: Vec<(String, String)>,
    /// The `tls` block, if any: with an `https://` endpoint, or with a bare `host:port` unless
    /// it says `insecure`, the client speaks TLS (see [`ClientTlsConfig`]).
    pub tls: Option<ClientTlsConfig>,
}

impl ClientConfig {
    /// A client config for `endpoint`: no compression, [`DEFAULT_TIMEOUT`], no headers.
    #[must_use]
    pub fn new(protocol: Protocol, endpoint: impl Into<String>) -> Self {
        Self {
            protocol,
            endpoint: endpoint.into(),
            compression: Compression::None,
            timeout: DEFAULT_TIMEOUT,
            headers: Vec::new(),
            tls: None,
        }
    }

    /// Sets [`compression`](Self::compression).
    #[must_use]
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Sets [`timeout`](Self::timeout).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`headers`](Self::headers).
    #[must_use]
    pub fn with_headers(mut self, headers: Vec<(String, String)>) -> Self {
        self.headers = headers;
        self
    }

    /// Sets [`tls`](Self::tls).
    #[must_use]
    pub fn with_tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// Sends encoded `ExportTraceServiceRequest`s to one OTLP downstream.
///
/// Cheap to share between tasks (`Arc`): gRPC requests are multiplexed on one HTTP/2
/// connection, made when the first request is sent; OTLP/HTTP ones use a connection pool.
///
/// # Examples
///
/// ```
/// use traceq_exporter::client::{ClientConfig, OtlpClient, Protocol, RetryConfig, RetryLimits};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = ClientConfig::new(Protocol::Http, "127.0.0.1:9");
/// let client = OtlpClient::new("example", &config)?;
/// // Nothing listens there: the attempt gets no answer, and with retries off it is final.
/// let retry = RetryConfig { enabled: false, ..RetryConfig::default() };
/// let outcome = client.send(bytes::Bytes::new(), &retry, RetryLimits::default()).await;
/// assert!(outcome.result.unwrap_err().is_retryable());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct OtlpClient {
    transport: Transport,
}

// One per client, made once and never moved about: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Transport {
    Grpc(GrpcTransport),
    Http(HttpTransport),
}

impl OtlpClient {
    /// Validates the endpoint and headers and makes the client; no connection is made yet, so
    /// this succeeds while the downstream is down. `name` (an exporter's) names the errors.
    /// A gRPC client must be made inside a tokio runtime (its channel spawns a task).
    ///
    /// # Errors
    ///
    /// [`ExportSetupError`] for an invalid endpoint or header, TLS settings that contradict the
    /// endpoint or each other, a TLS file that cannot be read or parsed, or no tokio runtime
    /// (gRPC).
    pub fn new(name: &str, config: &ClientConfig) -> Result<Self, ExportSetupError> {
        let transport = match config.protocol {
            Protocol::Grpc => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(ExportSetupError::NoRuntime {
                        exporter: name.to_owned(),
                    });
                }
                Transport::Grpc(GrpcTransport::new(name, config)?)
            }
            Protocol::Http => Transport::Http(HttpTransport::new(name, config)?),
        };
        Ok(Self { transport })
    }

    /// Turns an encoded request into what each attempt sends (done once per request, not per
    /// attempt: OTLP/HTTP compresses here; gRPC compresses per call inside tonic).
    ///
    /// # Errors
    ///
    /// [`SendError::Request`] if compressing fails.
    pub fn prepare(&self, body: Bytes) -> Result<Bytes, SendError> {
        match &self.transport {
            Transport::Http(h) => h.prepare(body),
            Transport::Grpc(_) => Ok(body),
        }
    }

    /// One attempt with a [`prepare`](Self::prepare)d payload.
    ///
    /// # Errors
    ///
    /// Why the attempt failed; [`SendError::is_retryable`] says whether to try again.
    pub async fn attempt(&self, payload: &Bytes) -> Result<Accepted, SendError> {
        match &self.transport {
            Transport::Grpc(g) => g.send(payload).await,
            Transport::Http(h) => h.send(payload).await,
        }
    }

    /// Sends `body` (an encoded `ExportTraceServiceRequest`), retrying retryable failures by
    /// `retry` within `limits`.
    pub async fn send(&self, body: Bytes, retry: &RetryConfig, limits: RetryLimits) -> SendOutcome {
        let payload = match self.prepare(body) {
            Ok(p) => p,
            Err(e) => {
                return SendOutcome {
                    retries: 0,
                    result: Err(e),
                }
            }
        };
        with_retries(retry, limits, || self.attempt(&payload), |_| {}).await
    }
}

/// `endpoint`, trimmed, with `http://` in front when it has no scheme.
pub(crate) fn with_scheme(endpoint: &str) -> String {
    let trimmed = endpoint.trim();
    if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    }
}

/// The one `/v1/traces` rule: [`TRACES_PATH`] is set when the URL has no path (or just `/`); a
/// URL with a path is used as it is, like the Collector's `traces_endpoint`.
pub(crate) fn append_traces_path(url: &mut Url) {
    if url.path().is_empty() || url.path() == "/" {
        url.set_path(TRACES_PATH);
    }
}

/// The URL OTLP/HTTP requests to `endpoint` go to, by the rule above: `http://` assumed,
/// [`TRACES_PATH`] appended when there is no path. `None` if it is not a URL.
#[must_use]
pub fn http_traces_url(endpoint: &str) -> Option<String> {
    let mut url = Url::parse(&with_scheme(endpoint)).ok()?;
    append_traces_path(&mut url);
    Some(url.into())
}
