//! The in-process front door: an `opentelemetry_sdk` [`SpanProcessor`].
//!
//! `on_end` runs on the thread that ended the span, so it only buffers: it takes one shard lock
//! for a hash-map insert and never waits for I/O. Decisions due by time and all exports happen
//! on one background thread (`force_flush` and `shutdown` decide on the calling thread, which
//! waits anyway), which polls the sampler every `poll_interval`, exports kept spans in
//! batches of `max_export_batch_size`, and drives the exporter's futures with
//! `futures::executor::block_on` (no async runtime needed). No lock is held across an export.
//! Spans decided on the caller's thread (late spans of kept traces, traces over the span cap or
//! decided early under pressure) reach the thread through a bounded queue; when it is full they
//! are counted in `spans_dropped_queue_full`, never waited for.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use parking_lot::Mutex;

use crate::clock::{Clock, SystemClock};
use crate::config::SamplerConfig;
use crate::error::ConfigError;
use crate::metrics::SamplerMetrics;
use crate::sampler::TailSampler;

/// Default spans per export call (as the SDK's batch processor).
pub const DEFAULT_MAX_EXPORT_BATCH_SIZE: usize = 512;
/// Default capacity of the queue to the export thread, in messages (batches of kept spans).
pub const DEFAULT_MAX_QUEUE_MESSAGES: usize = 4096;
/// Default interval between checks for due traces.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long `force_flush` waits for the export thread.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the processor's export side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessorConfig {
    /// Most spans per export call.
    pub max_export_batch_size: usize,
    /// Capacity of the queue between `on_end` and the export thread, in messages.
    pub max_queue_messages: usize,
    /// How often the export thread decides due traces.
    pub poll_interval: Duration,
    /// How long `force_flush` waits for the export thread before reporting a timeout.
    pub flush_timeout: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            max_export_batch_size: DEFAULT_MAX_EXPORT_BATCH_SIZE,
            max_queue_messages: DEFAULT_MAX_QUEUE_MESSAGES,
            poll_interval: DEFAULT_POLL_INTERVAL,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
        }
    }
}

enum Message {
    Kept(Vec<SpanData>),
    /// Decide this part of the buffer (a flush split between the caller and the worker).
    DecidePart(usize, usize),
    /// Export these (decided by the caller), then flush the exporter.
    Flush(Vec<SpanData>, Sender<OTelSdkResult>),
    /// Export these (decided by the caller), then shut the exporter down.
    Shutdown(Vec<SpanData>, Sender<OTelSdkResult>, Duration),
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
    tx: Sender<Message>,
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
    /// A processor with `config`, the real clock and default export settings.
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

    /// A processor with every part given: sampler config, export settings and clock.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a setting is invalid or the export thread cannot start.
    pub fn with_parts<E: SpanExporter + 'static>(
        exporter: E,
        config: SamplerConfig,
        processor: ProcessorConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        for (field, v) in [
            ("max_export_batch_size", processor.max_export_batch_size),
            ("max_queue_messages", processor.max_queue_messages),
        ] {
            if v == 0 {
                return Err(ConfigError::Setting {
                    field,
                    reason: "must be positive".to_owned(),
                });
            }
        }
        let sampler = Arc::new(TailSampler::with_clock(config, clock)?);
        let (tx, rx) = bounded(processor.max_queue_messages);
        let worker = Worker {
            sampler: sampler.clone(),
            exporter,
            rx,
            batch: processor.max_export_batch_size,
            poll_interval: processor.poll_interval.max(Duration::from_millis(1)),
            pending: Vec::new(),
            deferred: std::collections::VecDeque::new(),
            part_result: Ok(()),
        };
        let handle = std::thread::Builder::new()
            .name("traceq-sampler".to_owned())
            .spawn(move || worker.run())
            .map_err(ConfigError::Thread)?;
        Ok(Self {
            sampler,
            tx,
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

    fn call(
        &self,
        make: impl FnOnce(Sender<OTelSdkResult>) -> Message,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (ack_tx, ack_rx) = bounded(1);
        let deadline = Instant::now() + timeout;
        self.tx
            .send_timeout(make(ack_tx), timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))?;
        match ack_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(OTelSdkError::InternalFailure(
                "export thread stopped".to_owned(),
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
        let mut kept = Vec::new();
        self.sampler.ingest(span, &mut kept);
        if kept.is_empty() {
            return;
        }
        let n = kept.len() as u64;
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Message::Kept(kept))
        {
            counters
                .spans_dropped_queue_full
                .fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Decides every pending trace and exports everything kept. Idempotent; a no-op after shutdown.
    fn force_flush(&self) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Acquire) {
            return Ok(());
        }
        // The caller is waiting anyway: it decides half of the buffer while the export thread
        // decides the other half, then the export thread exports everything kept.
        self.tx
            .send_timeout(Message::DecidePart(1, 2), self.flush_timeout)
            .map_err(|_| OTelSdkError::Timeout(self.flush_timeout))?;
        let mut kept = Vec::new();
        self.sampler.flush_part(0, 2, &mut kept);
        self.call(|ack| Message::Flush(kept, ack), self.flush_timeout)
    }

    /// Decides (or, if so configured, drops) every pending trace, exports everything kept and
    /// shuts the exporter down. Idempotent: later calls return `Ok`.
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut kept = Vec::new();
        self.sampler.shutdown(&mut kept);
        let result = self.call(|ack| Message::Shutdown(kept, ack, timeout), timeout);
        if result.is_ok() {
            if let Some(handle) = self.worker.lock().take() {
                let _ = handle.join();
            }
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
    batch: usize,
    poll_interval: Duration,
    pending: Vec<SpanData>,
    /// Result of the last `DecidePart` export, reported by the flush that follows it.
    part_result: OTelSdkResult,
    /// Requests met while draining the queue, handled next, in order.
    deferred: std::collections::VecDeque<Message>,
}

impl<E: SpanExporter> Worker<E> {
    fn run(mut self) {
        let mut next_poll = Instant::now() + self.poll_interval;
        loop {
            let next = match self.deferred.pop_front() {
                Some(msg) => Ok(msg),
                None => self
                    .rx
                    .recv_timeout(next_poll.saturating_duration_since(Instant::now())),
            };
            match next {
                Ok(Message::Kept(mut spans)) => {
                    self.pending.append(&mut spans);
                    if self.pending.len() >= self.batch {
                        // Failures are counted in `export_failures`; nobody waits for this result.
                        let _ = self.export_pending();
                    }
                }
                Ok(Message::DecidePart(part, parts)) => {
                    self.sampler.flush_part(part, parts, &mut self.pending);
                    // Reported by the flush that asked for this part.
                    self.part_result = self.export_pending();
                }
                Ok(Message::Flush(mut kept, ack)) => {
                    self.drain_queue();
                    self.pending.append(&mut kept);
                    let part = std::mem::replace(&mut self.part_result, Ok(()));
                    let exported = part.and(self.export_pending());
                    let _ = ack.send(exported.and(self.exporter.force_flush()));
                }
                Ok(Message::Shutdown(mut kept, ack, timeout)) => {
                    self.drain_queue();
                    self.pending.append(&mut kept);
                    // Spans ingested while the caller was deciding.
                    self.sampler.shutdown(&mut self.pending);
                    let exported = self.export_pending();
                    let _ = ack.send(exported.and(self.exporter.shutdown_with_timeout(timeout)));
                    return;
                }
                Ok(Message::Resource(resource)) => self.exporter.set_resource(&resource),
                Err(RecvTimeoutError::Timeout) => {}
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

    /// Moves already-queued kept spans into `pending` (they were sent before the flush request).
    fn drain_queue(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Message::Kept(mut spans) => self.pending.append(&mut spans),
                Message::Resource(resource) => self.exporter.set_resource(&resource),
                control => self.deferred.push_back(control),
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
