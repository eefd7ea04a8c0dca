//! Injected time.
//!
//! Why a clock trait: the token bucket reads the time, and tests must be able to advance it instead
//! of sleeping. The default [`TokioClock`] reads `tokio::time::Instant`, so a test that pauses tokio's
//! clock (`tokio::time::pause()`) controls the queue's delays and the rate limiters at once.

use std::fmt::Debug;
use std::time::Instant;

/// A source of the current time.
pub trait Clock: Send + Sync + Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// Reads `tokio::time::Instant::now()`: real time, or tokio's paused clock in tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

#[cfg(any(test, feature = "testing"))]
pub use manual::ManualClock;

#[cfg(any(test, feature = "testing"))]
mod manual {
    use super::Clock;
    use parking_lot::Mutex;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A clock that moves only when told to. Clones share the same time.
    #[derive(Debug, Clone)]
    pub struct ManualClock {
        now: Arc<Mutex<Instant>>,
    }

    impl Default for ManualClock {
        fn default() -> Self {
            Self::new()
        }
    }

    impl ManualClock {
        /// A clock stopped at the current real instant.
        pub fn new() -> Self {
            Self {
                now: Arc::new(Mutex::new(Instant::now())),
            }
        }

        /// Moves the clock forward by `by`.
        pub fn advance(&self, by: Duration) {
            *self.now.lock() += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.now.lock()
        }
    }
}
