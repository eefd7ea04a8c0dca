//! The longest delay of several limiters.

use super::{RateLimitError, RateLimiter};
use std::fmt;
use std::time::Duration;

/// Asks every limiter and waits the longest delay; `retries` is the largest count among them.
///
/// Every part records the failure, so a per-key backoff keeps growing even while a global bucket
/// dominates the delay.
pub struct MaxOf<K> {
    limiters: Vec<Box<dyn RateLimiter<K>>>,
}

impl<K> fmt::Debug for MaxOf<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.limiters.iter()).finish()
    }
}

impl<K> MaxOf<K> {
    /// Combines `limiters`.
    ///
    /// # Panics
    /// When `limiters` is empty; [`try_new`](Self::try_new) returns an error instead.
    pub fn new(limiters: Vec<Box<dyn RateLimiter<K>>>) -> Self {
        Self::try_new(limiters).expect("MaxOf needs at least one limiter")
    }

    /// Combines `limiters`.
    ///
    /// # Errors
    /// [`RateLimitError::Empty`] when `limiters` is empty.
    pub fn try_new(limiters: Vec<Box<dyn RateLimiter<K>>>) -> Result<Self, RateLimitError> {
        if limiters.is_empty() {
            return Err(RateLimitError::Empty);
        }
        Ok(Self { limiters })
    }
}

impl<K: Send + Sync> RateLimiter<K> for MaxOf<K> {
    fn when(&self, key: &K) -> Duration {
        self.limiters
            .iter()
            .map(|l| l.when(key))
            .max()
            .unwrap_or_default()
    }

    fn forget(&self, key: &K) {
        for l in &self.limiters {
            l.forget(key);
        }
    }

    fn retries(&self, key: &K) -> u32 {
        self.limiters
            .iter()
            .map(|l| l.retries(key))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::rate_limit::{ExponentialBackoff, TokenBucket};
    use std::sync::Arc;

    #[test]
    fn max_of_should_take_the_longest_delay_and_forget_everywhere() {
        let clock = ManualClock::new();
        let limiter = MaxOf::new(vec![
            Box::new(
                ExponentialBackoff::new(Duration::from_millis(1), Duration::from_secs(1)).unwrap(),
            ),
            Box::new(TokenBucket::with_clock(1.0, 1, Arc::new(clock)).unwrap()),
        ]);
        assert_eq!(limiter.when(&"a"), Duration::from_millis(1));
        // The bucket is empty now: its one-second wait dominates the 2 ms backoff.
        assert_eq!(limiter.when(&"a"), Duration::from_secs(1));
        assert_eq!(limiter.retries(&"a"), 2);
        limiter.forget(&"a");
        assert_eq!(limiter.retries(&"a"), 0);
    }

    #[test]
    fn max_of_should_refuse_an_empty_list() {
        assert_eq!(
            MaxOf::<u8>::try_new(Vec::new()).unwrap_err(),
            RateLimitError::Empty
        );
    }

    #[test]
    fn default_controller_should_start_at_five_milliseconds() {
        let l = crate::rate_limit::default_controller::<u32>();
        assert_eq!(l.when(&1), Duration::from_millis(5));
        assert_eq!(l.when(&1), Duration::from_millis(10));
    }
}
