//! What a keep decision says about the spans it keeps.
//!
//! Backends extrapolate from sampled data, so every kept span carries the policy that kept its
//! trace and the adjusted count (how many traces this one stands for, `1 / probability`). A span
//! that arrives after its trace was decided is annotated with the same, cached decision, so a
//! late span never inherits a different rate (the Refinery#973 trap).

use std::sync::Arc;

use opentelemetry::trace::TraceState;
use opentelemetry::{KeyValue, Value};

/// Span attribute carrying a trace's segment number within its job (set by traceq's engine when
/// it splits a long job). Job linkage keeps only segments at or after the one kept for an error.
pub const SEGMENT_ATTRIBUTE: &str = "traceq.segment";

/// Attribute naming the policy that kept the trace.
pub const POLICY_ATTRIBUTE: &str = "traceq.sampling.policy";
/// Attribute holding the adjusted count, `1 / sampling probability`, as a double.
pub const ADJUSTED_COUNT_ATTRIBUTE: &str = "traceq.sampling.adjusted_count";
/// Name used for decisions made by job linkage rather than by a configured policy.
pub const JOB_LINKAGE_POLICY: &str = "traceq.job_linkage";

/// Number of bits of randomness in a W3C / OpenTelemetry sampling threshold.
const THRESHOLD_BITS: u32 = 56;

/// A decision to keep a trace: the deciding policy and the probability it kept the trace with.
///
/// The attributes and tracestate it adds to spans are built once per decision, not per span.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptDecision {
    /// Name of the deciding policy (the configured `name`).
    pub policy: Arc<str>,
    /// Probability with which traces like this one are kept, in `(0, 1]`.
    pub probability: f64,
    attributes: [KeyValue; 2],
    ot_value: Option<String>,
    trace_state: Option<TraceState>,
}

impl KeptDecision {
    /// A decision by `policy` with the given keep probability (clamped into `(0, 1]`).
    #[must_use]
    pub fn new(policy: Arc<str>, probability: f64) -> Self {
        let probability = if probability.is_finite() && probability > 0.0 {
            probability.min(1.0)
        } else {
            f64::MIN_POSITIVE
        };
        let attributes = [
            KeyValue::new(POLICY_ATTRIBUTE, Value::String(policy.clone().into())),
            KeyValue::new(ADJUSTED_COUNT_ATTRIBUTE, 1.0 / probability),
        ];
        let ot_value = (probability < 1.0).then(|| format!("th:{}", threshold_hex(probability)));
        let trace_state = ot_value
            .as_ref()
            .and_then(|ot| TraceState::from_key_value([("ot", ot.as_str())]).ok());
        Self {
            policy,
            probability,
            attributes,
            ot_value,
            trace_state,
        }
    }

    /// The attributes a kept span gets: policy name and adjusted count.
    #[must_use]
    pub fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }

    /// The tracestate a kept span should carry, given its current one: `None` when unchanged
    /// (probability 1, or a tracestate that cannot take the `ot` member).
    #[must_use]
    pub fn trace_state_for(&self, current: &TraceState) -> Option<TraceState> {
        let ot = self.ot_value.as_ref()?;
        if current == &TraceState::NONE {
            return self.trace_state.clone();
        }
        let th = ot.trim_start_matches("th:");
        current
            .insert("ot", merge_ot_value(current.get("ot"), th))
            .ok()
    }

    /// How many traces this kept trace stands for: `1 / probability`.
    #[must_use]
    pub fn adjusted_count(&self) -> f64 {
        1.0 / self.probability
    }

    /// The OpenTelemetry tracestate rejection threshold (`ot=th:<hex>`) for this probability:
    /// `(1 - p) * 2^56` as up to 14 hex digits with trailing zeros removed (`"0"` for p = 1).
    #[must_use]
    pub fn threshold_hex(&self) -> String {
        threshold_hex(self.probability)
    }
}

/// The rejection threshold `(1 - p) * 2^56`, computed as `2^56 - round(p * 2^56)` so that
/// `p * 2^56` (below 2^56, mostly below 2^53) is where the rounding happens.
pub(crate) fn rejection_threshold(p: f64) -> u64 {
    let max = 1u64 << THRESHOLD_BITS;
    let accepted = (p.clamp(0.0, 1.0) * max as f64).round() as u64;
    max.saturating_sub(accepted.max(1)).min(max - 1)
}

/// The `th` value for keep probability `p` (see [`KeptDecision::threshold_hex`]).
pub(crate) fn threshold_hex(p: f64) -> String {
    let rejected = if p >= 1.0 { 0 } else { rejection_threshold(p) };
    if rejected == 0 {
        return "0".to_owned();
    }
    let hex = format!("{rejected:014x}");
    hex.trim_end_matches('0').to_owned()
}

/// Replaces (or adds) the `th` sub-key in an `ot` tracestate value, keeping the other sub-keys.
pub(crate) fn merge_ot_value(existing: Option<&str>, th: &str) -> String {
    let mut parts: Vec<String> = existing
        .unwrap_or("")
        .split(';')
        .filter(|p| !p.is_empty() && !p.starts_with("th:"))
        .map(str::to_owned)
        .collect();
    parts.insert(0, format!("th:{th}"));
    parts.join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_should_follow_the_opentelemetry_encoding() {
        assert_eq!(threshold_hex(1.0), "0");
        assert_eq!(threshold_hex(0.5), "8");
        assert_eq!(threshold_hex(0.25), "c");
        assert_eq!(threshold_hex(0.1), "e6666666666666");
        assert_eq!(threshold_hex(0.01), "fd70a3d70a3d71");
    }

    #[test]
    fn adjusted_count_should_be_the_inverse_probability() {
        let d = KeptDecision::new("p".into(), 0.1);
        assert!((d.adjusted_count() - 10.0).abs() < 1e-9);
        let d = KeptDecision::new("p".into(), f64::NAN);
        assert!(d.probability > 0.0);
    }

    #[test]
    fn ot_value_merge_should_keep_other_subkeys() {
        assert_eq!(merge_ot_value(None, "8"), "th:8");
        assert_eq!(merge_ot_value(Some("rv:abc;th:c"), "8"), "th:8;rv:abc");
    }
}
