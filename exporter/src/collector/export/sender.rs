//! One attempt at delivering one request, whatever the target.
//!
//! Targets are an enum rather than a trait object: there are four, all known here, and an enum
//! keeps `send` an ordinary `async fn` with no boxing per request.

use std::time::Duration;

use bytes::Bytes;

use super::error::ExportSetupError;
use super::file::JsonLinesSender;
use super::grpc::GrpcSender;
use super::http::HttpSender;
use crate::collector::config::{ExportTarget, ExporterConfig};

/// Requests an OTLP exporter keeps in flight at once. One slow round trip (a downstream
/// flushing, a retry's backoff) then does not stall the batches behind it, while the downstream
/// sees a small, fixed concurrency. Order across batches is not kept, as OTLP does not need it.
pub(crate) const OTLP_MAX_IN_FLIGHT: usize = 4;

/// A request the downstream took. `rejected_spans` comes from an OTLP partial success.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// Spans the downstream said it rejected (`partial_success.rejected_spans`, never negative).
    pub(crate) rejected_spans: u64,
    /// The downstream's `partial_success.error_message`, if any.
    pub(crate) message: String,
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

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SendError {
    /// Whether trying again may succeed (per the OTLP specification's lists).
    pub(crate) retryable: bool,
    /// How long the server asked us to wait (HTTP `Retry-After`).
    pub(crate) retry_after: Option<Duration>,
    /// What happened, for the log.
    pub(crate) message: String,
}

impl SendError {
    /// A failure that the same request will meet again.
    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            retry_after: None,
            message: message.into(),
        }
    }

    /// A failure that may pass (the downstream is down, busy or slow).
    pub(crate) fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            retry_after: None,
            message: message.into(),
        }
    }
}

/// Where one exporter's requests go.
#[derive(Debug)]
pub(crate) enum Sender {
    /// OTLP/gRPC.
    Grpc(GrpcSender),
    /// OTLP/HTTP protobuf.
    Http(HttpSender),
    /// OTLP-JSON lines to a file or stdout.
    Lines(JsonLinesSender),
}

impl Sender {
    /// Builds the target of `config`: validates the endpoint and headers, opens the file.
    /// Must run inside a tokio runtime (the gRPC channel spawns its worker).
    pub(crate) fn from_config(config: &ExporterConfig) -> Result<Self, ExportSetupError> {
        let name = &config.name;
        Ok(match &config.target {
            ExportTarget::OtlpGrpc {
                endpoint,
                compression,
                timeout,
                headers,
            } => Self::Grpc(GrpcSender::new(
                name,
                endpoint,
                *compression,
                *timeout,
                headers,
            )?),
            ExportTarget::OtlpHttp {
                endpoint,
                compression,
                timeout,
                headers,
            } => Self::Http(HttpSender::new(
                name,
                endpoint,
                *compression,
                *timeout,
                headers,
            )?),
            ExportTarget::File { path } => Self::Lines(JsonLinesSender::file(name, path)?),
            ExportTarget::Stdout => Self::Lines(JsonLinesSender::stdout()),
        })
    }

    /// Requests kept in flight at once: a few for OTLP, one for lines (one writer, in order).
    pub(crate) fn max_in_flight(&self) -> usize {
        match self {
            Self::Grpc(_) | Self::Http(_) => OTLP_MAX_IN_FLIGHT,
            Self::Lines(_) => 1,
        }
    }

    /// Turns a batch's encoded request into what each attempt sends (done once per batch, not
    /// per attempt: the HTTP exporter compresses here).
    pub(crate) fn prepare(&self, body: Bytes) -> Result<Bytes, SendError> {
        match self {
            Self::Http(h) => h.prepare(body),
            Self::Grpc(_) | Self::Lines(_) => Ok(body),
        }
    }

    /// One attempt.
    pub(crate) async fn send(&self, payload: &Bytes) -> Result<Accepted, SendError> {
        match self {
            Self::Grpc(g) => g.send(payload).await,
            Self::Http(h) => h.send(payload).await,
            Self::Lines(l) => l.send(payload).await,
        }
    }
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
}
