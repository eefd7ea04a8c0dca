//! The one OTLP-JSON lines writer: what the SDK span exporter and the collector's `file` and
//! `debug` exporters write.
//!
//! A line is an `ExportTraceServiceRequest` in the OTLP/JSON encoding (hex trace and span ids,
//! nanosecond times as strings, enums as numbers), the format of the OpenTelemetry Collector's
//! `file` exporter, so [`read_otlp_json_lines`](crate::read_otlp_json_lines), `traceq show` and
//! a Collector read it back. Each line is built whole in memory and handed to the sink with one
//! `write_all`. If a write fails part-way, the next line starts with a newline, so the torn line
//! is the only one a reader rejects.

use std::io::{self, Write};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// Writes OTLP-JSON lines to `W`, repairing a line torn by a failed write.
///
/// # Examples
///
/// ```
/// use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
/// use traceq_exporter::JsonLinesWriter;
///
/// let mut writer = JsonLinesWriter::new(Vec::new());
/// writer.write_request(&ExportTraceServiceRequest::default())?;
/// assert_eq!(writer.get_ref().as_slice(), b"{\"resourceSpans\":[]}\n");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct JsonLinesWriter<W> {
    out: W,
    /// The last write failed part-way: the output may end inside a line.
    torn: bool,
}

impl<W: Write> JsonLinesWriter<W> {
    /// Writes lines to `out`.
    pub fn new(out: W) -> Self {
        Self { out, torn: false }
    }

    /// Writes `request` as one line.
    ///
    /// # Errors
    ///
    /// The sink's I/O error, or an encoding error as [`io::ErrorKind::InvalidData`].
    pub fn write_request(&mut self, request: &ExportTraceServiceRequest) -> io::Result<()> {
        let mut line = Vec::with_capacity(256);
        if self.torn {
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, request)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        line.push(b'\n');
        let written = self.out.write_all(&line);
        self.torn = written.is_err();
        written
    }

    /// Flushes the sink.
    ///
    /// # Errors
    ///
    /// The sink's I/O error.
    pub fn flush(&mut self) -> io::Result<()> {
        let flushed = self.out.flush();
        self.torn |= flushed.is_err();
        flushed
    }

    /// The sink.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// The sink, for a caller that must reach it (e.g. to sync a file).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `room` bytes, then fails every write.
    struct Short {
        data: Vec<u8>,
        room: usize,
    }

    impl Write for Short {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::other("disk full"));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.data.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_torn_line_should_be_followed_by_a_newline_so_only_it_is_lost() {
        let request = ExportTraceServiceRequest::default();
        let mut writer = JsonLinesWriter::new(Short {
            data: Vec::new(),
            room: 5,
        });
        assert!(writer.write_request(&request).is_err());
        writer.get_mut().room = usize::MAX;
        writer.write_request(&request).unwrap();
        let text = String::from_utf8(writer.get_ref().data.clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines, ["{\"res", "{\"resourceSpans\":[]}"]);
    }
}
