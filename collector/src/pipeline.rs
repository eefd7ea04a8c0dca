//! The pipeline between receivers and exporters: the tail sampler, the kept-span batcher, and
//! the thread that decides traces when their time comes.
//!
//! Why a thread for decisions: deciding is CPU work under shard locks, done every few
//! milliseconds whatever the load; on its own thread it never delays a receiver's response, and
//! receivers never wait for it. Kept spans are encoded into batches and handed to every
//! exporter's bounded queue without blocking.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use traceq_sampler::{SamplerMetrics, SpanView, TailSampler};

use super::config::{CollectorConfig, OnBufferFull};
use super::sink::{Refused, SpanSink};
use traceq_exporter::export::{ExportBatch, ExporterQueue};
use traceq_exporter::otlp::{encode_request, OtlpSpan};

/// How often pending traces are checked for a due decision.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Refuse new data once the buffer is this full (per mille), leaving room for shards that fill
/// faster than the average so that refusing, not early decisions, absorbs overload.
const REFUSE_AT_PER_MILLE: usize = 900;

/// Kept spans waiting to fill a batch.
#[derive(Debug, Default)]
struct Pending {
    spans: Vec<OtlpSpan>,
    since: Option<Instant>,
}

/// The pipeline: owns the sampler and the exporters.
#[derive(Debug)]
pub(crate) struct Pipeline {
    sampler: Option<TailSampler<OtlpSpan>>,
    on_full: OnBufferFull,
    refuse_bytes: usize,
    refuse_traces: usize,
    pending: Mutex<Pending>,
    exporters: Vec<ExporterQueue>,
    batch_size: usize,
    batch_timeout: Duration,
    /// Taken shared by every offer and exclusively by `close`, so no offer is half-way in when
    /// the buffer is flushed for the last time.
    closed: RwLock<bool>,
    stop: Mutex<bool>,
    wake: Condvar,
    pub(crate) spans_kept: AtomicU64,
    pub(crate) batches_sent: AtomicU64,
}

impl Pipeline {
    /// Builds the sampler (unless sampling is off) around the given exporters.
    pub(crate) fn new(
        config: &CollectorConfig,
        exporters: Vec<ExporterQueue>,
    ) -> Result<Self, traceq_sampler::ConfigError> {
        let sampler = if config.sampling {
            Some(TailSampler::new(config.sampler.clone())?)
        } else {
            None
        };
        let (refuse_bytes, refuse_traces) = sampler.as_ref().map_or((0, 0), |s| {
            (
                s.byte_capacity() / 1000 * REFUSE_AT_PER_MILLE,
                s.trace_capacity() / 1000 * REFUSE_AT_PER_MILLE,
            )
        });
        Ok(Self {
            sampler,
            on_full: config.on_buffer_full,
            refuse_bytes,
            refuse_traces: refuse_traces.max(1),
            pending: Mutex::new(Pending::default()),
            exporters,
            batch_size: config.send_batch_size,
            batch_timeout: config.batch_timeout,
            closed: RwLock::new(false),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            spans_kept: AtomicU64::new(0),
            batches_sent: AtomicU64::new(0),
        })
    }

    /// The sampler's counters (`None` when sampling is off).
    pub(crate) fn sampler_metrics(&self) -> Option<SamplerMetrics> {
        self.sampler.as_ref().map(TailSampler::metrics)
    }

    pub(crate) fn exporters(&self) -> &[ExporterQueue] {
        &self.exporters
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
        let full = {
            let mut p = self.pending.lock();
            if p.spans.is_empty() {
                p.since = Some(Instant::now());
            }
            p.spans.append(kept);
            p.spans.len() >= self.batch_size
        };
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
                if p.spans.is_empty() {
                    return;
                }
                let timed_out = p.since.is_some_and(|t| t.elapsed() >= self.batch_timeout);
                if p.spans.len() >= self.batch_size {
                    let rest = p.spans.split_off(self.batch_size);
                    let batch = std::mem::replace(&mut p.spans, rest);
                    if p.spans.is_empty() {
                        p.since = None;
                    }
                    batch
                } else if all || timed_out {
                    p.since = None;
                    std::mem::take(&mut p.spans)
                } else {
                    return;
                }
            };
            self.send(&batch);
        }
    }

    fn send(&self, spans: &[OtlpSpan]) {
        let batch = ExportBatch {
            body: Bytes::from(encode_request(spans)),
            spans: spans.len(),
        };
        self.batches_sent.fetch_add(1, Relaxed);
        for exporter in &self.exporters {
            exporter.push(batch.clone());
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
    fn offer(&self, spans: Vec<OtlpSpan>) -> Result<(), Refused> {
        let closed = self.closed.read();
        if *closed {
            return Err(Refused::ShuttingDown);
        }
        let mut kept = Vec::new();
        match &self.sampler {
            Some(sampler) => {
                if let OnBufferFull::Refuse { retry_after } = self.on_full {
                    if self.is_full(sampler, charge(&spans)) {
                        return Err(Refused::Full { retry_after });
                    }
                }
                sampler.ingest_batch(spans, &mut kept);
            }
            None => kept = spans,
        }
        self.keep(&mut kept);
        Ok(())
    }
}
