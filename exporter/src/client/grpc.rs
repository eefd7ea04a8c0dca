//! OTLP/gRPC: `TraceService/Export` over a lazily connected tonic channel.
//!
//! Why a pass-through codec: the pipeline hands over the protobuf encoding of an
//! `ExportTraceServiceRequest` already, shared by every exporter. Decoding it into prost structs
//! only for tonic to encode them again would cost a copy of every span and the CPU of both
//! directions, so the request bytes go out as they are and only the (small) response is decoded.
//!
//! Connection failures and timeouts, which tonic reports as `UNAVAILABLE`, `CANCELLED`, or
//! `UNKNOWN` carrying a transport error, read as [`SendError::Transport`]; every other status is
//! classified by its code (see [`super::retry`]). `RESOURCE_EXHAUSTED` is retryable by the
//! specification only when the server attaches a `google.rpc.RetryInfo`: then it is retried
//! after that delay (at least the backoff, at most `MAX_RETRY_AFTER`); without one the
//! exporters split the request as too large.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use tonic::client::Grpc;
use tonic::codec::CompressionEncoding;
use tonic::codegen::http::uri::{PathAndQuery, Uri};
use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::error::{with_causes, Accepted, SendError};
use super::retry::grpc_retry_info;
use super::tls::{self, Scheme};
use super::{ClientConfig, Compression, USER_AGENT};
use crate::export::ExportSetupError;
use crate::otlp::grpc::{EncodedRequestCodec, EXPORT_PATH};

/// Sends encoded requests to one OTLP/gRPC downstream.
pub(crate) struct GrpcTransport {
    client: Grpc<Channel>,
    metadata: MetadataMap,
    timeout: Duration,
}

impl fmt::Debug for GrpcTransport {
    // Header values may be credentials (`authorization`): show the names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self
            .metadata
            .keys()
            .map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => k.as_str(),
                tonic::metadata::KeyRef::Binary(k) => k.as_str(),
            })
            .collect();
        f.debug_struct("GrpcTransport")
            .field("headers", &names)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl GrpcTransport {
    /// Validates the endpoint, headers and TLS files and makes a lazy channel (no connection
    /// yet).
    pub(crate) fn new(name: &str, config: &ClientConfig) -> Result<Self, ExportSetupError> {
        let (endpoint, timeout) = (config.endpoint.as_str(), config.timeout);
        let (uri, scheme) = endpoint_uri(name, endpoint)?;
        let invalid = |reason: String| ExportSetupError::InvalidEndpoint {
            exporter: name.to_owned(),
            endpoint: endpoint.to_owned(),
            reason,
        };
        let connector = tls::connector(name, endpoint, scheme, config.tls.as_ref(), &[b"h2"])?;
        let endpoint = Endpoint::from(uri)
            .user_agent(USER_AGENT)
            .map_err(|e| invalid(e.to_string()))?
            .timeout(timeout)
            .connect_timeout(timeout)
            .tcp_nodelay(true);
        let channel = match connector {
            Some(connector) => endpoint.connect_with_connector_lazy(connector),
            None => endpoint.connect_lazy(),
        };
        let mut client = Grpc::new(channel).accept_compressed(CompressionEncoding::Gzip);
        if config.compression == Compression::Gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(Self {
            client,
            metadata: metadata(name, &config.headers)?,
            timeout,
        })
    }

    /// One `Export` call.
    pub(crate) async fn send(&self, payload: &Bytes) -> Result<Accepted, SendError> {
        let mut client = self.client.clone();
        client.ready().await.map_err(|e| {
            SendError::Transport(with_causes(
                format!("grpc connection: {e}"),
                std::error::Error::source(&e),
            ))
        })?;
        let mut request = tonic::Request::new(payload.clone());
        *request.metadata_mut() = self.metadata.clone();
        request.set_timeout(self.timeout);
        let path = PathAndQuery::from_static(EXPORT_PATH);
        match client.unary(request, path, EncodedRequestCodec).await {
            Ok(response) => Ok(match response.into_inner().partial_success {
                Some(p) => Accepted::from_partial_success(p.rejected_spans, p.error_message),
                None => Accepted::default(),
            }),
            Err(status) => Err(classify(&status)),
        }
    }
}

/// `host:port`, `http://host:port` or `https://host:port` as a URI, and how it was written.
///
/// The URI handed to tonic is always `http://`, with the port made explicit (443 for
/// `https://` without one): TLS is the connector's business, and tonic, when built with its
/// own TLS, would refuse an `https` URI it has no TLS configuration for.
fn endpoint_uri(name: &str, endpoint: &str) -> Result<(Uri, Scheme), ExportSetupError> {
    let invalid = |reason: &str| ExportSetupError::InvalidEndpoint {
        exporter: name.to_owned(),
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let written = if endpoint.trim().contains("://") {
        None
    } else {
        Some(Scheme::None)
    };
    let uri: Uri = super::with_scheme(endpoint)
        .parse()
        .map_err(|e: tonic::codegen::http::uri::InvalidUri| invalid(&e.to_string()))?;
    let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http") => written.unwrap_or(Scheme::Http),
        Some("https") => Scheme::Https,
        _ => {
            return Err(invalid(
                "the scheme must be http or https (or none: `host:port`)",
            ))
        }
    };
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        return Err(invalid("no host"));
    };
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == Scheme::Https { 443 } else { 80 });
    let plain: Uri = format!("http://{host}:{port}")
        .parse()
        .map_err(|e: tonic::codegen::http::uri::InvalidUri| invalid(&e.to_string()))?;
    Ok((plain, scheme))
}

/// The configured headers as gRPC metadata (ASCII values; names lower-cased).
fn metadata(name: &str, headers: &[(String, String)]) -> Result<MetadataMap, ExportSetupError> {
    let mut map = MetadataMap::new();
    for (key, value) in headers {
        let invalid = |reason: &str| ExportSetupError::InvalidHeader {
            exporter: name.to_owned(),
            header: key.clone(),
            reason: reason.to_owned(),
        };
        let k = MetadataKey::<Ascii>::from_bytes(key.to_ascii_lowercase().as_bytes()).map_err(
            |_| invalid("not a valid ASCII metadata name (`-bin` keys are unsupported)"),
        )?;
        let v = MetadataValue::<Ascii>::try_from(value.as_str())
            .map_err(|_| invalid("the value must be visible ASCII"))?;
        map.append(k, v);
    }
    Ok(map)
}

/// A failed call as a [`SendError`]: a status the server sent has no source; one tonic made
/// from a transport error does, and means no answer.
fn classify(status: &Status) -> SendError {
    let source = std::error::Error::source(status);
    let message = with_causes(status.message().to_owned(), source);
    match status.code() {
        Code::Unknown if source.is_some() => SendError::Transport(message),
        code => SendError::Grpc {
            code,
            message,
            retry_after: grpc_retry_info(status.details()),
        },
    }
}

#[cfg(test)]
mod tests;
