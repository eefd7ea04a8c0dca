//! The `loadbalancing` exporter: routes each span by its trace id to one of a set of backends
//! (sampling collectors), so every span of a trace reaches the same one.
//!
//! Past one machine, tail sampling needs every span of a trace on one instance; a first tier
//! of routers (this exporter, with `service.sampling: false`) in front of the sampling tier
//! does that, as the OpenTelemetry Collector's `loadbalancing` exporter with `routing_key:
//! traceID` does. What it does:
//!
//! - Backends come from a static list (re-read on SIGHUP) or a DNS name resolved every
//!   `interval` (every address it answers, on `port`). They sit on a consistent-hashing ring
//!   ([`ring`]), so every router with the same backends picks the same backend for a trace,
//!   and a membership change moves only about 1/N of the trace ids.
//! - Each backend has its own exporter: a bounded queue, retries with backoff, the shared OTLP
//!   client. A backend that is down keeps its spans queued and retried; they are never routed
//!   to another backend (a trace split across samplers is decided twice, and neither half
//!   sees the whole).
//! - On a router tier (sampling off, no other exporter), receivers read only each span's trace
//!   id and the request's framing (see `decode_request_for_routing`); the samplers validate.
//!   Kept batches are regrouped per backend under their original resource and scope.
//! - A backend removed from the membership is drained (its queue is delivered until the
//!   shutdown deadline) and stopped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use traceq_exporter::export::{
    ExportBatch, ExportSetupError, ExportTarget, ExporterConfig, ExporterMetrics, ExporterQueue,
};
use traceq_exporter::otlp::{encode_request, OtlpSpan};

pub(crate) mod ring;

use ring::Ring;

/// Default interval between DNS resolutions.
pub const DEFAULT_DNS_INTERVAL: Duration = Duration::from_secs(5);
/// Default longest one DNS resolution may take.
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a backend removed from the membership gets to deliver its queue.
const RETIRE_GRACE: Duration = Duration::from_secs(30);

/// Where the backends come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolver {
    /// A fixed list of `host:port` endpoints (re-read from the configuration on SIGHUP).
    Static(Vec<String>),
    /// Every address `hostname` resolves to, on `port`, resolved every `interval`.
    Dns {
        /// The name to resolve.
        hostname: String,
        /// The port of every backend.
        port: u16,
        /// How often to resolve.
        interval: Duration,
        /// Longest one resolution may take.
        timeout: Duration,
    },
}

/// The `loadbalancing` exporter's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadBalancingConfig {
    /// The exporter's name from the configuration, e.g. `loadbalancing`.
    pub name: String,
    /// How each backend is exported to (`protocol.otlp`): its target's endpoint is replaced by
    /// each backend's.
    pub protocol: ExporterConfig,
    /// Where the backends come from.
    pub resolver: Resolver,
}

/// One backend and its exporter.
#[derive(Debug)]
struct Backend {
    endpoint: String,
    queue: Arc<ExporterQueue>,
    metrics: Arc<ExporterMetrics>,
}

/// The ring and the backends, in the ring's order.
#[derive(Debug, Default)]
struct Members {
    ring: Ring,
    backends: Vec<Arc<Backend>>,
}

/// Counters of the router as a whole.
#[derive(Debug, Default)]
pub(crate) struct RouterMetrics {
    pub(crate) membership_changes: AtomicU64,
    pub(crate) resolve_failures: AtomicU64,
    pub(crate) unroutable_spans: AtomicU64,
}

/// A backend's counters, for `/metrics` and the status line.
#[derive(Debug, Clone)]
pub(crate) struct BackendMetrics {
    pub(crate) endpoint: String,
    pub(crate) metrics: Arc<ExporterMetrics>,
    pub(crate) current: bool,
}

/// The running exporter.
#[derive(Debug)]
pub(crate) struct Router {
    config: LoadBalancingConfig,
    members: RwLock<Arc<Members>>,
    /// Removed from the membership, still delivering their queues (or done).
    retired: Mutex<Vec<(Arc<Backend>, JoinHandle<()>)>>,
    /// Every backend ever started, for metrics (counters only go up).
    seen: Mutex<Vec<Arc<Backend>>>,
    resolver: Mutex<Option<JoinHandle<()>>>,
    pub(crate) metrics: RouterMetrics,
    warned_unroutable: AtomicBool,
    warned_resolve: AtomicBool,
}

/// Resolves `hostname` to every address it has, as `ip:port` endpoints, sorted.
async fn resolve(hostname: &str, port: u16, timeout: Duration) -> std::io::Result<Vec<String>> {
    let lookup = tokio::net::lookup_host((hostname, port));
    let addrs = tokio::time::timeout(timeout, lookup)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))??;
    let mut out: Vec<String> = addrs.map(|a| a.to_string()).collect();
    out.sort();
    out.dedup();
    Ok(out)
}

impl Router {
    /// Starts the exporter: resolves the backends once (a DNS failure starts it with none,
    /// retried every interval) and starts their exporters. Must be called inside a tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`ExportSetupError`] when a backend's exporter cannot be set up.
    pub(crate) async fn start(config: &LoadBalancingConfig) -> Result<Arc<Self>, ExportSetupError> {
        let router = Arc::new(Self {
            config: config.clone(),
            members: RwLock::new(Arc::default()),
            retired: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            resolver: Mutex::new(None),
            metrics: RouterMetrics::default(),
            warned_unroutable: AtomicBool::new(false),
            warned_resolve: AtomicBool::new(false),
        });
        match &config.resolver {
            Resolver::Static(list) => router.update(list)?,
            Resolver::Dns {
                hostname,
                port,
                interval,
                timeout,
            } => {
                router.resolve_once(hostname, *port, *timeout).await;
                let me = Arc::downgrade(&router);
                let (hostname, port, interval, timeout) =
                    (hostname.clone(), *port, *interval, *timeout);
                let task = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let Some(router) = me.upgrade() else { return };
                        router.resolve_once(&hostname, port, timeout).await;
                    }
                });
                *router.resolver.lock() = Some(task);
            }
        }
        Ok(router)
    }

    async fn resolve_once(&self, hostname: &str, port: u16, timeout: Duration) {
        match resolve(hostname, port, timeout).await {
            Ok(endpoints) => {
                if let Err(e) = self.update(&endpoints) {
                    eprintln!("traceq: exporter {}: {e}", self.config.name);
                }
            }
            Err(e) => {
                self.metrics.resolve_failures.fetch_add(1, Relaxed);
                if !self.warned_resolve.swap(true, Relaxed) {
                    eprintln!(
                        "traceq: exporter {}: cannot resolve {hostname}: {e}; keeping the \
                         backends as they are (further failures are counted in \
                         traceq_loadbalancer_resolve_failures_total)",
                        self.config.name
                    );
                }
            }
        }
    }

    /// The exporter's name.
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether the backends come from a static list (which SIGHUP may replace).
    pub(crate) fn is_static(&self) -> bool {
        matches!(self.config.resolver, Resolver::Static(_))
    }

    /// The largest request a backend takes (`max_export_bytes` of `protocol.otlp`).
    pub(crate) fn max_export_bytes(&self) -> usize {
        self.config.protocol.max_export_bytes
    }

    /// Sets the backends to `endpoints`: new ones get an exporter, removed ones are drained
    /// and stopped; the ring is rebuilt. Nothing changes when the set is the same.
    ///
    /// # Errors
    ///
    /// [`ExportSetupError`] when a new backend's exporter cannot be set up (nothing changes
    /// then).
    pub(crate) fn update(&self, endpoints: &[String]) -> Result<(), ExportSetupError> {
        let ring = Ring::new(endpoints);
        let current = self.members.read().clone();
        if ring.backends() == current.ring.backends() {
            return Ok(());
        }
        let mut by_endpoint: HashMap<&str, &Arc<Backend>> = current
            .backends
            .iter()
            .map(|b| (b.endpoint.as_str(), b))
            .collect();
        let mut backends = Vec::with_capacity(ring.backends().len());
        let mut started = Vec::new();
        for endpoint in ring.backends() {
            match by_endpoint.remove(endpoint.as_str()) {
                Some(b) => backends.push(b.clone()),
                None => {
                    let backend = Arc::new(self.start_backend(endpoint)?);
                    started.push(backend.clone());
                    backends.push(backend);
                }
            }
        }
        self.seen.lock().extend(started);
        let removed: Vec<Arc<Backend>> = by_endpoint.into_values().cloned().collect();
        *self.members.write() = Arc::new(Members { ring, backends });
        self.metrics.membership_changes.fetch_add(1, Relaxed);
        for backend in removed {
            let draining = backend.clone();
            let task = tokio::spawn(async move {
                draining.queue.shutdown(Instant::now() + RETIRE_GRACE).await;
            });
            self.retired.lock().push((backend, task));
        }
        Ok(())
    }

    fn start_backend(&self, endpoint: &str) -> Result<Backend, ExportSetupError> {
        let mut config = self.config.protocol.clone();
        config.name = format!("{}/{endpoint}", self.config.name);
        config.target = match config.target {
            ExportTarget::OtlpGrpc {
                compression,
                timeout,
                headers,
                ..
            } => ExportTarget::OtlpGrpc {
                endpoint: endpoint.to_owned(),
                compression,
                timeout,
                headers,
            },
            other => other,
        };
        let metrics = Arc::new(ExporterMetrics::default());
        let queue = Arc::new(ExporterQueue::start(&config, metrics.clone())?);
        Ok(Backend {
            endpoint: endpoint.to_owned(),
            queue,
            metrics,
        })
    }

    /// Routes `spans` by trace id: each backend gets one request of its spans, under their
    /// resource and scope.
    pub(crate) fn route(&self, spans: Vec<OtlpSpan>) {
        let members = self.members.read().clone();
        if members.backends.is_empty() {
            self.metrics
                .unroutable_spans
                .fetch_add(spans.len() as u64, Relaxed);
            if !self.warned_unroutable.swap(true, Relaxed) {
                eprintln!(
                    "traceq: exporter {}: no backend to route to; dropping spans (counted in \
                     traceq_loadbalancer_unroutable_spans_total)",
                    self.config.name
                );
            }
            return;
        }
        let mut groups: Vec<Vec<OtlpSpan>> =
            (0..members.backends.len()).map(|_| Vec::new()).collect();
        for span in spans {
            let i = members.ring.backend_of(&span.trace_id_bytes()).unwrap_or(0);
            groups[i].push(span);
        }
        for (group, backend) in groups.iter().zip(&members.backends) {
            if group.is_empty() {
                continue;
            }
            backend.queue.push(ExportBatch {
                body: Bytes::from(encode_request(group)),
                spans: group.len(),
            });
        }
    }

    /// Every backend's counters, current and removed.
    pub(crate) fn backend_metrics(&self) -> Vec<BackendMetrics> {
        let members = self.members.read().clone();
        self.seen
            .lock()
            .iter()
            .map(|b| BackendMetrics {
                endpoint: b.endpoint.clone(),
                metrics: b.metrics.clone(),
                current: members.backends.iter().any(|m| Arc::ptr_eq(m, b)),
            })
            .collect()
    }

    /// The current backends, in ring order.
    pub(crate) fn backends(&self) -> Vec<String> {
        self.members.read().ring.backends().to_vec()
    }

    /// Stops resolving, delivers every backend's queue until `deadline`, then stops them.
    pub(crate) async fn shutdown(&self, deadline: Instant) {
        if let Some(task) = self.resolver.lock().take() {
            task.abort();
        }
        let members = self.members.read().clone();
        let retired: Vec<_> = std::mem::take(&mut *self.retired.lock());
        let current = members.backends.iter().map(|b| {
            let b = b.clone();
            async move { b.queue.shutdown(deadline).await }
        });
        futures::future::join_all(current).await;
        for (backend, task) in retired {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                backend.queue.shutdown(Instant::now()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use traceq_exporter::client::Compression;

    use super::*;

    fn config(resolver: Resolver) -> LoadBalancingConfig {
        LoadBalancingConfig {
            name: "loadbalancing".into(),
            protocol: ExporterConfig::new(
                "loadbalancing",
                ExportTarget::OtlpGrpc {
                    endpoint: "0.0.0.0:0".into(),
                    compression: Compression::None,
                    timeout: Duration::from_secs(1),
                    headers: Vec::new(),
                },
            ),
            resolver,
        }
    }

    #[tokio::test]
    async fn dns_should_route_to_every_address_of_the_name_and_follow_changes() {
        let router = Router::start(&config(Resolver::Dns {
            hostname: "localhost".into(),
            port: 4999,
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(1),
        }))
        .await
        .unwrap();
        let backends = router.backends();
        assert!(
            backends.contains(&"127.0.0.1:4999".to_owned()),
            "{backends:?}"
        );
        assert!(
            backends.iter().all(|b| b.ends_with(":4999")),
            "{backends:?}"
        );
        assert!(!router.is_static());
        // A name that does not resolve keeps the backends as they are, counted.
        router
            .resolve_once("name.invalid", 4999, Duration::from_secs(1))
            .await;
        assert_eq!(router.backends(), backends);
        assert_eq!(router.metrics.resolve_failures.load(Relaxed), 1);
        router.shutdown(Instant::now()).await;
    }

    #[tokio::test]
    async fn a_static_update_should_keep_unchanged_backends_and_drain_removed_ones() {
        let list = |ports: &[u16]| -> Vec<String> {
            ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()
        };
        let router = Router::start(&config(Resolver::Static(list(&[1, 2, 3]))))
            .await
            .unwrap();
        let before = router.members.read().clone();
        router.update(&list(&[3, 2, 1])).unwrap();
        assert!(
            Arc::ptr_eq(&before, &router.members.read()),
            "same set: nothing changes"
        );
        router.update(&list(&[1, 3])).unwrap();
        let after = router.members.read().clone();
        assert_eq!(router.backends(), list(&[1, 3]));
        // The kept backends are the same exporters; the removed one is draining.
        assert!(Arc::ptr_eq(&before.backends[0], &after.backends[0]));
        assert_eq!(router.retired.lock().len(), 1);
        assert_eq!(
            router
                .backend_metrics()
                .iter()
                .filter(|b| b.current)
                .count(),
            2
        );
        assert_eq!(router.metrics.membership_changes.load(Relaxed), 2);
        router.shutdown(Instant::now()).await;
    }

    #[tokio::test]
    async fn with_no_backend_spans_should_be_counted_as_unroutable() {
        let router = Router::start(&config(Resolver::Static(Vec::new())))
            .await
            .unwrap();
        let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
            resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
                scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                    spans: vec![opentelemetry_proto::tonic::trace::v1::Span {
                        trace_id: vec![1; 16],
                        span_id: vec![1; 8],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let spans = traceq_exporter::otlp::decode_request_for_routing(
            &prost::Message::encode_to_vec(&request),
        )
        .unwrap();
        router.route(spans);
        assert_eq!(router.metrics.unroutable_spans.load(Relaxed), 1);
    }
}
