//! Injected time: the workspace's one [`Clock`] (from `traceq-core`, shared with the sampler).
//!
//! Why a clock trait: the token bucket reads the time, and tests must be able to advance it instead
//! of sleeping. The default [`TokioClock`] reads `tokio::time::Instant`, so a test that pauses tokio's
//! clock (`tokio::time::pause()`) controls the queue's delays and the rate limiters at once. A
//! program that simulates time hands the same clock to the engine and to the tail sampler.

use std::time::Instant;

#[cfg(any(test, feature = "testing"))]
pub use traceq_core::ManualClock;
pub use traceq_core::{Clock, SystemClock};

/// Reads `tokio::time::Instant::now()`: real time, or tokio's paused clock in tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}
