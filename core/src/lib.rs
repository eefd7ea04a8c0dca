//! traceq-core: the small vocabulary that traceq's engine, sampler and collector share, so that
//! neither the engine nor the sampler has to know the other.
//!
//! ```text
//!  Clock ──▶ engine (delays, rate limiters, trace age)    PrometheusText ──▶ engine metrics
//!        └─▶ sampler (decision timers, rate policies)                    └─▶ collector /metrics
//! ```
//!
//! Why one clock: a program that simulates time (a test, or `examples/long_job.rs` running a
//! week in milliseconds) must drive the queue and the tail sampler from the same source, or
//! their deadlines drift apart. Why one Prometheus writer: label values must be escaped the same
//! way everywhere, and the text format has one set of rules.

pub mod clock;
pub mod prometheus;

#[cfg(any(test, feature = "testing"))]
pub use clock::ManualClock;
pub use clock::{Clock, SystemClock};
pub use prometheus::{MetricKind, PrometheusText};
