//! OTLP/HTTP: protobuf `POST` of the encoded request to `…/v1/traces`.
//!
//! Retryable, per the OTLP specification: 429, 502, 503 and 504, and connection errors and
//! timeouts; a `Retry-After`, in seconds or as an HTTP date, is honoured when longer than the
//! backoff. TLS to an OTLP/HTTP downstream is not supported yet (refused at setup). Every other non-2xx status is permanent.
//! Redirects are not followed (a `POST` turned into a `GET` would lose the body), so a 3xx is
//! permanent too. Proxies from the environment are not used: a collector's downstream is
//! configured, not discovered.

use std::fmt;
use std::io::Write as _;

use bytes::Bytes;
use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::{Client, Url};

use super::error::{error_text, with_causes, Accepted, SendError, MAX_ERROR_BODY};
use super::retry::retry_after;
use super::tls::{self, Scheme};
use super::{ClientConfig, Compression, USER_AGENT};
use crate::export::ExportSetupError;

/// Largest response body read for a partial success; a longer one is ignored (the request
/// still counts as delivered).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Sends encoded requests to one OTLP/HTTP downstream.
pub(crate) struct HttpTransport {
    client: Client,
    url: Url,
    headers: HeaderMap,
    gzip: bool,
}

impl fmt::Debug for HttpTransport {
    // Header values may be credentials (`authorization`): show the names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("HttpTransport")
            .field("url", &self.url.as_str())
            .field("headers", &names)
            .field("gzip", &self.gzip)
            .finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// Validates the URL and headers and builds the client (no connection yet).
    pub(crate) fn new(name: &str, config: &ClientConfig) -> Result<Self, ExportSetupError> {
        let (endpoint, timeout) = (config.endpoint.as_str(), config.timeout);
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| ExportSetupError::Client {
                exporter: name.to_owned(),
                source: Box::new(e),
            })?;
        let url = traces_url(name, &super::with_scheme(endpoint))?;
        let scheme = if !endpoint.trim().contains("://") {
            Scheme::None
        } else if url.scheme() == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        };
        if tls::wants_tls(name, endpoint, scheme, config.tls.as_ref())? {
            return Err(ExportSetupError::Tls {
                exporter: name.to_owned(),
                reason: format!(
                    "endpoint `{endpoint}`: TLS to an OTLP/HTTP downstream is not supported yet; \
                     use the otlp (gRPC) exporter for TLS, or plain http://"
                ),
            });
        }
        Ok(Self {
            client,
            url,
            headers: header_map(name, &config.headers)?,
            gzip: config.compression == Compression::Gzip,
        })
    }

    /// The body each attempt posts: the request, gzipped once per request when configured.
    /// Level 1 (fast): most of gzip's ratio on OTLP for a fraction of the CPU of the default.
    pub(crate) fn prepare(&self, body: Bytes) -> Result<Bytes, SendError> {
        if !self.gzip {
            return Ok(body);
        }
        let mut gz = GzEncoder::new(
            Vec::with_capacity(body.len() / 4 + 64),
            flate2::Compression::fast(),
        );
        gz.write_all(&body)
            .and_then(|()| gz.finish())
            .map(Bytes::from)
            .map_err(|e| SendError::Request(format!("gzip: {e}")))
    }

    /// One `POST`.
    pub(crate) async fn send(&self, payload: &Bytes) -> Result<Accepted, SendError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .body(payload.clone());
        if self.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        let mut response = request.send().await.map_err(|e| {
            let message = with_causes(e.to_string(), std::error::Error::source(&e));
            if e.is_builder() {
                SendError::Request(message)
            } else {
                SendError::Transport(message)
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let mut body = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                body.extend_from_slice(&chunk);
                if body.len() >= MAX_ERROR_BODY * 4 {
                    break;
                }
            }
            return Err(SendError::Http {
                status: status.as_u16(),
                body: error_text(&body),
                retry_after,
            });
        }
        // The data is taken; a body that cannot be read or decoded only loses the partial
        // success details.
        let json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Ok(Accepted::default());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(decode_response(&body, json))
    }
}

/// The partial success in a response body: protobuf, or OTLP/JSON when the server says so.
fn decode_response(body: &[u8], json: bool) -> Accepted {
    if body.is_empty() {
        Accepted::default()
    } else if json {
        json_partial_success(body).unwrap_or_default()
    } else {
        ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| Accepted::from_partial_success(p.rejected_spans, p.error_message))
            .unwrap_or_default()
    }
}

/// Read by hand rather than with the generated serde types: proto3 JSON writes the int64
/// `rejectedSpans` as a string (as the Go Collector does), which those types do not accept.
fn json_partial_success(body: &[u8]) -> Option<Accepted> {
    use serde_json::Value;
    let value: Value = serde_json::from_slice(body).ok()?;
    let field =
        |v: &'_ Value, camel: &str, snake: &str| v.get(camel).or_else(|| v.get(snake)).cloned();
    let partial = field(&value, "partialSuccess", "partial_success")?;
    let rejected = match field(&partial, "rejectedSpans", "rejected_spans") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    };
    let message = match field(&partial, "errorMessage", "error_message") {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    Some(Accepted::from_partial_success(rejected, message))
}

/// The endpoint as a URL, `/v1/traces` appended when it has no path; `http` or `https`.
pub(crate) fn traces_url(name: &str, endpoint: &str) -> Result<Url, ExportSetupError> {
    let invalid = |reason: String| ExportSetupError::InvalidEndpoint {
        exporter: name.to_owned(),
        endpoint: endpoint.to_owned(),
        reason,
    };
    let mut url = Url::parse(endpoint.trim()).map_err(|e| invalid(e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(invalid(format!("scheme `{other}` is not http or https"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".to_owned()));
    }
    super::append_traces_path(&mut url);
    Ok(url)
}

/// The configured headers, values marked sensitive (kept out of debug output).
fn header_map(name: &str, headers: &[(String, String)]) -> Result<HeaderMap, ExportSetupError> {
    let mut map = HeaderMap::new();
    for (key, value) in headers {
        let invalid = |reason: &str| ExportSetupError::InvalidHeader {
            exporter: name.to_owned(),
            header: key.clone(),
            reason: reason.to_owned(),
        };
        let k = HeaderName::from_bytes(key.as_bytes()).map_err(|_| invalid("not a header name"))?;
        let mut v = HeaderValue::from_str(value).map_err(|_| invalid("not a header value"))?;
        v.set_sensitive(true);
        map.append(k, v);
    }
    Ok(map)
}

#[cfg(test)]
mod tests;
