//! TLS for receivers: the server configuration from PEM files, and the handshake of one
//! connection.
//!
//! Why handshakes run on their connection's own task, with a deadline: an accept loop that
//! handshook inline would let one client that connects and sends nothing (or garbage, slowly)
//! stop every other client from connecting. Here the accept loop only accepts TCP; each
//! handshake runs on its connection's task (so it counts against the listener's connection
//! limit) and must finish within [`HANDSHAKE_TIMEOUT`]. There is no separate bound on
//! handshakes in progress: one would let a few silent clients hold every turn for their whole
//! deadline, which is the starvation this avoids. Failed handshakes are dropped without a word: they are port scanners, health checks and plain-text
//! clients, and not worth a log line each.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{crypto, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::server::ReceiverError;
use crate::TlsConfig;

/// Longest a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest PEM file read (certificate chains are a few kilobytes).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Builds the TLS acceptor from the PEM files in `config`, offering HTTP/2 and HTTP/1.1 by ALPN.
pub(super) fn load_acceptor(config: &TlsConfig) -> Result<TlsAcceptor, ReceiverError> {
    let cert_pem = read_pem(&config.cert_file)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&config.cert_file, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(
            &config.cert_file,
            "no CERTIFICATE section".into(),
        ));
    }
    let key_pem = read_pem(&config.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error(&config.key_file, format!("no private key: {e}")))?;
    let config_error = |source| ReceiverError::TlsConfig {
        cert_file: config.cert_file.clone(),
        key_file: config.key_file.clone(),
        source,
    };
    // An explicit provider: the process-wide default is ambiguous when several are linked in.
    let provider = Arc::new(crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(config_error)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, ReceiverError> {
    let file_error = |source| ReceiverError::TlsFile {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(file_error)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(pem_error(
            path,
            format!("larger than {MAX_PEM_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

fn pem_error(path: &Path, reason: String) -> ReceiverError {
    ReceiverError::TlsPem {
        path: path.to_owned(),
        reason,
    }
}

/// Why a handshake gave no stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// The client did not finish within [`HANDSHAKE_TIMEOUT`].
    TimedOut,
    /// The client spoke something else than TLS, or hung up.
    Failed,
}

/// Handshakes connections with one acceptor.
pub(crate) struct Handshaker {
    acceptor: TlsAcceptor,
}

impl fmt::Debug for Handshaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshaker").finish_non_exhaustive()
    }
}

impl Handshaker {
    pub(crate) fn new(acceptor: TlsAcceptor) -> Self {
        Self { acceptor }
    }

    /// Handshakes `stream` within [`HANDSHAKE_TIMEOUT`].
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, HandshakeFailure> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(_)) => Err(HandshakeFailure::Failed),
            Err(_) => Err(HandshakeFailure::TimedOut),
        }
    }
}

#[cfg(test)]
mod tests;
