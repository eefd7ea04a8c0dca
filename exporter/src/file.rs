//! The OTLP-JSON lines file exporter.
//!
//! Each export call writes one line: an `ExportTraceServiceRequest` in the OTLP/JSON encoding
//! (hex trace and span ids, nanosecond times as strings, enums as numbers), the format of the
//! OpenTelemetry Collector's `file` exporter. A line is written whole or not at all, so a reader
//! never sees half a batch from a finished run.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use parking_lot::Mutex;

use crate::JsonLinesWriter;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A [`SpanExporter`] writing OTLP-JSON lines to a file.
///
/// # Examples
/// ```
/// use opentelemetry::trace::{Tracer as _, TracerProvider as _};
/// use opentelemetry_sdk::trace::SdkTracerProvider;
/// use traceq_exporter::{read_otlp_json_lines, OtlpJsonFileExporter};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("traces.jsonl");
/// let exporter = OtlpJsonFileExporter::create(&path)?;
/// let provider = SdkTracerProvider::builder().with_simple_exporter(exporter).build();
/// provider.tracer("example").in_span("hello", |_| {});
/// provider.shutdown().unwrap();
///
/// let read = read_otlp_json_lines(std::io::BufReader::new(std::fs::File::open(&path)?))?;
/// assert!(read.errors.is_empty());
/// assert_eq!(read.spans[0].name, "hello");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct OtlpJsonFileExporter {
    path: PathBuf,
    out: Mutex<Option<JsonLinesWriter<BufWriter<File>>>>,
    resource: ResourceAttributesWithSchema,
}

impl fmt::Debug for OtlpJsonFileExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpJsonFileExporter")
            .field("path", &self.path)
            .field("open", &self.out.lock().is_some())
            .finish_non_exhaustive()
    }
}

impl OtlpJsonFileExporter {
    /// Creates (or truncates) the file at `path`.
    ///
    /// # Errors
    /// The I/O error of creating the file.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::open(path.as_ref(), File::create(path.as_ref())?)
    }

    /// Opens the file at `path` for appending, creating it if needed.
    ///
    /// # Errors
    /// The I/O error of opening the file.
    pub fn append(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path.as_ref())?;
        Self::open(path.as_ref(), file)
    }

    fn open(path: &Path, file: File) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            out: Mutex::new(Some(JsonLinesWriter::new(BufWriter::new(file)))),
            resource: (&Resource::builder_empty().build()).into(),
        })
    }

    /// Sets the resource written with every batch (the SDK also sets it through
    /// [`SpanExporter::set_resource`] when the exporter is given to a provider directly).
    #[must_use]
    pub fn with_resource(mut self, resource: &Resource) -> Self {
        self.resource = resource.into();
        self
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_batch(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
        };
        let mut out = self.out.lock();
        let Some(out) = out.as_mut() else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        out.write_request(&request).map_err(|e| self.io_error(&e))
    }

    fn io_error(&self, e: &io::Error) -> OTelSdkError {
        OTelSdkError::InternalFailure(format!("writing {}: {e}", self.path.display()))
    }
}

impl SpanExporter for OtlpJsonFileExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        std::future::ready(self.write_batch(batch))
    }

    fn force_flush(&self) -> OTelSdkResult {
        match self.out.lock().as_mut() {
            Some(out) => out.flush().map_err(|e| self.io_error(&e)),
            None => Ok(()),
        }
    }

    /// Flushes and closes the file; idempotent.
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        match self.out.lock().take() {
            Some(mut out) => out.flush().map_err(|e| self.io_error(&e)),
            None => Ok(()),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read_otlp_json_lines;
    use opentelemetry::trace::{Span as _, Status, Tracer as _, TracerProvider as _};
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    #[test]
    fn exporter_should_write_one_readable_line_per_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let resource = Resource::builder_empty()
            .with_service_name("svc")
            .with_attribute(KeyValue::new("host.name", "h"))
            .build();
        let exporter = OtlpJsonFileExporter::create(&path)
            .unwrap()
            .with_resource(&resource);
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("t");
        tracer.in_span("parent", |cx| {
            let mut child = tracer.start_with_context("child", &cx);
            child.set_status(Status::error("boom"));
            child.end();
        });
        provider.shutdown().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("\"traceId\""), "{text}");
        let read = read_otlp_json_lines(text.as_bytes()).unwrap();
        assert!(read.errors.is_empty());
        assert_eq!(read.spans.len(), 2);
        let child = read.spans.iter().find(|s| s.name == "child").unwrap();
        let parent = read.spans.iter().find(|s| s.name == "parent").unwrap();
        assert_eq!(
            child.parent_span_id.as_deref(),
            Some(parent.span_id.as_str())
        );
        assert_eq!(child.error.as_deref(), Some("boom"));
        assert_eq!(child.service.as_deref(), Some("svc"));
        assert_eq!(child.trace_id.len(), 32);
    }

    #[test]
    fn exporter_should_refuse_export_after_shutdown() {
        let memory = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(memory.clone())
            .build();
        provider.tracer("t").in_span("late", |_| {});
        let spans = memory.get_finished_spans().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let exporter = OtlpJsonFileExporter::create(dir.path().join("t.jsonl")).unwrap();
        exporter.shutdown().unwrap();
        exporter.shutdown().unwrap(); // idempotent
        assert!(matches!(
            exporter.write_batch(spans),
            Err(OTelSdkError::AlreadyShutdown)
        ));
    }
}
