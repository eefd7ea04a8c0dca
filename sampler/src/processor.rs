//! The in-process front door: an `opentelemetry_sdk` [`SpanProcessor`].
//!
//! `on_end` runs on the thread that ended the span, so it does as little as the SDK's batch
//! processor: it moves the span into a bounded queue and returns. When the queue is full the span
//! is counted in `spans_dropped_queue_full`, never waited for. Like the batch processor, it does
//! not wake the background thread for every span: only when the queue holds a batch (or on a
//! flush, shutdown, or the thread's own tick). One background thread takes spans off the queue
//! into the sampler's buffer, decides due traces every `poll_interval`, exports
//! kept spans in batches of `max_export_batch_size`, and drives the exporter's futures with
//! `futures::executor::block_on` (no async runtime needed). Only that thread touches the
//! exporter, so no lock is held across an export. `force_flush` waits until every span queued
//! before it is buffered, then the calling thread (which waits anyway) and the background thread
//! decide the buffer together, shard by shard, and the background thread exports everything kept.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use parking_lot::Mutex;

use crate::clock::{Clock, SystemClock};
use crate::config::SamplerConfig;
use crate::error::ConfigError;
use crate::metrics::SamplerMetrics;
use crate::sampler::{FlushCursor, TailSampler};

/// Default spans per export call (as the SDK's batch processor).
pub const DEFAULT_MAX_EXPORT_BATCH_SIZE: usize = 512;
/// Default capacity of the queue between `on_end` and the background thread, in spans. The
/// queue's slots are allocated up front (about 6 MiB at this size).
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 16_384;
/// Default interval between checks for due traces.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long `force_flush` waits for the background thread.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest the background thread sleeps before looking at the queue again.
const MAX_TICK: Duration = Duration::from_millis(10);
/// Spans ingested per clock reading.
const SPANS_PER_CLOCK_READ: usize = 256;

/// Settings of the processor's queue and export side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessorConfig {
    /// Most spans per export call.
    pub max_export_batch_size: usize,
    /// Capacity of the queue between `on_end` and the background thread, in spans.
    pub max_queue_size: usize,
    /// How often the background thread decides due traces.
    pub poll_interval: Duration,
    /// How long `force_flush` waits for the background thread before reporting a timeout.
    pub flush_timeout: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            max_export_batch_size: DEFAULT_MAX_EXPORT_BATCH_SIZE,
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
        }
    }
}

/// Requests to the background thread; spans travel on their own queue.
enum Message {
    /// The span queue holds a batch.
    Wake,
    /// Help the caller decide the buffer, shard by shard.
    FlushStart(Arc<FlushCursor>),
    /// Export these (the caller's share of the flush), then flush the exporter.
    FlushFinish(Vec<SpanData>, Sender<OTelSdkResult>),
    /// Decide (or drop) everything, export, shut the exporter down and stop.
    Shutdown(Sender<OTelSdkResult>, Duration),
    Resource(Resource),
}

/// A [`SpanProcessor`] that tail-samples: it buffers spans per trace and exports only the
/// traces its policies keep, through any [`SpanExporter`].
///
/// # Examples
///
/// ```
/// use opentelemetry::trace::{Span as _, Status, Tracer as _, TracerProvider as _};
/// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
/// use traceq_sampler::TailSamplingProcessor;
///
/// let exporter = InMemorySpanExporter::default();
/// let processor = TailSamplingProcessor::from_yaml(
///     exporter.clone(),
///     "policies: [{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]",
/// )?;
/// let provider = SdkTracerProvider::builder().with_span_processor(processor).build();
/// let tracer = provider.tracer("example");
/// tracer.in_span("fine", |_| {});
/// let mut failed = tracer.start("failed");
/// failed.set_status(Status::error("boom"));
/// failed.end();
/// provider.force_flush().unwrap();
/// let exported = exporter.get_finished_spans().unwrap();
/// assert_eq!(exported.len(), 1);
/// assert_eq!(exported[0].name, "failed");
/// # Ok::<(), traceq_sampler::ConfigError>(())
/// ```
pub struct TailSamplingProcessor {
    sampler: Arc<TailSampler<SpanData>>,
    spans: Sender<SpanData>,
    /// The queue's receiving end, for `force_flush` to buffer what is queued.
    queued: Receiver<SpanData>,
    /// Held while spans taken off the queue are being buffered, so `force_flush` knows when
    /// every span queued before it is in the buffer.
    ingest_lock: Arc<Mutex<()>>,
    tx: Sender<Message>,
    /// A `Wake` is on its way; cleared by the background thread when it drains the queue.
    wake_sent: Arc<AtomicBool>,
    /// Spans offered so far; every `wake_at`-th one wakes the background thread. A counter of
    /// our own, because asking the queue its length reads the consumer's side of it.
    offered: AtomicUsize,
    wake_at: usize,
    worker: Mutex<Option<JoinHandle<()>>>,
    shut_down: AtomicBool,
    flush_timeout: Duration,
}

impl fmt::Debug for TailSamplingProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TailSamplingProcessor")
            .field("sampler", &self.sampler)
            .field("shut_down", &self.shut_down)
            .finish_non_exhaustive()
    }
}

impl TailSamplingProcessor {
    /// A processor with `config`, the real clock and default queue and export settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the configuration is invalid.
    pub fn new<E: SpanExporter + 'static>(
        exporter: E,
        config: SamplerConfig,
    ) -> Result<Self, ConfigError> {
        Self::with_parts(
            exporter,
            config,
            ProcessorConfig::default(),
            Arc::new(SystemClock::new()),
        )
    }

    /// A processor configured from the Collector's `tail_sampling` YAML.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field (and policy) at fault.
    pub fn from_yaml<E: SpanExporter + 'static>(
        exporter: E,
        yaml: &str,
    ) -> Result<Self, ConfigError> {
        Self::new(exporter, SamplerConfig::from_yaml(yaml)?)
    }

    /// A processor with every part given: sampler config, queue and export settings, clock.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a setting is invalid or the background thread cannot start.
    pub fn with_parts<E: SpanExporter + 'static>(
        exporter: E,
        config: SamplerConfig,
        processor: ProcessorConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        for (field, v) in [
            ("max_export_batch_size", processor.max_export_batch_size),
            ("max_queue_size", processor.max_queue_size),
        ] {
            if v == 0 {
                return Err(ConfigError::Setting {
                    field,
                    reason: "must be positive".to_owned(),
                });
            }
        }
        let sampler = Arc::new(TailSampler::with_clock(config, clock)?);
        let (spans, span_rx) = bounded(processor.max_queue_size);
        let (tx, rx) = bounded(64);
        let wake_sent = Arc::new(AtomicBool::new(false));
        let ingest_lock = Arc::new(Mutex::new(()));
        let worker = Worker {
            sampler: sampler.clone(),
            exporter,
            rx,
            spans: span_rx.clone(),
            ingest_lock: ingest_lock.clone(),
            wake_sent: wake_sent.clone(),
            tick: processor
                .poll_interval
                .clamp(Duration::from_millis(1), MAX_TICK),
            batch: processor.max_export_batch_size,
            poll_interval: processor.poll_interval.max(Duration::from_millis(1)),
            pending: Vec::new(),
            part_result: Ok(()),
        };
        let handle = std::thread::Builder::new()
            .name("traceq-sampler".to_owned())
            .spawn(move || worker.run())
            .map_err(ConfigError::Thread)?;
        Ok(Self {
            sampler,
            spans,
            queued: span_rx,
            ingest_lock,
            tx,
            wake_sent,
            offered: AtomicUsize::new(0),
            wake_at: processor
                .max_export_batch_size
                .min(processor.max_queue_size / 2)
                .max(1),
            worker: Mutex::new(Some(handle)),
            shut_down: AtomicBool::new(false),
            flush_timeout: processor.flush_timeout,
        })
    }

    /// A snapshot of the sampler's and the processor's counters.
    #[must_use]
    pub fn metrics(&self) -> SamplerMetrics {
        self.sampler.metrics()
    }

    fn send(&self, msg: Message, deadline: Instant) -> OTelSdkResult {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.tx
            .send_timeout(msg, timeout)
            .map_err(|_| OTelSdkError::Timeout(self.flush_timeout))
    }

    fn wait<T>(rx: &Receiver<T>, deadline: Instant, timeout: Duration) -> Result<T, OTelSdkError> {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(OTelSdkError::InternalFailure(
                "the sampler's background thread stopped".to_owned(),
            )),
        }
    }
}

impl SpanProcessor for TailSamplingProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let counters = self.sampler.counters();
        if self.shut_down.load(Ordering::Relaxed) {
            counters
                .spans_dropped_after_shutdown
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.spans.try_send(span).is_err() {
            counters
                .spans_dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
        let offered = self.offered.fetch_add(1, Ordering::Relaxed) + 1;
        if offered % self.wake_at == 0 && !self.wake_sent.swap(true, Ordering::AcqRel) {
            let _ = self.tx.try_send(Message::Wake);
        }
    }

    /// Decides every pending trace and exports everything kept. Idempotent; a no-op after shutdown.
    fn force_flush(&self) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Acquire) {
            return Ok(());
        }
        let deadline = Instant::now() + self.flush_timeout;
        let mut kept = Vec::new();
        {
            // Once we hold the lock and the queue is empty, every span queued before this call
            // is in the buffer.
            let _ingesting = self.ingest_lock.lock();
            while self
                .sampler
                .ingest_batch(self.queued.try_iter().take(SPANS_PER_CLOCK_READ), &mut kept)
                > 0
            {}
        }
        // Ask the background thread to help, but do not wait for it to start.
        let cursor = Arc::new(FlushCursor::new());
        self.send(Message::FlushStart(cursor.clone()), deadline)?;
        self.sampler.flush_shared(&cursor, &mut kept);
        let (ack_tx, ack_rx) = bounded(1);
        self.send(Message::FlushFinish(kept, ack_tx), deadline)?;
        Self::wait(&ack_rx, deadline, self.flush_timeout)?
    }

    /// Decides (or, if so configured, drops) every pending trace, exports everything kept and
    /// shuts the exporter down. Idempotent: later calls return `Ok`.
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = bounded(1);
        self.send(Message::Shutdown(ack_tx, timeout), deadline)?;
        let result = Self::wait(&ack_rx, deadline, timeout)?;
        if let Some(handle) = self.worker.lock().take() {
            let _ = handle.join();
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.sampler.set_resource_attributes(
            resource
                .iter()
                .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone()))
                .collect(),
        );
        // Best effort: a full queue at setup time would be a bug elsewhere; the exporter keeps
        // its default resource then.
        let _ = self.tx.try_send(Message::Resource(resource.clone()));
    }
}

impl Drop for TailSamplingProcessor {
    fn drop(&mut self) {
        if !self.shut_down.load(Ordering::Acquire) {
            let _ = self.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

struct Worker<E> {
    sampler: Arc<TailSampler<SpanData>>,
    exporter: E,
    rx: Receiver<Message>,
    spans: Receiver<SpanData>,
    ingest_lock: Arc<Mutex<()>>,
    wake_sent: Arc<AtomicBool>,
    tick: Duration,
    batch: usize,
    poll_interval: Duration,
    pending: Vec<SpanData>,
    /// Result of exporting the half of a flush decided here, reported when the flush finishes.
    part_result: OTelSdkResult,
}

impl<E: SpanExporter> Worker<E> {
    fn run(mut self) {
        let mut next_poll = Instant::now() + self.poll_interval;
        loop {
            let msg = self.rx.recv_timeout(self.tick);
            // Spans queued before a request are buffered before it is handled.
            self.drain_spans();
            match msg {
                Ok(Message::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Message::FlushStart(cursor)) => {
                    self.sampler.flush_shared(&cursor, &mut self.pending);
                    self.part_result = self.export_pending();
                }
                Ok(Message::FlushFinish(mut kept, ack)) => {
                    self.pending.append(&mut kept);
                    let part = std::mem::replace(&mut self.part_result, Ok(()));
                    let exported = part.and(self.export_pending());
                    let _ = ack.send(exported.and(self.exporter.force_flush()));
                }
                Ok(Message::Shutdown(ack, timeout)) => {
                    self.sampler.shutdown(&mut self.pending);
                    let exported = self.export_pending();
                    let _ = ack.send(exported.and(self.exporter.shutdown_with_timeout(timeout)));
                    self.discard_queue();
                    return;
                }
                Ok(Message::Resource(resource)) => self.exporter.set_resource(&resource),
                Err(RecvTimeoutError::Disconnected) => {
                    self.sampler.shutdown(&mut self.pending);
                    let _ = self.export_pending();
                    let _ = self.exporter.shutdown();
                    return;
                }
            }
            if Instant::now() >= next_poll {
                self.sampler.poll(&mut self.pending);
                let _ = self.export_pending();
                next_poll = Instant::now() + self.poll_interval;
            }
        }
    }

    /// Buffers every queued span, reading the clock once per run of spans.
    fn drain_spans(&mut self) {
        self.wake_sent.store(false, Ordering::Release);
        loop {
            // Taking spans off the queue and buffering them happen under the ingest lock, which
            // is released before any export.
            let n = {
                let _ingesting = self.ingest_lock.lock();
                self.sampler.ingest_batch(
                    self.spans.try_iter().take(SPANS_PER_CLOCK_READ),
                    &mut self.pending,
                )
            };
            if self.pending.len() >= self.batch {
                // Failures are counted in `export_failures`; nobody waits for this result.
                let _ = self.export_pending();
            }
            if n < SPANS_PER_CLOCK_READ {
                break;
            }
        }
    }

    /// Counts spans that raced with shutdown into the queue; answers late requests.
    fn discard_queue(&mut self) {
        let counters = self.sampler.counters();
        let stale_spans = self.spans.try_iter().count() as u64;
        counters
            .spans_dropped_after_shutdown
            .fetch_add(stale_spans, Ordering::Relaxed);
        let stale: VecDeque<Message> = self.rx.try_iter().collect();
        for msg in stale {
            match msg {
                Message::FlushStart(_) => {}
                Message::FlushFinish(_, ack) | Message::Shutdown(ack, _) => {
                    let _ = ack.send(Ok(()));
                }
                Message::Wake | Message::Resource(_) => {}
            }
        }
    }

    fn export_pending(&mut self) -> OTelSdkResult {
        let counters = self.sampler.counters();
        let mut result = Ok(());
        let mut spans = std::mem::take(&mut self.pending).into_iter();
        loop {
            let batch: Vec<SpanData> = spans.by_ref().take(self.batch).collect();
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            match futures::executor::block_on(self.exporter.export(batch)) {
                Ok(()) => {
                    counters.spans_exported.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    counters.export_failures.fetch_add(1, Ordering::Relaxed);
                    result = Err(e);
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests;
