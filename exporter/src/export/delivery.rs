//! Delivering one batch: the shared retry policy around the exporter's target, counters, and
//! warnings that are given once.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use super::batch::ExportBatch;
use super::metrics::ExporterMetrics;
use super::sender::Sender;
use crate::client::{with_retries, RetryConfig, RetryEvent, RetryLimits, SendError};

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
        let outcome = with_retries(
            &self.retry,
            RetryLimits::default(),
            || self.sender.send(&payload),
            |event| match event {
                RetryEvent::Failed => ExporterMetrics::add(&self.metrics.send_failures, 1),
                RetryEvent::Retrying => ExporterMetrics::add(&self.metrics.retries, 1),
            },
        )
        .await;
        match outcome.result {
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
                Outcome {
                    sent: spans - rejected,
                    dropped: rejected,
                }
            }
            Err(error) => {
                self.warn_drop(spans, &error);
                dropped
            }
        }
    }

    fn warn_drop(&self, spans: usize, error: &SendError) {
        if !self.warned_drop.swap(true, Relaxed) {
            eprintln!(
                "traceq: exporter {}: dropping a batch of {spans} spans: {} (further drops are \
                 counted, not logged)",
                self.name, error
            );
        }
    }
}
