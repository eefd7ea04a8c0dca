//! Sending encoded export requests over OTLP/gRPC or OTLP/HTTP, retrying what the OTLP
//! specification calls retryable.
//!
//! Why requests are encoded once, before the first attempt: a retry then re-sends the same bytes
//! instead of cloning a message of hundreds of spans, and OTLP/HTTP and OTLP/gRPC send the same
//! protobuf body. For gRPC this takes a pass-through codec on tonic's generic client rather than
//! the generated `TraceServiceClient`, which wants the message itself; the call (path, framing,
//! compression, metadata, status) is the same.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use tokio::time::Instant;
use tonic::codec::CompressionEncoding;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::config::{LoadgenConfig, LoadgenError, Protocol, MAX_RETRY_DELAY};
use crate::otlp::grpc::{EncodedRequestCodec, EXPORT_PATH};
use crate::otlp::retry::{grpc_code_is_retryable, http_status_is_retryable, retry_after};

/// The OTLP/gRPC method every request calls.
/// Longest server error text kept in a [`SendError`].
const MAX_ERROR_BODY: usize = 200;

/// Why a request failed, as the last attempt saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The gRPC call ended with a status other than OK (connection failures are `Unavailable`).
    #[error("gRPC status {code:?}: {message}")]
    Grpc {
        /// The status code.
        code: tonic::Code,
        /// The status message, with the causes of a transport error.
        message: String,
    },
    /// The OTLP/HTTP server answered with a status other than 2xx.
    #[error("HTTP status {status}: {body}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The start of the response body, as text.
        body: String,
    },
    /// The OTLP/HTTP request got no answer: connection refused or reset, timeout.
    #[error("HTTP request failed: {0}")]
    Transport(String),
}

/// What became of one request after its retries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendOutcome {
    /// Attempts repeated after retryable refusals.
    pub retries: u32,
    /// The spans the server rejected in a partial success, or why the request failed.
    pub result: Result<u64, SendError>,
}

/// What one attempt came to.
enum Attempt {
    Accepted {
        rejected_spans: u64,
    },
    Retry {
        after: Option<Duration>,
        error: SendError,
    },
    Failed(SendError),
}

/// Sends encoded `ExportTraceServiceRequest`s to one endpoint, with retries.
///
/// Cheap to share between tasks (`Arc`): gRPC requests are multiplexed on one HTTP/2 connection,
/// made when the first request is sent; OTLP/HTTP ones use a connection pool.
#[derive(Debug)]
pub struct TraceSender {
    transport: Transport,
    gzip: bool,
    max_retries: u32,
    retry_initial: Duration,
}

#[derive(Debug)]
enum Transport {
    Grpc {
        client: tonic::client::Grpc<Channel>,
        metadata: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    },
    Http {
        client: reqwest::Client,
        url: String,
    },
}

impl TraceSender {
    /// A sender to `config`'s endpoint, protocol, headers, compression, timeout and retries.
    ///
    /// # Errors
    ///
    /// [`LoadgenError::Setting`] if `config` does not validate or this is called outside a Tokio
    /// runtime (gRPC), [`LoadgenError::HttpClient`] if the HTTP client cannot be built.
    pub fn new(config: &LoadgenConfig) -> Result<Self, LoadgenError> {
        config.validate()?;
        let url = config.url();
        let transport = match config.protocol {
            Protocol::Grpc => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(LoadgenError::Setting {
                        field: "protocol",
                        reason: "the gRPC sender must be created inside a Tokio runtime".into(),
                    });
                }
                let endpoint = Endpoint::from_shared(url).map_err(|e| LoadgenError::Setting {
                    field: "endpoint",
                    reason: e.to_string(),
                })?;
                let channel = endpoint
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout)
                    .connect_lazy();
                let mut client = tonic::client::Grpc::new(channel);
                if config.gzip {
                    client = client.send_compressed(CompressionEncoding::Gzip);
                }
                let metadata = config
                    .headers
                    .iter()
                    // Validated above; a pair that does not parse cannot occur.
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
                    .collect();
                Transport::Grpc { client, metadata }
            }
            Protocol::Http => {
                let mut headers = reqwest::header::HeaderMap::new();
                for (name, value) in &config.headers {
                    if let (Ok(name), Ok(value)) = (
                        reqwest::header::HeaderName::try_from(name.as_str()),
                        reqwest::header::HeaderValue::try_from(value.as_str()),
                    ) {
                        headers.append(name, value);
                    }
                }
                let client = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout)
                    .default_headers(headers)
                    .build()
                    .map_err(LoadgenError::HttpClient)?;
                Transport::Http { client, url }
            }
        };
        Ok(Self {
            transport,
            gzip: config.gzip,
            max_retries: config.max_retries,
            retry_initial: config.retry_initial,
        })
    }

    /// The protobuf encoding of `request`, as [`send`](Self::send) takes it.
    pub fn encode(request: &ExportTraceServiceRequest) -> Bytes {
        Bytes::from(request.encode_to_vec())
    }

    /// Sends `body` (an encoded `ExportTraceServiceRequest`), retrying retryable refusals after
    /// the server's `Retry-After` or an exponential backoff, until the configured number of
    /// retries or until a retry would start after `deadline`.
    pub async fn send(&self, body: Bytes, deadline: Option<Instant>) -> SendOutcome {
        let body = match &self.transport {
            Transport::Http { .. } if self.gzip => gzip(&body),
            _ => body,
        };
        let mut retries = 0;
        loop {
            let (after, error) = match self.attempt(body.clone()).await {
                Attempt::Accepted { rejected_spans } => {
                    return SendOutcome {
                        retries,
                        result: Ok(rejected_spans),
                    }
                }
                Attempt::Failed(error) => {
                    return SendOutcome {
                        retries,
                        result: Err(error),
                    }
                }
                Attempt::Retry { after, error } => (after, error),
            };
            let delay = after
                .unwrap_or_else(|| self.backoff(retries))
                .min(MAX_RETRY_DELAY);
            let resume = Instant::now() + delay;
            if retries >= self.max_retries || deadline.is_some_and(|d| resume >= d) {
                return SendOutcome {
                    retries,
                    result: Err(error),
                };
            }
            tokio::time::sleep_until(resume).await;
            retries += 1;
        }
    }

    /// `retry_initial` doubled per retry, with ±20% jitter so workers do not retry in step.
    fn backoff(&self, retries: u32) -> Duration {
        let base = self.retry_initial.saturating_mul(1 << retries.min(16));
        base.min(MAX_RETRY_DELAY)
            .mul_f64(rand::random_range(0.8..1.2))
    }

    async fn attempt(&self, body: Bytes) -> Attempt {
        match &self.transport {
            Transport::Grpc { client, metadata } => grpc_attempt(client, metadata, body).await,
            Transport::Http { client, url } => {
                let mut request = client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
                if self.gzip {
                    request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
                }
                http_attempt(request.body(body)).await
            }
        }
    }
}

async fn grpc_attempt(
    client: &tonic::client::Grpc<Channel>,
    metadata: &[(AsciiMetadataKey, AsciiMetadataValue)],
    body: Bytes,
) -> Attempt {
    let mut client = client.clone();
    let mut request = tonic::Request::new(body);
    for (key, value) in metadata {
        request.metadata_mut().insert(key.clone(), value.clone());
    }
    let result = match client.ready().await {
        Ok(()) => {
            let path = PathAndQuery::from_static(EXPORT_PATH);
            client.unary(request, path, EncodedRequestCodec).await
        }
        Err(e) => Err(tonic::Status::unavailable(with_causes(
            e.to_string(),
            std::error::Error::source(&e),
        ))),
    };
    match result {
        Ok(response) => Attempt::Accepted {
            rejected_spans: rejected(response.get_ref()),
        },
        Err(status) => {
            let code = status.code();
            let message = with_causes(
                status.message().to_owned(),
                std::error::Error::source(&status),
            );
            let error = SendError::Grpc { code, message };
            if grpc_code_is_retryable(code) {
                Attempt::Retry { after: None, error }
            } else {
                Attempt::Failed(error)
            }
        }
    }
}

async fn http_attempt(request: reqwest::RequestBuilder) -> Attempt {
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            let error =
                SendError::Transport(with_causes(e.to_string(), std::error::Error::source(&e)));
            // No answer: the HTTP counterpart of gRPC's UNAVAILABLE and DEADLINE_EXCEEDED.
            return if e.is_connect() || e.is_timeout() {
                Attempt::Retry { after: None, error }
            } else {
                Attempt::Failed(error)
            };
        }
    };
    let status = response.status().as_u16();
    let after = retry_after(response.headers());
    let body = response.bytes().await.unwrap_or_default();
    if (200..300).contains(&status) {
        let rejected_spans =
            ExportTraceServiceResponse::decode(body).map_or(0, |response| rejected(&response));
        return Attempt::Accepted { rejected_spans };
    }
    let text: String = String::from_utf8_lossy(&body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_BODY)
        .collect();
    let error = SendError::Http {
        status,
        body: text.trim().to_owned(),
    };
    if http_status_is_retryable(status) {
        Attempt::Retry { after, error }
    } else {
        Attempt::Failed(error)
    }
}

fn rejected(response: &ExportTraceServiceResponse) -> u64 {
    response
        .partial_success
        .as_ref()
        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
}

/// `text` and the causes from `source` on, on one line; a cause already said is left out, and
/// so is hyper's and tonic's uninformative "transport error".
fn with_causes(mut text: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) && cause_text != "transport error" {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

fn gzip(body: &[u8]) -> Bytes {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    Bytes::from(encoder.finish().unwrap_or_default())
}
