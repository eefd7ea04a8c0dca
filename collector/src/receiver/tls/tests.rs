use std::path::Path;
use std::time::Duration;

use axum::http;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tonic::client::GrpcService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::*;
use crate::receiver::testing::{bounded, config, encoded, request, trace_ids, Running, TestSink};
use crate::receiver::Protocol;

/// A self-signed certificate for `localhost`, written to `dir`; returns the config and the
/// certificate's PEM (the client's trust anchor).
fn self_signed(dir: &Path) -> (TlsConfig, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let config = TlsConfig {
        cert_file: dir.join("server.crt"),
        key_file: dir.join("server.key"),
    };
    std::fs::write(&config.cert_file, ck.cert.pem()).unwrap();
    std::fs::write(&config.key_file, ck.signing_key.serialize_pem()).unwrap();
    (config, ck.cert.pem())
}

async fn tls_channel(r: &Running, ca_pem: &str) -> Channel {
    let url = format!("https://{}", r.receiver.local_addr());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    Endpoint::from_shared(url)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

async fn start_tls(protocol: Protocol) -> (Running, String, TempDir) {
    let dir = TempDir::new().unwrap();
    let (tls, ca) = self_signed(dir.path());
    let mut cfg = config(1 << 20);
    cfg.tls = Some(tls);
    (
        Running::start(protocol, &cfg, TestSink::accepting()).await,
        ca,
        dir,
    )
}

#[tokio::test]
async fn grpc_over_tls_should_export() {
    bounded(async {
        let (r, ca, _dir) = start_tls(Protocol::Grpc).await;
        let mut client = TraceServiceClient::new(tls_channel(&r, &ca).await);
        client.export(request(3, 1)).await.unwrap();
        assert_eq!(r.sink.trace_ids(), trace_ids(3));
    })
    .await;
}

#[tokio::test]
async fn http_over_tls_should_accept_http2() {
    bounded(async {
        let (r, ca, _dir) = start_tls(Protocol::Http).await;
        let mut channel = tls_channel(&r, &ca).await;
        let request = http::Request::builder()
            .method("POST")
            .uri("https://localhost/v1/traces")
            .header("content-type", "application/x-protobuf")
            .body(tonic::body::Body::new(Full::new(Bytes::from(encoded(
                2, 1,
            )))))
            .unwrap();
        std::future::poll_fn(|cx| GrpcService::poll_ready(&mut channel, cx))
            .await
            .unwrap();
        let response = GrpcService::call(&mut channel, request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_2);
        response.into_body().collect().await.unwrap();
        assert_eq!(r.sink.trace_ids(), trace_ids(2));
    })
    .await;
}

#[tokio::test]
async fn silent_and_garbage_clients_should_not_stall_the_handshakes_of_others() {
    bounded(async {
        let (r, ca, _dir) = start_tls(Protocol::Grpc).await;
        let addr = r.receiver.local_addr();
        // Connects and never says a word (would hold an inline handshake for its whole timeout).
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Speaks plain HTTP/2 to the TLS port.
        let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
        garbage
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let export = async {
            let mut client = TraceServiceClient::new(tls_channel(&r, &ca).await);
            client.export(request(1, 1)).await.unwrap();
        };
        // Well inside HANDSHAKE_TIMEOUT: the silent client cannot be what we waited for.
        tokio::time::timeout(HANDSHAKE_TIMEOUT / 2, export)
            .await
            .expect("a valid client is served while others stall");
        assert_eq!(r.sink.trace_ids(), trace_ids(1));
    })
    .await;
}

fn load_error(config: &TlsConfig) -> ReceiverError {
    match load_acceptor(config) {
        Ok(_) => panic!("{config:?} loaded"),
        Err(e) => e,
    }
}

#[test]
fn unreadable_or_invalid_files_should_be_errors_naming_the_file() {
    let dir = TempDir::new().unwrap();
    let (good, _) = self_signed(dir.path());
    let missing = TlsConfig {
        cert_file: dir.path().join("absent.crt"),
        key_file: good.key_file.clone(),
    };
    let err = load_error(&missing);
    assert!(matches!(err, ReceiverError::TlsFile { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.crt"), "{err}");

    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a PEM file").unwrap();
    for (config, name) in [
        (
            TlsConfig {
                cert_file: junk.clone(),
                key_file: good.key_file.clone(),
            },
            "junk.pem",
        ),
        (
            TlsConfig {
                cert_file: good.cert_file.clone(),
                key_file: junk.clone(),
            },
            "junk.pem",
        ),
        // A certificate is no private key.
        (
            TlsConfig {
                cert_file: good.cert_file.clone(),
                key_file: good.cert_file.clone(),
            },
            "server.crt",
        ),
    ] {
        let err = load_error(&config);
        assert!(matches!(err, ReceiverError::TlsPem { .. }), "{err:?}");
        assert!(err.to_string().contains(name), "{err}");
    }

    let other = TempDir::new().unwrap();
    let (stranger, _) = self_signed(other.path());
    let mismatched = TlsConfig {
        cert_file: good.cert_file.clone(),
        key_file: stranger.key_file,
    };
    let err = load_error(&mismatched);
    assert!(matches!(err, ReceiverError::TlsConfig { .. }), "{err:?}");
    assert!(load_acceptor(&good).is_ok());
}

#[tokio::test]
async fn start_should_fail_on_bad_tls_files_before_binding() {
    let dir = TempDir::new().unwrap();
    let mut cfg = config(1024);
    cfg.tls = Some(TlsConfig {
        cert_file: dir.path().join("nope.crt"),
        key_file: dir.path().join("nope.key"),
    });
    let metrics = Default::default();
    let err =
        crate::receiver::OtlpReceiver::start(Protocol::Http, &cfg, TestSink::accepting(), metrics)
            .await
            .unwrap_err();
    assert!(err.to_string().contains("nope.crt"), "{err}");
}
