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

/// What an exporter settles once it is done with a batch: delivered, rejected by the
/// downstream, or given up after its retries, or dropped from a full queue. A receipt dropped
/// unsettled (the exporter stopped at its shutdown deadline, or was stopped with the batch still
/// queued) means the batch is still owed: whoever queued it keeps its data to send again after
/// a restart.
pub struct Receipt(Box<dyn FnOnce() + Send + Sync>);

impl Receipt {
    /// A receipt that runs `on_settled` when settled, and nothing when dropped unsettled.
    pub fn new(on_settled: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self(Box::new(on_settled))
    }

    /// The exporter is done with the batch.
    pub fn settle(self) {
        (self.0)();
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receipt")
    }
}
