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
use super::composite::CompositeBudget;
use super::config::{PolicyConfig, PolicyType};
use super::latency::LatencyPolicy;
use super::ottl::{OttlConditionPolicy, Vote};
use super::probabilistic::ProbabilisticPolicy;
use super::rate::{BytesLimitingPolicy, RateLimitingPolicy};
use super::span_count::SpanCountPolicy;
use super::status::StatusCodePolicy;
use crate::decision::KeptDecision;
use crate::error::ConfigError;
use crate::metrics::{PolicyNames, PolicyTally};
use crate::span::SpanView;

/// Deepest nesting of `and` / `not` / `drop` accepted, so a hostile file cannot blow the stack.
const MAX_DEPTH: usize = 8;

/// The W3C `sampled` bit of the trace flags.
const SAMPLED_FLAG: u8 = 0x01;

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
    TraceFlags,
    Prob(ProbabilisticPolicy),
    Rate(RateLimitingPolicy),
    Bytes(BytesLimitingPolicy),
    SpanCount(SpanCountPolicy),
    Ottl(Box<OttlConditionPolicy>),
    And(Vec<Rule>),
    Not(Box<Rule>),
    Composite(Box<Composite>),
}

/// A compiled `composite`: its sub-policies in list order, and their budgets.
#[derive(Debug)]
struct Composite {
    subs: Vec<Rule>,
    budget: CompositeBudget,
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
            let refused = match sub.kind {
                PolicyType::Drop => "must not contain a drop policy",
                PolicyType::Composite => {
                    "must not contain a composite policy (a composite is a top-level policy)"
                }
                _ => return Rule::compile(sub, depth + 1),
            };
            Err(ConfigError::field(&cfg.name, field, refused))
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
            PolicyType::TraceFlags => Rule::TraceFlags,
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
            PolicyType::OttlCondition => Rule::Ottl(Box::new(OttlConditionPolicy::new(
                name,
                section(cfg, &cfg.ottl_condition)?,
            )?)),
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
            PolicyType::Composite => {
                if depth > 0 {
                    return Err(ConfigError::field(
                        name,
                        "type",
                        "`composite` is a top-level policy; it cannot be a sub-policy",
                    ));
                }
                let c = section(cfg, &cfg.composite)?;
                let subs = subs(cfg, "composite_sub_policy", &c.composite_sub_policy, depth)?;
                let names: Vec<&str> = c
                    .composite_sub_policy
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect();
                Rule::Composite(Box::new(Composite {
                    budget: CompositeBudget::new(name, c, &names)?,
                    subs,
                }))
            }
        })
    }

    /// Whether the rule reads the trace's size in bytes.
    #[cfg(any(test, feature = "testing"))]
    fn reads_bytes(&self) -> bool {
        match self {
            Rule::Bytes(_) => true,
            Rule::And(rules) => rules.iter().any(Rule::reads_bytes),
            Rule::Not(rule) => rule.reads_bytes(),
            Rule::Composite(c) => c.subs.iter().any(Rule::reads_bytes),
            _ => false,
        }
    }

    /// The probability `evaluate` reports when the rule samples (fixed by configuration).
    fn keep_probability(&self) -> f64 {
        match self {
            Rule::Prob(p) => p.probability(),
            Rule::And(rules) => rules.iter().map(Rule::keep_probability).product(),
            _ => 1.0,
        }
    }

    /// What the rule finds for the trace. `errors` counts evaluation errors that did not make
    /// the rule fail (an `ottl_condition` in `ignore` mode).
    fn evaluate<S: SpanView>(&self, spans: &[S], cx: &EvalContext, errors: &mut u64) -> Vote {
        let hit = |b: bool| if b { Vote::Sample(1.0) } else { Vote::Pass };
        match self {
            Rule::Always => Vote::Sample(1.0),
            Rule::Status(p) => hit(p.matches(spans)),
            Rule::Latency(p) => hit(p.matches(spans)),
            Rule::Str(p) => hit(p.matches(spans, cx.resource)),
            Rule::Num(p) => hit(p.matches(spans, cx.resource)),
            Rule::Bool(p) => hit(p.matches(spans, cx.resource)),
            Rule::TraceState(p) => hit(p.matches(spans)),
            Rule::TraceFlags => hit(spans.iter().any(|s| s.trace_flags() & SAMPLED_FLAG != 0)),
            Rule::Prob(p) => {
                if p.keeps(cx.trace_id) {
                    Vote::Sample(p.probability())
                } else {
                    Vote::Pass
                }
            }
            Rule::Rate(p) => hit(p.admits(spans.len(), cx.now_nanos)),
            Rule::Bytes(p) => hit(p.admits(cx.bytes, cx.now_nanos)),
            Rule::SpanCount(p) => hit(p.matches(spans.len())),
            Rule::Ottl(p) => p.vote(spans, cx.resource, errors),
            Rule::And(rules) => {
                let mut probability = 1.0;
                for r in rules {
                    match r.evaluate(spans, cx, errors) {
                        Vote::Sample(p) => probability *= p,
                        other => return other,
                    }
                }
                Vote::Sample(probability)
            }
            Rule::Not(rule) => match rule.evaluate(spans, cx, errors) {
                Vote::Sample(_) => Vote::Pass,
                Vote::Pass => Vote::Sample(1.0),
                Vote::Error => Vote::Error,
            },
            Rule::Composite(c) => {
                for &i in &c.budget.order {
                    match c.subs[i].evaluate(spans, cx, errors) {
                        Vote::Sample(_) if c.budget.admit(i, spans.len(), cx.now_nanos) => {
                            return Vote::Sample(1.0)
                        }
                        Vote::Error => return Vote::Error,
                        Vote::Sample(_) | Vote::Pass => {}
                    }
                }
                Vote::Pass
            }
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
    names: Arc<PolicyNames>,
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
        let names = Arc::new(PolicyNames::new(
            policies.iter().map(|p| p.name.clone()).collect(),
        ));
        Ok(Self {
            policies,
            sample_on_first_match,
            names,
        })
    }

    /// The names, in order, with this set's generation.
    pub(crate) fn names(&self) -> &Arc<PolicyNames> {
        &self.names
    }

    pub(crate) fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether any policy reads the trace's size in bytes (`bytes_limiting`).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn reads_bytes(&self) -> bool {
        self.policies.iter().any(|p| p.rule.reads_bytes())
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
            match p.rule.evaluate(spans, cx, &mut counters[i].errors) {
                Vote::Sample(_) => {
                    counters[i].dropped += 1;
                    return Outcome::Dropped { index: i };
                }
                Vote::Pass => counters[i].not_sampled += 1,
                Vote::Error => {
                    counters[i].errors += 1;
                    counters[i].not_sampled += 1;
                }
            }
        }
        let mut best: Option<(usize, f64)> = None;
        for (i, p) in self.policies.iter().enumerate().filter(|(_, p)| !p.drop) {
            match p.rule.evaluate(spans, cx, &mut counters[i].errors) {
                Vote::Sample(prob) => {
                    counters[i].sampled += 1;
                    if best.is_none_or(|(_, b)| prob > b) {
                        best = Some((i, prob));
                    }
                    if self.sample_on_first_match {
                        break;
                    }
                }
                Vote::Pass => counters[i].not_sampled += 1,
                Vote::Error => {
                    counters[i].errors += 1;
                    counters[i].not_sampled += 1;
                }
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
    fn trace_flags_should_sample_a_trace_with_any_sampled_span() {
        let set = PolicySet::compile(&[yaml("{name: f, type: trace_flags}")], false).unwrap();
        let mut c = counters(1);
        let some = [
            TestSpan::new(1, 1).unsampled().build(),
            TestSpan::new(1, 2).build(),
        ];
        let none = [TestSpan::new(1, 1).unsampled().build()];
        assert_eq!(
            set.evaluate(&some, &cx(1), &mut c),
            Outcome::Keep { index: 0 }
        );
        assert_eq!(set.evaluate(&none, &cx(1), &mut c), Outcome::NotSampled);
    }

    fn composite() -> PolicySet {
        PolicySet::compile(
            &[yaml(
                "{name: comp, type: composite, composite: {max_total_spans_per_second: 10, \
                 policy_order: [by-key, by-route, rest], composite_sub_policy: [\
                 {name: rest, type: always_sample}, \
                 {name: by-key, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50}}, \
                 {name: by-route, type: string_attribute, string_attribute: {key: route, values: [/a]}}], \
                 rate_allocation: [{policy: by-key, percent: 50}, {policy: by-route, percent: 40}]}}",
            )],
            false,
        )
        .unwrap()
    }

    fn trace(spans: usize, kv: Option<KeyValue>) -> Vec<opentelemetry_sdk::trace::SpanData> {
        (1..=spans as u64)
            .map(|i| {
                let s = TestSpan::new(1, i);
                match &kv {
                    Some(kv) if i == 1 => s.attr(kv.clone()).build(),
                    _ => s.build(),
                }
            })
            .collect()
    }

    #[test]
    fn composite_should_keep_within_each_share_in_policy_order_and_fall_through() {
        let set = composite();
        let mut c = counters(1);
        let keyed = || Some(KeyValue::new("key1", 75));
        let now = |second: u64| EvalContext {
            now_nanos: second * 1_000_000_000,
            ..cx(1)
        };
        let keep = Outcome::Keep { index: 0 };
        // by-key has 5 spans a second, by-route 4, rest (an equal share) 10 / 3 = 3; the total
        // of 10 binds before the shares (12) do.
        assert_eq!(set.evaluate(&trace(4, keyed()), &now(0), &mut c), keep);
        // by-key's share is spent: the trace falls through to `rest`, which has room for 3.
        assert_eq!(set.evaluate(&trace(3, keyed()), &now(0), &mut c), keep);
        assert_eq!(
            set.evaluate(&trace(1, keyed()), &now(0), &mut c),
            keep,
            "by-key: 5 of 5"
        );
        assert_eq!(
            set.evaluate(&trace(1, keyed()), &now(0), &mut c),
            Outcome::NotSampled
        );
        let route = || Some(KeyValue::new("route", "/a"));
        assert_eq!(
            set.evaluate(&trace(2, route()), &now(0), &mut c),
            keep,
            "total: 10 of 10"
        );
        assert_eq!(
            set.evaluate(&trace(1, route()), &now(0), &mut c),
            Outcome::NotSampled,
            "by-route has room, the total has not"
        );
        // A new second, new budgets.
        assert_eq!(set.evaluate(&trace(2, route()), &now(1), &mut c), keep);
        assert_eq!(
            set.evaluate(&trace(3, route()), &now(1), &mut c),
            keep,
            "by-route full: rest"
        );
        assert_eq!(
            set.evaluate(&trace(1, None), &now(1), &mut c),
            Outcome::NotSampled,
            "rest: 3 of 3"
        );
    }

    #[test]
    fn composite_should_be_refused_below_the_top_level_and_with_bad_sub_policies() {
        let nested = PolicySet::compile(&[yaml("{name: a, type: and, and: {and_sub_policy: [{name: c, type: composite, composite: {max_total_spans_per_second: 1, composite_sub_policy: [{name: x, type: always_sample}]}}]}}")], false).unwrap_err();
        assert_eq!(
            nested.to_string(),
            "policy `a`: field `and_sub_policy` must not contain a composite policy (a composite is a top-level policy)"
        );
        let bad_sub = PolicySet::compile(&[yaml("{name: c, type: composite, composite: {max_total_spans_per_second: 1, composite_sub_policy: [{name: x, type: latency}]}}")], false).unwrap_err();
        assert_eq!(
            bad_sub.to_string(),
            "policy `x`: field `latency` section is required for this type"
        );
        let empty = PolicySet::compile(&[yaml("{name: c, type: composite, composite: {max_total_spans_per_second: 1, composite_sub_policy: []}}")], false).unwrap_err();
        assert_eq!(
            empty.to_string(),
            "policy `c`: field `composite_sub_policy` must not be empty"
        );
    }

    #[test]
    fn an_evaluation_error_should_fail_the_policy_through_and_not_and_composite() {
        let failing = "{name: o, type: ottl_condition, ottl_condition: {span: ['Len(attributes[\"x\"]) > 0']}}";
        let set = PolicySet::compile(
            &[
                yaml(failing),
                yaml(&format!("{{name: n, type: not, not: {{not_sub_policy: {failing}}}}}")),
                yaml(&format!("{{name: a, type: and, and: {{and_sub_policy: [{{name: all, type: always_sample}}, {failing}]}}}}")),
                yaml(&format!("{{name: c, type: composite, composite: {{max_total_spans_per_second: 100, composite_sub_policy: [{failing}, {{name: all, type: always_sample}}]}}}}")),
            ],
            false,
        )
        .unwrap();
        let mut c = counters(4);
        let outcome = set.evaluate(&[TestSpan::new(1, 1).build()], &cx(1), &mut c);
        assert_eq!(
            outcome,
            Outcome::NotSampled,
            "no policy may sample on an error"
        );
        for (i, t) in c.iter().enumerate() {
            assert_eq!(
                (t.errors, t.not_sampled, t.sampled),
                (1, 1, 0),
                "policy {i}"
            );
        }
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
                "{name: o, type: ottl_condition, ottl_condition: {span: ['attributes[\"k\"] ==']}}",
            )],
            false,
        )
        .unwrap_err();
        assert_eq!(
            ottl.to_string(),
            "policy `o`: ottl_condition.span[0] `attributes[\"k\"] ==`: at character 19: \
             expected a value, found the end of the condition"
        );
        let nested_drop = PolicySet::compile(&[yaml("{name: a, type: and, and: {and_sub_policy: [{name: d, type: drop, drop: {drop_sub_policy: [{name: x, type: always_sample}]}}]}}")], false).unwrap_err();
        assert!(nested_drop
            .to_string()
            .contains("field `and_sub_policy` must not contain a drop policy"));
    }
}
