//! Sampler configuration: the Collector's `tail_sampling` settings plus traceq's own bounds.
//!
//! Read from YAML with [`SamplerConfig::from_yaml`] (a bare `tail_sampling` body, or a document
//! with `tail_sampling:` or `processors: {tail_sampling: ...}` at the top), or built in code from
//! [`SamplerConfig::default`] and the `with_*` setters. Where traceq's defaults differ from the
//! Collector's, it is on purpose (see each constant): the buffer is bounded by bytes and sized for
//! a 24 GiB machine, decision caches are on, and a trace is decided soon after its root ends.
//!
//! [`SamplerConfig`] is read by serde as it is: a key that is absent takes its value from
//! [`SamplerConfig::default`] (so each default is written once, as a constant below), and an
//! unknown key is an error. Integers may be written with `_` separators, as YAML 1.1 (and so the
//! Collector) reads them; durations are Go-style strings (see
//! [`parse_duration`](crate::parse_duration)). A key given with no value (`decision_wait: ~`, or
//! nothing after the colon) takes its default too, except for the integers, which refuse it.
//!
//! Every error names where it happened: a policy by its name (``policy `slow`: latency: unknown
//! field ...``), a setting by its path (``field `decision_cache.sampled_cache_size`: ...``).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

use crate::duration::YamlDuration;
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
/// Default `maximum_trace_size_bytes`: 0, no per-trace byte bound beyond the buffer's (as in the
/// Collector).
pub const DEFAULT_MAXIMUM_TRACE_SIZE_BYTES: usize = 0;

/// Sizes of the decision caches (`decision_cache` in the Collector's syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionCacheConfig {
    /// Kept trace ids remembered; 0 disables the cache.
    #[serde(deserialize_with = "lenient_usize")]
    pub sampled_cache_size: usize,
    /// Dropped trace ids remembered; 0 disables the cache.
    #[serde(deserialize_with = "lenient_usize")]
    pub non_sampled_cache_size: usize,
}

/// An integer as YAML 1.1 (and so the Collector) reads it: `100000` or `100_000`, also quoted.
fn lenient_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    struct LenientUsize;

    impl Visitor<'_> for LenientUsize {
        type Value = usize;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative integer")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
            v.replace('_', "")
                .parse()
                .map_err(|_| E::custom(format!("`{v}` is not a non-negative integer")))
        }
    }

    d.deserialize_any(LenientUsize)
}

// A key given with no value takes the field's default, as an absent key does (Collector files
// are often templated, leaving some values empty). One function per field whose default is not
// its type's `Default`.

fn null_is_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn decision_wait<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ok(Option::<YamlDuration>::deserialize(d)?.map_or(DEFAULT_DECISION_WAIT, |t| t.0))
}

fn decision_wait_after_root<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ok(Option::<YamlDuration>::deserialize(d)?.map_or(DEFAULT_DECISION_WAIT_AFTER_ROOT, |t| t.0))
}

fn job_id_key<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_else(|| DEFAULT_JOB_ID_KEY.to_owned()))
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
///
/// Deserializing it directly (as a part of a larger configuration) fills every absent field from
/// [`SamplerConfig::default`], `policies` included, and checks nothing else: call
/// [`SamplerConfig::validate`] afterwards, or read it with [`SamplerConfig::from_yaml`], which
/// also requires `policies` and names the policy at fault in its errors.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    /// Upper bound on waiting: a trace is decided this long after its first span at the latest.
    #[serde(deserialize_with = "decision_wait")]
    pub decision_wait: Duration,
    /// A trace whose local root span has ended is decided after this long without a new span
    /// (0: as soon as the root ends; [`Duration::MAX`]: never for that reason, only
    /// `decision_wait` applies).
    ///
    /// [`SamplerConfig::from_yaml`] also reads it under the Collector's name,
    /// `decision_wait_after_root_received`, where `0s` means off, as in the Collector (read
    /// as [`Duration::MAX`]). The Collector waits a fixed time after the root arrives; traceq's
    /// wait starts again with each span that arrives after the root, so a trace's late
    /// children are still decided with it, within `decision_wait`.
    #[serde(deserialize_with = "decision_wait_after_root")]
    pub decision_wait_after_root: Duration,
    /// Most traces buffered at once; beyond it the oldest are decided early.
    #[serde(deserialize_with = "lenient_usize")]
    pub num_traces: usize,
    /// Most span bytes buffered at once; beyond it the oldest traces are decided early.
    #[serde(deserialize_with = "lenient_usize")]
    pub max_buffer_bytes: usize,
    /// A trace reaching this many spans is decided at once.
    #[serde(deserialize_with = "lenient_usize")]
    pub max_spans_per_trace: usize,
    /// A trace whose buffered bytes pass this is decided at once; 0 (the default) turns the
    /// bound off. The Collector drops such a trace before deciding it; traceq decides it with
    /// the spans it has (so an error trace is still kept) and its later spans follow that
    /// decision. Bytes are counted as the buffer accounts them (the encoded span plus the
    /// sampler's bookkeeping), a little above the protobuf size the Collector counts.
    #[serde(deserialize_with = "lenient_usize")]
    pub maximum_trace_size_bytes: usize,
    /// Expected new traces per second; only used to pre-size the buffer.
    #[serde(deserialize_with = "lenient_usize")]
    pub expected_new_traces_per_sec: usize,
    /// Decision cache sizes.
    #[serde(deserialize_with = "null_is_default")]
    pub decision_cache: DecisionCacheConfig,
    /// Stop evaluating sampling policies at the first that samples (drop policies still apply).
    #[serde(deserialize_with = "null_is_default")]
    pub sample_on_first_match: bool,
    /// On shutdown, drop pending traces instead of deciding them.
    #[serde(deserialize_with = "null_is_default")]
    pub drop_pending_traces_on_shutdown: bool,
    /// The Collector's `block_on_overflow`: what a front door does with spans that would take
    /// the buffer past `num_traces` or `max_buffer_bytes`. `true`: make the sender wait (the
    /// collector refuses requests with a retryable error until there is room, which is how an
    /// OTLP sender is made to wait); `false`: take them and decide the oldest traces early
    /// (the Collector evicts them undecided). Unset: the front door's default (the collector
    /// refuses, see its `service.on_buffer_full`). The in-process processor never blocks
    /// `on_end`, so it refuses `true`.
    #[serde(deserialize_with = "null_is_default")]
    pub block_on_overflow: Option<bool>,
    /// Attribute holding the job id linking segments of one job; empty disables job linkage.
    #[serde(deserialize_with = "job_id_key")]
    pub job_id_key: String,
    /// Job ids remembered as kept for an error.
    #[serde(deserialize_with = "lenient_usize")]
    pub job_cache_size: usize,
    /// Buffer shards (independent locks).
    #[serde(deserialize_with = "lenient_usize")]
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
            maximum_trace_size_bytes: DEFAULT_MAXIMUM_TRACE_SIZE_BYTES,
            expected_new_traces_per_sec: 0,
            decision_cache: DecisionCacheConfig::default(),
            sample_on_first_match: false,
            drop_pending_traces_on_shutdown: false,
            block_on_overflow: None,
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

/// Reads the Collector's settings whose names or meaning differ from traceq's, in `doc` (a
/// `tail_sampling` body), before it is deserialized: `decision_wait_after_root_received`
/// becomes `decision_wait_after_root` (returns true when it was given, so that `0s` can mean
/// off, as in the Collector), `sampling_strategy: trace-complete` is what traceq does and is
/// taken out, and settings traceq has no equivalent for are refused, saying why.
fn collector_names(doc: &mut serde_yaml::Value) -> Result<bool, ConfigError> {
    let Some(map) = doc.as_mapping_mut() else {
        return Ok(false);
    };
    let refuse = |field: &'static str, reason: &str| ConfigError::Setting {
        field,
        reason: reason.to_owned(),
    };
    if let Some(strategy) = map.remove("sampling_strategy") {
        match strategy.as_str() {
            // Given no value, it takes its default, as every other setting does.
            _ if strategy.is_null() => {}
            Some("trace-complete") => {}
            Some("span-ingest") => {
                return Err(refuse(
                    "sampling_strategy",
                    "`span-ingest` is not supported: traceq decides each trace once, with its \
                     spans buffered (`trace-complete`)",
                ))
            }
            _ => {
                return Err(refuse(
                    "sampling_strategy",
                    "must be `trace-complete` (traceq's only strategy) or `span-ingest`",
                ))
            }
        }
    }
    if map.contains_key("tail_storage") {
        return Err(refuse(
            "tail_storage",
            "is not supported: pending traces are buffered in memory; to keep them across a \
             crash, name a `file_storage` extension in `storage` (traceq collector)",
        ));
    }
    let Some(wait) = map.remove("decision_wait_after_root_received") else {
        return Ok(false);
    };
    if map.contains_key("decision_wait_after_root") {
        return Err(refuse(
            "decision_wait_after_root_received",
            "is the Collector's name for `decision_wait_after_root`: give only one of them",
        ));
    }
    map.insert("decision_wait_after_root".into(), wait);
    Ok(true)
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
fn yaml_message(e: &serde_yaml::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

/// A serde_yaml error on `doc` (the `tail_sampling` body), sorted by where it happened: in a
/// policy, named by the policy's name (or position) as the compiler's errors are; in a setting,
/// named by its path; or in the document as a whole.
fn yaml_error(doc: &serde_yaml::Value, e: &serde_yaml::Error) -> ConfigError {
    let message = yaml_message(e);
    let Some((path, detail)) = split_path(&message) else {
        return ConfigError::Yaml { message };
    };
    match policy_path(path) {
        Some((index, inner)) => ConfigError::PolicyYaml {
            policy: policy_name(doc, index),
            message: match inner {
                Some(inner) => format!("{inner}: {detail}"),
                None => detail.to_owned(),
            },
        },
        None => ConfigError::SettingYaml {
            field: path.to_owned(),
            message: detail.to_owned(),
        },
    }
}

/// Splits serde_yaml's `path: message` (`policies[0].latency: unknown field ...`) into its two
/// parts. An error at the document's root has no path; a path is field names, dots and `[i]`
/// indices, never spaces, so `invalid type: ...` is not taken for one.
fn split_path(message: &str) -> Option<(&str, &str)> {
    let (path, detail) = message.split_once(": ")?;
    let is_path = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
    is_path.then_some((path, detail))
}

/// `policies[3].latency` is `(3, Some("latency"))`, `policies[3]` is `(3, None)`.
fn policy_path(path: &str) -> Option<(usize, Option<&str>)> {
    let (index, rest) = path.strip_prefix("policies[")?.split_once(']')?;
    let index = index.parse().ok()?;
    if rest.is_empty() {
        Some((index, None))
    } else {
        Some((index, Some(rest.strip_prefix('.')?)))
    }
}

/// The `name` of policy `index` in `doc`, or its position (`#1` for the first) when it has none.
fn policy_name(doc: &serde_yaml::Value, index: usize) -> String {
    doc.get("policies")
        .and_then(|policies| policies.get(index))
        .and_then(|policy| policy.get("name"))
        .and_then(serde_yaml::Value::as_str)
        .map_or_else(|| format!("#{}", index + 1), str::to_owned)
}

impl SamplerConfig {
    /// Reads the Collector's `tail_sampling` YAML (see the module docs for accepted shapes) and
    /// validates it, policies included.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field (and policy) at fault.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let cfg = Self::from_yaml_unvalidated(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// [`Self::from_yaml`] without [`Self::validate`], for a caller that builds a sampler from the
    /// result at once: building validates, so the policies are compiled once.
    pub(crate) fn from_yaml_unvalidated(text: &str) -> Result<Self, ConfigError> {
        let yaml_err = |e: serde_yaml::Error| ConfigError::Yaml {
            message: e.to_string(),
        };
        let mut doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(yaml_err)?;
        if let Some(p) = doc.get("processors").and_then(|p| p.get("tail_sampling")) {
            doc = p.clone();
        } else if let Some(t) = doc.get("tail_sampling") {
            doc = t.clone();
        }
        let root_wait_off = collector_names(&mut doc)?;
        let mut cfg: Self = from_value_with_path(&doc).map_err(|e| yaml_error(&doc, &e))?;
        if root_wait_off && cfg.decision_wait_after_root.is_zero() {
            cfg.decision_wait_after_root = Duration::MAX;
        }
        // Every other setting has a default; the policies are what the file is for. (Serde's
        // own check cannot be had: a field cannot opt out of the struct's `default`.)
        if doc.get("policies").is_none() {
            return Err(ConfigError::Yaml {
                message: "missing field `policies`".to_owned(),
            });
        }
        Ok(cfg)
    }

    /// Checks every bound and compiles the policies, to check them. The compiled policies are not
    /// kept: rate-limiting policies keep state, so each sampler compiles its own when it is built.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field (and policy) at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.compile().map(drop)
    }

    /// Checks every bound and compiles the policies: the one place a configuration is checked,
    /// called by [`Self::validate`] and once by each sampler as it is built.
    ///
    /// The compiled set is not kept on the configuration: rate-limiting policies keep state (the
    /// current second's budget, a token bucket), so each sampler needs a set of its own, while a
    /// configuration is plain data that is cloned and compared.
    pub(crate) fn compile(&self) -> Result<PolicySet, ConfigError> {
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
    use crate::duration::parse_duration;

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
    fn settings_given_no_value_should_take_their_default_but_integers_should_not() {
        let policies = "policies: [{name: a, type: always_sample}]";
        for key in [
            "decision_wait",
            "decision_wait_after_root",
            "decision_cache",
            "sample_on_first_match",
            "drop_pending_traces_on_shutdown",
            "job_id_key",
        ] {
            for empty in ["~", ""] {
                let cfg = SamplerConfig::from_yaml(&format!("{key}: {empty}\n{policies}"));
                let cfg = cfg.unwrap_or_else(|e| panic!("{key}: {empty:?}: {e}"));
                assert_eq!(cfg.policies.len(), 1);
                assert_eq!(
                    cfg.with_policies(Vec::new()),
                    SamplerConfig::default().with_policies(Vec::new()),
                    "{key}"
                );
            }
        }
        let err = SamplerConfig::from_yaml(&format!("num_shards: ~\n{policies}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `num_shards`: invalid type: unit value, expected a non-negative integer"
        );
    }

    #[test]
    fn yaml_errors_should_name_the_path_of_a_nested_setting() {
        let err = SamplerConfig::from_yaml(
            "decision_cache: {sampled_cache_size: lots}\npolicies: [{name: a, type: always_sample}]",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `decision_cache.sampled_cache_size`: `lots` is not a non-negative integer"
        );
        let err = SamplerConfig::from_yaml("decision_wait: [1s]\npolicies: []").unwrap_err();
        assert!(
            err.to_string().starts_with("field `decision_wait`: "),
            "{err}"
        );
        // A policy without a name is named by its position.
        let err = SamplerConfig::from_yaml(
            "policies: [{name: a, type: always_sample}, {type: latency, latency: {threshold_ms: x}}]",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy `#2`: latency.threshold_ms: invalid type: string \"x\", expected u64"
        );
        let err = SamplerConfig::from_yaml("num_traces: 5").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid tail_sampling configuration: missing field `policies`"
        );
    }

    #[test]
    fn a_duration_should_be_any_scalar_read_as_its_text() {
        let policies = "policies: [{name: a, type: always_sample}]";
        let cfg = |text: &str| SamplerConfig::from_yaml(&format!("{text}\n{policies}"));
        assert_eq!(
            cfg("decision_wait: '10s'").unwrap().decision_wait,
            Duration::from_secs(10)
        );
        assert_eq!(
            cfg("decision_wait_after_root: 0")
                .unwrap()
                .decision_wait_after_root,
            Duration::ZERO
        );
        let err = cfg("decision_wait_after_root: 10").unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `decision_wait_after_root`: `10` is not a duration like `500ms`, `2s` or `1m30s`"
        );
    }

    #[test]
    fn the_collectors_names_should_be_read_with_the_collectors_meaning() {
        let policies = "policies: [{name: a, type: always_sample}]";
        let cfg = |text: &str| SamplerConfig::from_yaml(&format!("{text}\n{policies}"));
        let wait = |text: &str| cfg(text).unwrap().decision_wait_after_root;
        assert_eq!(
            wait("decision_wait_after_root_received: 5s"),
            Duration::from_secs(5)
        );
        // The Collector's 0s turns root-based deciding off; traceq's own name keeps 0.
        assert_eq!(wait("decision_wait_after_root_received: 0s"), Duration::MAX);
        assert_eq!(wait("decision_wait_after_root: 0s"), Duration::ZERO);
        assert_eq!(
            cfg("decision_wait_after_root_received: 1s\ndecision_wait_after_root: 2s")
                .unwrap_err()
                .to_string(),
            "field `decision_wait_after_root_received`: is the Collector's name for \
             `decision_wait_after_root`: give only one of them"
        );
        assert_eq!(
            cfg("decision_wait_after_root_received: soon").unwrap_err().to_string(),
            "field `decision_wait_after_root`: `soon` is not a duration like `500ms`, `2s` or `1m30s`"
        );
        let c = cfg("maximum_trace_size_bytes: 1_048_576\nblock_on_overflow: true").unwrap();
        assert_eq!(
            (c.maximum_trace_size_bytes, c.block_on_overflow),
            (1 << 20, Some(true))
        );
        assert_eq!(
            cfg("block_on_overflow: false").unwrap().block_on_overflow,
            Some(false)
        );
        assert_eq!(cfg("num_traces: 9").unwrap().block_on_overflow, None);
        assert_eq!(cfg("num_traces: 9").unwrap().maximum_trace_size_bytes, 0);
        assert!(cfg("sampling_strategy: trace-complete").is_ok());
        assert!(cfg("sampling_strategy:").is_ok());
        assert_eq!(
            cfg("sampling_strategy: span-ingest")
                .unwrap_err()
                .to_string(),
            "field `sampling_strategy`: `span-ingest` is not supported: traceq decides each \
             trace once, with its spans buffered (`trace-complete`)"
        );
        assert!(cfg("sampling_strategy: sometimes").is_err());
        assert_eq!(
            cfg("tail_storage: pebble_tail_storage")
                .unwrap_err()
                .to_string(),
            "field `tail_storage`: is not supported: pending traces are buffered in memory; to \
             keep them across a crash, name a `file_storage` extension in `storage` (traceq \
             collector)"
        );
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
