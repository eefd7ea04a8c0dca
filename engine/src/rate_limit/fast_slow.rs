//! A fixed fast delay for the first attempts, then a fixed slow one.

use super::RateLimiter;
use foldhash::fast::RandomState;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::time::Duration;

/// Waits `fast` for the first `fast_attempts` failures of a key, then `slow`.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use traceq_engine::rate_limit::{FastSlow, RateLimiter};
///
/// let limiter = FastSlow::new(Duration::from_millis(1), Duration::from_secs(10), 2);
/// assert_eq!(limiter.when(&"a"), Duration::from_millis(1));
/// assert_eq!(limiter.when(&"a"), Duration::from_millis(1));
/// assert_eq!(limiter.when(&"a"), Duration::from_secs(10));
/// ```
pub struct FastSlow<K> {
    fast: Duration,
    slow: Duration,
    fast_attempts: u32,
    failures: Mutex<HashMap<K, u32, RandomState>>,
}

impl<K> fmt::Debug for FastSlow<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastSlow")
            .field("fast", &self.fast)
            .field("slow", &self.slow)
            .field("fast_attempts", &self.fast_attempts)
            .finish()
    }
}

impl<K: Eq + Hash + Clone> FastSlow<K> {
    /// `fast_attempts` failures wait `fast`, later ones wait `slow`. Any values are valid.
    pub fn new(fast: Duration, slow: Duration, fast_attempts: u32) -> Self {
        Self {
            fast,
            slow,
            fast_attempts,
            failures: Mutex::new(HashMap::default()),
        }
    }
}

impl<K: Eq + Hash + Clone + Send + Sync> RateLimiter<K> for FastSlow<K> {
    fn when(&self, key: &K) -> Duration {
        let mut map = self.failures.lock();
        let n = map.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        if *n <= self.fast_attempts {
            self.fast
        } else {
            self.slow
        }
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
    fn fast_slow_should_switch_after_the_fast_attempts_and_reset_on_forget() {
        let l = FastSlow::new(Duration::from_millis(1), Duration::from_millis(50), 1);
        assert_eq!(l.when(&'k'), Duration::from_millis(1));
        assert_eq!(l.when(&'k'), Duration::from_millis(50));
        assert_eq!(l.retries(&'k'), 2);
        l.forget(&'k');
        assert_eq!(l.retries(&'k'), 0);
        assert_eq!(l.when(&'k'), Duration::from_millis(1));
    }
}
