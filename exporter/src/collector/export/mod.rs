//! The collector's exporters: one bounded queue and one sending task per configured exporter.
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
//! ```
//!
//! Why a queue in spans and not in batches: what an operator sizes is memory, and batches vary
//! from one span to thousands. Why the encoded request bytes travel unchanged: every exporter
//! shares them, and the OTLP exporters send them as they are, without decoding.

mod batch;
mod error;
mod file;
mod grpc;
mod http;
mod queue;
mod retry;
mod sender;
#[cfg(test)]
mod test_support;

pub use batch::ExportBatch;
pub use error::ExportSetupError;
pub use queue::ExporterQueue;
