//! A load run: workers taking slots from a shared plan, generating, sending, counting.
//!
//! Why one shared plan instead of a rate per worker: the rate is a total, and a slow worker
//! (waiting on a retry) should not take its share of the rate with it; the plan also hands out
//! trace indices, which is what makes the error-trace count exact across workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::config::{LoadgenConfig, LoadgenError};
use super::generate::{GeneratedRequest, TraceGenerator};
use super::send::TraceSender;
use crate::client::SendOutcome;

/// Longest wait between two requests at a rate.
const MAX_GAP: Duration = Duration::from_secs(24 * 3600);

/// What a load run sent and how it went.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LoadReport {
    /// Traces in requests the server accepted.
    pub traces_sent: u64,
    /// Spans in requests the server accepted (those it rejected in a partial success included).
    pub spans_sent: u64,
    /// Traces with an ERROR span in requests the server accepted.
    pub error_traces_sent: u64,
    /// Spans the server reported rejected in partial successes.
    pub spans_rejected: u64,
    /// Spans in requests that failed.
    pub spans_failed: u64,
    /// Protobuf bytes (before compression) of the requests the server accepted.
    pub bytes_sent: u64,
    /// Requests the server accepted.
    pub requests_ok: u64,
    /// Requests that failed: refused for good, or still refused after the last retry.
    pub requests_failed: u64,
    /// Attempts repeated after retryable refusals (one request may be retried several times).
    pub requests_retried: u64,
    /// From the start of the run until the last worker stopped.
    #[serde(rename = "elapsed_seconds", serialize_with = "seconds")]
    pub elapsed: Duration,
    /// `spans_sent` over `elapsed`.
    pub spans_per_second: f64,
    /// The first failed request's error, with its retry count.
    pub first_error: Option<String>,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Runs the load `config` describes and reports on it.
///
/// Each of `config.workers` tasks takes the next slot of the plan (which traces, and with a rate,
/// when), generates that request, sends it and waits for the outcome before taking the next
/// one. The run ends when the plan has handed out `config.traces` traces or `config.duration` is
/// over, and every request in flight has finished.
///
/// # Errors
///
/// [`LoadgenError::Setting`] for an invalid `config`, before anything is sent;
/// [`LoadgenError::HttpClient`] if the client cannot be built; [`LoadgenError::Worker`] if a
/// worker panics. Failed requests are not errors: they are counted in the report.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), traceq_exporter::loadgen::LoadgenError> {
/// use traceq_exporter::loadgen::{run, LoadgenConfig};
///
/// let report = run(&LoadgenConfig::default().with_traces(1_000).with_rate(2_000.0)).await?;
/// println!("{} spans/s", report.spans_per_second);
/// # Ok(())
/// # }
/// ```
pub async fn run(config: &LoadgenConfig) -> Result<LoadReport, LoadgenError> {
    config.validate()?;
    let sender = Arc::new(TraceSender::new(config)?);
    let start = Instant::now();
    let plan = Arc::new(Plan::new(config, start));
    let tally = Arc::new(Tally::default());
    let mut workers = JoinSet::new();
    for stream in 0..config.workers as u64 {
        let generator = TraceGenerator::new(config, stream);
        let (sender, plan, tally) = (Arc::clone(&sender), Arc::clone(&plan), Arc::clone(&tally));
        workers.spawn(worker(generator, sender, plan, tally));
    }
    while let Some(joined) = workers.join_next().await {
        // Dropping the set on error aborts the other workers.
        joined.map_err(LoadgenError::Worker)?;
    }
    Ok(tally.report(start.elapsed()))
}

async fn worker(
    mut generator: TraceGenerator,
    sender: Arc<TraceSender>,
    plan: Arc<Plan>,
    tally: Arc<Tally>,
) {
    while let Some(slot) = plan.next(Instant::now()) {
        if let Some(at) = slot.at {
            tokio::time::sleep_until(at).await;
        }
        let generated = generator.generate_request(slot.first_trace, slot.traces);
        let body = TraceSender::encode(&generated.request);
        let bytes = body.len() as u64;
        let outcome = sender.send(body, plan.deadline).await;
        tally.record(&generated, bytes, &outcome);
    }
}

/// One request's place in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// Index in the run of the request's first trace.
    first_trace: u64,
    /// Traces in the request.
    traces: usize,
    /// When to send it, with a rate.
    at: Option<Instant>,
}

/// Hands out slots: trace indices, send times at the rate, nothing past the run's end.
#[derive(Debug)]
struct Plan {
    traces_per_request: usize,
    spans_per_trace: usize,
    rate: f64,
    deadline: Option<Instant>,
    state: Mutex<PlanState>,
}

#[derive(Debug)]
struct PlanState {
    next_trace: u64,
    traces_left: Option<u64>,
    next_at: Instant,
}

impl Plan {
    fn new(config: &LoadgenConfig, start: Instant) -> Self {
        Self {
            traces_per_request: config.traces_per_request(),
            spans_per_trace: config.spans_per_trace,
            rate: config.rate,
            deadline: config.duration.map(|d| start + d),
            state: Mutex::new(PlanState {
                next_trace: 0,
                traces_left: config.traces,
                next_at: start,
            }),
        }
    }

    /// The next slot, or `None` once the run's traces are handed out or its time is over.
    fn next(&self, now: Instant) -> Option<Slot> {
        let mut state = self.state.lock();
        let traces = match state.traces_left {
            Some(0) => return None,
            Some(left) => usize::try_from(left).map_or(self.traces_per_request, |left| {
                left.min(self.traces_per_request)
            }),
            None => self.traces_per_request,
        };
        // Falling behind (a slow server) does not build up a burst to catch up with later.
        let at = (self.rate > 0.0).then(|| state.next_at.max(now));
        if self.deadline.is_some_and(|d| at.unwrap_or(now) >= d) {
            return None;
        }
        if let Some(at) = at {
            let spans = (traces * self.spans_per_trace) as f64;
            // Capped: a rate of a few spans a year would otherwise overflow the clock.
            let gap = Duration::try_from_secs_f64(spans / self.rate).unwrap_or(MAX_GAP);
            state.next_at = at + gap.min(MAX_GAP);
        }
        if let Some(left) = &mut state.traces_left {
            *left -= traces as u64;
        }
        let first_trace = state.next_trace;
        state.next_trace += traces as u64;
        Some(Slot {
            first_trace,
            traces,
            at,
        })
    }
}

/// The run's counters, shared by the workers.
#[derive(Debug, Default)]
struct Tally {
    traces_sent: AtomicU64,
    spans_sent: AtomicU64,
    error_traces_sent: AtomicU64,
    spans_rejected: AtomicU64,
    spans_failed: AtomicU64,
    bytes_sent: AtomicU64,
    requests_ok: AtomicU64,
    requests_failed: AtomicU64,
    requests_retried: AtomicU64,
    first_error: OnceLock<String>,
}

impl Tally {
    fn record(&self, generated: &GeneratedRequest, bytes: u64, outcome: &SendOutcome) {
        let add = |counter: &AtomicU64, n: u64| counter.fetch_add(n, Ordering::Relaxed);
        add(&self.requests_retried, u64::from(outcome.retries));
        match &outcome.result {
            Ok(accepted) => {
                add(&self.requests_ok, 1);
                add(&self.traces_sent, generated.traces as u64);
                add(&self.spans_sent, generated.spans as u64);
                add(&self.error_traces_sent, generated.error_traces as u64);
                add(&self.spans_rejected, accepted.rejected_spans);
                add(&self.bytes_sent, bytes);
            }
            Err(error) => {
                add(&self.requests_failed, 1);
                add(&self.spans_failed, generated.spans as u64);
                let _ = self.first_error.get_or_init(|| match outcome.retries {
                    0 => error.to_string(),
                    n => format!("{error} (after {n} retries)"),
                });
            }
        }
    }

    fn report(&self, elapsed: Duration) -> LoadReport {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let spans_sent = get(&self.spans_sent);
        let seconds = elapsed.as_secs_f64();
        LoadReport {
            traces_sent: get(&self.traces_sent),
            spans_sent,
            error_traces_sent: get(&self.error_traces_sent),
            spans_rejected: get(&self.spans_rejected),
            spans_failed: get(&self.spans_failed),
            bytes_sent: get(&self.bytes_sent),
            requests_ok: get(&self.requests_ok),
            requests_failed: get(&self.requests_failed),
            requests_retried: get(&self.requests_retried),
            elapsed,
            spans_per_second: if seconds > 0.0 {
                spans_sent as f64 / seconds
            } else {
                0.0
            },
            first_error: self.first_error.get().cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(config: &LoadgenConfig, start: Instant) -> Plan {
        config.validate().unwrap();
        Plan::new(config, start)
    }

    #[test]
    fn plan_should_hand_out_whole_traces_and_stop_at_the_trace_count() {
        let config = LoadgenConfig::default().with_traces(120);
        let start = Instant::now();
        let p = plan(&config, start);
        let slots: Vec<Slot> = std::iter::from_fn(|| p.next(start)).collect();
        let sizes: Vec<usize> = slots.iter().map(|s| s.traces).collect();
        assert_eq!(
            sizes,
            [51, 51, 18],
            "510-span requests of 10-span traces, then the rest"
        );
        assert_eq!(slots[2].first_trace, 102);
        assert!(slots.iter().all(|s| s.at.is_none()), "no rate, no waiting");
    }

    #[test]
    fn plan_should_space_slots_at_the_rate_and_stop_at_the_deadline() {
        // 1000 spans/s: requests of a tenth of a second's worth (10 traces of 10 spans).
        let config = LoadgenConfig::default()
            .with_rate(1000.0)
            .with_duration(Duration::from_secs(1));
        let start = Instant::now();
        let p = plan(&config, start);
        let slots: Vec<Slot> = std::iter::from_fn(|| p.next(start)).collect();
        assert_eq!(slots.len(), 10);
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!(slot.traces, 10);
            assert_eq!(slot.at, Some(start + Duration::from_millis(100 * i as u64)));
        }
    }

    #[test]
    fn plan_should_not_burst_to_catch_up_after_falling_behind() {
        let config = LoadgenConfig::default().with_rate(1000.0).with_traces(1000);
        let start = Instant::now();
        let p = plan(&config, start);
        assert_eq!(p.next(start).unwrap().at, Some(start));
        let late = start + Duration::from_secs(5);
        assert_eq!(p.next(late).unwrap().at, Some(late));
        let next = p.next(late).unwrap().at.unwrap();
        assert_eq!(next, late + Duration::from_millis(100));
    }

    #[test]
    fn plan_without_a_rate_should_stop_once_the_duration_is_over() {
        let config = LoadgenConfig::default().with_duration(Duration::from_millis(500));
        let start = Instant::now();
        let p = plan(&config, start);
        assert!(p.next(start + Duration::from_millis(499)).is_some());
        assert!(p.next(start + Duration::from_millis(500)).is_none());
    }
}
