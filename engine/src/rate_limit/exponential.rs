//! Per-key exponential backoff.

use super::{RateLimitError, RateLimiter};
use foldhash::fast::RandomState;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::time::Duration;

/// Default first delay, as client-go's controller limiter.
pub const DEFAULT_BASE: Duration = Duration::from_millis(5);
/// Default longest delay, as client-go's controller limiter.
pub const DEFAULT_MAX: Duration = Duration::from_secs(1000);

/// Waits `base * 2^failures`, capped at `max`, per key.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use traceq_engine::rate_limit::{ExponentialBackoff, RateLimiter};
///
/// let backoff = ExponentialBackoff::new(Duration::from_millis(5), Duration::from_secs(1)).unwrap();
/// assert_eq!(backoff.when(&"a"), Duration::from_millis(5));
/// assert_eq!(backoff.when(&"a"), Duration::from_millis(10));
/// assert_eq!(backoff.retries(&"a"), 2);
/// backoff.forget(&"a");
/// assert_eq!(backoff.when(&"a"), Duration::from_millis(5));
/// ```
pub struct ExponentialBackoff<K> {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<K, u32, RandomState>>,
}

impl<K> fmt::Debug for ExponentialBackoff<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExponentialBackoff")
            .field("base", &self.base)
            .field("max", &self.max)
            .field("keys", &self.failures.lock().len())
            .finish()
    }
}

impl<K: Eq + Hash + Clone> Default for ExponentialBackoff<K> {
    fn default() -> Self {
        Self::new(DEFAULT_BASE, DEFAULT_MAX).expect("default bounds are valid")
    }
}

impl<K: Eq + Hash + Clone> ExponentialBackoff<K> {
    /// Backoff starting at `base` and doubling up to `max`.
    ///
    /// # Errors
    /// [`RateLimitError::InvertedBounds`] when `base > max`, and [`RateLimitError::ZeroBase`] when
    /// `base` is zero but `max` is not. Both zero is a valid limiter that never delays.
    pub fn new(base: Duration, max: Duration) -> Result<Self, RateLimitError> {
        if base > max {
            return Err(RateLimitError::InvertedBounds { base, max });
        }
        if base.is_zero() && !max.is_zero() {
            return Err(RateLimitError::ZeroBase { max });
        }
        Ok(Self {
            base,
            max,
            failures: Mutex::new(HashMap::default()),
        })
    }

    /// The delay for a key that has already failed `failures` times.
    pub fn delay_for(&self, failures: u32) -> Duration {
        // 2^failures overflows past 63; the cap is reached long before for any real base.
        let factor = 1u64.checked_shl(failures.min(63)).unwrap_or(u64::MAX);
        let nanos = (self.base.as_nanos() as u64).saturating_mul(factor);
        Duration::from_nanos(nanos).min(self.max)
    }
}

impl<K: Eq + Hash + Clone + Send + Sync> RateLimiter<K> for ExponentialBackoff<K> {
    fn when(&self, key: &K) -> Duration {
        let failures = {
            let mut map = self.failures.lock();
            match map.get_mut(key) {
                Some(n) => {
                    let before = *n;
                    *n = n.saturating_add(1);
                    before
                }
                None => {
                    map.insert(key.clone(), 1);
                    0
                }
            }
        };
        self.delay_for(failures)
    }

    fn forget(&self, key: &K) {
        self.failures.lock().remove(key);
    }

    fn retries(&self, key: &K) -> u32 {
        self.failures.lock().get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_should_double_until_the_cap() {
        let b =
            ExponentialBackoff::new(Duration::from_millis(5), Duration::from_millis(30)).unwrap();
        let delays: Vec<_> = (0..5).map(|_| b.when(&1u32).as_millis()).collect();
        assert_eq!(delays, vec![5, 10, 20, 30, 30]);
        assert_eq!(b.retries(&1), 5);
        assert_eq!(b.retries(&2), 0);
    }

    #[test]
    fn backoff_should_not_overflow_after_many_failures() {
        let b = ExponentialBackoff::<u8>::default();
        assert_eq!(b.delay_for(u32::MAX), DEFAULT_MAX);
        assert_eq!(b.delay_for(64), DEFAULT_MAX);
    }

    #[test]
    fn backoff_should_reject_inverted_and_zero_base_bounds() {
        assert!(matches!(
            ExponentialBackoff::<u8>::new(Duration::from_secs(2), Duration::from_secs(1)),
            Err(RateLimitError::InvertedBounds { .. })
        ));
        assert!(matches!(
            ExponentialBackoff::<u8>::new(Duration::ZERO, Duration::from_secs(1)),
            Err(RateLimitError::ZeroBase { .. })
        ));
        assert!(ExponentialBackoff::<u8>::new(Duration::ZERO, Duration::ZERO).is_ok());
    }
}
