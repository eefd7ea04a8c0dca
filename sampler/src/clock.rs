//! The decision clock: the workspace's one [`Clock`] (from `traceq-core`, shared with the
//! engine).
//!
//! Every deadline in the sampler (`decision_wait`, `decision_wait_after_root`, rate limits) is
//! read from a [`Clock`], never from `Instant::now()` directly, so tests advance time instead of
//! sleeping and a decision test runs in microseconds. A program that simulates time gives the
//! engine and the sampler the same clock.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(any(test, feature = "testing"))]
pub use traceq_core::ManualClock;
pub use traceq_core::{Clock, SystemClock};

/// A clock read as the time elapsed since the sampler was made: how the sampler stores times
/// (whole nanoseconds in a `u64`, half the size of an `Instant`).
pub(crate) struct Elapsed {
    clock: Arc<dyn Clock>,
    origin: Instant,
}

impl fmt::Debug for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Elapsed")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Elapsed {
    /// Counts from `clock`'s current reading.
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        let origin = clock.now();
        Self { clock, origin }
    }

    /// Nanoseconds since the origin, saturating.
    pub(crate) fn nanos(&self) -> u64 {
        nanos(self.clock.now().saturating_duration_since(self.origin))
    }
}

/// A duration in whole nanoseconds, saturating: how the sampler stores clock readings.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_should_count_from_creation_and_saturate() {
        let clock = ManualClock::new();
        let elapsed = Elapsed::new(Arc::new(clock.clone()));
        assert_eq!(elapsed.nanos(), 0);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(elapsed.nanos(), 1_500_000_000);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }
}
