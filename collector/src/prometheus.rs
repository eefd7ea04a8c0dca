//! `/metrics`: the collector's counters in the Prometheus text format.
//!
//! Names follow the OpenTelemetry Collector where it has the metric (`otelcol_receiver_*`,
//! `otelcol_exporter_*`, `otelcol_processor_tail_sampling_*`), so its dashboards carry over;
//! traceq's own additions are `traceq_*`.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use traceq_sampler::SamplerMetrics;

use super::metrics::{get, ReceiverMetrics};
use traceq_exporter::export::ExporterMetrics;

/// Everything `/metrics` shows, borrowed for one render.
#[derive(Debug)]
pub(crate) struct Snapshot<'a> {
    pub(crate) receivers: Vec<(&'static str, &'a ReceiverMetrics)>,
    pub(crate) exporters: Vec<(&'a str, &'a ExporterMetrics)>,
    pub(crate) sampler: Option<SamplerMetrics>,
    pub(crate) spans_kept: u64,
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, value: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }
    fn family<T>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        rows: &[(String, T)],
        value: impl Fn(&T) -> u64,
    ) {
        self.header(name, kind, help);
        for (labels, row) in rows {
            self.sample(name, labels, value(row));
        }
    }
}

/// Renders the snapshot.
pub(crate) fn render(s: &Snapshot<'_>) -> String {
    let mut out = Out(String::with_capacity(4096));
    let receivers: Vec<(String, &ReceiverMetrics)> = s
        .receivers
        .iter()
        .map(|(transport, m)| (format!("receiver=\"otlp\",transport=\"{transport}\""), *m))
        .collect();
    let r = |f: fn(&ReceiverMetrics) -> &AtomicU64| move |m: &&ReceiverMetrics| get(f(m));
    out.family(
        "otelcol_receiver_accepted_spans",
        "counter",
        "Spans accepted by the receiver.",
        &receivers,
        r(|m| &m.spans_accepted),
    );
    out.family(
        "otelcol_receiver_refused_spans",
        "counter",
        "Spans refused with a retryable error (buffer full or shutting down).",
        &receivers,
        r(|m| &m.spans_refused),
    );
    out.family(
        "traceq_receiver_requests_accepted_total",
        "counter",
        "Requests whose spans were accepted.",
        &receivers,
        r(|m| &m.requests_accepted),
    );
    out.family(
        "traceq_receiver_requests_refused_total",
        "counter",
        "Requests refused with a retryable error.",
        &receivers,
        r(|m| &m.requests_refused),
    );
    out.family(
        "traceq_receiver_requests_rejected_total",
        "counter",
        "Requests rejected: malformed, oversized, unauthenticated or of an unsupported type.",
        &receivers,
        r(|m| &m.requests_rejected),
    );

    let exporters: Vec<(String, &ExporterMetrics)> = s
        .exporters
        .iter()
        .map(|(name, m)| (format!("exporter=\"{}\"", escape(name)), *m))
        .collect();
    let e = |f: fn(&ExporterMetrics) -> &AtomicU64| move |m: &&ExporterMetrics| get(f(m));
    out.family(
        "otelcol_exporter_sent_spans",
        "counter",
        "Spans delivered downstream.",
        &exporters,
        e(|m| &m.spans_sent),
    );
    out.family(
        "otelcol_exporter_send_failed_spans",
        "counter",
        "Spans given up on: queue full, a permanent error, or retries exhausted.",
        &exporters,
        e(|m| &m.spans_dropped),
    );
    out.family(
        "otelcol_exporter_queue_size",
        "gauge",
        "Spans waiting in the exporter's queue.",
        &exporters,
        e(|m| &m.queue_spans),
    );
    out.family(
        "traceq_exporter_requests_sent_total",
        "counter",
        "Export requests delivered.",
        &exporters,
        e(|m| &m.requests_sent),
    );
    out.family(
        "traceq_exporter_send_failures_total",
        "counter",
        "Export attempts that failed.",
        &exporters,
        e(|m| &m.send_failures),
    );
    out.family(
        "traceq_exporter_retries_total",
        "counter",
        "Export attempts that retried a failed request.",
        &exporters,
        e(|m| &m.retries),
    );

    out.header(
        "traceq_spans_kept_total",
        "counter",
        "Spans kept and handed to the exporters (every span when sampling is off).",
    );
    out.sample("traceq_spans_kept_total", "", s.spans_kept);

    if let Some(m) = &s.sampler {
        render_sampler(&mut out, m);
    }
    out.0
}

fn render_sampler(out: &mut Out, m: &SamplerMetrics) {
    const P: &str = "otelcol_processor_tail_sampling_";
    let name = |n: &str| format!("{P}{n}");
    out.header(
        &name("global_count_traces_sampled"),
        "counter",
        "Traces decided, by outcome.",
    );
    out.sample(
        &name("global_count_traces_sampled"),
        "sampled=\"true\"",
        m.global_count_traces_sampled,
    );
    out.sample(
        &name("global_count_traces_sampled"),
        "sampled=\"false\"",
        m.global_count_traces_not_sampled,
    );
    out.header(
        &name("count_spans_sampled"),
        "counter",
        "Spans of decided traces, by outcome.",
    );
    out.sample(
        &name("count_spans_sampled"),
        "sampled=\"true\"",
        m.count_spans_sampled,
    );
    out.sample(
        &name("count_spans_sampled"),
        "sampled=\"false\"",
        m.count_spans_not_sampled,
    );
    out.header(
        &name("count_traces_sampled"),
        "counter",
        "Traces each policy voted on, by vote.",
    );
    for p in &m.policies {
        let policy = escape(&p.policy);
        for (decision, v) in [
            ("sampled", p.traces_sampled),
            ("not_sampled", p.traces_not_sampled),
            ("dropped", p.traces_dropped),
        ] {
            out.sample(
                &name("count_traces_sampled"),
                &format!("policy=\"{policy}\",decision=\"{decision}\""),
                v,
            );
        }
    }
    let gauges = [
        (
            "sampling_traces_on_memory",
            "Traces in the buffer.",
            m.sampling_traces_on_memory,
        ),
        (
            "traceq_spans_buffered",
            "Spans in the buffer.",
            m.spans_buffered,
        ),
        (
            "traceq_bytes_buffered",
            "Accounted bytes in the buffer.",
            m.bytes_buffered,
        ),
    ];
    for (n, help, v) in gauges {
        let full = if n.starts_with("traceq_") {
            n.to_owned()
        } else {
            name(n)
        };
        out.header(&full, "gauge", help);
        out.sample(&full, "", v);
    }
    out.header(
        &name("new_trace_id_received"),
        "counter",
        "Traces started in the buffer.",
    );
    out.sample(&name("new_trace_id_received"), "", m.new_trace_id_received);
    out.header(
        "traceq_late_spans_total",
        "counter",
        "Spans that arrived after their trace was decided, by the decision they followed.",
    );
    out.sample(
        "traceq_late_spans_total",
        "sampled=\"true\"",
        m.late_spans_sampled,
    );
    out.sample(
        "traceq_late_spans_total",
        "sampled=\"false\"",
        m.late_spans_not_sampled,
    );
    out.header(
        "traceq_traces_decided_total",
        "counter",
        "Traces decided, by what triggered the decision.",
    );
    for (trigger, v) in [
        ("root_ended", m.traces_decided_after_root),
        ("decision_wait", m.traces_decided_on_wait),
        ("max_spans", m.traces_decided_on_max_spans),
        ("early_under_pressure", m.traces_decided_early),
        ("flush", m.traces_decided_on_flush),
    ] {
        out.sample(
            "traceq_traces_decided_total",
            &format!("trigger=\"{trigger}\""),
            v,
        );
    }
    out.header(
        "traceq_traces_kept_by_job_linkage_total",
        "counter",
        "Traces kept only because their job was kept for an error.",
    );
    out.sample(
        "traceq_traces_kept_by_job_linkage_total",
        "",
        m.traces_kept_by_job_linkage,
    );
    out.header(
        &name("sampling_decision_latency_seconds"),
        "summary",
        "Time from a trace's first span to its decision.",
    );
    let _ = writeln!(
        out.0,
        "{}_sum {}\n{}_count {}",
        name("sampling_decision_latency_seconds"),
        m.decision_latency_sum_nanos as f64 / 1e9,
        name("sampling_decision_latency_seconds"),
        m.decision_latency_count
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn render_should_label_receivers_exporters_and_policies() {
        let grpc = ReceiverMetrics::default();
        grpc.spans_accepted.store(42, Relaxed);
        let exp = ExporterMetrics::default();
        exp.spans_dropped.store(7, Relaxed);
        let mut sampler = SamplerMetrics::default();
        sampler.global_count_traces_sampled = 3;
        let text = render(&Snapshot {
            receivers: vec![("grpc", &grpc)],
            exporters: vec![("otlp/\"tempo\"", &exp)],
            sampler: Some(sampler),
            spans_kept: 9,
        });
        assert!(text
            .contains("otelcol_receiver_accepted_spans{receiver=\"otlp\",transport=\"grpc\"} 42"));
        assert!(
            text.contains("otelcol_exporter_send_failed_spans{exporter=\"otlp/\\\"tempo\\\"\"} 7")
        );
        assert!(text.contains(
            "otelcol_processor_tail_sampling_global_count_traces_sampled{sampled=\"true\"} 3"
        ));
        assert!(text.contains("traceq_spans_kept_total 9"));
        // every sample line belongs to a declared family
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let family = line.split(['{', ' ']).next().unwrap();
            let base = family.trim_end_matches("_sum").trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {base} ")), "{line}");
        }
    }
}
