//! Sampler configuration: the Collector's `tail_sampling` settings plus traceq's own bounds.
//!
//! Read from YAML with [`SamplerConfig::from_yaml`] (a bare `tail_sampling` body, or a document
//! with `tail_sampling:` or `processors: {tail_sampling: ...}` at the top), or built in code from
//! [`SamplerConfig::default`] and the `with_*` setters. Where traceq's defaults differ from the
//! Collector's, it is on purpose (see each constant): the buffer is bounded by bytes and sized for
//! a 24 GiB machine, decision caches are on, and a trace is decided soon after its root ends.

use std::time::Duration;

use serde::Deserialize;

use crate::duration::{parse_duration, DurationError};
use crate::error::ConfigError;
use crate::policy::{PolicyConfig, PolicySet};

/// Default upper bound on the wait for a trace's spans, from its first span (as the Collector).
pub const DEFAULT_DECISION_WAIT: Duration = Duration::from_secs(30);
/// Default quiet period after the local root span ended before the trace is decided.
pub const DEFAULT_DECISION_WAIT_AFTER_ROOT: Duration = Duration::from_secs(2);
/// Default bound on buffered traces (the Collector's 50,000 drops traces too early, contrib#29024).
pub const DEFAULT_NUM_TRACES: usize = 1_000_000;
/// Default bound on buffered span bytes: 4 GiB, a sixth of a 24 GiB machine.
pub const DEFAULT_MAX_BUFFER_BYTES: usize = 4 << 30;
/// Default per-trace span cap; a trace reaching it is decided at once (contrib#45200).
pub const DEFAULT_MAX_SPANS_PER_TRACE: usize = 10_000;
/// Default number of kept trace ids remembered for late spans.
pub const DEFAULT_SAMPLED_CACHE_SIZE: usize = 100_000;
/// Default number of dropped trace ids remembered for late spans.
pub const DEFAULT_NON_SAMPLED_CACHE_SIZE: usize = 1_000_000;
/// Default attribute carrying the job id that links the segments of a long job.
pub const DEFAULT_JOB_ID_KEY: &str = "traceq.job.id";
/// Default number of job ids remembered as "kept for an error".
pub const DEFAULT_JOB_CACHE_SIZE: usize = 100_000;
/// Default number of buffer shards (locks); rounded down to a power of two.
pub const DEFAULT_NUM_SHARDS: usize = 64;
/// Share of traces the default configuration keeps besides error traces, in percent.
pub const DEFAULT_SAMPLING_PERCENTAGE: f64 = 10.0;

/// Sizes of the decision caches (`decision_cache` in the Collector's syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionCacheConfig {
    /// Kept trace ids remembered; 0 disables the cache.
    #[serde(default = "default_sampled", deserialize_with = "lenient_usize")]
    pub sampled_cache_size: usize,
    /// Dropped trace ids remembered; 0 disables the cache.
    #[serde(default = "default_non_sampled", deserialize_with = "lenient_usize")]
    pub non_sampled_cache_size: usize,
}

/// An integer as YAML 1.1 (and so the Collector) reads it: `100000` or `100_000`.
#[derive(Deserialize)]
#[serde(untagged)]
enum LenientUsize {
    Number(usize),
    Text(String),
}

fn lenient_usize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match LenientUsize::deserialize(d)? {
        LenientUsize::Number(n) => Ok(n),
        LenientUsize::Text(t) => t
            .replace('_', "")
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("`{t}` is not a non-negative integer"))),
    }
}

fn lenient_opt_usize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    lenient_usize(d).map(Some)
}

fn default_sampled() -> usize {
    DEFAULT_SAMPLED_CACHE_SIZE
}
fn default_non_sampled() -> usize {
    DEFAULT_NON_SAMPLED_CACHE_SIZE
}

impl Default for DecisionCacheConfig {
    fn default() -> Self {
        Self {
            sampled_cache_size: DEFAULT_SAMPLED_CACHE_SIZE,
            non_sampled_cache_size: DEFAULT_NON_SAMPLED_CACHE_SIZE,
        }
    }
}

/// Everything the sampler core needs to know.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use traceq_sampler::SamplerConfig;
///
/// let cfg = SamplerConfig::from_yaml(
///     "decision_wait: 10s\npolicies: [{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]",
/// )?;
/// assert_eq!(cfg.decision_wait, Duration::from_secs(10));
/// let small = SamplerConfig::default().with_num_traces(1000).with_max_buffer_bytes(1 << 20);
/// assert_eq!(small.policies.len(), 2); // errors + 10% of the rest
/// # Ok::<(), traceq_sampler::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Upper bound on waiting: a trace is decided this long after its first span at the latest.
    pub decision_wait: Duration,
    /// A trace whose local root span has ended is decided after this long without a new span.
    pub decision_wait_after_root: Duration,
    /// Most traces buffered at once; beyond it the oldest are decided early.
    pub num_traces: usize,
    /// Most span bytes buffered at once; beyond it the oldest traces are decided early.
    pub max_buffer_bytes: usize,
    /// A trace reaching this many spans is decided at once.
    pub max_spans_per_trace: usize,
    /// Expected new traces per second; only used to pre-size the buffer.
    pub expected_new_traces_per_sec: usize,
    /// Decision cache sizes.
    pub decision_cache: DecisionCacheConfig,
    /// Stop evaluating sampling policies at the first that samples (drop policies still apply).
    pub sample_on_first_match: bool,
    /// On shutdown, drop pending traces instead of deciding them.
    pub drop_pending_traces_on_shutdown: bool,
    /// Attribute holding the job id linking segments of one job; empty disables job linkage.
    pub job_id_key: String,
    /// Job ids remembered as kept for an error.
    pub job_cache_size: usize,
    /// Buffer shards (independent locks).
    pub num_shards: usize,
    /// The policies, evaluated in this order.
    pub policies: Vec<PolicyConfig>,
}

impl Default for SamplerConfig {
    /// Keeps every trace with an error span and [`DEFAULT_SAMPLING_PERCENTAGE`] of the rest.
    fn default() -> Self {
        Self {
            decision_wait: DEFAULT_DECISION_WAIT,
            decision_wait_after_root: DEFAULT_DECISION_WAIT_AFTER_ROOT,
            num_traces: DEFAULT_NUM_TRACES,
            max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES,
            max_spans_per_trace: DEFAULT_MAX_SPANS_PER_TRACE,
            expected_new_traces_per_sec: 0,
            decision_cache: DecisionCacheConfig::default(),
            sample_on_first_match: false,
            drop_pending_traces_on_shutdown: false,
            job_id_key: DEFAULT_JOB_ID_KEY.to_owned(),
            job_cache_size: DEFAULT_JOB_CACHE_SIZE,
            num_shards: DEFAULT_NUM_SHARDS,
            policies: vec![
                PolicyConfig::status_code("errors", &["ERROR"]),
                PolicyConfig::probabilistic("probabilistic-10", DEFAULT_SAMPLING_PERCENTAGE),
            ],
        }
    }
}

/// The YAML shape: the Collector's keys plus traceq's, all optional but `policies`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    decision_wait: Option<String>,
    #[serde(default)]
    decision_wait_after_root: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_usize")]
    num_traces: Option<usize>,
    #[serde(default, deserialize_with = "lenient_opt_usize")]
    max_buffer_bytes: Option<usize>,
    #[serde(default, deserialize_with = "lenient_opt_usize")]
    max_spans_per_trace: Option<usize>,
    #[serde(default, deserialize_with = "lenient_opt_usize")]
    expected_new_traces_per_sec: Option<usize>,
    #[serde(default)]
    decision_cache: Option<DecisionCacheConfig>,
    #[serde(default)]
    sample_on_first_match: Option<bool>,
    #[serde(default)]
    drop_pending_traces_on_shutdown: Option<bool>,
    #[serde(default)]
    job_id_key: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_usize")]
    job_cache_size: Option<usize>,
    #[serde(default, deserialize_with = "lenient_opt_usize")]
    num_shards: Option<usize>,
    policies: Vec<serde_yaml::Value>,
}

/// Deserializes a YAML value so that errors name the offending field's path (`latency.threshold_ms:
/// invalid type ...`): `serde_yaml::from_value` reports no path, parsing text does. The position
/// it adds refers to the re-serialized text, not the user's file, so it is cut off.
fn from_value_with_path<T: serde::de::DeserializeOwned>(
    value: &serde_yaml::Value,
) -> Result<T, serde_yaml::Error> {
    let text = serde_yaml::to_string(value)?;
    serde_yaml::from_str(&text)
}

/// The message of a YAML error without its position in re-serialized text.
pub(crate) fn yaml_message(e: &serde_yaml::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

fn duration_error(field: &'static str, e: DurationError) -> ConfigError {
    ConfigError::Setting {
        field,
        reason: e.to_string(),
    }
}

impl SamplerConfig {
    /// Reads the Collector's `tail_sampling` YAML (see the module docs for accepted shapes) and
    /// validates it, policies included.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field (and policy) at fault.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let yaml_err = |e: serde_yaml::Error| ConfigError::Yaml {
            message: e.to_string(),
        };
        let mut doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(yaml_err)?;
        if let Some(p) = doc.get("processors").and_then(|p| p.get("tail_sampling")) {
            doc = p.clone();
        } else if let Some(t) = doc.get("tail_sampling") {
            doc = t.clone();
        }
        let raw: RawConfig = from_value_with_path(&doc).map_err(|e| ConfigError::Yaml {
            message: yaml_message(&e),
        })?;
        let mut policies = Vec::with_capacity(raw.policies.len());
        for (i, value) in raw.policies.into_iter().enumerate() {
            let name = value
                .get("name")
                .and_then(serde_yaml::Value::as_str)
                .map_or_else(|| format!("#{}", i + 1), str::to_owned);
            let policy: PolicyConfig =
                from_value_with_path(&value).map_err(|e| ConfigError::PolicyYaml {
                    policy: name,
                    message: yaml_message(&e),
                })?;
            policies.push(policy);
        }
        let d = Self::default();
        let cfg = Self {
            decision_wait: match raw.decision_wait {
                Some(t) => parse_duration(&t).map_err(|e| duration_error("decision_wait", e))?,
                None => d.decision_wait,
            },
            decision_wait_after_root: match raw.decision_wait_after_root {
                Some(t) => {
                    parse_duration(&t).map_err(|e| duration_error("decision_wait_after_root", e))?
                }
                None => d.decision_wait_after_root,
            },
            num_traces: raw.num_traces.unwrap_or(d.num_traces),
            max_buffer_bytes: raw.max_buffer_bytes.unwrap_or(d.max_buffer_bytes),
            max_spans_per_trace: raw.max_spans_per_trace.unwrap_or(d.max_spans_per_trace),
            expected_new_traces_per_sec: raw.expected_new_traces_per_sec.unwrap_or(0),
            decision_cache: raw.decision_cache.unwrap_or(d.decision_cache),
            sample_on_first_match: raw.sample_on_first_match.unwrap_or(false),
            drop_pending_traces_on_shutdown: raw.drop_pending_traces_on_shutdown.unwrap_or(false),
            job_id_key: raw.job_id_key.unwrap_or(d.job_id_key),
            job_cache_size: raw.job_cache_size.unwrap_or(d.job_cache_size),
            num_shards: raw.num_shards.unwrap_or(d.num_shards),
            policies,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every bound and compiles the policies.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field (and policy) at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |field: &'static str, v: usize| {
            if v == 0 {
                Err(ConfigError::Setting {
                    field,
                    reason: "must be positive".to_owned(),
                })
            } else {
                Ok(())
            }
        };
        positive("num_traces", self.num_traces)?;
        positive("max_buffer_bytes", self.max_buffer_bytes)?;
        positive("max_spans_per_trace", self.max_spans_per_trace)?;
        positive("num_shards", self.num_shards)?;
        if self.decision_wait.is_zero() {
            return Err(ConfigError::Setting {
                field: "decision_wait",
                reason: "must be positive".to_owned(),
            });
        }
        self.compile_policies().map(|_| ())
    }

    pub(crate) fn compile_policies(&self) -> Result<PolicySet, ConfigError> {
        PolicySet::compile(&self.policies, self.sample_on_first_match)
    }

    /// Sets [`Self::decision_wait`].
    #[must_use]
    pub fn with_decision_wait(mut self, d: Duration) -> Self {
        self.decision_wait = d;
        self
    }

    /// Sets [`Self::decision_wait_after_root`].
    #[must_use]
    pub fn with_decision_wait_after_root(mut self, d: Duration) -> Self {
        self.decision_wait_after_root = d;
        self
    }

    /// Sets [`Self::num_traces`].
    #[must_use]
    pub fn with_num_traces(mut self, n: usize) -> Self {
        self.num_traces = n;
        self
    }

    /// Sets [`Self::max_buffer_bytes`].
    #[must_use]
    pub fn with_max_buffer_bytes(mut self, n: usize) -> Self {
        self.max_buffer_bytes = n;
        self
    }

    /// Sets [`Self::max_spans_per_trace`].
    #[must_use]
    pub fn with_max_spans_per_trace(mut self, n: usize) -> Self {
        self.max_spans_per_trace = n;
        self
    }

    /// Sets [`Self::decision_cache`].
    #[must_use]
    pub fn with_decision_cache(mut self, sampled: usize, non_sampled: usize) -> Self {
        self.decision_cache = DecisionCacheConfig {
            sampled_cache_size: sampled,
            non_sampled_cache_size: non_sampled,
        };
        self
    }

    /// Sets [`Self::job_id_key`].
    #[must_use]
    pub fn with_job_id_key(mut self, key: impl Into<String>) -> Self {
        self.job_id_key = key.into();
        self
    }

    /// Sets [`Self::num_shards`].
    #[must_use]
    pub fn with_num_shards(mut self, n: usize) -> Self {
        self.num_shards = n;
        self
    }

    /// Replaces [`Self::policies`].
    #[must_use]
    pub fn with_policies(mut self, policies: Vec<PolicyConfig>) -> Self {
        self.policies = policies;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_should_parse_like_go() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("10s"), Duration::from_secs(10));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("0"), Duration::ZERO);
        for bad in ["", "10", "s", "10 parsecs", "-1s", "1e999h"] {
            let err = SamplerConfig::from_yaml(&format!(
                "decision_wait: {bad:?}\npolicies: [{{name: a, type: always_sample}}]"
            ))
            .unwrap_err();
            assert!(
                err.to_string().starts_with("field `decision_wait`"),
                "{bad}"
            );
        }
    }

    #[test]
    fn default_config_should_keep_errors_and_ten_percent() {
        let cfg = SamplerConfig::default();
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.policies[0].name, "errors");
        assert_eq!(
            cfg.policies[1]
                .probabilistic
                .as_ref()
                .unwrap()
                .sampling_percentage,
            10.0
        );
    }

    #[test]
    fn yaml_errors_should_name_the_policy_and_the_field() {
        let err = SamplerConfig::from_yaml(
            "policies: [{name: slow, type: latency, latency: {threshold: 5}}]",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("policy `slow`: "), "{msg}");
        assert!(msg.contains("unknown field `threshold`"), "{msg}");

        // A mistyped value names its path, without a position in re-serialized text.
        let err = SamplerConfig::from_yaml(
            "policies: [{name: slow, type: latency, latency: {threshold_ms: -5}}]",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("latency.threshold_ms"), "{msg}");
        assert!(!msg.contains(" at line "), "{msg}");

        let err = SamplerConfig::from_yaml(
            "decision_wait: soon\npolicies: [{name: a, type: always_sample}]",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("field `decision_wait`"));

        let err = SamplerConfig::from_yaml("num_traces: lots\npolicies: []").unwrap_err();
        assert!(
            err.to_string()
                .contains("`lots` is not a non-negative integer"),
            "{err}"
        );
        let cfg = SamplerConfig::from_yaml(
            "num_traces: 1_000\npolicies: [{name: a, type: always_sample}]",
        );
        assert_eq!(cfg.unwrap().num_traces, 1000);

        let err = SamplerConfig::from_yaml("num_trace: 5\npolicies: []").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `num_trace`"),
            "{err}"
        );

        let err = SamplerConfig::from_yaml("policies: [{name: x, type: sometimes}]").unwrap_err();
        assert!(err.to_string().contains("policy `x`"), "{err}");

        assert!(matches!(
            SamplerConfig::from_yaml("policies: []"),
            Err(ConfigError::NoPolicies)
        ));
        assert!(SamplerConfig::from_yaml(": : :").is_err());
    }

    #[test]
    fn zero_bounds_should_be_rejected() {
        let err = SamplerConfig::default()
            .with_num_traces(0)
            .validate()
            .unwrap_err();
        assert_eq!(err.to_string(), "field `num_traces`: must be positive");
    }
}
