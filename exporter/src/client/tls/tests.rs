//! TLS and mutual TLS to an in-test tonic server with certificates from an in-test CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use super::ClientTlsConfig;
use crate::client::{ClientConfig, OtlpClient, Protocol, RetryConfig, RetryLimits};
use crate::export::test_support::{batch, eventually, fast_retry, get, grpc_config};
use crate::export::{ExportSetupError, ExporterMetrics, ExporterQueue};

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

/// A TLS gRPC downstream with the certificate for `names`; requiring a client certificate
/// from the CA when `client_ca` is set.
async fn serve(
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

fn no_retry() -> RetryConfig {
    RetryConfig {
        enabled: false,
        ..RetryConfig::default()
    }
}

/// One send over gRPC to `endpoint` with `tls`.
async fn send(endpoint: String, tls: ClientTlsConfig) -> Result<(), String> {
    let config = ClientConfig::new(Protocol::Grpc, endpoint)
        .with_timeout(Duration::from_secs(5))
        .with_tls(tls);
    let client = OtlpClient::new("otlp/tls", &config).map_err(|e| e.to_string())?;
    let outcome = client
        .send(batch(1).body, &no_retry(), RetryLimits::default())
        .await;
    outcome.result.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn grpc_over_tls_should_deliver_to_a_server_the_ca_file_vouches_for() {
    let pki = Pki::new();
    let (addr, calls) = serve(&pki, &["localhost", "127.0.0.1"], None).await;
    let tls = ClientTlsConfig::default().with_ca_file(pki.path("ca.pem"));
    // `https://` or a bare `host:port` with a tls block: both speak TLS
    send(format!("https://{addr}"), tls.clone()).await.unwrap();
    send(addr.to_string(), tls).await.unwrap();
    assert_eq!(calls.load(Relaxed), 2);
}

#[tokio::test]
async fn grpc_over_tls_should_fail_clearly_against_another_ca_and_count_the_failures() {
    let pki = Pki::new();
    let (addr, calls) = serve(&pki, &["127.0.0.1"], None).await;
    let stranger = Pki::new();
    let tls = ClientTlsConfig::default().with_ca_file(stranger.path("ca.pem"));
    let err = send(format!("https://{addr}"), tls.clone())
        .await
        .unwrap_err();
    assert!(err.contains("certificate"), "{err}");

    // through an exporter: send failures, then the batch dropped; no panic
    let mut config = grpc_config(addr, fast_retry(5)).with_tls(tls);
    config.retry.max_elapsed_time = Duration::from_millis(50);
    let metrics = Arc::new(ExporterMetrics::default());
    let queue = ExporterQueue::start(&config, Arc::clone(&metrics)).unwrap();
    queue.push(batch(2));
    assert!(eventually(|| get(&metrics.spans_dropped) == 2).await);
    assert!(get(&metrics.send_failures) >= 1);
    assert_eq!(get(&metrics.spans_sent), 0);
    assert_eq!(calls.load(Relaxed), 0);
}

#[tokio::test]
async fn grpc_mutual_tls_should_need_the_client_certificate() {
    let pki = Pki::new();
    let (addr, calls) = serve(&pki, &["127.0.0.1"], Some(&pki.path("ca.pem"))).await;
    let (cert, key) = pki.issue("client", &["exporter"]);
    let tls = ClientTlsConfig::default().with_ca_file(pki.path("ca.pem"));
    send(
        format!("https://{addr}"),
        tls.clone().with_client_cert(cert, key),
    )
    .await
    .unwrap();
    assert_eq!(calls.load(Relaxed), 1);
    assert!(send(format!("https://{addr}"), tls).await.is_err());
    assert_eq!(calls.load(Relaxed), 1);
}

#[tokio::test]
async fn server_name_override_should_verify_the_name_the_certificate_has() {
    let pki = Pki::new();
    let (addr, calls) = serve(&pki, &["collector.test"], None).await;
    let tls = ClientTlsConfig::default().with_ca_file(pki.path("ca.pem"));
    let err = send(format!("https://{addr}"), tls.clone())
        .await
        .unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    send(
        format!("https://{addr}"),
        tls.with_server_name_override("collector.test"),
    )
    .await
    .unwrap();
    assert_eq!(calls.load(Relaxed), 1);
}

#[tokio::test]
async fn insecure_skip_verify_should_accept_any_certificate() {
    let pki = Pki::new();
    let (addr, calls) = serve(&pki, &["elsewhere.test"], None).await;
    let tls = ClientTlsConfig::default().with_insecure_skip_verify(true);
    send(format!("https://{addr}"), tls).await.unwrap();
    assert_eq!(calls.load(Relaxed), 1);
}

fn setup_error(endpoint: &str, tls: ClientTlsConfig) -> ExportSetupError {
    let config = ClientConfig::new(Protocol::Grpc, endpoint).with_tls(tls);
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
    for (endpoint, tls, expected) in cases {
        let err = setup_error(endpoint, tls).to_string();
        assert!(err.contains("otlp/tls"), "{err}");
        assert!(err.contains(expected), "{expected}: {err}");
    }
    let err = setup_error(
        "h:1",
        ClientTlsConfig::default().with_ca_file(pki.path("missing.pem")),
    );
    assert!(err.to_string().contains("missing.pem"), "{err}");
    // insecure with a bare or http:// endpoint is plain text, as before
    for endpoint in ["h:1", "http://h:1"] {
        let config = ClientConfig::new(Protocol::Grpc, endpoint)
            .with_tls(ClientTlsConfig::default().with_insecure(true));
        assert!(OtlpClient::new("otlp/tls", &config).is_ok());
    }
}
