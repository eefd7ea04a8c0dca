//! The write-ahead log: segment files appended by a writer thread, synced and pruned by another.
//!
//! Why a writer thread: a request's bytes must reach the kernel before the request is
//! acknowledged (a process crash then loses nothing acknowledged), and writing is a blocking
//! system call that must not stall the async workers that decode other requests. Receivers
//! encode and checksum their record themselves (in parallel), queue it, and wait
//! asynchronously; the writer writes everything queued meanwhile in order, then releases them.
//! What is grouped as well is the expensive part, `fdatasync`: the sync thread covers
//! everything written since its last sync in one call, and with `fsync: always` every receiver
//! waiting on a sync is released by the first one that covers its record (group commit).
//!
//! Why segments are deleted oldest first only: a request's trace is decided, and the decision
//! logged (through the same queue, so after the request), after the request; keeping every
//! segment after the oldest unsettled one keeps every decision a replay needs for the requests
//! it replays.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::TraceId;
use parking_lot::{Condvar, Mutex};
use tokio::sync::{oneshot, watch};
use traceq_exporter::otlp::{encode_request_into, OtlpSpan};
use traceq_sampler::KeptDecision;

use super::record::{self, Kind, SEGMENT_HEADER};
use super::{FsyncMode, StorageConfig, StorageError, StorageMetrics};

/// The lock file that keeps a second collector off the directory.
const LOCK_FILE: &str = "LOCK";
/// How often the sync thread writes settled records and prunes segments when nothing else
/// wakes it.
const HOUSEKEEPING: Duration = Duration::from_millis(50);

/// Why a request was not logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendError {
    /// `max_storage_bytes` is reached.
    Full,
    /// The write failed (disk full, I/O error); counted and reported.
    Io,
}

/// Segment of a token whose record is not written yet.
const UNWRITTEN: u64 = u64::MAX;

/// A logged request, alive while any of its spans is undecided or undelivered; dropping the
/// last reference settles it (unless abandoned). The writer holds a reference until it has
/// written the record, so a token never settles before its record is in a segment.
#[derive(Debug)]
pub(crate) struct RecordToken {
    seq: u64,
    segment: AtomicU64,
    log: Arc<Inner>,
    abandoned: AtomicBool,
}

impl RecordToken {
    /// The request's data is still owed (an exporter stopped before delivering it): it stays
    /// in the log for the next start, whatever happens to its other spans.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Relaxed);
    }
}

impl Drop for RecordToken {
    fn drop(&mut self) {
        let segment = self.segment.load(Relaxed);
        // A record that was never written (its write failed) has nothing to settle.
        if !self.abandoned.load(Relaxed) && segment != UNWRITTEN {
            self.log.settle(self.seq, segment);
        }
    }
}

/// A queued request: its token, and what to wait on before acknowledging it.
#[derive(Debug)]
pub(crate) struct Appended {
    pub(crate) token: Arc<RecordToken>,
    /// Where its record ends in the log's byte stream.
    pub(crate) end: u64,
    /// Whether the write succeeded, once done.
    pub(crate) written: oneshot::Receiver<bool>,
}

/// A record waiting for the writer.
#[derive(Debug)]
struct Queued {
    bytes: Vec<u8>,
    /// For a request: its token and whom to tell.
    request: Option<(Arc<RecordToken>, oneshot::Sender<bool>)>,
}

#[derive(Debug, Default)]
struct Queue {
    records: Vec<Queued>,
    /// Bytes queued and not written yet (counted against `max_storage_bytes`).
    bytes: u64,
    /// The log's byte stream's end once everything queued is written.
    end: u64,
    /// No more records are taken; the writer drains what is queued and stops.
    closed: bool,
}

#[derive(Debug)]
struct Active {
    file: Arc<File>,
    id: u64,
    len: u64,
}

#[derive(Debug, Default)]
struct Segment {
    bytes: u64,
    unsettled: u64,
    sealed: bool,
}

#[derive(Debug, Default)]
struct Segments {
    live: BTreeMap<u64, Segment>,
    /// Requests settled since the last settled record.
    settled: Vec<u64>,
    /// Segments rolled over and not synced since.
    to_sync: Vec<Arc<File>>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    dir: PathBuf,
    fsync: FsyncMode,
    fsync_interval: Duration,
    max_bytes: u64,
    segment_bytes: u64,
    queue: Mutex<Queue>,
    /// Wakes the writer: records were queued, or the queue closed.
    queued: Condvar,
    active: Mutex<Active>,
    segments: Mutex<Segments>,
    next_seq: AtomicU64,
    /// Bytes written since the log was opened, across segments.
    written: AtomicU64,
    synced: watch::Sender<u64>,
    /// Set to stop the sync thread; it is woken through `wake`.
    stop: Mutex<bool>,
    wake: Condvar,
    closed: AtomicBool,
    warned_io: AtomicBool,
    pub(crate) metrics: StorageMetrics,
}

/// The log; see the module docs.
#[derive(Debug)]
pub(crate) struct Log {
    inner: Arc<Inner>,
    syncer: Mutex<Option<JoinHandle<()>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Held (locked) until [`Self::close`]; tokens outliving the log do not hold it.
    lock: Mutex<Option<File>>,
}

/// Nanoseconds since the Unix epoch, now.
pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn create_segment(dir: &Path, id: u64) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(dir.join(record::segment_name(id)))?;
    file.write_all(&record::segment_header(id))?;
    Ok(file)
}

impl Log {
    /// Opens `config.directory` (creating it), takes its lock and starts a new segment after
    /// the ones there. Returns the log and the ids of the segments found, oldest first, to
    /// replay; nothing is pruned or synced until [`Self::start`].
    pub(crate) fn open(config: &StorageConfig) -> Result<(Self, Vec<u64>), StorageError> {
        let dir = config.directory.clone();
        let io = |what: &str, e: std::io::Error| StorageError::Io {
            what: format!("{what} {}", dir.display()),
            source: e,
        };
        fs::create_dir_all(&dir).map_err(|e| io("cannot create", e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| io("cannot open the lock file in", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StorageError::Locked {
                    directory: dir.clone(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io("cannot lock", e)),
        }
        let mut found = Vec::new();
        let mut segments = Segments::default();
        let mut total = 0;
        for entry in fs::read_dir(&dir).map_err(|e| io("cannot list", e))? {
            let entry = entry.map_err(|e| io("cannot list", e))?;
            let Some(id) = entry.file_name().to_str().and_then(record::segment_id) else {
                continue;
            };
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            total += bytes;
            found.push(id);
            segments.live.insert(
                id,
                Segment {
                    bytes,
                    // Held until the replay counts what is unsettled in it.
                    unsettled: 1,
                    sealed: true,
                },
            );
        }
        found.sort_unstable();
        let id = found.last().map_or(0, |last| last + 1);
        let file = create_segment(&dir, id).map_err(|e| io("cannot create a segment in", e))?;
        segments.live.insert(
            id,
            Segment {
                bytes: SEGMENT_HEADER as u64,
                unsettled: 0,
                sealed: false,
            },
        );
        let metrics = StorageMetrics::default();
        metrics.bytes.store(total + SEGMENT_HEADER as u64, Relaxed);
        metrics.segments.store(segments.live.len() as u64, Relaxed);
        let inner = Arc::new(Inner {
            dir,
            fsync: config.fsync,
            fsync_interval: config.fsync_interval,
            max_bytes: config.max_storage_bytes,
            segment_bytes: config.effective_segment_bytes(),
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
            active: Mutex::new(Active {
                file: Arc::new(file),
                id,
                len: SEGMENT_HEADER as u64,
            }),
            segments: Mutex::new(segments),
            next_seq: AtomicU64::new(0),
            written: AtomicU64::new(0),
            synced: watch::channel(0).0,
            stop: Mutex::new(false),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            warned_io: AtomicBool::new(false),
            metrics,
        });
        let log = Self {
            inner,
            syncer: Mutex::new(None),
            writer: Mutex::new(None),
            lock: Mutex::new(Some(lock)),
        };
        Ok((log, found))
    }

    /// The counters.
    pub(crate) fn metrics(&self) -> &StorageMetrics {
        &self.inner.metrics
    }

    /// The sequence number the next request gets.
    #[cfg(test)]
    pub(crate) fn next_seq(&self) -> u64 {
        self.inner.next_seq.load(Relaxed)
    }

    /// How far the log is synced.
    #[cfg(test)]
    pub(crate) fn synced_to(&self) -> u64 {
        *self.inner.synced.borrow()
    }

    /// The path of segment `id`.
    pub(crate) fn segment_path(&self, id: u64) -> PathBuf {
        self.inner.dir.join(record::segment_name(id))
    }

    /// After a replay: the next request's sequence number, and how many requests of each
    /// replayed segment are still unsettled (each has a token from [`Self::token`]).
    pub(crate) fn replayed(&self, next_seq: u64, unsettled: &BTreeMap<u64, u64>) {
        self.inner.next_seq.store(next_seq, Relaxed);
        let mut s = self.inner.segments.lock();
        for (id, segment) in s.live.iter_mut() {
            if segment.sealed {
                // Replayed tokens settle through `settle` from now on; the hold of `open` goes.
                segment.unsettled = unsettled.get(id).copied().unwrap_or(0);
            }
        }
    }

    /// A token for a replayed request still unsettled. The caller counts it in
    /// [`Self::replayed`].
    pub(crate) fn token(&self, seq: u64, segment: u64) -> Arc<RecordToken> {
        Arc::new(RecordToken {
            seq,
            segment: AtomicU64::new(segment),
            log: self.inner.clone(),
            abandoned: AtomicBool::new(false),
        })
    }

    /// Starts the writer, and the sync thread (which also prunes settled segments).
    pub(crate) fn start(&self) -> std::io::Result<()> {
        let inner = self.inner.clone();
        let writer = std::thread::Builder::new()
            .name("traceq-wal-write".into())
            .spawn(move || inner.write_loop())?;
        *self.writer.lock() = Some(writer);
        let inner = self.inner.clone();
        let syncer = std::thread::Builder::new()
            .name("traceq-wal-sync".into())
            .spawn(move || inner.sync_loop())?;
        *self.syncer.lock() = Some(syncer);
        Ok(())
    }

    /// Queues the spans of one accepted request as one record; wait on the returned
    /// [`Appended::written`] before acknowledging it (and, with `fsync: always`, on
    /// [`Self::synced`]). Refused past `max_storage_bytes`.
    pub(crate) fn append_request(
        &self,
        spans: &[OtlpSpan],
        arrival_nanos: u64,
    ) -> Result<Appended, AppendError> {
        let inner = &self.inner;
        let mut buf = Vec::new();
        let start = record::begin(&mut buf, Kind::Request);
        let seq = inner.next_seq.fetch_add(1, Relaxed);
        let count = u32::try_from(spans.len()).unwrap_or(u32::MAX);
        record::put_request_prefix(&mut buf, seq, arrival_nanos, count);
        encode_request_into(spans, &mut buf);
        record::finish(&mut buf, start);
        let token = Arc::new(RecordToken {
            seq,
            segment: AtomicU64::new(UNWRITTEN),
            log: inner.clone(),
            abandoned: AtomicBool::new(false),
        });
        let (tx, written) = oneshot::channel();
        let end = inner.enqueue(buf, Some((token.clone(), tx)))?;
        Ok(Appended {
            token,
            end,
            written,
        })
    }

    /// Logs a round of decisions (queued behind the requests they decide). Never refused for
    /// space (they are small, and replay needs them); a failed write is counted.
    pub(crate) fn append_decisions(&self, verdicts: &[(TraceId, Option<Arc<KeptDecision>>)]) {
        if verdicts.is_empty() {
            return;
        }
        // Only refused once closed: then nothing is logged any more.
        let _ = self.inner.enqueue(record::decided(verdicts), None);
    }

    /// Waits until the log is synced past `end` (with `fsync: always`; otherwise at once: the
    /// bytes are with the kernel once written).
    pub(crate) async fn synced(&self, end: u64) {
        if self.inner.fsync != FsyncMode::Always {
            return;
        }
        let mut rx = self.inner.synced.subscribe();
        // An error means the sender is gone: the log was closed, after its last sync.
        let _ = rx.wait_for(|&synced| synced >= end).await;
    }

    /// Writes the last settled record, syncs (unless `fsync: never`) and stops the sync
    /// thread; tokens dropped later change nothing. Idempotent.
    pub(crate) fn close(&self) {
        if self.inner.closed.load(Relaxed) {
            return;
        }
        let inner = &self.inner;
        // The sync thread first: its last round queues what is settled.
        *inner.stop.lock() = true;
        inner.wake.notify_all();
        if let Some(handle) = self.syncer.lock().take() {
            let _ = handle.join();
        }
        inner.write_settled();
        // Then the writer drains the queue; without one (never started), write it here.
        inner.queue.lock().closed = true;
        inner.queued.notify_all();
        match self.writer.lock().take() {
            Some(handle) => {
                let _ = handle.join();
            }
            None => inner.write_queued(),
        }
        if inner.fsync != FsyncMode::Never {
            inner.sync();
        }
        inner.prune();
        inner.closed.store(true, Relaxed);
        // Closing the file releases the directory.
        self.lock.lock().take();
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

impl Inner {
    /// Queues a record for the writer; a request is refused past `max_storage_bytes`.
    /// Returns where the record will end in the log's byte stream.
    fn enqueue(
        &self,
        bytes: Vec<u8>,
        request: Option<(Arc<RecordToken>, oneshot::Sender<bool>)>,
    ) -> Result<u64, AppendError> {
        let len = bytes.len() as u64;
        let mut queue = self.queue.lock();
        if queue.closed {
            return Err(AppendError::Io);
        }
        if request.is_some() {
            let stored = self.metrics.bytes.load(Relaxed) + queue.bytes;
            // A log holding nothing unsettled takes any request (refusing one larger than the
            // bound itself would have its sender retry for ever).
            // Checked only past the bound: the segments' lock stays off the common path.
            let over = stored + len > self.max_bytes;
            if over
                && !(queue.records.is_empty()
                    && self.segments.lock().live.values().all(|s| s.unsettled == 0))
            {
                self.metrics.refused_requests.fetch_add(1, Relaxed);
                return Err(AppendError::Full);
            }
        }
        queue.bytes += len;
        queue.end += len;
        let end = queue.end;
        queue.records.push(Queued { bytes, request });
        drop(queue);
        self.queued.notify_one();
        Ok(end)
    }

    /// The writer thread: writes what is queued, in order, until the queue is closed and
    /// drained.
    fn write_loop(&self) {
        loop {
            {
                let mut queue = self.queue.lock();
                while queue.records.is_empty() && !queue.closed {
                    self.queued.wait(&mut queue);
                }
                if queue.records.is_empty() && queue.closed {
                    return;
                }
            }
            self.write_queued();
        }
    }

    /// Writes every queued record, then releases their waiters.
    fn write_queued(&self) {
        let records = {
            let mut queue = self.queue.lock();
            std::mem::take(&mut queue.records)
        };
        if records.is_empty() {
            return;
        }
        let mut done = Vec::with_capacity(records.len());
        let mut bytes = 0;
        {
            let mut active = self.active.lock();
            for q in records {
                bytes += q.bytes.len() as u64;
                let ok = self.write_record(&mut active, &q.bytes, q.request.as_ref().map(|r| &r.0));
                if let Some((token, tx)) = q.request {
                    done.push((token, tx, ok));
                }
            }
        }
        self.queue.lock().bytes -= bytes;
        if self.fsync == FsyncMode::Always {
            // Under the lock the sync thread checks for pending bytes under: no lost wake-up.
            let _stop = self.stop.lock();
            self.wake.notify_one();
        }
        for (token, tx, ok) in done {
            let _ = tx.send(ok);
            // The last reference may settle it now.
            drop(token);
        }
    }

    /// Appends one record to the active segment; a request's token learns its segment and
    /// counts as unsettled there.
    fn write_record(
        &self,
        active: &mut Active,
        buf: &[u8],
        token: Option<&Arc<RecordToken>>,
    ) -> bool {
        let len = buf.len() as u64;
        if let Err(e) = (&*active.file).write_all(buf) {
            self.metrics.write_errors.fetch_add(1, Relaxed);
            if !self.warned_io.swap(true, Relaxed) {
                eprintln!(
                    "traceq: storage: cannot write to {}: {e}; refusing requests while it \
                     fails (further errors are counted in traceq_storage_write_errors_total)",
                    self.dir.display()
                );
            }
            // Cut a partial record off, or leave it as a torn tail in a segment of its own.
            if active.file.set_len(active.len).is_err() {
                self.roll(active);
            }
            return false;
        }
        active.len += len;
        self.written.fetch_add(len, Relaxed);
        self.metrics.bytes.fetch_add(len, Relaxed);
        let id = active.id;
        {
            let mut s = self.segments.lock();
            if let Some(segment) = s.live.get_mut(&id) {
                segment.bytes += len;
                if let Some(token) = token {
                    segment.unsettled += 1;
                    token.segment.store(id, Relaxed);
                }
            }
        }
        if active.len >= self.segment_bytes {
            self.roll(active);
        }
        true
    }

    /// Starts the next segment; the old one is synced by the sync thread. On failure the old
    /// one stays in use.
    fn roll(&self, active: &mut Active) {
        let id = active.id + 1;
        let file = match create_segment(&self.dir, id) {
            Ok(file) => file,
            Err(e) => {
                self.metrics.write_errors.fetch_add(1, Relaxed);
                if !self.warned_io.swap(true, Relaxed) {
                    eprintln!(
                        "traceq: storage: cannot start a segment in {}: {e}",
                        self.dir.display()
                    );
                }
                return;
            }
        };
        let old = std::mem::replace(
            active,
            Active {
                file: Arc::new(file),
                id,
                len: SEGMENT_HEADER as u64,
            },
        );
        self.metrics.bytes.fetch_add(SEGMENT_HEADER as u64, Relaxed);
        let mut s = self.segments.lock();
        if let Some(segment) = s.live.get_mut(&old.id) {
            segment.sealed = true;
        }
        s.live.insert(
            id,
            Segment {
                bytes: SEGMENT_HEADER as u64,
                unsettled: 0,
                sealed: false,
            },
        );
        if self.fsync != FsyncMode::Never {
            s.to_sync.push(old.file);
        }
        self.metrics.segments.store(s.live.len() as u64, Relaxed);
    }

    /// A request whose every span was decided and delivered.
    fn settle(&self, seq: u64, segment: u64) {
        if self.closed.load(Relaxed) {
            return;
        }
        let mut s = self.segments.lock();
        s.settled.push(seq);
        if let Some(segment) = s.live.get_mut(&segment) {
            segment.unsettled = segment.unsettled.saturating_sub(1);
        }
    }

    fn sync_loop(&self) {
        let tick = match self.fsync {
            FsyncMode::Interval => self.fsync_interval.min(HOUSEKEEPING),
            FsyncMode::Always | FsyncMode::Never => HOUSEKEEPING,
        };
        let mut last_sync = Instant::now();
        loop {
            let stopping = {
                let mut stop = self.stop.lock();
                let pending = self.fsync == FsyncMode::Always
                    && self.written.load(Relaxed) > *self.synced.borrow();
                if !*stop && !pending {
                    self.wake.wait_for(&mut stop, tick);
                }
                *stop
            };
            if stopping {
                // `close` writes and syncs the rest.
                return;
            }
            let due = match self.fsync {
                FsyncMode::Always => true,
                FsyncMode::Interval => last_sync.elapsed() >= self.fsync_interval,
                FsyncMode::Never => false,
            };
            self.write_settled();
            if due {
                self.sync();
                last_sync = Instant::now();
            }
            self.prune();
        }
    }

    /// Queues a record of the requests settled since the last one.
    fn write_settled(&self) {
        let seqs = std::mem::take(&mut self.segments.lock().settled);
        if !seqs.is_empty() {
            // Refused only once closed; a lost settled record only costs a duplicate.
            let _ = self.enqueue(record::settled(&seqs), None);
        }
    }

    /// Syncs every byte written so far and releases the waiters it covers.
    fn sync(&self) {
        let (target, file, old) = {
            let active = self.active.lock();
            let old = std::mem::take(&mut self.segments.lock().to_sync);
            (self.written.load(Relaxed), active.file.clone(), old)
        };
        if target <= *self.synced.borrow() && old.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut failed = None;
        for f in old.iter().chain(std::iter::once(&file)) {
            if let Err(e) = f.sync_data() {
                failed = Some(e);
            }
        }
        self.metrics.record_fsync(started.elapsed());
        if let Some(e) = failed {
            self.metrics.write_errors.fetch_add(1, Relaxed);
            if !self.warned_io.swap(true, Relaxed) {
                eprintln!("traceq: storage: cannot sync {}: {e}", self.dir.display());
            }
        }
        // Waiters are released even after a failed sync: their bytes are written, and a sync
        // that fails keeps failing; the error is counted and reported.
        self.synced.send_replace(target);
    }

    /// Deletes the oldest segments while every request in them is settled.
    fn prune(&self) {
        let mut gone = Vec::new();
        {
            let mut s = self.segments.lock();
            while let Some(entry) = s.live.first_entry() {
                let segment = entry.get();
                if !(segment.sealed && segment.unsettled == 0) {
                    break;
                }
                let bytes = segment.bytes;
                gone.push((*entry.key(), bytes));
                entry.remove();
            }
            self.metrics.segments.store(s.live.len() as u64, Relaxed);
        }
        for (id, bytes) in gone {
            let path = self.dir.join(record::segment_name(id));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.metrics.write_errors.fetch_add(1, Relaxed);
                    if !self.warned_io.swap(true, Relaxed) {
                        eprintln!("traceq: storage: cannot delete {}: {e}", path.display());
                    }
                }
            }
            self.metrics.bytes.fetch_sub(bytes, Relaxed);
        }
    }
}
