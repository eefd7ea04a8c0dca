//! Sending encoded export requests through the crate's one OTLP client, with the load
//! generator's retry budget: a number of retries, and no retry after the run's end.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tokio::time::Instant;

use super::config::{LoadgenConfig, LoadgenError, MAX_RETRY_DELAY};
use crate::client::{ClientConfig, Compression, OtlpClient, RetryConfig, RetryLimits, SendOutcome};
use crate::export::ExportSetupError;

/// Sends encoded `ExportTraceServiceRequest`s to one endpoint, with retries.
///
/// Cheap to share between tasks (`Arc`): gRPC requests are multiplexed on one HTTP/2 connection,
/// made when the first request is sent; OTLP/HTTP ones use a connection pool.
#[derive(Debug)]
pub struct TraceSender {
    client: OtlpClient,
    retry: RetryConfig,
    max_retries: u32,
}

impl TraceSender {
    /// A sender to `config`'s endpoint, protocol, headers, compression, timeout and retries.
    ///
    /// # Errors
    ///
    /// [`LoadgenError::Setting`] if `config` does not validate or this is called outside a Tokio
    /// runtime (gRPC), [`LoadgenError::Client`] if the client cannot be built.
    pub fn new(config: &LoadgenConfig) -> Result<Self, LoadgenError> {
        config.validate()?;
        let client = ClientConfig {
            protocol: config.protocol,
            endpoint: config.endpoint().to_owned(),
            compression: if config.gzip {
                Compression::Gzip
            } else {
                Compression::None
            },
            timeout: config.timeout,
            headers: config.headers.clone(),
            tls: None,
        };
        let client = OtlpClient::new("loadgen", &client).map_err(|e| match e {
            ExportSetupError::NoRuntime { .. } => LoadgenError::Setting {
                field: "protocol",
                reason: "the gRPC sender must be created inside a Tokio runtime".into(),
            },
            other => LoadgenError::Client(other),
        })?;
        Ok(Self {
            client,
            retry: RetryConfig {
                enabled: true,
                initial_interval: config.retry_initial,
                max_interval: MAX_RETRY_DELAY,
                max_elapsed_time: std::time::Duration::ZERO,
            },
            max_retries: config.max_retries,
        })
    }

    /// The protobuf encoding of `request`, as [`send`](Self::send) takes it.
    pub fn encode(request: &ExportTraceServiceRequest) -> Bytes {
        Bytes::from(request.encode_to_vec())
    }

    /// Sends `body` (an encoded `ExportTraceServiceRequest`), retrying retryable refusals by the
    /// client's one policy (exponential backoff from `retry_initial`, the server's `Retry-After`
    /// as a floor), until the configured number of retries or until a retry would start after
    /// `deadline`.
    pub async fn send(&self, body: Bytes, deadline: Option<Instant>) -> SendOutcome {
        let limits = RetryLimits {
            max_retries: Some(self.max_retries),
            deadline,
        };
        self.client.send(body, &self.retry, limits).await
    }
}
