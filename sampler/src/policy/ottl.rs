//! `ottl_condition`: keep traces in which a span, or a span event, meets an OTTL condition.
//!
//! As in the Collector, the conditions of a list are alternatives (any one true is enough), and
//! the trace is sampled as soon as one span's conditions or one event's conditions hold. The
//! conditions are compiled once, when the policy is built (see [`crate::ottl`]); evaluating them
//! reads each span where it is stored.
//!
//! `error_mode` decides what a condition that cannot be evaluated on a span does (`Len` of a
//! missing attribute, arithmetic on a string): `propagate`, the Collector's default, makes the
//! whole policy fail for that trace (counted in the policy's `evaluation_errors`, the trace not
//! sampled by it); `ignore` takes the condition as false for that span and goes on, counting
//! the error (the Collector logs it); `silent` goes on without counting.

use opentelemetry::KeyValue;
use serde::Deserialize;

use crate::error::ConfigError;
use crate::ottl::{Condition, Context};
use crate::span::SpanView;

/// `ottl_condition: {error_mode: ignore, span: [...], spanevent: [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OttlConditionConfig {
    /// What a condition that fails to evaluate does (default `propagate`, as in the Collector).
    #[serde(default)]
    pub error_mode: OttlErrorMode,
    /// Conditions on spans; the trace is sampled when any holds for any span.
    #[serde(default)]
    pub span: Vec<String>,
    /// Conditions on span events; the trace is sampled when any holds for any event.
    #[serde(default)]
    pub spanevent: Vec<String>,
}

/// An `ottl_condition`'s `error_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OttlErrorMode {
    /// The policy fails for the trace: not sampled by it, counted in `evaluation_errors`.
    #[default]
    Propagate,
    /// The failing condition is false for that span; counted in `evaluation_errors`.
    Ignore,
    /// The failing condition is false for that span; not counted.
    Silent,
}

/// What one evaluation of a policy found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Vote {
    /// Sample, with this keep probability.
    Sample(f64),
    /// Do not sample.
    Pass,
    /// The policy could not be evaluated (an `ottl_condition` in `propagate` mode).
    Error,
}

#[derive(Debug)]
pub(crate) struct OttlConditionPolicy {
    span: Vec<Condition>,
    event: Vec<Condition>,
    mode: OttlErrorMode,
}

fn compile(
    policy: &str,
    list: &'static str,
    texts: &[String],
    context: Context,
) -> Result<Vec<Condition>, ConfigError> {
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            Condition::compile(text, context).map_err(|e| ConfigError::Ottl {
                policy: policy.to_owned(),
                list,
                index,
                condition: text.clone(),
                message: e.to_string(),
            })
        })
        .collect()
}

impl OttlConditionPolicy {
    pub(crate) fn new(policy: &str, cfg: &OttlConditionConfig) -> Result<Self, ConfigError> {
        if cfg.span.is_empty() && cfg.spanevent.is_empty() {
            return Err(ConfigError::field(
                policy,
                "span",
                "or `spanevent` must hold at least one condition",
            ));
        }
        Ok(Self {
            span: compile(policy, "span", &cfg.span, Context::Span)?,
            event: compile(policy, "spanevent", &cfg.spanevent, Context::SpanEvent)?,
            mode: cfg.error_mode,
        })
    }

    /// Whether any condition holds; `errors` counts failed evaluations under `ignore`.
    pub(crate) fn vote<S: SpanView>(
        &self,
        spans: &[S],
        resource: &[KeyValue],
        errors: &mut u64,
    ) -> Vote {
        for span in spans {
            for c in &self.span {
                match self.outcome(c.on_span(span, resource), errors) {
                    Some(true) => return Vote::Sample(1.0),
                    Some(false) => {}
                    None => return Vote::Error,
                }
            }
            if self.event.is_empty() {
                continue;
            }
            for event in span.events() {
                for c in &self.event {
                    match self.outcome(c.on_event(span, &event, resource), errors) {
                        Some(true) => return Vote::Sample(1.0),
                        Some(false) => {}
                        None => return Vote::Error,
                    }
                }
            }
        }
        Vote::Pass
    }

    /// A condition's result under the error mode: `None` when the policy fails.
    fn outcome<E>(&self, r: Result<bool, E>, errors: &mut u64) -> Option<bool> {
        match (r, self.mode) {
            (Ok(b), _) => Some(b),
            (Err(_), OttlErrorMode::Propagate) => None,
            (Err(_), OttlErrorMode::Ignore) => {
                *errors += 1;
                Some(false)
            }
            (Err(_), OttlErrorMode::Silent) => Some(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestSpan;

    fn policy(mode: OttlErrorMode, span: &[&str], spanevent: &[&str]) -> OttlConditionPolicy {
        OttlConditionPolicy::new(
            "o",
            &OttlConditionConfig {
                error_mode: mode,
                span: span.iter().map(|s| (*s).to_owned()).collect(),
                spanevent: spanevent.iter().map(|s| (*s).to_owned()).collect(),
            },
        )
        .unwrap()
    }

    #[test]
    fn any_condition_on_any_span_or_event_should_sample() {
        let p = policy(
            OttlErrorMode::Propagate,
            &[r#"name == "checkout""#, r#"attributes["vip"] == true"#],
            &[r#"name == "exception""#],
        );
        let plain = [TestSpan::new(1, 1).name("list").build()];
        let vip = [
            TestSpan::new(1, 1).build(),
            TestSpan::new(1, 2).attr(KeyValue::new("vip", true)).build(),
        ];
        let failed = [TestSpan::new(1, 1).event("exception", vec![]).build()];
        let mut errors = 0;
        assert_eq!(p.vote(&plain, &[], &mut errors), Vote::Pass);
        assert_eq!(p.vote(&vip, &[], &mut errors), Vote::Sample(1.0));
        assert_eq!(p.vote(&failed, &[], &mut errors), Vote::Sample(1.0));
        assert_eq!(errors, 0);
    }

    #[test]
    fn error_mode_should_decide_what_a_failing_condition_does() {
        // The first span fails the first condition; the second span meets the second.
        let spans = [
            TestSpan::new(1, 1).build(),
            TestSpan::new(1, 2).name("keep").build(),
        ];
        let conditions = [r#"Len(attributes["missing"]) > 0"#, r#"name == "keep""#];
        let mut errors = 0;
        let p = policy(OttlErrorMode::Propagate, &conditions, &[]);
        assert_eq!(p.vote(&spans, &[], &mut errors), Vote::Error);
        assert_eq!(errors, 0);
        let p = policy(OttlErrorMode::Ignore, &conditions, &[]);
        assert_eq!(p.vote(&spans, &[], &mut errors), Vote::Sample(1.0));
        assert_eq!(errors, 2, "one failure per span before the match");
        let p = policy(OttlErrorMode::Silent, &conditions, &[]);
        assert_eq!(p.vote(&spans, &[], &mut errors), Vote::Sample(1.0));
        assert_eq!(errors, 2);
    }

    #[test]
    fn bad_configurations_should_name_the_policy_list_and_condition() {
        let err = OttlConditionPolicy::new(
            "slow-db",
            &OttlConditionConfig {
                error_mode: OttlErrorMode::Ignore,
                span: vec![r#"name == "x""#.to_owned()],
                spanevent: vec![r#"Substring(name, 0, 1) == "x""#.to_owned()],
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy `slow-db`: ottl_condition.spanevent[0] `Substring(name, 0, 1) == \"x\"`: \
             at character 1: function `Substring` is not supported (supported: IsMatch, \
             IsString, IsInt, IsBool, IsDouble, IsRootSpan, Len, Concat, TraceID, SpanID)"
        );
        let empty = OttlConditionPolicy::new(
            "none",
            &OttlConditionConfig {
                error_mode: OttlErrorMode::Propagate,
                span: vec![],
                spanevent: vec![],
            },
        )
        .unwrap_err();
        assert_eq!(
            empty.to_string(),
            "policy `none`: field `span` or `spanevent` must hold at least one condition"
        );
    }
}
