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
    /// The request could not be made or written (encoding, a local write). Permanent.
    Request(String),
}

impl SendError {
    /// Whether trying the same request again may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Grpc { code, .. } => grpc_code_is_retryable(*code),
            Self::Http { status, .. } => http_status_is_retryable(*status),
            Self::Transport(_) => true,
            Self::Request(_) => false,
        }
    }

    /// The wait the server asked for, if any.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The same error, saying that retries were given up after `limit`.
    pub(crate) fn gave_up_after(self, limit: Duration) -> Self {
        let note = |m: String| format!("{m} (gave up retrying after {limit:?})");
        match self {
            Self::Grpc { code, message } => Self::Grpc {
                code,
                message: note(message),
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
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Grpc { code, message } => write!(f, "gRPC status {code:?}: {message}"),
            Self::Http { status, body, .. } if body.is_empty() => {
                write!(f, "HTTP status {status}")
            }
            Self::Http { status, body, .. } => write!(f, "HTTP status {status}: {body}"),
            Self::Transport(m) => write!(f, "no answer: {m}"),
            Self::Request(m) => f.write_str(m),
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
    }
}
