//! One attempt at delivering one request, whatever the target.
//!
//! Targets are an enum rather than a trait object: there are two kinds, both known here, and an
//! enum keeps `send` an ordinary `async fn` with no boxing per request.

use bytes::Bytes;

use super::config::{ExportTarget, ExporterConfig};
use super::error::ExportSetupError;
use super::file::JsonLinesSender;
use crate::client::{Accepted, ClientConfig, OtlpClient, Protocol, SendError};

/// Requests an OTLP exporter keeps in flight at once. One slow round trip (a downstream
/// flushing, a retry's backoff) then does not stall the batches behind it, while the downstream
/// sees a small, fixed concurrency. Order across batches is not kept, as OTLP does not need it.
pub(crate) const OTLP_MAX_IN_FLIGHT: usize = 4;

/// Where one exporter's requests go.
#[derive(Debug)]
pub(crate) enum Sender {
    /// OTLP/gRPC or OTLP/HTTP.
    Otlp(Box<OtlpClient>),
    /// OTLP-JSON lines to a file or stdout.
    Lines(JsonLinesSender),
}

impl Sender {
    /// Builds the target of `config`: validates the endpoint and headers, opens the file.
    /// Must run inside a tokio runtime (the gRPC channel spawns its worker).
    pub(crate) fn from_config(config: &ExporterConfig) -> Result<Self, ExportSetupError> {
        let name = &config.name;
        let otlp = |protocol, endpoint: &String, compression, timeout, headers: &Vec<_>| {
            let client = ClientConfig {
                protocol,
                endpoint: endpoint.clone(),
                compression,
                timeout,
                headers: headers.clone(),
                tls: config.tls.clone(),
            };
            OtlpClient::new(name, &client).map(|c| Self::Otlp(Box::new(c)))
        };
        match &config.target {
            ExportTarget::OtlpGrpc {
                endpoint,
                compression,
                timeout,
                headers,
            } => otlp(Protocol::Grpc, endpoint, *compression, *timeout, headers),
            ExportTarget::OtlpHttp {
                endpoint,
                compression,
                timeout,
                headers,
            } => otlp(Protocol::Http, endpoint, *compression, *timeout, headers),
            ExportTarget::File {
                path,
                fsync_interval,
            } => Ok(Self::Lines(JsonLinesSender::file(
                name,
                path,
                *fsync_interval,
            )?)),
            ExportTarget::Stdout => Ok(Self::Lines(JsonLinesSender::stdout())),
        }
    }

    /// Requests kept in flight at once: a few for OTLP, one for lines (one writer, in order).
    pub(crate) fn max_in_flight(&self) -> usize {
        match self {
            Self::Otlp(_) => OTLP_MAX_IN_FLIGHT,
            Self::Lines(_) => 1,
        }
    }

    /// Turns a batch's encoded request into what each attempt sends (done once per batch, not
    /// per attempt: the HTTP exporter compresses here).
    pub(crate) fn prepare(&self, body: Bytes) -> Result<Bytes, SendError> {
        match self {
            Self::Otlp(client) => client.prepare(body),
            Self::Lines(_) => Ok(body),
        }
    }

    /// Syncs a file exporter's unsynced lines to disk (nothing for other targets).
    pub(crate) async fn sync(&self) -> Result<(), SendError> {
        match self {
            Self::Otlp(_) => Ok(()),
            Self::Lines(lines) => lines.sync().await,
        }
    }

    /// Reopens a file exporter's file at its path; `false` for targets without a file.
    pub(crate) async fn reopen(&self, name: &str) -> Result<bool, ExportSetupError> {
        match self {
            Self::Otlp(_) => Ok(false),
            Self::Lines(lines) => lines.reopen(name).await,
        }
    }

    /// One attempt.
    pub(crate) async fn send(&self, payload: &Bytes) -> Result<Accepted, SendError> {
        match self {
            Self::Otlp(client) => client.attempt(payload).await,
            Self::Lines(lines) => lines.send(payload).await,
        }
    }
}
