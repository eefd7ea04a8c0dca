//! Where receivers hand decoded spans: the pipeline's front door.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use traceq_exporter::otlp::OtlpSpan;

use super::storage::Log;

/// Why spans were not accepted. Each maps to a retryable protocol error: gRPC `UNAVAILABLE`,
/// HTTP 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Refused {
    /// The sampler's buffer is at its bound; try again after the given delay.
    #[error("the trace buffer is full, retry after {retry_after:?}")]
    Full {
        /// The delay suggested to the client.
        retry_after: Duration,
    },
    /// The collector is shutting down.
    #[error("the collector is shutting down")]
    ShuttingDown,
    /// The storage cannot be written (disk full, I/O error); try again later.
    #[error("the collector's storage cannot be written")]
    Storage,
}

/// Spans taken by [`SpanSink::offer`]: acknowledge them only after [`Accepted::durable`].
#[derive(Debug, Default)]
#[must_use]
pub(crate) struct Accepted {
    /// The log, the end of the request's record in it, and the writer's word on it.
    logged: Option<(Arc<Log>, u64, oneshot::Receiver<bool>)>,
}

impl Accepted {
    /// Spans queued to the log, to be acknowledged once written (and synced past `end` with
    /// `fsync: always`).
    pub(crate) fn logged(log: Arc<Log>, end: u64, written: oneshot::Receiver<bool>) -> Self {
        Self {
            logged: Some((log, end, written)),
        }
    }

    /// Waits until the spans are as durable as the storage promises (at once without
    /// storage).
    ///
    /// # Errors
    ///
    /// [`Refused::Storage`] when the record could not be written: the sender should retry.
    pub(crate) async fn durable(self) -> Result<(), Refused> {
        let Some((log, end, written)) = self.logged else {
            return Ok(());
        };
        if written.await != Ok(true) {
            return Err(Refused::Storage);
        }
        log.synced(end).await;
        Ok(())
    }
}

/// Takes the spans of one decoded request.
pub(crate) trait SpanSink: Send + Sync + 'static {
    /// Accepts every span of a request, or none of them (so a refused request can be retried
    /// whole without duplicates).
    ///
    /// # Errors
    ///
    /// [`Refused`] when the spans were not taken.
    fn offer(&self, spans: Vec<OtlpSpan>) -> Result<Accepted, Refused>;

    /// Whether the spans are only routed by trace id (receivers then read nothing else).
    fn routes_only(&self) -> bool {
        false
    }
}
