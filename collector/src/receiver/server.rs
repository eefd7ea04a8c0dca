//! [`OtlpReceiver`]: binding, serving and stopping one receiver, and what its handlers share.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::body::constant_time_eq;
use super::listener::{HttpServer, ListenerLimits};
use super::{grpc, http, tls};
use crate::{ReceiverConfig, ReceiverMetrics, Refused, SpanSink};
use traceq_exporter::otlp::OtlpSpan;

/// How long [`OtlpReceiver::shutdown`] lets in-flight requests finish before cutting them off
/// (4 s, so that with the cut-off the receivers stop within the 5 s the process allows beyond
/// `shutdown_timeout`).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
/// Most requests of one receiver being read, decoded or offered at once; more are refused as
/// retryable (so memory is bounded by this many times `max_request_bytes`).
const MAX_CONCURRENT_REQUESTS: usize = 256;
/// `Retry-After` suggested when [`MAX_CONCURRENT_REQUESTS`] is reached.
pub(super) const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The OTLP transport a receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// OTLP/gRPC: `TraceService/Export` over HTTP/2 (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP: `POST /v1/traces`, protobuf or JSON, over HTTP/1.1 or HTTP/2 (port 4318).
    Http,
}

/// A receiver that could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiverError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {address}")]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A TLS certificate or key file could not be read.
    #[error("cannot read TLS file {}", .path.display())]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A TLS certificate or key file holds no usable PEM item.
    #[error("invalid TLS file {}: {reason}", .path.display())]
    TlsPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate chain and the key were read but do not make a TLS server configuration
    /// (e.g. the key does not match the certificate, or its type is unsupported).
    #[error("TLS certificate {} and key {} are unusable", .cert_file.display(), .key_file.display())]
    TlsConfig {
        /// The certificate chain file.
        cert_file: PathBuf,
        /// The private key file.
        key_file: PathBuf,
        /// Why.
        #[source]
        source: tokio_rustls::rustls::Error,
    },
}

/// A running OTLP receiver: decodes export requests and offers their spans to a [`SpanSink`].
///
/// Dropping it stops accepting connections too (gracefully, without waiting); call
/// [`OtlpReceiver::shutdown`] to wait for in-flight requests.
pub(crate) struct OtlpReceiver {
    protocol: Protocol,
    local_addr: SocketAddr,
    server: HttpServer,
}

impl fmt::Debug for OtlpReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpReceiver")
            .field("protocol", &self.protocol)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl OtlpReceiver {
    /// Binds `config.endpoint` and starts serving on spawned tasks; returns once the socket is
    /// bound, so [`local_addr`](Self::local_addr) is final (useful with port 0).
    ///
    /// # Errors
    ///
    /// [`ReceiverError`] when the TLS files are unreadable or invalid (checked first) or the
    /// address cannot be bound.
    pub(crate) async fn start(
        protocol: Protocol,
        config: &ReceiverConfig,
        sink: Arc<dyn SpanSink>,
        metrics: Arc<ReceiverMetrics>,
    ) -> Result<Self, ReceiverError> {
        Self::start_with_limit(protocol, config, sink, metrics, MAX_CONCURRENT_REQUESTS).await
    }

    /// [`start`](Self::start) with a given bound on concurrent requests.
    pub(super) async fn start_with_limit(
        protocol: Protocol,
        config: &ReceiverConfig,
        sink: Arc<dyn SpanSink>,
        metrics: Arc<ReceiverMetrics>,
        max_concurrent_requests: usize,
    ) -> Result<Self, ReceiverError> {
        let acceptor = config.tls.as_ref().map(tls::load_acceptor).transpose()?;
        let bind_error = |source| ReceiverError::Bind {
            address: config.endpoint,
            source,
        };
        let tcp = TcpListener::bind(config.endpoint)
            .await
            .map_err(bind_error)?;
        let local_addr = tcp.local_addr().map_err(bind_error)?;
        let hard_stop = CancellationToken::new();
        let connections = metrics.connections.clone();
        let shared = Arc::new(Shared {
            sink,
            metrics,
            max_request_bytes: config.max_request_bytes,
            authorization: config.bearer_token.as_ref().map(|t| format!("Bearer {t}")),
            hard_stop: hard_stop.clone(),
            in_flight: Semaphore::new(max_concurrent_requests),
        });
        let router = match protocol {
            Protocol::Grpc => grpc::router(shared),
            Protocol::Http => http::router(shared),
        };
        let limits = ListenerLimits {
            max_connections: config.max_connections,
            read_header_timeout: config.read_header_timeout,
            idle_timeout: config.idle_timeout,
            shutdown_grace: SHUTDOWN_GRACE,
        };
        let server = HttpServer::start(
            tcp,
            acceptor.map(tls::Handshaker::new),
            router,
            limits,
            connections,
            hard_stop,
        )
        .map_err(bind_error)?;
        Ok(Self {
            protocol,
            local_addr,
            server,
        })
    }

    /// The address actually bound.
    #[must_use]
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and requests, closes idle and half-sent connections at
    /// once, lets in-flight requests finish for at most 4 seconds, then cuts off whatever is
    /// left (those requests are answered as refused, never half-accepted).
    pub(crate) async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// What every handler of one receiver shares.
pub(super) struct Shared {
    sink: Arc<dyn SpanSink>,
    metrics: Arc<ReceiverMetrics>,
    /// Largest request, after decompression.
    pub(super) max_request_bytes: usize,
    /// The exact `authorization` value required, if any.
    authorization: Option<String>,
    /// Cancelled when the shutdown grace period is over.
    pub(super) hard_stop: CancellationToken,
    /// One permit per request being read, decoded or offered.
    in_flight: Semaphore,
}

/// Whether `headers` carry exactly the `authorization` value `expected`, compared in constant
/// time.
pub(crate) fn authorization_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| constant_time_eq(v.as_bytes(), expected.as_bytes()))
}

impl Shared {
    /// Whether the request carries the configured bearer token (always, when none is set).
    pub(super) fn authorized(&self, headers: &HeaderMap) -> bool {
        self.authorization
            .as_deref()
            .is_none_or(|expected| authorization_is(headers, expected))
    }

    /// Admits a request for reading, or refuses it (counted) when too many are in flight.
    pub(super) fn admit(&self) -> Option<SemaphorePermit<'_>> {
        let permit = self.in_flight.try_acquire().ok();
        if permit.is_none() {
            self.metrics.requests_refused.fetch_add(1, Relaxed);
        }
        permit
    }

    /// Whether requests are only routed (see [`SpanSink::routes_only`]).
    pub(super) fn routes_only(&self) -> bool {
        self.sink.routes_only()
    }

    /// Counts a request rejected as malformed, oversized, unauthenticated or unsupported.
    pub(super) fn rejected(&self) {
        self.metrics.requests_rejected.fetch_add(1, Relaxed);
    }

    /// Counts a request refused before its body was read (the receiver is stopping).
    pub(super) fn refused_unread(&self) {
        self.metrics.requests_refused.fetch_add(1, Relaxed);
    }

    /// Offers a request's spans to the sink, counting the outcome.
    pub(super) async fn offer(&self, spans: Vec<OtlpSpan>) -> Result<(), Refused> {
        let n = spans.len() as u64;
        let result = if self.hard_stop.is_cancelled() {
            Err(Refused::ShuttingDown)
        } else {
            self.sink.offer(spans)
        };
        let result = match result {
            Ok(accepted) => accepted.durable().await,
            Err(refused) => Err(refused),
        };
        let (requests, span_counter) = match result {
            Ok(()) => (
                &self.metrics.requests_accepted,
                &self.metrics.spans_accepted,
            ),
            Err(_) => (&self.metrics.requests_refused, &self.metrics.spans_refused),
        };
        requests.fetch_add(1, Relaxed);
        span_counter.fetch_add(n, Relaxed);
        result
    }
}

/// Seconds for `Retry-After`, rounded up.
pub(super) fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::testing::{config, TestSink};

    #[test]
    fn public_types_should_be_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<OtlpReceiver>();
        check::<Protocol>();
        check::<ReceiverError>();
    }

    #[test]
    fn retry_after_should_round_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
    }

    #[tokio::test]
    async fn start_should_name_the_address_it_cannot_bind() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut cfg = config(1024);
        cfg.endpoint = taken.local_addr().unwrap();
        let err = OtlpReceiver::start(
            Protocol::Http,
            &cfg,
            TestSink::accepting(),
            Default::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ReceiverError::Bind { .. }), "{err:?}");
        assert!(err.to_string().contains(&cfg.endpoint.to_string()), "{err}");
    }

    #[tokio::test]
    async fn shutdown_should_close_the_listening_socket() {
        let sink = TestSink::accepting();
        let r = OtlpReceiver::start(Protocol::Grpc, &config(1024), sink, Default::default())
            .await
            .unwrap();
        let addr = r.local_addr();
        tokio::time::timeout(Duration::from_secs(10), r.shutdown())
            .await
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
