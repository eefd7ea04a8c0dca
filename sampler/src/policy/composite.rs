//! `composite`: sub-policies in a fixed order, each allowed a share of a spans-per-second budget.
//!
//! A trace is offered to the sub-policies in `policy_order`; the first that samples it and
//! still has room in its share (and the composite in its total) keeps it, and its spans are
//! counted against both for the current second. Shares are `rate_allocation` percentages of
//! `max_total_spans_per_second`; a sub-policy without one (or with `percent: 0`) gets an equal
//! share, `max_total / number of sub-policies`, as the Collector gives it.
//!
//! Where this differs from the Collector, on purpose:
//! - `policy_order` is the order (the Collector evaluates in list order and ignores it,
//!   contrib#36955); sub-policies it leaves out come after, in list order.
//! - A sub-policy that samples a trace but has used its share passes the trace on to the next
//!   sub-policy instead of refusing it (contrib#36959), so a last `always_sample` really fills
//!   the remaining budget, as the Collector's README describes.
//! - `max_total_spans_per_second` bounds the spans of all sub-policies together (the Collector
//!   compares each sub-policy's own count with it, which lets allocations over 100% overshoot).
//!
//! A kept trace has adjusted count 1: a rate is not a probability (as `rate_limiting`).

use parking_lot::Mutex;
use serde::Deserialize;

use super::config::PolicyConfig;
use crate::error::ConfigError;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// `composite: {max_total_spans_per_second, policy_order, composite_sub_policy, rate_allocation}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompositeConfig {
    /// The budget of all sub-policies together, in spans per second.
    pub max_total_spans_per_second: u64,
    /// Names of the sub-policies in evaluation order; any left out follow in list order.
    #[serde(default)]
    pub policy_order: Vec<String>,
    /// The sub-policies (any type but `drop` and `composite`).
    pub composite_sub_policy: Vec<PolicyConfig>,
    /// Shares of the budget, in percent, by sub-policy name.
    #[serde(default)]
    pub rate_allocation: Vec<RateAllocationConfig>,
}

/// One `rate_allocation` entry: `{policy: name, percent: 50}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateAllocationConfig {
    /// The sub-policy's name.
    pub policy: String,
    /// Its share of `max_total_spans_per_second`, in percent (0 means an equal share).
    pub percent: u64,
}

/// The budgets of one composite policy and what was spent in the current second.
#[derive(Debug)]
pub(crate) struct CompositeBudget {
    total: u64,
    /// Each sub-policy's share, in list order.
    shares: Vec<u64>,
    /// Evaluation order: indices into the sub-policy list.
    pub(crate) order: Vec<usize>,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    second: u64,
    total: u64,
    used: Vec<u64>,
}

impl CompositeBudget {
    /// Checks the names and shares of `cfg` (whose sub-policies are named `names`, in list
    /// order).
    pub(crate) fn new(
        policy: &str,
        cfg: &CompositeConfig,
        names: &[&str],
    ) -> Result<Self, ConfigError> {
        let total = cfg.max_total_spans_per_second;
        if names.is_empty() {
            return Err(ConfigError::field(
                policy,
                "composite_sub_policy",
                "must not be empty",
            ));
        }
        if total == 0 {
            return Err(ConfigError::field(
                policy,
                "max_total_spans_per_second",
                "must be positive",
            ));
        }
        let find = |field: &'static str, name: &str| {
            names.iter().position(|n| *n == name).ok_or_else(|| {
                ConfigError::field(
                    policy,
                    field,
                    format!("names `{name}`, which is not one of the composite_sub_policy names"),
                )
            })
        };
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(ConfigError::field(
                    policy,
                    "composite_sub_policy",
                    format!("has two sub-policies named `{name}`"),
                ));
            }
        }
        let mut order = Vec::with_capacity(names.len());
        for name in &cfg.policy_order {
            let i = find("policy_order", name)?;
            if order.contains(&i) {
                return Err(ConfigError::field(
                    policy,
                    "policy_order",
                    format!("names `{name}` twice"),
                ));
            }
            order.push(i);
        }
        order.extend((0..names.len()).filter(|i| !cfg.policy_order.iter().any(|n| n == names[*i])));
        let equal = total / names.len() as u64;
        let mut shares = vec![equal; names.len()];
        let mut allocated = vec![false; names.len()];
        for a in &cfg.rate_allocation {
            let i = find("rate_allocation", &a.policy)?;
            if allocated[i] {
                return Err(ConfigError::field(
                    policy,
                    "rate_allocation",
                    format!("allocates to `{}` twice", a.policy),
                ));
            }
            allocated[i] = true;
            if a.percent > 100 {
                return Err(ConfigError::field(
                    policy,
                    "rate_allocation",
                    format!("gives `{}` {}%, more than 100%", a.policy, a.percent),
                ));
            }
            if a.percent > 0 {
                // As the Collector computes it: a fraction of the total, truncated.
                shares[i] = (a.percent as f64 / 100.0 * total as f64) as u64;
            }
        }
        Ok(Self {
            total,
            window: Mutex::new(Window {
                second: u64::MAX,
                total: 0,
                used: vec![0; names.len()],
            }),
            shares,
            order,
        })
    }

    /// Counts `spans` against sub-policy `sub` for the second of `now_nanos` if they fit in its
    /// share and in the total; false (nothing counted) when they do not.
    pub(crate) fn admit(&self, sub: usize, spans: usize, now_nanos: u64) -> bool {
        let second = now_nanos / NANOS_PER_SEC;
        let mut w = self.window.lock();
        if w.second != second {
            w.second = second;
            w.total = 0;
            w.used.fill(0);
        }
        let spans = spans as u64;
        let used = w.used[sub].saturating_add(spans);
        let total = w.total.saturating_add(spans);
        if used <= self.shares[sub] && total <= self.total {
            w.used[sub] = used;
            w.total = total;
            true
        } else {
            false
        }
    }

    #[cfg(test)]
    pub(crate) fn shares(&self) -> &[u64] {
        &self.shares
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(total: u64, order: &[&str], alloc: &[(&str, u64)]) -> CompositeConfig {
        CompositeConfig {
            max_total_spans_per_second: total,
            policy_order: order.iter().map(|s| (*s).to_owned()).collect(),
            composite_sub_policy: Vec::new(),
            rate_allocation: alloc
                .iter()
                .map(|(p, percent)| RateAllocationConfig {
                    policy: (*p).to_owned(),
                    percent: *percent,
                })
                .collect(),
        }
    }

    const NAMES: [&str; 3] = ["a", "b", "c"];

    #[test]
    fn shares_should_be_percentages_with_equal_shares_for_the_rest() {
        let b =
            CompositeBudget::new("x", &cfg(1000, &[], &[("a", 50), ("b", 25)]), &NAMES).unwrap();
        assert_eq!(b.shares(), &[500, 250, 333]);
        assert_eq!(b.order, vec![0, 1, 2]);
        let b = CompositeBudget::new("x", &cfg(100, &["c", "a"], &[("b", 0)]), &NAMES).unwrap();
        assert_eq!(b.shares(), &[33, 33, 33]);
        assert_eq!(
            b.order,
            vec![2, 0, 1],
            "left-out sub-policies follow in list order"
        );
    }

    #[test]
    fn admit_should_hold_each_share_and_the_total_per_second() {
        let b = CompositeBudget::new("x", &cfg(10, &[], &[("a", 60), ("b", 60)]), &NAMES).unwrap();
        assert!(b.admit(0, 6, 0));
        assert!(!b.admit(0, 1, 0), "a's share is spent");
        assert!(b.admit(1, 4, 0));
        assert!(!b.admit(1, 1, 0), "the total is spent, though b has room");
        assert!(b.admit(0, 6, NANOS_PER_SEC), "a new second, a new budget");
    }

    #[test]
    fn bad_names_and_shares_should_be_refused_by_name() {
        let err = |c: CompositeConfig| {
            CompositeBudget::new("comp", &c, &NAMES)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(cfg(0, &[], &[])),
            "policy `comp`: field `max_total_spans_per_second` must be positive"
        );
        assert_eq!(
            err(cfg(10, &["a", "zz"], &[])),
            "policy `comp`: field `policy_order` names `zz`, which is not one of the composite_sub_policy names"
        );
        assert_eq!(
            err(cfg(10, &["a", "a"], &[])),
            "policy `comp`: field `policy_order` names `a` twice"
        );
        assert_eq!(
            err(cfg(10, &[], &[("q", 5)])),
            "policy `comp`: field `rate_allocation` names `q`, which is not one of the composite_sub_policy names"
        );
        assert_eq!(
            err(cfg(10, &[], &[("a", 101)])),
            "policy `comp`: field `rate_allocation` gives `a` 101%, more than 100%"
        );
        assert_eq!(
            err(cfg(10, &[], &[("a", 5), ("a", 6)])),
            "policy `comp`: field `rate_allocation` allocates to `a` twice"
        );
        let dup = CompositeBudget::new("comp", &cfg(10, &[], &[]), &["a", "a"]).unwrap_err();
        assert_eq!(
            dup.to_string(),
            "policy `comp`: field `composite_sub_policy` has two sub-policies named `a`"
        );
    }
}
