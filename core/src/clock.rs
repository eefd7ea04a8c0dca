//! Injected time.
//!
//! Every deadline in traceq (a queue's delays, the token bucket, a trace's age, the sampler's
//! decision waits and rate limits) is read from a [`Clock`], never from `Instant::now()`
//! directly, so tests advance time instead of sleeping.

use std::fmt::Debug;
use std::time::Instant;

/// A monotonic source of the current time.
pub trait Clock: Send + Sync + Debug {
    /// The current instant. Never goes backwards.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The real clock.
    #[must_use]
    pub fn new() -> Self {
        Self
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

#[cfg(any(test, feature = "testing"))]
pub use manual::ManualClock;

#[cfg(any(test, feature = "testing"))]
mod manual {
    use super::Clock;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::{Duration, Instant};

    /// A clock that moves only when told to; clones share the same time.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use traceq_core::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new();
    /// let start = clock.now();
    /// clock.advance(Duration::from_secs(2));
    /// assert_eq!(clock.now() - start, Duration::from_secs(2));
    /// ```
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
        #[must_use]
        pub fn new() -> Self {
            Self {
                now: Arc::new(Mutex::new(Instant::now())),
            }
        }

        /// Moves the clock forward by `by`, as far as an `Instant` can go (a huge step
        /// saturates instead of overflowing).
        pub fn advance(&self, by: Duration) {
            let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
            *now = now.checked_add(by).unwrap_or_else(|| saturated(*now, by));
        }
    }

    /// The latest instant `from + by` reaches without overflowing.
    fn saturated(from: Instant, by: Duration) -> Instant {
        let mut step = by;
        let mut at = from;
        while !step.is_zero() {
            match at.checked_add(step) {
                Some(next) => at = next,
                None => step /= 2,
            }
        }
        at
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.now.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn system_clock_should_never_go_backwards() {
        let clock = SystemClock::new();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }

    #[test]
    fn manual_clock_should_share_time_between_clones() {
        let clock = ManualClock::new();
        let other = clock.clone();
        let start = clock.now();
        clock.advance(Duration::from_millis(1500));
        assert_eq!(other.now() - start, Duration::from_millis(1500));
        clock.advance(Duration::MAX);
        assert!(other.now() > start + Duration::from_secs(1_000_000));
    }
}
