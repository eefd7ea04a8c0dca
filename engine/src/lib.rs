//! traceq-engine: a rate-limited retry work queue with client-go semantics, and an async worker
//! runtime on tokio.
//!
//! ```text
//!  producers ──add / add_after / add_rate_limited──▶ Queue ──get──▶ N workers ──▶ handler(key)
//!                    ▲        (dedup, dirty,           │                │
//!                    │         delay heap)             │      Ok: forget + done
//!                    └──── retry after backoff ◀───────┴──── Err / timeout / panic:
//!                          (RateLimiter::when)                 requeue until max_retries,
//!                                                              then forget and say why
//! ```
//!
//! [`Queue`] is the data structure (usable on its own, like client-go's `workqueue`);
//! [`Engine`] runs workers over it and applies the retry policy.

pub mod clock;
mod engine;
pub mod metrics;
mod queue;
pub mod rate_limit;
pub mod trace;

pub use engine::{
    Attempt, AttemptError, BuildError, Engine, EngineBuilder, EngineHandle, Handler, Outcome,
    OutcomeKind, QueueView, DEFAULT_MAX_RETRIES, DEFAULT_WORKERS,
};
pub use metrics::QueueMetrics;
pub use queue::{Queue, QueueConfig, DEFAULT_NAME, INBOX_BOUND, MAX_DELAY};
pub use rate_limit::RateLimiter;
pub use trace::JobContext;
