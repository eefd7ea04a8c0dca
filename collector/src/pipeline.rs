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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use traceq_sampler::{SamplerMetrics, SpanView, TailSampler};

use super::config::{CollectorConfig, OnBufferFull};
use super::route::Router;
use super::sink::{Accepted, Refused, SpanSink};
use super::storage::{self, AppendError, BatchAck, Log, ReplayReport};
use traceq_exporter::export::{ExportBatch, ExporterQueue, RequestSize, DEFAULT_MAX_EXPORT_BYTES};
use traceq_exporter::otlp::{encode_request, OtlpSpan};

/// How often pending traces are checked for a due decision.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Refuse new data once the buffer is this full (per mille), leaving room for shards that fill
/// faster than the average so that refusing, not early decisions, absorbs overload.
const REFUSE_AT_PER_MILLE: usize = 900;

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
    exporters: Vec<ExporterQueue>,
    /// The write-ahead log, with storage on.
    log: Option<Arc<Log>>,
    /// Per exporter: whether the log waits for its deliveries (`sending_queue.storage`).
    stored: Vec<bool>,
    /// The `loadbalancing` exporter, if any.
    router: Option<Arc<Router>>,
    batch_size: usize,
    batch_timeout: Duration,
    /// The smallest `max_export_bytes` of the exporters: no batch encodes past it.
    max_export_bytes: usize,
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
        let stored = exporters
            .iter()
            .map(|e| {
                config
                    .storage
                    .as_ref()
                    .is_some_and(|s| s.exporters.iter().any(|n| n == e.name()))
            })
            .collect();
        let (refuse_bytes, refuse_traces) = sampler.as_ref().map_or((0, 0), |s| {
            (
                s.byte_capacity() / 1000 * REFUSE_AT_PER_MILLE,
                s.trace_capacity() / 1000 * REFUSE_AT_PER_MILLE,
            )
        });
        let max_export_bytes = exporters
            .iter()
            .map(ExporterQueue::max_export_bytes)
            .chain(router.iter().map(|r| r.max_export_bytes()))
            .min()
            .unwrap_or(DEFAULT_MAX_EXPORT_BYTES);
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
            exporters,
            log,
            stored,
            router,
            batch_size: config.send_batch_size,
            batch_timeout: config.batch_timeout,
            max_export_bytes,
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

    pub(crate) fn exporters(&self) -> &[ExporterQueue] {
        &self.exporters
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
        self.sampler.is_none() && self.exporters.is_empty() && self.router.is_some()
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
                    self.max_export_bytes
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
        if !self.exporters.is_empty() {
            self.send_encoded(&spans);
        }
        if let Some(router) = &self.router {
            router.route(spans);
        }
    }

    /// Encodes `spans` once and hands the batch to every exporter.
    fn send_encoded(&self, spans: &[OtlpSpan]) {
        let batch = ExportBatch {
            body: Bytes::from(encode_request(spans)),
            spans: spans.len(),
        };
        // With storage, the batch's records stay in the log until every exporter the log
        // waits for has settled it.
        let owed = self.stored.iter().filter(|&&s| s).count();
        let ack = (self.log.is_some() && owed > 0).then(|| BatchAck::new(spans, owed));
        for (exporter, &stored) in self.exporters.iter().zip(&self.stored) {
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
