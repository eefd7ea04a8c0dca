//! Compiled policies and how their votes combine.
//!
//! Evaluation order is the configuration order. Drop policies are consulted first: if any drop
//! policy matches, the trace is dropped whatever else matches ("drop wins"). Otherwise the trace
//! is kept if any policy samples it. The credited policy is the one that kept the trace with the
//! highest probability (the first of those in configuration order), because a trace that an
//! unconditional policy keeps stands for itself alone: an error trace kept by `status_code` and
//! also picked by a 10% `probabilistic` policy has adjusted count 1, not 10.

use std::sync::Arc;

use opentelemetry::trace::TraceId;
use opentelemetry::KeyValue;

use super::attribute::{
    BooleanAttributePolicy, NumericAttributePolicy, StringAttributePolicy, TraceStatePolicy,
};
use super::config::{PolicyConfig, PolicyType};
use super::latency::LatencyPolicy;
use super::probabilistic::ProbabilisticPolicy;
use super::rate::{BytesLimitingPolicy, RateLimitingPolicy};
use super::span_count::SpanCountPolicy;
use super::status::StatusCodePolicy;
use crate::decision::KeptDecision;
use crate::error::ConfigError;
use crate::metrics::PolicyTally;
use crate::span::SpanView;

/// Deepest nesting of `and` / `not` / `drop` accepted, so a hostile file cannot blow the stack.
const MAX_DEPTH: usize = 8;

/// What the evaluator knows about the trace besides its spans.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EvalContext<'a> {
    pub(crate) trace_id: TraceId,
    /// Resource attributes shared by the trace's spans.
    pub(crate) resource: &'a [KeyValue],
    pub(crate) bytes: usize,
    pub(crate) now_nanos: u64,
}

#[derive(Debug)]
enum Rule {
    Always,
    Status(StatusCodePolicy),
    Latency(LatencyPolicy),
    Str(StringAttributePolicy),
    Num(NumericAttributePolicy),
    Bool(BooleanAttributePolicy),
    TraceState(TraceStatePolicy),
    Prob(ProbabilisticPolicy),
    Rate(RateLimitingPolicy),
    Bytes(BytesLimitingPolicy),
    SpanCount(SpanCountPolicy),
    And(Vec<Rule>),
    Not(Box<Rule>),
}

fn section<'a, T>(cfg: &'a PolicyConfig, s: &'a Option<T>) -> Result<&'a T, ConfigError> {
    s.as_ref().ok_or_else(|| {
        ConfigError::field(
            &cfg.name,
            cfg.kind.as_str(),
            "section is required for this type",
        )
    })
}

fn subs(
    cfg: &PolicyConfig,
    field: &'static str,
    list: &[PolicyConfig],
    depth: usize,
) -> Result<Vec<Rule>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::field(&cfg.name, field, "must not be empty"));
    }
    list.iter()
        .map(|sub| {
            if sub.kind == PolicyType::Drop {
                return Err(ConfigError::field(
                    &cfg.name,
                    field,
                    "must not contain a drop policy",
                ));
            }
            Rule::compile(sub, depth + 1)
        })
        .collect()
}

impl Rule {
    fn compile(cfg: &PolicyConfig, depth: usize) -> Result<Self, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(ConfigError::field(
                &cfg.name,
                "type",
                "nests sub-policies too deeply",
            ));
        }
        let name = cfg.name.as_str();
        Ok(match cfg.kind {
            PolicyType::AlwaysSample => Rule::Always,
            PolicyType::StatusCode => Rule::Status(StatusCodePolicy::new(
                name,
                section(cfg, &cfg.status_code)?,
            )?),
            PolicyType::Latency => {
                Rule::Latency(LatencyPolicy::new(name, section(cfg, &cfg.latency)?)?)
            }
            PolicyType::StringAttribute => Rule::Str(StringAttributePolicy::new(
                name,
                section(cfg, &cfg.string_attribute)?,
            )?),
            PolicyType::NumericAttribute => Rule::Num(NumericAttributePolicy::new(
                name,
                section(cfg, &cfg.numeric_attribute)?,
            )?),
            PolicyType::BooleanAttribute => Rule::Bool(BooleanAttributePolicy::new(
                name,
                section(cfg, &cfg.boolean_attribute)?,
            )?),
            PolicyType::TraceState => Rule::TraceState(TraceStatePolicy::new(
                name,
                section(cfg, &cfg.trace_state)?,
            )?),
            PolicyType::Probabilistic => Rule::Prob(ProbabilisticPolicy::new(
                name,
                section(cfg, &cfg.probabilistic)?,
            )?),
            PolicyType::RateLimiting => Rule::Rate(RateLimitingPolicy::new(
                name,
                section(cfg, &cfg.rate_limiting)?,
            )?),
            PolicyType::BytesLimiting => Rule::Bytes(BytesLimitingPolicy::new(
                name,
                section(cfg, &cfg.bytes_limiting)?,
            )?),
            PolicyType::SpanCount => {
                Rule::SpanCount(SpanCountPolicy::new(name, section(cfg, &cfg.span_count)?)?)
            }
            PolicyType::And => Rule::And(subs(
                cfg,
                "and_sub_policy",
                &section(cfg, &cfg.and)?.and_sub_policy,
                depth,
            )?),
            PolicyType::Drop => Rule::And(subs(
                cfg,
                "drop_sub_policy",
                &section(cfg, &cfg.drop)?.drop_sub_policy,
                depth,
            )?),
            PolicyType::Not => {
                let sub = &section(cfg, &cfg.not)?.not_sub_policy;
                let mut rules = subs(
                    cfg,
                    "not_sub_policy",
                    std::slice::from_ref(sub.as_ref()),
                    depth,
                )?;
                Rule::Not(Box::new(rules.remove(0)))
            }
            PolicyType::OttlCondition | PolicyType::Composite | PolicyType::TraceFlags => {
                return Err(ConfigError::Unsupported {
                    policy: cfg.name.clone(),
                    kind: cfg.kind.as_str().to_owned(),
                })
            }
        })
    }

    /// The probability `evaluate` reports when the rule samples (fixed by configuration).
    fn keep_probability(&self) -> f64 {
        match self {
            Rule::Prob(p) => p.probability(),
            Rule::And(rules) => rules.iter().map(Rule::keep_probability).product(),
            _ => 1.0,
        }
    }

    /// `Some(probability)` when the rule samples the trace.
    fn evaluate<S: SpanView>(&self, spans: &[S], cx: &EvalContext) -> Option<f64> {
        let hit = |b: bool| b.then_some(1.0);
        match self {
            Rule::Always => Some(1.0),
            Rule::Status(p) => hit(p.matches(spans)),
            Rule::Latency(p) => hit(p.matches(spans)),
            Rule::Str(p) => hit(p.matches(spans, cx.resource)),
            Rule::Num(p) => hit(p.matches(spans, cx.resource)),
            Rule::Bool(p) => hit(p.matches(spans, cx.resource)),
            Rule::TraceState(p) => hit(p.matches(spans)),
            Rule::Prob(p) => p.keeps(cx.trace_id).then(|| p.probability()),
            Rule::Rate(p) => hit(p.admits(spans.len(), cx.now_nanos)),
            Rule::Bytes(p) => hit(p.admits(cx.bytes, cx.now_nanos)),
            Rule::SpanCount(p) => hit(p.matches(spans.len())),
            Rule::And(rules) => rules
                .iter()
                .try_fold(1.0, |acc, r| r.evaluate(spans, cx).map(|p| acc * p)),
            Rule::Not(rule) => hit(rule.evaluate(spans, cx).is_none()),
        }
    }
}

/// The combined result of all policies for one trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Outcome {
    /// Kept; `index` is the credited policy.
    Keep { index: usize },
    /// No policy sampled the trace.
    NotSampled,
    /// Drop policy `index` matched.
    Dropped { index: usize },
}

#[derive(Debug)]
struct Policy {
    name: Arc<str>,
    /// The decision this policy makes when it keeps a trace, built once: a rule's keep
    /// probability is fixed by its configuration.
    decision: Arc<KeptDecision>,
    rule: Rule,
    drop: bool,
}

/// The configured policies, compiled, in configuration order.
#[derive(Debug)]
pub(crate) struct PolicySet {
    policies: Vec<Policy>,
    sample_on_first_match: bool,
}

impl PolicySet {
    pub(crate) fn compile(
        configs: &[PolicyConfig],
        sample_on_first_match: bool,
    ) -> Result<Self, ConfigError> {
        if configs.is_empty() {
            return Err(ConfigError::NoPolicies);
        }
        let mut seen = std::collections::HashSet::new();
        let mut policies = Vec::with_capacity(configs.len());
        for cfg in configs {
            if cfg.name.is_empty() {
                return Err(ConfigError::field("", "name", "must not be empty"));
            }
            if !seen.insert(cfg.name.as_str()) {
                return Err(ConfigError::DuplicateName {
                    policy: cfg.name.clone(),
                });
            }
            let name: Arc<str> = Arc::from(cfg.name.as_str());
            let rule = Rule::compile(cfg, 0)?;
            policies.push(Policy {
                decision: Arc::new(KeptDecision::new(name.clone(), rule.keep_probability())),
                name,
                rule,
                drop: cfg.kind == PolicyType::Drop,
            });
        }
        Ok(Self {
            policies,
            sample_on_first_match,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.policies.len()
    }

    pub(crate) fn decision(&self, index: usize) -> &Arc<KeptDecision> {
        &self.policies[index].decision
    }

    pub(crate) fn name(&self, index: usize) -> &Arc<str> {
        &self.policies[index].name
    }

    /// Evaluates every policy (stopping early only for `sample_on_first_match`) and counts each
    /// vote in `counters` (one per policy, same order).
    pub(crate) fn evaluate<S: SpanView>(
        &self,
        spans: &[S],
        cx: &EvalContext,
        counters: &mut [PolicyTally],
    ) -> Outcome {
        for (i, p) in self.policies.iter().enumerate().filter(|(_, p)| p.drop) {
            if p.rule.evaluate(spans, cx).is_some() {
                counters[i].dropped += 1;
                return Outcome::Dropped { index: i };
            }
            counters[i].not_sampled += 1;
        }
        let mut best: Option<(usize, f64)> = None;
        for (i, p) in self.policies.iter().enumerate().filter(|(_, p)| !p.drop) {
            match p.rule.evaluate(spans, cx) {
                Some(prob) => {
                    counters[i].sampled += 1;
                    if best.is_none_or(|(_, b)| prob > b) {
                        best = Some((i, prob));
                    }
                    if self.sample_on_first_match {
                        break;
                    }
                }
                None => counters[i].not_sampled += 1,
            }
        }
        match best {
            Some((index, _)) => Outcome::Keep { index },
            None => Outcome::NotSampled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestSpan;
    use opentelemetry::KeyValue;

    fn counters(n: usize) -> Vec<PolicyTally> {
        vec![PolicyTally::default(); n]
    }

    fn cx(trace: u128) -> EvalContext<'static> {
        EvalContext {
            trace_id: TraceId::from(trace),
            resource: &[],
            bytes: 100,
            now_nanos: 0,
        }
    }

    fn yaml(s: &str) -> PolicyConfig {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn drop_should_win_over_any_sampling_policy() {
        let set = PolicySet::compile(
            &[
                PolicyConfig::always_sample("all"),
                yaml("{name: no-health, type: drop, drop: {drop_sub_policy: [{name: h, type: string_attribute, string_attribute: {key: route, values: [/health]}}]}}"),
            ],
            false,
        )
        .unwrap();
        let mut c = counters(2);
        let health = [TestSpan::new(1, 1)
            .attr(KeyValue::new("route", "/health"))
            .build()];
        let other = [TestSpan::new(1, 1)
            .attr(KeyValue::new("route", "/orders"))
            .build()];
        assert_eq!(
            set.evaluate(&health, &cx(1), &mut c),
            Outcome::Dropped { index: 1 }
        );
        assert_eq!(
            set.evaluate(&other, &cx(1), &mut c),
            Outcome::Keep { index: 0 }
        );
        assert_eq!(c[1].dropped, 1);
    }

    #[test]
    fn and_should_sample_only_when_all_sub_policies_do_and_multiply_probabilities() {
        let set = PolicySet::compile(
            &[yaml("{name: both, type: and, and: {and_sub_policy: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}, {name: p, type: probabilistic, probabilistic: {sampling_percentage: 100}}]}}")],
            false,
        )
        .unwrap();
        let mut c = counters(1);
        let bad = [TestSpan::new(1, 1).error().build()];
        let good = [TestSpan::new(1, 1).build()];
        assert_eq!(
            set.evaluate(&bad, &cx(1), &mut c),
            Outcome::Keep { index: 0 }
        );
        assert_eq!(set.evaluate(&good, &cx(1), &mut c), Outcome::NotSampled);
    }

    #[test]
    fn not_should_invert_its_sub_policy() {
        let set = PolicySet::compile(
            &[yaml("{name: healthy, type: not, not: {not_sub_policy: {name: e, type: status_code, status_code: {status_codes: [ERROR]}}}}")],
            false,
        )
        .unwrap();
        let mut c = counters(1);
        assert_eq!(
            set.evaluate(&[TestSpan::new(1, 1).error().build()], &cx(1), &mut c),
            Outcome::NotSampled
        );
        assert!(matches!(
            set.evaluate(&[TestSpan::new(1, 1).build()], &cx(1), &mut c),
            Outcome::Keep { .. }
        ));
    }

    #[test]
    fn the_most_certain_policy_should_be_credited_with_a_keep() {
        let set = PolicySet::compile(
            &[
                PolicyConfig::probabilistic("all-prob", 100.0),
                PolicyConfig::probabilistic("half", 50.0),
                PolicyConfig::always_sample("all"),
            ],
            false,
        )
        .unwrap();
        let keep = set.evaluate(&[TestSpan::new(1, 1).build()], &cx(1), &mut counters(3));
        assert_eq!(keep, Outcome::Keep { index: 0 });
    }

    #[test]
    fn compile_should_refuse_bad_sets_with_named_errors() {
        assert!(matches!(
            PolicySet::compile(&[], false),
            Err(ConfigError::NoPolicies)
        ));
        let dup = PolicySet::compile(
            &[
                PolicyConfig::always_sample("a"),
                PolicyConfig::always_sample("a"),
            ],
            false,
        )
        .unwrap_err();
        assert_eq!(dup.to_string(), "policy `a`: duplicate policy name");
        let missing = PolicySet::compile(&[yaml("{name: l, type: latency}")], false).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "policy `l`: field `latency` section is required for this type"
        );
        let ottl = PolicySet::compile(
            &[yaml(
                "{name: o, type: ottl_condition, ottl_condition: {span: [x]}}",
            )],
            false,
        )
        .unwrap_err();
        assert_eq!(
            ottl.to_string(),
            "policy `o`: policy type `ottl_condition` is not supported"
        );
        let nested_drop = PolicySet::compile(&[yaml("{name: a, type: and, and: {and_sub_policy: [{name: d, type: drop, drop: {drop_sub_policy: [{name: x, type: always_sample}]}}]}}")], false).unwrap_err();
        assert!(nested_drop
            .to_string()
            .contains("field `and_sub_policy` must not contain a drop policy"));
    }
}
