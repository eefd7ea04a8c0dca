//! OTLP/gRPC: a hand-rolled unary `TraceService/Export` handler on axum.
//!
//! Why not a tonic server: tonic would decode the request into owned prost structs before we see
//! it, while the collector keeps spans encoded ([`decode_request`] walks the bytes once); and
//! tonic answers an oversized message with `OUT_OF_RANGE` where OTLP clients expect the
//! retry-free `RESOURCE_EXHAUSTED`. A unary gRPC call is small enough to serve by hand: one
//! length-prefixed message in, one empty message and a `grpc-status` trailer out, or a
//! "trailers-only" response carrying the error.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tonic::Code;

#[cfg(test)]
use super::body::gunzip;
use super::body::{decode_bounded, BodyError, BoundedBody, GunzipError};
use super::server::{Shared, BUSY_RETRY_AFTER};
use crate::Refused;
use traceq_exporter::otlp::grpc::EXPORT_PATH;
#[cfg(test)]
use traceq_exporter::otlp::OtlpSpan;
use traceq_exporter::otlp::{decode_request, decode_request_for_routing, DecodeError};

/// Compressed flag (1 byte) and big-endian message length (4 bytes).
const HEADER_LEN: usize = 5;
/// An empty `ExportTraceServiceResponse`, framed: uncompressed, zero length.
const EMPTY_RESPONSE: [u8; HEADER_LEN] = [0; HEADER_LEN];
const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";
const GRPC_ENCODING: &str = "grpc-encoding";
const GRPC_ACCEPT_ENCODING: &str = "grpc-accept-encoding";
const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// Why a gRPC request body was not a valid export request. [`GrpcRejection::code`] is the status
/// the receiver answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(super) enum GrpcRejection {
    /// The message, as declared, as sent or once inflated, is larger than the limit
    /// (`RESOURCE_EXHAUSTED`: clients do not retry it).
    #[error("message larger than the {limit}-byte limit")]
    TooLarge {
        /// The receiver's `max_request_bytes`.
        limit: usize,
    },
    /// The message is compressed with an encoding other than gzip, or claims compression without
    /// naming an encoding (`UNIMPLEMENTED`).
    #[error("message compression `{encoding}` is not supported; use gzip")]
    UnsupportedEncoding {
        /// The `grpc-encoding` header, or `identity` when absent.
        encoding: String,
    },
    /// The body is not exactly one length-prefixed message, or its gzip is corrupt
    /// (`INVALID_ARGUMENT`).
    #[error("malformed gRPC message: {0}")]
    Malformed(String),
    /// The message is not a valid `ExportTraceServiceRequest` (`INVALID_ARGUMENT`).
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl GrpcRejection {
    /// The gRPC status code answered for this rejection.
    #[must_use]
    pub(super) fn code(&self) -> Code {
        match self {
            Self::TooLarge { .. } => Code::ResourceExhausted,
            Self::UnsupportedEncoding { .. } => Code::Unimplemented,
            Self::Malformed(_) | Self::Decode(_) => Code::InvalidArgument,
        }
    }
}

/// Decodes the body of a unary gRPC `TraceService/Export` call: one length-prefixed message (1
/// byte compressed flag, 4 bytes big-endian length, payload), gzip-inflated when flagged, then
/// split into spans by [`decode_request`]. Pure and panic-free whatever the input: this is the
/// receiver's whole decode path, without the network.
///
/// `grpc_encoding` is the request's `grpc-encoding` header; `max_request_bytes` bounds the
/// message both as sent and once inflated.
///
/// The handler runs the same steps, with the inflate and decode bounded by `decode_bounded`.
///
/// # Errors
///
/// [`GrpcRejection`], whose [`code`](GrpcRejection::code) is the status to answer with.
#[cfg(test)]
pub(super) fn decode_grpc_body(
    body: &[u8],
    grpc_encoding: Option<&str>,
    max_request_bytes: usize,
) -> Result<Vec<OtlpSpan>, GrpcRejection> {
    let gzip = grpc_frame(body, grpc_encoding, max_request_bytes)?;
    let payload = &body[HEADER_LEN..];
    if gzip {
        let inflated = gunzip(payload, max_request_bytes)
            .map_err(|e| gunzip_rejection(e, max_request_bytes))?;
        Ok(decode_request(&inflated)?)
    } else {
        Ok(decode_request(payload)?)
    }
}

/// Checks the framing of a unary gRPC request body: exactly one message of at most
/// `max_request_bytes` after the 5-byte header. Returns whether the message is gzip-compressed.
fn grpc_frame(
    body: &[u8],
    grpc_encoding: Option<&str>,
    max_request_bytes: usize,
) -> Result<bool, GrpcRejection> {
    let Some((&flag, rest)) = body.split_first() else {
        return Err(GrpcRejection::Malformed("no message in the request".into()));
    };
    let Some((len, payload)) = rest.split_first_chunk::<4>() else {
        return Err(GrpcRejection::Malformed(format!(
            "a {}-byte body is shorter than a message header",
            body.len()
        )));
    };
    let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
    if len > max_request_bytes {
        return Err(GrpcRejection::TooLarge {
            limit: max_request_bytes,
        });
    }
    if payload.len() < len {
        return Err(GrpcRejection::Malformed(format!(
            "message truncated: {} of {len} bytes",
            payload.len()
        )));
    }
    if payload.len() > len {
        return Err(GrpcRejection::Malformed(
            "more than one message in a unary request".into(),
        ));
    }
    match flag {
        0 => Ok(false),
        1 => match grpc_encoding.map(str::trim) {
            Some(e) if e.eq_ignore_ascii_case("gzip") => Ok(true),
            other => Err(GrpcRejection::UnsupportedEncoding {
                encoding: other.unwrap_or("identity").chars().take(64).collect(),
            }),
        },
        other => Err(GrpcRejection::Malformed(format!(
            "unknown compressed flag {other}"
        ))),
    }
}

fn gunzip_rejection(e: GunzipError, limit: usize) -> GrpcRejection {
    match e {
        GunzipError::TooLarge => GrpcRejection::TooLarge { limit },
        GunzipError::Invalid(why) => GrpcRejection::Malformed(format!("gzip: {why}")),
    }
}

/// The gRPC receiver's routes.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(EXPORT_PATH, post(export))
        .method_not_allowed_fallback(wrong_method)
        .fallback(unknown_method)
        .with_state(shared)
}

async fn export(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    match handle(&shared, &headers, body).await {
        Ok(()) => ok_response(),
        Err(reply) => reply,
    }
}

async fn handle(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<(), Response> {
    let reject = |code: Code, message: &str| {
        shared.rejected();
        status_response(code, message, None)
    };
    if !is_grpc(headers.get(CONTENT_TYPE)) {
        shared.rejected();
        let message = "content-type must be application/grpc";
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, message).into_response());
    }
    if !shared.authorized(headers) {
        return Err(reject(
            Code::Unauthenticated,
            "missing or wrong bearer token",
        ));
    }
    let Some(_permit) = shared.admit() else {
        let busy = "too many requests in flight, retry later";
        return Err(status_response(
            Code::Unavailable,
            busy,
            Some(BUSY_RETRY_AFTER),
        ));
    };
    let max = shared.max_request_bytes;
    let body_error = |e: BodyError| match e {
        BodyError::TooLarge => reject(Code::ResourceExhausted, &too_large(max)),
        BodyError::TimedOut => reject(Code::DeadlineExceeded, "timed out reading the request"),
        BodyError::Failed(why) => reject(Code::Cancelled, &why),
        BodyError::Stopped => {
            shared.refused_unread();
            status_response(Code::Unavailable, "the collector is shutting down", None)
        }
        BodyError::Busy => {
            shared.refused_unread();
            let busy = "too many request bytes in flight, retry later";
            status_response(Code::Unavailable, busy, Some(BUSY_RETRY_AFTER))
        }
    };
    let limit = max.saturating_add(HEADER_LEN);
    let mut reader = BoundedBody::new(body, limit, &shared.hard_stop).map_err(body_error)?;
    // Refuse an oversized message on its header, before buffering its payload.
    let head = reader.fill(HEADER_LEN).await.map_err(body_error)?;
    if let Some(len) = head.split_first().and_then(|(_, r)| r.first_chunk::<4>()) {
        if u64::from(u32::from_be_bytes(*len)) > max as u64 {
            return Err(reject(Code::ResourceExhausted, &too_large(max)));
        }
    }
    let (bytes, _reading) = reader.read_to_end().await.map_err(body_error)?;
    let encoding = headers.get(GRPC_ENCODING).and_then(|v| v.to_str().ok());
    let gzip = grpc_frame(&bytes, encoding, max)
        .map_err(|rejection| reject(rejection.code(), &rejection.to_string()))?;
    let decode = if shared.routes_only() {
        decode_request_for_routing
    } else {
        decode_request
    };
    let decoded = decode_bounded(
        bytes,
        HEADER_LEN,
        gzip,
        max,
        move |payload| decode(payload).map_err(GrpcRejection::from),
        move |e| Err(gunzip_rejection(e, max)),
    )
    .await;
    let spans = match decoded {
        None => return Err(reject(Code::Internal, "the request could not be decoded")),
        Some(Err(rejection)) => return Err(reject(rejection.code(), &rejection.to_string())),
        Some(Ok(spans)) => spans,
    };
    shared.offer(spans).await.map_err(|refused| {
        let pushback = match refused {
            Refused::Full { retry_after } => Some(retry_after),
            _ => None,
        };
        status_response(Code::Unavailable, &refused.to_string(), pushback)
    })
}

fn too_large(max: usize) -> String {
    GrpcRejection::TooLarge { limit: max }.to_string()
}

async fn unknown_method(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    shared.rejected();
    let path: String = uri.path().chars().take(200).collect();
    status_response(Code::Unimplemented, &format!("unknown method {path}"), None)
}

async fn wrong_method(State(shared): State<Arc<Shared>>) -> Response {
    shared.rejected();
    (
        StatusCode::METHOD_NOT_ALLOWED,
        "gRPC calls are POST requests",
    )
        .into_response()
}

/// `application/grpc`, `application/grpc+proto`, with or without parameters.
fn is_grpc(content_type: Option<&HeaderValue>) -> bool {
    let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = ct.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("application/grpc")
        || media.eq_ignore_ascii_case("application/grpc+proto")
}

fn ok_response() -> Response {
    let mut trailers = HeaderMap::new();
    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(&EMPTY_RESPONSE))
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut response = Response::new(Body::new(body));
    grpc_headers(response.headers_mut());
    response
}

/// A "trailers-only" response: the status in the headers, no body.
fn status_response(code: Code, message: &str, pushback: Option<Duration>) -> Response {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    grpc_headers(headers);
    headers.insert(GRPC_STATUS, HeaderValue::from(i32::from(code)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(GRPC_MESSAGE, v);
    }
    if let Some(p) = pushback {
        let ms = u64::try_from(p.as_millis()).unwrap_or(u64::MAX);
        headers.insert(GRPC_RETRY_PUSHBACK_MS, HeaderValue::from(ms));
    }
    response
}

fn grpc_headers(headers: &mut HeaderMap) {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
}

/// `grpc-message` encoding: printable ASCII but `%` as is, every other byte as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
