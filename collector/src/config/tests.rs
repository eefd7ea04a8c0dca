use std::time::Duration;

use traceq_exporter::client::Compression;
use traceq_exporter::export::ExportTarget;
use traceq_sampler::SamplerConfig;

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
    assert_eq!(cfg.metrics_bearer_token, d.metrics_bearer_token);
    assert_eq!(cfg.exporters.len(), 1);
    assert_eq!(cfg.exporters[0].target, ExportTarget::Stdout);
    assert_eq!(
        cfg.exporters[0],
        ExporterConfig::new("debug", ExportTarget::Stdout)
    );
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
        (
            "receivers: {otlp: {protocols: {grpc: {max_connections: 0}}}}",
            "receivers.otlp.protocols.grpc.max_connections",
        ),
        (
            "receivers: {otlp: {protocols: {http: {max_connections: 100000000}}}}",
            "receivers.otlp.protocols.http.max_connections",
        ),
        (
            "receivers: {otlp: {protocols: {http: {read_header_timeout: 0s}}}}",
            "receivers.otlp.protocols.http.read_header_timeout",
        ),
        (
            "receivers: {otlp: {protocols: {grpc: {read_header_timeout: soon}}}}",
            "receivers.otlp.protocols.grpc.read_header_timeout",
        ),
        (
            "receivers: {otlp: {protocols: {http: {idle_timeout: 25h}}}}",
            "receivers.otlp.protocols.http.idle_timeout",
        ),
        (
            "receivers: {otlp: {protocols: {grpc: {idle_timeout: -1s}}}}",
            "receivers.otlp.protocols.grpc.idle_timeout",
        ),
        (
            "receivers: {otlp: {protocols: {grpc: {auth: {bearer_token: ''}}}}}",
            "receivers.otlp.protocols.grpc.auth.bearer_token",
        ),
        (
            "service: {telemetry: {metrics: {bearer_token: 'two words'}}}",
            "service.telemetry.metrics.bearer_token",
        ),
        (
            "service: {telemetry: {metrics: {bearer_token: ''}}}",
            "service.telemetry.metrics.bearer_token",
        ),
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
    assert_eq!(cfg.exporters[0].target, ExportTarget::file("out.jsonl"));
}

#[test]
fn export_bounds_should_default_to_the_grpc_message_limit_and_apply_when_set() {
    use traceq_exporter::export::{
        file_retry, DEFAULT_MAX_EXPORT_BYTES, DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_SIZE,
    };
    let cfg = CollectorConfig::from_yaml(
        "exporters:\n  otlp: {endpoint: 'a:1'}\n  otlphttp: {endpoint: 'http://a:1', max_export_bytes: 1000000, sending_queue: {queue_size: 5, max_bytes: 2000000}}\n  file: {path: x.jsonl, fsync_interval: 0s, retry_on_failure: {max_elapsed_time: 1m}}\n",
    )
    .unwrap();
    let by_name = |n: &str| cfg.exporters.iter().find(|e| e.name == n).unwrap();
    let otlp = by_name("otlp");
    assert_eq!(otlp.max_export_bytes, DEFAULT_MAX_EXPORT_BYTES);
    assert_eq!(DEFAULT_MAX_EXPORT_BYTES, 4 << 20);
    assert_eq!(otlp.queue_bytes, DEFAULT_QUEUE_BYTES);
    assert_eq!(otlp.queue_size, DEFAULT_QUEUE_SIZE);
    let http = by_name("otlphttp");
    assert_eq!(http.max_export_bytes, 1_000_000);
    assert_eq!(http.queue_bytes, 2_000_000);
    assert_eq!(http.queue_size, 5);
    let file = by_name("file");
    assert_eq!(
        file.target,
        ExportTarget::File {
            path: "x.jsonl".into(),
            fsync_interval: Duration::ZERO
        }
    );
    // file writes are retried, faster than OTLP requests, unless configured otherwise
    assert!(file.retry.enabled);
    assert_eq!(file.retry.initial_interval, file_retry().initial_interval);
    assert_eq!(file.retry.max_elapsed_time, Duration::from_secs(60));
    // a queue byte bound below a raised request limit follows the limit
    let big = CollectorConfig::from_yaml(
        "exporters: {otlp: {endpoint: 'a:1', max_export_bytes: 1000000000}}",
    )
    .unwrap();
    assert_eq!(big.exporters[0].queue_bytes, 1_000_000_000);
}

#[test]
fn invalid_export_bounds_should_be_errors_naming_the_field() {
    for (doc, needle) in [
        (
            "exporters: {otlp: {endpoint: 'a:1', max_export_bytes: 0}}",
            "exporters.otlp.max_export_bytes",
        ),
        (
            "exporters: {otlp: {endpoint: 'a:1', sending_queue: {max_bytes: 0}}}",
            "exporters.otlp.sending_queue.max_bytes",
        ),
        (
            "exporters: {otlp: {endpoint: 'a:1', max_export_bytes: 2000, sending_queue: {max_bytes: 1000}}}",
            "exporters.otlp.sending_queue.max_bytes",
        ),
        (
            "exporters: {debug: {sending_queue: {queue_size: 0}}}",
            "exporters.debug.sending_queue.queue_size",
        ),
        (
            "exporters: {file: {path: x, fsync_interval: often}}",
            "exporters.file.fsync_interval",
        ),
        (
            "exporters: {file: {path: x, retry_on_failure: {initial_interval: 0s}}}",
            "exporters.file.retry_on_failure.initial_interval",
        ),
        (
            "exporters: {file: {path: x, max_export_bytes: -1}}",
            "exporters.file",
        ),
    ] {
        let err = CollectorConfig::from_yaml(doc).unwrap_err().to_string();
        assert!(err.contains(needle), "{doc}: {err}");
    }
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

#[test]
fn receiver_connection_bounds_should_default_and_apply_per_protocol() {
    let cfg = CollectorConfig::from_yaml(
        "receivers: {otlp: {protocols: {grpc: {max_connections: 10, read_header_timeout: 2s, idle_timeout: 1m}, http: }}}",
    )
    .unwrap();
    let grpc = cfg.grpc.unwrap();
    assert_eq!(grpc.max_connections, 10);
    assert_eq!(grpc.read_header_timeout, Duration::from_secs(2));
    assert_eq!(grpc.idle_timeout, Duration::from_secs(60));
    let http = cfg.http.unwrap();
    assert_eq!(http.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(http.read_header_timeout, DEFAULT_READ_HEADER_TIMEOUT);
    assert_eq!(http.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    // The limits themselves are accepted.
    let edge = format!(
        "receivers: {{otlp: {{protocols: {{http: {{max_connections: {MAX_MAX_CONNECTIONS}, idle_timeout: 24h}}}}}}}}"
    );
    let http = CollectorConfig::from_yaml(&edge).unwrap().http.unwrap();
    assert_eq!(http.max_connections, MAX_MAX_CONNECTIONS);
    assert_eq!(http.idle_timeout, MAX_CONNECTION_TIMEOUT);
}

#[test]
fn metrics_bearer_token_should_be_read_and_default_to_none() {
    assert!(CollectorConfig::from_yaml("")
        .unwrap()
        .metrics_bearer_token
        .is_none());
    let cfg = CollectorConfig::from_yaml(
        "service: {telemetry: {metrics: {address: '127.0.0.1:0', bearer_token: s3cret-token}}}",
    )
    .unwrap();
    assert_eq!(cfg.metrics_bearer_token.as_deref(), Some("s3cret-token"));
    assert_eq!(cfg.admin, Some("127.0.0.1:0".parse().unwrap()));
}
