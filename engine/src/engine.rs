//! The worker runtime: N async workers over a [`Queue`], with the retry policy applied.
//!
//! A handler returns `Result`. On success the key is forgotten (its failure history cleared, so a
//! later failure starts the backoff afresh). On an error, a timeout or a panic — caught per item,
//! the worker survives — the key is re-queued rate-limited until it has been re-queued
//! `max_retries` times; the next failure forgets it and the [`Outcome`] says why.
//!
//! Why every call into user code on the attempt path is caught: the handler (its synchronous part
//! and its future), the error's `Display`, the key's formatting for its trace and the outcome hook
//! all run on a worker between `get` and `done`. A panic escaping any of them would kill the
//! worker and leave its key in process for ever, so that `shutdown_with_drain` never returns.
//! Instead the attempt fails with an [`AttemptError`] naming what panicked (or, for the hook, the
//! panic is reported and the outcome stands), and the worker goes on.
//!
//! Priorities and groups: each attempt is told the priority its key was handed out with and, for
//! an engine built [`with_fairness`](EngineBuilder::with_fairness), its group; both are recorded
//! on the attempt span (`traceq.priority`, `traceq.group`). A failed attempt's key is requeued at
//! its priority unless the handler asked for another ([`Attempt::set_requeue_priority`]).

mod attempt;
#[cfg(feature = "postgres")]
mod durable;
mod handle;

pub use attempt::{Attempt, AttemptError, Handler, Outcome, OutcomeKind};
#[cfg(feature = "postgres")]
pub use durable::{PgBuildError, PgEngine, PgEngineHandle};
pub use handle::{EngineHandle, QueueView};

use crate::clock::{Clock, TokioClock};
use crate::queue::{Claim, Failure, FairPlan, Fairness, Queue, QueueConfig};
use crate::rate_limit::{
    self, ExponentialBackoff, MaxOf, RateLimitError, RateLimiter, TokenBucket,
};
use crate::trace::{
    interned, ErasedTracer, Item, ItemTraces, JobContext, KeyFormat, Ranking, TraceConfig,
    DEFAULT_MAX_SPANS_PER_SEGMENT, DEFAULT_MAX_TRACE_AGE,
};
pub(crate) use attempt::panic_message;
use attempt::{run_attempt, RequeueCell};
use opentelemetry::trace::Tracer;
use std::fmt;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default number of workers.
pub const DEFAULT_WORKERS: usize = 4;
/// Default retries before a failing key is forgotten, as most client-go controllers use.
pub const DEFAULT_MAX_RETRIES: u32 = 5;

/// Bad engine configuration, refused by [`EngineBuilder::build`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// `with_workers(0)`: nothing would ever run.
    #[error("workers must be at least 1")]
    ZeroWorkers,
    /// A zero per-attempt timeout would fail every attempt.
    #[error("attempt timeout must be above zero")]
    ZeroTimeout,
    /// `with_backoff(0, 0)`: use `with_rate_limiter(rate_limit::none())` for retries without
    /// delay.
    #[error("backoff bounds are both zero; use rate_limit::none() for retries without delay")]
    ZeroBackoff,
    /// A rate-limiter parameter is invalid.
    #[error("invalid rate limiter")]
    RateLimit(#[source] RateLimitError),
    /// A zero maximum trace age would cut a new segment for every span.
    #[error("max trace age must be above zero")]
    ZeroTraceAge,
    /// A segment must hold at least its item span and one attempt span.
    #[error("max spans per segment must be at least 2")]
    TooFewSpansPerSegment,
}

type OutcomeHook<K> = Arc<dyn Fn(&Outcome<K>) + Send + Sync>;
type JobIdOf<K> = Arc<dyn Fn(&K) -> Option<String> + Send + Sync>;

/// The tracing half of the builder; `None` until a tracer is given.
struct TracingChoice<K> {
    tracer: Box<dyn ErasedTracer>,
    key_format: KeyFormat<K>,
}

enum LimiterChoice<K> {
    Default,
    Params {
        backoff: Option<(Duration, Duration)>,
        bucket: Option<(f64, u32)>,
    },
    Custom(Arc<dyn RateLimiter<K>>),
}

/// Builds an [`Engine`]: `with_*` setters, each documenting its default; every parameter is
/// checked in [`build`](Self::build), so a bad one is refused before anything runs.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use traceq_engine::{BuildError, Engine};
///
/// let engine = Engine::<String>::builder()
///     .with_name("pods")
///     .with_workers(8)
///     .with_max_retries(3)
///     .with_backoff(Duration::from_millis(5), Duration::from_secs(60))
///     .with_attempt_timeout(Duration::from_secs(30))
///     .build();
/// assert!(engine.is_ok());
///
/// let refused = Engine::<String>::builder().with_workers(0).build();
/// assert_eq!(refused.unwrap_err(), BuildError::ZeroWorkers);
/// ```
pub struct EngineBuilder<K> {
    name: String,
    workers: usize,
    max_retries: u32,
    attempt_timeout: Option<Duration>,
    metrics: bool,
    limiter: LimiterChoice<K>,
    outcome_hook: Option<OutcomeHook<K>>,
    tracing: Option<TracingChoice<K>>,
    max_trace_age: Duration,
    max_spans_per_segment: u32,
    job_id_of: Option<JobIdOf<K>>,
    trace_clock: Arc<dyn Clock>,
    fairness: Option<FairPlan<K>>,
}

impl<K> fmt::Debug for EngineBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("name", &self.name)
            .field("workers", &self.workers)
            .field("max_retries", &self.max_retries)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("traced", &self.tracing.is_some())
            .field("max_trace_age", &self.max_trace_age)
            .field("max_spans_per_segment", &self.max_spans_per_segment)
            .field("fairness", &self.fairness)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Default for EngineBuilder<K> {
    fn default() -> Self {
        Self {
            name: crate::DEFAULT_NAME.to_owned(),
            workers: DEFAULT_WORKERS,
            max_retries: DEFAULT_MAX_RETRIES,
            attempt_timeout: None,
            metrics: true,
            limiter: LimiterChoice::Default,
            outcome_hook: None,
            tracing: None,
            max_trace_age: DEFAULT_MAX_TRACE_AGE,
            max_spans_per_segment: DEFAULT_MAX_SPANS_PER_SEGMENT,
            job_id_of: None,
            trace_clock: Arc::new(TokioClock),
            fairness: None,
        }
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> EngineBuilder<K> {
    /// The engine's (and its queue's) name: the `name` label of its metrics and the end of its
    /// span names (`item <name>`, `process <name>`). Default [`DEFAULT_NAME`](crate::DEFAULT_NAME).
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How many workers run the handler concurrently. Default [`DEFAULT_WORKERS`].
    #[must_use]
    pub fn with_workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Requeues allowed per key before it is forgotten: a key runs at most `n + 1` times between
    /// successes. Default [`DEFAULT_MAX_RETRIES`].
    #[must_use]
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Fails an attempt that runs longer than `timeout`. Default: no timeout.
    #[must_use]
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Whether the queue records time-based metrics (queue latency, work duration, unfinished
    /// work). Default on, unlike a bare [`Queue`](crate::Queue).
    #[must_use]
    pub fn with_metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Per-key exponential backoff from `base` to `max`, combined (max-of) with the token bucket
    /// of [`with_token_bucket`](Self::with_token_bucket) if one is set. Replaces a limiter given
    /// to [`with_rate_limiter`](Self::with_rate_limiter). Checked in `build`.
    #[must_use]
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.limiter = match self.limiter {
            LimiterChoice::Params { bucket, .. } => LimiterChoice::Params {
                backoff: Some((base, max)),
                bucket,
            },
            _ => LimiterChoice::Params {
                backoff: Some((base, max)),
                bucket: None,
            },
        };
        self
    }

    /// A global token bucket of `qps` and `burst`, combined (max-of) with the backoff of
    /// [`with_backoff`](Self::with_backoff) if one is set. Replaces a limiter given to
    /// [`with_rate_limiter`](Self::with_rate_limiter). Checked in `build`.
    #[must_use]
    pub fn with_token_bucket(mut self, qps: f64, burst: u32) -> Self {
        self.limiter = match self.limiter {
            LimiterChoice::Params { backoff, .. } => LimiterChoice::Params {
                backoff,
                bucket: Some((qps, burst)),
            },
            _ => LimiterChoice::Params {
                backoff: None,
                bucket: Some((qps, burst)),
            },
        };
        self
    }

    /// Any rate limiter, replacing [`with_backoff`](Self::with_backoff) and
    /// [`with_token_bucket`](Self::with_token_bucket). Default, when none of the three is given:
    /// client-go's default controller limiter (exponential 5 ms..1000 s, max-of a 10 qps / 100
    /// burst bucket).
    #[must_use]
    pub fn with_rate_limiter(mut self, limiter: impl RateLimiter<K> + 'static) -> Self {
        self.limiter = LimiterChoice::Custom(Arc::new(limiter));
        self
    }

    /// Called in the worker after every attempt with what became of the key. It runs on the
    /// worker, so a slow hook delays that worker's next attempt. A panic in it is caught: the
    /// key's outcome stands and the worker goes on; the first panic is reported on stderr, and
    /// the number of panics when [`Engine::run`] returns. Default: none.
    #[must_use]
    pub fn with_outcome_hook(mut self, hook: impl Fn(&Outcome<K>) + Send + Sync + 'static) -> Self {
        self.outcome_hook = Some(Arc::new(hook));
        self
    }

    /// Traces every item with `tracer`, naming keys by their `Display` text: one trace per
    /// key from its first add until it is forgotten, an attempt span per attempt (see the
    /// crate's [`trace`](crate::trace) module). Without a tracer the engine does no tracing
    /// work at all. Default: no tracer.
    ///
    /// Any `opentelemetry::trace::Tracer` will do: `opentelemetry::global::tracer("traceq")`,
    /// or an SDK provider's `provider.tracer("traceq")`. A tracer that gives a new root span no
    /// valid span context records nothing and never will (the API's no-op tracer,
    /// `global::tracer` with no provider installed, a shut-down SDK provider): on seeing one the
    /// engine stops tracing for good, so that it costs what no tracer costs, and handlers get
    /// `Context::current()` as without a tracer.
    #[must_use]
    pub fn with_tracer<T>(self, tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
        K: fmt::Display,
    {
        // `to_string` has fast paths for integers and strings; formatting through `fmt::write`
        // onto the stack saved an allocation but ran more code, and more instruction-cache
        // misses, than it saved.
        self.traced(tracer, Arc::new(|key: &K| key.to_string().into()))
    }

    /// As [`with_tracer`](Self::with_tracer), for keys without `Display`: `key_format` gives the
    /// text of a key's `traceq.item.key`.
    #[must_use]
    pub fn with_tracer_and_key_format<T>(
        self,
        tracer: T,
        key_format: impl Fn(&K) -> String + Send + Sync + 'static,
    ) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        self.traced(tracer, Arc::new(move |key: &K| key_format(key).into()))
    }

    fn traced<T>(mut self, tracer: T, key_format: KeyFormat<K>) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        self.tracing = Some(TracingChoice {
            tracer: Box::new(tracer),
            key_format,
        });
        self
    }

    /// How old an item's trace may grow before it continues in a new, linked trace (a
    /// segment). Default [`DEFAULT_MAX_TRACE_AGE`](crate::trace::DEFAULT_MAX_TRACE_AGE), one
    /// hour. Checked in `build`. The age is looked at when an attempt starts and whenever the
    /// handler asks its [`JobContext`] for a context, so a key waiting out a long backoff is cut
    /// when it next runs.
    #[must_use]
    pub fn with_max_trace_age(mut self, age: Duration) -> Self {
        self.max_trace_age = age;
        self
    }

    /// How many spans one segment may hold before the trace continues in a new, linked one:
    /// the item span, the attempt spans, and one per call of [`JobContext::context`]. Default
    /// [`DEFAULT_MAX_SPANS_PER_SEGMENT`](crate::trace::DEFAULT_MAX_SPANS_PER_SEGMENT). At least
    /// 2, checked in `build`.
    #[must_use]
    pub fn with_max_spans_per_segment(mut self, n: u32) -> Self {
        self.max_spans_per_segment = n;
        self
    }

    /// Gives each key's job id (`traceq.job.id`, baggage and attribute, shared by the segments
    /// of a long job). Without one, a job id in the producer's baggage is used; failing that, a
    /// job that is split gets the trace id of its first segment. Default: none.
    #[must_use]
    pub fn with_job_id_of(
        mut self,
        job_id_of: impl Fn(&K) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.job_id_of = Some(Arc::new(job_id_of));
        self
    }

    /// The clock trace ages are measured with. Default [`TokioClock`], so a test that pauses
    /// tokio's time controls segment cuts too.
    #[must_use]
    pub fn with_trace_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.trace_clock = clock;
        self
    }

    /// Makes the engine's queue fair across groups of keys (a namespace, a tenant): see
    /// [`QueueConfig::with_fairness`](crate::QueueConfig::with_fairness) and [`Fairness`].
    /// Handlers see each key's group in [`Attempt::group`], and attempt spans carry it as
    /// `traceq.group`. Default: not fair.
    #[must_use]
    pub fn with_fairness<G>(mut self, fairness: impl Into<Fairness<K, G>>) -> Self
    where
        G: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
    {
        self.fairness = Some(fairness.into().plan());
        self
    }

    /// Checks the configuration and builds the engine.
    ///
    /// # Errors
    /// [`BuildError`] for zero workers, a zero timeout, zero or inverted backoff bounds, a
    /// token bucket with a non-positive rate or a zero burst, a zero maximum trace age and a span
    /// budget below 2.
    pub fn build(self) -> Result<Engine<K>, BuildError> {
        if self.workers == 0 {
            return Err(BuildError::ZeroWorkers);
        }
        if self.max_trace_age.is_zero() {
            return Err(BuildError::ZeroTraceAge);
        }
        if self.max_spans_per_segment < 2 {
            return Err(BuildError::TooFewSpansPerSegment);
        }
        if self.attempt_timeout.is_some_and(|t| t.is_zero()) {
            return Err(BuildError::ZeroTimeout);
        }
        let limiter: Arc<dyn RateLimiter<K>> = match self.limiter {
            LimiterChoice::Default => Arc::new(rate_limit::default_controller::<K>()),
            LimiterChoice::Custom(l) => l,
            LimiterChoice::Params { backoff, bucket } => {
                let mut parts: Vec<Box<dyn RateLimiter<K>>> = Vec::new();
                if let Some((base, max)) = backoff {
                    if base.is_zero() && max.is_zero() {
                        return Err(BuildError::ZeroBackoff);
                    }
                    let b = ExponentialBackoff::new(base, max).map_err(BuildError::RateLimit)?;
                    parts.push(Box::new(b));
                }
                if let Some((qps, burst)) = bucket {
                    let b = TokenBucket::new(qps, burst).map_err(BuildError::RateLimit)?;
                    parts.push(Box::new(b));
                }
                Arc::new(MaxOf::try_new(parts).map_err(BuildError::RateLimit)?)
            }
        };
        let traces = self.tracing.map(|choice| {
            let cfg = TraceConfig {
                tracer: choice.tracer,
                clock: self.trace_clock,
                max_age: self.max_trace_age,
                max_spans: self.max_spans_per_segment,
                queue_name: interned(self.name.clone()).into(),
                item_span_name: interned(format!("item {}", self.name)),
                attempt_span_name: interned(format!("process {}", self.name)),
            };
            Arc::new(ItemTraces::new(cfg, choice.key_format, self.job_id_of))
        });
        let queue = Queue::with_config(
            QueueConfig::default()
                .with_name(self.name)
                .with_metrics(self.metrics)
                .with_rate_limiter(limiter)
                .with_fair_plan(self.fairness),
        );
        Ok(Engine {
            inner: Arc::new(Inner {
                queue,
                traces,
                workers: self.workers,
                max_retries: self.max_retries,
                attempt_timeout: self.attempt_timeout,
                outcome_hook: self.outcome_hook,
                hook_panics: AtomicU64::new(0),
            }),
        })
    }
}

struct Inner<K> {
    queue: Queue<K>,
    /// Per-key traces; `None` without a tracer, so the untraced path does no tracing work.
    traces: Option<Arc<ItemTraces<K>>>,
    workers: usize,
    max_retries: u32,
    attempt_timeout: Option<Duration>,
    outcome_hook: Option<OutcomeHook<K>>,
    /// Panics of the outcome hook: the first is shown on stderr, the total when `run` returns.
    hook_panics: AtomicU64,
}

/// Runs a handler over a work queue with N async workers.
///
/// # Examples
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use traceq_engine::{Attempt, Engine};
///
/// # tokio::runtime::Builder::new_multi_thread().enable_time().build().unwrap().block_on(async {
/// let engine = Engine::<u32>::builder().with_workers(2).build().unwrap();
/// let handle = engine.handle();
/// for key in 0..10 {
///     handle.add(key);
/// }
/// let done = Arc::new(AtomicU32::new(0));
/// let counter = done.clone();
/// let run = tokio::spawn(async move {
///     engine
///         .run(move |_attempt: Attempt<u32>| {
///             let counter = counter.clone();
///             async move {
///                 counter.fetch_add(1, Ordering::Relaxed);
///                 Ok::<(), std::io::Error>(())
///             }
///         })
///         .await
/// });
/// handle.shutdown_with_drain_queued().await;
/// run.await.unwrap();
/// assert_eq!(done.load(Ordering::Relaxed), 10);
/// # });
/// ```
pub struct Engine<K> {
    inner: Arc<Inner<K>>,
}

impl<K> fmt::Debug for Engine<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("queue", &self.inner.queue)
            .field("workers", &self.inner.workers)
            .field("max_retries", &self.inner.max_retries)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Engine<K> {
    /// A builder with the defaults.
    pub fn builder() -> EngineBuilder<K> {
        EngineBuilder::default()
    }

    /// A cheap, clonable handle for producers and for shutting the engine down.
    pub fn handle(&self) -> EngineHandle<K> {
        EngineHandle::new(self.inner.queue.clone(), self.inner.traces.clone())
    }

    /// Runs the workers until the queue is shut down, then returns once every worker has
    /// finished its current attempt. Must be called inside a tokio runtime. When tracing, the
    /// traces of keys left queued or waiting end then, with outcome `dropped_at_shutdown`.
    ///
    /// Cancel-safe: dropping the returned future aborts the workers, and each key in process is
    /// marked done as its worker's task is dropped, queued again unless the queue is shutting
    /// down, so that `shutdown_with_drain` returns and a later `run` hands the key out again.
    /// The interrupted handlers' futures are dropped; their attempt spans end with outcome
    /// `cancelled`, and the item span too (as `dropped_at_shutdown`) if the key was not queued
    /// again. The traces of keys left queued or waiting stay open for a later `run` and end when
    /// the engine is dropped.
    pub async fn run<H: Handler<K>>(&self, handler: H) {
        let handler = Arc::new(handler);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..self.inner.workers {
            tasks.spawn(worker(Arc::clone(&self.inner), Arc::clone(&handler)));
        }
        while tasks.join_next().await.is_some() {}
        if let Some(traces) = &self.inner.traces {
            traces.drop_all();
        }
        let hook_panics = self.inner.hook_panics.load(Ordering::Relaxed);
        if hook_panics > 0 {
            eprintln!(
                "traceq: engine {}: outcome hook panicked {hook_panics} times in total",
                self.inner.queue.name()
            );
        }
    }
}

async fn worker<K, H>(inner: Arc<Inner<K>>, handler: Arc<H>)
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    H: Handler<K>,
{
    let mut requeue = RequeueCell::new();
    let fair = inner.queue.is_fair();
    loop {
        // Without fairness there is no group: the smaller hand-out is cheaper to pass up.
        let (key, requeues, priority, group) = if fair {
            let Some((claim, requeues)) = inner.queue.claim_counted().await else {
                break;
            };
            let Claim {
                key,
                priority,
                group,
                ..
            } = claim;
            (key, requeues, priority, group)
        } else {
            let Some((key, requeues, priority)) = inner.queue.get_ranked().await else {
                break;
            };
            (key, requeues, priority, None)
        };
        let number = requeues + 1;
        let started = inner.outcome_hook.as_ref().map(|_| Instant::now());
        // `None` without a tracer (or under a no-op one): the attempt runs untraced.
        // Until it is settled, a dropped worker (a dropped `run`) hands the key back.
        let mut flight = InFlight {
            inner: &inner,
            key: Some(key),
            item: None,
            priority,
        };
        let begun = inner.traces.as_ref().map(|t| {
            let ranking = Ranking {
                priority,
                group: group.clone(),
            };
            t.begin(flight.key(), number, ranking)
        });
        let ticket = requeue.next();
        let result = match begun {
            // Formatting the key for its trace panicked: the attempt fails without running, and
            // the key, which has no trace, is settled as an untraced one.
            Some(Err(error)) => Err(error),
            Some(Ok(Some((item, job)))) => {
                flight.item = Some(item);
                let key = flight.key().clone();
                let attempt = Attempt::new(key, number, priority, group.clone(), job, ticket);
                run_attempt(&*handler, attempt, inner.attempt_timeout).await
            }
            None | Some(Ok(None)) => {
                let key = flight.key().clone();
                let job = JobContext::default();
                let attempt = Attempt::new(key, number, priority, group.clone(), job, ticket);
                run_attempt(&*handler, attempt, inner.attempt_timeout).await
            }
        };
        let requeue_at = requeue.asked().unwrap_or(priority);
        let (key, item) = flight.disarm();
        let kind = match (&inner.traces, item) {
            (Some(traces), Some(item)) => {
                traces.settle(&key, &item, || settle(&inner, &key, result, requeue_at))
            }
            _ => settle(&inner, &key, result, requeue_at),
        };
        if let (Some(hook), Some(started)) = (&inner.outcome_hook, started) {
            let outcome = Outcome {
                key,
                attempt: number,
                priority,
                group,
                duration: started.elapsed(),
                kind,
            };
            call_hook(hook, &outcome, &inner.hook_panics, inner.queue.name());
        }
    }
}

/// Calls the outcome hook. User code: a panic is counted (the first reported on stderr) and
/// the key's outcome stands.
pub(crate) fn call_hook<K>(
    hook: &OutcomeHook<K>,
    outcome: &Outcome<K>,
    panics: &AtomicU64,
    engine: &str,
) {
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| hook(outcome))) {
        if panics.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!(
                "traceq: engine {engine}: outcome hook panicked: {}; later panics are counted \
                 and their total reported when run returns",
                panic_message(&*panic)
            );
        }
    }
}

/// A key a worker holds between `get` and its settling. Dropped before it is settled — the
/// worker's task aborted because the `run` future was dropped mid-attempt — it marks the key done
/// and queued again (see [`Queue::abandon`]), and ends the attempt's span, so that the key is not
/// left in process for ever.
struct InFlight<'a, K: Eq + Hash + Clone + Send + Sync + 'static> {
    inner: &'a Inner<K>,
    /// `None` once settled.
    key: Option<K>,
    /// The key's trace, once its attempt span started.
    item: Option<Arc<Item>>,
    /// The priority the key was handed out with, to queue it again at.
    priority: i32,
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> InFlight<'_, K> {
    fn key(&self) -> &K {
        self.key.as_ref().expect("a key in flight until disarmed")
    }

    /// The key and its trace, for the worker to settle.
    fn disarm(&mut self) -> (K, Option<Arc<Item>>) {
        (self.key.take().expect("disarmed once"), self.item.take())
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Drop for InFlight<'_, K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let (inner, priority) = (self.inner, self.priority);
        let item = self.item.take();
        // The queue and trace operations run user code (the key's `Hash` and `Eq`, the tracer);
        // a panic must not leave this drop, which may run while the task unwinds.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| match (&inner.traces, item) {
            (Some(traces), Some(item)) => {
                traces.abandon(&key, &item, || inner.queue.abandon(&key, priority));
            }
            _ => {
                inner.queue.abandon(&key, priority);
            }
        }));
    }
}

/// Applies a finished attempt's result to the queue: forget on success, else requeue (at
/// `requeue_at`) or forget.
fn settle<K: Eq + Hash + Clone + Send + Sync + 'static>(
    inner: &Inner<K>,
    key: &K,
    result: Result<(), AttemptError>,
    requeue_at: i32,
) -> OutcomeKind {
    match result {
        Ok(()) => {
            inner.queue.succeed(key);
            OutcomeKind::Succeeded
        }
        Err(error) => match inner.queue.fail(key, inner.max_retries, requeue_at) {
            Failure::Requeued { delay, .. } => OutcomeKind::Requeued { delay, error },
            Failure::Exhausted { .. } => OutcomeKind::Exhausted { error },
            Failure::Dropped => OutcomeKind::DroppedAtShutdown { error },
        },
    }
}

#[cfg(test)]
mod tests;
