//! OTLP/HTTP: `POST /v1/traces` with a protobuf or JSON `ExportTraceServiceRequest`.
//!
//! Errors follow the OTLP/HTTP specification: the status code says whether to retry (503 with
//! `Retry-After` yes; 400, 401, 413, 415 no), and the body is a `google.rpc.Status` in the
//! request's own encoding, so a client can log why without understanding the other one.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tonic::Code;

#[cfg(test)]
use super::body::gunzip;
use super::body::{decode_bounded, BodyError, BoundedBody, GunzipError};
use super::server::{retry_after_secs, Shared, BUSY_RETRY_AFTER};
use crate::Refused;
use traceq_exporter::otlp::{
    decode_json_request, decode_request, decode_request_for_routing, DecodeError, OtlpSpan,
};

const TRACES_PATH: &str = "/v1/traces";
const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// Why an OTLP/HTTP request body was not a valid export request. [`HttpRejection::status`] is
/// the HTTP status the receiver answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(super) enum HttpRejection {
    /// `content-type` is neither `application/x-protobuf` nor `application/json` (415).
    #[error("unsupported content type `{content_type}`: use {PROTOBUF} or {JSON}")]
    UnsupportedContentType {
        /// The header as sent (empty when absent).
        content_type: String,
    },
    /// `content-encoding` is neither `gzip` nor `identity` (415).
    #[error("unsupported content encoding `{encoding}`: use gzip or identity")]
    UnsupportedEncoding {
        /// The header as sent.
        encoding: String,
    },
    /// The body, as sent or once inflated, is larger than the limit (413).
    #[error("request body larger than the {limit}-byte limit")]
    TooLarge {
        /// The receiver's `max_request_bytes`.
        limit: usize,
    },
    /// The body is not valid gzip (400).
    #[error("invalid gzip body: {0}")]
    Gzip(String),
    /// The body is not a valid `ExportTraceServiceRequest` (400).
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl HttpRejection {
    /// The HTTP status answered for this rejection.
    #[must_use]
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedContentType { .. } | Self::UnsupportedEncoding { .. } => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Gzip(_) | Self::Decode(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC code in the `google.rpc.Status` body answered for this rejection.
    #[must_use]
    pub(super) fn grpc_code(&self) -> Code {
        match self {
            Self::UnsupportedContentType { .. } | Self::UnsupportedEncoding { .. } => {
                Code::Unimplemented
            }
            Self::TooLarge { .. } => Code::ResourceExhausted,
            Self::Gzip(_) | Self::Decode(_) => Code::InvalidArgument,
        }
    }
}

/// The encoding of a request body, and of the response to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
}

/// Decodes an OTLP/HTTP request body: inflates it when `content_encoding` is gzip, then splits
/// it into spans as protobuf or JSON according to `content_type` (parameters such as
/// `; charset=utf-8` are ignored). Pure and panic-free whatever the input: this is the
/// receiver's whole decode path, without the network.
///
/// `max_request_bytes` bounds the body both as sent and once inflated.
///
/// # Errors
///
/// [`HttpRejection`], whose [`status`](HttpRejection::status) is the status to answer with.
#[cfg(test)]
pub(crate) fn decode_http_body(
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    max_request_bytes: usize,
) -> Result<Vec<OtlpSpan>, HttpRejection> {
    let format = format_of(content_type)?;
    let encoding = encoding_of(content_encoding)?;
    decode_body(body, format, encoding, max_request_bytes)
}

fn format_of(content_type: Option<&str>) -> Result<Format, HttpRejection> {
    let media = content_type
        .and_then(|ct| ct.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if media.eq_ignore_ascii_case(PROTOBUF) {
        Ok(Format::Protobuf)
    } else if media.eq_ignore_ascii_case(JSON) {
        Ok(Format::Json)
    } else {
        Err(HttpRejection::UnsupportedContentType {
            content_type: content_type.unwrap_or_default().chars().take(100).collect(),
        })
    }
}

fn encoding_of(content_encoding: Option<&str>) -> Result<Encoding, HttpRejection> {
    match content_encoding.map(str::trim) {
        None | Some("") => Ok(Encoding::Identity),
        Some(e) if e.eq_ignore_ascii_case("identity") => Ok(Encoding::Identity),
        Some(e) if e.eq_ignore_ascii_case("gzip") => Ok(Encoding::Gzip),
        Some(e) => Err(HttpRejection::UnsupportedEncoding {
            encoding: e.chars().take(100).collect(),
        }),
    }
}

#[cfg(test)]
fn decode_body(
    body: &[u8],
    format: Format,
    encoding: Encoding,
    max: usize,
) -> Result<Vec<OtlpSpan>, HttpRejection> {
    if body.len() > max {
        return Err(HttpRejection::TooLarge { limit: max });
    }
    match encoding {
        Encoding::Identity => decode_payload(body, format),
        Encoding::Gzip => {
            let inflated = gunzip(body, max).map_err(|e| gunzip_rejection(e, max))?;
            decode_payload(&inflated, format)
        }
    }
}

fn decode_payload(payload: &[u8], format: Format) -> Result<Vec<OtlpSpan>, HttpRejection> {
    Ok(match format {
        Format::Protobuf => decode_request(payload)?,
        Format::Json => decode_json_request(payload)?,
    })
}

fn gunzip_rejection(e: GunzipError, limit: usize) -> HttpRejection {
    match e {
        GunzipError::TooLarge => HttpRejection::TooLarge { limit },
        GunzipError::Invalid(why) => HttpRejection::Gzip(why),
    }
}

/// The HTTP receiver's routes.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(TRACES_PATH, post(export))
        .method_not_allowed_fallback(wrong_method)
        .fallback(not_found)
        .with_state(shared)
}

fn header(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The encoding of error responses: the request's, or JSON when it has none we speak.
fn reply_format(headers: &HeaderMap) -> Format {
    format_of(header(headers, CONTENT_TYPE)).unwrap_or(Format::Json)
}

async fn export(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    match handle(&shared, &headers, body).await {
        Ok(format) => {
            let body = match format {
                Format::Protobuf => Vec::new(),
                Format::Json => b"{}".to_vec(),
            };
            with_content_type(format, (StatusCode::OK, body).into_response())
        }
        Err(reply) => reply,
    }
}

async fn handle(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<Format, Response> {
    let reply = reply_format(headers);
    let reject = |status: StatusCode, code: Code, message: &str| {
        shared.rejected();
        status_response(reply, status, code, message)
    };
    let reject_with = |r: HttpRejection| reject(r.status(), r.grpc_code(), &r.to_string());
    if !shared.authorized(headers) {
        let mut response = reject(
            StatusCode::UNAUTHORIZED,
            Code::Unauthenticated,
            "missing or wrong bearer token",
        );
        let challenge = HeaderValue::from_static("Bearer");
        response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        return Err(response);
    }
    let format = format_of(header(headers, CONTENT_TYPE)).map_err(reject_with)?;
    let encoding = encoding_of(header(headers, CONTENT_ENCODING)).map_err(reject_with)?;
    let Some(_permit) = shared.admit() else {
        let busy = "too many requests in flight, retry later";
        return Err(unavailable(format, busy, Some(BUSY_RETRY_AFTER)));
    };
    let max = shared.max_request_bytes;
    let body_error = |e: BodyError| match e {
        BodyError::TooLarge => reject_with(HttpRejection::TooLarge { limit: max }),
        BodyError::TimedOut => reject(
            StatusCode::REQUEST_TIMEOUT,
            Code::DeadlineExceeded,
            "timed out reading the request body",
        ),
        BodyError::Failed(why) => reject(StatusCode::BAD_REQUEST, Code::Cancelled, &why),
        BodyError::Stopped => {
            shared.refused_unread();
            unavailable(reply, &Refused::ShuttingDown.to_string(), None)
        }
        BodyError::Busy => {
            shared.refused_unread();
            let busy = "too many request bytes in flight, retry later";
            unavailable(reply, busy, Some(BUSY_RETRY_AFTER))
        }
    };
    let reader = BoundedBody::new(body, max, &shared.hard_stop).map_err(body_error)?;
    let (bytes, _reading) = reader.read_to_end().await.map_err(body_error)?;
    let routing = shared.routes_only();
    let decoded = decode_bounded(
        bytes,
        0,
        encoding == Encoding::Gzip,
        max,
        move |payload| match (format, routing) {
            (Format::Protobuf, true) => Ok(decode_request_for_routing(payload)?),
            _ => decode_payload(payload, format),
        },
        move |e| Err(gunzip_rejection(e, max)),
    )
    .await;
    let spans = match decoded {
        None => {
            let why = "the request could not be decoded";
            return Err(reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Internal,
                why,
            ));
        }
        Some(result) => result.map_err(reject_with)?,
    };
    shared.offer(spans).await.map_err(|refused| {
        let retry_after = match refused {
            Refused::Full { retry_after } => Some(retry_after),
            _ => None,
        };
        unavailable(format, &refused.to_string(), retry_after)
    })?;
    Ok(format)
}

async fn not_found(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    shared.rejected();
    let message = format!("not found: OTLP/HTTP traces are posted to {TRACES_PATH}");
    status_response(
        reply_format(&headers),
        StatusCode::NOT_FOUND,
        Code::NotFound,
        &message,
    )
}

async fn wrong_method(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    shared.rejected();
    let format = reply_format(&headers);
    let message = "method not allowed: use POST";
    let mut response = status_response(
        format,
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unimplemented,
        message,
    );
    response
        .headers_mut()
        .insert(axum::http::header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// A retryable refusal: 503 (`UNAVAILABLE`), with `Retry-After` when a delay is suggested.
fn unavailable(format: Format, message: &str, retry_after: Option<Duration>) -> Response {
    let mut response = status_response(
        format,
        StatusCode::SERVICE_UNAVAILABLE,
        Code::Unavailable,
        message,
    );
    if let Some(delay) = retry_after {
        let secs = HeaderValue::from(retry_after_secs(delay));
        response.headers_mut().insert(RETRY_AFTER, secs);
    }
    response
}

/// An error response whose body is a `google.rpc.Status` (`code`, `message`) in `format`.
fn status_response(format: Format, status: StatusCode, code: Code, message: &str) -> Response {
    let code = i32::from(code);
    let body = match format {
        Format::Json => serde_json::json!({ "code": code, "message": message })
            .to_string()
            .into_bytes(),
        Format::Protobuf => {
            let mut buf = Vec::with_capacity(message.len() + 16);
            prost::encoding::int32::encode(1, &code, &mut buf);
            prost::encoding::string::encode(2, &message.to_owned(), &mut buf);
            buf
        }
    };
    with_content_type(format, (status, body).into_response())
}

fn with_content_type(format: Format, mut response: Response) -> Response {
    let ct = match format {
        Format::Protobuf => PROTOBUF,
        Format::Json => JSON,
    };
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    response
}

#[cfg(test)]
mod tests;
