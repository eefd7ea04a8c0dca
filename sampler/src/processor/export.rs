//! The export side: kept spans waiting for export, and the exporter behind a lock.
//!
//! Why a lock around the exporter: two threads export. The background thread exports traces
//! decided as they come due, and a thread calling `force_flush` exports what it decided itself,
//! rather than handing the spans over and waiting for the background thread to be scheduled
//! (on a busy machine that wait is often longer than the export). Exports must not overlap (the
//! SDK's exporters expect one call at a time), hence the lock. `on_end` never takes it.
//!
//! Kept spans wait in one shared list. An export takes the list while holding the exporter's
//! lock, so an export that returns has exported every span added before it was called.

use std::mem;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use parking_lot::Mutex;

use crate::metrics::Counters;

/// The exporter, type-erased so that the processor need not be generic over it.
pub(super) trait ExportSide: Send + Sync {
    /// Appends kept spans to the list waiting for export; leaves `spans` empty.
    fn add(&self, spans: &mut Vec<SpanData>);

    /// Spans waiting for export.
    fn waiting(&self) -> usize;

    /// Exports every waiting span, in batches; waits for the exporter until `deadline`.
    /// Successes and failures are counted in `counters`; the first failure is returned.
    fn export(&self, counters: &Counters, deadline: Instant) -> OTelSdkResult;

    /// Asks the exporter to flush what it buffers itself.
    fn flush_exporter(&self, deadline: Instant) -> OTelSdkResult;

    /// Shuts the exporter down.
    fn shutdown(&self, timeout: Duration) -> OTelSdkResult;

    /// Hands the tracer provider's resource to the exporter.
    fn set_resource(&self, resource: &Resource);
}

/// An exporter and the spans waiting for it (see the module docs).
#[derive(Debug)]
pub(super) struct Exports<E> {
    exporter: Mutex<E>,
    waiting: Mutex<Vec<SpanData>>,
    /// Most spans per export call.
    batch: usize,
    /// Reported when the exporter stays busy past a deadline.
    timeout: Duration,
}

impl<E: SpanExporter> Exports<E> {
    pub(super) fn new(exporter: E, batch: usize, timeout: Duration) -> Self {
        Self {
            exporter: Mutex::new(exporter),
            waiting: Mutex::new(Vec::new()),
            batch,
            timeout,
        }
    }

    fn lock_until(
        &self,
        deadline: Instant,
    ) -> Result<parking_lot::MutexGuard<'_, E>, OTelSdkError> {
        self.exporter
            .try_lock_until(deadline)
            .ok_or(OTelSdkError::Timeout(self.timeout))
    }
}

impl<E: SpanExporter> ExportSide for Exports<E> {
    fn add(&self, spans: &mut Vec<SpanData>) {
        if !spans.is_empty() {
            self.waiting.lock().append(spans);
        }
    }

    fn waiting(&self) -> usize {
        self.waiting.lock().len()
    }

    fn export(&self, counters: &Counters, deadline: Instant) -> OTelSdkResult {
        let exporter = self.lock_until(deadline)?;
        let spans = mem::take(&mut *self.waiting.lock());
        let mut result = Ok(());
        let mut export = |batch: Vec<SpanData>| {
            let n = batch.len() as u64;
            match futures::executor::block_on(exporter.export(batch)) {
                Ok(()) => {
                    counters.spans_exported.fetch_add(n, Relaxed);
                }
                Err(e) => {
                    counters.export_failures.fetch_add(1, Relaxed);
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        };
        if spans.len() <= self.batch {
            // The common case: the list is one batch and goes to the exporter as it is.
            if !spans.is_empty() {
                export(spans);
            }
        } else {
            let mut spans = spans.into_iter();
            while spans.len() > 0 {
                export(spans.by_ref().take(self.batch).collect());
            }
        }
        result
    }

    fn flush_exporter(&self, deadline: Instant) -> OTelSdkResult {
        self.lock_until(deadline)?.force_flush()
    }

    fn shutdown(&self, timeout: Duration) -> OTelSdkResult {
        self.lock_until(Instant::now() + timeout)?
            .shutdown_with_timeout(timeout)
    }

    fn set_resource(&self, resource: &Resource) {
        self.exporter.lock().set_resource(resource);
    }
}
