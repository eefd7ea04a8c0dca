//! The Prometheus text exposition format (version 0.0.4), written by hand: a `# HELP` and
//! `# TYPE` line per family, then one line per sample, label values escaped.
//!
//! Why not a metrics crate: the counters are plain atomics or snapshots owned by the engine,
//! the sampler and the collector, read once per scrape; all a scrape needs is the text.

use std::fmt::{Display, Write as _};

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative buckets, a sum and a count.
    Histogram,
    /// Quantiles (optional), a sum and a count.
    Summary,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
        }
    }
}

/// A Prometheus text document being written.
///
/// # Examples
///
/// ```
/// use traceq_core::{MetricKind, PrometheusText};
///
/// let mut text = PrometheusText::new();
/// text.family("jobs_total", MetricKind::Counter, "Jobs done.");
/// text.sample("jobs_total", &[("queue", "a \"b\"")], 3);
/// assert_eq!(
///     text.finish(),
///     "# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total{queue=\"a \\\"b\\\"\"} 3\n"
/// );
/// ```
#[derive(Debug, Default)]
pub struct PrometheusText {
    out: String,
}

impl PrometheusText {
    /// An empty document.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its `# HELP` line (left out when `help` is empty) and `# TYPE` line.
    pub fn family(&mut self, name: &str, kind: MetricKind, help: &str) {
        if !help.is_empty() {
            let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        }
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample of `name` with `labels` (values escaped).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The text so far.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.out
    }

    /// The document.
    #[must_use]
    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Help text with `\` and newlines escaped.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_should_be_escaped_and_empty_help_left_out() {
        let mut text = PrometheusText::new();
        text.family("up", MetricKind::Gauge, "");
        text.sample("up", &[("a", "x\\y\nz"), ("b", "q")], 1.5);
        text.sample("up", &[], 0);
        assert_eq!(
            text.finish(),
            "# TYPE up gauge\nup{a=\"x\\\\y\\nz\",b=\"q\"} 1.5\nup 0\n"
        );
    }
}
