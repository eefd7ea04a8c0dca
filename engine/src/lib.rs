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
//! [`Engine`] runs workers over it and applies the retry policy. Keys can carry a priority
//! ([`Queue::add_with`], [`AddOptions`]), and a queue can be fair across groups of keys
//! ([`QueueConfig::with_fairness`], [`Fairness`]).

pub mod clock;
mod engine;
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod postgres;
mod queue;
pub mod rate_limit;
pub mod trace;

pub use engine::{
    Attempt, AttemptError, BuildError, Engine, EngineBuilder, EngineHandle, Handler, Outcome,
    OutcomeKind, QueueView, DEFAULT_MAX_RETRIES, DEFAULT_WORKERS,
};
pub use metrics::{PriorityLabel, QueueMetrics};
pub use queue::{
    AddOptions, Claim, Fairness, Queue, QueueConfig, DEFAULT_NAME, DEFAULT_PRIORITY, INBOX_BOUND,
    LOW_PRIORITY, MAX_DELAY, MAX_PRIORITY_LABELS, MAX_QUANTUM, MIN_QUANTUM, PANICKED_GROUP,
};
pub use rate_limit::RateLimiter;
pub use trace::JobContext;
