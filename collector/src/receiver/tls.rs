//! TLS for receivers: the server configuration from PEM files, and a listener that hands axum
//! only connections whose handshake is complete.
//!
//! Why handshakes run on their own tasks: `axum::serve` awaits `Listener::accept` in its accept
//! loop, so a listener that handshook inline would let one client that connects and sends
//! nothing (or garbage, slowly) stop every other client from connecting. Here the accept loop
//! only accepts TCP; each handshake is a task with a deadline, bounded in number, and finished
//! streams reach axum through a channel. Failed handshakes are dropped without a word: they are
//! port scanners, health checks and plain-text clients, and not worth a log line each.

use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{crypto, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::server::ReceiverError;
use crate::TlsConfig;

/// Longest a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_PENDING_HANDSHAKES: usize = 256;
/// Completed handshakes waiting for axum to take them.
const READY_QUEUE: usize = 64;
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

/// A listener yielding TLS streams whose handshake has completed.
#[derive(Debug)]
pub(super) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accept_task: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp`, handshaking with `acceptor`.
    pub(super) fn new(tcp: TcpListener, acceptor: TlsAcceptor, local_addr: SocketAddr) -> Self {
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let accept_task = tokio::spawn(accept_loop(tcp, acceptor, tx));
        Self {
            ready,
            local_addr,
            accept_task,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Stops accepting; handshakes in flight end at their deadline or when `ready` is gone.
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let permits = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return; // never closed
        };
        let (stream, addr) = match tcp.accept().await {
            Ok(conn) => {
                let _ = conn.0.set_nodelay(true);
                conn
            }
            Err(e) => {
                if !is_connection_error(&e) {
                    // Out of file descriptors and the like: give the process time to recover.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Ok(Ok(tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                let _ = ready.send((tls, addr)).await;
            }
        });
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests;
