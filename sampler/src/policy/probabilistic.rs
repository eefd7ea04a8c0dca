//! `probabilistic`: keep a fixed share of traces, decided by the trace id alone.
//!
//! Why hash the trace id instead of rolling a die: every instance (and every replay of the same
//! trace) reaches the same decision, so traces split across collectors, or re-decided after a
//! restart, are kept or dropped whole. The hash is 64-bit FNV-1a over the salt's bytes followed by
//! the 16 trace-id bytes, finished with the murmur3 64-bit mixer (FNV alone barely moves its top
//! bits on the last bytes, and sequential ids would then be decided alike); its top 56 bits are compared with the OpenTelemetry rejection threshold
//! `(1 - p) * 2^56`, the same threshold the kept spans carry in tracestate as `ot=th:<hex>`.

use serde::Deserialize;

use crate::error::ConfigError;
use opentelemetry::trace::TraceId;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// `probabilistic: {sampling_percentage: 10, hash_salt: my-salt}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbabilisticConfig {
    /// Share of traces to keep, in percent, in `(0, 100]`.
    pub sampling_percentage: f64,
    /// Salt mixed into the hash; instances that must agree use the same salt.
    #[serde(default)]
    pub hash_salt: Option<String>,
}

#[derive(Debug)]
pub(crate) struct ProbabilisticPolicy {
    salt_state: u64,
    probability: f64,
    threshold: u64,
}

fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

/// The murmur3 `fmix64` finaliser: every input bit affects every output bit.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl ProbabilisticPolicy {
    pub(crate) fn new(policy: &str, cfg: &ProbabilisticConfig) -> Result<Self, ConfigError> {
        let pct = cfg.sampling_percentage;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(ConfigError::field(
                policy,
                "sampling_percentage",
                format!("must be in (0, 100], got {pct}"),
            ));
        }
        Ok(Self::from_percentage(
            pct,
            cfg.hash_salt.as_deref().unwrap_or(""),
        ))
    }

    pub(crate) fn from_percentage(pct: f64, salt: &str) -> Self {
        let probability = (pct / 100.0).clamp(f64::MIN_POSITIVE, 1.0);
        let threshold = crate::decision::rejection_threshold(probability);
        Self {
            salt_state: fnv1a(FNV_OFFSET, salt.as_bytes()),
            probability,
            threshold,
        }
    }

    pub(crate) fn probability(&self) -> f64 {
        self.probability
    }

    /// True when the trace is kept: a pure function of the trace id and the salt.
    pub(crate) fn keeps(&self, trace_id: TraceId) -> bool {
        let randomness = mix(fnv1a(self.salt_state, &trace_id.to_bytes())) >> 8;
        randomness >= self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(p: &ProbabilisticPolicy, n: u128) -> f64 {
        let kept = (0..n)
            .filter(|i| p.keeps(TraceId::from(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C))))
            .count();
        kept as f64 / n as f64
    }

    #[test]
    fn probabilistic_should_keep_about_the_configured_share() {
        let p = ProbabilisticPolicy::from_percentage(10.0, "");
        let s = share(&p, 20_000);
        assert!((0.08..0.12).contains(&s), "share {s}");
        assert!((share(&ProbabilisticPolicy::from_percentage(100.0, ""), 1000) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn probabilistic_should_depend_on_the_salt() {
        let a = ProbabilisticPolicy::from_percentage(50.0, "a");
        let b = ProbabilisticPolicy::from_percentage(50.0, "b");
        let differ = (1..500u128)
            .filter(|i| a.keeps(TraceId::from(*i)) != b.keeps(TraceId::from(*i)))
            .count();
        assert!(differ > 100);
    }

    #[test]
    fn probabilistic_should_reject_out_of_range_percentages() {
        for pct in [0.0, -1.0, 100.5, f64::NAN] {
            let cfg = ProbabilisticConfig {
                sampling_percentage: pct,
                hash_salt: None,
            };
            let err = ProbabilisticPolicy::new("p", &cfg).unwrap_err();
            assert!(err.to_string().contains("field `sampling_percentage`"));
        }
    }
}
