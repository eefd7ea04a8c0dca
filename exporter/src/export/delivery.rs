//! Delivering one batch: the shared retry policy around the exporter's target, splitting what
//! the downstream refuses for its size or content, counters, and warnings that are given once.
//!
//! Why split rather than drop: a downstream that refuses a request as too large (gRPC
//! `RESOURCE_EXHAUSTED` without `RetryInfo`, HTTP 413) takes the same spans in smaller
//! requests, and one that refuses it as malformed (gRPC `INVALID_ARGUMENT`, HTTP 400) usually
//! objects to a few spans, not to thousands from every sender. Halving until the requests pass
//! isolates `k` such spans in about `2k·log2(spans)` requests (never more than
//! `2 × spans − 1`); only they are dropped (`spans_rejected`). A downstream that refuses every
//! span (a schema it cannot take, a misconfiguration) would cost that worst case for every
//! batch: once [`GIVE_UP_AFTER_REJECTED`] spans of a batch were refused alone and no part of it
//! was taken, the largest part left is tried whole; if it is refused as malformed too, the rest
//! of the batch is dropped as rejected. A request is split by decoding
//! it back into spans and encoding each half, so halves keep the resource and scope grouping.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;

use super::batch::ExportBatch;
use super::metrics::ExporterMetrics;
use super::sender::Sender;
use crate::client::{with_retries, Rejection, RetryConfig, RetryEvent, RetryLimits, SendError};
use crate::otlp::{decode_request, encode_request};

/// Spans of one batch refused alone as malformed, with no part of the batch taken, after which
/// the downstream is taken to refuse everything and the rest of the batch is dropped.
pub(crate) const GIVE_UP_AFTER_REJECTED: usize = 16;

/// What became of one batch's spans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Spans the downstream took.
    pub(crate) sent: usize,
    /// Spans dropped: a permanent error, retries given up, too large alone, or rejected.
    pub(crate) dropped: usize,
    /// Of `dropped`, spans the downstream refused as invalid.
    pub(crate) rejected: usize,
}

/// One exporter's sending side: its target, retry policy, limit, counters and once-only
/// warnings.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) name: String,
    pub(crate) sender: Sender,
    pub(crate) retry: RetryConfig,
    pub(crate) max_export_bytes: usize,
    pub(crate) metrics: Arc<ExporterMetrics>,
    warned_drop: AtomicBool,
    warned_partial: AtomicBool,
    warned_split: AtomicBool,
    warned_rejected: AtomicBool,
    warned_give_up: AtomicBool,
}

impl Delivery {
    /// Wraps a target.
    pub(crate) fn new(
        name: String,
        sender: Sender,
        retry: RetryConfig,
        max_export_bytes: usize,
        metrics: Arc<ExporterMetrics>,
    ) -> Self {
        Self {
            name,
            sender,
            retry,
            max_export_bytes,
            metrics,
            warned_drop: AtomicBool::new(false),
            warned_partial: AtomicBool::new(false),
            warned_split: AtomicBool::new(false),
            warned_rejected: AtomicBool::new(false),
            warned_give_up: AtomicBool::new(false),
        }
    }

    /// Sends `batch`, retrying retryable failures and splitting what is larger than
    /// `max_export_bytes` or refused as too large or malformed, until every part is delivered
    /// or given up. Bumps `requests_sent`, `send_failures`, `retries` and `requests_split`;
    /// the caller counts the outcome's spans.
    pub(crate) async fn deliver(&self, batch: ExportBatch) -> Outcome {
        let mut outcome = Outcome::default();
        // Parts still to send, the next on top: halves go out first half first.
        let mut parts = vec![batch];
        let mut parts_taken = 0usize;
        // The part on top is the largest left, tried to tell a downstream refusing everything
        // from a run of bad spans.
        let mut probing = false;
        while let Some(part) = parts.pop() {
            let spans = part.spans;
            if part.body.len() > self.max_export_bytes {
                let why = format!(
                    "the request is {} bytes, over max_export_bytes ({})",
                    part.body.len(),
                    self.max_export_bytes
                );
                self.split_or_drop(part, &why, &mut parts, &mut outcome);
                continue;
            }
            let bytes = part.body.len();
            match self.send(part.body.clone()).await {
                Ok(rejected) => {
                    parts_taken += 1;
                    probing = false;
                    let rejected = rejected.min(spans);
                    outcome.sent += spans - rejected;
                    outcome.dropped += rejected;
                    outcome.rejected += rejected;
                }
                Err(error) => match error.rejection() {
                    Some(Rejection::Malformed) if probing => {
                        let rest: usize = spans + parts.drain(..).map(|p| p.spans).sum::<usize>();
                        outcome.dropped += rest;
                        outcome.rejected += rest;
                        if !self.warned_give_up.swap(true, Relaxed) {
                            eprintln!(
                                "traceq: exporter {}: downstream refused {} spans one by one \
                                 and took none: {error}; dropping the other {rest} spans of \
                                 the batch as rejected (further such batches are counted, not \
                                 logged)",
                                self.name,
                                outcome.rejected - rest
                            );
                        }
                    }
                    Some(rejection) if spans > 1 => {
                        probing = false;
                        if !self.warned_split.swap(true, Relaxed) {
                            let what = match rejection {
                                Rejection::TooLarge => {
                                    "too large (lower max_export_bytes to \
                                                        avoid the extra round trips)"
                                }
                                _ => "malformed",
                            };
                            eprintln!(
                                "traceq: exporter {}: downstream refused a request of {spans} \
                                 spans ({bytes} bytes) as {what}: {error}; sending it in halves \
                                 (further splits are counted, not logged)",
                                self.name
                            );
                        }
                        self.split_or_drop(part, &error.to_string(), &mut parts, &mut outcome);
                    }
                    Some(Rejection::Malformed) => {
                        outcome.dropped += spans;
                        outcome.rejected += spans;
                        if parts_taken == 0
                            && outcome.rejected >= GIVE_UP_AFTER_REJECTED
                            && !parts.is_empty()
                        {
                            // The bottom part is the largest left (the batch's second half).
                            let largest = parts.remove(0);
                            parts.push(largest);
                            probing = true;
                        }
                        if !self.warned_rejected.swap(true, Relaxed) {
                            eprintln!(
                                "traceq: exporter {}: downstream rejected a span as malformed: \
                                 {error}; dropping it (further rejected spans are counted in \
                                 traceq_exporter_rejected_spans_total, not logged)",
                                self.name
                            );
                        }
                    }
                    _ => {
                        probing = false;
                        outcome.dropped += spans;
                        self.warn_drop(spans, &error);
                    }
                },
            }
        }
        outcome
    }

    /// One request with its retries: the spans the downstream rejected in a partial success
    /// (the caller caps it at the request's spans), or why it failed.
    async fn send(&self, body: Bytes) -> Result<usize, SendError> {
        let payload = self.sender.prepare(body).inspect_err(|_| {
            ExporterMetrics::add(&self.metrics.send_failures, 1);
        })?;
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
        let accepted = outcome.result?;
        ExporterMetrics::add(&self.metrics.requests_sent, 1);
        let rejected = usize::try_from(accepted.rejected_spans).unwrap_or(usize::MAX);
        if rejected > 0 && !self.warned_partial.swap(true, Relaxed) {
            eprintln!(
                "traceq: exporter {}: downstream rejected {rejected} spans of a request: {} \
                 (further rejections are counted, not logged)",
                self.name, accepted.message
            );
        }
        Ok(rejected)
    }

    /// Pushes the two halves of `part` onto `parts`, or drops it when it cannot be split (a
    /// single span, or bytes that do not decode), counting it and saying `why` once.
    fn split_or_drop(
        &self,
        part: ExportBatch,
        why: &str,
        parts: &mut Vec<ExportBatch>,
        outcome: &mut Outcome,
    ) {
        match halves(&part.body) {
            Ok(Some((first, second))) => {
                ExporterMetrics::add(&self.metrics.requests_split, 1);
                parts.push(second);
                parts.push(first);
            }
            Ok(None) => {
                outcome.dropped += part.spans;
                self.warn_drop(
                    part.spans,
                    &SendError::Request(format!("{why}, and one span cannot be split")),
                );
            }
            Err(e) => {
                outcome.dropped += part.spans;
                self.warn_drop(part.spans, &SendError::Request(format!("{why}: {e}")));
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

/// The request in `body` as two requests of half its spans each (first half first), grouped
/// as before; `None` when it holds fewer than two spans.
fn halves(body: &[u8]) -> Result<Option<(ExportBatch, ExportBatch)>, crate::otlp::DecodeError> {
    let spans = decode_request(body)?;
    if spans.len() < 2 {
        return Ok(None);
    }
    let (a, b) = spans.split_at(spans.len() / 2);
    let batch = |spans: &[crate::otlp::OtlpSpan]| ExportBatch {
        body: Bytes::from(encode_request(spans)),
        spans: spans.len(),
    };
    Ok(Some((batch(a), batch(b))))
}

#[cfg(test)]
mod tests;
