//! What a load run sends, where, how fast and for how long, and the checks made before it starts.

use std::time::Duration;

/// Default OTLP/gRPC endpoint (the Collector's and traceq's gRPC receiver port).
pub const DEFAULT_GRPC_ENDPOINT: &str = "127.0.0.1:4317";
/// Default OTLP/HTTP endpoint; `/v1/traces` is appended.
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://127.0.0.1:4318";
/// Default number of spans in each trace.
pub const DEFAULT_SPANS_PER_TRACE: usize = 10;
/// Default share of traces with one span whose status is ERROR.
pub const DEFAULT_ERROR_RATIO: f64 = 0.01;
/// Default largest number of spans in one export request.
pub const DEFAULT_BATCH_SPANS: usize = 512;
/// Default number of concurrent senders.
pub const DEFAULT_WORKERS: usize = 4;
/// Default `service.name` of the generated resource.
pub const DEFAULT_SERVICE_NAME: &str = "loadgen";
/// Default per-attempt timeout of an export request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of retries of one request after retryable refusals.
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// Default first retry delay when the server does not say how long to wait; it doubles.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_millis(100);

/// Largest `spans_per_trace`, `batch_spans` and spans in one request: 10 000 spans of ~300 bytes
/// stay under gRPC's default 4 MiB message limit.
pub const MAX_SPANS_PER_REQUEST: usize = 10_000;
/// Largest number of workers.
pub const MAX_WORKERS: usize = 1024;
/// Longest delay a server's `Retry-After` can impose on one retry.
pub const MAX_RETRY_DELAY: Duration = crate::client::MAX_RETRY_AFTER;
/// Longest run.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest per-attempt timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

pub use crate::client::Protocol;

/// A setting that makes a run impossible, or a failure starting one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadgenError {
    /// A setting has an invalid value or an invalid combination with another.
    #[error("invalid loadgen setting `{field}`: {reason}")]
    Setting {
        /// The field's name in [`LoadgenConfig`], e.g. `spans_per_trace`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The OTLP client could not be built.
    #[error("building the OTLP client")]
    Client(#[source] crate::export::ExportSetupError),
    /// A worker task panicked or was cancelled.
    #[error("a loadgen worker stopped abnormally")]
    Worker(#[source] tokio::task::JoinError),
}

fn setting(field: &'static str, reason: impl Into<String>) -> LoadgenError {
    LoadgenError::Setting {
        field,
        reason: reason.into(),
    }
}

/// A load run: what to generate, where to send it, how fast and until when.
///
/// Every field has a default (the `DEFAULT_*` constants); [`LoadgenConfig::validate`] checks the
/// whole, and [`run`](crate::loadgen::run) calls it before sending anything.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use traceq_exporter::loadgen::{LoadgenConfig, Protocol};
///
/// let config = LoadgenConfig::default()
///     .with_protocol(Protocol::Http)
///     .with_duration(Duration::from_secs(10))
///     .with_rate(5_000.0)
///     .with_header("authorization", "Bearer s3cret");
/// assert!(config.validate().is_ok());
/// assert_eq!(config.endpoint(), "http://127.0.0.1:4318");
/// // No stop condition: refused.
/// assert!(LoadgenConfig::default().validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LoadgenConfig {
    /// Where to send: `host:port` or `http://host:port`; `None` is the protocol's default. Plain
    /// HTTP only. For OTLP/HTTP, `/v1/traces` is appended unless the URL already ends with it.
    pub endpoint: Option<String>,
    /// OTLP/gRPC or OTLP/HTTP.
    pub protocol: Protocol,
    /// Stop after this many traces have been sent (acknowledged or failed).
    pub traces: Option<u64>,
    /// Stop after this long, at most [`MAX_DURATION`]: no request or retry starts later (a request
    /// in flight finishes; one refused near the end counts as failed).
    pub duration: Option<Duration>,
    /// Target spans per second across all workers; 0 sends as fast as the server answers.
    pub rate: f64,
    /// Spans in each trace: a server root, client and internal children a level or two deep.
    pub spans_per_trace: usize,
    /// Share of traces, from 0 to 1, with one span whose status is ERROR. Exact: of the first
    /// `n` traces of a run, `floor(n * error_ratio)` are error traces.
    pub error_ratio: f64,
    /// Largest number of spans per export request. Requests carry whole traces, at least one:
    /// `max(1, batch_spans / spans_per_trace)` of them (fewer at low rates, see `rate`).
    pub batch_spans: usize,
    /// Concurrent senders, each with its own generator and at most one request in flight.
    pub workers: usize,
    /// Compress request bodies with gzip.
    pub gzip: bool,
    /// `service.name` of the generated resource.
    pub service_name: String,
    /// Seed of the trace and span ids, tree shapes and attributes; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Extra request headers (gRPC metadata), e.g. `authorization`.
    pub headers: Vec<(String, String)>,
    /// Timeout of each attempt of a request, at most [`MAX_TIMEOUT`].
    pub timeout: Duration,
    /// Retries of one request after retryable refusals before it counts as failed.
    pub max_retries: u32,
    /// First retry delay when the server gives none, at most [`MAX_RETRY_DELAY`]; doubles per
    /// retry, capped at [`MAX_RETRY_DELAY`].
    pub retry_initial: Duration,
}

impl Default for LoadgenConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: Protocol::default(),
            traces: None,
            duration: None,
            rate: 0.0,
            spans_per_trace: DEFAULT_SPANS_PER_TRACE,
            error_ratio: DEFAULT_ERROR_RATIO,
            batch_spans: DEFAULT_BATCH_SPANS,
            workers: DEFAULT_WORKERS,
            gzip: false,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            seed: None,
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_initial: DEFAULT_RETRY_INITIAL,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident($field:ident: $ty:ty) = $value:expr;)*) => {$(
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, $field: $ty) -> Self {
            self.$field = $value;
            self
        }
    )*};
}

impl LoadgenConfig {
    setters! {
        /// Sets [`endpoint`](Self::endpoint).
        with_endpoint(endpoint: impl Into<String>) = Some(endpoint.into());
        /// Sets [`protocol`](Self::protocol).
        with_protocol(protocol: Protocol) = protocol;
        /// Sets [`traces`](Self::traces).
        with_traces(traces: u64) = Some(traces);
        /// Sets [`duration`](Self::duration).
        with_duration(duration: Duration) = Some(duration);
        /// Sets [`rate`](Self::rate).
        with_rate(rate: f64) = rate;
        /// Sets [`spans_per_trace`](Self::spans_per_trace).
        with_spans_per_trace(spans_per_trace: usize) = spans_per_trace;
        /// Sets [`error_ratio`](Self::error_ratio).
        with_error_ratio(error_ratio: f64) = error_ratio;
        /// Sets [`batch_spans`](Self::batch_spans).
        with_batch_spans(batch_spans: usize) = batch_spans;
        /// Sets [`workers`](Self::workers).
        with_workers(workers: usize) = workers;
        /// Sets [`gzip`](Self::gzip).
        with_gzip(gzip: bool) = gzip;
        /// Sets [`service_name`](Self::service_name).
        with_service_name(service_name: impl Into<String>) = service_name.into();
        /// Sets [`seed`](Self::seed).
        with_seed(seed: u64) = Some(seed);
        /// Sets [`timeout`](Self::timeout).
        with_timeout(timeout: Duration) = timeout;
        /// Sets [`max_retries`](Self::max_retries).
        with_max_retries(max_retries: u32) = max_retries;
        /// Sets [`retry_initial`](Self::retry_initial).
        with_retry_initial(retry_initial: Duration) = retry_initial;
    }

    /// Adds a request header (gRPC metadata) to [`headers`](Self::headers).
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The endpoint in use: the configured one or the protocol's default.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_deref().unwrap_or(match self.protocol {
            Protocol::Grpc => DEFAULT_GRPC_ENDPOINT,
            Protocol::Http => DEFAULT_HTTP_ENDPOINT,
        })
    }

    /// The URL requests go to: `http://` added when the endpoint has no scheme, and for OTLP/HTTP
    /// `/v1/traces` appended when the URL has no path (the OTLP client's one rule).
    pub fn url(&self) -> String {
        let base = crate::client::with_scheme(self.endpoint().trim_end_matches('/'));
        match self.protocol {
            Protocol::Http => crate::client::http_traces_url(&base).unwrap_or(base),
            _ => base,
        }
    }

    /// Whole traces in each request: as many as fit in `batch_spans`, at least one; with a rate,
    /// no more than a tenth of a second's worth, so requests are spread out instead of bursting.
    pub fn traces_per_request(&self) -> usize {
        let spans = self.spans_per_trace.max(1);
        let mut traces = (self.batch_spans / spans).max(1);
        if self.rate > 0.0 {
            let tenth = (self.rate / 10.0 / spans as f64).floor() as usize;
            traces = traces.min(tenth.max(1));
        }
        traces
    }

    /// Checks every setting and their combinations.
    ///
    /// # Errors
    ///
    /// [`LoadgenError::Setting`] naming the first invalid field.
    pub fn validate(&self) -> Result<(), LoadgenError> {
        if self.traces.is_none() && self.duration.is_none() {
            return Err(setting(
                "traces",
                "set `traces`, `duration` or both, so the run ends",
            ));
        }
        if self.traces == Some(0) {
            return Err(setting("traces", "must be at least 1"));
        }
        if let Some(d) = self.duration.filter(|d| d.is_zero() || *d > MAX_DURATION) {
            return Err(setting(
                "duration",
                format!("must be longer than 0 and at most 30 days, got {d:?}"),
            ));
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err(setting(
                "rate",
                format!(
                    "must be 0 (unlimited) or a positive number of spans per second, got {}",
                    self.rate
                ),
            ));
        }
        if !(1..=MAX_SPANS_PER_REQUEST).contains(&self.spans_per_trace) {
            return Err(setting(
                "spans_per_trace",
                format!(
                    "must be from 1 to {MAX_SPANS_PER_REQUEST}, got {}",
                    self.spans_per_trace
                ),
            ));
        }
        if !(1..=MAX_SPANS_PER_REQUEST).contains(&self.batch_spans) {
            return Err(setting(
                "batch_spans",
                format!(
                    "must be from 1 to {MAX_SPANS_PER_REQUEST}, got {}",
                    self.batch_spans
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.error_ratio) {
            return Err(setting(
                "error_ratio",
                format!("must be from 0 to 1, got {}", self.error_ratio),
            ));
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(setting(
                "workers",
                format!("must be from 1 to {MAX_WORKERS}, got {}", self.workers),
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(setting("service_name", "must not be empty"));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(setting(
                "timeout",
                format!(
                    "must be longer than 0 and at most an hour, got {:?}",
                    self.timeout
                ),
            ));
        }
        if self.retry_initial > MAX_RETRY_DELAY {
            return Err(setting(
                "retry_initial",
                format!(
                    "must be at most {MAX_RETRY_DELAY:?}, got {:?}",
                    self.retry_initial
                ),
            ));
        }
        self.validate_endpoint()?;
        for (name, value) in &self.headers {
            validate_header(name, value)?;
        }
        Ok(())
    }

    fn validate_endpoint(&self) -> Result<(), LoadgenError> {
        let url = self.url();
        let (scheme, rest) = url.split_once("://").unwrap_or(("http", &url));
        if scheme != "http" {
            return Err(setting(
                "endpoint",
                format!("`{scheme}://` is not supported, plain `http://` only"),
            ));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        let port_ok = authority
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok || url.parse::<tonic::codegen::http::Uri>().is_err() {
            return Err(setting(
                "endpoint",
                format!(
                    "`{}` is not `host:port` or `http://host:port`",
                    self.endpoint()
                ),
            ));
        }
        Ok(())
    }
}

fn validate_header(name: &str, value: &str) -> Result<(), LoadgenError> {
    use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
    if name.is_empty() || name.parse::<AsciiMetadataKey>().is_err() {
        return Err(setting(
            "headers",
            format!("`{name}` is not a valid header name"),
        ));
    }
    // gRPC metadata is stricter than HTTP (visible ASCII), so one check serves both protocols.
    if value.parse::<AsciiMetadataValue>().is_err() {
        return Err(setting(
            "headers",
            format!("the value of `{name}` is not visible ASCII"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
