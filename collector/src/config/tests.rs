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

#[test]
fn file_storage_should_be_read_in_the_collectors_shape() {
    let cfg = CollectorConfig::from_yaml(
        r#"
extensions:
  file_storage/wal:
    directory: /var/lib/traceq
    fsync: always
    max_storage_bytes: 104857600
    segment_bytes: 8388608
    timeout: 1s
processors:
  tail_sampling:
    storage: file_storage/wal
    decision_wait: 5s
    policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]
exporters:
  otlp/down:
    endpoint: 127.0.0.1:24317
    sending_queue: {storage: file_storage/wal, queue_size: 5000}
  file:
    path: out.jsonl
service:
  extensions: [file_storage/wal]
"#,
    )
    .unwrap();
    let storage = cfg.storage.expect("storage on");
    assert_eq!(
        storage.directory,
        std::path::PathBuf::from("/var/lib/traceq")
    );
    assert_eq!(storage.fsync, crate::FsyncMode::Always);
    assert_eq!(storage.max_storage_bytes, 100 << 20);
    assert_eq!(storage.segment_bytes, 8 << 20);
    // Only the exporter naming the storage waits on it; the sampler's block lost the key.
    assert_eq!(storage.exporters, vec!["otlp/down".to_owned()]);
    assert_eq!(cfg.sampler.decision_wait, Duration::from_secs(5));
    let otlp = cfg
        .exporters
        .iter()
        .find(|e| e.name == "otlp/down")
        .unwrap();
    assert_eq!(
        otlp.queue_size, 5000,
        "the rest of sending_queue still applies"
    );
}

#[test]
fn file_storage_should_default_to_interval_syncs_and_take_the_collectors_booleans() {
    let base = |fsync: &str| {
        format!(
            "extensions: {{file_storage: {{directory: /tmp/x{fsync}}}}}\n\
             processors: {{tail_sampling: {{storage: file_storage, policies: [{{name: e, type: \
             status_code, status_code: {{status_codes: [ERROR]}}}}]}}}}"
        )
    };
    let read = |fsync: &str| {
        CollectorConfig::from_yaml(&base(fsync))
            .unwrap()
            .storage
            .unwrap()
    };
    let d = read("");
    assert_eq!(d.fsync, crate::FsyncMode::Interval);
    assert_eq!(d.fsync_interval, crate::DEFAULT_STORAGE_FSYNC_INTERVAL);
    assert_eq!(d.max_storage_bytes, crate::DEFAULT_MAX_STORAGE_BYTES);
    assert!(d.exporters.is_empty());
    assert_eq!(read(", fsync: true").fsync, crate::FsyncMode::Always);
    assert_eq!(read(", fsync: false").fsync, crate::FsyncMode::Never);
    assert_eq!(read(", fsync: never").fsync, crate::FsyncMode::Never);
    let i = read(", fsync: interval, fsync_interval: 20ms");
    assert_eq!(i.fsync_interval, Duration::from_millis(20));
    // Without a user, the extension is only defined: no storage.
    let unused = CollectorConfig::from_yaml("extensions: {file_storage: {directory: /tmp/x}}");
    assert!(unused.unwrap().storage.is_none());
}

#[test]
fn bad_storage_settings_should_be_refused_naming_the_field() {
    for (yaml, field) in [
        (
            "processors: {tail_sampling: {storage: file_storage, policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]}}",
            "processors.tail_sampling.storage",
        ),
        (
            "extensions: {file_storage: {}}\nprocessors: {tail_sampling: {storage: file_storage, policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]}}",
            "extensions.file_storage.directory",
        ),
        (
            "extensions: {file_storage: {directory: /x, fsync: sometimes}}\n\
             processors: {tail_sampling: {storage: file_storage, policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]}}",
            "extensions.file_storage.fsync",
        ),
        (
            "extensions: {file_storage: {directory: /x, max_storage_bytes: 1000}}\n\
             processors: {tail_sampling: {storage: file_storage, policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]}}",
            "extensions.file_storage.max_storage_bytes",
        ),
        (
            "extensions: {file_storage/a: {directory: /a}, file_storage/b: {directory: /b}}\n\
             processors: {tail_sampling: {storage: file_storage/a, policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]}}\n\
             exporters: {otlp: {endpoint: x, sending_queue: {storage: file_storage/b}}}",
            "exporters.otlp.storage",
        ),
        ("extensions: {redis: {}}", "extensions.redis"),
        (
            "extensions: {file_storage: {directory: /x}}\nservice: {extensions: [file_storage/y]}",
            "service.extensions",
        ),
    ] {
        let err = CollectorConfig::from_yaml(yaml).unwrap_err().to_string();
        assert!(err.contains(field), "{yaml}: {err}");
    }
    let err = CollectorConfig::from_yaml(
        "extensions: {file_storage: {directory: /x, colour: red}}\n\
         processors: {tail_sampling: {storage: file_storage, policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]}}",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn the_storage_flag_should_cover_the_sampler_and_every_exporter() {
    let cfg = CollectorConfig::from_yaml(
        "extensions: {file_storage: {directory: /elsewhere, fsync: always}}\n\
         processors: {tail_sampling: {storage: file_storage, policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]}}\n\
         exporters: {otlp: {endpoint: x}, file: {path: y}}",
    )
    .unwrap()
    .with_storage_directory("/data");
    let storage = cfg.storage.unwrap();
    assert_eq!(storage.directory, std::path::PathBuf::from("/data"));
    assert_eq!(
        storage.fsync,
        crate::FsyncMode::Always,
        "the file's other settings stay"
    );
    assert_eq!(
        storage.exporters,
        vec!["file".to_owned(), "otlp".to_owned()]
    );
}

#[test]
fn exporter_tls_should_read_the_collector_keys() {
    use traceq_exporter::client::ClientTlsConfig;
    let cfg = CollectorConfig::from_yaml(
        "exporters:\n  otlp/secure:\n    endpoint: tempo:4317\n    tls:\n      ca_file: ca.pem\n      cert_file: client.pem\n      key_file: client.key\n      server_name_override: tempo.internal\n  otlp/skip: {endpoint: 'https://tempo:4317', tls: {insecure_skip_verify: true}}\n  otlp/plain: {endpoint: 'tempo:4317', tls: {insecure: true}}\n  otlp/none: {endpoint: 'tempo:4317'}\n",
    )
    .unwrap();
    let tls = |name: &str| {
        cfg.exporters
            .iter()
            .find(|e| e.name == name)
            .unwrap()
            .tls
            .clone()
    };
    assert_eq!(
        tls("otlp/secure"),
        Some(
            ClientTlsConfig::default()
                .with_ca_file("ca.pem")
                .with_client_cert("client.pem", "client.key")
                .with_server_name_override("tempo.internal")
        )
    );
    assert_eq!(
        tls("otlp/skip"),
        Some(ClientTlsConfig::default().with_insecure_skip_verify(true))
    );
    assert_eq!(
        tls("otlp/plain"),
        Some(ClientTlsConfig::default().with_insecure(true))
    );
    assert_eq!(tls("otlp/none"), None);
}

#[test]
fn exporter_tls_errors_should_name_the_field() {
    for (tls, field, reason) in [
        (
            "{ca_file: ca.pem, cert_file: c.pem}",
            "tls.key_file",
            "is required with cert_file",
        ),
        (
            "{ca_file: ca.pem, key_file: c.key}",
            "tls.cert_file",
            "is required with key_file",
        ),
        ("{}", "tls.ca_file", "no CA roots are built in"),
        ("{ca_file: ''}", "tls.ca_file", "must not be empty"),
        (
            "{ca_file: ca.pem, verify: true}",
            "otlp/x",
            "unknown field `verify`",
        ),
    ] {
        let doc = format!("exporters:\n  otlp/x: {{endpoint: 'h:1', tls: {tls}}}\n");
        let err = CollectorConfig::from_yaml(&doc).unwrap_err().to_string();
        assert!(err.contains("exporters.otlp/x"), "{tls}: {err}");
        assert!(err.contains(field), "{tls}: {err}");
        assert!(err.contains(reason), "{tls}: {err}");
    }
}
