//! The bounded queue in front of each exporter, and its sending task.
//!
//! Why bound in spans and in bytes, counting the batches being sent too: the bound is there to
//! cap memory, a batch stuck in retries holds its memory as surely as a queued one, and spans
//! vary from a hundred bytes to megabytes, so a span count alone does not cap it. Why `push` never
//! waits: the pipeline feeds every exporter from one place, and one slow downstream must not
//! hold the others back; a full queue drops the batch and counts it instead.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::batch::{ExportBatch, Receipt};
use super::config::ExporterConfig;
use super::delivery::{Delivery, Outcome};
use super::error::ExportSetupError;
use super::metrics::ExporterMetrics;
use super::sender::Sender;

/// One exporter: a queue bounded in spans and in encoded bytes, and the task that sends from it.
///
/// The task keeps up to four requests in flight for OTLP targets (one for files and stdout, so
/// lines keep their order); batches may be delivered out of order.
///
/// # Examples
/// ```
/// use std::sync::{atomic::Ordering, Arc};
/// use traceq_exporter::client::Compression;
/// use traceq_exporter::export::{
///     ExportBatch, ExportTarget, ExporterConfig, ExporterMetrics, ExporterQueue,
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = ExporterConfig::new(
///     "otlp/downstream",
///     ExportTarget::OtlpGrpc {
///         endpoint: "127.0.0.1:9".into(),
///         compression: Compression::Gzip,
///         timeout: std::time::Duration::from_secs(5),
///         headers: Vec::new(),
///     },
/// )
/// .with_queue_size(10_000);
/// let metrics = Arc::new(ExporterMetrics::default());
/// // Starting never connects: it succeeds while the downstream is down.
/// let queue = ExporterQueue::start(&config, metrics.clone())?;
/// // An encoded `ExportTraceServiceRequest` (here an empty one) and its span count.
/// queue.push(ExportBatch { body: bytes::Bytes::new(), spans: 1 });
/// // Nothing listens there, so at the deadline the batch is counted as dropped.
/// queue.shutdown(tokio::time::Instant::now()).await;
/// assert_eq!(metrics.spans_dropped.load(Ordering::Relaxed), 1);
/// # Ok(())
/// # }
/// ```
pub struct ExporterQueue {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
    stop: CancellationToken,
    shutting_down: AtomicBool,
}

impl fmt::Debug for ExporterQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("ExporterQueue")
            .field("name", &self.shared.delivery.name)
            .field("queue_size", &self.shared.capacity)
            .field("queue_bytes", &self.shared.capacity_bytes)
            .field("spans", &state.outstanding)
            .field("bytes", &state.outstanding_bytes)
            .field("batches_waiting", &state.batches.len())
            .field("closed", &state.closed)
            .finish_non_exhaustive()
    }
}

struct Shared {
    delivery: Delivery,
    /// Most spans accepted and not yet resolved (`queue_size`).
    capacity: usize,
    /// Most encoded bytes accepted and not yet resolved (`queue_bytes`).
    capacity_bytes: usize,
    state: Mutex<State>,
    /// Wakes the sending task: a batch was queued, or shutdown began.
    wake: Notify,
    warned_full: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Batches waiting to be sent, each with the receipt to settle once it is resolved.
    batches: VecDeque<(ExportBatch, Option<Receipt>)>,
    /// Spans accepted and not yet sent or dropped: waiting plus in flight.
    outstanding: usize,
    /// Encoded bytes of those batches.
    outstanding_bytes: usize,
    /// No more batches are accepted.
    closed: bool,
}

impl State {
    /// Queues `batch` if it fits under `capacity` spans and `capacity_bytes` bytes, or hands
    /// it back.
    fn admit(
        &mut self,
        batch: (ExportBatch, Option<Receipt>),
        capacity: usize,
        capacity_bytes: usize,
    ) -> Result<(), (ExportBatch, Option<Receipt>)> {
        let spans = self.outstanding.checked_add(batch.0.spans);
        let bytes = self.outstanding_bytes.checked_add(batch.0.body.len());
        match (spans, bytes) {
            (Some(spans), Some(bytes)) if spans <= capacity && bytes <= capacity_bytes => {
                self.outstanding = spans;
                self.outstanding_bytes = bytes;
                self.batches.push_back(batch);
                Ok(())
            }
            _ => Err(batch),
        }
    }
}

impl ExporterQueue {
    /// Starts the exporter named in `config` and its sending task. Connections are made lazily,
    /// so this succeeds while the downstream is down.
    ///
    /// # Errors
    /// An invalid endpoint or header, an `https` endpoint (TLS to the downstream is not
    /// supported), a file that cannot be opened, a zero `max_export_bytes`, a `queue_bytes`
    /// under `max_export_bytes`, or no tokio runtime; each names the exporter.
    pub fn start(
        config: &ExporterConfig,
        metrics: Arc<ExporterMetrics>,
    ) -> Result<Self, ExportSetupError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ExportSetupError::NoRuntime {
                exporter: config.name.clone(),
            })?;
        check_limits(config)?;
        let sender = Sender::from_config(config)?;
        let delivery = Delivery::new(
            config.name.clone(),
            sender,
            config.retry,
            config.max_export_bytes,
            metrics,
        );
        let shared = Arc::new(Shared {
            delivery,
            capacity: config.queue_size,
            capacity_bytes: config.queue_bytes,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            warned_full: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let task = runtime.spawn(run(Arc::clone(&shared), stop.clone()));
        Ok(Self {
            shared,
            task: Mutex::new(Some(task)),
            stop,
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The exporter's name from the configuration, e.g. `otlp/tempo`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.shared.delivery.name
    }

    /// The largest encoded request this exporter sends (`max_export_bytes`).
    #[must_use]
    pub fn max_export_bytes(&self) -> usize {
        self.shared.delivery.max_export_bytes
    }

    /// Reopens the output file at its configured path (after the old one was renamed for log
    /// rotation), syncing the old one first; lines written from then on go to the new file.
    /// Returns whether this exporter writes a file (others do nothing). On an error the old
    /// file stays in use.
    ///
    /// # Errors
    /// [`ExportSetupError::OpenFile`] when the path cannot be opened for appending.
    pub async fn reopen(&self) -> Result<bool, ExportSetupError> {
        self.shared.delivery.sender.reopen(self.name()).await
    }

    /// Queues `batch` without ever waiting. A batch that would take the queue past
    /// `queue_size` spans or `queue_bytes` bytes, or that comes after shutdown began, is
    /// dropped and counted in `spans_dropped` (a full queue is reported once on stderr). An
    /// empty batch is ignored.
    pub fn push(&self, batch: ExportBatch) {
        self.push_owed(batch, None);
    }

    /// [`Self::push`] with a [`Receipt`] settled once the batch is resolved: delivered,
    /// rejected, given up after its retries, or dropped because the queue is full. A batch
    /// pushed after shutdown began, still queued or in flight at the shutdown deadline, or
    /// queued when the exporter is dropped, is still owed: its receipt is dropped unsettled.
    pub fn push_with_receipt(&self, batch: ExportBatch, receipt: Receipt) {
        self.push_owed(batch, Some(receipt));
    }

    fn push_owed(&self, batch: ExportBatch, receipt: Option<Receipt>) {
        if batch.spans == 0 {
            if let Some(receipt) = receipt {
                receipt.settle();
            }
            return;
        }
        let metrics = &self.shared.delivery.metrics;
        let refused = {
            let mut state = self.shared.state.lock();
            if state.closed {
                Err(((batch, receipt), false))
            } else {
                let admitted = state.admit(
                    (batch, receipt),
                    self.shared.capacity,
                    self.shared.capacity_bytes,
                );
                metrics.queue_spans.store(state.outstanding as u64, Relaxed);
                metrics
                    .queue_bytes
                    .store(state.outstanding_bytes as u64, Relaxed);
                admitted.map_err(|b| (b, true))
            }
        };
        match refused {
            Ok(()) => self.shared.wake.notify_one(),
            Err(((batch, receipt), full)) => {
                ExporterMetrics::add(&metrics.spans_dropped, batch.spans as u64);
                // Dropped for good from a full queue; after shutdown began, still owed.
                if let (true, Some(receipt)) = (full, receipt) {
                    receipt.settle();
                }
                if full && !self.shared.warned_full.swap(true, Relaxed) {
                    eprintln!(
                        "traceq: exporter {}: queue full ({} spans or {} bytes), dropping \
                         batches",
                        self.name(),
                        self.shared.capacity,
                        self.shared.capacity_bytes
                    );
                }
            }
        }
    }

    /// Stops accepting batches, delivers what is queued (retrying retryable failures) until
    /// `deadline`, then counts whatever is left as dropped and reports the drops on stderr.
    /// Idempotent: later calls return at once.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) {
        if self.shutting_down.swap(true, Relaxed) {
            return;
        }
        self.shared.state.lock().closed = true;
        self.shared.wake.notify_one();
        let task = self.task.lock().take();
        if let Some(mut task) = task {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                self.stop.cancel();
                // Prompt: on cancel the task only counts what is left. A panic in it (there
                // should be none) must not become a panic here.
                let _ = task.await;
            }
        }
        // What was written must be on disk before the process exits.
        if let Err(e) = self.shared.delivery.sender.sync().await {
            eprintln!("traceq: exporter {}: {e}", self.name());
        }
        let dropped = ExporterMetrics::get(&self.shared.delivery.metrics.spans_dropped);
        if dropped > 0 {
            eprintln!(
                "traceq: exporter {}: {dropped} spans dropped in total",
                self.name()
            );
        }
    }
}

impl Drop for ExporterQueue {
    /// Stops the sending task; anything still queued is counted as dropped.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Shared {
    fn pop(&self) -> Option<(ExportBatch, Option<Receipt>)> {
        self.state.lock().batches.pop_front()
    }

    fn closed_and_empty(&self) -> bool {
        let state = self.state.lock();
        state.closed && state.batches.is_empty()
    }

    /// Counts a resolved batch and frees its room in the queue.
    fn finish(&self, (spans, bytes): (usize, usize), outcome: Outcome) {
        let metrics = &self.delivery.metrics;
        {
            let mut state = self.state.lock();
            state.outstanding = state.outstanding.saturating_sub(spans);
            state.outstanding_bytes = state.outstanding_bytes.saturating_sub(bytes);
            metrics.queue_spans.store(state.outstanding as u64, Relaxed);
            metrics
                .queue_bytes
                .store(state.outstanding_bytes as u64, Relaxed);
        }
        ExporterMetrics::add(&metrics.spans_sent, outcome.sent as u64);
        ExporterMetrics::add(&metrics.spans_dropped, outcome.dropped as u64);
        ExporterMetrics::add(&metrics.spans_rejected, outcome.rejected as u64);
    }

    /// Counts everything waiting or in flight as dropped (the deadline passed).
    fn drop_outstanding(&self) {
        let metrics = &self.delivery.metrics;
        let mut state = self.state.lock();
        ExporterMetrics::add(&metrics.spans_dropped, state.outstanding as u64);
        state.outstanding = 0;
        state.outstanding_bytes = 0;
        state.batches.clear();
        state.closed = true;
        metrics.queue_spans.store(0, Relaxed);
        metrics.queue_bytes.store(0, Relaxed);
    }
}

/// The sending task: keeps up to `max_in_flight` deliveries going until the queue is closed and
/// drained, or `stop` is cancelled.
async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let max_in_flight = shared.delivery.sender.max_in_flight();
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < max_in_flight {
            let Some((batch, receipt)) = shared.pop() else {
                break;
            };
            let shared = Arc::clone(&shared);
            in_flight.push(async move {
                let size = (batch.spans, batch.body.len());
                let outcome = shared.delivery.deliver(batch).await;
                // Not reached when cancelled at the deadline: the receipt stays unsettled.
                if let Some(receipt) = receipt {
                    receipt.settle();
                }
                (size, outcome)
            });
        }
        if in_flight.is_empty() && shared.closed_and_empty() {
            return;
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                drop(in_flight);
                shared.drop_outstanding();
                return;
            }
            Some((size, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                shared.finish(size, outcome);
            }
            () = shared.wake.notified() => {}
        }
    }
}

/// The bounds a queue cannot work with: nothing would ever be sent, or a full request would
/// never fit in the queue.
fn check_limits(config: &ExporterConfig) -> Result<(), ExportSetupError> {
    let invalid = |reason: String| ExportSetupError::InvalidLimit {
        exporter: config.name.clone(),
        reason,
    };
    if config.max_export_bytes == 0 {
        return Err(invalid("max_export_bytes must be positive".into()));
    }
    if config.queue_size == 0 {
        return Err(invalid("the queue size must be positive".into()));
    }
    if config.queue_bytes < config.max_export_bytes {
        return Err(invalid(format!(
            "the queue's byte bound ({}) must be at least max_export_bytes ({}), or a full \
             request would never fit",
            config.queue_bytes, config.max_export_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
