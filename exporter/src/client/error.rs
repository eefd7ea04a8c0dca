//! What one send came to: accepted (perhaps in part), or why not.

use std::fmt;
use std::time::Duration;

use super::retry::{grpc_code_is_retryable, http_status_is_retryable};

/// Longest server error text kept in a [`SendError`].
pub(crate) const MAX_ERROR_BODY: usize = 200;

/// A request the downstream took. `rejected_spans` comes from an OTLP partial success.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Spans the downstream said it rejected (`partial_success.rejected_spans`, never negative).
    pub rejected_spans: u64,
    /// The downstream's `partial_success.error_message`, if any.
    pub message: String,
}

impl Accepted {
    /// Reads an OTLP partial success; a negative count (a broken server) counts as none.
    pub(crate) fn from_partial_success(rejected: i64, message: String) -> Self {
        Self {
            rejected_spans: u64::try_from(rejected).unwrap_or(0),
            message,
        }
    }
}

/// Why an attempt failed. [`is_retryable`](Self::is_retryable) says whether the same request
/// may pass later, per the OTLP specification.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The gRPC call ended with a status other than OK.
    Grpc {
        /// The status code.
        code: tonic::Code,
        /// The status message, with the causes of a transport error.
        message: String,
        /// The delay of a `google.rpc.RetryInfo` detail, if the server sent one.
        retry_after: Option<Duration>,
    },
    /// The OTLP/HTTP server answered with a status other than 2xx.
    Http {
        /// The HTTP status code.
        status: u16,
        /// The start of the response body, as text.
        body: String,
        /// How long the server asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused or reset, timeout. Retryable.
    Transport(String),
    /// The request could not be made (encoding, compressing). Permanent.
    Request(String),
    /// A local write failed (a full disk, an I/O error). Retryable: the disk may be freed or
    /// the file rotated.
    Write(String),
}

/// How a downstream refused a request for what was in it, rather than for its own state.
/// Splitting the request helps with both: a smaller request may fit, and the spans that are
/// not at fault can still be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Too large: gRPC `RESOURCE_EXHAUSTED` without a `RetryInfo` detail (with one it is a
    /// throttle, retried after the delay), HTTP 413.
    TooLarge,
    /// Malformed: gRPC `INVALID_ARGUMENT`, HTTP 400.
    Malformed,
}

impl SendError {
    /// Whether trying the same request again may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            // RESOURCE_EXHAUSTED with RetryInfo is a throttle: retryable, per the specification.
            Self::Grpc {
                code: tonic::Code::ResourceExhausted,
                retry_after: Some(_),
                ..
            } => true,
            Self::Grpc { code, .. } => grpc_code_is_retryable(*code),
            Self::Http { status, .. } => http_status_is_retryable(*status),
            Self::Transport(_) | Self::Write(_) => true,
            Self::Request(_) => false,
        }
    }

    /// Whether the downstream refused the request for its size or its content (see
    /// [`Rejection`]); `None` for every other failure.
    #[must_use]
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Self::Grpc {
                code: tonic::Code::ResourceExhausted,
                retry_after: None,
                ..
            }
            | Self::Http { status: 413, .. } => Some(Rejection::TooLarge),
            Self::Grpc {
                code: tonic::Code::InvalidArgument,
                ..
            }
            | Self::Http { status: 400, .. } => Some(Rejection::Malformed),
            _ => None,
        }
    }

    /// The wait the server asked for, if any.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Http { retry_after, .. } | Self::Grpc { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The same error, saying that retries were given up after `limit`.
    pub(crate) fn gave_up_after(self, limit: Duration) -> Self {
        let note = |m: String| format!("{m} (gave up retrying after {limit:?})");
        match self {
            Self::Grpc {
                code,
                message,
                retry_after,
            } => Self::Grpc {
                code,
                message: note(message),
                retry_after,
            },
            Self::Http {
                status,
                body,
                retry_after,
            } => Self::Http {
                status,
                body: note(body),
                retry_after,
            },
            Self::Transport(m) => Self::Transport(note(m)),
            Self::Request(m) => Self::Request(note(m)),
            Self::Write(m) => Self::Write(note(m)),
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Grpc { code, message, .. } => write!(f, "gRPC status {code:?}: {message}"),
            Self::Http { status, body, .. } if body.is_empty() => {
                write!(f, "HTTP status {status}")
            }
            Self::Http { status, body, .. } => write!(f, "HTTP status {status}: {body}"),
            Self::Transport(m) => write!(f, "no answer: {m}"),
            Self::Request(m) | Self::Write(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SendError {}

/// `text` and the causes from `source` on, on one line; a cause already said is left out, and
/// so is hyper's and tonic's uninformative "transport error".
pub(crate) fn with_causes(
    mut text: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) && cause_text != "transport error" {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Server error text fit for one log line: control characters blanked, at most
/// [`MAX_ERROR_BODY`] characters.
pub(crate) fn error_text(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_BODY)
        .collect();
    text.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_partial_success_counts_should_read_as_none() {
        assert_eq!(
            Accepted::from_partial_success(-3, String::new()).rejected_spans,
            0
        );
        assert_eq!(
            Accepted::from_partial_success(3, String::new()).rejected_spans,
            3
        );
    }

    #[test]
    fn errors_should_say_whether_they_are_retryable() {
        let grpc = |code| SendError::Grpc {
            code,
            message: String::new(),
            retry_after: None,
        };
        assert!(grpc(tonic::Code::Unavailable).is_retryable());
        assert!(!grpc(tonic::Code::InvalidArgument).is_retryable());
        assert!(SendError::Transport("refused".into()).is_retryable());
        assert!(!SendError::Request("gzip".into()).is_retryable());
        let http = SendError::Http {
            status: 429,
            body: "slow down".into(),
            retry_after: Some(Duration::from_secs(2)),
        };
        assert!(http.is_retryable());
        assert_eq!(http.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(http.to_string(), "HTTP status 429: slow down");
        assert!(SendError::Write("disk full".into()).is_retryable());
    }

    #[test]
    fn oversize_and_malformed_refusals_should_read_as_rejections() {
        let grpc = |code| SendError::Grpc {
            code,
            message: String::new(),
            retry_after: None,
        };
        let http = |status| SendError::Http {
            status,
            body: String::new(),
            retry_after: None,
        };
        assert_eq!(
            grpc(tonic::Code::ResourceExhausted).rejection(),
            Some(Rejection::TooLarge)
        );
        assert_eq!(http(413).rejection(), Some(Rejection::TooLarge));
        assert_eq!(
            grpc(tonic::Code::InvalidArgument).rejection(),
            Some(Rejection::Malformed)
        );
        assert_eq!(http(400).rejection(), Some(Rejection::Malformed));
        for other in [
            grpc(tonic::Code::Unavailable),
            grpc(tonic::Code::PermissionDenied),
            http(401),
            http(503),
            SendError::Transport("reset".into()),
            SendError::Write("disk full".into()),
        ] {
            assert_eq!(other.rejection(), None, "{other}");
        }
        // neither is retried as it is
        assert!(!grpc(tonic::Code::ResourceExhausted).is_retryable());
        assert!(!http(413).is_retryable());
        // with RetryInfo, RESOURCE_EXHAUSTED is a throttle: retried after the delay, not split
        let throttled = SendError::Grpc {
            code: tonic::Code::ResourceExhausted,
            message: "slow down".into(),
            retry_after: Some(Duration::from_millis(300)),
        };
        assert!(throttled.is_retryable());
        assert_eq!(throttled.rejection(), None);
        assert_eq!(throttled.retry_after(), Some(Duration::from_millis(300)));
    }
}
