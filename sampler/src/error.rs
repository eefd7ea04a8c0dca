//! Configuration errors. Every error names the policy and the field at fault, so a bad YAML
//! file is fixed from the message alone.

/// An invalid sampler configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The document is not valid YAML or does not have the `tail_sampling` shape.
    #[error("invalid tail_sampling configuration: {message}")]
    Yaml {
        /// The parser's message, with the path of the offending field.
        message: String,
    },
    /// A top-level setting is out of range.
    #[error("field `{field}`: {reason}")]
    Setting {
        /// The setting's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting's YAML value has the wrong type or form (`num_traces: lots`).
    #[error("field `{field}`: {message}")]
    SettingYaml {
        /// The setting's path, `decision_wait` or `decision_cache.sampled_cache_size`.
        field: String,
        /// The parser's message.
        message: String,
    },
    /// A policy's YAML does not match its type's schema (unknown or mistyped field).
    #[error("policy `{policy}`: {message}")]
    PolicyYaml {
        /// The policy's `name` (or its position when it has none).
        policy: String,
        /// The parser's message, naming the field.
        message: String,
    },
    /// A policy field has an invalid value.
    #[error("policy `{policy}`: field `{field}` {reason}")]
    Field {
        /// The policy's `name`.
        policy: String,
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A policy's regular expression does not compile.
    #[error("policy `{policy}`: field `{field}` has an invalid regular expression")]
    Regex {
        /// The policy's `name`.
        policy: String,
        /// The field's name.
        field: &'static str,
        /// The regex compiler's error.
        #[source]
        source: regex::Error,
    },
    /// An `ottl_condition` condition that does not compile.
    #[error("policy `{policy}`: ottl_condition.{list}[{index}] `{condition}`: {message}")]
    Ottl {
        /// The policy's `name`.
        policy: String,
        /// The list it is in: `span` or `spanevent`.
        list: &'static str,
        /// Its position in the list, from 0.
        index: usize,
        /// The condition as written.
        condition: String,
        /// What is wrong with it, and where (`at character 12: ...`).
        message: String,
    },
    /// Two policies share a name.
    #[error("policy `{policy}`: duplicate policy name")]
    DuplicateName {
        /// The repeated name.
        policy: String,
    },
    /// The processor's export thread could not be started.
    #[error("could not start the export thread")]
    Thread(#[source] std::io::Error),
    /// The configuration has no policies.
    #[error("field `policies`: at least one policy is required")]
    NoPolicies,
}

impl ConfigError {
    pub(crate) fn field(policy: &str, field: &'static str, reason: impl Into<String>) -> Self {
        Self::Field {
            policy: policy.to_owned(),
            field,
            reason: reason.into(),
        }
    }
}
