//! A global token bucket that reserves tokens.
//!
//! Why not the `governor` crate: governor answers "allowed now, or not until T" without taking a
//! token when the answer is "not yet". A retry limiter must *reserve*: when 500 keys fail at once,
//! the 101st must wait 1/qps, the 102nd 2/qps and so on, as client-go's `BucketRateLimiter`
//! (`rate.Limiter.Reserve().Delay()`) does. With check-only semantics all of them would be told the
//! same short delay and retry together, which is the burst the bucket exists to prevent. The bucket
//! below is the generic cell rate algorithm with reservation: one timestamp behind a mutex.

use super::{RateLimitError, RateLimiter};
use crate::clock::{Clock, TokioClock};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default rate, as client-go's controller limiter.
pub const DEFAULT_QPS: f64 = 10.0;
/// Default burst, as client-go's controller limiter.
pub const DEFAULT_BURST: u32 = 100;

/// Hands out `qps` tokens per second with bursts of up to `burst`, shared by all keys.
///
/// Each call to [`when`](RateLimiter::when) takes one token, now or in the future, and returns how
/// long until that token is available. It keeps no per-key history: `forget` does nothing and
/// `retries` is always 0, as in client-go.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use traceq_engine::rate_limit::{RateLimiter, TokenBucket};
///
/// let bucket = TokenBucket::new(10.0, 2).unwrap();
/// assert_eq!(bucket.when(&"a"), Duration::ZERO);
/// assert_eq!(bucket.when(&"b"), Duration::ZERO);
/// // The burst is spent: the third token is a tenth of a second away (less the time passed).
/// assert!(bucket.when(&"c") > Duration::from_millis(90));
/// ```
#[derive(Debug)]
pub struct TokenBucket {
    interval: Duration,
    tolerance: Duration,
    clock: Arc<dyn Clock>,
    /// Theoretical arrival time of the next token; `None` until the first call.
    next: Mutex<Option<Instant>>,
}

impl Default for TokenBucket {
    fn default() -> Self {
        Self::new(DEFAULT_QPS, DEFAULT_BURST).expect("default bucket is valid")
    }
}

impl TokenBucket {
    /// A bucket of `qps` tokens per second and `burst` tokens at most at once.
    ///
    /// # Errors
    /// [`RateLimitError::InvalidRate`] for a rate that is not a positive finite number (or so small
    /// that one token would take longer than a `Duration` can hold), and
    /// [`RateLimitError::ZeroBurst`] for a burst of 0.
    pub fn new(qps: f64, burst: u32) -> Result<Self, RateLimitError> {
        Self::with_clock(qps, burst, Arc::new(TokioClock))
    }

    /// As [`new`](Self::new), reading time from `clock`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_clock(qps: f64, burst: u32, clock: Arc<dyn Clock>) -> Result<Self, RateLimitError> {
        if !(qps.is_finite() && qps > 0.0) {
            return Err(RateLimitError::InvalidRate(qps));
        }
        if burst == 0 {
            return Err(RateLimitError::ZeroBurst);
        }
        let interval =
            Duration::try_from_secs_f64(1.0 / qps).map_err(|_| RateLimitError::InvalidRate(qps))?;
        let tolerance = interval
            .checked_mul(burst - 1)
            .ok_or(RateLimitError::InvalidRate(qps))?;
        Ok(Self {
            interval,
            tolerance,
            clock,
            next: Mutex::new(None),
        })
    }
}

impl<K> RateLimiter<K> for TokenBucket {
    fn when(&self, _key: &K) -> Duration {
        let now = self.clock.now();
        let mut next = self.next.lock();
        let tat = next.map_or(now, |t| t.max(now));
        // The token is available once the backlog beyond the burst tolerance has drained.
        let delay = tat
            .checked_duration_since(now)
            .unwrap_or_default()
            .saturating_sub(self.tolerance);
        *next = Some(tat.checked_add(self.interval).unwrap_or(tat));
        delay
    }

    fn forget(&self, _key: &K) {}

    fn retries(&self, _key: &K) -> u32 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn bucket_should_reserve_tokens_beyond_the_burst_in_order() {
        let clock = ManualClock::new();
        let bucket = TokenBucket::with_clock(10.0, 3, Arc::new(clock.clone())).unwrap();
        let delays: Vec<_> = (0..6).map(|i| bucket.when(&i).as_millis()).collect();
        assert_eq!(delays, vec![0, 0, 0, 100, 200, 300]);
        clock.advance(Duration::from_secs(1));
        // Six tokens were taken and ten were earned: the burst is full again.
        assert_eq!(bucket.when(&0).as_millis(), 0);
    }

    #[test]
    fn bucket_should_reject_bad_rates_and_zero_burst() {
        assert_eq!(
            TokenBucket::new(0.0, 1).unwrap_err(),
            RateLimitError::InvalidRate(0.0)
        );
        assert!(TokenBucket::new(-1.0, 1).is_err());
        assert!(TokenBucket::new(f64::NAN, 1).is_err());
        assert!(TokenBucket::new(1e-300, 1).is_err());
        assert_eq!(
            TokenBucket::new(1.0, 0).unwrap_err(),
            RateLimitError::ZeroBurst
        );
    }
}
