use std::time::Duration;

use proptest::prelude::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::receiver::testing::{
    bounded, config, encoded, gzip, request, trace_ids, Running, TestSink,
};
use crate::receiver::Protocol;

/// `google.rpc.Status`, as the protobuf error bodies carry it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post(r: &Running, headers: &[(&str, &str)], body: Vec<u8>) -> reqwest::Response {
    let mut req = http_client().post(format!("{}{TRACES_PATH}", r.url()));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(body).send().await.unwrap()
}

const PB: (&str, &str) = ("content-type", PROTOBUF);
const JS: (&str, &str) = ("content-type", "application/json; charset=utf-8");
const GZ: (&str, &str) = ("content-encoding", "gzip");

async fn json_status(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()[CONTENT_TYPE], JSON);
    (
        status,
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap(),
    )
}

async fn protobuf_status(resp: reqwest::Response) -> (u16, RpcStatus) {
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()[CONTENT_TYPE], PROTOBUF);
    (
        status,
        RpcStatus::decode(resp.bytes().await.unwrap()).unwrap(),
    )
}

#[tokio::test]
async fn protobuf_request_should_be_accepted_with_an_empty_protobuf_response() {
    bounded(async {
        let r = Running::start(Protocol::Http, &config(1 << 20), TestSink::accepting()).await;
        let resp = post(&r, &[PB], encoded(3, 5)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[CONTENT_TYPE], PROTOBUF);
        assert!(resp.bytes().await.unwrap().is_empty());
        assert_eq!(r.sink.trace_ids(), trace_ids(3));
        assert_eq!(r.counts(), (1, 3, 0, 0, 0));
    })
    .await;
}

#[tokio::test]
async fn json_request_should_be_accepted_with_an_empty_json_response() {
    bounded(async {
        let r = Running::start(Protocol::Http, &config(1 << 20), TestSink::accepting()).await;
        let body = serde_json::to_vec(&request(2, 5)).unwrap();
        let resp = post(&r, &[JS], body).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[CONTENT_TYPE], JSON);
        assert_eq!(&resp.bytes().await.unwrap()[..], b"{}");
        assert_eq!(r.sink.trace_ids(), trace_ids(2));
    })
    .await;
}

#[tokio::test]
async fn gzip_request_should_be_inflated() {
    bounded(async {
        let r = Running::start(Protocol::Http, &config(1 << 20), TestSink::accepting()).await;
        assert_eq!(
            post(&r, &[PB, GZ], gzip(&encoded(4, 50))).await.status(),
            200
        );
        let json = serde_json::to_vec(&request(1, 5)).unwrap();
        assert_eq!(post(&r, &[JS, GZ], gzip(&json)).await.status(), 200);
        let mut expected = trace_ids(4);
        expected.extend(trace_ids(1));
        assert_eq!(r.sink.trace_ids(), expected);
    })
    .await;
}

#[tokio::test]
async fn malformed_body_should_be_400_with_a_status_in_the_request_encoding() {
    bounded(async {
        let r = Running::start(Protocol::Http, &config(1 << 20), TestSink::accepting()).await;
        let (status, body) =
            protobuf_status(post(&r, &[PB], b"\x0a\xff\x01junk".to_vec()).await).await;
        assert_eq!(status, 400);
        assert_eq!(body.code, i32::from(Code::InvalidArgument));
        assert!(
            body.message.contains("invalid OTLP trace request"),
            "{body:?}"
        );
        let (status, body) =
            json_status(post(&r, &[JS], b"{\"resourceSpans\": 7}".to_vec()).await).await;
        assert_eq!(status, 400);
        assert_eq!(body["code"], i32::from(Code::InvalidArgument));
        assert!(
            body["message"].as_str().unwrap().contains("invalid OTLP"),
            "{body}"
        );
        let (status, _) = json_status(post(&r, &[JS, GZ], b"not gzip".to_vec()).await).await;
        assert_eq!(status, 400);
        assert_eq!(r.counts(), (0, 0, 0, 0, 3));
    })
    .await;
}

#[tokio::test]
async fn garbage_should_not_stop_the_server() {
    bounded(async {
        let r = Running::start(Protocol::Http, &config(1 << 20), TestSink::accepting()).await;
        for garbage in [
            &b"\x00\xff\x13\x37 nonsense\r\n\r\n"[..],
            b"POST /v1/traces HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
        ] {
            let mut tcp = tokio::net::TcpStream::connect(r.receiver.local_addr())
                .await
                .unwrap();
            tcp.write_all(garbage).await.unwrap();
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
        }
        assert_eq!(post(&r, &[PB], encoded(1, 1)).await.status(), 200);
        assert_eq!(r.sink.trace_ids(), trace_ids(1));
    })
    .await;
}

#[tokio::test]
async fn oversized_body_should_be_413_whether_declared_or_inflated() {
    bounded(async {
        let max = 1000;
        let r = Running::start(Protocol::Http, &config(max), TestSink::accepting()).await;
        let big = encoded(20, 500);
        let (status, body) = protobuf_status(post(&r, &[PB], big.clone()).await).await;
        assert_eq!(status, 413);
        assert_eq!(body.code, i32::from(Code::ResourceExhausted));
        assert!(body.message.contains("1000-byte limit"), "{body:?}");
        let small = gzip(&big);
        assert!(small.len() < max);
        assert_eq!(post(&r, &[PB, GZ], small).await.status(), 413);
        assert!(r.sink.trace_ids().is_empty());
        assert_eq!(r.counts().4, 2);
    })
    .await;
}

#[tokio::test]
async fn declared_oversized_body_should_be_413_before_it_is_sent() {
    bounded(async {
        let r = Running::start(Protocol::Http, &config(1000), TestSink::accepting()).await;
        let mut tcp = tokio::net::TcpStream::connect(r.receiver.local_addr())
            .await
            .unwrap();
        let head = "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
        tcp.write_all(format!("{head}content-length: 1001\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut response))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        assert_eq!(&response, b"HTTP/1.1 413");
    })
    .await;
}

#[tokio::test]
async fn unsupported_content_type_or_encoding_should_be_415_naming_what_is_supported() {
    bounded(async {
        let r = Running::start(Protocol::Http, &config(1 << 20), TestSink::accepting()).await;
        let (status, body) =
            json_status(post(&r, &[("content-type", "text/plain")], encoded(1, 1)).await).await;
        assert_eq!(status, 415);
        assert!(
            body["message"].as_str().unwrap().contains(PROTOBUF),
            "{body}"
        );
        let (status, body) =
            json_status(post(&r, &[JS, ("content-encoding", "br")], b"{}".to_vec()).await).await;
        assert_eq!(status, 415);
        assert!(body["message"].as_str().unwrap().contains("gzip"), "{body}");
        assert_eq!(r.counts().4, 2);
    })
    .await;
}

#[tokio::test]
async fn refusal_should_be_503_with_retry_after_when_full() {
    bounded(async {
        let full = Refused::Full {
            retry_after: Duration::from_millis(1500),
        };
        let r = Running::start(Protocol::Http, &config(1 << 20), TestSink::refusing(full)).await;
        let resp = post(&r, &[PB], encoded(3, 1)).await;
        assert_eq!(resp.headers()[RETRY_AFTER], "2");
        let (status, body) = protobuf_status(resp).await;
        assert_eq!(status, 503);
        assert_eq!(body.code, i32::from(Code::Unavailable));
        assert_eq!(r.counts(), (0, 0, 1, 3, 0));

        let stopping = TestSink::refusing(Refused::ShuttingDown);
        let r = Running::start(Protocol::Http, &config(1 << 20), stopping).await;
        let resp = post(&r, &[JS], b"{}".to_vec()).await;
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().get(RETRY_AFTER).is_none());
    })
    .await;
}

#[tokio::test]
async fn requests_over_the_concurrency_bound_should_be_503_with_retry_after() {
    bounded(async {
        let r =
            Running::start_with_limit(Protocol::Http, &config(1 << 20), TestSink::accepting(), 1)
                .await;
        // A client that sends half its body and stalls holds the only permit.
        let mut stalled = tokio::net::TcpStream::connect(r.receiver.local_addr())
            .await
            .unwrap();
        let head = "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
        stalled
            .write_all(format!("{head}content-length: 100\r\n\r\n{{").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let busy = post(&r, &[PB], encoded(2, 1)).await;
        assert_eq!(busy.headers()[RETRY_AFTER], "1");
        let (status, body) = protobuf_status(busy).await;
        assert_eq!((status, body.code), (503, i32::from(Code::Unavailable)));
        assert_eq!(r.counts(), (0, 0, 1, 0, 0));
        // The stalled client goes away: its permit comes back.
        drop(stalled);
        while post(&r, &[PB], encoded(3, 1)).await.status() != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(r.sink.trace_ids(), trace_ids(3));
    })
    .await;
}

#[tokio::test]
async fn bearer_token_should_be_required_when_configured() {
    bounded(async {
        let mut cfg = config(1 << 20);
        cfg.bearer_token = Some("s3cret".into());
        let r = Running::start(Protocol::Http, &cfg, TestSink::accepting()).await;
        let resp = post(&r, &[PB], encoded(1, 1)).await;
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer");
        let (status, body) = protobuf_status(resp).await;
        assert_eq!((status, body.code), (401, i32::from(Code::Unauthenticated)));
        let wrong = post(&r, &[PB, ("authorization", "Bearer s3cre")], encoded(1, 1)).await;
        assert_eq!(wrong.status(), 401);
        let right = post(&r, &[PB, ("authorization", "Bearer s3cret")], encoded(1, 1)).await;
        assert_eq!(right.status(), 200);
        assert_eq!(r.sink.trace_ids(), trace_ids(1));
        assert_eq!(r.counts().4, 2);
    })
    .await;
}

#[tokio::test]
async fn other_paths_should_be_404_and_other_methods_405() {
    bounded(async {
        let r = Running::start(Protocol::Http, &config(1 << 20), TestSink::accepting()).await;
        let c = http_client();
        let resp = c
            .post(format!("{}/v1/logs", r.url()))
            .header(PB.0, PB.1)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        let resp = c
            .get(format!("{}{TRACES_PATH}", r.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()[axum::http::header::ALLOW], "POST");
        assert_eq!(r.counts().4, 2);
    })
    .await;
}

#[tokio::test]
async fn shutdown_should_cut_off_a_stalled_request_after_the_grace_period() {
    bounded(async {
        let r = Running::start(Protocol::Http, &config(1 << 20), TestSink::accepting()).await;
        let mut tcp = tokio::net::TcpStream::connect(r.receiver.local_addr())
            .await
            .unwrap();
        let head = "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
        tcp.write_all(format!("{head}content-length: 100\r\n\r\n{{").as_bytes())
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        // Wait for the request to reach the handler before stopping.
        tokio::time::sleep(Duration::from_millis(200)).await;
        r.receiver.shutdown().await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(4), "{waited:?}");
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut response)).await;
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        let refused = r
            .metrics
            .requests_refused
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(refused, 1);
    })
    .await;
}

#[test]
fn decode_http_body_should_map_each_failure_to_its_status() {
    let req = encoded(2, 3);
    let status = |body: &[u8], ct, ce, max| {
        decode_http_body(body, ct, ce, max)
            .unwrap_err()
            .status()
            .as_u16()
    };
    assert_eq!(
        decode_http_body(&req, Some(PROTOBUF), Some("identity"), 1 << 20)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(status(&req, None, None, 1 << 20), 415);
    assert_eq!(
        status(&req, Some("application/protobuf"), None, 1 << 20),
        415
    );
    assert_eq!(status(&req, Some(PROTOBUF), Some("deflate"), 1 << 20), 415);
    assert_eq!(status(&req, Some(PROTOBUF), None, req.len() - 1), 413);
    assert_eq!(
        status(&gzip(&req), Some(PROTOBUF), Some("GZIP"), req.len() - 1),
        413
    );
    assert_eq!(status(b"\x0a\x05ab", Some(PROTOBUF), None, 100), 400);
    assert_eq!(status(b"[", Some(JSON), None, 100), 400);
    assert_eq!(status(b"\x1f\x8b junk", Some(JSON), Some("gzip"), 100), 400);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn decode_http_body_should_never_panic_and_answer_the_right_status(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        gzipped in any::<bool>(),
        content_type in proptest::sample::select(vec![
            None, Some(PROTOBUF), Some("application/json"), Some("application/json; charset=utf-8"), Some("text/plain"),
        ]),
        encoding in proptest::sample::select(vec![None, Some("gzip"), Some("identity"), Some("zstd")]),
        max in 0usize..400,
    ) {
        let body = if gzipped { gzip(&body) } else { body };
        let result = decode_http_body(&body, content_type, encoding, max);
        let unsupported_type = content_type.is_none() || content_type == Some("text/plain");
        let expected = if unsupported_type || encoding == Some("zstd") {
            Some(415)
        } else if body.len() > max {
            Some(413)
        } else {
            None
        };
        match (&result, expected) {
            (Err(e), Some(code)) => prop_assert_eq!(e.status().as_u16(), code),
            (Err(e), None) => {
                prop_assert!(matches!(e.status().as_u16(), 400 | 413), "{:?}", e);
                prop_assert_eq!(e.status() == StatusCode::PAYLOAD_TOO_LARGE, e.grpc_code() == Code::ResourceExhausted);
            }
            (Ok(spans), None) => prop_assert!(spans.iter().all(|s| s.received_len() <= max)),
            (Ok(_), Some(code)) => prop_assert!(false, "accepted, expected {}", code),
        }
    }
}

#[test]
fn decode_http_body_should_take_json_with_parameters_and_refuse_other_media_types() {
    let spans = decode_http_body(b"{}", Some("application/json; charset=utf-8"), None, 1024);
    assert!(spans.unwrap().is_empty());
    let err = decode_http_body(b"{}", Some("text/plain"), None, 1024).unwrap_err();
    assert_eq!(err.status().as_u16(), 415);
}
