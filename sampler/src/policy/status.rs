//! `status_code`: keep traces with a span whose status is one of the listed codes.
//! The default configuration keeps every trace with an `ERROR` span this way.

use serde::Deserialize;

use crate::error::ConfigError;
use crate::span::{SpanView, StatusKind};

/// `status_code: {status_codes: [ERROR, UNSET, OK]}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusCodeConfig {
    /// Codes that sample the trace when any span has one: `OK`, `ERROR` or `UNSET`.
    pub status_codes: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct StatusCodePolicy {
    codes: [bool; 3],
}

fn index(kind: StatusKind) -> usize {
    match kind {
        StatusKind::Unset => 0,
        StatusKind::Ok => 1,
        StatusKind::Error => 2,
    }
}

impl StatusCodePolicy {
    pub(crate) fn new(policy: &str, cfg: &StatusCodeConfig) -> Result<Self, ConfigError> {
        if cfg.status_codes.is_empty() {
            return Err(ConfigError::field(
                policy,
                "status_codes",
                "must not be empty",
            ));
        }
        let mut codes = [false; 3];
        for code in &cfg.status_codes {
            let kind = match code.as_str() {
                "UNSET" => StatusKind::Unset,
                "OK" => StatusKind::Ok,
                "ERROR" => StatusKind::Error,
                other => {
                    return Err(ConfigError::field(
                        policy,
                        "status_codes",
                        format!("has unknown code `{other}` (expected OK, ERROR or UNSET)"),
                    ))
                }
            };
            codes[index(kind)] = true;
        }
        Ok(Self { codes })
    }

    pub(crate) fn matches<S: SpanView>(&self, spans: &[S]) -> bool {
        spans.iter().any(|s| self.codes[index(s.status())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestSpan;

    fn cfg(codes: &[&str]) -> StatusCodeConfig {
        StatusCodeConfig {
            status_codes: codes.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    #[test]
    fn status_code_should_match_a_trace_with_one_error_span() {
        let p = StatusCodePolicy::new("e", &cfg(&["ERROR"])).unwrap();
        let ok = vec![
            TestSpan::new(1, 1).build(),
            TestSpan::new(1, 2).ok().build(),
        ];
        let bad = vec![
            TestSpan::new(1, 1).build(),
            TestSpan::new(1, 2).error().build(),
        ];
        assert!(!p.matches(&ok));
        assert!(p.matches(&bad));
    }

    #[test]
    fn status_code_should_match_unset_and_ok_when_listed() {
        let p = StatusCodePolicy::new("e", &cfg(&["UNSET", "OK"])).unwrap();
        assert!(p.matches(&[TestSpan::new(1, 1).build()]));
        assert!(p.matches(&[TestSpan::new(1, 1).ok().build()]));
        assert!(!p.matches(&[TestSpan::new(1, 1).error().build()]));
    }

    #[test]
    fn status_code_should_reject_unknown_or_empty_codes() {
        let err = StatusCodePolicy::new("e", &cfg(&["FAILED"])).unwrap_err();
        assert!(err.to_string().contains("policy `e`: field `status_codes`"));
        assert!(StatusCodePolicy::new("e", &cfg(&[])).is_err());
    }
}
