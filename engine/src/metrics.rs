//! Queue metrics, named as client-go names them so existing dashboards carry over.
//!
//! Counters and histograms live inside the queue's state, updated under the lock the operation
//! already holds, so they cost no extra synchronisation. Time-based metrics (queue latency, work
//! duration, unfinished work) read the clock on add, get and done; a queue built without metrics
//! never reads the clock on its hot path.
//!
//! `workqueue_depth` carries a `priority` label, as controller-runtime's priority queue has it, so
//! that a backlog of low-priority resyncs can be told from fresh work. Why a cap on its values:
//! a program that uses ever-new priorities (a counter, for LIFO order) would otherwise create a
//! series per priority without end (controller-runtime#3396). The first
//! [`MAX_PRIORITY_LABELS`](crate::MAX_PRIORITY_LABELS) distinct priorities a queue sees get their
//! own series, kept for the queue's life; keys of any other priority are counted under
//! `priority="other"`.

use std::time::Duration;

use traceq_core::{MetricKind, PrometheusText};

/// Histogram bucket upper bounds in seconds: client-go's `ExponentialBuckets(10e-9, 10, 10)`.
pub const DURATION_BUCKETS: [f64; 10] = [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or below each bound of [`DURATION_BUCKETS`] (not cumulative).
    pub buckets: [u64; DURATION_BUCKETS.len()],
    /// Observations above the last bound.
    pub overflow: u64,
    /// Number of observations.
    pub count: u64,
    /// Sum of the observations in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        self.count += 1;
        self.sum_seconds += s;
        match DURATION_BUCKETS.iter().position(|&b| s <= b) {
            Some(i) => self.buckets[i] += 1,
            None => self.overflow += 1,
        }
    }

    /// Adds `other`'s observations to these.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.overflow += other.overflow;
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }

    /// Mean of the observations, or zero when there are none.
    pub fn mean(&self) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.sum_seconds / self.count as f64)
    }

    fn write_prometheus(&self, out: &mut PrometheusText, metric: &str, name: &str) {
        let bucket = format!("{metric}_bucket");
        let mut cumulative = 0;
        for (bound, n) in DURATION_BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let le = format!("{bound:e}");
            out.sample(&bucket, &[("name", name), ("le", &le)], cumulative);
        }
        out.sample(&bucket, &[("name", name), ("le", "+Inf")], self.count);
        out.sample(
            &format!("{metric}_sum"),
            &[("name", name)],
            self.sum_seconds,
        );
        out.sample(&format!("{metric}_count"), &[("name", name)], self.count);
    }
}

/// The `priority` label of one `workqueue_depth` series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PriorityLabel {
    /// Keys queued at this priority.
    Priority(i32),
    /// Keys queued at the priorities seen after the cap on labels was reached.
    Other,
}

impl std::fmt::Display for PriorityLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Priority(p) => write!(f, "{p}"),
            Self::Other => f.write_str("other"),
        }
    }
}

/// A point-in-time copy of a queue's metrics.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct QueueMetrics {
    /// The queue's name (the `name` label).
    pub name: String,
    /// Keys queued and ready to be handed out: the sum of [`depth_by_priority`](Self::depth_by_priority).
    pub depth: u64,
    /// `workqueue_depth{priority}`: keys queued and ready, per priority label, highest first
    /// (see the module docs for the cap on labels). A queue that never saw a priority other than
    /// the default has the one series `priority="0"`.
    pub depth_by_priority: Vec<(PriorityLabel, u64)>,
    /// `traceq_workqueue_groups`: groups with keys queued or in process (fair queues; 0
    /// otherwise).
    pub groups: u64,
    /// `traceq_workqueue_waiting`: keys waiting out a delay or backoff (not in `depth`).
    pub waiting: u64,
    /// `traceq_workqueue_processing`: keys being processed.
    pub processing: u64,
    /// `workqueue_adds_total`: adds that queued or re-queued a key (coalesced adds excluded).
    pub adds_total: u64,
    /// `workqueue_retries_total`: rate-limited adds that scheduled a retry.
    pub retries_total: u64,
    /// `workqueue_queue_duration_seconds`: time from queued to handed out.
    pub queue_duration: Histogram,
    /// `workqueue_work_duration_seconds`: time from handed out to done.
    pub work_duration: Histogram,
    /// `workqueue_unfinished_work_seconds`: total time the keys in process have been running.
    pub unfinished_work_seconds: f64,
    /// `workqueue_longest_running_processor_seconds`: the longest running key's time so far.
    pub longest_running_processor_seconds: f64,
    /// `traceq_workqueue_dropped_adds_total`: adds ignored because the queue was shut down.
    pub dropped_adds_total: u64,
    /// `traceq_workqueue_exhausted_total`: keys forgotten after exhausting their retries.
    pub exhausted_total: u64,
}

impl QueueMetrics {
    /// Renders the metrics in the Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let mut out = PrometheusText::new();
        let name = self.name.as_str();
        out.family("workqueue_depth", MetricKind::Gauge, "");
        if self.depth_by_priority.is_empty() {
            out.sample(
                "workqueue_depth",
                &[("name", name), ("priority", "0")],
                self.depth as f64,
            );
        }
        for (label, depth) in &self.depth_by_priority {
            let priority = label.to_string();
            out.sample(
                "workqueue_depth",
                &[("name", name), ("priority", &priority)],
                *depth as f64,
            );
        }
        let gauges = [
            (
                "traceq_workqueue_groups",
                MetricKind::Gauge,
                self.groups as f64,
            ),
            (
                "traceq_workqueue_waiting",
                MetricKind::Gauge,
                self.waiting as f64,
            ),
            (
                "traceq_workqueue_processing",
                MetricKind::Gauge,
                self.processing as f64,
            ),
            (
                "workqueue_adds_total",
                MetricKind::Counter,
                self.adds_total as f64,
            ),
            (
                "workqueue_retries_total",
                MetricKind::Counter,
                self.retries_total as f64,
            ),
            (
                "workqueue_unfinished_work_seconds",
                MetricKind::Gauge,
                self.unfinished_work_seconds,
            ),
            (
                "workqueue_longest_running_processor_seconds",
                MetricKind::Gauge,
                self.longest_running_processor_seconds,
            ),
            (
                "traceq_workqueue_dropped_adds_total",
                MetricKind::Counter,
                self.dropped_adds_total as f64,
            ),
            (
                "traceq_workqueue_exhausted_total",
                MetricKind::Counter,
                self.exhausted_total as f64,
            ),
        ];
        for (metric, kind, value) in gauges {
            out.family(metric, kind, "");
            out.sample(metric, &[("name", name)], value);
        }
        for (metric, h) in [
            ("workqueue_queue_duration_seconds", &self.queue_duration),
            ("workqueue_work_duration_seconds", &self.work_duration),
        ] {
            out.family(metric, MetricKind::Histogram, "");
            h.write_prometheus(&mut out, metric, name);
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_should_bucket_by_upper_bound() {
        let mut h = Histogram::default();
        h.observe(Duration::from_nanos(5));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[6], 1);
        assert_eq!(h.overflow, 1);
        assert_eq!(h.count, 3);
    }

    #[test]
    fn prometheus_text_should_use_client_go_names() {
        let m = QueueMetrics {
            name: "q".into(),
            depth: 3,
            ..Default::default()
        };
        let text = m.to_prometheus();
        assert!(text.contains("workqueue_depth{name=\"q\",priority=\"0\"} 3"));
        assert!(text.contains("workqueue_queue_duration_seconds_count{name=\"q\"} 0"));
        assert!(text.contains("workqueue_work_duration_seconds_bucket{name=\"q\",le=\"+Inf\"} 0"));
    }

    #[test]
    fn prometheus_text_should_label_depth_by_priority_and_other() {
        let m = QueueMetrics {
            name: "q".into(),
            depth: 6,
            depth_by_priority: vec![
                (PriorityLabel::Priority(10), 1),
                (PriorityLabel::Priority(0), 0),
                (PriorityLabel::Other, 5),
            ],
            ..Default::default()
        };
        let text = m.to_prometheus();
        assert!(text.contains("workqueue_depth{name=\"q\",priority=\"10\"} 1"));
        assert!(text.contains("workqueue_depth{name=\"q\",priority=\"0\"} 0"));
        assert!(text.contains("workqueue_depth{name=\"q\",priority=\"other\"} 5"));
        assert_eq!(text.matches("# TYPE workqueue_depth gauge").count(), 1);
    }
}
