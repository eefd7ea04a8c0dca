//! The `file` and `debug` exporters: one OTLP/JSON line per batch, to a file or stdout.
//!
//! Lines come from the crate's one [`JsonLinesWriter`] (the Collector `file` exporter's format,
//! torn lines repaired), on a file opened in append mode and flushed after each line, so
//! concurrent readers see whole lines. Writes run on tokio's blocking pool, never on a runtime
//! thread.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use prost::Message;

use super::error::ExportSetupError;
use crate::client::{Accepted, SendError};
use crate::JsonLinesWriter;

/// Writes OTLP/JSON lines to a file or stdout.
#[derive(Debug, Clone)]
pub(crate) struct JsonLinesSender {
    out: Output,
}

#[derive(Debug, Clone)]
enum Output {
    File {
        path: Arc<Path>,
        writer: Arc<Mutex<JsonLinesWriter<File>>>,
    },
    Stdout,
}

impl JsonLinesSender {
    /// Opens `path` for appending, creating it if missing.
    pub(crate) fn file(name: &str, path: &Path) -> Result<Self, ExportSetupError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| ExportSetupError::OpenFile {
                exporter: name.to_owned(),
                path: PathBuf::from(path),
                source,
            })?;
        Ok(Self {
            out: Output::File {
                path: Arc::from(path),
                writer: Arc::new(Mutex::new(JsonLinesWriter::new(file))),
            },
        })
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
}

/// The request in an encoded batch.
fn decode(body: &[u8]) -> Result<ExportTraceServiceRequest, SendError> {
    ExportTraceServiceRequest::decode(body)
        .map_err(|e| SendError::Request(format!("not an OTLP trace request: {e}")))
}

fn write_line(out: &Output, body: &[u8]) -> Result<(), SendError> {
    let request = decode(body)?;
    match out {
        Output::File { path, writer } => {
            let mut writer = writer.lock();
            writer
                .write_request(&request)
                .and_then(|()| writer.flush())
                .map_err(|e| write_error(&path.display().to_string(), &e))
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

// A full disk or a closed pipe will not heal by writing the same line again soon: permanent.
fn write_error(target: &str, e: &io::Error) -> SendError {
    SendError::Request(format!("write to {target}: {e}"))
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
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    use super::*;
    use crate::client::RetryConfig;
    use crate::export::test_support::{batch, batch_named};
    use crate::export::{ExportTarget, ExporterConfig, ExporterMetrics, ExporterQueue};
    use crate::read_otlp_json_lines;

    fn file_config(path: &Path) -> ExporterConfig {
        ExporterConfig {
            name: "file".into(),
            target: ExportTarget::File { path: path.into() },
            queue_size: 1000,
            retry: RetryConfig {
                enabled: false,
                ..RetryConfig::default()
            },
        }
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

    #[tokio::test]
    async fn unopenable_file_should_fail_setup_naming_the_exporter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("out.jsonl");
        let err = ExporterQueue::start(&file_config(&path), Arc::default()).unwrap_err();
        assert!(matches!(err, ExportSetupError::OpenFile { .. }), "{err}");
        assert!(err.to_string().contains("`file`"), "{err}");
    }
}
