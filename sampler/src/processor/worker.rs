//! The background thread, and what it shares with `force_flush` callers.
//!
//! The thread buffers queued spans, decides due traces every `poll_interval` and exports kept
//! spans. A `force_flush` caller does the same work for a flush on its own thread, because it
//! waits anyway and is running already, while the background thread may first have to be
//! scheduled. Queued spans are buffered by whoever holds the [`Intake`] lock, one batch at a
//! time and in queue order; exports are serialized by the exporter's lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::SpanData;
use parking_lot::{Mutex, MutexGuard};

use super::export::ExportSide;
use super::queue::SpanQueue;
use super::Message;
use crate::sampler::TailSampler;

/// Buffering rights: queued spans are buffered by the background thread, or by a
/// `force_flush` caller, one batch at a time and in queue order.
#[derive(Debug, Default)]
pub(super) struct Intake {
    /// Held while batches taken off the queue are being buffered, and while the background
    /// thread decides due traces, until what they kept is waiting for export. Once a flush holds
    /// it, every span queued before the flush is in the buffer or in the flush's hands, and
    /// every span kept before it waits for export.
    lock: Mutex<()>,
    /// `force_flush` calls waiting for `lock`. The background thread leaves the queue to them
    /// instead of taking the next batch: the caller is running already, while handing the lock
    /// back and forth would cost both threads a sleep and a wake-up per batch.
    flushers: AtomicUsize,
}

impl Intake {
    /// The lock, for a flush: the background thread stops taking batches meanwhile.
    pub(super) fn lock_for_flush(&self) -> MutexGuard<'_, ()> {
        self.flushers.fetch_add(1, Ordering::AcqRel);
        let guard = self.lock.lock();
        self.flushers.fetch_sub(1, Ordering::AcqRel);
        guard
    }

    fn flush_waiting(&self) -> bool {
        self.flushers.load(Ordering::Acquire) > 0
    }
}

/// The background thread's state.
pub(super) struct Worker {
    pub(super) sampler: Arc<TailSampler<SpanData>>,
    pub(super) exports: Arc<dyn ExportSide>,
    pub(super) rx: Receiver<Message>,
    pub(super) spans: Arc<SpanQueue<SpanData>>,
    pub(super) intake: Arc<Intake>,
    /// A `Wake` is on its way; cleared here before the queue is drained.
    pub(super) wake_sent: Arc<AtomicBool>,
    /// Longest sleep between looks at the queue.
    pub(super) tick: Duration,
    /// Spans per export call: an export starts once this many wait.
    pub(super) batch: usize,
    pub(super) poll_interval: Duration,
    /// How long an export waits for the exporter (busy with a flush's export).
    pub(super) export_wait: Duration,
    /// Kept spans on their way to the export list (kept to reuse its room).
    pub(super) kept: Vec<SpanData>,
}

impl Worker {
    pub(super) fn run(mut self) {
        let mut next_poll = Instant::now() + self.poll_interval;
        loop {
            let msg = self.rx.recv_timeout(self.tick);
            // Spans queued before a request are buffered before it is handled.
            self.drain_spans();
            match msg {
                Ok(Message::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Message::Shutdown(ack, timeout)) => {
                    let _ = ack.send(self.shutdown(timeout));
                    self.discard_queue();
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.shutdown(Duration::from_secs(5));
                    return;
                }
            }
            if Instant::now() >= next_poll {
                {
                    let _deciding = self.intake.lock.lock();
                    self.sampler.poll(&mut self.kept);
                    self.exports.add(&mut self.kept);
                }
                // Failures are counted in `export_failures`; nobody waits for this result.
                let _ = self.export();
                next_poll = Instant::now() + self.poll_interval;
            }
        }
    }

    /// Buffers every queued span, a batch at a time, reading the clock once per batch.
    fn drain_spans(&mut self) {
        self.wake_sent.store(false, Ordering::Release);
        loop {
            if self.intake.flush_waiting() {
                // The caller buffers the rest itself rather than wait for us.
                break;
            }
            let batch = {
                // Released before any export.
                let _ingesting = self.intake.lock.lock();
                let Some(mut batch) = self.spans.take() else {
                    break;
                };
                self.sampler.ingest_batch(batch.drain(..), &mut self.kept);
                self.exports.add(&mut self.kept);
                batch
            };
            self.spans.recycle(batch);
            if self.exports.waiting() >= self.batch {
                let _ = self.export();
            }
        }
    }

    fn export(&self) -> OTelSdkResult {
        self.exports
            .export(self.sampler.counters(), Instant::now() + self.export_wait)
    }

    /// Decides (or drops) everything, exports what is kept and shuts the exporter down.
    fn shutdown(&mut self, timeout: Duration) -> OTelSdkResult {
        {
            let _deciding = self.intake.lock.lock();
            self.sampler.shutdown(&mut self.kept);
            self.exports.add(&mut self.kept);
        }
        let exported = self
            .exports
            .export(self.sampler.counters(), Instant::now() + timeout);
        exported.and(self.exports.shutdown(timeout))
    }

    /// Counts spans that raced with shutdown into the queue; answers late requests.
    fn discard_queue(&mut self) {
        let stale_spans = self.spans.discard() as u64;
        self.sampler
            .counters()
            .spans_dropped_after_shutdown
            .fetch_add(stale_spans, Ordering::Relaxed);
        let stale: VecDeque<Message> = self.rx.try_iter().collect();
        for msg in stale {
            match msg {
                Message::Shutdown(ack, _) => {
                    let _ = ack.send(Ok(()));
                }
                Message::Wake => {}
            }
        }
    }
}
