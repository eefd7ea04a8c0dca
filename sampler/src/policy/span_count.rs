//! `span_count`: keep traces whose span count is within `[min_spans, max_spans]`.

use serde::Deserialize;

use crate::error::ConfigError;

/// `span_count: {min_spans: 2, max_spans: 20}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanCountConfig {
    /// Minimum number of spans, inclusive.
    pub min_spans: usize,
    /// Maximum number of spans, inclusive; no upper bound when 0 or absent.
    #[serde(default)]
    pub max_spans: usize,
}

#[derive(Debug)]
pub(crate) struct SpanCountPolicy {
    min: usize,
    max: Option<usize>,
}

impl SpanCountPolicy {
    pub(crate) fn new(policy: &str, cfg: &SpanCountConfig) -> Result<Self, ConfigError> {
        if cfg.max_spans != 0 && cfg.max_spans < cfg.min_spans {
            return Err(ConfigError::field(
                policy,
                "max_spans",
                "must not be less than `min_spans`",
            ));
        }
        Ok(Self {
            min: cfg.min_spans,
            max: (cfg.max_spans != 0).then_some(cfg.max_spans),
        })
    }

    pub(crate) fn matches(&self, spans: usize) -> bool {
        spans >= self.min && self.max.is_none_or(|m| spans <= m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_count_should_use_inclusive_bounds() {
        let p = SpanCountPolicy::new(
            "c",
            &SpanCountConfig {
                min_spans: 2,
                max_spans: 20,
            },
        )
        .unwrap();
        assert!(!p.matches(1));
        assert!(p.matches(2));
        assert!(p.matches(20));
        assert!(!p.matches(21));
        let open = SpanCountPolicy::new(
            "c",
            &SpanCountConfig {
                min_spans: 2,
                max_spans: 0,
            },
        )
        .unwrap();
        assert!(open.matches(1_000_000));
    }

    #[test]
    fn span_count_should_reject_crossed_bounds() {
        let err = SpanCountPolicy::new(
            "c",
            &SpanCountConfig {
                min_spans: 5,
                max_spans: 2,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("field `max_spans`"));
    }
}
