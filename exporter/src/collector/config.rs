//! The collector's configuration file.
//!
//! The shape follows the OpenTelemetry Collector's, so an operator can paste their `receivers`,
//! `processors.tail_sampling` and `exporters` blocks in: the `tail_sampling` block is read by
//! [`SamplerConfig::from_yaml`] unchanged. What traceq adds or leaves out, and why:
//!
//! - There is one pipeline (traces, every receiver into every exporter), so `service.pipelines`
//!   is not needed; `service` carries traceq's own settings instead.
//! - Receivers take `auth.bearer_token` directly (the Collector needs an extension for it).
//! - Exporters speak plain HTTP/2 or HTTP/1.1 to the downstream; TLS is only on receivers.
//! - `sending_queue.queue_size` counts spans, not batches: memory is what an operator sizes.
//!
//! Every unknown key and every invalid value is an error naming the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use traceq_sampler::{parse_duration, SamplerConfig};

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
/// Default bound on spans queued per exporter (about 300 MB of 300-byte spans at most).
pub const DEFAULT_QUEUE_SIZE: usize = 1_000_000;
/// Default per-request timeout of OTLP exporters.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default first retry delay (the Collector's `retry_on_failure` defaults).
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(5);
/// Default longest retry delay.
pub const DEFAULT_RETRY_MAX_INTERVAL: Duration = Duration::from_secs(30);
/// Default time after which a batch is given up (0 would mean retry forever).
pub const DEFAULT_RETRY_MAX_ELAPSED: Duration = Duration::from_secs(300);
/// Default `Retry-After` sent when the buffer is full.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Default deadline for deciding pending traces and flushing exporters at shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

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

fn field_error(field: impl Into<String>, reason: impl Into<String>) -> CollectorConfigError {
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
}

/// Compression of outgoing OTLP requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed.
    None,
    /// gzip (the Collector's default).
    Gzip,
}

/// Retrying failed exports (retryable errors only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Retry at all.
    pub enabled: bool,
    /// First delay; each retry doubles it (with jitter) up to `max_interval`.
    pub initial_interval: Duration,
    /// Longest delay between attempts.
    pub max_interval: Duration,
    /// Give a batch up (counted as dropped) after this long; zero retries for ever.
    pub max_elapsed_time: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_interval: DEFAULT_RETRY_INITIAL,
            max_interval: DEFAULT_RETRY_MAX_INTERVAL,
            max_elapsed_time: DEFAULT_RETRY_MAX_ELAPSED,
        }
    }
}

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
    /// Deadline for the final decisions and exporter flush on shutdown.
    pub shutdown_timeout: Duration,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("default addresses are valid")
}

impl Default for CollectorConfig {
    /// Both receivers and `/metrics` on loopback, the default sampler (every error trace, 10% of
    /// the rest), and no exporter (add one).
    fn default() -> Self {
        Self {
            grpc: Some(ReceiverConfig {
                endpoint: addr(DEFAULT_GRPC_ENDPOINT),
                max_request_bytes: DEFAULT_GRPC_MAX_REQUEST_BYTES,
                tls: None,
                bearer_token: None,
            }),
            http: Some(ReceiverConfig {
                endpoint: addr(DEFAULT_HTTP_ENDPOINT),
                max_request_bytes: DEFAULT_HTTP_MAX_REQUEST_BYTES,
                tls: None,
                bearer_token: None,
            }),
            sampler: SamplerConfig::default(),
            sampling: true,
            send_batch_size: DEFAULT_SEND_BATCH_SIZE,
            batch_timeout: DEFAULT_BATCH_TIMEOUT,
            on_buffer_full: OnBufferFull::Refuse {
                retry_after: DEFAULT_RETRY_AFTER,
            },
            exporters: Vec::new(),
            admin: Some(addr(DEFAULT_ADMIN_ENDPOINT)),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

// ---- the YAML shape -------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    #[serde(default)]
    receivers: Option<RawReceivers>,
    #[serde(default)]
    processors: Option<RawProcessors>,
    #[serde(default)]
    exporters: Option<BTreeMap<String, serde_yaml::Value>>,
    #[serde(default)]
    service: Option<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceivers {
    otlp: Option<RawOtlpReceiver>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtlpReceiver {
    protocols: RawProtocols,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtocols {
    // `grpc:` with no body (null) enables the protocol with defaults, as in the Collector.
    #[serde(default, deserialize_with = "present")]
    grpc: Option<Option<RawGrpc>>,
    #[serde(default, deserialize_with = "present")]
    http: Option<Option<RawHttp>>,
}

fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrpc {
    endpoint: Option<String>,
    max_recv_msg_size_mib: Option<u64>,
    tls: Option<RawTls>,
    auth: Option<RawAuth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    endpoint: Option<String>,
    max_request_body_size: Option<u64>,
    tls: Option<RawTls>,
    auth: Option<RawAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    bearer_token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcessors {
    tail_sampling: Option<serde_yaml::Value>,
    batch: Option<RawBatch>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    send_batch_size: Option<usize>,
    timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    telemetry: Option<RawTelemetry>,
    sampling: Option<bool>,
    on_buffer_full: Option<String>,
    retry_after: Option<String>,
    shutdown_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    metrics: Option<RawMetrics>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    /// An address, or `none` to turn `/metrics` and `/healthz` off.
    address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtlpExporter {
    endpoint: Option<String>,
    compression: Option<String>,
    timeout: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    sending_queue: Option<RawQueue>,
    retry_on_failure: Option<RawRetry>,
    tls: Option<RawClientTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientTls {
    insecure: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    queue_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    enabled: Option<bool>,
    initial_interval: Option<String>,
    max_interval: Option<String>,
    max_elapsed_time: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileExporter {
    path: PathBuf,
    sending_queue: Option<RawQueue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStdoutExporter {
    verbosity: Option<String>,
    sending_queue: Option<RawQueue>,
}

fn duration(field: &str, text: &str) -> Result<Duration, CollectorConfigError> {
    parse_duration("duration", text).map_err(|_| {
        field_error(
            field,
            format!("`{text}` is not a duration like `500ms`, `2s` or `1m30s`"),
        )
    })
}

fn socket(field: &str, text: &str) -> Result<SocketAddr, CollectorConfigError> {
    // `localhost:4317` is common in Collector configs; it means loopback.
    let text = text.trim();
    let resolved = text
        .strip_prefix("localhost:")
        .map_or_else(|| text.to_owned(), |port| format!("127.0.0.1:{port}"));
    resolved.parse().map_err(|_| {
        field_error(
            field,
            format!("`{text}` is not an address like `127.0.0.1:4317`"),
        )
    })
}

fn positive(field: &str, v: u64) -> Result<u64, CollectorConfigError> {
    if v == 0 {
        Err(field_error(field, "must be positive"))
    } else {
        Ok(v)
    }
}

fn tls(raw: Option<RawTls>) -> Option<TlsConfig> {
    raw.map(|t| TlsConfig {
        cert_file: t.cert_file,
        key_file: t.key_file,
    })
}

fn compression(field: &str, raw: Option<&str>) -> Result<Compression, CollectorConfigError> {
    match raw.unwrap_or("gzip") {
        "gzip" => Ok(Compression::Gzip),
        "none" | "" => Ok(Compression::None),
        other => Err(field_error(
            field,
            format!("`{other}` is not supported (use `gzip` or `none`)"),
        )),
    }
}

fn queue_size(field: &str, raw: Option<RawQueue>) -> Result<usize, CollectorConfigError> {
    let size = raw.and_then(|q| q.queue_size).unwrap_or(DEFAULT_QUEUE_SIZE);
    positive(field, size as u64).map(|v| v as usize)
}

fn retry(prefix: &str, raw: Option<RawRetry>) -> Result<RetryConfig, CollectorConfigError> {
    let d = RetryConfig::default();
    let Some(raw) = raw else { return Ok(d) };
    let get = |name: &str, v: Option<String>, def: Duration| match v {
        Some(t) => duration(&format!("{prefix}.{name}"), &t),
        None => Ok(def),
    };
    let cfg = RetryConfig {
        enabled: raw.enabled.unwrap_or(true),
        initial_interval: get("initial_interval", raw.initial_interval, d.initial_interval)?,
        max_interval: get("max_interval", raw.max_interval, d.max_interval)?,
        max_elapsed_time: get("max_elapsed_time", raw.max_elapsed_time, d.max_elapsed_time)?,
    };
    if cfg.enabled && cfg.initial_interval.is_zero() {
        return Err(field_error(
            format!("{prefix}.initial_interval"),
            "must be positive",
        ));
    }
    if cfg.enabled && cfg.max_interval < cfg.initial_interval {
        return Err(field_error(
            format!("{prefix}.max_interval"),
            "must not be less than initial_interval",
        ));
    }
    Ok(cfg)
}

fn exporter(key: &str, value: serde_yaml::Value) -> Result<ExporterConfig, CollectorConfigError> {
    let kind = key.split('/').next().unwrap_or(key);
    let yaml = |e: serde_yaml::Error| CollectorConfigError::Yaml(format!("exporters.{key}: {e}"));
    // `otlp:` with no body is a null value; treat it as an empty mapping.
    let value = if value.is_null() {
        serde_yaml::Value::Mapping(serde_yaml::Mapping::new())
    } else {
        value
    };
    let f = |name: &str| format!("exporters.{key}.{name}");
    match kind {
        "otlp" | "otlphttp" => {
            let raw: RawOtlpExporter = serde_yaml::from_value(value).map_err(yaml)?;
            if raw.tls.is_some_and(|t| !t.insecure) {
                return Err(field_error(
                    f("tls.insecure"),
                    "TLS to the downstream is not supported; set `insecure: true` for plain text",
                ));
            }
            let endpoint = raw
                .endpoint
                .filter(|e| !e.trim().is_empty())
                .ok_or_else(|| field_error(f("endpoint"), "is required"))?;
            let compression = compression(&f("compression"), raw.compression.as_deref())?;
            let timeout = match raw.timeout {
                Some(t) => duration(&f("timeout"), &t)?,
                None => DEFAULT_EXPORT_TIMEOUT,
            };
            if timeout.is_zero() {
                return Err(field_error(f("timeout"), "must be positive"));
            }
            let headers: Vec<(String, String)> =
                raw.headers.unwrap_or_default().into_iter().collect();
            let target = if kind == "otlp" {
                ExportTarget::OtlpGrpc {
                    endpoint,
                    compression,
                    timeout,
                    headers,
                }
            } else {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(field_error(
                        f("endpoint"),
                        format!("`{endpoint}` is not a URL like `http://127.0.0.1:4318`"),
                    ));
                }
                ExportTarget::OtlpHttp {
                    endpoint,
                    compression,
                    timeout,
                    headers,
                }
            };
            Ok(ExporterConfig {
                name: key.to_owned(),
                target,
                queue_size: queue_size(&f("sending_queue.queue_size"), raw.sending_queue)?,
                retry: retry(&f("retry_on_failure"), raw.retry_on_failure)?,
            })
        }
        "file" => {
            let raw: RawFileExporter = serde_yaml::from_value(value).map_err(yaml)?;
            if raw.path.as_os_str().is_empty() {
                return Err(field_error(f("path"), "is required"));
            }
            Ok(ExporterConfig {
                name: key.to_owned(),
                target: ExportTarget::File { path: raw.path },
                queue_size: queue_size(&f("sending_queue.queue_size"), raw.sending_queue)?,
                retry: RetryConfig {
                    enabled: false,
                    ..RetryConfig::default()
                },
            })
        }
        "debug" | "stdout" => {
            let raw: RawStdoutExporter = serde_yaml::from_value(value).map_err(yaml)?;
            if let Some(v) = raw.verbosity.as_deref() {
                if !matches!(v, "basic" | "normal" | "detailed") {
                    return Err(field_error(
                        f("verbosity"),
                        format!("`{v}` is not one of basic, normal, detailed"),
                    ));
                }
            }
            Ok(ExporterConfig {
                name: key.to_owned(),
                target: ExportTarget::Stdout,
                queue_size: queue_size(&f("sending_queue.queue_size"), raw.sending_queue)?,
                retry: RetryConfig {
                    enabled: false,
                    ..RetryConfig::default()
                },
            })
        }
        other => Err(field_error(
            format!("exporters.{key}"),
            format!("exporter type `{other}` is not supported (use otlp, otlphttp, file or debug)"),
        )),
    }
}

impl CollectorConfig {
    /// Reads a collector configuration file's text. Missing sections take their defaults; an
    /// empty `receivers.otlp.protocols` entry (e.g. `grpc:`) enables that protocol with defaults,
    /// and a `receivers` section without a protocol disables it.
    ///
    /// # Errors
    ///
    /// [`CollectorConfigError`] naming the field at fault.
    ///
    /// # Examples
    /// ```
    /// use traceq_exporter::collector::{CollectorConfig, ExportTarget};
    ///
    /// let cfg = CollectorConfig::from_yaml(r#"
    /// receivers:
    ///   otlp:
    ///     protocols:
    ///       grpc:
    ///         endpoint: 127.0.0.1:14317
    /// processors:
    ///   tail_sampling:
    ///     decision_wait: 10s
    ///     policies:
    ///       - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
    /// exporters:
    ///   otlp/tempo:
    ///     endpoint: 127.0.0.1:24317
    /// "#)?;
    /// assert!(cfg.http.is_none());
    /// assert!(matches!(cfg.exporters[0].target, ExportTarget::OtlpGrpc { .. }));
    /// assert!(CollectorConfig::from_yaml("exporters: {otlp: {endpoint: x, colour: red}}").is_err());
    /// # Ok::<(), traceq_exporter::collector::CollectorConfigError>(())
    /// ```
    pub fn from_yaml(text: &str) -> Result<Self, CollectorConfigError> {
        let raw: RawDoc = if text.trim().is_empty() {
            RawDoc::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| CollectorConfigError::Yaml(e.to_string()))?
        };
        let mut cfg = Self::default();
        if let Some(receivers) = raw.receivers {
            let protocols = receivers.otlp.map(|o| o.protocols);
            let (grpc, http) = match protocols {
                Some(p) => (p.grpc, p.http),
                None => (None, None),
            };
            cfg.grpc = match grpc {
                None => None,
                Some(g) => {
                    let g = g.unwrap_or_default();
                    let p = "receivers.otlp.protocols.grpc";
                    Some(ReceiverConfig {
                        endpoint: socket(
                            &format!("{p}.endpoint"),
                            g.endpoint.as_deref().unwrap_or(DEFAULT_GRPC_ENDPOINT),
                        )?,
                        max_request_bytes: match g.max_recv_msg_size_mib {
                            Some(m) => {
                                let m = positive(&format!("{p}.max_recv_msg_size_mib"), m)?;
                                usize::try_from(m.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
                            }
                            None => DEFAULT_GRPC_MAX_REQUEST_BYTES,
                        },
                        tls: tls(g.tls),
                        bearer_token: g.auth.map(|a| a.bearer_token),
                    })
                }
            };
            cfg.http = match http {
                None => None,
                Some(h) => {
                    let h = h.unwrap_or_default();
                    let p = "receivers.otlp.protocols.http";
                    Some(ReceiverConfig {
                        endpoint: socket(
                            &format!("{p}.endpoint"),
                            h.endpoint.as_deref().unwrap_or(DEFAULT_HTTP_ENDPOINT),
                        )?,
                        max_request_bytes: match h.max_request_body_size {
                            Some(b) => positive(&format!("{p}.max_request_body_size"), b)? as usize,
                            None => DEFAULT_HTTP_MAX_REQUEST_BYTES,
                        },
                        tls: tls(h.tls),
                        bearer_token: h.auth.map(|a| a.bearer_token),
                    })
                }
            };
            if cfg.grpc.is_none() && cfg.http.is_none() {
                return Err(field_error(
                    "receivers.otlp.protocols",
                    "enable grpc, http or both",
                ));
            }
        }
        if let Some(processors) = raw.processors {
            if let Some(ts) = processors.tail_sampling {
                let text = serde_yaml::to_string(&ts)
                    .map_err(|e| CollectorConfigError::Yaml(e.to_string()))?;
                cfg.sampler = SamplerConfig::from_yaml(&text)?;
            }
            if let Some(batch) = processors.batch {
                if let Some(n) = batch.send_batch_size {
                    cfg.send_batch_size =
                        positive("processors.batch.send_batch_size", n as u64)? as usize;
                }
                if let Some(t) = batch.timeout {
                    cfg.batch_timeout = duration("processors.batch.timeout", &t)?;
                }
            }
        }
        if let Some(exporters) = raw.exporters {
            for (key, value) in exporters {
                cfg.exporters.push(exporter(&key, value)?);
            }
        }
        if let Some(service) = raw.service {
            if let Some(address) = service
                .telemetry
                .and_then(|t| t.metrics)
                .and_then(|m| m.address)
            {
                cfg.admin = if address == "none" {
                    None
                } else {
                    Some(socket("service.telemetry.metrics.address", &address)?)
                };
            }
            if let Some(s) = service.sampling {
                cfg.sampling = s;
            }
            let retry_after = match service.retry_after {
                Some(t) => {
                    let d = duration("service.retry_after", &t)?;
                    if d.is_zero() {
                        return Err(field_error("service.retry_after", "must be positive"));
                    }
                    d
                }
                None => DEFAULT_RETRY_AFTER,
            };
            cfg.on_buffer_full = match service.on_buffer_full.as_deref() {
                None | Some("refuse") => OnBufferFull::Refuse { retry_after },
                Some("decide_early") => OnBufferFull::DecideEarly,
                Some(other) => {
                    return Err(field_error(
                        "service.on_buffer_full",
                        format!("`{other}` is not one of refuse, decide_early"),
                    ))
                }
            };
            if let Some(t) = service.shutdown_timeout {
                cfg.shutdown_timeout = duration("service.shutdown_timeout", &t)?;
            }
        }
        Ok(cfg)
    }

    /// The default configuration as a commented YAML document, for `traceq collector
    /// --print-config`. Reading it back gives [`CollectorConfig::default`] plus one `debug`
    /// exporter.
    #[must_use]
    pub fn default_yaml() -> String {
        let s = SamplerConfig::default();
        let retry = RetryConfig::default();
        let secs = |d: Duration| format!("{}ms", d.as_millis());
        format!(
            "\
# traceq collector configuration (the effective defaults).
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {DEFAULT_GRPC_ENDPOINT}
        max_recv_msg_size_mib: {grpc_mib}
        # tls: {{cert_file: server.crt, key_file: server.key}}
        # auth: {{bearer_token: secret}}
      http:
        endpoint: {DEFAULT_HTTP_ENDPOINT}
        max_request_body_size: {DEFAULT_HTTP_MAX_REQUEST_BYTES}
processors:
  batch:
    send_batch_size: {DEFAULT_SEND_BATCH_SIZE}
    timeout: {batch_timeout}
  tail_sampling:
    decision_wait: {decision_wait}
    decision_wait_after_root: {after_root}
    num_traces: {num_traces}
    max_buffer_bytes: {max_bytes}
    max_spans_per_trace: {max_spans}
    decision_cache:
      sampled_cache_size: {sampled}
      non_sampled_cache_size: {non_sampled}
    job_id_key: {job_key}
    policies:
      - name: errors
        type: status_code
        status_code: {{status_codes: [ERROR]}}
      - name: probabilistic-10
        type: probabilistic
        probabilistic: {{sampling_percentage: {pct}}}
exporters:
  # otlp/downstream: {{endpoint: 127.0.0.1:14317, compression: gzip}}
  # otlphttp: {{endpoint: http://127.0.0.1:14318}}
  # file: {{path: traces.jsonl}}
  debug:
    sending_queue: {{queue_size: {DEFAULT_QUEUE_SIZE}}}
    # OTLP exporters also take: timeout: {export_timeout}, headers: {{}},
    # retry_on_failure: {{enabled: true, initial_interval: {ri}, max_interval: {rm}, max_elapsed_time: {re}}}
service:
  telemetry:
    metrics:
      address: {DEFAULT_ADMIN_ENDPOINT}
  sampling: true
  on_buffer_full: refuse
  retry_after: {retry_after}
  shutdown_timeout: {shutdown}
",
            grpc_mib = DEFAULT_GRPC_MAX_REQUEST_BYTES >> 20,
            batch_timeout = secs(DEFAULT_BATCH_TIMEOUT),
            decision_wait = secs(s.decision_wait),
            after_root = secs(s.decision_wait_after_root),
            num_traces = s.num_traces,
            max_bytes = s.max_buffer_bytes,
            max_spans = s.max_spans_per_trace,
            sampled = s.decision_cache.sampled_cache_size,
            non_sampled = s.decision_cache.non_sampled_cache_size,
            job_key = s.job_id_key,
            pct = traceq_sampler::DEFAULT_SAMPLING_PERCENTAGE,
            export_timeout = secs(DEFAULT_EXPORT_TIMEOUT),
            ri = secs(retry.initial_interval),
            rm = secs(retry.max_interval),
            re = secs(retry.max_elapsed_time),
            retry_after = secs(DEFAULT_RETRY_AFTER),
            shutdown = secs(DEFAULT_SHUTDOWN_TIMEOUT),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_should_give_the_defaults() {
        let cfg = CollectorConfig::from_yaml("").unwrap();
        assert_eq!(cfg.grpc, CollectorConfig::default().grpc);
        assert_eq!(cfg.sampler, SamplerConfig::default());
        assert!(cfg.exporters.is_empty());
    }

    #[test]
    fn printed_defaults_should_read_back_as_the_defaults() {
        let cfg = CollectorConfig::from_yaml(&CollectorConfig::default_yaml()).unwrap();
        let d = CollectorConfig::default();
        assert_eq!(cfg.grpc, d.grpc);
        assert_eq!(cfg.http, d.http);
        assert_eq!(cfg.sampler, d.sampler);
        assert_eq!(cfg.admin, d.admin);
        assert_eq!(cfg.on_buffer_full, d.on_buffer_full);
        assert_eq!(cfg.send_batch_size, d.send_batch_size);
        assert_eq!(cfg.batch_timeout, d.batch_timeout);
        assert_eq!(cfg.shutdown_timeout, d.shutdown_timeout);
        assert_eq!(cfg.exporters.len(), 1);
        assert_eq!(cfg.exporters[0].target, ExportTarget::Stdout);
    }

    #[test]
    fn empty_protocol_entry_should_enable_it_with_defaults() {
        let cfg = CollectorConfig::from_yaml("receivers: {otlp: {protocols: {http: }}}").unwrap();
        assert!(cfg.grpc.is_none());
        assert_eq!(
            cfg.http.unwrap().endpoint,
            DEFAULT_HTTP_ENDPOINT.parse().unwrap()
        );
    }

    #[test]
    fn unknown_keys_should_be_errors_naming_them() {
        for (doc, needle) in [
            ("recievers: {}", "recievers"),
            (
                "receivers: {otlp: {protocols: {grpc: {endpont: x}}}}",
                "endpont",
            ),
            ("exporters: {otlp: {endpoint: a:1, colour: red}}", "colour"),
            ("service: {samplng: true}", "samplng"),
            (
                "processors: {tail_sampling: {policies: [], decision_wiat: 1s}}",
                "decision_wiat",
            ),
        ] {
            let err = CollectorConfig::from_yaml(doc).unwrap_err().to_string();
            assert!(err.contains(needle), "{doc}: {err}");
        }
    }

    #[test]
    fn invalid_values_should_be_errors_naming_the_field() {
        for (doc, needle) in [
            (
                "receivers: {otlp: {protocols: {grpc: {endpoint: nowhere}}}}",
                "receivers.otlp.protocols.grpc.endpoint",
            ),
            (
                "receivers: {otlp: {protocols: {grpc: {max_recv_msg_size_mib: 0}}}}",
                "max_recv_msg_size_mib",
            ),
            ("exporters: {otlp: {}}", "exporters.otlp.endpoint"),
            (
                "exporters: {otlphttp: {endpoint: 127.0.0.1:4318}}",
                "exporters.otlphttp.endpoint",
            ),
            (
                "exporters: {otlp/a: {endpoint: x:1, compression: zstd}}",
                "exporters.otlp/a.compression",
            ),
            (
                "exporters: {otlp: {endpoint: x:1, retry_on_failure: {initial_interval: soon}}}",
                "exporters.otlp.retry_on_failure.initial_interval",
            ),
            ("exporters: {kafka: {}}", "exporters.kafka"),
            ("service: {on_buffer_full: panic}", "service.on_buffer_full"),
            ("processors: {batch: {send_batch_size: 0}}", "send_batch_size"),
            (
                "processors: {tail_sampling: {policies: [{name: p, type: latency, latency: {threshold_ms: -1}}]}}",
                "tail_sampling",
            ),
            ("receivers: {otlp: {protocols: {}}}", "receivers.otlp.protocols"),
        ] {
            let err = CollectorConfig::from_yaml(doc).unwrap_err().to_string();
            assert!(err.contains(needle), "{doc}: {err}");
        }
    }

    #[test]
    fn exporters_should_keep_their_names_and_settings() {
        let cfg = CollectorConfig::from_yaml(
            "exporters:\n  otlp/a: {endpoint: 'http://127.0.0.1:1', compression: none, timeout: 2s, headers: {authorization: Bearer x}, sending_queue: {queue_size: 10}, retry_on_failure: {initial_interval: 10ms, max_interval: 100ms, max_elapsed_time: 1s}}\n  file: {path: out.jsonl}\n",
        )
        .unwrap();
        assert_eq!(cfg.exporters.len(), 2);
        let a = &cfg.exporters[1];
        assert_eq!(a.name, "otlp/a");
        assert_eq!(a.queue_size, 10);
        assert_eq!(a.retry.initial_interval, Duration::from_millis(10));
        assert_eq!(
            a.target,
            ExportTarget::OtlpGrpc {
                endpoint: "http://127.0.0.1:1".into(),
                compression: Compression::None,
                timeout: Duration::from_secs(2),
                headers: vec![("authorization".into(), "Bearer x".into())],
            }
        );
        assert_eq!(
            cfg.exporters[0].target,
            ExportTarget::File {
                path: "out.jsonl".into()
            }
        );
    }

    #[test]
    fn service_settings_should_apply() {
        let cfg = CollectorConfig::from_yaml(
            "service: {telemetry: {metrics: {address: none}}, sampling: false, on_buffer_full: decide_early, shutdown_timeout: 3s}",
        )
        .unwrap();
        assert!(cfg.admin.is_none());
        assert!(!cfg.sampling);
        assert_eq!(cfg.on_buffer_full, OnBufferFull::DecideEarly);
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(3));
    }
}
