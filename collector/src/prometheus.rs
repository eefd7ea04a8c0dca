//! `/metrics`: the collector's counters in the Prometheus text format.
//!
//! Names follow the OpenTelemetry Collector where it has the metric (`otelcol_receiver_*`,
//! `otelcol_exporter_*`, `otelcol_processor_tail_sampling_*`), so its dashboards carry over;
//! traceq's own additions are `traceq_*`.

use std::sync::atomic::AtomicU64;

use traceq_core::{MetricKind, PrometheusText};
use traceq_exporter::export::ExporterMetrics;
use traceq_sampler::SamplerMetrics;

use super::metrics::{get, ConnectionMetrics, ReceiverMetrics};
use super::route::Router;
use super::storage::{StorageMetrics, FSYNC_BUCKETS};

/// Everything `/metrics` shows, borrowed for one render.
#[derive(Debug)]
pub(crate) struct Snapshot<'a> {
    pub(crate) receivers: Vec<(&'static str, &'a ReceiverMetrics)>,
    pub(crate) exporters: Vec<(&'a str, &'a ExporterMetrics)>,
    pub(crate) sampler: Option<SamplerMetrics>,
    pub(crate) spans_kept: u64,
    pub(crate) spans_too_large: u64,
    pub(crate) admin_connections: &'a ConnectionMetrics,
    pub(crate) storage: Option<&'a StorageMetrics>,
    pub(crate) router: Option<&'a Router>,
}

/// The `traceq_loadbalancer_*` families.
fn router_families(out: &mut PrometheusText, r: &Router) {
    use MetricKind::{Counter, Gauge};
    let backends = r.backend_metrics();
    let name = "traceq_loadbalancer_backends";
    out.family(
        name,
        Gauge,
        "Backends the loadbalancing exporter routes to now.",
    );
    out.sample(name, &[], backends.iter().filter(|b| b.current).count());
    for (name, help, value) in [
        (
            "traceq_loadbalancer_membership_changes_total",
            "Times the set of backends changed (resolution or SIGHUP), the first included.",
            &r.metrics.membership_changes,
        ),
        (
            "traceq_loadbalancer_resolve_failures_total",
            "DNS resolutions that failed (the backends stayed as they were).",
            &r.metrics.resolve_failures,
        ),
        (
            "traceq_loadbalancer_unroutable_spans_total",
            "Spans dropped because there was no backend.",
            &r.metrics.unroutable_spans,
        ),
    ] {
        out.family(name, Counter, help);
        out.sample(name, &[], get(value));
    }
    let exporter = r.name();
    for (name, kind, help, value) in [
        (
            "traceq_loadbalancer_backend_sent_spans_total",
            Counter,
            "Spans delivered to each backend.",
            (|m| &m.spans_sent) as fn(&ExporterMetrics) -> &AtomicU64,
        ),
        (
            "traceq_loadbalancer_backend_dropped_spans_total",
            Counter,
            "Spans given up for each backend (queue full, retries exhausted, rejected).",
            |m| &m.spans_dropped,
        ),
        (
            "traceq_loadbalancer_backend_queue_spans",
            Gauge,
            "Spans queued or in flight for each backend.",
            |m| &m.queue_spans,
        ),
    ] {
        out.family(name, kind, help);
        for b in &backends {
            let labels = [("exporter", exporter), ("backend", b.endpoint.as_str())];
            out.sample(name, &labels, get(value(&b.metrics)));
        }
    }
}

/// The `traceq_storage_*` families.
fn storage_families(out: &mut PrometheusText, m: &StorageMetrics) {
    use MetricKind::{Counter, Gauge, Histogram};
    for (name, kind, help, value) in [
        (
            "traceq_storage_bytes",
            Gauge,
            "Bytes of the write-ahead log on disk.",
            &m.bytes,
        ),
        (
            "traceq_storage_segments",
            Gauge,
            "Segment files of the write-ahead log.",
            &m.segments,
        ),
        (
            "traceq_storage_refused_requests_total",
            Counter,
            "Requests refused because the log reached max_storage_bytes.",
            &m.refused_requests,
        ),
        (
            "traceq_storage_write_errors_total",
            Counter,
            "Failed writes, syncs and deletions of log files.",
            &m.write_errors,
        ),
        (
            "traceq_storage_replayed_requests_total",
            Counter,
            "Requests replayed from the log at start (not settled before the stop).",
            &m.replayed_requests,
        ),
        (
            "traceq_storage_replayed_spans_total",
            Counter,
            "Spans replayed from the log at start: the bound on spans delivered twice.",
            &m.replayed_spans,
        ),
        (
            "traceq_storage_replayed_traces_total",
            Counter,
            "Undecided traces rebuilt in the buffer from the log at start.",
            &m.replayed_traces,
        ),
        (
            "traceq_storage_requeued_spans_total",
            Counter,
            "Spans of kept traces queued for export again at start.",
            &m.requeued_spans,
        ),
        (
            "traceq_storage_corrupt_records_total",
            Counter,
            "Torn or damaged log records found at start (each ends its segment's reading).",
            &m.corrupt_records,
        ),
        (
            "traceq_storage_skipped_bytes_total",
            Counter,
            "Bytes skipped after damaged records at start.",
            &m.skipped_bytes,
        ),
    ] {
        out.family(name, kind, help);
        out.sample(name, &[], get(value));
    }
    let name = "traceq_storage_replay_seconds";
    out.family(name, Gauge, "How long the replay at start took.");
    out.sample(name, &[], get(&m.replay_nanos) as f64 / 1e9);
    let name = "traceq_storage_fsync_seconds";
    out.family(name, Histogram, "Latency of the log's syncs to disk.");
    let mut cumulative = 0;
    for (bound, count) in FSYNC_BUCKETS.iter().zip(&m.fsync_buckets) {
        cumulative += get(count);
        let le = bound.to_string();
        out.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative);
    }
    let count = get(&m.fsyncs);
    out.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count);
    out.sample(
        &format!("{name}_sum"),
        &[],
        get(&m.fsync_nanos) as f64 / 1e9,
    );
    out.sample(&format!("{name}_count"), &[], count);
}

/// The connection families of one kind of listener, `{prefix}_connections_*`, a sample per row.
fn connection_families(
    out: &mut PrometheusText,
    prefix: &str,
    rows: &[(Vec<(&str, &str)>, &ConnectionMetrics)],
) {
    use MetricKind::{Counter, Gauge};
    let c = |f: fn(&ConnectionMetrics) -> &AtomicU64| move |m: &&ConnectionMetrics| get(f(m));
    for (suffix, kind, help, value) in [
        (
            "connections_open",
            Gauge,
            "Connections open now.",
            c(|m| &m.open),
        ),
        (
            "connections_accepted_total",
            Counter,
            "Connections accepted.",
            c(|m| &m.accepted),
        ),
        (
            "connections_refused_total",
            Counter,
            "Connections closed at once because max_connections were open.",
            c(|m| &m.refused),
        ),
        (
            "connections_timed_out_total",
            Counter,
            "Connections closed because no whole request head (or TLS handshake) came in time.",
            c(|m| &m.timed_out),
        ),
        (
            "connections_idle_closed_total",
            Counter,
            "Connections closed after idle_timeout with no request in flight.",
            c(|m| &m.idle_closed),
        ),
    ] {
        let name = format!("{prefix}_{suffix}");
        family(out, (&name, kind, help), rows, value);
    }
}

/// A family with one sample per row of `rows`, each row's labels and counter.
fn family<T>(
    out: &mut PrometheusText,
    (name, kind, help): (&str, MetricKind, &str),
    rows: &[(Vec<(&str, &str)>, T)],
    value: impl Fn(&T) -> u64,
) {
    out.family(name, kind, help);
    for (labels, row) in rows {
        out.sample(name, labels, value(row));
    }
}

/// Renders the snapshot.
pub(crate) fn render(s: &Snapshot<'_>) -> String {
    use MetricKind::{Counter, Gauge};
    let mut out = PrometheusText::new();
    let receivers: Vec<(Vec<(&str, &str)>, &ReceiverMetrics)> = s
        .receivers
        .iter()
        .map(|(transport, m)| (vec![("receiver", "otlp"), ("transport", *transport)], *m))
        .collect();
    let r = |f: fn(&ReceiverMetrics) -> &AtomicU64| move |m: &&ReceiverMetrics| get(f(m));
    for (family_of, value) in [
        (
            ("otelcol_receiver_accepted_spans", Counter, "Spans accepted by the receiver."),
            r(|m| &m.spans_accepted),
        ),
        (
            (
                "otelcol_receiver_refused_spans",
                Counter,
                "Spans refused with a retryable error (buffer full or shutting down).",
            ),
            r(|m| &m.spans_refused),
        ),
        (
            (
                "traceq_receiver_requests_accepted_total",
                Counter,
                "Requests whose spans were accepted.",
            ),
            r(|m| &m.requests_accepted),
        ),
        (
            (
                "traceq_receiver_requests_refused_total",
                Counter,
                "Requests refused with a retryable error.",
            ),
            r(|m| &m.requests_refused),
        ),
        (
            (
                "traceq_receiver_requests_rejected_total",
                Counter,
                "Requests rejected: malformed, oversized, unauthenticated or of an unsupported type.",
            ),
            r(|m| &m.requests_rejected),
        ),
    ] {
        family(&mut out, family_of, &receivers, value);
    }
    let receiver_connections: Vec<(Vec<(&str, &str)>, &ConnectionMetrics)> = receivers
        .iter()
        .map(|(labels, m)| (labels.clone(), &*m.connections))
        .collect();
    connection_families(&mut out, "traceq_receiver", &receiver_connections);
    connection_families(
        &mut out,
        "traceq_admin",
        &[(Vec::new(), s.admin_connections)],
    );

    let exporters: Vec<(Vec<(&str, &str)>, &ExporterMetrics)> = s
        .exporters
        .iter()
        .map(|(name, m)| (vec![("exporter", *name)], *m))
        .collect();
    let e = |f: fn(&ExporterMetrics) -> &AtomicU64| move |m: &&ExporterMetrics| get(f(m));
    for (family_of, value) in [
        (
            (
                "otelcol_exporter_sent_spans",
                Counter,
                "Spans delivered downstream.",
            ),
            e(|m| &m.spans_sent),
        ),
        (
            (
                "otelcol_exporter_send_failed_spans",
                Counter,
                "Spans given up on: queue full, a permanent error, or retries exhausted.",
            ),
            e(|m| &m.spans_dropped),
        ),
        (
            (
                "otelcol_exporter_queue_size",
                Gauge,
                "Spans waiting in the exporter's queue.",
            ),
            e(|m| &m.queue_spans),
        ),
        (
            (
                "traceq_exporter_queue_bytes",
                Gauge,
                "Encoded bytes of the batches waiting in the exporter's queue or in flight.",
            ),
            e(|m| &m.queue_bytes),
        ),
        (
            (
                "traceq_exporter_rejected_spans_total",
                Counter,
                "Spans the downstream refused as invalid (isolated by splitting, or in a partial \
                 success); part of otelcol_exporter_send_failed_spans.",
            ),
            e(|m| &m.spans_rejected),
        ),
        (
            (
                "traceq_exporter_requests_split_total",
                Counter,
                "Requests split in halves: refused as too large or malformed, or over \
                 max_export_bytes.",
            ),
            e(|m| &m.requests_split),
        ),
        (
            (
                "traceq_exporter_requests_sent_total",
                Counter,
                "Export requests delivered.",
            ),
            e(|m| &m.requests_sent),
        ),
        (
            (
                "traceq_exporter_send_failures_total",
                Counter,
                "Export attempts that failed.",
            ),
            e(|m| &m.send_failures),
        ),
        (
            (
                "traceq_exporter_retries_total",
                Counter,
                "Export attempts that retried a failed request.",
            ),
            e(|m| &m.retries),
        ),
    ] {
        family(&mut out, family_of, &exporters, value);
    }

    out.family(
        "traceq_spans_kept_total",
        Counter,
        "Spans kept and handed to the exporters (every span when sampling is off).",
    );
    out.sample("traceq_spans_kept_total", &[], s.spans_kept);
    out.family(
        "traceq_spans_too_large_total",
        Counter,
        "Kept spans dropped because one alone encodes past the smallest exporter max_export_bytes.",
    );
    out.sample("traceq_spans_too_large_total", &[], s.spans_too_large);
    if let Some(storage) = s.storage {
        storage_families(&mut out, storage);
    }
    if let Some(router) = s.router {
        router_families(&mut out, router);
    }

    if let Some(m) = &s.sampler {
        render_sampler(&mut out, m);
    }
    out.finish()
}

fn render_sampler(out: &mut PrometheusText, m: &SamplerMetrics) {
    use MetricKind::{Counter, Gauge, Summary};
    const P: &str = "otelcol_processor_tail_sampling_";
    let name = |n: &str| format!("{P}{n}");
    let by_outcome = |out: &mut PrometheusText, n: &str, help: &str, sampled: u64, not: u64| {
        out.family(n, Counter, help);
        out.sample(n, &[("sampled", "true")], sampled);
        out.sample(n, &[("sampled", "false")], not);
    };
    by_outcome(
        out,
        &name("global_count_traces_sampled"),
        "Traces decided, by outcome.",
        m.global_count_traces_sampled,
        m.global_count_traces_not_sampled,
    );
    by_outcome(
        out,
        &name("count_spans_sampled"),
        "Spans of decided traces, by outcome.",
        m.count_spans_sampled,
        m.count_spans_not_sampled,
    );
    let votes = name("count_traces_sampled");
    out.family(&votes, Counter, "Traces each policy voted on, by vote.");
    for p in &m.policies {
        for (decision, v) in [
            ("sampled", p.traces_sampled),
            ("not_sampled", p.traces_not_sampled),
            ("dropped", p.traces_dropped),
        ] {
            out.sample(&votes, &[("policy", &p.policy), ("decision", decision)], v);
        }
    }
    let errors = "traceq_policy_evaluation_errors_total";
    out.family(
        errors,
        Counter,
        "Policy evaluations that failed (an ottl_condition error, counted under error_mode: ignore or propagate).",
    );
    for p in &m.policies {
        out.sample(errors, &[("policy", &p.policy)], p.evaluation_errors);
    }
    for (n, help, v) in [
        (
            name("sampling_traces_on_memory"),
            "Traces in the buffer.",
            m.sampling_traces_on_memory,
        ),
        (
            "traceq_spans_buffered".to_owned(),
            "Spans in the buffer.",
            m.spans_buffered,
        ),
        (
            "traceq_bytes_buffered".to_owned(),
            "Accounted bytes in the buffer.",
            m.bytes_buffered,
        ),
    ] {
        out.family(&n, Gauge, help);
        out.sample(&n, &[], v);
    }
    let started = name("new_trace_id_received");
    out.family(&started, Counter, "Traces started in the buffer.");
    out.sample(&started, &[], m.new_trace_id_received);
    by_outcome(
        out,
        "traceq_late_spans_total",
        "Spans that arrived after their trace was decided, by the decision they followed.",
        m.late_spans_sampled,
        m.late_spans_not_sampled,
    );
    out.family(
        "traceq_traces_decided_total",
        Counter,
        "Traces decided, by what triggered the decision.",
    );
    for (trigger, v) in [
        ("root_ended", m.traces_decided_after_root),
        ("decision_wait", m.traces_decided_on_wait),
        ("max_spans", m.traces_decided_on_max_spans),
        ("early_under_pressure", m.traces_decided_early),
        ("flush", m.traces_decided_on_flush),
        ("maximum_trace_size_bytes", m.traces_decided_on_max_bytes),
    ] {
        out.sample("traceq_traces_decided_total", &[("trigger", trigger)], v);
    }
    out.family(
        "traceq_traces_kept_by_job_linkage_total",
        Counter,
        "Traces kept only because their job was kept for an error.",
    );
    out.sample(
        "traceq_traces_kept_by_job_linkage_total",
        &[],
        m.traces_kept_by_job_linkage,
    );
    let latency = name("sampling_decision_latency_seconds");
    out.family(
        &latency,
        Summary,
        "Time from a trace's first span to its decision.",
    );
    out.sample(
        &format!("{latency}_sum"),
        &[],
        m.decision_latency_sum_nanos as f64 / 1e9,
    );
    out.sample(&format!("{latency}_count"), &[], m.decision_latency_count);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn render_should_label_receivers_exporters_and_policies() {
        let grpc = ReceiverMetrics::default();
        grpc.spans_accepted.store(42, Relaxed);
        grpc.connections.refused.store(5, Relaxed);
        let admin = ConnectionMetrics::default();
        admin.open.store(2, Relaxed);
        let exp = ExporterMetrics::default();
        exp.spans_dropped.store(7, Relaxed);
        exp.spans_rejected.store(5, Relaxed);
        exp.queue_bytes.store(1024, Relaxed);
        let mut sampler = SamplerMetrics::default();
        sampler.global_count_traces_sampled = 3;
        let text = render(&Snapshot {
            receivers: vec![("grpc", &grpc)],
            exporters: vec![("otlp/\"tempo\"", &exp)],
            sampler: Some(sampler),
            spans_kept: 9,
            spans_too_large: 2,
            storage: None,
            router: None,
            admin_connections: &admin,
        });
        assert!(text.contains(
            "traceq_receiver_connections_refused_total{receiver=\"otlp\",transport=\"grpc\"} 5"
        ));
        assert!(text.contains("# TYPE traceq_receiver_connections_open gauge"));
        assert!(text.contains("traceq_admin_connections_open 2"));
        assert!(text
            .contains("otelcol_receiver_accepted_spans{receiver=\"otlp\",transport=\"grpc\"} 42"));
        assert!(
            text.contains("otelcol_exporter_send_failed_spans{exporter=\"otlp/\\\"tempo\\\"\"} 7")
        );
        assert!(text.contains(
            "otelcol_processor_tail_sampling_global_count_traces_sampled{sampled=\"true\"} 3"
        ));
        assert!(text.contains("traceq_spans_kept_total 9"));
        assert!(text.contains("traceq_spans_too_large_total 2"));
        assert!(text
            .contains("traceq_exporter_rejected_spans_total{exporter=\"otlp/\\\"tempo\\\"\"} 5"));
        assert!(text.contains("traceq_exporter_queue_bytes{exporter=\"otlp/\\\"tempo\\\"\"} 1024"));
        // every sample line belongs to a declared family
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let family = line.split(['{', ' ']).next().unwrap();
            let base = family.trim_end_matches("_sum").trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {base} ")), "{line}");
        }
    }
}
