//! Attribute policies: `string_attribute`, `numeric_attribute`, `boolean_attribute` and
//! `trace_state`. Each samples a trace when any span matches, or, for the first three, when the
//! resource attributes match (as in the Collector, which looks at resource and span attributes;
//! the SDK processor's resource is the tracer provider's).
//!
//! `invert_match` follows the Collector with its `disableinvertdecisions` gate on: it simply
//! inverts the result (the trace is sampled when no span matches). The deprecated "inverted not
//! sampled" vote, which acted like a drop, is not reproduced; use a `drop` policy for that.

use std::collections::HashSet;

use regex::RegexSet;
use serde::Deserialize;

use crate::error::ConfigError;
use opentelemetry::KeyValue;

use crate::span::{find_attribute, AttrValue, SpanView};

/// `string_attribute: {key: http.route, values: [/live, /ready], enabled_regex_matching: true}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringAttributeConfig {
    /// Attribute key to look at.
    pub key: String,
    /// Values that sample the trace (exact matches, or regular expressions).
    pub values: Vec<String>,
    /// Treat `values` as unanchored regular expressions.
    #[serde(default)]
    pub enabled_regex_matching: bool,
    /// Accepted for compatibility; matching uses one compiled regex set and needs no cache.
    #[serde(default)]
    pub cache_max_size: usize,
    /// Sample traces where no span matches instead.
    #[serde(default)]
    pub invert_match: bool,
}

/// `numeric_attribute: {key: key1, min_value: 50, max_value: 100}` (bounds inclusive).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericAttributeConfig {
    /// Attribute key to look at (integer or double values).
    pub key: String,
    /// Lower bound, inclusive; no lower bound when absent.
    #[serde(default)]
    pub min_value: Option<i64>,
    /// Upper bound, inclusive; no upper bound when absent.
    #[serde(default)]
    pub max_value: Option<i64>,
    /// Sample traces where no span matches instead.
    #[serde(default)]
    pub invert_match: bool,
}

/// `boolean_attribute: {key: app.force_sample, value: true}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BooleanAttributeConfig {
    /// Attribute key to look at.
    pub key: String,
    /// The value that samples the trace.
    pub value: bool,
    /// Sample traces where no span matches instead.
    #[serde(default)]
    pub invert_match: bool,
}

/// `trace_state: {key: key3, values: [value1, value2]}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceStateConfig {
    /// Tracestate key to look at.
    pub key: String,
    /// Values that sample the trace.
    pub values: Vec<String>,
}

fn require_key(policy: &str, key: &str) -> Result<(), ConfigError> {
    if key.is_empty() {
        return Err(ConfigError::field(policy, "key", "must not be empty"));
    }
    Ok(())
}

#[derive(Debug)]
enum StringMatcher {
    Exact(HashSet<String>),
    Regex(RegexSet),
}

#[derive(Debug)]
pub(crate) struct StringAttributePolicy {
    key: String,
    matcher: StringMatcher,
    invert: bool,
}

impl StringAttributePolicy {
    pub(crate) fn new(policy: &str, cfg: &StringAttributeConfig) -> Result<Self, ConfigError> {
        require_key(policy, &cfg.key)?;
        if cfg.values.is_empty() {
            return Err(ConfigError::field(policy, "values", "must not be empty"));
        }
        let matcher = if cfg.enabled_regex_matching {
            StringMatcher::Regex(RegexSet::new(&cfg.values).map_err(|source| {
                ConfigError::Regex {
                    policy: policy.to_owned(),
                    field: "values",
                    source,
                }
            })?)
        } else {
            StringMatcher::Exact(cfg.values.iter().cloned().collect())
        };
        Ok(Self {
            key: cfg.key.clone(),
            matcher,
            invert: cfg.invert_match,
        })
    }

    fn hit(&self, value: Option<AttrValue<'_>>) -> bool {
        match value {
            Some(AttrValue::Str(v)) => match &self.matcher {
                StringMatcher::Exact(set) => set.contains(v),
                StringMatcher::Regex(set) => set.is_match(v),
            },
            _ => false,
        }
    }

    pub(crate) fn matches<S: SpanView>(&self, spans: &[S], resource: &[KeyValue]) -> bool {
        let any = self.hit(find_attribute(resource, &self.key))
            || spans.iter().any(|s| self.hit(s.attribute(&self.key)));
        any != self.invert
    }
}

#[derive(Debug)]
pub(crate) struct NumericAttributePolicy {
    key: String,
    min: Option<i64>,
    max: Option<i64>,
    invert: bool,
}

impl NumericAttributePolicy {
    pub(crate) fn new(policy: &str, cfg: &NumericAttributeConfig) -> Result<Self, ConfigError> {
        require_key(policy, &cfg.key)?;
        match (cfg.min_value, cfg.max_value) {
            (None, None) => {
                return Err(ConfigError::field(
                    policy,
                    "min_value",
                    "or `max_value` must be set",
                ))
            }
            (Some(min), Some(max)) if min > max => {
                return Err(ConfigError::field(
                    policy,
                    "max_value",
                    "must not be less than `min_value`",
                ))
            }
            _ => {}
        }
        Ok(Self {
            key: cfg.key.clone(),
            min: cfg.min_value,
            max: cfg.max_value,
            invert: cfg.invert_match,
        })
    }

    fn in_range_i64(&self, v: i64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }

    fn in_range_f64(&self, v: f64) -> bool {
        self.min.is_none_or(|m| v >= m as f64) && self.max.is_none_or(|m| v <= m as f64)
    }

    fn hit(&self, value: Option<AttrValue<'_>>) -> bool {
        match value {
            Some(AttrValue::I64(v)) => self.in_range_i64(v),
            Some(AttrValue::F64(v)) => self.in_range_f64(v),
            _ => false,
        }
    }

    pub(crate) fn matches<S: SpanView>(&self, spans: &[S], resource: &[KeyValue]) -> bool {
        let any = self.hit(find_attribute(resource, &self.key))
            || spans.iter().any(|s| self.hit(s.attribute(&self.key)));
        any != self.invert
    }
}

#[derive(Debug)]
pub(crate) struct BooleanAttributePolicy {
    key: String,
    value: bool,
    invert: bool,
}

impl BooleanAttributePolicy {
    pub(crate) fn new(policy: &str, cfg: &BooleanAttributeConfig) -> Result<Self, ConfigError> {
        require_key(policy, &cfg.key)?;
        Ok(Self {
            key: cfg.key.clone(),
            value: cfg.value,
            invert: cfg.invert_match,
        })
    }

    pub(crate) fn matches<S: SpanView>(&self, spans: &[S], resource: &[KeyValue]) -> bool {
        let want = Some(AttrValue::Bool(self.value));
        let any = find_attribute(resource, &self.key) == want
            || spans.iter().any(|s| s.attribute(&self.key) == want);
        any != self.invert
    }
}

#[derive(Debug)]
pub(crate) struct TraceStatePolicy {
    key: String,
    values: HashSet<String>,
}

impl TraceStatePolicy {
    pub(crate) fn new(policy: &str, cfg: &TraceStateConfig) -> Result<Self, ConfigError> {
        require_key(policy, &cfg.key)?;
        if cfg.values.is_empty() {
            return Err(ConfigError::field(policy, "values", "must not be empty"));
        }
        Ok(Self {
            key: cfg.key.clone(),
            values: cfg.values.iter().cloned().collect(),
        })
    }

    pub(crate) fn matches<S: SpanView>(&self, spans: &[S]) -> bool {
        spans.iter().any(|s| {
            s.trace_state(&self.key)
                .is_some_and(|v| self.values.contains(v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestSpan;
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::trace::SpanData;

    fn with(kv: KeyValue) -> Vec<SpanData> {
        vec![
            TestSpan::new(1, 1).build(),
            TestSpan::new(1, 2).attr(kv).build(),
        ]
    }

    fn string(values: &[&str], regex: bool, invert: bool) -> StringAttributePolicy {
        StringAttributePolicy::new(
            "s",
            &StringAttributeConfig {
                key: "route".into(),
                values: values.iter().map(|v| (*v).to_owned()).collect(),
                enabled_regex_matching: regex,
                cache_max_size: 0,
                invert_match: invert,
            },
        )
        .unwrap()
    }

    #[test]
    fn string_attribute_should_match_exact_values_only() {
        let p = string(&["/live", "/ready"], false, false);
        assert!(p.matches(&with(KeyValue::new("route", "/live")), &[]));
        assert!(!p.matches(&with(KeyValue::new("route", "/lively")), &[]));
        assert!(!p.matches(&with(KeyValue::new("other", "/live")), &[]));
    }

    #[test]
    fn string_attribute_should_match_unanchored_regexes() {
        let p = string(&["/v1/name/.+"], true, false);
        assert!(p.matches(&with(KeyValue::new("route", "/v1/name/42")), &[]));
        assert!(!p.matches(&with(KeyValue::new("route", "/v1/name/")), &[]));
    }

    #[test]
    fn string_attribute_invert_should_sample_when_nothing_matches() {
        let p = string(&["/health"], false, true);
        assert!(!p.matches(&with(KeyValue::new("route", "/health")), &[]));
        assert!(p.matches(&with(KeyValue::new("route", "/orders")), &[]));
        assert!(p.matches(&with(KeyValue::new("other", "x")), &[]));
    }

    #[test]
    fn string_attribute_should_name_policy_and_field_for_a_bad_regex() {
        let err = StringAttributePolicy::new(
            "routes",
            &StringAttributeConfig {
                key: "route".into(),
                values: vec!["(".into()],
                enabled_regex_matching: true,
                cache_max_size: 0,
                invert_match: false,
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy `routes`: field `values` has an invalid regular expression"
        );
    }

    fn numeric(min: Option<i64>, max: Option<i64>, invert: bool) -> NumericAttributePolicy {
        NumericAttributePolicy::new(
            "n",
            &NumericAttributeConfig {
                key: "n".into(),
                min_value: min,
                max_value: max,
                invert_match: invert,
            },
        )
        .unwrap()
    }

    #[test]
    fn numeric_attribute_should_use_inclusive_bounds_for_ints_and_doubles() {
        let p = numeric(Some(50), Some(100), false);
        assert!(p.matches(&with(KeyValue::new("n", 50)), &[]));
        assert!(p.matches(&with(KeyValue::new("n", 100)), &[]));
        assert!(p.matches(&with(KeyValue::new("n", 75.5)), &[]));
        assert!(!p.matches(&with(KeyValue::new("n", 101)), &[]));
        assert!(!p.matches(&with(KeyValue::new("n", "75")), &[]));
        let open = numeric(Some(50), None, false);
        assert!(open.matches(&with(KeyValue::new("n", i64::MAX)), &[]));
        let inverted = numeric(Some(50), Some(100), true);
        assert!(inverted.matches(&with(KeyValue::new("n", 7)), &[]));
    }

    #[test]
    fn numeric_attribute_should_reject_missing_or_crossed_bounds() {
        let cfg = |min, max| NumericAttributeConfig {
            key: "n".into(),
            min_value: min,
            max_value: max,
            invert_match: false,
        };
        assert!(NumericAttributePolicy::new("n", &cfg(None, None)).is_err());
        let err = NumericAttributePolicy::new("n", &cfg(Some(5), Some(1))).unwrap_err();
        assert!(err.to_string().contains("field `max_value`"));
    }

    #[test]
    fn boolean_attribute_should_match_the_configured_value() {
        let cfg = |invert| BooleanAttributeConfig {
            key: "force".into(),
            value: true,
            invert_match: invert,
        };
        let p = BooleanAttributePolicy::new("b", &cfg(false)).unwrap();
        assert!(p.matches(&with(KeyValue::new("force", true)), &[]));
        assert!(!p.matches(&with(KeyValue::new("force", false)), &[]));
        let inv = BooleanAttributePolicy::new("b", &cfg(true)).unwrap();
        assert!(inv.matches(&with(KeyValue::new("force", false)), &[]));
    }

    #[test]
    fn attribute_policies_should_also_match_resource_attributes() {
        let p = string(&["checkout"], false, false);
        let resource = [KeyValue::new("route", "checkout")];
        let spans = with(KeyValue::new("other", "x"));
        assert!(!p.matches(&spans, &[]));
        assert!(p.matches(&spans, &resource));
        let inverted = string(&["checkout"], false, true);
        assert!(!inverted.matches(&spans, &resource));
        let n = numeric(Some(1), Some(2), false);
        assert!(n.matches(&spans, &[KeyValue::new("n", 2)]));
    }

    #[test]
    fn trace_state_should_match_listed_values() {
        let p = TraceStatePolicy::new(
            "ts",
            &TraceStateConfig {
                key: "vendor".into(),
                values: vec!["gold".into()],
            },
        )
        .unwrap();
        let gold = vec![TestSpan::new(1, 1).trace_state("vendor", "gold").build()];
        let tin = vec![TestSpan::new(1, 1).trace_state("vendor", "tin").build()];
        assert!(p.matches(&gold));
        assert!(!p.matches(&tin));
    }
}
