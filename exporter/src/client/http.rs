//! OTLP/HTTP: protobuf `POST` of the encoded request to `…/v1/traces`, over plain TCP or TLS.
//!
//! Retryable, per the OTLP specification: 429, 502, 503 and 504, and connection errors and
//! timeouts; a `Retry-After`, in seconds or as an HTTP date, is honoured when longer than the
//! backoff. Every other non-2xx status is permanent. Redirects are not followed (a `POST`
//! turned into a `GET` would lose the body), so a 3xx is permanent too. Proxies from the
//! environment are not used: a collector's downstream is configured, not discovered.
//!
//! Why hyper's pooled client with a connector of our own rather than reqwest: TLS then runs
//! through the same rustls configuration and connector as the gRPC exporter (`insecure_skip_verify`,
//! `server_name_override`, the `ring` provider chosen explicitly); reqwest's rustls either wants
//! a process-wide crypto provider, which every other reqwest client in the program then needs
//! too, or builds a second one (aws-lc-rs, a C build).

mod connect;

use std::fmt;
use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;
use flate2::write::GzEncoder;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, USER_AGENT as UA,
};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use url::Url;

use super::error::{error_text, with_causes, Accepted, SendError, MAX_ERROR_BODY};
use super::retry::retry_after;
use super::tls::{self, Scheme};
use super::{ClientConfig, Compression, USER_AGENT};
use crate::export::ExportSetupError;
use connect::Connector;

/// Largest response body read for a partial success; a longer one is ignored (the request
/// still counts as delivered).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Sends encoded requests to one OTLP/HTTP downstream.
pub(crate) struct HttpTransport {
    client: Client<Connector, Full<Bytes>>,
    uri: Uri,
    headers: HeaderMap,
    gzip: bool,
    tls: bool,
    timeout: Duration,
}

impl fmt::Debug for HttpTransport {
    // Header values may be credentials (`authorization`): show the names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("HttpTransport")
            .field("uri", &self.uri)
            .field("headers", &names)
            .field("gzip", &self.gzip)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// Validates the URL, headers and TLS settings and builds the client (no connection yet).
    pub(crate) fn new(name: &str, config: &ClientConfig) -> Result<Self, ExportSetupError> {
        let (endpoint, timeout) = (config.endpoint.as_str(), config.timeout);
        let mut url = traces_url(name, &super::with_scheme(endpoint))?;
        let scheme = if !endpoint.trim().contains("://") {
            Scheme::None
        } else if url.scheme() == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let tls = tls::connector(name, endpoint, scheme, config.tls.as_ref(), &[b"http/1.1"])?;
        if tls.is_some() && url.scheme() != "https" {
            // `host:port` with a tls block: the request line and `Host` say https.
            let _ = url.set_scheme("https");
        }
        let uri: Uri = url
            .as_str()
            .parse()
            .map_err(
                |e: hyper::http::uri::InvalidUri| ExportSetupError::InvalidEndpoint {
                    exporter: name.to_owned(),
                    endpoint: endpoint.to_owned(),
                    reason: e.to_string(),
                },
            )?;
        let is_tls = tls.is_some();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(Connector::new(tls, timeout));
        let mut headers = header_map(name, &config.headers)?;
        headers.insert(UA, HeaderValue::from_static(USER_AGENT));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        let gzip = config.compression == Compression::Gzip;
        if gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        Ok(Self {
            client,
            uri,
            headers,
            gzip,
            tls: is_tls,
            timeout,
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

    /// One `POST`, the response read within the timeout too.
    pub(crate) async fn send(&self, payload: &Bytes) -> Result<Accepted, SendError> {
        let mut request = Request::new(Full::new(payload.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Transport(format!(
                "no response within the timeout ({:?})",
                self.timeout
            ))),
        }
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Accepted, SendError> {
        let response = self.client.request(request).await.map_err(|e| {
            SendError::Transport(with_causes(e.to_string(), std::error::Error::source(&e)))
        })?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let (body, _) = read_body(response.into_body(), MAX_ERROR_BODY * 4).await;
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
        match read_body(response.into_body(), MAX_RESPONSE_BYTES).await {
            (body, true) => Ok(decode_response(&body, json)),
            (_, false) => Ok(Accepted::default()),
        }
    }
}

/// Up to `limit` bytes of `body`, and whether that was all of it (a body that fails midway
/// counts as whole up to there).
async fn read_body(mut body: hyper::body::Incoming, limit: usize) -> (Vec<u8>, bool) {
    let mut bytes = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                let room = limit - bytes.len();
                bytes.extend_from_slice(&data[..room]);
                return (bytes, false);
            }
            bytes.extend_from_slice(&data);
        }
    }
    (bytes, true)
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
