//! Go-style durations (`500ms`, `2s`, `1m30s`), as the Collector's configuration writes them.
//!
//! The parser knows nothing of where the text came from: it says what is wrong with the text,
//! and the caller names the field (the YAML reader through the path serde reports, the command
//! line through its flag), so every front end reads durations the same way.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A text that is not a duration in Go's syntax.
///
/// # Examples
///
/// ```
/// let err = traceq_sampler::parse_duration("soon").unwrap_err();
/// assert_eq!(err.text(), "soon");
/// assert_eq!(err.to_string(), "`soon` is not a duration like `500ms`, `2s` or `1m30s`");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a duration like `500ms`, `2s` or `1m30s`")]
pub struct DurationError {
    text: String,
}

impl DurationError {
    /// The text that was refused, as given.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Parses a Go-style duration: `500ms`, `2s`, `1m30s`, `1.5h` (units ns, us, µs, ms, s, m, h).
/// A bare `0` is zero; any other number needs a unit. Surrounding whitespace is ignored.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use traceq_sampler::parse_duration;
///
/// assert_eq!(parse_duration("1m30s")?, Duration::from_secs(90));
/// assert!(parse_duration("10").is_err());
/// # Ok::<(), traceq_sampler::DurationError>(())
/// ```
///
/// # Errors
///
/// [`DurationError`] when the text is empty, a number lacks its unit, a unit is unknown, a
/// number is malformed or negative, or the total does not fit a [`Duration`].
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError {
        text: text.to_owned(),
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// A duration in a configuration file: any YAML scalar, read as its text, so `2s` and `"2s"`
/// are two seconds, `0` is zero and `10` is refused for want of a unit. The error is raised
/// inside the value's deserializer, so serde_yaml prefixes it with the field's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct YamlDuration(pub(crate) Duration);

impl<'de> Deserialize<'de> for YamlDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;

        impl Visitor<'_> for Text {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like `500ms`, `2s` or `1m30s`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v).map_err(E::custom)
            }
        }

        d.deserialize_str(Text).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_errors_should_quote_the_text_and_name_no_field() {
        for bad in ["", "10", "s", "10 parsecs", "-1s", "1e999h", "1.2.3s"] {
            let err = parse_duration(bad).unwrap_err();
            assert_eq!(err.text(), bad);
            assert_eq!(
                err.to_string(),
                format!("`{bad}` is not a duration like `500ms`, `2s` or `1m30s`")
            );
        }
    }

    #[test]
    fn durations_should_ignore_surrounding_whitespace_and_add_up_their_parts() {
        assert_eq!(parse_duration(" 5s "), Ok(Duration::from_secs(5)));
        assert_eq!(
            parse_duration("1h1m30s500ms"),
            Ok(Duration::from_millis(3_690_500))
        );
        assert_eq!(parse_duration("250us"), parse_duration("250µs"));
    }
}
