//! The one retry policy of every OTLP send: what may be retried, how long to wait, when to stop.
//!
//! The backoff is the OpenTelemetry Collector's `retry_on_failure`: the first delay is
//! `initial_interval`, each next one doubles up to `max_interval`, and each is randomised to
//! between half and one and a half times its value (capped at `max_interval`) so that senders
//! failing together do not retry together. A server's `Retry-After` is a floor: the wait is the
//! longer of it and the backoff, and never more than [`MAX_RETRY_AFTER`] whatever the server
//! says. A send gives up when the next attempt would start after `max_elapsed_time` (zero:
//! never), after `max_retries` retries, or after a caller's deadline.
//!
//! What is retryable is the OTLP specification's list: gRPC `CANCELLED`, `DEADLINE_EXCEEDED`,
//! `ABORTED`, `OUT_OF_RANGE`, `UNAVAILABLE`, `DATA_LOSS`; HTTP 429, 502, 503, 504; and any
//! failure to get an answer at all (connection refused or reset, timeout), and a failed local
//! write (the `file` exporter). Requests refused for their size or content (gRPC
//! `RESOURCE_EXHAUSTED`, `INVALID_ARGUMENT`; HTTP 413, 400) are not retried as they are: the
//! exporters split them (`export::delivery`).

use std::future::Future;
use std::time::Duration;

use hyper::header::{HeaderMap, RETRY_AFTER};
use tokio::time::Instant;
use tonic::Code;

use super::error::{Accepted, SendError};

/// Default first retry delay (the Collector's `retry_on_failure` default).
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(5);
/// Default longest delay between attempts.
pub const DEFAULT_RETRY_MAX_INTERVAL: Duration = Duration::from_secs(30);
/// Default time after which a request is given up (zero would mean retry for ever).
pub const DEFAULT_RETRY_MAX_ELAPSED: Duration = Duration::from_secs(300);
/// Longest wait a server's `Retry-After` can impose on one retry.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Shortest delay between attempts, whatever the configuration says: a zero interval from a
/// hand-built config must not turn retries into a busy loop.
const MIN_DELAY: Duration = Duration::from_millis(1);

/// Retrying failed sends (retryable errors only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Retry at all.
    pub enabled: bool,
    /// First delay; each retry doubles it (with jitter) up to `max_interval`.
    pub initial_interval: Duration,
    /// Longest delay between attempts.
    pub max_interval: Duration,
    /// Give a request up after this long; zero retries for ever.
    pub max_elapsed_time: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_interval: DEFAULT_RETRY_INITIAL,
            max_interval: DEFAULT_RETRY_MAX_INTERVAL,
            max_elapsed_time: DEFAULT_RETRY_MAX_ELAPSED,
        }
    }
}

/// Limits of one send on top of its [`RetryConfig`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryLimits {
    /// Most retries after the first attempt; `None`: as many as time allows.
    pub max_retries: Option<u32>,
    /// No retry starts at or after this instant.
    pub deadline: Option<Instant>,
}

/// What became of one request after its retries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendOutcome {
    /// Attempts repeated after retryable failures.
    pub retries: u32,
    /// What the downstream took, or why the request failed (the last attempt's error).
    pub result: Result<Accepted, SendError>,
}

/// Exponential backoff delays for one request.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `initial_interval`.
    pub(crate) fn new(config: &RetryConfig) -> Self {
        let max = config.max_interval.max(MIN_DELAY);
        Self {
            next: config.initial_interval.clamp(MIN_DELAY, max),
            max,
        }
    }

    /// The next delay; `unit` in `[0, 1)` picks the jitter (from `rand` in production).
    pub(crate) fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        let factor = 0.5
            + if unit.is_finite() {
                unit.clamp(0.0, 1.0)
            } else {
                0.5
            };
        Duration::try_from_secs_f64(base.as_secs_f64() * factor)
            .unwrap_or(self.max)
            .clamp(MIN_DELAY, self.max)
    }
}

/// What [`with_retries`] tells its observer, as it happens (counters stay live while a request
/// waits out its backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryEvent {
    /// An attempt failed.
    Failed,
    /// The backoff passed and the request is attempted again.
    Retrying,
}

/// Runs `attempt` until it succeeds, fails permanently, or the policy gives up.
pub(crate) async fn with_retries<F, Fut>(
    config: &RetryConfig,
    limits: RetryLimits,
    mut attempt: F,
    mut observe: impl FnMut(RetryEvent),
) -> SendOutcome
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Accepted, SendError>>,
{
    let start = Instant::now();
    let mut backoff = Backoff::new(config);
    let mut retries = 0;
    loop {
        let error = match attempt().await {
            Ok(accepted) => {
                return SendOutcome {
                    retries,
                    result: Ok(accepted),
                }
            }
            Err(e) => e,
        };
        observe(RetryEvent::Failed);
        let give_up = |error: SendError| SendOutcome {
            retries,
            result: Err(error),
        };
        if !error.is_retryable() || !config.enabled {
            return give_up(error);
        }
        if limits.max_retries.is_some_and(|max| retries >= max) {
            return give_up(error);
        }
        let mut delay = backoff.next_delay(rand::random::<f64>());
        if let Some(after) = error.retry_after() {
            delay = delay.max(after.min(MAX_RETRY_AFTER));
        }
        let limit = config.max_elapsed_time;
        if !limit.is_zero() && start.elapsed().saturating_add(delay) > limit {
            return give_up(error.gave_up_after(limit));
        }
        let resume = Instant::now() + delay;
        if limits.deadline.is_some_and(|d| resume >= d) {
            return give_up(error);
        }
        tokio::time::sleep_until(resume).await;
        retries += 1;
        observe(RetryEvent::Retrying);
    }
}

/// The gRPC codes the OTLP specification calls retryable whatever the details.
/// `RESOURCE_EXHAUSTED` is retryable only with a `RetryInfo` detail (see
/// [`SendError::is_retryable`]); without one the exporters read it as "too large" and split the
/// request (see [`SendError::rejection`]).
pub(crate) fn grpc_code_is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The delay of the `google.rpc.RetryInfo` in a gRPC status's details (the
/// `grpc-status-details-bin` bytes: an encoded `google.rpc.Status`); `None` when there is none
/// or the bytes do not decode. Read by hand (four small messages) rather than with a crate of
/// the Google API types.
pub(crate) fn grpc_retry_info(details: &[u8]) -> Option<Duration> {
    use prost::Message;
    const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";
    let status = RpcStatus::decode(details).ok()?;
    let any = status.details.iter().find(|d| d.type_url == RETRY_INFO)?;
    let delay = RetryInfo::decode(&any.value[..]).ok()?.retry_delay?;
    let secs = u64::try_from(delay.seconds).ok()?;
    let nanos = u32::try_from(delay.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    Some(Duration::new(secs, nanos))
}

/// An encoded `google.rpc.Status` whose only detail is a `RetryInfo` of `delay`, as a server
/// throttling with `RESOURCE_EXHAUSTED` sends it.
#[cfg(test)]
pub(crate) fn retry_info_details(delay: Duration) -> Vec<u8> {
    use prost::Message;
    let info = RetryInfo {
        retry_delay: Some(PbDuration {
            seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(delay.subsec_nanos()).unwrap_or(0),
        }),
    };
    RpcStatus {
        details: vec![PbAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: info.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

/// `google.rpc.Status`, its details only.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(message, repeated, tag = "3")]
    details: Vec<PbAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct PbAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<PbDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct PbDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The HTTP statuses the OTLP specification calls retryable.
pub(crate) fn http_status_is_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// `Retry-After`, as seconds or as an HTTP date (RFC 9110, e.g. `Wed, 21 Oct 2015 07:28:00
/// GMT`); a date already past reads as zero (retry after the backoff alone); garbage reads as
/// absent.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, std::time::SystemTime::now())
}

/// [`retry_after`] with the wall clock at `now`.
fn retry_after_at(headers: &HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(initial_ms: u64, max_ms: u64) -> RetryConfig {
        RetryConfig {
            enabled: true,
            initial_interval: Duration::from_millis(initial_ms),
            max_interval: Duration::from_millis(max_ms),
            max_elapsed_time: Duration::ZERO,
        }
    }

    #[test]
    fn backoff_should_double_up_to_the_maximum_without_jitter() {
        let mut b = Backoff::new(&config(10, 70));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay(0.5).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 70, 70]);
    }

    #[test]
    fn zero_intervals_should_not_make_a_busy_loop() {
        let mut b = Backoff::new(&config(0, 0));
        assert!(b.next_delay(0.0) >= MIN_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_should_stop_at_the_limit_and_keep_the_last_error() {
        let mut calls = 0;
        let outcome = with_retries(
            &config(10, 40),
            RetryLimits {
                max_retries: Some(2),
                deadline: None,
            },
            || {
                calls += 1;
                std::future::ready(Err(SendError::Transport(format!("refused {calls}"))))
            },
            |_| {},
        )
        .await;
        assert_eq!(calls, 3);
        assert_eq!(outcome.retries, 2);
        assert_eq!(
            outcome.result,
            Err(SendError::Transport("refused 3".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_should_not_be_retried() {
        let outcome = with_retries(
            &config(10, 40),
            RetryLimits::default(),
            || std::future::ready(Err(SendError::Request("bad".into()))),
            |_| {},
        )
        .await;
        assert_eq!(outcome.retries, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_should_be_a_floor_capped_at_its_maximum() {
        let start = Instant::now();
        let mut first = true;
        let outcome = with_retries(
            &config(1, 4),
            RetryLimits::default(),
            || {
                let reply = if std::mem::take(&mut first) {
                    Err(SendError::Http {
                        status: 503,
                        body: String::new(),
                        retry_after: Some(Duration::from_secs(3600)),
                    })
                } else {
                    Ok(Accepted::default())
                };
                std::future::ready(reply)
            },
            |_| {},
        )
        .await;
        assert_eq!(outcome.retries, 1);
        assert_eq!(start.elapsed(), MAX_RETRY_AFTER);
    }

    #[test]
    fn retry_after_should_read_an_http_date_as_the_wait_until_then() {
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, v.parse().unwrap());
            h
        };
        let date = headers("Wed, 21 Oct 2015 07:28:00 GMT");
        let then = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let before = then - Duration::from_secs(90);
        assert_eq!(retry_after_at(&date, before), Some(Duration::from_secs(90)));
        // a date in the past: retry at once (after the backoff)
        let after = then + Duration::from_secs(5);
        assert_eq!(retry_after_at(&date, after), Some(Duration::ZERO));
        // the obsolete RFC 850 and asctime forms, which RFC 9110 still asks recipients to read
        assert_eq!(
            retry_after_at(&headers("Wednesday, 21-Oct-15 07:28:00 GMT"), before),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            retry_after_at(&headers("Wed Oct 21 07:28:00 2015"), before),
            Some(Duration::from_secs(90))
        );
        for garbage in ["Wed, 32 Oct 2015 07:28:00 GMT", "soon", "1.5", ""] {
            assert_eq!(retry_after_at(&headers(garbage), before), None, "{garbage}");
        }
    }

    /// An encoded `google.rpc.Status` with the given details.
    fn status_details(details: Vec<PbAny>) -> Vec<u8> {
        use prost::Message;
        RpcStatus { details }.encode_to_vec()
    }

    fn retry_info(seconds: i64, nanos: i32) -> PbAny {
        use prost::Message;
        PbAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: RetryInfo {
                retry_delay: Some(PbDuration { seconds, nanos }),
            }
            .encode_to_vec(),
        }
    }

    #[test]
    fn retry_info_should_be_read_from_status_details() {
        let other = PbAny {
            type_url: "type.googleapis.com/google.rpc.QuotaFailure".into(),
            value: vec![1, 2, 3],
        };
        let details = status_details(vec![other.clone(), retry_info(2, 500_000_000)]);
        assert_eq!(grpc_retry_info(&details), Some(Duration::from_millis(2500)));
        assert_eq!(grpc_retry_info(&status_details(vec![other])), None);
        assert_eq!(grpc_retry_info(&[]), None);
        assert_eq!(grpc_retry_info(b"\x1a\xff garbage"), None);
        // negative or out-of-range delays read as absent
        assert_eq!(
            grpc_retry_info(&status_details(vec![retry_info(-1, 0)])),
            None
        );
        assert_eq!(
            grpc_retry_info(&status_details(vec![retry_info(1, 2_000_000_000)])),
            None
        );
    }

    proptest! {
        #[test]
        fn backoff_delays_should_stay_within_half_and_one_and_a_half_of_base_and_the_maximum(
            initial in 1u64..10_000,
            extra in 0u64..100_000,
            units in proptest::collection::vec(any::<f64>(), 1..20),
        ) {
            let max = initial + extra;
            let mut b = Backoff::new(&config(initial, max));
            let mut base = initial;
            for unit in units {
                let d = b.next_delay(unit).as_secs_f64() * 1000.0;
                prop_assert!(d <= max as f64 + 1e-6, "{d} > {max}");
                prop_assert!(d >= base as f64 / 2.0 - 1e-6, "{d} < {base}/2");
                base = (base * 2).min(max);
            }
        }
    }
}
