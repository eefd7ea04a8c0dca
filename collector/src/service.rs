//! [`Collector`]: receivers, pipeline, exporters and the admin endpoint, started and stopped
//! together.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{CollectorConfig, DEFAULT_IDLE_TIMEOUT, DEFAULT_READ_HEADER_TIMEOUT};
use super::metrics::{get as read, ConnectionMetrics, ReceiverMetrics};
use super::pipeline::Pipeline;
use super::prometheus::{render, Snapshot};
use super::receiver::{
    authorization_is, HttpServer, ListenerLimits, OtlpReceiver, Protocol, ReceiverError,
};
use super::route::Router as TraceRouter;
use super::storage::{Log, StorageError};
use traceq_exporter::export::ExporterMetrics;
use traceq_exporter::export::{ExportSetupError, ExporterQueue};

mod reload;

pub use reload::{ReloadReport, Reloader};

/// Most connections the admin endpoint keeps open at once (scrapers and probes are few).
const ADMIN_MAX_CONNECTIONS: usize = 32;
/// How long the admin endpoint's shutdown lets a scrape in flight finish.
const ADMIN_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The admin endpoint's connection bounds.
const ADMIN_LIMITS: ListenerLimits = ListenerLimits {
    max_connections: ADMIN_MAX_CONNECTIONS,
    read_header_timeout: DEFAULT_READ_HEADER_TIMEOUT,
    idle_timeout: DEFAULT_IDLE_TIMEOUT,
    shutdown_grace: ADMIN_SHUTDOWN_GRACE,
};

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectorError {
    /// The `tail_sampling` configuration is invalid.
    #[error("processors.tail_sampling: {0}")]
    Sampler(traceq_sampler::ConfigError),
    /// An exporter could not be set up.
    #[error(transparent)]
    Exporter(#[from] ExportSetupError),
    /// A receiver could not start.
    #[error(transparent)]
    Receiver(#[from] ReceiverError),
    /// The admin endpoint could not bind.
    #[error("service.telemetry.metrics.address: cannot listen on {address}: {source}")]
    Admin {
        /// The address.
        address: SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// The decision thread could not start.
    #[error("cannot start the decision thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The storage could not open.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Counters summed over receivers and exporters: what the progress line and the shutdown
/// summary show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CollectorStatus {
    /// Spans accepted by the receivers.
    pub spans_received: u64,
    /// Spans refused with a retryable error.
    pub spans_refused: u64,
    /// Requests rejected as invalid.
    pub requests_rejected: u64,
    /// Traces kept by the sampler.
    pub traces_kept: u64,
    /// Traces dropped by the sampler.
    pub traces_dropped: u64,
    /// Spans kept and handed to the exporters.
    pub spans_kept: u64,
    /// Traces in the buffer now.
    pub traces_buffered: u64,
    /// Spans delivered, summed over exporters.
    pub spans_exported: u64,
    /// Spans given up by exporters (queue full, permanent error, retries exhausted, rejected
    /// by the downstream), plus kept spans too large alone for `max_export_bytes`.
    pub spans_export_dropped: u64,
    /// Spans in the buffer now, in traces not yet decided.
    pub spans_buffered: u64,
    /// Spans in exporter queues now (waiting or being sent), summed over exporters.
    pub spans_queued: u64,
    /// Kept spans neither delivered nor given up yet, summed over exporters: those in the batch
    /// being filled, in the queues and being sent.
    pub spans_undelivered: u64,
}

/// A cheap handle on a running collector's counters that outlives a borrow of it, e.g. to
/// report what is left while [`Collector::shutdown`] runs.
#[derive(Debug, Clone)]
pub struct StatusHandle(Arc<Shared>);

impl StatusHandle {
    /// The counters now.
    #[must_use]
    pub fn status(&self) -> CollectorStatus {
        self.0.status()
    }
}

/// An exporter's counters as `/metrics` and the status line show them.
#[derive(Debug)]
struct ExporterEntry {
    name: String,
    metrics: Arc<ExporterMetrics>,
    /// `spans_kept` and `spans_too_large` when the exporter joined (0 for those of the start;
    /// later for one a reload added, which never saw what was kept before).
    kept_before: u64,
    too_large_before: u64,
}

#[derive(Debug)]
struct Shared {
    pipeline: Arc<Pipeline>,
    receivers: Vec<(&'static str, Arc<ReceiverMetrics>)>,
    exporters: parking_lot::RwLock<Vec<ExporterEntry>>,
    /// The configuration running now (what a reload is compared with).
    config: parking_lot::Mutex<CollectorConfig>,
    healthy: AtomicBool,
    /// The exact `authorization` value `/metrics` requires, if any.
    metrics_authorization: Option<String>,
    admin_connections: Arc<ConnectionMetrics>,
}

impl Shared {
    fn metrics_text(&self) -> String {
        let exporters = self.exporters.read();
        render(&Snapshot {
            receivers: self.receivers.iter().map(|(t, m)| (*t, &**m)).collect(),
            exporters: exporters
                .iter()
                .map(|e| (e.name.as_str(), &*e.metrics))
                .collect(),
            sampler: self.pipeline.sampler_metrics(),
            spans_kept: read(&self.pipeline.spans_kept),
            admin_connections: &self.admin_connections,
            spans_too_large: read(&self.pipeline.spans_too_large),
            storage: self.pipeline.log().map(|l| l.metrics()),
            router: self.pipeline.router().map(|r| &**r),
        })
    }

    fn status(&self) -> CollectorStatus {
        let mut s = CollectorStatus::default();
        for (_, r) in &self.receivers {
            s.spans_received += read(&r.spans_accepted);
            s.spans_refused += read(&r.spans_refused);
            s.requests_rejected += read(&r.requests_rejected);
        }
        s.spans_kept = read(&self.pipeline.spans_kept);
        let too_large = read(&self.pipeline.spans_too_large);
        s.spans_export_dropped += too_large;
        for e in self.exporters.read().iter() {
            let m = &e.metrics;
            let (sent, dropped) = (read(&m.spans_sent), read(&m.spans_dropped));
            s.spans_exported += sent;
            s.spans_export_dropped += dropped;
            s.spans_queued += read(&m.queue_spans);
            // Every kept span since the exporter joined goes to it, but those too large.
            let owed = s.spans_kept.saturating_sub(e.kept_before);
            let too_large = too_large.saturating_sub(e.too_large_before);
            s.spans_undelivered += owed.saturating_sub(sent + dropped + too_large);
        }
        if let Some(router) = self.pipeline.router() {
            // Each kept span goes to one backend.
            let (mut sent, mut dropped) = (0, read(&router.metrics.unroutable_spans));
            for b in router.backend_metrics() {
                sent += read(&b.metrics.spans_sent);
                dropped += read(&b.metrics.spans_dropped);
                s.spans_queued += read(&b.metrics.queue_spans);
            }
            s.spans_exported += sent;
            s.spans_export_dropped += dropped;
            s.spans_undelivered += s.spans_kept.saturating_sub(sent + dropped + too_large);
        }
        if let Some(m) = self.pipeline.sampler_metrics() {
            s.traces_kept = m.global_count_traces_sampled;
            s.traces_dropped = m.global_count_traces_not_sampled;
            s.traces_buffered = m.sampling_traces_on_memory;
            s.spans_buffered = m.spans_buffered;
        }
        s
    }
}

/// A running collector.
///
/// # Examples
/// ```no_run
/// use traceq_collector::{Collector, CollectorConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = CollectorConfig::from_yaml("exporters: {file: {path: kept.jsonl}}")?;
/// let collector = Collector::start(&config).await?;
/// println!("OTLP/gRPC on {:?}", collector.grpc_addr());
/// tokio::signal::ctrl_c().await?;
/// let status = collector.shutdown().await;
/// println!("kept {} traces", status.traces_kept);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Collector {
    shared: Arc<Shared>,
    receivers: Vec<OtlpReceiver>,
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    admin: Option<HttpServer>,
    decider: Option<std::thread::JoinHandle<()>>,
    shutdown_timeout: std::time::Duration,
}

/// Reopens the file exporters' files, for log rotation: after the files were renamed, lines
/// go to new files at the configured paths. Cheap to clone and usable from another task while
/// the collector runs; after its shutdown a reopen only opens the files again.
#[derive(Debug, Clone)]
pub struct FileReopener {
    shared: Arc<Shared>,
}

impl FileReopener {
    /// Syncs each file exporter's file and opens its path anew; returns how many were
    /// reopened. A file that cannot be reopened stays in use.
    ///
    /// # Errors
    ///
    /// The first file that could not be reopened (the others are still tried).
    pub async fn reopen(&self) -> Result<usize, CollectorError> {
        let mut reopened = 0;
        let mut first_error = None;
        for exporter in &self.shared.pipeline.outputs().exporters {
            match exporter.reopen().await {
                Ok(true) => reopened += 1,
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(CollectorError::Exporter(e));
                }
            }
        }
        first_error.map_or(Ok(reopened), Err)
    }
}

/// Sets the `loadbalancing` exporter's static backends while the collector runs (see
/// [`Collector::set_backends`]), e.g. from a SIGHUP handler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BackendSetter {
    shared: Arc<Shared>,
}

impl BackendSetter {
    /// See [`Collector::set_backends`].
    ///
    /// # Errors
    ///
    /// As [`Collector::set_backends`].
    pub fn set(&self, endpoints: &[String]) -> Result<bool, CollectorError> {
        match self.shared.pipeline.router() {
            Some(router) if router.is_static() => {
                router.update(endpoints)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The current backends, sorted (empty without a `loadbalancing` exporter).
    #[must_use]
    pub fn backends(&self) -> Vec<String> {
        self.shared
            .pipeline
            .router()
            .map(|r| r.backends())
            .unwrap_or_default()
    }
}

impl From<traceq_sampler::ConfigError> for CollectorError {
    fn from(e: traceq_sampler::ConfigError) -> Self {
        Self::Sampler(e)
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.healthy.load(Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(expected) = &shared.metrics_authorization {
        if !authorization_is(&headers, expected) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"traceq\"")],
                "unauthorized\n",
            )
                .into_response();
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics_text(),
    )
        .into_response()
}

impl Collector {
    /// Starts exporters, the pipeline, the receivers and the admin endpoint, in that order (so
    /// nothing is accepted before it has somewhere to go). Must be called inside a tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`CollectorError`] when a part cannot start; parts already started are stopped.
    pub async fn start(config: &CollectorConfig) -> Result<Self, CollectorError> {
        let mut exporters = Vec::with_capacity(config.exporters.len());
        let mut exporter_metrics = Vec::with_capacity(config.exporters.len());
        for e in &config.exporters {
            let metrics = Arc::new(ExporterMetrics::default());
            exporters.push(ExporterQueue::start(e, metrics.clone())?);
            exporter_metrics.push((e.name.clone(), metrics));
        }
        let (log, segments) = match &config.storage {
            Some(storage) => {
                let (log, segments) = Log::open(storage)?;
                (Some(Arc::new(log)), segments)
            }
            None => (None, Vec::new()),
        };
        let router = match &config.loadbalancing {
            Some(lb) => Some(TraceRouter::start(lb).await?),
            None => None,
        };
        let pipeline = Arc::new(Pipeline::new(config, exporters, log.clone(), router)?);
        if let Some(log) = &log {
            let replaying = pipeline.clone();
            // Decoding and re-buffering the log is CPU work: off the async workers.
            let report = tokio::task::spawn_blocking(move || replaying.replay(&segments))
                .await
                .unwrap_or_default();
            if report.segments > 0 {
                eprintln!(
                    "traceq: storage: replayed {} requests ({} spans: {} pending traces rebuilt, \
                     {} kept spans queued again) from {} segments{}",
                    report.requests,
                    report.spans,
                    report.traces,
                    report.requeued,
                    report.segments,
                    if report.corrupt > 0 {
                        format!(
                            "; {} damaged records, {} bytes skipped",
                            report.corrupt, report.skipped_bytes
                        )
                    } else {
                        String::new()
                    }
                );
            }
            log.start().map_err(CollectorError::Thread)?;
        }
        let decider = pipeline.spawn_decider().map_err(CollectorError::Thread)?;
        let mut receiver_metrics = Vec::new();
        let mut receivers = Vec::new();
        let mut grpc_addr = None;
        let mut http_addr = None;
        let endpoints = [
            (Protocol::Grpc, "grpc", &config.grpc),
            (Protocol::Http, "http", &config.http),
        ];
        let mut failure = None;
        for (protocol, transport, rc) in endpoints {
            let Some(rc) = rc else { continue };
            let metrics = Arc::new(ReceiverMetrics::default());
            match OtlpReceiver::start(protocol, rc, pipeline.clone(), metrics.clone()).await {
                Ok(r) => {
                    match protocol {
                        Protocol::Grpc => grpc_addr = Some(r.local_addr()),
                        Protocol::Http => http_addr = Some(r.local_addr()),
                    }
                    receivers.push(r);
                    receiver_metrics.push((transport, metrics));
                }
                Err(e) => {
                    failure = Some(CollectorError::from(e));
                    break;
                }
            }
        }
        let shared = Arc::new(Shared {
            pipeline,
            receivers: receiver_metrics,
            exporters: parking_lot::RwLock::new(
                exporter_metrics
                    .into_iter()
                    .map(|(name, metrics)| ExporterEntry {
                        name,
                        metrics,
                        kept_before: 0,
                        too_large_before: 0,
                    })
                    .collect(),
            ),
            config: parking_lot::Mutex::new(config.clone()),
            healthy: AtomicBool::new(true),
            metrics_authorization: config
                .metrics_bearer_token
                .as_ref()
                .map(|t| format!("Bearer {t}")),
            admin_connections: Arc::default(),
        });
        let mut collector = Self {
            shared,
            receivers,
            grpc_addr,
            http_addr,
            admin_addr: None,
            admin: None,
            decider: Some(decider),
            shutdown_timeout: config.shutdown_timeout,
        };
        if failure.is_none() {
            if let Some(address) = config.admin {
                let app = Router::new()
                    .route("/healthz", get(healthz))
                    .route("/metrics", get(metrics))
                    .with_state(collector.shared.clone());
                let started = tokio::net::TcpListener::bind(address)
                    .await
                    .and_then(|listener| {
                        HttpServer::start(
                            listener,
                            None,
                            app,
                            ADMIN_LIMITS,
                            collector.shared.admin_connections.clone(),
                            CancellationToken::new(),
                        )
                    });
                match started {
                    Ok(server) => {
                        collector.admin_addr = Some(server.local_addr());
                        collector.admin = Some(server);
                    }
                    Err(source) => failure = Some(CollectorError::Admin { address, source }),
                }
            }
        }
        match failure {
            None => Ok(collector),
            Some(e) => {
                collector.shutdown().await;
                Err(e)
            }
        }
    }

    /// Address of the OTLP/gRPC receiver, if enabled.
    #[must_use]
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// Address of the OTLP/HTTP receiver, if enabled.
    #[must_use]
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Address of `/metrics` and `/healthz`, if enabled.
    #[must_use]
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Summed counters, for a progress line.
    #[must_use]
    pub fn status(&self) -> CollectorStatus {
        self.shared.status()
    }

    /// A handle on the counters that stays usable while [`shutdown`](Self::shutdown) runs.
    #[must_use]
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle(self.shared.clone())
    }

    /// A handle that reopens the file exporters' files (see [`FileReopener`]), usable while
    /// the collector runs, e.g. from a `SIGHUP` handler.
    #[must_use]
    pub fn file_reopener(&self) -> FileReopener {
        FileReopener {
            shared: self.shared.clone(),
        }
    }

    /// Reopens the file exporters' files at their paths, for log rotation: see
    /// [`FileReopener::reopen`].
    ///
    /// # Errors
    ///
    /// The first file that could not be reopened (the others are still tried).
    pub async fn reopen_files(&self) -> Result<usize, CollectorError> {
        self.file_reopener().reopen().await
    }

    /// Sets the `loadbalancing` exporter's static backends (what SIGHUP does with the
    /// re-read configuration's `resolver.static.hostnames`); returns whether there is such an
    /// exporter with a static resolver.
    ///
    /// # Errors
    ///
    /// [`CollectorError::Exporter`] when a new backend's exporter cannot be set up (the
    /// backends stay as they were).
    pub fn set_backends(&self, endpoints: &[String]) -> Result<bool, CollectorError> {
        self.backend_setter().set(endpoints)
    }

    /// The `loadbalancing` exporter's current backends, sorted (empty without one).
    #[must_use]
    pub fn backends(&self) -> Vec<String> {
        self.backend_setter().backends()
    }

    /// A handle that sets the static backends while the collector runs.
    #[must_use]
    pub fn backend_setter(&self) -> BackendSetter {
        BackendSetter {
            shared: self.shared.clone(),
        }
    }

    /// Applies `config` to the running collector: the `tail_sampling` policies, the exporters
    /// and the `loadbalancing` exporter's static backends change for traces decided from now
    /// on; buffered spans are kept. Settings that cannot change while running (receivers,
    /// storage, the buffer's bounds, ...) are left as they are and listed in
    /// [`ReloadReport::needs_restart`]. Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`CollectorError::Sampler`] for invalid policies, [`CollectorError::Exporter`] for an
    /// exporter (or backend) that cannot be set up. Either way nothing changed.
    pub fn reload(&self, config: &CollectorConfig) -> Result<ReloadReport, CollectorError> {
        self.reloader().reload(config)
    }

    /// A handle that reloads the configuration while the collector runs (see
    /// [`reload`](Self::reload)), e.g. from a SIGHUP handler.
    #[must_use]
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
        }
    }

    /// The Prometheus text `/metrics` serves.
    #[must_use]
    pub fn metrics_text(&self) -> String {
        self.shared.metrics_text()
    }

    /// Stops receiving (idle and half-sent connections are closed at once, requests in flight
    /// get at most 4 seconds), decides every pending trace, and flushes the exporters until the
    /// shutdown deadline; what is still queued then is counted as dropped. `/healthz` answers
    /// 503 meanwhile, and the admin endpoint closes last (a scrape in flight gets 1 second).
    /// Returns the final counters.
    pub async fn shutdown(mut self) -> CollectorStatus {
        let deadline = Instant::now() + self.shutdown_timeout;
        self.shared.healthy.store(false, Relaxed);
        futures::future::join_all(self.receivers.drain(..).map(OtlpReceiver::shutdown)).await;
        let pipeline = self.shared.pipeline.clone();
        let decider = self.decider.take();
        // Deciding everything pending is CPU work under locks: off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            pipeline.close();
            if let Some(d) = decider {
                let _ = d.join();
            }
        })
        .await;
        let outputs = self.shared.pipeline.outputs();
        futures::future::join_all(outputs.exporters.iter().map(|e| e.shutdown(deadline))).await;
        self.shared.pipeline.shutdown_retired(deadline).await;
        if let Some(router) = self.shared.pipeline.router() {
            router.shutdown(deadline).await;
        }
        // What the exporters left undelivered stays in the log for the next start.
        if let Some(log) = self.shared.pipeline.log().cloned() {
            let _ = tokio::task::spawn_blocking(move || log.close()).await;
        }
        if let Some(admin) = self.admin.take() {
            admin.shutdown().await;
        }
        self.shared.status()
    }
}
