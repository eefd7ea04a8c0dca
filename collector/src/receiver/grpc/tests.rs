use std::time::Duration;

use axum::http::{self, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;
use tonic::client::GrpcService;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};

use super::*;
use crate::receiver::testing::{
    bounded, config, encoded, gzip, request, trace_ids, Running, TestSink,
};
use crate::receiver::Protocol;

async fn client(r: &Running) -> TraceServiceClient<Channel> {
    TraceServiceClient::connect(r.url())
        .await
        .expect("connects")
}

fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

struct RawResponse {
    status: http::StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl RawResponse {
    /// `grpc-status`, from the trailers or (trailers-only) the headers.
    fn grpc_status(&self) -> Option<i32> {
        let from = |h: &HeaderMap| h.get(GRPC_STATUS)?.to_str().ok()?.parse().ok();
        self.trailers
            .as_ref()
            .and_then(from)
            .or_else(|| from(&self.headers))
    }
}

/// Sends one request over HTTP/2 exactly as given, bypassing tonic's framing.
async fn raw(r: &Running, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> RawResponse {
    let body = tonic::body::Body::new(Full::new(Bytes::from(body)));
    raw_body(r, path, headers, body).await
}

async fn raw_body(
    r: &Running,
    path: &str,
    headers: &[(&str, &str)],
    body: tonic::body::Body,
) -> RawResponse {
    let mut channel = Endpoint::from_shared(r.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(format!("{}{path}", r.url()))
        .header("te", "trailers");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(body).unwrap();
    std::future::poll_fn(|cx| GrpcService::poll_ready(&mut channel, cx))
        .await
        .unwrap();
    let response = GrpcService::call(&mut channel, request).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    RawResponse {
        status: parts.status,
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    }
}

const GRPC: (&str, &str) = ("content-type", "application/grpc");

#[tokio::test]
async fn export_should_offer_every_span_and_answer_ok() {
    bounded(async {
        let r = Running::start(Protocol::Grpc, &config(1 << 20), TestSink::accepting()).await;
        client(&r).await.export(request(3, 10)).await.unwrap();
        assert_eq!(r.sink.trace_ids(), trace_ids(3));
        assert_eq!(r.counts(), (1, 3, 0, 0, 0));
    })
    .await;
}

#[tokio::test]
async fn export_should_answer_with_one_empty_message_and_status_zero_trailer() {
    bounded(async {
        let r = Running::start(Protocol::Grpc, &config(1 << 20), TestSink::accepting()).await;
        let resp = raw(&r, EXPORT_PATH, &[GRPC], frame(0, &encoded(1, 1))).await;
        assert_eq!(resp.status, http::StatusCode::OK);
        assert_eq!(resp.headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(&resp.body[..], &EMPTY_RESPONSE);
        assert_eq!(resp.trailers.unwrap()[GRPC_STATUS], "0");
    })
    .await;
}

#[tokio::test]
async fn export_should_inflate_a_gzip_message() {
    bounded(async {
        let r = Running::start(Protocol::Grpc, &config(1 << 20), TestSink::accepting()).await;
        let mut c = client(&r).await.send_compressed(CompressionEncoding::Gzip);
        c.export(request(5, 100)).await.unwrap();
        assert_eq!(r.sink.trace_ids(), trace_ids(5));
    })
    .await;
}

#[tokio::test]
async fn oversized_message_should_be_resource_exhausted() {
    bounded(async {
        let r = Running::start(Protocol::Grpc, &config(200), TestSink::accepting()).await;
        let err = client(&r).await.export(request(10, 50)).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("200-byte limit"), "{err:?}");
        assert!(r.sink.trace_ids().is_empty());
        assert_eq!(r.counts(), (0, 0, 0, 0, 1));
    })
    .await;
}

#[tokio::test]
async fn oversized_message_should_be_refused_on_its_header_before_the_payload_arrives() {
    bounded(async {
        let r = Running::start(Protocol::Grpc, &config(1000), TestSink::accepting()).await;
        let header = Bytes::from_static(&[0, 0, 0, 0x10, 0]);
        let chunks = futures::stream::iter([Ok::<_, std::convert::Infallible>(header)])
            .chain(futures::stream::pending());
        let body = tonic::body::Body::new(Body::from_stream(chunks));
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            raw_body(&r, EXPORT_PATH, &[GRPC], body),
        )
        .await
        .expect("answered without waiting for the payload");
        assert_eq!(resp.grpc_status(), Some(i32::from(Code::ResourceExhausted)));
    })
    .await;
}

#[tokio::test]
async fn gzip_message_inflating_past_the_limit_should_be_resource_exhausted() {
    bounded(async {
        let max = 2000;
        let r = Running::start(Protocol::Grpc, &config(max), TestSink::accepting()).await;
        let big = request(20, 500);
        assert!(gzip(&prost::Message::encode_to_vec(&big)).len() < max);
        let mut c = client(&r).await.send_compressed(CompressionEncoding::Gzip);
        let err = c.export(big).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(r.sink.trace_ids().is_empty());
    })
    .await;
}

#[tokio::test]
async fn garbage_should_be_invalid_argument_and_the_server_should_keep_serving() {
    bounded(async {
        let r = Running::start(Protocol::Grpc, &config(1 << 20), TestSink::accepting()).await;
        let resp = raw(&r, EXPORT_PATH, &[GRPC], frame(0, b"\x0a\xff\x01garbage")).await;
        assert_eq!(resp.grpc_status(), Some(i32::from(Code::InvalidArgument)));
        assert!(resp.body.is_empty(), "a trailers-only response has no body");
        let message = resp.headers[GRPC_MESSAGE].to_str().unwrap().to_owned();
        assert!(message.contains("invalid OTLP trace request"), "{message}");
        let resp = raw(&r, EXPORT_PATH, &[GRPC], vec![9, 0, 0, 0, 0]).await;
        assert_eq!(resp.grpc_status(), Some(i32::from(Code::InvalidArgument)));
        // Not even HTTP/2: the connection fails, the server does not.
        let mut tcp = tokio::net::TcpStream::connect(r.receiver.local_addr())
            .await
            .unwrap();
        tcp.write_all(b"\x16\x03\x01 certainly not a preface\r\n\r\n")
            .await
            .unwrap();
        drop(tcp);
        client(&r).await.export(request(2, 1)).await.unwrap();
        assert_eq!(r.sink.trace_ids(), trace_ids(2));
        assert_eq!(r.counts().4, 2);
    })
    .await;
}

#[tokio::test]
async fn compressed_message_without_gzip_encoding_should_be_unimplemented() {
    bounded(async {
        let r = Running::start(Protocol::Grpc, &config(1 << 20), TestSink::accepting()).await;
        let body = frame(1, &gzip(&encoded(1, 1)));
        let resp = raw(&r, EXPORT_PATH, &[GRPC], body.clone()).await;
        assert_eq!(resp.grpc_status(), Some(i32::from(Code::Unimplemented)));
        let resp = raw(&r, EXPORT_PATH, &[GRPC, ("grpc-encoding", "snappy")], body).await;
        assert_eq!(resp.grpc_status(), Some(i32::from(Code::Unimplemented)));
    })
    .await;
}

#[tokio::test]
async fn refusal_should_be_unavailable_with_a_pushback() {
    bounded(async {
        let full = Refused::Full {
            retry_after: Duration::from_millis(1500),
        };
        let r = Running::start(Protocol::Grpc, &config(1 << 20), TestSink::refusing(full)).await;
        let err = client(&r).await.export(request(4, 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert_eq!(err.metadata().get(GRPC_RETRY_PUSHBACK_MS).unwrap(), "1500");
        assert_eq!(r.counts(), (0, 0, 1, 4, 0));

        let stopping = TestSink::refusing(Refused::ShuttingDown);
        let r = Running::start(Protocol::Grpc, &config(1 << 20), stopping).await;
        let err = client(&r).await.export(request(1, 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.metadata().get(GRPC_RETRY_PUSHBACK_MS).is_none());
    })
    .await;
}

/// A body that declares a 10-byte message and sends it only when `release` fires.
fn stalled_body(release: tokio::sync::oneshot::Receiver<()>) -> tonic::body::Body {
    let header = Bytes::from_static(&[0, 0, 0, 0, 10]);
    let payload = async move {
        let _ = release.await;
        Ok(Bytes::from_static(b"0123456789"))
    };
    let chunks = futures::stream::iter([Ok::<_, std::convert::Infallible>(header)])
        .chain(futures::stream::once(payload));
    tonic::body::Body::new(Body::from_stream(chunks))
}

#[tokio::test]
async fn requests_over_the_concurrency_bound_should_be_unavailable() {
    bounded(async {
        let sink = TestSink::accepting();
        let r = Running::start_with_limit(Protocol::Grpc, &config(1 << 20), sink, 1).await;
        let (release, stalled) = tokio::sync::oneshot::channel();
        let slow = raw_body(&r, EXPORT_PATH, &[GRPC], stalled_body(stalled));
        tokio::pin!(slow);
        // Let the stalled request be admitted; it holds the only permit while it stalls.
        let early = tokio::time::timeout(Duration::from_millis(300), &mut slow).await;
        assert!(early.is_err());
        let err = client(&r).await.export(request(2, 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert_eq!(err.metadata().get(GRPC_RETRY_PUSHBACK_MS).unwrap(), "1000");
        assert_eq!(r.counts(), (0, 0, 1, 0, 0));
        // The stalled request completes (as garbage): its permit comes back.
        release.send(()).unwrap();
        let resp = slow.await;
        assert_eq!(resp.grpc_status(), Some(i32::from(Code::InvalidArgument)));
        client(&r).await.export(request(3, 1)).await.unwrap();
        assert_eq!(r.sink.trace_ids(), trace_ids(3));
    })
    .await;
}

#[tokio::test]
async fn bearer_token_should_be_required_when_configured() {
    bounded(async {
        let mut cfg = config(1 << 20);
        cfg.bearer_token = Some("s3cret".into());
        let r = Running::start(Protocol::Grpc, &cfg, TestSink::accepting()).await;
        let mut c = client(&r).await;
        let err = c.export(request(1, 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        for (value, ok) in [
            ("Bearer nope", false),
            ("bearer s3cret", false),
            ("Bearer s3cret", true),
        ] {
            let mut req = tonic::Request::new(request(1, 1));
            req.metadata_mut()
                .insert("authorization", value.parse().unwrap());
            let result = c.export(req).await;
            assert_eq!(result.is_ok(), ok, "{value}: {result:?}");
            if let Err(e) = result {
                assert_eq!(e.code(), Code::Unauthenticated);
            }
        }
        assert_eq!(r.sink.trace_ids(), trace_ids(1));
        assert_eq!(r.counts().4, 3);
    })
    .await;
}

#[tokio::test]
async fn unknown_method_should_be_unimplemented_and_wrong_content_type_415() {
    bounded(async {
        let r = Running::start(Protocol::Grpc, &config(1 << 20), TestSink::accepting()).await;
        let resp = raw(
            &r,
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            &[GRPC],
            frame(0, b""),
        )
        .await;
        assert_eq!(resp.grpc_status(), Some(i32::from(Code::Unimplemented)));
        let resp = raw(
            &r,
            EXPORT_PATH,
            &[("content-type", "application/json")],
            frame(0, b""),
        )
        .await;
        assert_eq!(resp.status, http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(r.counts().4, 2);
        assert!(r.sink.trace_ids().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_should_let_an_in_flight_request_finish() {
    bounded(async {
        let (sink, started) = TestSink::slow(Duration::from_millis(300));
        let r = Running::start(Protocol::Grpc, &config(1 << 20), sink).await;
        let mut c = client(&r).await;
        let call = tokio::spawn(async move { c.export(request(2, 1)).await });
        tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap();
        r.receiver.shutdown().await;
        // Shutdown returned only once the slow offer had completed.
        assert_eq!(r.sink.trace_ids(), trace_ids(2));
        call.await.unwrap().unwrap();
    })
    .await;
}

#[test]
fn grpc_message_should_be_percent_encoded() {
    assert_eq!(percent_encode("a b%c\n\u{e9}"), "a b%25c%0A%C3%A9");
}

#[test]
fn content_type_should_be_grpc_or_grpc_proto() {
    let ok = |s: &str| is_grpc(Some(&HeaderValue::from_str(s).unwrap()));
    assert!(ok("application/grpc"));
    assert!(ok("application/grpc+proto"));
    assert!(ok("Application/GRPC; charset=utf-8"));
    assert!(!ok("application/grpc-web"));
    assert!(!ok("application/grpc+json"));
    assert!(!is_grpc(None));
}

#[test]
fn decode_grpc_body_should_refuse_every_malformed_frame() {
    let req = encoded(2, 3);
    assert_eq!(
        decode_grpc_body(&frame(0, &req), None, 1 << 20)
            .unwrap()
            .len(),
        2
    );
    let gz = frame(1, &gzip(&req));
    assert_eq!(
        decode_grpc_body(&gz, Some("gzip"), 1 << 20).unwrap().len(),
        2
    );
    let code = |body: &[u8], enc, max| decode_grpc_body(body, enc, max).unwrap_err().code();
    assert_eq!(code(&[], None, 100), Code::InvalidArgument);
    assert_eq!(code(&[0, 0, 0], None, 100), Code::InvalidArgument);
    assert_eq!(code(&[0, 0, 0, 0, 9, 1], None, 100), Code::InvalidArgument);
    assert_eq!(
        code(&[0, 0, 0, 0, 1, 1, 2], None, 100),
        Code::InvalidArgument
    );
    assert_eq!(
        code(&[0, 255, 255, 255, 255], None, 100),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(&frame(0, &req), None, req.len() - 1),
        Code::ResourceExhausted
    );
    assert_eq!(code(&gz, None, 1 << 20), Code::Unimplemented);
    assert_eq!(code(&gz, Some("deflate"), 1 << 20), Code::Unimplemented);
    assert_eq!(
        code(&gz, Some("gzip"), req.len() - 1),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(&frame(1, b"not gzip"), Some("gzip"), 100),
        Code::InvalidArgument
    );
}

/// The code `decode_grpc_body` must answer with, where the input decides it alone.
fn expected_code(body: &[u8], encoding: Option<&str>, max: usize) -> Option<Code> {
    if body.len() < HEADER_LEN {
        return Some(Code::InvalidArgument);
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if len > max {
        return Some(Code::ResourceExhausted);
    }
    if body.len() - HEADER_LEN != len || body[0] > 1 {
        return Some(Code::InvalidArgument);
    }
    if body[0] == 1 && encoding != Some("gzip") {
        return Some(Code::Unimplemented);
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn decode_grpc_body_should_never_panic_and_answer_the_right_code(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        flag in 0u8..3,
        framed in any::<bool>(),
        gzipped in any::<bool>(),
        encoding in proptest::sample::select(vec![None, Some("gzip"), Some("identity"), Some("br")]),
        max in 0usize..400,
    ) {
        let payload = if gzipped { gzip(&payload) } else { payload };
        // Half the cases are well-framed, so the decoder is reached, not just the framing.
        let body = if framed { frame(flag, &payload) } else { payload };
        match decode_grpc_body(&body, encoding, max) {
            Ok(spans) => {
                prop_assert!(expected_code(&body, encoding, max).is_none());
                prop_assert!(spans.iter().all(|s| s.received_len() <= max));
            }
            Err(e) => {
                let code = e.code();
                prop_assert!(matches!(
                    code,
                    Code::InvalidArgument | Code::ResourceExhausted | Code::Unimplemented
                ));
                if let Some(expected) = expected_code(&body, encoding, max) {
                    prop_assert_eq!(code, expected, "{:?}", e);
                }
            }
        }
    }
}

#[test]
fn decode_grpc_body_should_read_an_empty_request_and_refuse_a_declared_length_over_the_limit() {
    // An empty request: flag 0, length 0.
    assert!(decode_grpc_body(&[0, 0, 0, 0, 0], None, 1024)
        .unwrap()
        .is_empty());
    // A declared length of 2048 bytes, over the 1024-byte limit.
    let err = decode_grpc_body(&[0, 0, 0, 8, 0], None, 1024).unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
}
