//! The default configuration as a commented YAML document.

use std::time::Duration;

use traceq_exporter::client::RetryConfig;
use traceq_exporter::export::{
    file_retry, DEFAULT_EXPORT_TIMEOUT, DEFAULT_FSYNC_INTERVAL, DEFAULT_MAX_EXPORT_BYTES,
    DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_SIZE,
};
use traceq_sampler::SamplerConfig;

use crate::storage::{DEFAULT_MAX_STORAGE_BYTES, DEFAULT_SEGMENT_BYTES};

use super::{
    CollectorConfig, DEFAULT_ADMIN_ENDPOINT, DEFAULT_BATCH_TIMEOUT, DEFAULT_GRPC_ENDPOINT,
    DEFAULT_GRPC_MAX_REQUEST_BYTES, DEFAULT_HTTP_ENDPOINT, DEFAULT_HTTP_MAX_REQUEST_BYTES,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_HEADER_TIMEOUT,
    DEFAULT_RETRY_AFTER, DEFAULT_SEND_BATCH_SIZE, DEFAULT_SHUTDOWN_TIMEOUT,
};

impl CollectorConfig {
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
        max_connections: {DEFAULT_MAX_CONNECTIONS}
        read_header_timeout: {read_header}
        idle_timeout: {idle}
        # tls: {{cert_file: server.crt, key_file: server.key}}
        # auth: {{bearer_token: secret}}
      http:
        endpoint: {DEFAULT_HTTP_ENDPOINT}
        max_request_body_size: {DEFAULT_HTTP_MAX_REQUEST_BYTES}
        max_connections: {DEFAULT_MAX_CONNECTIONS}
        read_header_timeout: {read_header}
        idle_timeout: {idle}
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
    # Also read, with the Collector's meaning (README: tail_sampling parity):
    # decision_wait_after_root_received, maximum_trace_size_bytes, block_on_overflow,
    # sample_on_first_match, drop_pending_traces_on_shutdown, storage: file_storage
    # Every policy type: always_sample, latency, status_code, numeric_attribute,
    # string_attribute, boolean_attribute, probabilistic, rate_limiting, bytes_limiting,
    # span_count, trace_state, trace_flags, ottl_condition, and, not, drop, composite
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
  # file: {{path: traces.jsonl, fsync_interval: {fsync}}}
  #   (failed writes are retried: retry_on_failure: {{initial_interval: {fri}, max_interval: {frm}}})
  debug:
    # Largest request sent: batches are cut at the smallest exporter's limit.
    max_export_bytes: {DEFAULT_MAX_EXPORT_BYTES}
    # Spans and encoded bytes waiting or in flight; further batches are dropped and counted.
    sending_queue: {{queue_size: {DEFAULT_QUEUE_SIZE}, max_bytes: {DEFAULT_QUEUE_BYTES}}}
    # OTLP exporters also take: timeout: {export_timeout}, headers: {{}},
    # retry_on_failure: {{enabled: true, initial_interval: {ri}, max_interval: {rm}, max_elapsed_time: {re}}}
service:
  telemetry:
    metrics:
      address: {DEFAULT_ADMIN_ENDPOINT}
      # bearer_token: secret   # required on /metrics; /healthz stays open
  sampling: true
  on_buffer_full: refuse
  retry_after: {retry_after}
  shutdown_timeout: {shutdown}
# Crash-safe storage (or --storage DIR): accepted spans, pending traces and decisions survive a
# crash; name it in processors.tail_sampling.storage and in exporters' sending_queue.storage.
# extensions:
#   file_storage:
#     directory: /var/lib/traceq
#     fsync: interval            # always (before each acknowledgement) | interval | never
#     fsync_interval: {storage_fsync}
#     max_storage_bytes: {DEFAULT_MAX_STORAGE_BYTES}
#     segment_bytes: {DEFAULT_SEGMENT_BYTES}
",
            grpc_mib = DEFAULT_GRPC_MAX_REQUEST_BYTES >> 20,
            read_header = secs(DEFAULT_READ_HEADER_TIMEOUT),
            idle = secs(DEFAULT_IDLE_TIMEOUT),
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
            fsync = secs(DEFAULT_FSYNC_INTERVAL),
            fri = secs(file_retry().initial_interval),
            frm = secs(file_retry().max_interval),
            ri = secs(retry.initial_interval),
            rm = secs(retry.max_interval),
            re = secs(retry.max_elapsed_time),
            retry_after = secs(DEFAULT_RETRY_AFTER),
            shutdown = secs(DEFAULT_SHUTDOWN_TIMEOUT),
            storage_fsync = secs(crate::storage::DEFAULT_STORAGE_FSYNC_INTERVAL),
        )
    }
}
