//! The exporters: one bounded queue and one sending task per configured exporter.
//!
//! ```text
//!  pipeline ─push(ExportBatch)─▶ ExporterQueue (bounded in spans and bytes, never blocks)
//!  (cut by RequestSize)                │ sending task, up to 4 requests in flight
//!                                      ▼
//!                          deliver: attempt ─▶ backoff ─▶ attempt … ─▶ sent | dropped
//!                                      └─ too large / malformed ─▶ halves ─▶ deliver each
//!                                      │
//!              ┌──────────────┬────────┴───────┬───────────────────┐
//!              ▼              ▼                ▼                   ▼
//!         OTLP/gRPC      OTLP/HTTP      OTLP-JSON lines file   stdout (debug)
//!        (crate::client, shared retry policy)   (crate::JsonLinesWriter)
//! ```
//!
//! Why a queue in spans and bytes and not in batches: what an operator sizes is memory, and
//! batches vary from one span to thousands. Why the encoded request bytes travel unchanged: every exporter
//! shares them, and the OTLP exporters send them as they are, without decoding.

mod batch;
mod config;
mod delivery;
mod error;
mod file;
mod metrics;
mod queue;
mod sender;
mod size;
#[cfg(test)]
pub(crate) mod test_support;

pub use batch::{ExportBatch, Receipt};
pub use config::{
    file_retry, ExportTarget, ExporterConfig, DEFAULT_EXPORT_TIMEOUT, DEFAULT_FILE_RETRY_INITIAL,
    DEFAULT_FILE_RETRY_MAX_INTERVAL, DEFAULT_FSYNC_INTERVAL, DEFAULT_MAX_EXPORT_BYTES,
    DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_SIZE,
};
pub use error::ExportSetupError;
pub use metrics::ExporterMetrics;
pub use queue::ExporterQueue;
pub use size::RequestSize;
