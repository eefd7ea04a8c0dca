//! The decision clock.
//!
//! Every deadline in the sampler (`decision_wait`, `decision_wait_after_root`, rate limits) is
//! read from a [`Clock`], never from `Instant::now()` directly, so tests advance time instead of
//! sleeping and a decision test runs in microseconds.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// A monotonic clock: the time elapsed since an arbitrary, fixed origin.
pub trait Clock: Send + Sync + Debug {
    /// The current time as a duration since the clock's origin. Never goes backwards.
    fn now(&self) -> Duration;
}

/// The real monotonic clock, measured from its creation.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

#[cfg(any(test, feature = "testing"))]
pub use manual::ManualClock;

#[cfg(any(test, feature = "testing"))]
mod manual {
    use super::Clock;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A clock that only moves when told to; clones share the same time.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use traceq_sampler::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new();
    /// clock.advance(Duration::from_secs(2));
    /// assert_eq!(clock.now(), Duration::from_secs(2));
    /// ```
    #[derive(Debug, Clone, Default)]
    pub struct ManualClock {
        nanos: Arc<AtomicU64>,
    }

    impl ManualClock {
        /// A clock standing at zero.
        #[must_use]
        pub fn new() -> Self {
            Self::default()
        }

        /// Moves the clock forward by `by` (saturating at `u64::MAX` nanoseconds).
        pub fn advance(&self, by: Duration) {
            let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            let _ = self
                .nanos
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    Some(n.saturating_add(by))
                });
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
        }
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
        clock.advance(Duration::from_millis(1500));
        assert_eq!(other.now(), Duration::from_millis(1500));
        clock.advance(Duration::MAX);
        assert_eq!(nanos(other.now()), u64::MAX);
    }
}
