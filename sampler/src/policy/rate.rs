//! Rate policies: `rate_limiting` (spans per second) and `bytes_limiting` (bytes per second).
//!
//! Both read the sampler's injected clock, so they are tested by advancing time. They keep
//! state, so they are the only policies whose result depends on the order traces are decided
//! in. A trace they keep gets adjusted count 1: the rate they admit is not a probability.

use parking_lot::Mutex;
use serde::Deserialize;

use crate::error::ConfigError;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// `rate_limiting: {spans_per_second: 35}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitingConfig {
    /// Spans admitted per wall-clock second; a trace is kept while it fits in the second's budget.
    pub spans_per_second: u64,
}

/// `bytes_limiting: {bytes_per_second: 1024000, burst_capacity: 2048000}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BytesLimitingConfig {
    /// Sustained bytes admitted per second (token bucket refill rate).
    pub bytes_per_second: u64,
    /// Bucket size; `2 * bytes_per_second` when absent.
    #[serde(default)]
    pub burst_capacity: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct RateLimitingPolicy {
    limit: u64,
    window: Mutex<(u64, u64)>,
}

impl RateLimitingPolicy {
    pub(crate) fn new(policy: &str, cfg: &RateLimitingConfig) -> Result<Self, ConfigError> {
        if cfg.spans_per_second == 0 {
            return Err(ConfigError::field(
                policy,
                "spans_per_second",
                "must be positive",
            ));
        }
        Ok(Self {
            limit: cfg.spans_per_second,
            window: Mutex::new((u64::MAX, 0)),
        })
    }

    pub(crate) fn admits(&self, spans: usize, now_nanos: u64) -> bool {
        let second = now_nanos / NANOS_PER_SEC;
        let mut w = self.window.lock();
        if w.0 != second {
            *w = (second, 0);
        }
        let spans = spans as u64;
        if w.1.saturating_add(spans) <= self.limit {
            w.1 += spans;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at_nanos: u64,
}

#[derive(Debug)]
pub(crate) struct BytesLimitingPolicy {
    rate: f64,
    capacity: f64,
    bucket: Mutex<Option<Bucket>>,
}

impl BytesLimitingPolicy {
    pub(crate) fn new(policy: &str, cfg: &BytesLimitingConfig) -> Result<Self, ConfigError> {
        if cfg.bytes_per_second == 0 {
            return Err(ConfigError::field(
                policy,
                "bytes_per_second",
                "must be positive",
            ));
        }
        let capacity = cfg
            .burst_capacity
            .unwrap_or(cfg.bytes_per_second.saturating_mul(2));
        if capacity == 0 {
            return Err(ConfigError::field(
                policy,
                "burst_capacity",
                "must be positive",
            ));
        }
        Ok(Self {
            rate: cfg.bytes_per_second as f64,
            capacity: capacity as f64,
            bucket: Mutex::new(None),
        })
    }

    pub(crate) fn admits(&self, bytes: usize, now_nanos: u64) -> bool {
        let mut guard = self.bucket.lock();
        let bucket = guard.get_or_insert(Bucket {
            tokens: self.capacity,
            at_nanos: now_nanos,
        });
        let elapsed = now_nanos.saturating_sub(bucket.at_nanos) as f64 / NANOS_PER_SEC as f64;
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.capacity);
        bucket.at_nanos = bucket.at_nanos.max(now_nanos);
        let need = bytes as f64;
        if bucket.tokens >= need {
            bucket.tokens -= need;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiting_should_admit_spans_up_to_the_limit_per_second() {
        let p = RateLimitingPolicy::new(
            "r",
            &RateLimitingConfig {
                spans_per_second: 10,
            },
        )
        .unwrap();
        assert!(p.admits(6, 0));
        assert!(p.admits(4, 500_000_000));
        assert!(!p.admits(1, 900_000_000));
        assert!(p.admits(10, NANOS_PER_SEC));
        assert!(!p.admits(11, 5 * NANOS_PER_SEC));
    }

    #[test]
    fn rate_limiting_should_reject_a_zero_rate() {
        let err = RateLimitingPolicy::new(
            "r",
            &RateLimitingConfig {
                spans_per_second: 0,
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy `r`: field `spans_per_second` must be positive"
        );
    }

    #[test]
    fn bytes_limiting_should_allow_bursts_and_refill_over_time() {
        let cfg = BytesLimitingConfig {
            bytes_per_second: 100,
            burst_capacity: Some(300),
        };
        let p = BytesLimitingPolicy::new("b", &cfg).unwrap();
        assert!(p.admits(300, 0));
        assert!(!p.admits(1, 0));
        assert!(p.admits(100, NANOS_PER_SEC));
        assert!(!p.admits(400, 100 * NANOS_PER_SEC));
    }
}
