//! `latency`: keep slow traces. The trace's duration is its latest span end minus its earliest
//! span start, whatever happened in between (as the Collector computes it).

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::error::ConfigError;
use crate::span::SpanView;

/// `latency: {threshold_ms: 5000, upper_threshold_ms: 10000}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyConfig {
    /// Traces lasting at least this long are sampled (milliseconds).
    pub threshold_ms: u64,
    /// When non-zero, only traces lasting more than `threshold_ms` and at most this are sampled.
    #[serde(default)]
    pub upper_threshold_ms: u64,
}

#[derive(Debug)]
pub(crate) struct LatencyPolicy {
    lower: Duration,
    upper: Option<Duration>,
}

impl LatencyPolicy {
    pub(crate) fn new(policy: &str, cfg: &LatencyConfig) -> Result<Self, ConfigError> {
        if cfg.upper_threshold_ms != 0 && cfg.upper_threshold_ms < cfg.threshold_ms {
            return Err(ConfigError::field(
                policy,
                "upper_threshold_ms",
                "must not be less than `threshold_ms`",
            ));
        }
        Ok(Self {
            lower: Duration::from_millis(cfg.threshold_ms),
            upper: (cfg.upper_threshold_ms != 0)
                .then(|| Duration::from_millis(cfg.upper_threshold_ms)),
        })
    }

    pub(crate) fn matches<S: SpanView>(&self, spans: &[S]) -> bool {
        let mut first: Option<SystemTime> = None;
        let mut last: Option<SystemTime> = None;
        for s in spans {
            let (start, end) = (s.start_time(), s.end_time());
            first = Some(first.map_or(start, |f| f.min(start)));
            last = Some(last.map_or(end, |l| l.max(end)));
        }
        let (Some(first), Some(last)) = (first, last) else {
            return false;
        };
        let duration = last.duration_since(first).unwrap_or_default();
        match self.upper {
            None => duration >= self.lower,
            Some(upper) => duration > self.lower && duration <= upper,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestSpan;

    fn trace(spans: &[(u64, u64)]) -> Vec<opentelemetry_sdk::trace::SpanData> {
        spans
            .iter()
            .enumerate()
            .map(|(i, (start, dur))| {
                TestSpan::new(1, i as u64 + 1)
                    .start_ms(*start)
                    .duration_ms(*dur)
                    .build()
            })
            .collect()
    }

    #[test]
    fn latency_should_measure_from_earliest_start_to_latest_end() {
        let p = LatencyPolicy::new(
            "slow",
            &LatencyConfig {
                threshold_ms: 100,
                upper_threshold_ms: 0,
            },
        )
        .unwrap();
        assert!(!p.matches(&trace(&[(0, 50), (10, 50)])));
        assert!(p.matches(&trace(&[(0, 10), (90, 10)])));
    }

    #[test]
    fn latency_with_upper_threshold_should_keep_only_the_band() {
        let p = LatencyPolicy::new(
            "band",
            &LatencyConfig {
                threshold_ms: 100,
                upper_threshold_ms: 200,
            },
        )
        .unwrap();
        assert!(!p.matches(&trace(&[(0, 100)])));
        assert!(p.matches(&trace(&[(0, 150)])));
        assert!(p.matches(&trace(&[(0, 200)])));
        assert!(!p.matches(&trace(&[(0, 201)])));
    }

    #[test]
    fn latency_should_reject_an_upper_threshold_below_the_lower() {
        let err = LatencyPolicy::new(
            "band",
            &LatencyConfig {
                threshold_ms: 100,
                upper_threshold_ms: 50,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("`upper_threshold_ms`"));
    }
}
