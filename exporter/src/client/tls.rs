//! TLS to the downstream: the rustls client configuration from PEM files, and the connector the
//! gRPC channel and the OTLP/HTTP client dial through.
//!
//! Why a connector of our own rather than tonic's TLS: tonic's client TLS can neither skip
//! verification (`insecure_skip_verify`) nor verify a name other than the one it dials without
//! also dialling it; a connector that opens the TCP connection and runs the rustls handshake
//! itself does both, with the same rustls (and `ring` provider) the receivers use.
//!
//! Why no built-in roots: no crate of CA roots (webpki-roots, the platform's store) is among
//! the dependencies, so verifying a server takes a `ca_file` (the system bundle, e.g.
//! `/etc/ssl/certs/ca-certificates.crt`, works); the error says so when it is missing.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::codegen::http::Uri;

use crate::export::ExportSetupError;

/// Largest PEM file read (certificate chains are a few kilobytes).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// TLS settings of an OTLP client, the OpenTelemetry Collector's `tls` block of an exporter.
///
/// Whether the client speaks TLS at all: an `https://` endpoint, or a bare `host:port` with a
/// `tls` block that is not [`insecure`](Self::insecure), does; an `http://` endpoint, or no
/// `tls` block with a bare `host:port`, is plain text. An `https://` endpoint with `insecure`,
/// and an `http://` one with a `tls` block that asks for TLS, are refused as contradictions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsConfig {
    /// Plain text: no TLS at all (the other fields are then ignored).
    pub insecure: bool,
    /// PEM file of the CA certificates the server's certificate must chain to. Required unless
    /// [`insecure_skip_verify`](Self::insecure_skip_verify): no CA roots are built in.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the server (mutual TLS); needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`; needs `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Accepts any server certificate. **Dangerous**: the connection is encrypted but anyone
    /// on the path can pose as the server and read the spans; for tests only.
    pub insecure_skip_verify: bool,
    /// The name sent as SNI and verified against the server's certificate, instead of the
    /// endpoint's host (e.g. when dialling an IP address or a load balancer's name).
    pub server_name_override: Option<String>,
}

impl ClientTlsConfig {
    /// TLS verified against the CA certificates in `ca_file`.
    #[must_use]
    pub fn with_ca_file(mut self, ca_file: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(ca_file.into());
        self
    }

    /// Sets the client certificate and key (mutual TLS).
    #[must_use]
    pub fn with_client_cert(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
    }

    /// Sets [`insecure`](Self::insecure).
    #[must_use]
    pub fn with_insecure(mut self, insecure: bool) -> Self {
        self.insecure = insecure;
        self
    }

    /// Sets [`insecure_skip_verify`](Self::insecure_skip_verify).
    #[must_use]
    pub fn with_insecure_skip_verify(mut self, skip: bool) -> Self {
        self.insecure_skip_verify = skip;
        self
    }

    /// Sets [`server_name_override`](Self::server_name_override).
    #[must_use]
    pub fn with_server_name_override(mut self, name: impl Into<String>) -> Self {
        self.server_name_override = Some(name.into());
        self
    }
}

/// How the endpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// `http://…`
    Http,
    /// `https://…`
    Https,
    /// `host:port`
    None,
}

/// Whether a client to an endpoint written with `scheme` speaks TLS (see [`ClientTlsConfig`]).
pub(crate) fn wants_tls(
    name: &str,
    endpoint: &str,
    scheme: Scheme,
    tls: Option<&ClientTlsConfig>,
) -> Result<bool, ExportSetupError> {
    let conflict = |reason: &str| ExportSetupError::Tls {
        exporter: name.to_owned(),
        reason: format!("endpoint `{endpoint}` {reason}"),
    };
    match (scheme, tls) {
        (Scheme::Https, Some(t)) if t.insecure => Err(conflict(
            "uses https, but tls.insecure is true: write http:// for plain text",
        )),
        (Scheme::Https, _) => Ok(true),
        (Scheme::Http, Some(t)) if !t.insecure => Err(conflict(
            "uses http (plain text), but the tls block asks for TLS: write https:// or set \
             tls.insecure: true",
        )),
        (Scheme::Http, _) | (Scheme::None, None) => Ok(false),
        (Scheme::None, Some(t)) => Ok(!t.insecure),
    }
}

/// The connector of a client to `endpoint` (written with `scheme`) with `tls`, offering
/// `alpn`; `None` when the client speaks plain text (see [`wants_tls`]).
pub(crate) fn connector(
    name: &str,
    endpoint: &str,
    scheme: Scheme,
    tls: Option<&ClientTlsConfig>,
    alpn: &[&[u8]],
) -> Result<Option<TlsConnector>, ExportSetupError> {
    if !wants_tls(name, endpoint, scheme, tls)? {
        return Ok(None);
    }
    let tls = tls.cloned().unwrap_or_default();
    Ok(Some(TlsConnector::new(
        client_config(name, &tls, alpn)?,
        server_name_override(name, &tls)?,
    )))
}

/// The rustls client configuration of `tls`, offering `alpn` (e.g. `h2` for gRPC).
pub(crate) fn client_config(
    name: &str,
    tls: &ClientTlsConfig,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, ExportSetupError> {
    let setting = |reason: String| ExportSetupError::Tls {
        exporter: name.to_owned(),
        reason,
    };
    // An explicit provider: the process-wide default is ambiguous when several are linked in.
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| setting(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
        Arc::new(NoVerification(provider))
    } else {
        let Some(ca_file) = &tls.ca_file else {
            return Err(setting(
                "tls.ca_file is required to verify the server (no CA roots are built in; the \
                 system bundle, e.g. /etc/ssl/certs/ca-certificates.crt, will do)"
                    .into(),
            ));
        };
        let pem = read_pem(name, "tls.ca_file", ca_file)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| pem_error(name, "tls.ca_file", ca_file, e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| pem_error(name, "tls.ca_file", ca_file, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(pem_error(
                name,
                "tls.ca_file",
                ca_file,
                "no CERTIFICATE section".into(),
            ));
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| pem_error(name, "tls.ca_file", ca_file, e.to_string()))?
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_file), Some(key_file)) => {
            let pem = read_pem(name, "tls.cert_file", cert_file)?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error(name, "tls.cert_file", cert_file, e.to_string()))?;
            if certs.is_empty() {
                return Err(pem_error(
                    name,
                    "tls.cert_file",
                    cert_file,
                    "no CERTIFICATE section".into(),
                ));
            }
            let pem = read_pem(name, "tls.key_file", key_file)?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                pem_error(
                    name,
                    "tls.key_file",
                    key_file,
                    format!("no private key: {e}"),
                )
            })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                setting(format!(
                    "tls.cert_file `{}` and tls.key_file `{}` do not make a client \
                     certificate: {e}",
                    cert_file.display(),
                    key_file.display()
                ))
            })?
        }
        (Some(_), None) => return Err(setting("tls.cert_file needs tls.key_file".into())),
        (None, Some(_)) => return Err(setting("tls.key_file needs tls.cert_file".into())),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// `server_name_override` as a rustls server name.
pub(crate) fn server_name_override(
    name: &str,
    tls: &ClientTlsConfig,
) -> Result<Option<ServerName<'static>>, ExportSetupError> {
    tls.server_name_override
        .as_deref()
        .map(|n| {
            ServerName::try_from(n.to_owned()).map_err(|_| ExportSetupError::Tls {
                exporter: name.to_owned(),
                reason: format!("tls.server_name_override `{n}` is not a DNS name or IP address"),
            })
        })
        .transpose()
}

fn read_pem(name: &str, field: &'static str, path: &Path) -> Result<Vec<u8>, ExportSetupError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|source| ExportSetupError::TlsFile {
            exporter: name.to_owned(),
            field,
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(pem_error(
            name,
            field,
            path,
            format!("larger than {MAX_PEM_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

fn pem_error(name: &str, field: &'static str, path: &Path, reason: String) -> ExportSetupError {
    ExportSetupError::TlsPem {
        exporter: name.to_owned(),
        field,
        path: path.to_owned(),
        reason,
    }
}

/// `insecure_skip_verify`: any certificate passes; the handshake signatures are still checked
/// (so the session is at least with the holder of the certificate's key).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Dials TCP and runs the TLS handshake: the connector of a gRPC channel to a TLS downstream.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// A connector with `config`, verifying `server_name` instead of the host dialled if set.
    pub(crate) fn new(
        config: rustls::ClientConfig,
        server_name: Option<ServerName<'static>>,
    ) -> Self {
        Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        }
    }
}

impl tonic::codegen::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?;
            let tls = this.connect(host, uri.port_u16().unwrap_or(443)).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

impl TlsConnector {
    /// Dials `host:port` (brackets around an IPv6 address are taken off) and runs the
    /// handshake, verifying the override name if set, else `host`.
    pub(crate) async fn connect(&self, host: &str, port: u16) -> io::Result<TlsStream<TcpStream>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let server_name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.to_owned()).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("tls server name: {e}"))
            })?,
        };
        self.connector.connect(server_name, tcp).await
    }
}

#[cfg(test)]
mod tests;
