//! The exporters: one bounded queue and one sending task per configured exporter.
//!
//! ```text
//!  pipeline ─push(ExportBatch)─▶ ExporterQueue (bounded in spans, never blocks)
//!                                      │ sending task, up to 4 requests in flight
//!                                      ▼
//!                          deliver: attempt ─▶ backoff ─▶ attempt … ─▶ sent | dropped
//!                                      │
//!              ┌──────────────┬────────┴───────┬───────────────────┐
//!              ▼              ▼                ▼                   ▼
//!         OTLP/gRPC      OTLP/HTTP      OTLP-JSON lines file   stdout (debug)
//!        (crate::client, shared retry policy)   (crate::JsonLinesWriter)
//! ```
//!
//! Why a queue in spans and not in batches: what an operator sizes is memory, and batches vary
//! from one span to thousands. Why the encoded request bytes travel unchanged: every exporter
//! shares them, and the OTLP exporters send them as they are, without decoding.

mod batch;
mod config;
mod delivery;
mod error;
mod file;
mod metrics;
mod queue;
mod sender;
#[cfg(test)]
pub(crate) mod test_support;

pub use batch::ExportBatch;
pub use config::{ExportTarget, ExporterConfig, DEFAULT_EXPORT_TIMEOUT, DEFAULT_QUEUE_SIZE};
pub use error::ExportSetupError;
pub use metrics::ExporterMetrics;
pub use queue::ExporterQueue;
