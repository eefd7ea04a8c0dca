//! Rate limiters: how long a failing key waits before its next attempt.
//!
//! Every limiter answers three questions about a key, as client-go's `RateLimiter` does:
//! [`when`](RateLimiter::when) (record a failure and return the delay before the retry),
//! [`forget`](RateLimiter::forget) (clear the key's history, on success) and
//! [`retries`](RateLimiter::retries) (failures recorded so far). Limiters compose: [`MaxOf`] takes
//! the longest delay of its parts, which is how [`default_controller`] combines per-key exponential
//! backoff with a global token bucket.
//!
//! A limiter counts exactly one failure per call to `when`. The queue calls it only for a
//! rate-limited add that is not coalesced into a key already queued or already waiting, so spurious
//! re-adds of a failing key never inflate its backoff (see `Queue::add_rate_limited`).

mod bucket;
mod exponential;
mod fast_slow;
mod max_of;

pub use bucket::{TokenBucket, DEFAULT_BURST, DEFAULT_QPS};
pub use exponential::{ExponentialBackoff, DEFAULT_BASE, DEFAULT_MAX};
pub use fast_slow::FastSlow;
pub use max_of::MaxOf;

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

/// Decides the delay before a failed key is retried.
pub trait RateLimiter<K>: Send + Sync + Debug {
    /// Records a failure of `key` and returns how long to wait before it is retried.
    fn when(&self, key: &K) -> Duration;
    /// Clears the failure history of `key`.
    fn forget(&self, key: &K);
    /// Failures recorded for `key` since it was last forgotten.
    fn retries(&self, key: &K) -> u32;
}

impl<K, R: RateLimiter<K> + ?Sized> RateLimiter<K> for Arc<R> {
    fn when(&self, key: &K) -> Duration {
        (**self).when(key)
    }
    fn forget(&self, key: &K) {
        (**self).forget(key)
    }
    fn retries(&self, key: &K) -> u32 {
        (**self).retries(key)
    }
}

impl<K, R: RateLimiter<K> + ?Sized> RateLimiter<K> for Box<R> {
    fn when(&self, key: &K) -> Duration {
        (**self).when(key)
    }
    fn forget(&self, key: &K) {
        (**self).forget(key)
    }
    fn retries(&self, key: &K) -> u32 {
        (**self).retries(key)
    }
}

/// A limiter that never delays and keeps no history: for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDelay;

impl<K> RateLimiter<K> for NoDelay {
    fn when(&self, _key: &K) -> Duration {
        Duration::ZERO
    }
    fn forget(&self, _key: &K) {}
    fn retries(&self, _key: &K) -> u32 {
        0
    }
}

/// A limiter that never delays; retries are still counted per key.
///
/// This is client-go's behaviour for a queue without a limiter delay, and what the engine needs to
/// enforce `max_retries` in tests and benchmarks without waiting.
pub fn none<K: Eq + Hash + Clone + Send + Sync + 'static>() -> ExponentialBackoff<K> {
    ExponentialBackoff::new(Duration::ZERO, Duration::ZERO)
        .expect("zero bounds are accepted for the no-delay limiter")
}

/// client-go's `DefaultControllerRateLimiter`: the longer of per-key exponential backoff
/// (5 ms doubling up to 1000 s) and a global token bucket of 10 qps with a burst of 100.
pub fn default_controller<K: Eq + Hash + Clone + Send + Sync + 'static>() -> MaxOf<K> {
    MaxOf::new(vec![
        Box::new(ExponentialBackoff::<K>::default()),
        Box::new(TokenBucket::default()),
    ])
}

/// Bad rate-limiter parameters, refused at construction.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The exponential backoff's base exceeds its cap.
    #[error("backoff base delay {base:?} exceeds the maximum delay {max:?}")]
    InvertedBounds {
        /// The base delay given.
        base: Duration,
        /// The maximum delay given.
        max: Duration,
    },
    /// The exponential backoff's base is zero while its cap is not, so it would never grow.
    #[error("backoff base delay is zero but the maximum delay is {max:?}; use a base above zero")]
    ZeroBase {
        /// The maximum delay given.
        max: Duration,
    },
    /// A token bucket with a rate that is zero, negative or not a number.
    #[error("token bucket rate must be a positive number of tokens per second, got {0}")]
    InvalidRate(f64),
    /// A token bucket with a burst of zero would never grant a token.
    #[error("token bucket burst must be at least 1")]
    ZeroBurst,
    /// A composite limiter with no parts.
    #[error("max-of limiter needs at least one limiter")]
    Empty,
}
