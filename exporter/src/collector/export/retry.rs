//! Delivering one batch: attempts, exponential backoff with jitter, and giving up.
//!
//! The backoff is the OpenTelemetry Collector's `retry_on_failure`: the first delay is
//! `initial_interval`, each next one doubles up to `max_interval`, and each is randomised to
//! between half and one and a half times its value (capped at `max_interval`) so that exporters
//! failing together do not retry together. A server's `Retry-After` wins when it is longer. A
//! batch is given up when the next attempt would start after `max_elapsed_time` (zero: never;
//! the shutdown deadline ends it instead).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::batch::ExportBatch;
use super::sender::{SendError, Sender};
use crate::collector::config::RetryConfig;
use crate::collector::metrics::ExporterMetrics;

/// Shortest delay between attempts, whatever the configuration says: a zero interval from a
/// hand-built config must not turn retries into a busy loop.
const MIN_DELAY: Duration = Duration::from_millis(1);

/// Exponential backoff delays for one batch.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `initial_interval`.
    pub(crate) fn new(config: &RetryConfig) -> Self {
        let max = config.max_interval.max(MIN_DELAY);
        Self {
            next: config.initial_interval.clamp(MIN_DELAY, max),
            max,
        }
    }

    /// The next delay; `unit` in `[0, 1)` picks the jitter (from `rand` in production).
    pub(crate) fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        let factor = 0.5
            + if unit.is_finite() {
                unit.clamp(0.0, 1.0)
            } else {
                0.5
            };
        Duration::try_from_secs_f64(base.as_secs_f64() * factor)
            .unwrap_or(self.max)
            .clamp(MIN_DELAY, self.max)
    }
}

/// What became of one batch's spans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Spans the downstream took.
    pub(crate) sent: usize,
    /// Spans dropped: a permanent error, retries given up, or rejected in a partial success.
    pub(crate) dropped: usize,
}

/// One exporter's sending side: its target, retry policy, counters and once-only warnings.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) name: String,
    pub(crate) sender: Sender,
    pub(crate) retry: RetryConfig,
    pub(crate) metrics: Arc<ExporterMetrics>,
    warned_drop: AtomicBool,
    warned_partial: AtomicBool,
}

impl Delivery {
    /// Wraps a target.
    pub(crate) fn new(
        name: String,
        sender: Sender,
        retry: RetryConfig,
        metrics: Arc<ExporterMetrics>,
    ) -> Self {
        Self {
            name,
            sender,
            retry,
            metrics,
            warned_drop: AtomicBool::new(false),
            warned_partial: AtomicBool::new(false),
        }
    }

    /// Sends `batch`, retrying retryable failures, until it is delivered or given up. Bumps
    /// `requests_sent`, `send_failures` and `retries`; the caller counts the outcome's spans.
    pub(crate) async fn deliver(&self, batch: ExportBatch) -> Outcome {
        let spans = batch.spans;
        let dropped = Outcome {
            sent: 0,
            dropped: spans,
        };
        let payload = match self.sender.prepare(batch.body) {
            Ok(p) => p,
            Err(e) => {
                ExporterMetrics::add(&self.metrics.send_failures, 1);
                self.warn_drop(spans, &e);
                return dropped;
            }
        };
        let start = Instant::now();
        let mut backoff = Backoff::new(&self.retry);
        loop {
            let error = match self.sender.send(&payload).await {
                Ok(accepted) => {
                    ExporterMetrics::add(&self.metrics.requests_sent, 1);
                    let rejected =
                        usize::try_from(accepted.rejected_spans).map_or(spans, |r| r.min(spans));
                    if rejected > 0 && !self.warned_partial.swap(true, Relaxed) {
                        eprintln!(
                            "traceq: exporter {}: downstream rejected {rejected} of {spans} spans: \
                             {} (further rejections are counted, not logged)",
                            self.name, accepted.message
                        );
                    }
                    return Outcome {
                        sent: spans - rejected,
                        dropped: rejected,
                    };
                }
                Err(e) => e,
            };
            ExporterMetrics::add(&self.metrics.send_failures, 1);
            if !error.retryable || !self.retry.enabled {
                self.warn_drop(spans, &error);
                return dropped;
            }
            let mut delay = backoff.next_delay(rand::random::<f64>());
            if let Some(after) = error.retry_after {
                delay = delay.max(after);
            }
            let limit = self.retry.max_elapsed_time;
            if !limit.is_zero() && start.elapsed().saturating_add(delay) > limit {
                let e = SendError {
                    message: format!("{} (gave up retrying after {limit:?})", error.message),
                    ..error
                };
                self.warn_drop(spans, &e);
                return dropped;
            }
            tokio::time::sleep(delay).await;
            ExporterMetrics::add(&self.metrics.retries, 1);
        }
    }

    fn warn_drop(&self, spans: usize, error: &SendError) {
        if !self.warned_drop.swap(true, Relaxed) {
            eprintln!(
                "traceq: exporter {}: dropping a batch of {spans} spans: {} (further drops are \
                 counted, not logged)",
                self.name, error.message
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(initial_ms: u64, max_ms: u64) -> RetryConfig {
        RetryConfig {
            enabled: true,
            initial_interval: Duration::from_millis(initial_ms),
            max_interval: Duration::from_millis(max_ms),
            max_elapsed_time: Duration::ZERO,
        }
    }

    #[test]
    fn backoff_should_double_up_to_the_maximum_without_jitter() {
        let mut b = Backoff::new(&config(10, 70));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay(0.5).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 70, 70]);
    }

    #[test]
    fn zero_intervals_should_not_make_a_busy_loop() {
        let mut b = Backoff::new(&config(0, 0));
        assert!(b.next_delay(0.0) >= MIN_DELAY);
    }

    proptest! {
        #[test]
        fn backoff_delays_should_stay_within_half_and_one_and_a_half_of_base_and_the_maximum(
            initial in 1u64..10_000,
            extra in 0u64..100_000,
            units in proptest::collection::vec(any::<f64>(), 1..20),
        ) {
            let max = initial + extra;
            let mut b = Backoff::new(&config(initial, max));
            let mut base = initial;
            for unit in units {
                let d = b.next_delay(unit).as_secs_f64() * 1000.0;
                prop_assert!(d <= max as f64 + 1e-6, "{d} > {max}");
                prop_assert!(d >= base as f64 / 2.0 - 1e-6, "{d} < {base}/2");
                base = (base * 2).min(max);
            }
        }
    }
}
