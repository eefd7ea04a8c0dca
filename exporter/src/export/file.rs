//! The `file` and `debug` exporters: one OTLP/JSON line per batch, to a file or stdout.
//!
//! Lines come from the crate's one [`JsonLinesWriter`] (the Collector `file` exporter's format,
//! torn lines repaired), on a file opened in append mode and flushed after each line, so
//! concurrent readers see whole lines. Writes run on tokio's blocking pool, never on a runtime
//! thread.
//!
//! Why a failed write is retryable: a full disk gets freed and a file gets rotated, so the
//! batch waits out the exporter's backoff in its queue (bounded, counted, given up at the
//! shutdown deadline) instead of being lost to the first `ENOSPC`. Why `fsync` on an interval:
//! syncing every line costs a disk flush per batch; once a second bounds what a power loss
//! takes to a second of lines, and shutdown and a reopen sync whatever is left. Why reopen on
//! request: log rotation renames the file, and without a reopen lines would keep going to the
//! renamed one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use prost::Message;

use super::error::ExportSetupError;
use crate::client::{Accepted, SendError};
use crate::JsonLinesWriter;

/// Where the `file` exporter's lines go: a file, or a test's sink.
pub(crate) trait LineSink: Write + Send {
    /// Makes what was written durable (`fdatasync` for a file).
    fn sync(&mut self) -> io::Result<()>;
}

impl LineSink for File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// Writes OTLP/JSON lines to a file or stdout.
#[derive(Debug, Clone)]
pub(crate) struct JsonLinesSender {
    out: Output,
}

#[derive(Debug, Clone)]
enum Output {
    File(Arc<FileOut>),
    Stdout,
}

/// The `file` exporter's open file and when it was last synced.
struct FileOut {
    path: PathBuf,
    fsync_interval: Duration,
    state: Mutex<FileState>,
    warned_sync: AtomicBool,
}

struct FileState {
    writer: JsonLinesWriter<Box<dyn LineSink>>,
    /// Lines were written since the last sync.
    dirty: bool,
    last_sync: Instant,
}

impl std::fmt::Debug for FileOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileOut")
            .field("path", &self.path)
            .field("fsync_interval", &self.fsync_interval)
            .finish_non_exhaustive()
    }
}

fn open_append(name: &str, path: &Path) -> Result<File, ExportSetupError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ExportSetupError::OpenFile {
            exporter: name.to_owned(),
            path: PathBuf::from(path),
            source,
        })
}

impl JsonLinesSender {
    /// Opens `path` for appending, creating it if missing, and starts syncing it every
    /// `fsync_interval` (zero: after every line).
    pub(crate) fn file(
        name: &str,
        path: &Path,
        fsync_interval: Duration,
    ) -> Result<Self, ExportSetupError> {
        let file = open_append(name, path)?;
        Ok(Self::with_sink(path, Box::new(file), fsync_interval))
    }

    /// Writes to `sink`, reopened at `path` on [`reopen`](Self::reopen).
    pub(crate) fn with_sink(
        path: &Path,
        sink: Box<dyn LineSink>,
        fsync_interval: Duration,
    ) -> Self {
        let out = Arc::new(FileOut {
            path: path.to_owned(),
            fsync_interval,
            state: Mutex::new(FileState {
                writer: JsonLinesWriter::new(sink),
                dirty: false,
                last_sync: Instant::now(),
            }),
            warned_sync: AtomicBool::new(false),
        });
        // Without a runtime (not the case through `ExporterQueue::start`) lines are still
        // synced by the writes that come after the interval, just not while idle.
        if let (false, Ok(runtime)) = (
            fsync_interval.is_zero(),
            tokio::runtime::Handle::try_current(),
        ) {
            runtime.spawn(sync_periodically(Arc::downgrade(&out), fsync_interval));
        }
        Self {
            out: Output::File(out),
        }
    }

    /// Writes to standard output.
    pub(crate) fn stdout() -> Self {
        Self {
            out: Output::Stdout,
        }
    }

    /// Decodes, formats and writes one batch as one line.
    pub(crate) async fn send(&self, payload: &Bytes) -> Result<Accepted, SendError> {
        let out = self.out.clone();
        let body = payload.clone();
        tokio::task::spawn_blocking(move || write_line(&out, &body))
            .await
            .map_err(|e| SendError::Request(format!("writer task: {e}")))?
            .map(|()| Accepted::default())
    }

    /// Syncs the file if lines were written since the last sync (nothing for stdout).
    pub(crate) async fn sync(&self) -> Result<(), SendError> {
        let Output::File(out) = &self.out else {
            return Ok(());
        };
        let out = Arc::clone(out);
        tokio::task::spawn_blocking(move || out.sync(true))
            .await
            .map_err(|e| SendError::Write(format!("sync task: {e}")))?
    }

    /// Opens the configured path anew and writes there from now on, after syncing the old
    /// file. `false` for stdout, which has nothing to reopen.
    pub(crate) async fn reopen(&self, name: &str) -> Result<bool, ExportSetupError> {
        let Output::File(out) = &self.out else {
            return Ok(false);
        };
        let out = Arc::clone(out);
        let (exporter, path) = (name.to_owned(), out.path.clone());
        let name = name.to_owned();
        let task = tokio::task::spawn_blocking(move || {
            let file = open_append(&name, &out.path)?;
            if let Err(e) = out.sync(true) {
                eprintln!("traceq: exporter {name}: before reopening: {e}");
            }
            out.state.lock().writer = JsonLinesWriter::new(Box::new(file));
            Ok(true)
        });
        task.await.unwrap_or_else(|e| {
            Err(ExportSetupError::OpenFile {
                exporter,
                path,
                source: io::Error::other(format!("reopen task: {e}")),
            })
        })
    }
}

impl FileOut {
    /// Syncs when lines are unsynced and, unless `now`, the interval has passed.
    fn sync(&self, now: bool) -> Result<(), SendError> {
        let mut state = self.state.lock();
        if !state.dirty || !(now || state.last_sync.elapsed() >= self.fsync_interval) {
            return Ok(());
        }
        let synced = state
            .writer
            .flush()
            .and_then(|()| state.writer.get_mut().sync());
        state.last_sync = Instant::now();
        match synced {
            Ok(()) => {
                state.dirty = false;
                Ok(())
            }
            Err(e) => Err(SendError::Write(format!(
                "sync {}: {e}",
                self.path.display()
            ))),
        }
    }
}

/// Syncs `out` every `interval` while it exists (it goes with its exporter).
async fn sync_periodically(out: Weak<FileOut>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(out) = out.upgrade() else { return };
        let synced = tokio::task::spawn_blocking(move || {
            let result = out.sync(false);
            (out, result)
        })
        .await;
        if let Ok((out, Err(e))) = synced {
            if !out.warned_sync.swap(true, Relaxed) {
                eprintln!("traceq: {e} (further sync failures are not logged)");
            }
        }
    }
}

/// The request in an encoded batch.
fn decode(body: &[u8]) -> Result<ExportTraceServiceRequest, SendError> {
    ExportTraceServiceRequest::decode(body)
        .map_err(|e| SendError::Request(format!("not an OTLP trace request: {e}")))
}

fn write_line(out: &Output, body: &[u8]) -> Result<(), SendError> {
    let request = decode(body)?;
    match out {
        Output::File(file) => {
            {
                let mut state = file.state.lock();
                state
                    .writer
                    .write_request(&request)
                    .and_then(|()| state.writer.flush())
                    .map_err(|e| write_error(&file.path.display().to_string(), &e))?;
                state.dirty = true;
            }
            // The line is written: a failed sync is reported, not retried (that would write
            // the line twice); the next sync tries again.
            if let Err(e) = file.sync(file.fsync_interval.is_zero()) {
                if !file.warned_sync.swap(true, Relaxed) {
                    eprintln!("traceq: {e} (further sync failures are not logged)");
                }
            }
            Ok(())
        }
        Output::Stdout => {
            let mut writer = JsonLinesWriter::new(io::stdout().lock());
            writer
                .write_request(&request)
                .and_then(|()| writer.flush())
                .map_err(|e| write_error("stdout", &e))
        }
    }
}

// Retryable: a full disk can be freed and a file rotated. (The stdout exporter does not retry:
// a closed pipe stays closed.)
fn write_error(target: &str, e: &io::Error) -> SendError {
    SendError::Write(format!("write to {target}: {e}"))
}

/// The OTLP/JSON line (with its newline) of an encoded request.
#[cfg(test)]
fn json_line(body: &[u8]) -> Result<Vec<u8>, SendError> {
    let mut writer = JsonLinesWriter::new(Vec::new());
    writer
        .write_request(&decode(body)?)
        .map_err(|e| SendError::Request(e.to_string()))?;
    Ok(writer.get_ref().clone())
}

#[cfg(test)]
mod tests {
    use std::io::BufReader;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;

    use super::*;
    use crate::client::RetryConfig;
    use crate::export::delivery::Delivery;
    use crate::export::sender::Sender;
    use crate::export::test_support::{batch, batch_named, eventually, fast_retry};
    use crate::export::{ExportTarget, ExporterConfig, ExporterMetrics, ExporterQueue};
    use crate::read_otlp_json_lines;

    fn file_config(path: &Path) -> ExporterConfig {
        ExporterConfig::new("file", ExportTarget::file(path))
            .with_queue_size(1000)
            .with_retry(RetryConfig {
                enabled: false,
                ..RetryConfig::default()
            })
    }

    fn deadline() -> tokio::time::Instant {
        tokio::time::Instant::now() + std::time::Duration::from_secs(5)
    }

    #[tokio::test]
    async fn file_exporter_should_write_lines_the_reader_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let metrics = Arc::new(ExporterMetrics::default());
        let queue = ExporterQueue::start(&file_config(&path), metrics.clone()).unwrap();
        queue.push(batch_named(2, "first"));
        queue.push(batch_named(3, "second"));
        queue.shutdown(deadline()).await;

        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.ends_with('\n'));
        let read = read_otlp_json_lines(BufReader::new(text.as_bytes())).unwrap();
        assert!(read.errors.is_empty(), "{:?}", read.errors);
        let names: Vec<_> = read.spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.iter().filter(|n| n.starts_with("first")).count(), 2);
        assert_eq!(names.iter().filter(|n| n.starts_with("second")).count(), 3);
        assert_eq!(metrics.spans_sent.load(Relaxed), 5);
        assert_eq!(metrics.requests_sent.load(Relaxed), 2);
        assert_eq!(metrics.spans_dropped.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn file_exporter_should_append_to_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, json_line(&batch(1).body).unwrap()).unwrap();
        let queue = ExporterQueue::start(&file_config(&path), Arc::default()).unwrap();
        queue.push(batch(1));
        queue.shutdown(deadline()).await;
        let read = read_otlp_json_lines(BufReader::new(File::open(&path).unwrap())).unwrap();
        assert!(read.errors.is_empty());
        assert_eq!(read.spans.len(), 2);
    }

    #[tokio::test]
    async fn undecodable_batch_should_be_dropped_and_counted_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let metrics = Arc::new(ExporterMetrics::default());
        let queue = ExporterQueue::start(&file_config(&path), metrics.clone()).unwrap();
        queue.push(super::super::ExportBatch {
            body: Bytes::from_static(&[0xff, 0xff, 0xff]),
            spans: 4,
        });
        queue.push(batch(1));
        queue.shutdown(deadline()).await;
        assert_eq!(metrics.spans_dropped.load(Relaxed), 4);
        assert_eq!(metrics.send_failures.load(Relaxed), 1);
        assert_eq!(metrics.spans_sent.load(Relaxed), 1);
        let read = read_otlp_json_lines(BufReader::new(File::open(&path).unwrap())).unwrap();
        assert!(read.errors.is_empty());
        assert_eq!(read.spans.len(), 1);
    }

    /// A sink that fails its next `fail` writes, counts syncs, and keeps what it took.
    #[derive(Clone, Default)]
    struct Flaky {
        data: Arc<Mutex<Vec<u8>>>,
        fail: Arc<AtomicUsize>,
        syncs: Arc<AtomicUsize>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self
                .fail
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(io::Error::other("disk full"));
            }
            self.data.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl LineSink for Flaky {
        fn sync(&mut self) -> io::Result<()> {
            self.syncs.fetch_add(1, Relaxed);
            Ok(())
        }
    }

    fn flaky_delivery(
        sink: &Flaky,
        fsync_interval: std::time::Duration,
        retry: RetryConfig,
    ) -> (Delivery, Arc<ExporterMetrics>) {
        let metrics = Arc::new(ExporterMetrics::default());
        let sender = JsonLinesSender::with_sink(
            Path::new("unused.jsonl"),
            Box::new(sink.clone()),
            fsync_interval,
        );
        let delivery = Delivery::new(
            "file".into(),
            Sender::Lines(sender),
            retry,
            crate::export::DEFAULT_MAX_EXPORT_BYTES,
            Arc::clone(&metrics),
        );
        (delivery, metrics)
    }

    #[tokio::test]
    async fn a_failed_write_should_be_retried_with_backoff_and_counted() {
        let sink = Flaky::default();
        sink.fail.store(3, Relaxed);
        let (delivery, metrics) = flaky_delivery(&sink, std::time::Duration::ZERO, fast_retry(1));
        let outcome = delivery.deliver(batch_named(2, "kept")).await;
        assert_eq!(outcome.sent, 2);
        assert_eq!(outcome.dropped, 0);
        assert_eq!(metrics.send_failures.load(Relaxed), 3);
        assert_eq!(metrics.retries.load(Relaxed), 3);
        let text = String::from_utf8(sink.data.lock().clone()).unwrap();
        let read = read_otlp_json_lines(BufReader::new(text.as_bytes())).unwrap();
        assert!(read.errors.is_empty(), "{text}");
        assert_eq!(read.spans.len(), 2, "written once: {text}");
        assert!(
            sink.syncs.load(Relaxed) >= 1,
            "a zero interval syncs each line"
        );
    }

    #[tokio::test]
    async fn a_write_that_keeps_failing_should_be_given_up_and_counted() {
        let sink = Flaky::default();
        sink.fail.store(usize::MAX, Relaxed);
        let retry = RetryConfig {
            max_elapsed_time: std::time::Duration::from_millis(50),
            ..fast_retry(5)
        };
        let (delivery, metrics) = flaky_delivery(&sink, std::time::Duration::ZERO, retry);
        let outcome = delivery.deliver(batch(3)).await;
        assert_eq!(outcome.dropped, 3);
        assert!(metrics.send_failures.load(Relaxed) >= 2);
        assert!(sink.data.lock().is_empty());
    }

    #[tokio::test]
    async fn lines_should_be_synced_within_the_interval_even_when_writes_stop() {
        let sink = Flaky::default();
        let (delivery, _) =
            flaky_delivery(&sink, std::time::Duration::from_millis(50), fast_retry(1));
        delivery.deliver(batch(1)).await;
        assert!(eventually(|| sink.syncs.load(Relaxed) >= 1).await);
        // Nothing more written: nothing more synced.
        let syncs = sink.syncs.load(Relaxed);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(sink.syncs.load(Relaxed), syncs);
    }

    #[tokio::test]
    async fn shutdown_should_sync_what_was_written() {
        let sink = Flaky::default();
        let (delivery, _) =
            flaky_delivery(&sink, std::time::Duration::from_secs(3600), fast_retry(1));
        delivery.deliver(batch(1)).await;
        assert_eq!(sink.syncs.load(Relaxed), 0);
        delivery.sender.sync().await.unwrap();
        assert_eq!(sink.syncs.load(Relaxed), 1);
        delivery.sender.sync().await.unwrap();
        assert_eq!(sink.syncs.load(Relaxed), 1, "nothing new to sync");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_full_disk_should_count_failures_and_drops_not_lose_batches_silently() {
        // `/dev/full` fails every write with ENOSPC.
        let config =
            ExporterConfig::new("file", ExportTarget::file("/dev/full")).with_retry(RetryConfig {
                max_elapsed_time: std::time::Duration::from_millis(100),
                ..fast_retry(5)
            });
        let metrics = Arc::new(ExporterMetrics::default());
        let queue = ExporterQueue::start(&config, metrics.clone()).unwrap();
        queue.push(batch(2));
        queue.shutdown(deadline()).await;
        assert_eq!(metrics.spans_dropped.load(Relaxed), 2);
        assert!(metrics.send_failures.load(Relaxed) >= 2);
        assert!(metrics.retries.load(Relaxed) >= 1);
    }

    #[tokio::test]
    async fn reopen_should_write_new_lines_to_a_new_file_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let rotated = dir.path().join("out.jsonl.1");
        let queue = ExporterQueue::start(&file_config(&path), Arc::default()).unwrap();
        queue.push(batch_named(1, "before"));
        assert!(eventually(|| std::fs::metadata(&path).is_ok_and(|m| m.len() > 0)).await);
        std::fs::rename(&path, &rotated).unwrap();
        assert!(queue.reopen().await.unwrap());
        queue.push(batch_named(1, "after"));
        queue.shutdown(deadline()).await;
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(
            old.contains("before-0") && !old.contains("after-0"),
            "{old}"
        );
        assert!(
            new.contains("after-0") && !new.contains("before-0"),
            "{new}"
        );
    }

    #[tokio::test]
    async fn a_failed_reopen_should_keep_the_old_file_and_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("out.jsonl");
        let queue = ExporterQueue::start(&file_config(&path), Arc::default()).unwrap();
        std::fs::rename(&sub, dir.path().join("moved")).unwrap();
        let err = queue.reopen().await.unwrap_err();
        assert!(matches!(err, ExportSetupError::OpenFile { .. }), "{err}");
        queue.push(batch_named(1, "still"));
        queue.shutdown(deadline()).await;
        let kept = std::fs::read_to_string(dir.path().join("moved").join("out.jsonl")).unwrap();
        assert!(kept.contains("still-0"), "{kept}");
    }

    #[tokio::test]
    async fn reopen_should_do_nothing_for_stdout() {
        let config = ExporterConfig::new("debug", ExportTarget::Stdout);
        let queue = ExporterQueue::start(&config, Arc::default()).unwrap();
        assert!(!queue.reopen().await.unwrap());
        queue.shutdown(deadline()).await;
    }

    #[tokio::test]
    async fn unopenable_file_should_fail_setup_naming_the_exporter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("out.jsonl");
        let err = ExporterQueue::start(&file_config(&path), Arc::default()).unwrap_err();
        assert!(matches!(err, ExportSetupError::OpenFile { .. }), "{err}");
        assert!(err.to_string().contains("`file`"), "{err}");
    }
}
