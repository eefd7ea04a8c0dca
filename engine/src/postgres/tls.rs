//! TLS to the database: the connection URL's `sslmode` and `sslrootcert` read as the module
//! docs of [`postgres`](super#tls) say, and the rustls connector they ask for.

use super::error::ConfigError;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Largest `sslrootcert` file read (CA bundles are a few hundred kilobytes).
const MAX_PEM_BYTES: u64 = 4 << 20;

/// What the URL asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS keys of a URL.
#[derive(Debug, Default)]
struct Params {
    mode: Option<Mode>,
    root: Option<PathBuf>,
    /// `sslcert` and `sslkey`: the client's certificate chain and key.
    client: Option<(PathBuf, PathBuf)>,
}

/// What a TLS connection is to verify against and present, as the URL named it (no file read
/// yet).
#[derive(Debug)]
pub(crate) struct Plan {
    root: PathBuf,
    /// `verify-ca`: the host's name is not checked.
    chain_only: bool,
    client: Option<(PathBuf, PathBuf)>,
}

/// The connection string's settings for `tokio-postgres`, and the TLS connector when TLS may be
/// used (`None`: plain text only), its PEM files read.
pub(crate) fn parse(
    url: &str,
) -> Result<(tokio_postgres::Config, Option<MakeRustlsConnect>), ConfigError> {
    let (config, plan) = settings(url)?;
    let connector = plan
        .map(|p| connector(&p.root, p.chain_only, p.client.as_ref()))
        .transpose()?;
    Ok((config, connector))
}

/// [`parse`] without reading any file: the settings, and the TLS plan if TLS may be used.
pub(crate) fn settings(url: &str) -> Result<(tokio_postgres::Config, Option<Plan>), ConfigError> {
    let (rest, params) = split_tls_params(url)?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| ConfigError::Url(e.to_string()))?;
    let mode = match params.mode {
        Some(mode) => mode,
        None => match config.get_ssl_mode() {
            SslMode::Disable => Mode::Disable,
            SslMode::Require => Mode::Require,
            _ => Mode::Prefer,
        },
    };
    match (mode, params.root) {
        (Mode::Disable, _) | (Mode::Prefer, None) if params.client.is_some() => {
            Err(ConfigError::Tls(format!(
                "sslcert and sslkey need TLS, and sslmode={} gives plain text",
                mode.name()
            )))
        }
        (Mode::Disable, _) | (Mode::Prefer, None) => {
            config.ssl_mode(SslMode::Disable);
            Ok((config, None))
        }
        (Mode::Require | Mode::VerifyCa | Mode::VerifyFull, None) => {
            Err(ConfigError::Tls(format!(
                "sslmode={} needs sslrootcert=PATH, the CA certificates the server's must chain \
                 to (a managed database's CA bundle, or the system bundle such as \
                 /etc/ssl/certs/ca-certificates.crt); a server that is not verified is never \
                 accepted",
                mode.name()
            )))
        }
        (mode, Some(root)) => {
            config.ssl_mode(if mode == Mode::Prefer {
                SslMode::Prefer
            } else {
                SslMode::Require
            });
            let plan = Plan {
                root,
                chain_only: mode == Mode::VerifyCa,
                client: params.client,
            };
            Ok((config, Some(plan)))
        }
    }
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }
}

/// The URL without its TLS keys (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`), and their
/// values. A `key=value` string is returned whole.
fn split_tls_params(url: &str) -> Result<(String, Params), ConfigError> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return Ok((url.to_owned(), Params::default()));
    };
    let mut params = Params::default();
    let (mut cert, mut key) = (None, None);
    let mut kept = Vec::new();
    let path = |key: &str, value: &str| -> Result<PathBuf, ConfigError> {
        let path = percent_decode(value)?;
        if path.is_empty() {
            return Err(ConfigError::Tls(format!("{key} is empty")));
        }
        Ok(PathBuf::from(path))
    };
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        match name {
            "sslmode" => {
                params.mode = Some(match percent_decode(value)?.as_str() {
                    "disable" => Mode::Disable,
                    "prefer" | "allow" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(ConfigError::Tls(format!(
                            "sslmode={other:?} is not one of disable, prefer, require, \
                             verify-ca, verify-full"
                        )))
                    }
                });
            }
            "sslrootcert" => {
                let root = path(name, value)?;
                if root.as_os_str() == "system" {
                    return Err(ConfigError::Tls(
                        "sslrootcert=system: no CA roots are built in; give the path of a CA \
                         bundle (the system's is often /etc/ssl/certs/ca-certificates.crt)"
                            .into(),
                    ));
                }
                params.root = Some(root);
            }
            "sslcert" => cert = Some(path(name, value)?),
            "sslkey" => key = Some(path(name, value)?),
            _ => kept.push(param),
        }
    }
    params.client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Tls(
                "sslcert and sslkey go together: the client's certificate and its key".into(),
            ))
        }
    };
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, params))
}

/// `%XX` escapes decoded (a path with spaces, say); anything else as it is.
fn percent_decode(text: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::Tls(format!("bad %-escape in {text:?}"));
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// A PEM file's bytes, `what` naming it in errors (`sslrootcert /etc/ca.pem: …`).
fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let bad = |reason: String| ConfigError::Tls(format!("{what} {}: {reason}", path.display()));
    let mut pem = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut pem))
        .map_err(|e| bad(e.to_string()))?;
    if pem.len() as u64 > MAX_PEM_BYTES {
        return Err(bad(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(pem)
}

/// The rustls connector verifying against the certificates in `root` (the host's name not
/// checked when `chain_only`: `verify-ca`), presenting `client`'s certificate when given.
fn connector(
    root: &Path,
    chain_only: bool,
    client: Option<&(PathBuf, PathBuf)>,
) -> Result<MakeRustlsConnect, ConfigError> {
    let bad = |what: &str, path: &Path, reason: String| {
        ConfigError::Tls(format!("{what} {}: {reason}", path.display()))
    };
    let pem = read_pem("sslrootcert", root)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad("sslrootcert", root, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| bad("sslrootcert", root, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("sslrootcert", root, "no CERTIFICATE section".into()));
    }
    // An explicit provider: the process-wide default is ambiguous when several are linked in.
    let provider = Arc::new(crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad("sslrootcert", root, e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if chain_only {
        Arc::new(ChainOnly(webpki))
    } else {
        webpki
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("sslrootcert", root, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            let pem = read_pem("sslcert", cert_path)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("sslcert", cert_path, e.to_string()))?;
            if chain.is_empty() {
                return Err(bad("sslcert", cert_path, "no CERTIFICATE section".into()));
            }
            let pem = read_pem("sslkey", key_path)?;
            let key = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| bad("sslkey", key_path, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("sslkey", key_path, e.to_string()))?
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `verify-ca`: the chain, validity and signatures are checked as always; a certificate that
/// does not name the host dialled is accepted.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str) -> String {
        match parse(url) {
            Err(ConfigError::Tls(reason)) => reason,
            other => panic!(
                "{url}: expected a TLS error, got {:?}",
                other.map(|(c, t)| (c, t.is_some()))
            ),
        }
    }

    #[test]
    fn urls_without_tls_should_stay_plain_and_keep_their_other_parameters() {
        for url in [
            "postgres://u@h/db",
            "postgres://u@h/db?sslmode=disable",
            "postgres://u@h/db?sslmode=prefer&application_name=w1",
            "host=h user=u sslmode=disable",
        ] {
            let (config, tls) = parse(url).unwrap();
            assert!(tls.is_none(), "{url}");
            assert_eq!(config.get_ssl_mode(), SslMode::Disable, "{url}");
        }
        let (config, _) = parse("postgres://u@h/db?sslmode=disable&application_name=w1").unwrap();
        assert_eq!(config.get_application_name(), Some("w1"));
    }

    #[test]
    fn modes_that_verify_should_need_a_root_certificate() {
        for mode in ["require", "verify-ca", "verify-full"] {
            let why = reason(&format!("postgres://u@h/db?sslmode={mode}"));
            assert!(
                why.contains(&format!("sslmode={mode} needs sslrootcert")),
                "{why}"
            );
        }
        // The key=value form's `require` is read by tokio-postgres, and refused the same way.
        assert!(reason("host=h user=u sslmode=require").contains("needs sslrootcert"));
    }

    #[test]
    fn bad_tls_parameters_should_be_refused_with_the_reason() {
        assert!(reason("postgres://u@h/db?sslmode=sometimes").contains("is not one of"));
        assert!(
            reason("postgres://u@h/db?sslmode=require&sslrootcert=system")
                .contains("no CA roots are built in")
        );
        assert!(reason("postgres://u@h/db?sslrootcert=%zz").contains("bad %-escape"));
        let missing =
            reason("postgres://u@h/db?sslmode=verify-full&sslrootcert=/no/such%20file.pem");
        assert!(
            missing.contains("sslrootcert /no/such file.pem"),
            "{missing}"
        );
        let dir = std::env::temp_dir().join(format!("traceq-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let why = reason(&format!(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert={}",
            empty.display()
        ));
        assert!(why.contains("no CERTIFICATE section"), "{why}");
        let half =
            reason("postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem&sslcert=/c.pem");
        assert!(half.contains("sslcert and sslkey go together"), "{half}");
        let plain = reason("postgres://u@h/db?sslmode=disable&sslcert=/c.pem&sslkey=/k.pem");
        assert!(plain.contains("need TLS"), "{plain}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
