//! What the OTLP specification lets a client retry, shared by the collector's exporters and the
//! load generator so both treat a downstream's answer the same way.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use tonic::Code;

/// The gRPC codes the OTLP specification calls retryable. `RESOURCE_EXHAUSTED` is retryable only
/// with a `RetryInfo` detail, which is not read here, so it is not retried.
pub(crate) fn grpc_code_is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The HTTP statuses the OTLP specification calls retryable.
pub(crate) fn http_status_is_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// `Retry-After: <seconds>`; the HTTP-date form and garbage read as absent.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}
