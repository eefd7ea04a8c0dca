//! The in-process front door: an `opentelemetry_sdk` [`SpanProcessor`].
//!
//! `on_end` runs on the thread that ended the span, so it does as little as the SDK's batch
//! processor: it moves the span into a bounded queue (see [`queue`] for why spans travel in
//! batches) and returns. When the queue is full the span is counted in
//! `spans_dropped_queue_full`, never waited for. Like the batch processor, it does not wake the
//! background thread for every span: only when the queue holds a batch (or on shutdown, or the
//! thread's own tick). One background thread takes batches off the queue into the sampler's
//! buffer, decides due traces every `poll_interval`, and exports kept spans in batches of
//! `max_export_batch_size`, driving the exporter's futures with `futures::executor::block_on`
//! (no async runtime needed).
//!
//! `force_flush` works on the calling thread, which waits anyway: it buffers what is still
//! queued, decides the buffer and exports everything kept. No round trip through the background
//! thread is needed, which matters on a busy machine, where a woken thread can wait
//! milliseconds to be scheduled. The background thread is not asked to decide half of the
//! buffer either: deciding mostly frees dropped spans, and two threads freeing memory of one
//! allocator arena at once contend for it, so two deciding together finish later than one alone
//! (the sampler benchmark records the figures). The exporter sits behind a lock (see [`export`])
//! taken by the background thread and by flushing callers, never by `on_end`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
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

use self::export::{ExportSide, Exports};
use self::queue::{Pushed, SpanQueue};
use self::worker::{Intake, Worker};

mod export;
mod queue;
mod worker;

/// Default spans per export call (as the SDK's batch processor).
pub const DEFAULT_MAX_EXPORT_BATCH_SIZE: usize = 512;
/// Default capacity of the queue between `on_end` and the background thread, in spans. Room is
/// allocated a batch at a time as spans arrive, not up front.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 16_384;
/// Default interval between checks for due traces.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long `force_flush` waits for the background thread and the exporter.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest the background thread sleeps before looking at the queue again.
const MAX_TICK: Duration = Duration::from_millis(10);

/// Settings of the processor's queue and export side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessorConfig {
    /// Most spans per export call.
    pub max_export_batch_size: usize,
    /// Capacity of the queue between `on_end` and the background thread, in spans.
    pub max_queue_size: usize,
    /// How often the background thread decides due traces.
    pub poll_interval: Duration,
    /// How long `force_flush` waits for the background thread or a busy exporter before
    /// reporting a timeout.
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
    /// The span queue holds a full batch.
    Wake,
    /// Decide (or drop) everything, export, shut the exporter down and stop.
    Shutdown(Sender<OTelSdkResult>, Duration),
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
    /// Spans on their way to the background thread (and to `force_flush`, which takes the rest).
    spans: Arc<SpanQueue<SpanData>>,
    intake: Arc<Intake>,
    exports: Arc<dyn ExportSide>,
    tx: Sender<Message>,
    /// A `Wake` is on its way; cleared by the background thread when it drains the queue.
    wake_sent: Arc<AtomicBool>,
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
        // Building validates the configuration; validating it here too would compile the
        // policies twice.
        Self::new(exporter, SamplerConfig::from_yaml_unvalidated(yaml)?)
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
        if config.block_on_overflow == Some(true) {
            // `on_end` runs on the application's thread and must never wait (see the module
            // docs); a full buffer decides its oldest traces early instead.
            return Err(ConfigError::Setting {
                field: "block_on_overflow",
                reason: "`true` is not supported by the in-process processor, which never \
                         blocks `on_end`; leave it unset or `false` (a full buffer then decides \
                         its oldest traces early)"
                    .to_owned(),
            });
        }
        let sampler = Arc::new(TailSampler::with_clock(config, clock)?);
        // A full batch wakes the background thread; at most half the queue, so the thread is
        // woken before the queue fills.
        let batch = processor
            .max_export_batch_size
            .min(processor.max_queue_size / 2)
            .max(1);
        let spans = Arc::new(SpanQueue::new(processor.max_queue_size, batch));
        let (tx, rx) = bounded(64);
        let wake_sent = Arc::new(AtomicBool::new(false));
        let intake = Arc::new(Intake::default());
        let exports: Arc<dyn ExportSide> = Arc::new(Exports::new(
            exporter,
            processor.max_export_batch_size,
            processor.flush_timeout,
        ));
        let worker = Worker {
            sampler: sampler.clone(),
            exports: exports.clone(),
            rx,
            spans: spans.clone(),
            intake: intake.clone(),
            wake_sent: wake_sent.clone(),
            tick: processor
                .poll_interval
                .clamp(Duration::from_millis(1), MAX_TICK),
            batch: processor.max_export_batch_size,
            poll_interval: processor.poll_interval.max(Duration::from_millis(1)),
            export_wait: processor.flush_timeout,
            kept: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("traceq-sampler".to_owned())
            .spawn(move || worker.run())
            .map_err(ConfigError::Thread)?;
        Ok(Self {
            sampler,
            spans,
            intake,
            exports,
            tx,
            wake_sent,
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

    /// A handle that reads [`Self::metrics`] after the processor was handed to a tracer
    /// provider, which owns its processors, and after the provider shut it down.
    #[must_use]
    pub fn metrics_handle(&self) -> SamplerMetricsHandle {
        SamplerMetricsHandle {
            sampler: self.sampler.clone(),
        }
    }
}

/// A cheap, cloneable reader of a [`TailSamplingProcessor`]'s counters, for when the processor
/// itself was given away: to a tracer provider, which owns its processors.
///
/// It shares the sampler with the processor, and so keeps the sampler's decision caches alive
/// until the last handle is dropped (the buffer itself is empty once the processor shut down).
///
/// # Examples
///
/// ```
/// use opentelemetry::trace::{Span as _, Status, Tracer as _, TracerProvider as _};
/// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
/// use traceq_sampler::{SamplerConfig, TailSamplingProcessor};
///
/// let processor = TailSamplingProcessor::new(InMemorySpanExporter::default(), SamplerConfig::default())?;
/// let metrics = processor.metrics_handle();
/// let provider = SdkTracerProvider::builder().with_span_processor(processor).build();
/// let mut failed = provider.tracer("example").start("failed");
/// failed.set_status(Status::error("boom"));
/// failed.end();
/// provider.shutdown().unwrap();
///
/// let m = metrics.snapshot();
/// assert_eq!(m.global_count_traces_sampled, 1);
/// assert_eq!(m.spans_exported, 1);
/// # Ok::<(), traceq_sampler::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct SamplerMetricsHandle {
    sampler: Arc<TailSampler<SpanData>>,
}

impl SamplerMetricsHandle {
    /// A snapshot of the sampler's and the processor's counters, as
    /// [`TailSamplingProcessor::metrics`] gives.
    #[must_use]
    pub fn snapshot(&self) -> SamplerMetrics {
        self.sampler.metrics()
    }
}

impl fmt::Debug for SamplerMetricsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SamplerMetricsHandle")
            .field("sampler", &self.sampler)
            .finish()
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
        match self.spans.push(span) {
            Pushed::Queued => {}
            Pushed::BatchFull => {
                if !self.wake_sent.swap(true, Ordering::AcqRel) {
                    let _ = self.tx.try_send(Message::Wake);
                }
            }
            Pushed::Full(span) => {
                counters
                    .spans_dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                drop(span);
            }
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
            // Once we hold the lock and took what is queued, every span queued before this call
            // is in the buffer or in our hands, and every span kept before it waits for export.
            let _ingesting = self.intake.lock_for_flush();
            let mut batches = Vec::new();
            self.spans.take_all(&mut batches);
            for mut batch in batches {
                self.sampler.ingest_batch(batch.drain(..), &mut kept);
                self.spans.recycle(batch);
            }
        }
        self.sampler.flush(&mut kept);
        self.exports.add(&mut kept);
        let exported = self.exports.export(self.sampler.counters(), deadline);
        exported.and(self.exports.flush_exporter(deadline))
    }

    /// Decides (or, if so configured, drops) every pending trace, exports everything kept and
    /// shuts the exporter down. Idempotent: later calls return `Ok`.
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = bounded(1);
        self.tx
            .send_deadline(Message::Shutdown(ack_tx, timeout), deadline)
            .map_err(|_| OTelSdkError::Timeout(timeout))?;
        let result = match ack_rx.recv_deadline(deadline) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => return Err(OTelSdkError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(OTelSdkError::InternalFailure(
                    "the sampler's background thread stopped".to_owned(),
                ))
            }
        };
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
        self.exports.set_resource(resource);
    }
}

impl Drop for TailSamplingProcessor {
    fn drop(&mut self) {
        if !self.shut_down.load(Ordering::Acquire) {
            let _ = self.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests;
