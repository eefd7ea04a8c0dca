//! TLS and mutual TLS, over gRPC (an in-test tonic server) and OTLP/HTTP (an in-test hyper
//! server), with certificates from an in-test CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use super::ClientTlsConfig;
use crate::client::Compression;
use crate::client::{ClientConfig, OtlpClient, Protocol, RetryConfig, RetryLimits};
use crate::export::test_support::{batch, eventually, fast_retry, get, grpc_config};
use crate::export::{ExportSetupError, ExportTarget, ExporterMetrics, ExporterQueue};

/// A CA, and certificates it signed, written as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A certificate for `names` signed by the CA, as `{stem}.pem` and `{stem}.key`.
    fn issue(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (cert_path, key_path) = (
            self.path(&format!("{stem}.pem")),
            self.path(&format!("{stem}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

struct Counting(Arc<AtomicUsize>);

#[tonic::async_trait]
impl TraceService for Counting {
    async fn export(
        &self,
        _request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.fetch_add(1, Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A TLS downstream speaking `protocol` with the certificate for `names`; requiring a client
/// certificate from the CA when `client_ca` is set.
async fn serve(
    protocol: Protocol,
    pki: &Pki,
    names: &[&str],
    client_ca: Option<&Path>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    match protocol {
        Protocol::Http => serve_https(pki, names, client_ca).await,
        _ => serve_grpc(pki, names, client_ca).await,
    }
}

async fn serve_grpc(
    pki: &Pki,
    names: &[&str],
    client_ca: Option<&Path>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let (cert, key) = pki.issue("server", names);
    let identity = Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap());
    let mut tls = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(std::fs::read(ca).unwrap()));
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(TraceServiceServer::new(Counting(Arc::clone(&calls))))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);
    (addr, calls)
}

/// OTLP/HTTP over TLS: counts the `POST /v1/traces` whose body is a request.
async fn serve_https(
    pki: &Pki,
    names: &[&str],
    client_ca: Option<&Path>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let (cert, key) = pki.issue("server", names);
    let certs = CertificateDer::pem_slice_iter(&std::fs::read(cert).unwrap())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&std::fs::read(key).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&std::fs::read(ca).unwrap()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, calls) = (acceptor.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let calls = Arc::clone(&calls);
                    async move {
                        let path_ok = req.uri().path() == "/v1/traces";
                        let body = req.into_body().collect().await?.to_bytes();
                        if path_ok && ExportTraceServiceRequest::decode(body).is_ok() {
                            calls.fetch_add(1, Relaxed);
                        }
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, calls)
}

fn no_retry() -> RetryConfig {
    RetryConfig {
        enabled: false,
        ..RetryConfig::default()
    }
}

/// One send over `protocol` to `endpoint` with `tls`.
async fn send(protocol: Protocol, endpoint: String, tls: ClientTlsConfig) -> Result<(), String> {
    let config = ClientConfig::new(protocol, endpoint)
        .with_timeout(Duration::from_secs(5))
        .with_tls(tls);
    let client = OtlpClient::new("otlp/tls", &config).map_err(|e| e.to_string())?;
    let outcome = client
        .send(batch(1).body, &no_retry(), RetryLimits::default())
        .await;
    outcome.result.map(|_| ()).map_err(|e| e.to_string())
}

const PROTOCOLS: [Protocol; 2] = [Protocol::Grpc, Protocol::Http];

#[tokio::test]
async fn tls_should_deliver_to_a_server_the_ca_file_vouches_for() {
    for protocol in PROTOCOLS {
        let pki = Pki::new();
        let (addr, calls) = serve(protocol, &pki, &["localhost", "127.0.0.1"], None).await;
        let tls = ClientTlsConfig::default().with_ca_file(pki.path("ca.pem"));
        // `https://` or a bare `host:port` with a tls block: both speak TLS
        send(protocol, format!("https://{addr}"), tls.clone())
            .await
            .unwrap();
        send(protocol, addr.to_string(), tls).await.unwrap();
        assert_eq!(calls.load(Relaxed), 2, "{protocol:?}");
    }
}

#[tokio::test]
async fn plain_http_should_not_reach_a_tls_server() {
    let pki = Pki::new();
    let (addr, calls) = serve(Protocol::Http, &pki, &["127.0.0.1"], None).await;
    let err = send(
        Protocol::Http,
        format!("http://{addr}"),
        ClientTlsConfig::default().with_insecure(true),
    )
    .await
    .unwrap_err();
    assert!(!err.is_empty());
    assert_eq!(calls.load(Relaxed), 0);
}

#[tokio::test]
async fn tls_should_fail_clearly_against_another_ca_and_count_the_failures() {
    for protocol in PROTOCOLS {
        let pki = Pki::new();
        let (addr, calls) = serve(protocol, &pki, &["127.0.0.1"], None).await;
        let stranger = Pki::new();
        let tls = ClientTlsConfig::default().with_ca_file(stranger.path("ca.pem"));
        let err = send(protocol, format!("https://{addr}"), tls.clone())
            .await
            .unwrap_err();
        assert!(err.contains("certificate"), "{protocol:?}: {err}");

        // through an exporter: send failures, then the batch dropped; no panic
        let mut config = grpc_config(addr, fast_retry(5)).with_tls(tls);
        if protocol == Protocol::Http {
            config.target = ExportTarget::OtlpHttp {
                endpoint: format!("https://{addr}"),
                compression: Compression::None,
                timeout: Duration::from_secs(2),
                headers: Vec::new(),
            };
        }
        config.retry.max_elapsed_time = Duration::from_millis(50);
        let metrics = Arc::new(ExporterMetrics::default());
        let queue = ExporterQueue::start(&config, Arc::clone(&metrics)).unwrap();
        queue.push(batch(2));
        assert!(eventually(|| get(&metrics.spans_dropped) == 2).await);
        assert!(get(&metrics.send_failures) >= 1);
        assert_eq!(get(&metrics.spans_sent), 0);
        assert_eq!(calls.load(Relaxed), 0, "{protocol:?}");
    }
}

#[tokio::test]
async fn mutual_tls_should_need_the_client_certificate() {
    for protocol in PROTOCOLS {
        let pki = Pki::new();
        let ca = pki.path("ca.pem");
        let (addr, calls) = serve(protocol, &pki, &["127.0.0.1"], Some(&ca)).await;
        let (cert, key) = pki.issue("client", &["exporter"]);
        let tls = ClientTlsConfig::default().with_ca_file(&ca);
        send(
            protocol,
            format!("https://{addr}"),
            tls.clone().with_client_cert(cert, key),
        )
        .await
        .unwrap();
        assert_eq!(calls.load(Relaxed), 1, "{protocol:?}");
        assert!(send(protocol, format!("https://{addr}"), tls)
            .await
            .is_err());
        assert_eq!(calls.load(Relaxed), 1, "{protocol:?}");
    }
}

#[tokio::test]
async fn server_name_override_should_verify_the_name_the_certificate_has() {
    for protocol in PROTOCOLS {
        let pki = Pki::new();
        let (addr, calls) = serve(protocol, &pki, &["collector.test"], None).await;
        let tls = ClientTlsConfig::default().with_ca_file(pki.path("ca.pem"));
        let err = send(protocol, format!("https://{addr}"), tls.clone())
            .await
            .unwrap_err();
        assert!(err.contains("certificate"), "{protocol:?}: {err}");
        send(
            protocol,
            format!("https://{addr}"),
            tls.with_server_name_override("collector.test"),
        )
        .await
        .unwrap();
        assert_eq!(calls.load(Relaxed), 1, "{protocol:?}");
    }
}

#[tokio::test]
async fn insecure_skip_verify_should_accept_any_certificate() {
    for protocol in PROTOCOLS {
        let pki = Pki::new();
        let (addr, calls) = serve(protocol, &pki, &["elsewhere.test"], None).await;
        let tls = ClientTlsConfig::default().with_insecure_skip_verify(true);
        send(protocol, format!("https://{addr}"), tls)
            .await
            .unwrap();
        assert_eq!(calls.load(Relaxed), 1, "{protocol:?}");
    }
}

fn setup_error(protocol: Protocol, endpoint: &str, tls: ClientTlsConfig) -> ExportSetupError {
    let config = ClientConfig::new(protocol, endpoint).with_tls(tls);
    OtlpClient::new("otlp/tls", &config).unwrap_err()
}

#[tokio::test]
async fn bad_tls_settings_and_files_should_be_setup_errors_naming_exporter_and_file() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("client", &["exporter"]);
    let ca = ClientTlsConfig::default().with_ca_file(pki.path("ca.pem"));
    let cases: Vec<(&str, ClientTlsConfig, &str)> = vec![
        ("h:1", ClientTlsConfig::default(), "tls.ca_file is required"),
        (
            "h:1",
            ClientTlsConfig {
                cert_file: Some(cert.clone()),
                ..ca.clone()
            },
            "tls.cert_file needs tls.key_file",
        ),
        (
            "h:1",
            ClientTlsConfig {
                key_file: Some(key.clone()),
                ..ca.clone()
            },
            "tls.key_file needs tls.cert_file",
        ),
        (
            "h:1",
            ClientTlsConfig::default().with_ca_file(pki.path("missing.pem")),
            "cannot read tls.ca_file",
        ),
        (
            "h:1",
            ClientTlsConfig::default().with_ca_file(&key),
            "tls.ca_file",
        ),
        (
            "h:1",
            ca.clone().with_client_cert(&cert, &cert),
            "tls.key_file",
        ),
        (
            "https://h:1",
            ClientTlsConfig::default().with_insecure(true),
            "tls.insecure is true",
        ),
        ("http://h:1", ca.clone(), "write https://"),
        (
            "h:1",
            ca.clone().with_server_name_override("not a name"),
            "server_name_override",
        ),
    ];
    for protocol in PROTOCOLS {
        for (endpoint, tls, expected) in &cases {
            let err = setup_error(protocol, endpoint, tls.clone()).to_string();
            assert!(err.contains("otlp/tls"), "{err}");
            assert!(err.contains(expected), "{protocol:?} {expected}: {err}");
        }
    }
    let err = setup_error(
        Protocol::Http,
        "h:1",
        ClientTlsConfig::default().with_ca_file(pki.path("missing.pem")),
    );
    assert!(err.to_string().contains("missing.pem"), "{err}");
    // insecure with a bare or http:// endpoint is plain text, as before
    for protocol in PROTOCOLS {
        for endpoint in ["h:1", "http://h:1"] {
            let config = ClientConfig::new(protocol, endpoint)
                .with_tls(ClientTlsConfig::default().with_insecure(true));
            assert!(OtlpClient::new("otlp/tls", &config).is_ok());
        }
    }
}
