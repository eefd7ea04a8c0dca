//! The pipeline between receivers and exporters: the tail sampler, the kept-span batcher, and
//! the thread that decides traces when their time comes.
//!
//! Why a thread for decisions: deciding is CPU work under shard locks, done every few
//! milliseconds whatever the load; on its own thread it never delays a receiver's response, and
//! receivers never wait for it. Kept spans are encoded into batches and handed to every
//! exporter's bounded queue without blocking.
//!
//! Why batches are cut by bytes as well as spans, at the smallest exporter's
//! `max_export_bytes`: 8,192 spans of 512 bytes already pass the 4 MiB message limit of gRPC
//! servers, and a refused request costs a round trip and a split. One cut for all exporters
//! (rather than each exporter re-splitting) keeps one encoding shared by every exporter; the
//! cost is smaller requests to exporters with larger limits. A span that alone encodes past
//! the limit can never be sent: it is dropped and counted (`traceq_spans_too_large_total`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use traceq_sampler::{SamplerMetrics, SpanView, TailSampler};

use super::config::{CollectorConfig, OnBufferFull};
use super::route::Router;
use super::sink::{Accepted, Refused, SpanSink};
use super::storage::StorageConfig;
use super::storage::{self, AppendError, BatchAck, Log, ReplayReport};
use traceq_exporter::export::{
    ExportBatch, ExportSetupError, ExporterConfig, ExporterMetrics, ExporterQueue, RequestSize,
    DEFAULT_MAX_EXPORT_BYTES,
};
use traceq_exporter::otlp::{encode_request, OtlpSpan};

/// How often pending traces are checked for a due decision.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Refuse new data once the buffer is this full (per mille), leaving room for shards that fill
/// faster than the average so that refusing, not early decisions, absorbs overload.
const REFUSE_AT_PER_MILLE: usize = 900;

/// How long an exporter removed or changed by a reload may deliver what it has queued.
const RETIRE_GRACE: Duration = Duration::from_secs(30);

/// The exporters kept spans go to, replaced whole by a reload.
#[derive(Debug, Default)]
pub(crate) struct Outputs {
    pub(crate) exporters: Vec<Arc<ExporterQueue>>,
    /// Each exporter's configuration, to tell on a reload whether it changed.
    configs: Vec<ExporterConfig>,
    /// Per exporter: whether the log waits for its deliveries (`sending_queue.storage`).
    stored: Vec<bool>,
}

impl Outputs {
    fn new(
        exporters: Vec<Arc<ExporterQueue>>,
        configs: Vec<ExporterConfig>,
        storage: Option<&StorageConfig>,
    ) -> Self {
        let stored = exporters
            .iter()
            .map(|e| storage.is_some_and(|s| s.exporters.iter().any(|n| n == e.name())))
            .collect();
        Self {
            exporters,
            configs,
            stored,
        }
    }
}

/// What [`Pipeline::prepare_exporters`] made of a new exporter list, to apply or to drop.
#[derive(Debug)]
pub(crate) struct ExporterChange {
    outputs: Outputs,
    /// The new exporters' names (started, not reused), with their metrics.
    pub(crate) started: Vec<(String, Arc<ExporterMetrics>)>,
    /// Names of running exporters that stay as they are.
    pub(crate) kept: Vec<String>,
    /// Names of running exporters that are stopped (removed, or replaced by a changed one).
    pub(crate) stopped: Vec<String>,
}

/// Kept spans waiting to fill a batch, and batches already cut.
#[derive(Debug)]
struct Pending {
    /// Batches cut (full in spans or bytes), waiting to be encoded and sent.
    full: VecDeque<Vec<OtlpSpan>>,
    /// The batch being filled.
    spans: Vec<OtlpSpan>,
    /// Its encoded size, kept under the limit.
    size: RequestSize,
    /// When its first span came.
    since: Option<Instant>,
}

impl Pending {
    fn new(max_export_bytes: usize) -> Self {
        Self {
            full: VecDeque::new(),
            spans: Vec::new(),
            size: RequestSize::new(max_export_bytes),
            since: None,
        }
    }

    /// Adds `span` to the batch being filled, cutting it first when the span would take it
    /// past `batch_size` spans or the byte limit. Hands back a span that alone is too large.
    fn push(&mut self, span: OtlpSpan, batch_size: usize) -> Result<(), OtlpSpan> {
        let fits = self.spans.len() < batch_size && self.size.try_add(&span);
        if !fits {
            self.cut();
            if !self.size.try_add(&span) {
                return Err(span);
            }
        }
        if self.spans.is_empty() {
            self.since = Some(Instant::now());
        }
        self.spans.push(span);
        if self.spans.len() >= batch_size {
            self.cut();
        }
        Ok(())
    }

    /// Moves the batch being filled (if any) to the full ones.
    fn cut(&mut self) {
        if !self.spans.is_empty() {
            self.full.push_back(std::mem::take(&mut self.spans));
        }
        self.size.clear();
        self.since = None;
    }
}

/// The pipeline: owns the sampler and the exporters.
#[derive(Debug)]
pub(crate) struct Pipeline {
    sampler: Option<TailSampler<OtlpSpan>>,
    on_full: OnBufferFull,
    /// The delay suggested when the storage is full.
    retry_after: Duration,
    refuse_bytes: usize,
    refuse_traces: usize,
    pending: Mutex<Pending>,
    outputs: RwLock<Arc<Outputs>>,
    /// Exporters a reload stopped, delivering what they had queued.
    retired: Mutex<Vec<(Arc<ExporterQueue>, tokio::task::JoinHandle<()>)>>,
    /// The write-ahead log, with storage on.
    log: Option<Arc<Log>>,
    /// The `loadbalancing` exporter, if any.
    router: Option<Arc<Router>>,
    batch_size: usize,
    batch_timeout: Duration,
    /// The smallest `max_export_bytes` of the exporters: no batch encodes past it.
    max_export_bytes: AtomicUsize,
    /// Taken shared by every offer and exclusively by `close`, so no offer is half-way in when
    /// the buffer is flushed for the last time.
    closed: RwLock<bool>,
    stop: Mutex<bool>,
    wake: Condvar,
    pub(crate) spans_kept: AtomicU64,
    pub(crate) batches_sent: AtomicU64,
    /// Kept spans dropped because one alone encodes past `max_export_bytes`.
    pub(crate) spans_too_large: AtomicU64,
    warned_too_large: AtomicBool,
}

impl Pipeline {
    /// Builds the sampler (unless sampling is off) around the given exporters, logging to
    /// `log` when storage is on.
    pub(crate) fn new(
        config: &CollectorConfig,
        exporters: Vec<ExporterQueue>,
        log: Option<Arc<Log>>,
        router: Option<Arc<Router>>,
    ) -> Result<Self, traceq_sampler::ConfigError> {
        let exporters: Vec<_> = exporters.into_iter().map(Arc::new).collect();
        let sampler = if config.sampling {
            let sampler = TailSampler::new(config.sampler.clone())?;
            Some(match &log {
                Some(log) => {
                    let log = log.clone();
                    sampler.with_decision_hook(Box::new(move |verdicts| {
                        log.append_decisions(verdicts);
                    }))
                }
                None => sampler,
            })
        } else {
            None
        };
        let (refuse_bytes, refuse_traces) = sampler.as_ref().map_or((0, 0), |s| {
            (
                s.byte_capacity() / 1000 * REFUSE_AT_PER_MILLE,
                s.trace_capacity() / 1000 * REFUSE_AT_PER_MILLE,
            )
        });
        let max_export_bytes = smallest_max_export_bytes(&exporters, router.as_deref());
        Ok(Self {
            sampler,
            on_full: config.on_buffer_full,
            retry_after: match config.on_buffer_full {
                OnBufferFull::Refuse { retry_after } => retry_after,
                OnBufferFull::DecideEarly => crate::config::DEFAULT_RETRY_AFTER,
            },
            refuse_bytes,
            refuse_traces: refuse_traces.max(1),
            pending: Mutex::new(Pending::new(max_export_bytes)),
            outputs: RwLock::new(Arc::new(Outputs::new(
                exporters,
                config.exporters.clone(),
                config.storage.as_ref(),
            ))),
            retired: Mutex::new(Vec::new()),
            log,
            router,
            batch_size: config.send_batch_size,
            batch_timeout: config.batch_timeout,
            max_export_bytes: AtomicUsize::new(max_export_bytes),
            closed: RwLock::new(false),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            spans_kept: AtomicU64::new(0),
            batches_sent: AtomicU64::new(0),
            spans_too_large: AtomicU64::new(0),
            warned_too_large: AtomicBool::new(false),
        })
    }

    /// The sampler's counters (`None` when sampling is off).
    pub(crate) fn sampler_metrics(&self) -> Option<SamplerMetrics> {
        self.sampler.as_ref().map(TailSampler::metrics)
    }

    /// The exporters now.
    pub(crate) fn outputs(&self) -> Arc<Outputs> {
        Arc::clone(&self.outputs.read())
    }

    /// The sampler, unless sampling is off.
    pub(crate) fn sampler(&self) -> Option<&TailSampler<OtlpSpan>> {
        self.sampler.as_ref()
    }

    /// Starts what a new exporter list needs: running exporters whose configuration did not
    /// change are reused, the others are started (with the metrics of a running exporter of
    /// the same name, so its counters carry on). Nothing changes until [`Self::apply`].
    ///
    /// # Errors
    ///
    /// The first exporter that cannot be set up (those started are stopped again).
    pub(crate) fn prepare_exporters(
        &self,
        configs: &[ExporterConfig],
        storage: Option<&StorageConfig>,
        metrics_of: impl Fn(&str) -> Option<Arc<ExporterMetrics>>,
    ) -> Result<ExporterChange, ExportSetupError> {
        let current = self.outputs();
        let (mut exporters, mut started, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        for config in configs {
            let running = current
                .configs
                .iter()
                .position(|c| c == config)
                .map(|i| &current.exporters[i]);
            match running {
                Some(exporter) => {
                    exporters.push(Arc::clone(exporter));
                    kept.push(config.name.clone());
                }
                None => {
                    let metrics = metrics_of(&config.name).unwrap_or_default();
                    exporters.push(Arc::new(ExporterQueue::start(
                        config,
                        Arc::clone(&metrics),
                    )?));
                    started.push((config.name.clone(), metrics));
                }
            }
        }
        let stopped = current
            .exporters
            .iter()
            .filter(|e| !exporters.iter().any(|n| Arc::ptr_eq(n, e)))
            .map(|e| e.name().to_owned())
            .collect();
        let outputs = Outputs::new(
            exporters,
            configs.to_vec(),
            storage.filter(|_| self.log.is_some()),
        );
        Ok(ExporterChange {
            outputs,
            started,
            kept,
            stopped,
        })
    }

    /// Hands batches cut from now on to `change`'s exporters; the batch being filled is cut
    /// for the old ones first. Exporters no longer used deliver what they have queued for up
    /// to 30 seconds (and at most until the collector's shutdown deadline). Needs a tokio
    /// runtime.
    pub(crate) fn apply(&self, change: ExporterChange) {
        // What was kept before the change goes where it would have gone.
        self.send_if_due(true);
        let new = Arc::new(change.outputs);
        let limit = smallest_max_export_bytes(&new.exporters, self.router.as_deref());
        let old = {
            let mut pending = self.pending.lock();
            pending.cut();
            pending.size = RequestSize::new(limit);
            self.max_export_bytes.store(limit, Relaxed);
            std::mem::replace(&mut *self.outputs.write(), Arc::clone(&new))
        };
        self.send_if_due(true);
        let mut retired = self.retired.lock();
        for exporter in &old.exporters {
            if new.exporters.iter().any(|e| Arc::ptr_eq(e, exporter)) {
                continue;
            }
            let draining = Arc::clone(exporter);
            let task = tokio::spawn(async move {
                draining
                    .shutdown(tokio::time::Instant::now() + RETIRE_GRACE)
                    .await;
            });
            retired.push((Arc::clone(exporter), task));
        }
    }

    /// Waits for the exporters a reload stopped, until `deadline`; those still delivering
    /// then are stopped (what they hold is counted as dropped).
    pub(crate) async fn shutdown_retired(&self, deadline: tokio::time::Instant) {
        let retired: Vec<_> = std::mem::take(&mut *self.retired.lock());
        for (exporter, task) in retired {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                exporter.shutdown(tokio::time::Instant::now()).await;
            }
        }
    }

    /// The write-ahead log, with storage on.
    pub(crate) fn log(&self) -> Option<&Arc<Log>> {
        self.log.as_ref()
    }

    /// The `loadbalancing` exporter, if any.
    pub(crate) fn router(&self) -> Option<&Arc<Router>> {
        self.router.as_ref()
    }

    /// Whether receivers need only route: sampling is off and the only exporter is
    /// `loadbalancing` (spans are then read for their trace id alone).
    pub(crate) fn routes_only(&self) -> bool {
        self.sampler.is_none() && self.outputs.read().exporters.is_empty() && self.router.is_some()
    }

    /// Rebuilds what the log's `segments` hold (see [`storage::replay`]); before receivers
    /// start.
    pub(crate) fn replay(&self, segments: &[u64]) -> ReplayReport {
        let Some(log) = &self.log else {
            return ReplayReport::default();
        };
        storage::replay(log, segments, self.sampler.as_ref(), &mut |kept| {
            self.keep(kept);
        })
    }

    /// Starts the decision thread.
    pub(crate) fn spawn_decider(self: &Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("traceq-decide".into())
            .spawn(move || me.decide_loop())
    }

    fn decide_loop(&self) {
        let mut kept = Vec::new();
        loop {
            {
                let mut stop = self.stop.lock();
                if *stop {
                    return;
                }
                self.wake.wait_for(&mut stop, POLL_INTERVAL);
                if *stop {
                    return;
                }
            }
            if let Some(sampler) = &self.sampler {
                sampler.poll(&mut kept);
            }
            self.keep(&mut kept);
            self.send_if_due(false);
        }
    }

    /// Adds kept spans to the pending batch, sending full batches.
    fn keep(&self, kept: &mut Vec<OtlpSpan>) {
        if kept.is_empty() {
            return;
        }
        self.spans_kept.fetch_add(kept.len() as u64, Relaxed);
        let mut too_large = None;
        let full = {
            let mut p = self.pending.lock();
            for span in kept.drain(..) {
                if let Err(span) = p.push(span, self.batch_size) {
                    let (count, _) = too_large.get_or_insert((0u64, span));
                    *count += 1;
                }
            }
            !p.full.is_empty()
        };
        if let Some((count, first)) = too_large {
            self.spans_too_large.fetch_add(count, Relaxed);
            if !self.warned_too_large.swap(true, Relaxed) {
                let trace: String = first
                    .trace_id_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                eprintln!(
                    "traceq: dropping a kept span of {} bytes (trace {trace}): alone it encodes \
                     past the smallest exporter max_export_bytes ({}) (further ones are counted \
                     in traceq_spans_too_large_total, not logged)",
                    first.received_len(),
                    self.max_export_bytes.load(Relaxed)
                );
            }
        }
        if full {
            self.send_if_due(false);
        }
    }

    /// Sends full batches, and the partial one when it waited past the batch timeout (or
    /// `all`).
    fn send_if_due(&self, all: bool) {
        loop {
            let batch: Vec<OtlpSpan> = {
                let mut p = self.pending.lock();
                if let Some(batch) = p.full.pop_front() {
                    batch
                } else {
                    let timed_out = p.since.is_some_and(|t| t.elapsed() >= self.batch_timeout);
                    if p.spans.is_empty() || !(all || timed_out) {
                        return;
                    }
                    p.cut();
                    match p.full.pop_front() {
                        Some(batch) => batch,
                        None => return,
                    }
                }
            };
            self.send(batch);
        }
    }

    fn send(&self, spans: Vec<OtlpSpan>) {
        self.batches_sent.fetch_add(1, Relaxed);
        let outputs = self.outputs();
        if !outputs.exporters.is_empty() {
            self.send_encoded(&outputs, &spans);
        }
        if let Some(router) = &self.router {
            router.route(spans);
        }
    }

    /// Encodes `spans` once and hands the batch to every exporter.
    fn send_encoded(&self, outputs: &Outputs, spans: &[OtlpSpan]) {
        let batch = ExportBatch {
            body: Bytes::from(encode_request(spans)),
            spans: spans.len(),
        };
        // With storage, the batch's records stay in the log until every exporter the log
        // waits for has settled it.
        let owed = outputs.stored.iter().filter(|&&s| s).count();
        let ack = (self.log.is_some() && owed > 0).then(|| BatchAck::new(spans, owed));
        for (exporter, &stored) in outputs.exporters.iter().zip(&outputs.stored) {
            match &ack {
                Some(ack) if stored => exporter.push_with_receipt(batch.clone(), ack.receipt()),
                _ => exporter.push(batch.clone()),
            }
        }
    }

    /// Refuses new data, decides every pending trace (or drops them when configured so) and
    /// hands the kept spans to the exporters. Stops the decision thread. Idempotent.
    pub(crate) fn close(&self) {
        let mut closed = self.closed.write();
        if *closed {
            return;
        }
        *closed = true;
        *self.stop.lock() = true;
        self.wake.notify_all();
        let mut kept = Vec::new();
        if let Some(sampler) = &self.sampler {
            sampler.shutdown(&mut kept);
        }
        self.keep(&mut kept);
        self.send_if_due(true);
    }

    fn is_full(&self, sampler: &TailSampler<OtlpSpan>, incoming: usize) -> bool {
        let (traces, bytes) = sampler.occupancy();
        // An empty buffer takes any request: refusing one larger than the bound itself would
        // have its sender retry for ever (the buffer then decides early to stay in bounds).
        traces > 0 && (bytes + incoming > self.refuse_bytes || traces >= self.refuse_traces)
    }
}

/// The smallest `max_export_bytes` of `exporters` and the router's backends.
fn smallest_max_export_bytes(exporters: &[Arc<ExporterQueue>], router: Option<&Router>) -> usize {
    exporters
        .iter()
        .map(|e| e.max_export_bytes())
        .chain(router.map(Router::max_export_bytes))
        .min()
        .unwrap_or(DEFAULT_MAX_EXPORT_BYTES)
}

/// What buffering `spans` will cost, as the sampler charges it: each span's own bytes, and each
/// run of spans sharing a resource and scope charged that once.
fn charge(spans: &[OtlpSpan]) -> usize {
    let mut last = None;
    let mut total = 0;
    for span in spans {
        total += span.size_bytes();
        if let Some((id, bytes)) = span.shared_bytes() {
            if last != Some(id) {
                total += bytes;
                last = Some(id);
            }
        }
    }
    total
}

impl SpanSink for Pipeline {
    fn routes_only(&self) -> bool {
        Pipeline::routes_only(self)
    }

    fn offer(&self, spans: Vec<OtlpSpan>) -> Result<Accepted, Refused> {
        let closed = self.closed.read();
        if *closed {
            return Err(Refused::ShuttingDown);
        }
        if let (Some(sampler), OnBufferFull::Refuse { retry_after }) = (&self.sampler, self.on_full)
        {
            if self.is_full(sampler, charge(&spans)) {
                return Err(Refused::Full { retry_after });
            }
        }
        let accepted = match &self.log {
            Some(log) => {
                let appended = log
                    .append_request(&spans, storage::unix_nanos())
                    .map_err(|e| match e {
                        AppendError::Full => Refused::Full {
                            retry_after: self.retry_after,
                        },
                        AppendError::Io => Refused::Storage,
                    })?;
                let token: traceq_exporter::otlp::Retained = appended.token;
                storage::retain_all(&spans, &token);
                Accepted::logged(log.clone(), appended.end, appended.written)
            }
            None => Accepted::default(),
        };
        let mut kept = Vec::new();
        match &self.sampler {
            Some(sampler) => {
                sampler.ingest_batch(spans, &mut kept);
            }
            None => kept = spans,
        }
        self.keep(&mut kept);
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    use traceq_exporter::otlp::decode_request;

    use super::*;

    /// `n` spans with names of `name_len` bytes, each from its own request, scope `i % scopes`.
    fn spans(n: usize, name_len: usize, scopes: usize) -> Vec<OtlpSpan> {
        (0..n)
            .flat_map(|i| {
                let request = ExportTraceServiceRequest {
                    resource_spans: vec![ResourceSpans {
                        scope_spans: vec![ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: format!("scope-{}", i % scopes),
                                ..Default::default()
                            }),
                            spans: vec![Span {
                                trace_id: vec![9; 16],
                                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                                name: "n".repeat(name_len),
                                ..Span::default()
                            }],
                            schema_url: String::new(),
                        }],
                        ..Default::default()
                    }],
                };
                decode_request(&request.encode_to_vec()).unwrap()
            })
            .collect()
    }

    fn cut_all(pending: &mut Pending, spans: Vec<OtlpSpan>, batch_size: usize) -> usize {
        let mut refused = 0;
        for span in spans {
            if pending.push(span, batch_size).is_err() {
                refused += 1;
            }
        }
        pending.cut();
        refused
    }

    #[test]
    fn batches_should_be_cut_by_bytes_and_encode_under_the_limit() {
        // 8,192 spans of ~512 bytes: 4 MiB plus overhead, over the gRPC default.
        let limit = 4 << 20;
        let mut pending = Pending::new(limit);
        assert_eq!(cut_all(&mut pending, spans(8192, 490, 7), 8192), 0);
        let batches: Vec<_> = pending.full.drain(..).collect();
        assert!(batches.len() >= 2, "{} batches", batches.len());
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 8192);
        for b in &batches[..batches.len() - 1] {
            let encoded = encode_request(b).len();
            assert!(encoded <= limit, "{encoded}");
            // tight: a full batch is within one span of the limit
            assert!(encoded > limit - 1024, "{encoded}");
        }
    }

    #[test]
    fn batches_should_still_be_cut_by_span_count() {
        let mut pending = Pending::new(4 << 20);
        cut_all(&mut pending, spans(25, 10, 1), 10);
        let sizes: Vec<_> = pending.full.iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 5]);
    }

    #[test]
    fn a_span_too_large_alone_should_be_handed_back_and_the_rest_kept() {
        let mut pending = Pending::new(2000);
        let mut input = spans(3, 10, 1);
        input.insert(1, spans(1, 5000, 1).pop().unwrap());
        assert_eq!(cut_all(&mut pending, input, 100), 1);
        assert_eq!(pending.full.iter().map(Vec::len).sum::<usize>(), 3);
    }
}
