//! Crash-safe storage: a write-ahead log of accepted requests and decisions, replayed on start.
//!
//! A tail sampler holds every trace in memory until it decides; without storage a killed
//! process loses every pending trace, error traces included. With storage (the Collector's
//! `file_storage` extension, named by `processors.tail_sampling.storage` or an exporter's
//! `sending_queue.storage`, or `--storage DIR`):
//!
//! - every accepted request is appended to the log, encoded as it will be forwarded, before it
//!   is acknowledged; with `fsync: always` the acknowledgement also waits for the record to be
//!   synced to disk (group commit: one `fdatasync` covers every request written meanwhile);
//!   with `fsync: interval` (the default, every 100 ms) a process crash loses nothing
//!   acknowledged (the bytes are with the kernel) and a power loss at most the interval; with
//!   `never`, the kernel decides when;
//! - every decision is logged, and a request is marked settled once each of its spans was
//!   decided and, when kept, delivered (or given up) by every exporter whose `sending_queue`
//!   names the storage (an exporter that does not is done with a batch once it is queued);
//! - on start the log is replayed ([`replay`]): pending traces are rebuilt with their original
//!   arrival times, kept spans not yet delivered are queued again, the decision caches are
//!   restored. Delivery is at least once: spans replayed are counted;
//! - segments are deleted oldest first once every request in them is settled; the log is
//!   bounded by `max_storage_bytes`: past it, requests are refused like a full buffer
//!   (retryable), and taken again as exports drain.
//!
//! Why an append-only log of our own and not a crate: the records are already encoded bytes
//! that are written once, read only on start, and deleted a whole segment at a time, in order.
//! An embedded key-value store (an LSM such as fjall, or a B-tree such as redb) would index,
//! compact and rewrite them, costing write amplification and a second copy for nothing we
//! read; a log is a few hundred lines over `std::fs` and one checksum crate.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use traceq_exporter::export::Receipt;
use traceq_exporter::otlp::{OtlpSpan, Retained};

mod log;
mod record;
mod replay;
#[cfg(test)]
mod tests;

pub(crate) use self::log::{unix_nanos, AppendError, Log, RecordToken};
pub(crate) use self::replay::{replay, ReplayReport};

/// Default interval between syncs with `fsync: interval`.
pub const DEFAULT_STORAGE_FSYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Default bound on the log's size on disk (2 GiB: the default buffer and sending queue with
/// room to spare).
pub const DEFAULT_MAX_STORAGE_BYTES: u64 = 2 << 30;
/// Default size at which a segment is closed and the next one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Smallest segment: a log bounded tighter than eight of these uses fewer, smaller ones.
const MIN_SEGMENT_BYTES: u64 = 64 << 10;

/// When the log is synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// Before each request is acknowledged (grouped: one sync covers every request written
    /// while the previous one ran). Nothing acknowledged is lost, power loss included.
    Always,
    /// Every `fsync_interval`. A process crash loses nothing acknowledged; a power loss or
    /// kernel crash at most the interval.
    Interval,
    /// When the kernel writes back. A process crash loses nothing acknowledged; a power loss
    /// may lose whatever the kernel had not written.
    Never,
}

/// The `file_storage` extension's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Where the segments live (created if missing); one collector per directory.
    pub directory: PathBuf,
    /// When the log is synced.
    pub fsync: FsyncMode,
    /// The interval with [`FsyncMode::Interval`].
    pub fsync_interval: Duration,
    /// Most bytes on disk; past it requests are refused (retryable) until exports drain.
    pub max_storage_bytes: u64,
    /// Size at which a segment is closed (at most an eighth of `max_storage_bytes` is used).
    pub segment_bytes: u64,
    /// The exporters whose deliveries the log waits for (`sending_queue.storage`); the others
    /// are done with a batch once it is queued.
    pub exporters: Vec<String>,
}

impl StorageConfig {
    /// Storage in `directory` with the defaults, covering the exporters named.
    #[must_use]
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        Self {
            directory: directory.into(),
            fsync: FsyncMode::Interval,
            fsync_interval: DEFAULT_STORAGE_FSYNC_INTERVAL,
            max_storage_bytes: DEFAULT_MAX_STORAGE_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            exporters: Vec::new(),
        }
    }

    /// The segment size used: `segment_bytes`, at most an eighth of the bound (so that
    /// settled segments can be deleted before the bound is reached), at least 64 KiB.
    pub(crate) fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes
            .min(self.max_storage_bytes / 8)
            .max(MIN_SEGMENT_BYTES)
    }
}

/// Why the storage could not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A file operation failed.
    #[error("storage: {what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the directory.
    #[error(
        "storage: {} is in use by another traceq collector (each needs a directory of its own)",
        directory.display()
    )]
    Locked {
        /// The directory.
        directory: PathBuf,
    },
}

/// Fsync latency buckets, in seconds (upper bounds).
pub(crate) const FSYNC_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// The storage's counters, shown on `/metrics` as `traceq_storage_*`.
#[derive(Debug, Default)]
pub(crate) struct StorageMetrics {
    pub(crate) bytes: AtomicU64,
    pub(crate) segments: AtomicU64,
    pub(crate) fsync_buckets: [AtomicU64; FSYNC_BUCKETS.len()],
    pub(crate) fsyncs: AtomicU64,
    pub(crate) fsync_nanos: AtomicU64,
    pub(crate) refused_requests: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) replayed_requests: AtomicU64,
    pub(crate) replayed_spans: AtomicU64,
    pub(crate) replayed_traces: AtomicU64,
    pub(crate) requeued_spans: AtomicU64,
    pub(crate) corrupt_records: AtomicU64,
    pub(crate) skipped_bytes: AtomicU64,
    pub(crate) replay_nanos: AtomicU64,
}

impl StorageMetrics {
    pub(crate) fn record_fsync(&self, took: Duration) {
        self.fsyncs.fetch_add(1, Relaxed);
        self.fsync_nanos
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = FSYNC_BUCKETS.iter().position(|&b| secs <= b) {
            self.fsync_buckets[i].fetch_add(1, Relaxed);
        }
    }
}

/// Makes every span of one logged request keep its record alive (see [`OtlpSpan::retain`]).
pub(crate) fn retain_all(spans: &[OtlpSpan], token: &Retained) {
    let mut last: Option<&OtlpSpan> = None;
    for span in spans {
        if last.is_some_and(|l| l.same_origin(span)) {
            continue;
        }
        span.retain(token);
        last = Some(span);
    }
}

/// The records a batch of kept spans came from, held until every exporter covered by the
/// storage settled the batch. Dropped before that (an exporter stopped with the batch still
/// owed), it abandons them: they stay in the log for the next start.
#[derive(Debug)]
pub(crate) struct BatchAck {
    remaining: AtomicUsize,
    records: Mutex<Vec<Retained>>,
}

impl BatchAck {
    /// The distinct records of `spans`, owed to `exporters` exporters.
    pub(crate) fn new(spans: &[OtlpSpan], exporters: usize) -> Arc<Self> {
        let mut records: Vec<Retained> = Vec::new();
        let mut last: Option<&OtlpSpan> = None;
        for span in spans {
            if last.is_some_and(|l| l.same_origin(span)) {
                continue;
            }
            last = Some(span);
            if let Some(r) = span.retained() {
                if !records.iter().rev().take(8).any(|x| Arc::ptr_eq(x, r)) {
                    records.push(r.clone());
                }
            }
        }
        Arc::new(Self {
            remaining: AtomicUsize::new(exporters),
            records: Mutex::new(records),
        })
    }

    /// A receipt for one exporter.
    pub(crate) fn receipt(self: &Arc<Self>) -> Receipt {
        let me = self.clone();
        Receipt::new(move || {
            me.remaining.fetch_sub(1, Relaxed);
        })
    }
}

impl Drop for BatchAck {
    fn drop(&mut self) {
        if self.remaining.load(Relaxed) > 0 {
            for r in self.records.get_mut().iter() {
                if let Some(token) = r.downcast_ref::<RecordToken>() {
                    token.abandon();
                }
            }
        }
    }
}
