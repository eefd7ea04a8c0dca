//! The policy schema: one entry of the Collector's `tail_sampling.policies` list.
//!
//! A policy is `{name, type, <type>: {options}}`, exactly as in the Collector, so existing
//! configurations carry over: every policy type of the Collector's `tail_sampling` is read and
//! applied. `not: {not_sub_policy: {name, type, ...}}` samples when its sub-policy does not, as
//! the Collector's; ours also accepts `and`, `not` and `ottl_condition` sub-policies in it.

use serde::Deserialize;

use super::attribute::{
    BooleanAttributeConfig, NumericAttributeConfig, StringAttributeConfig, TraceStateConfig,
};
use super::composite::CompositeConfig;
use super::latency::LatencyConfig;
use super::ottl::OttlConditionConfig;
use super::probabilistic::ProbabilisticConfig;
use super::rate::{BytesLimitingConfig, RateLimitingConfig};
use super::span_count::SpanCountConfig;
use super::status::StatusCodeConfig;

/// A policy's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PolicyType {
    /// Sample every trace.
    #[default]
    AlwaysSample,
    /// Sample by trace duration.
    Latency,
    /// Sample by span status code.
    StatusCode,
    /// Sample by a string attribute.
    StringAttribute,
    /// Sample by a numeric attribute.
    NumericAttribute,
    /// Sample by a boolean attribute.
    BooleanAttribute,
    /// Sample by a tracestate entry.
    TraceState,
    /// Sample a share of traces, by trace id.
    Probabilistic,
    /// Sample up to a number of spans per second.
    RateLimiting,
    /// Sample up to a number of bytes per second.
    BytesLimiting,
    /// Sample by the number of spans in the trace.
    SpanCount,
    /// Sample when all sub-policies sample.
    And,
    /// Sample when the sub-policy does not.
    Not,
    /// Drop when all sub-policies sample; a drop beats every sampling policy.
    Drop,
    /// Sample when an OTTL condition holds for a span or a span event.
    OttlCondition,
    /// Sub-policies in order, each with a share of a spans-per-second budget.
    Composite,
    /// Sample when any span has the W3C `sampled` trace flag set (no options section).
    TraceFlags,
}

impl PolicyType {
    /// The type's name in YAML.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AlwaysSample => "always_sample",
            Self::Latency => "latency",
            Self::StatusCode => "status_code",
            Self::StringAttribute => "string_attribute",
            Self::NumericAttribute => "numeric_attribute",
            Self::BooleanAttribute => "boolean_attribute",
            Self::TraceState => "trace_state",
            Self::Probabilistic => "probabilistic",
            Self::RateLimiting => "rate_limiting",
            Self::BytesLimiting => "bytes_limiting",
            Self::SpanCount => "span_count",
            Self::And => "and",
            Self::Not => "not",
            Self::Drop => "drop",
            Self::OttlCondition => "ottl_condition",
            Self::Composite => "composite",
            Self::TraceFlags => "trace_flags",
        }
    }
}

/// `and: {and_sub_policy: [...]}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AndConfig {
    /// Sub-policies that must all sample.
    pub and_sub_policy: Vec<PolicyConfig>,
}

/// `not: {not_sub_policy: {...}}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotConfig {
    /// The policy to invert.
    pub not_sub_policy: Box<PolicyConfig>,
}

/// `drop: {drop_sub_policy: [...]}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropConfig {
    /// Sub-policies that must all sample for the trace to be dropped.
    pub drop_sub_policy: Vec<PolicyConfig>,
}

/// One sampling policy: a name, a type, and the options section named after the type.
///
/// # Examples
///
/// ```
/// use traceq_sampler::PolicyConfig;
///
/// let errors = PolicyConfig::status_code("errors", &["ERROR"]);
/// let some = PolicyConfig::probabilistic("ten-percent", 10.0);
/// assert_eq!(errors.name, "errors");
/// # let _ = some;
/// ```
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy's name: unique, recorded on kept spans and in counters.
    pub name: String,
    /// The policy's type; the section of the same name holds its options.
    #[serde(rename = "type")]
    pub kind: PolicyType,
    /// Options for `latency`.
    #[serde(default)]
    pub latency: Option<LatencyConfig>,
    /// Options for `status_code`.
    #[serde(default)]
    pub status_code: Option<StatusCodeConfig>,
    /// Options for `string_attribute`.
    #[serde(default)]
    pub string_attribute: Option<StringAttributeConfig>,
    /// Options for `numeric_attribute`.
    #[serde(default)]
    pub numeric_attribute: Option<NumericAttributeConfig>,
    /// Options for `boolean_attribute`.
    #[serde(default)]
    pub boolean_attribute: Option<BooleanAttributeConfig>,
    /// Options for `trace_state`.
    #[serde(default)]
    pub trace_state: Option<TraceStateConfig>,
    /// Options for `probabilistic`.
    #[serde(default)]
    pub probabilistic: Option<ProbabilisticConfig>,
    /// Options for `rate_limiting`.
    #[serde(default)]
    pub rate_limiting: Option<RateLimitingConfig>,
    /// Options for `bytes_limiting`.
    #[serde(default)]
    pub bytes_limiting: Option<BytesLimitingConfig>,
    /// Options for `span_count`.
    #[serde(default)]
    pub span_count: Option<SpanCountConfig>,
    /// Options for `and`.
    #[serde(default)]
    pub and: Option<AndConfig>,
    /// Options for `not`.
    #[serde(default)]
    pub not: Option<NotConfig>,
    /// Options for `drop`.
    #[serde(default)]
    pub drop: Option<DropConfig>,
    /// Options for `ottl_condition`.
    #[serde(default)]
    pub ottl_condition: Option<OttlConditionConfig>,
    /// Options for `composite`.
    #[serde(default)]
    pub composite: Option<CompositeConfig>,
}

impl PolicyConfig {
    /// An `always_sample` policy.
    #[must_use]
    pub fn always_sample(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: PolicyType::AlwaysSample,
            ..Self::default()
        }
    }

    /// A `status_code` policy for the given codes (`OK`, `ERROR`, `UNSET`).
    #[must_use]
    pub fn status_code(name: &str, codes: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            kind: PolicyType::StatusCode,
            status_code: Some(StatusCodeConfig {
                status_codes: codes.iter().map(|c| (*c).to_owned()).collect(),
            }),
            ..Self::default()
        }
    }

    /// A `span_count` policy sampling traces of at least `min_spans` spans (tests only).
    #[cfg(test)]
    pub(crate) fn span_count_for_test(min_spans: usize) -> Self {
        Self {
            name: format!("at-least-{min_spans}"),
            kind: PolicyType::SpanCount,
            span_count: Some(SpanCountConfig {
                min_spans,
                max_spans: 0,
            }),
            ..Self::default()
        }
    }

    /// A `probabilistic` policy keeping `percentage` percent of traces, unsalted.
    #[must_use]
    pub fn probabilistic(name: &str, percentage: f64) -> Self {
        Self {
            name: name.to_owned(),
            kind: PolicyType::Probabilistic,
            probabilistic: Some(ProbabilisticConfig {
                sampling_percentage: percentage,
                hash_salt: None,
            }),
            ..Self::default()
        }
    }
}
