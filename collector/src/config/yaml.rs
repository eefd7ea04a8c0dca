//! The Collector's YAML shape, read by serde, and its translation into [`CollectorConfig`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use traceq_exporter::client::{ClientTlsConfig, Compression, RetryConfig};
use traceq_exporter::export::{
    file_retry, ExportTarget, ExporterConfig, DEFAULT_EXPORT_TIMEOUT, DEFAULT_FSYNC_INTERVAL,
    DEFAULT_MAX_EXPORT_BYTES, DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_SIZE,
};
use traceq_sampler::{parse_duration, SamplerConfig};

use crate::route::{LoadBalancingConfig, Resolver, DEFAULT_DNS_INTERVAL, DEFAULT_DNS_TIMEOUT};
use crate::storage::{FsyncMode, StorageConfig};

use super::{
    field_error, CollectorConfig, CollectorConfigError, OnBufferFull, ReceiverConfig, TlsConfig,
    DEFAULT_GRPC_ENDPOINT, DEFAULT_GRPC_MAX_REQUEST_BYTES, DEFAULT_HTTP_ENDPOINT,
    DEFAULT_HTTP_MAX_REQUEST_BYTES, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READ_HEADER_TIMEOUT, DEFAULT_RETRY_AFTER, MAX_CONNECTION_TIMEOUT, MAX_MAX_CONNECTIONS,
};

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
    #[serde(default)]
    extensions: Option<BTreeMap<String, serde_yaml::Value>>,
}

/// The `file_storage` extension. `timeout` and `compaction` are the Collector's and are taken
/// without effect: the log takes no lock that could time out, and deletes whole segments, so
/// there is nothing to compact.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileStorage {
    directory: Option<PathBuf>,
    fsync: Option<serde_yaml::Value>,
    fsync_interval: Option<String>,
    max_storage_bytes: Option<u64>,
    segment_bytes: Option<u64>,
    create_directory: Option<bool>,
    #[allow(dead_code)]
    timeout: Option<String>,
    #[allow(dead_code)]
    compaction: Option<serde_yaml::Value>,
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
    max_connections: Option<u64>,
    read_header_timeout: Option<String>,
    idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    endpoint: Option<String>,
    max_request_body_size: Option<u64>,
    tls: Option<RawTls>,
    auth: Option<RawAuth>,
    max_connections: Option<u64>,
    read_header_timeout: Option<String>,
    idle_timeout: Option<String>,
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
    /// The Collector's list of extensions to start; each must be defined.
    extensions: Option<Vec<String>>,
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
    /// Required on `/metrics` as `authorization: Bearer <token>`.
    bearer_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtlpExporter {
    endpoint: Option<String>,
    compression: Option<String>,
    timeout: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    max_export_bytes: Option<u64>,
    sending_queue: Option<RawQueue>,
    retry_on_failure: Option<RawRetry>,
    tls: Option<RawClientTls>,
}

/// The Collector's client `tls` block of an exporter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientTls {
    #[serde(default)]
    insecure: bool,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
    server_name_override: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    queue_size: Option<usize>,
    max_bytes: Option<u64>,
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
    fsync_interval: Option<String>,
    max_export_bytes: Option<u64>,
    sending_queue: Option<RawQueue>,
    retry_on_failure: Option<RawRetry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoadBalancing {
    routing_key: Option<String>,
    protocol: RawLbProtocol,
    resolver: RawLbResolver,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLbProtocol {
    otlp: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLbResolver {
    #[serde(rename = "static")]
    fixed: Option<RawLbStatic>,
    dns: Option<RawLbDns>,
    k8s: Option<serde_yaml::Value>,
    aws_cloud_map: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLbStatic {
    hostnames: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLbDns {
    hostname: String,
    port: Option<u16>,
    interval: Option<String>,
    timeout: Option<String>,
}

/// The `loadbalancing` exporter at `exporters.{key}`.
fn loadbalancing(
    key: &str,
    value: serde_yaml::Value,
) -> Result<LoadBalancingConfig, CollectorConfigError> {
    let yaml = |e: serde_yaml::Error| CollectorConfigError::Yaml(format!("exporters.{key}: {e}"));
    let f = |name: &str| format!("exporters.{key}.{name}");
    let raw: RawLoadBalancing = serde_yaml::from_value(value).map_err(yaml)?;
    match raw.routing_key.as_deref() {
        None | Some("traceID") => {}
        Some(other) => {
            return Err(field_error(
                f("routing_key"),
                format!(
                    "`{other}` is not supported: traces are routed by trace id (`traceID`),                      which tail sampling needs"
                ),
            ))
        }
    }
    let Some(mut otlp) = raw.protocol.otlp else {
        return Err(field_error(f("protocol.otlp"), "is required"));
    };
    if otlp.is_null() {
        otlp = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
    }
    let Some(map) = otlp.as_mapping_mut() else {
        return Err(field_error(f("protocol.otlp"), "must be a mapping"));
    };
    if map.contains_key("endpoint") {
        return Err(field_error(
            f("protocol.otlp.endpoint"),
            "is taken from the resolver, one per backend: remove it",
        ));
    }
    if map
        .get("sending_queue")
        .and_then(|q| q.as_mapping())
        .is_some_and(|q| q.contains_key("storage"))
    {
        return Err(field_error(
            f("protocol.otlp.sending_queue.storage"),
            "is not supported on a router: put the storage on the sampling tier",
        ));
    }
    map.insert("endpoint".into(), "0.0.0.0:0".into());
    let protocol = exporter_as("otlp", &format!("{key}.protocol.otlp"), otlp)?;
    let resolver =
        match raw.resolver {
            RawLbResolver {
                fixed: Some(list),
                dns: None,
                k8s: None,
                aws_cloud_map: None,
            } => {
                if list.hostnames.is_empty() {
                    return Err(field_error(
                        f("resolver.static.hostnames"),
                        "must not be empty",
                    ));
                }
                for h in &list.hostnames {
                    let ok = h.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok()
                    });
                    if !ok {
                        return Err(field_error(
                            f("resolver.static.hostnames"),
                            format!("`{h}` is not host:port"),
                        ));
                    }
                }
                Resolver::Static(list.hostnames)
            }
            RawLbResolver {
                fixed: None,
                dns: Some(dns),
                k8s: None,
                aws_cloud_map: None,
            } => {
                let interval = match dns.interval {
                    Some(t) => duration(&f("resolver.dns.interval"), &t)?,
                    None => DEFAULT_DNS_INTERVAL,
                };
                let timeout = match dns.timeout {
                    Some(t) => duration(&f("resolver.dns.timeout"), &t)?,
                    None => DEFAULT_DNS_TIMEOUT,
                };
                if interval.is_zero() || timeout.is_zero() {
                    return Err(field_error(
                        f("resolver.dns"),
                        "interval and timeout must be positive",
                    ));
                }
                if dns.hostname.trim().is_empty() {
                    return Err(field_error(f("resolver.dns.hostname"), "is required"));
                }
                Resolver::Dns {
                    hostname: dns.hostname,
                    port: dns.port.unwrap_or(4317),
                    interval,
                    timeout,
                }
            }
            RawLbResolver { k8s: Some(_), .. }
            | RawLbResolver {
                aws_cloud_map: Some(_),
                ..
            } => return Err(field_error(
                f("resolver"),
                "only the static and dns resolvers are supported (k8s and aws_cloud_map are not)",
            )),
            _ => {
                return Err(field_error(
                    f("resolver"),
                    "set exactly one of static and dns",
                ))
            }
        };
    let mut protocol = protocol;
    protocol.name = key.to_owned();
    Ok(LoadBalancingConfig {
        name: key.to_owned(),
        protocol,
        resolver,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStdoutExporter {
    verbosity: Option<String>,
    max_export_bytes: Option<u64>,
    sending_queue: Option<RawQueue>,
}

fn duration(field: &str, text: &str) -> Result<Duration, CollectorConfigError> {
    parse_duration(text).map_err(|_| {
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

/// A size setting as written: its key, its value and the bytes in one unit of it.
struct Size {
    field: &'static str,
    value: u64,
    unit: u64,
}

/// The connection bounds of a receiver's block, as written.
struct RawLimits {
    max_connections: Option<u64>,
    read_header_timeout: Option<String>,
    idle_timeout: Option<String>,
}

/// A connection timeout: positive and at most [`MAX_CONNECTION_TIMEOUT`].
fn connection_timeout(
    field: &str,
    raw: Option<String>,
    default: Duration,
) -> Result<Duration, CollectorConfigError> {
    let Some(text) = raw else { return Ok(default) };
    let d = duration(field, &text)?;
    if d.is_zero() {
        return Err(field_error(field, "must be positive"));
    }
    if d > MAX_CONNECTION_TIMEOUT {
        return Err(field_error(
            field,
            format!(
                "must be at most {}h",
                MAX_CONNECTION_TIMEOUT.as_secs() / 3600
            ),
        ));
    }
    Ok(d)
}

/// A bearer token: visible ASCII, so that a client can send it in a header.
fn bearer_token(field: &str, token: String) -> Result<String, CollectorConfigError> {
    if token.is_empty() {
        return Err(field_error(field, "must not be empty"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(field_error(
            field,
            "must be visible ASCII characters, without spaces",
        ));
    }
    Ok(token)
}

/// What differs between the gRPC and HTTP receivers' blocks.
struct Protocol {
    prefix: &'static str,
    endpoint: &'static str,
    max_request_bytes: usize,
}

impl Protocol {
    /// One receiver's settings, each error naming its field under `prefix`.
    fn receiver(
        &self,
        endpoint: Option<&str>,
        size: Option<Size>,
        tls: Option<RawTls>,
        auth: Option<RawAuth>,
        limits: RawLimits,
    ) -> Result<ReceiverConfig, CollectorConfigError> {
        let p = self.prefix;
        let max_connections = match limits.max_connections {
            Some(n) => {
                let field = format!("{p}.max_connections");
                let n = positive(&field, n)?;
                if n > MAX_MAX_CONNECTIONS as u64 {
                    return Err(field_error(
                        field,
                        format!("must be at most {MAX_MAX_CONNECTIONS}"),
                    ));
                }
                n as usize
            }
            None => DEFAULT_MAX_CONNECTIONS,
        };
        let read_header_timeout = connection_timeout(
            &format!("{p}.read_header_timeout"),
            limits.read_header_timeout,
            DEFAULT_READ_HEADER_TIMEOUT,
        )?;
        let idle_timeout = connection_timeout(
            &format!("{p}.idle_timeout"),
            limits.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
        )?;
        let bearer_token = auth
            .map(|a| bearer_token(&format!("{p}.auth.bearer_token"), a.bearer_token))
            .transpose()?;
        let max_request_bytes = match size {
            Some(Size { field, value, unit }) => {
                let v = positive(&format!("{p}.{field}"), value)?;
                usize::try_from(v.saturating_mul(unit)).unwrap_or(usize::MAX)
            }
            None => self.max_request_bytes,
        };
        Ok(ReceiverConfig {
            endpoint: socket(&format!("{p}.endpoint"), endpoint.unwrap_or(self.endpoint))?,
            max_request_bytes,
            tls: tls.map(|t| TlsConfig {
                cert_file: t.cert_file,
                key_file: t.key_file,
            }),
            bearer_token,
            max_connections,
            read_header_timeout,
            idle_timeout,
        })
    }
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

/// An exporter's bounds: `max_export_bytes`, `sending_queue.queue_size` (spans) and
/// `sending_queue.max_bytes`, each positive, the byte bound at least `max_export_bytes` (or a
/// full request would never fit in the queue).
fn bounds(
    config: ExporterConfig,
    f: impl Fn(&str) -> String,
    max_export_bytes: Option<u64>,
    queue: Option<RawQueue>,
) -> Result<ExporterConfig, CollectorConfigError> {
    let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let max_export = match max_export_bytes {
        Some(v) => to_usize(positive(&f("max_export_bytes"), v)?),
        None => DEFAULT_MAX_EXPORT_BYTES,
    };
    let queue = queue.unwrap_or_default();
    let queue_size = positive(
        &f("sending_queue.queue_size"),
        queue.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE) as u64,
    )?;
    let queue_bytes = match queue.max_bytes {
        Some(v) => to_usize(positive(&f("sending_queue.max_bytes"), v)?),
        None => DEFAULT_QUEUE_BYTES.max(max_export),
    };
    if queue_bytes < max_export {
        return Err(field_error(
            f("sending_queue.max_bytes"),
            format!(
                "{queue_bytes} is less than max_export_bytes ({max_export}): a full request \
                 would never fit in the queue"
            ),
        ));
    }
    Ok(config
        .with_queue_size(to_usize(queue_size))
        .with_queue_bytes(queue_bytes)
        .with_max_export_bytes(max_export))
}

fn retry(prefix: &str, raw: Option<RawRetry>) -> Result<RetryConfig, CollectorConfigError> {
    retry_from(prefix, raw, RetryConfig::default())
}

/// `retry_on_failure`, each missing setting taken from `d`.
fn retry_from(
    prefix: &str,
    raw: Option<RawRetry>,
    d: RetryConfig,
) -> Result<RetryConfig, CollectorConfigError> {
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

/// An exporter's `tls` block: the shape is checked here, the files when the exporter starts.
fn client_tls(
    f: &dyn Fn(&str) -> String,
    raw: RawClientTls,
) -> Result<ClientTlsConfig, CollectorConfigError> {
    match (&raw.cert_file, &raw.key_file) {
        (Some(_), None) => {
            return Err(field_error(f("tls.key_file"), "is required with cert_file"))
        }
        (None, Some(_)) => {
            return Err(field_error(f("tls.cert_file"), "is required with key_file"))
        }
        _ => {}
    }
    for (name, path) in [
        ("tls.ca_file", &raw.ca_file),
        ("tls.cert_file", &raw.cert_file),
        ("tls.key_file", &raw.key_file),
    ] {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(field_error(f(name), "must not be empty"));
        }
    }
    if !raw.insecure && !raw.insecure_skip_verify && raw.ca_file.is_none() {
        return Err(field_error(
            f("tls.ca_file"),
            "is required for TLS (no CA roots are built in; the system bundle, e.g. \
             /etc/ssl/certs/ca-certificates.crt, will do), or set insecure: true for plain text",
        ));
    }
    Ok(ClientTlsConfig {
        insecure: raw.insecure,
        ca_file: raw.ca_file,
        cert_file: raw.cert_file,
        key_file: raw.key_file,
        insecure_skip_verify: raw.insecure_skip_verify,
        server_name_override: raw.server_name_override,
    })
}

fn exporter(key: &str, value: serde_yaml::Value) -> Result<ExporterConfig, CollectorConfigError> {
    exporter_as(key.split('/').next().unwrap_or(key), key, value)
}

/// An exporter of type `kind` whose block is at `exporters.{key}`.
fn exporter_as(
    kind: &str,
    key: &str,
    value: serde_yaml::Value,
) -> Result<ExporterConfig, CollectorConfigError> {
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
            let tls = raw.tls.map(|t| client_tls(&f, t)).transpose()?;
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
            let mut config = ExporterConfig::new(key, target)
                .with_retry(retry(&f("retry_on_failure"), raw.retry_on_failure)?);
            config.tls = tls;
            bounds(config, f, raw.max_export_bytes, raw.sending_queue)
        }
        "file" => {
            let raw: RawFileExporter = serde_yaml::from_value(value).map_err(yaml)?;
            if raw.path.as_os_str().is_empty() {
                return Err(field_error(f("path"), "is required"));
            }
            let fsync_interval = match raw.fsync_interval {
                Some(t) => duration(&f("fsync_interval"), &t)?,
                None => DEFAULT_FSYNC_INTERVAL,
            };
            let target = ExportTarget::File {
                path: raw.path,
                fsync_interval,
            };
            let retry = retry_from(&f("retry_on_failure"), raw.retry_on_failure, file_retry())?;
            let config = ExporterConfig::new(key, target).with_retry(retry);
            bounds(config, f, raw.max_export_bytes, raw.sending_queue)
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
            let config = ExporterConfig::new(key, ExportTarget::Stdout);
            bounds(config, f, raw.max_export_bytes, raw.sending_queue)
        }
        other => Err(field_error(
            format!("exporters.{key}"),
            format!(
                "exporter type `{other}` is not supported (use otlp, otlphttp, file, debug or \
                 loadbalancing)"
            ),
        )),
    }
}

/// Takes the `storage` key out of a block (a mapping), returning the extension it names.
fn take_storage(
    block: &mut serde_yaml::Value,
    field: &str,
) -> Result<Option<String>, CollectorConfigError> {
    let Some(map) = block.as_mapping_mut() else {
        return Ok(None);
    };
    match map.remove("storage") {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::String(name)) if !name.trim().is_empty() => Ok(Some(name)),
        Some(_) => Err(field_error(
            field,
            "must name a storage extension, like `file_storage`",
        )),
    }
}

/// The storage settings from `extensions` and the blocks that name one (`users`: the block
/// and the extension it names).
fn storage(
    extensions: Option<BTreeMap<String, serde_yaml::Value>>,
    users: &[(String, String)],
    exporters: Vec<String>,
) -> Result<Option<StorageConfig>, CollectorConfigError> {
    let extensions = extensions.unwrap_or_default();
    for key in extensions.keys() {
        if !(key == "file_storage" || key.starts_with("file_storage/")) {
            return Err(field_error(
                format!("extensions.{key}"),
                format!("extension type `{key}` is not supported (only file_storage is)"),
            ));
        }
    }
    let Some((first_user, name)) = users.first() else {
        return Ok(None);
    };
    if let Some((other, other_name)) = users.iter().find(|(_, n)| n != name) {
        return Err(field_error(
            format!("{other}.storage"),
            format!(
                "names `{other_name}` but {first_user} names `{name}`: the collector keeps one \
                 log, name one storage extension everywhere"
            ),
        ));
    }
    let Some(value) = extensions.get(name) else {
        return Err(field_error(
            format!("{first_user}.storage"),
            format!("names `{name}`, which is not defined under `extensions`"),
        ));
    };
    let f = |k: &str| format!("extensions.{name}.{k}");
    let value = if value.is_null() {
        serde_yaml::Value::Mapping(serde_yaml::Mapping::new())
    } else {
        value.clone()
    };
    let raw: RawFileStorage = serde_yaml::from_value(value)
        .map_err(|e| CollectorConfigError::Yaml(format!("extensions.{name}: {e}")))?;
    let directory = raw
        .directory
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| field_error(f("directory"), "is required"))?;
    if raw.create_directory == Some(false) && !directory.is_dir() {
        return Err(field_error(
            f("directory"),
            format!(
                "{} does not exist (and create_directory is false)",
                directory.display()
            ),
        ));
    }
    let mut cfg = StorageConfig::new(directory);
    cfg.exporters = exporters;
    cfg.fsync = match raw.fsync {
        None => FsyncMode::Interval,
        // The Collector's boolean: sync on every write, or leave it to the kernel.
        Some(serde_yaml::Value::Bool(true)) => FsyncMode::Always,
        Some(serde_yaml::Value::Bool(false)) => FsyncMode::Never,
        Some(serde_yaml::Value::String(mode)) => match mode.as_str() {
            "always" => FsyncMode::Always,
            "interval" => FsyncMode::Interval,
            "never" => FsyncMode::Never,
            other => {
                return Err(field_error(
                    f("fsync"),
                    format!("`{other}` is not one of always, interval, never"),
                ))
            }
        },
        Some(_) => {
            return Err(field_error(
                f("fsync"),
                "must be always, interval or never (or true / false)",
            ))
        }
    };
    if let Some(t) = raw.fsync_interval {
        let d = duration(&f("fsync_interval"), &t)?;
        if d.is_zero() {
            return Err(field_error(f("fsync_interval"), "must be positive"));
        }
        cfg.fsync_interval = d;
    }
    if let Some(n) = raw.max_storage_bytes {
        if n < 1 << 20 {
            return Err(field_error(
                f("max_storage_bytes"),
                "must be at least 1 MiB",
            ));
        }
        cfg.max_storage_bytes = n;
    }
    if let Some(n) = raw.segment_bytes {
        cfg.segment_bytes = positive(&f("segment_bytes"), n)?;
    }
    Ok(Some(cfg))
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
    /// use traceq_collector::{CollectorConfig, ExportTarget};
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
    /// # Ok::<(), traceq_collector::CollectorConfigError>(())
    /// ```
    pub fn from_yaml(text: &str) -> Result<Self, CollectorConfigError> {
        let mut raw: RawDoc = if text.trim().is_empty() {
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
            cfg.grpc = grpc
                .map(|g| {
                    let g = g.unwrap_or_default();
                    let size = g.max_recv_msg_size_mib.map(|m| Size {
                        field: "max_recv_msg_size_mib",
                        value: m,
                        unit: 1 << 20,
                    });
                    let protocol = Protocol {
                        prefix: "receivers.otlp.protocols.grpc",
                        endpoint: DEFAULT_GRPC_ENDPOINT,
                        max_request_bytes: DEFAULT_GRPC_MAX_REQUEST_BYTES,
                    };
                    let limits = RawLimits {
                        max_connections: g.max_connections,
                        read_header_timeout: g.read_header_timeout,
                        idle_timeout: g.idle_timeout,
                    };
                    protocol.receiver(g.endpoint.as_deref(), size, g.tls, g.auth, limits)
                })
                .transpose()?;
            cfg.http = http
                .map(|h| {
                    let h = h.unwrap_or_default();
                    let size = h.max_request_body_size.map(|b| Size {
                        field: "max_request_body_size",
                        value: b,
                        unit: 1,
                    });
                    let protocol = Protocol {
                        prefix: "receivers.otlp.protocols.http",
                        endpoint: DEFAULT_HTTP_ENDPOINT,
                        max_request_bytes: DEFAULT_HTTP_MAX_REQUEST_BYTES,
                    };
                    let limits = RawLimits {
                        max_connections: h.max_connections,
                        read_header_timeout: h.read_header_timeout,
                        idle_timeout: h.idle_timeout,
                    };
                    protocol.receiver(h.endpoint.as_deref(), size, h.tls, h.auth, limits)
                })
                .transpose()?;
            if cfg.grpc.is_none() && cfg.http.is_none() {
                return Err(field_error(
                    "receivers.otlp.protocols",
                    "enable grpc, http or both",
                ));
            }
        }
        // Which storage extension the sampler and each exporter name, taken out of their blocks
        // before those are read.
        let mut storage_users: Vec<(String, String)> = Vec::new();
        if let Some(ts) = raw
            .processors
            .as_mut()
            .and_then(|p| p.tail_sampling.as_mut())
        {
            if let Some(name) = take_storage(ts, "processors.tail_sampling.storage")? {
                storage_users.push(("processors.tail_sampling".into(), name));
            }
        }
        if let Some(processors) = raw.processors {
            if let Some(ts) = processors.tail_sampling {
                let text = serde_yaml::to_string(&ts)
                    .map_err(|e| CollectorConfigError::Yaml(e.to_string()))?;
                cfg.sampler = SamplerConfig::from_yaml(&text)?;
                // The Collector's `block_on_overflow: false` evicts the oldest traces to make
                // room: here they are decided early instead (see `service.on_buffer_full`).
                if cfg.sampler.block_on_overflow == Some(false) {
                    cfg.on_buffer_full = OnBufferFull::DecideEarly;
                }
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
        let mut stored_exporters = Vec::new();
        if let Some(exporters) = raw.exporters {
            for (key, mut value) in exporters {
                let queue = value
                    .as_mapping_mut()
                    .and_then(|m| m.get_mut("sending_queue"));
                if let Some(queue) = queue {
                    let field = format!("exporters.{key}.sending_queue.storage");
                    if let Some(name) = take_storage(queue, &field)? {
                        storage_users.push((format!("exporters.{key}"), name));
                        stored_exporters.push(key.clone());
                    }
                }
                if key.split('/').next() == Some("loadbalancing") {
                    if cfg.loadbalancing.is_some() {
                        return Err(field_error(
                            format!("exporters.{key}"),
                            "one loadbalancing exporter per collector",
                        ));
                    }
                    cfg.loadbalancing = Some(loadbalancing(&key, value)?);
                    continue;
                }
                cfg.exporters.push(exporter(&key, value)?);
            }
        }
        let extension_names: Vec<String> = raw
            .extensions
            .as_ref()
            .map(|e| e.keys().cloned().collect())
            .unwrap_or_default();
        cfg.storage = storage(raw.extensions, &storage_users, stored_exporters)?;
        if let Some(names) = raw.service.as_ref().and_then(|s| s.extensions.as_ref()) {
            for name in names {
                if !(name == "file_storage" || name.starts_with("file_storage/")) {
                    return Err(field_error(
                        "service.extensions",
                        format!("extension `{name}` is not supported (only file_storage is)"),
                    ));
                }
                if !extension_names.contains(name) {
                    return Err(field_error(
                        "service.extensions",
                        format!("`{name}` is listed but not defined under `extensions`"),
                    ));
                }
            }
        }
        if let Some(service) = raw.service {
            let metrics = service
                .telemetry
                .and_then(|t| t.metrics)
                .unwrap_or_default();
            if let Some(address) = metrics.address {
                cfg.admin = if address == "none" {
                    None
                } else {
                    Some(socket("service.telemetry.metrics.address", &address)?)
                };
            }
            cfg.metrics_bearer_token = metrics
                .bearer_token
                .map(|t| bearer_token("service.telemetry.metrics.bearer_token", t))
                .transpose()?;
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
            // `block_on_overflow` (true: make senders wait, which is refusing them with a
            // retryable error; false: decide early) picks the default, and must agree with an
            // explicit `on_buffer_full`.
            let block = cfg.sampler.block_on_overflow;
            cfg.on_buffer_full = match (service.on_buffer_full.as_deref(), block) {
                (None, Some(false)) => OnBufferFull::DecideEarly,
                (None | Some("refuse"), _) => OnBufferFull::Refuse { retry_after },
                (Some("decide_early"), _) => OnBufferFull::DecideEarly,
                (Some(other), _) => {
                    return Err(field_error(
                        "service.on_buffer_full",
                        format!("`{other}` is not one of refuse, decide_early"),
                    ))
                }
            };
            let decides_early = cfg.on_buffer_full == OnBufferFull::DecideEarly;
            if block.is_some_and(|block| block == decides_early) {
                return Err(field_error(
                    "service.on_buffer_full",
                    format!(
                        "`{}` contradicts processors.tail_sampling.block_on_overflow: {}",
                        if decides_early {
                            "decide_early"
                        } else {
                            "refuse"
                        },
                        block.unwrap_or_default()
                    ),
                ));
            }
            if let Some(t) = service.shutdown_timeout {
                cfg.shutdown_timeout = duration("service.shutdown_timeout", &t)?;
            }
        }
        Ok(cfg)
    }
}
