//! What the pipeline hands each exporter.

use bytes::Bytes;

/// One outgoing request: an encoded OTLP `ExportTraceServiceRequest` (protobuf) and the number
/// of spans in it. Cheap to clone: every exporter shares the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportBatch {
    /// The protobuf encoding of an `ExportTraceServiceRequest`.
    pub body: Bytes,
    /// Spans in the request.
    pub spans: usize,
}
