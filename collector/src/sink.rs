//! Where receivers hand decoded spans: the pipeline's front door.

use std::time::Duration;

use traceq_exporter::otlp::OtlpSpan;

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
}

/// Takes the spans of one decoded request.
pub(crate) trait SpanSink: Send + Sync + 'static {
    /// Accepts every span of a request, or none of them (so a refused request can be retried
    /// whole without duplicates).
    ///
    /// # Errors
    ///
    /// [`Refused`] when the spans were not taken.
    fn offer(&self, spans: Vec<OtlpSpan>) -> Result<(), Refused>;
}
