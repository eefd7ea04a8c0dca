//! The engine on the durable queue (feature `postgres`): the same builder, [`Handler`],
//! [`Attempt`], [`Outcome`], metric names and tracing as in memory, over a [`PgQueue`] shared by
//! every process that opens the same database, schema and queue name.
//!
//! A program switches backends where it builds the engine: `build()` gives the in-memory
//! [`Engine`](crate::Engine), [`build_postgres`](EngineBuilder::build_postgres) this one.
//!
//! ```text
//!  PgEngineHandle::add ──(key, payload, trace identity)──▶ items ◀── claim ── N workers
//!                                                            ▲                  │ run_attempt
//!                               succeed / fail (+ backoff) ──┴── one statement ─┘ (as in memory)
//! ```
//!
//! # What carries over, and how
//! - Retries: a failed attempt is requeued after the key's backoff (the failure count is a
//!   column of its row, so the backoff is the same whichever process retries it), until it has
//!   failed `max_retries` times; then it moves to the dead letters
//!   ([`PgQueue::failed`]) rather than vanishing, and the outcome is
//!   [`OutcomeKind::Exhausted`]. `with_backoff` sets the stored backoff; a token bucket
//!   (`with_token_bucket`, or the default limiter's 10 qps / 100 burst) and a limiter given to
//!   `with_rate_limiter` apply in this process, max-of with the stored backoff.
//! - Outcomes: as in memory, plus [`OutcomeKind::Unsettled`] when the queue did not take the
//!   result: this worker's lease was lost and another attempt stands, or the completion could
//!   not be recorded. A dead letter's outcome is `Exhausted`.
//! - Metrics ([`PgEngineHandle::metrics`]): the client-go names. Depth, waiting and processing
//!   are the whole queue's, read from the database (one `workqueue_depth` series: the depth is
//!   not split by priority); counters and histograms are this process's.
//! - Shutdown: [`PgEngineHandle::shutdown_with_drain`] stops claiming and lets the attempts in
//!   flight finish and settle; keys still queued stay for the other processes.
//!   [`shutdown`](PgEngineHandle::shutdown) gives the keys in flight back at once (their late
//!   results are `Unsettled`). A dropped [`PgEngine::run`] future leaves its keys to be
//!   reclaimed when their leases expire.
//! - Not on this backend: fairness across groups (refused by `build_postgres`), the span
//!   budget of a segment (`with_max_spans_per_segment`: a durable item is cut by age only), and
//!   the `coalesced_add` events (an add cannot reach a span that another process will build).
//!
//! # Tracing across processes
//! One trace per item, whichever processes add it, run its attempts and finish it: the item's
//! trace identity ([`StoredTrace`]) is drawn at its first traced add and stored with the key.
//! Each attempt's span starts under the stored root (a remote parent) on the process that runs
//! it; the root (`item <name>`) is built when the key is forgotten (success, or retries
//! exhausted), by the process that finishes it, with the stored ids and start time: it ends
//! last, so a tail sampler decides the trace only when the item is done. For the root to get
//! the stored ids, every worker's tracer provider must use
//! [`StoredIdGenerator`](crate::trace::stored::StoredIdGenerator); without it the engine warns
//! once and the root gets ids of its own (the attempts still share one trace). Every worker
//! exports its spans to one `traceq collector` (or a routing tier in front of several), which
//! tail-samples: it holds the attempts of a trace until the root arrives. A key added untraced
//! (by a bare [`PgQueue`], or `traceq queue retry`) gets its identity from its first traced
//! attempt, written back with that attempt's result.
//!
//! A long job is cut by age when an attempt starts: the old segment's root ends (marked
//! continued, linked to the next), and the attempt starts the next segment, a new trace with the
//! same job id, linked back.

use super::attempt::{run_attempt, RequeueCell};
use super::{
    call_hook, panic_message, Attempt, AttemptError, BuildError, EngineBuilder, Handler, JobIdOf,
    LimiterChoice, Outcome, OutcomeHook, OutcomeKind,
};
use crate::metrics::{Histogram, QueueMetrics};
use crate::postgres::{PgClaim, PgError, PgQueue, PgQueueConfig, Settled};
use crate::queue::AddOptions;
use crate::rate_limit::{self, RateLimiter, TokenBucket};
use crate::trace::attributes as attr;
use crate::trace::stored::StoredTrace;
use crate::trace::{
    attempt_builder, end_attempt_span, interned, item_builder, item_outcome, link_to, JobContext,
    KeyFormat, Ranking, TraceConfig,
};
use opentelemetry::baggage::{Baggage, BaggageExt as _};
use opentelemetry::trace::{
    Event, SpanContext, Status, TraceContextExt as _, TraceFlags, TraceState,
};
use opentelemetry::{Context, KeyValue};
use parking_lot::Mutex;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_postgres::GenericClient;

/// Why [`EngineBuilder::build_postgres`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgBuildError {
    /// A setting the in-memory engine refuses too.
    #[error(transparent)]
    Engine(#[from] BuildError),
    /// `with_fairness`: fair queues are in memory only.
    #[error("fairness across groups is not available on the postgres backend")]
    Fairness,
    /// The queue could not be opened.
    #[error(transparent)]
    Queue(#[from] PgError),
}

impl EngineBuilder<String> {
    /// Builds the engine on the durable queue `config` names, connecting (and migrating the
    /// schema) now; see [the durable engine](crate::postgres::PgEngine). The builder's settings
    /// apply as in memory: workers, `max_retries` and `with_backoff` (they replace `config`'s),
    /// the attempt timeout, the outcome hook, the tracer, the trace age and job ids, metrics.
    /// The engine's name defaults to the queue's name.
    ///
    /// # Errors
    /// [`PgBuildError::Engine`] for a setting `build` refuses too, [`PgBuildError::Fairness`]
    /// for `with_fairness`, [`PgBuildError::Queue`] when the database cannot be reached or the
    /// configuration is refused.
    pub async fn build_postgres(self, mut config: PgQueueConfig) -> Result<PgEngine, PgBuildError> {
        if self.fairness.is_some() {
            return Err(PgBuildError::Fairness);
        }
        if self.workers == 0 {
            return Err(BuildError::ZeroWorkers.into());
        }
        if self.max_trace_age.is_zero() {
            return Err(BuildError::ZeroTraceAge.into());
        }
        if self.max_spans_per_segment < 2 {
            return Err(BuildError::TooFewSpansPerSegment.into());
        }
        if self.attempt_timeout.is_some_and(|t| t.is_zero()) {
            return Err(BuildError::ZeroTimeout.into());
        }
        // The stored backoff is the database's; what else limits retries runs here.
        let local: Option<Arc<dyn RateLimiter<String>>> = match self.limiter {
            LimiterChoice::Default => Some(Arc::new(TokenBucket::default())),
            LimiterChoice::Custom(l) => Some(l),
            LimiterChoice::Params { backoff, bucket } => {
                if let Some((base, max)) = backoff {
                    if base.is_zero() && max.is_zero() {
                        return Err(BuildError::ZeroBackoff.into());
                    }
                    rate_limit::ExponentialBackoff::<String>::new(base, max)
                        .map_err(BuildError::RateLimit)?;
                    config = config.with_backoff(base, max);
                }
                match bucket {
                    Some((qps, burst)) => Some(Arc::new(
                        TokenBucket::new(qps, burst).map_err(BuildError::RateLimit)?,
                    )),
                    None => None,
                }
            }
        };
        config = config.with_max_retries(self.max_retries);
        let name = if self.name == crate::DEFAULT_NAME {
            config.queue.clone()
        } else {
            self.name
        };
        let tracing = self.tracing.map(|choice| DurableTracing {
            cfg: TraceConfig {
                tracer: choice.tracer,
                clock: self.trace_clock,
                max_age: self.max_trace_age,
                max_spans: self.max_spans_per_segment,
                queue_name: interned(name.clone()).into(),
                item_span_name: interned(format!("item {name}")),
                attempt_span_name: interned(format!("process {name}")),
            },
            key_format: choice.key_format,
            job_id_of: self.job_id_of,
            noop: AtomicBool::new(false),
            warned_ids: AtomicBool::new(false),
            warned_decode: AtomicBool::new(false),
        });
        let queue = PgQueue::connect(config).await?;
        Ok(PgEngine {
            inner: Arc::new(Durable {
                queue,
                name,
                tracing,
                workers: self.workers,
                attempt_timeout: self.attempt_timeout,
                outcome_hook: self.outcome_hook,
                hook_panics: AtomicU64::new(0),
                limiter: local,
                metrics: DurableMetrics::new(self.metrics, self.workers),
            }),
        })
    }
}

struct Durable {
    queue: PgQueue,
    name: String,
    tracing: Option<DurableTracing>,
    workers: usize,
    attempt_timeout: Option<Duration>,
    outcome_hook: Option<OutcomeHook<String>>,
    hook_panics: AtomicU64,
    /// Limits retries in this process, max-of with the stored backoff.
    limiter: Option<Arc<dyn RateLimiter<String>>>,
    metrics: DurableMetrics,
}

/// The engine on the durable queue: N async workers in this process over a [`PgQueue`] that
/// workers on other machines share. Built by [`EngineBuilder::build_postgres`]; see the
/// [module docs](self) for what carries over from the in-memory engine and how an item keeps
/// one trace across processes.
///
/// # Examples
/// ```no_run
/// use traceq_engine::postgres::{PgEngine, PgQueueConfig};
/// use traceq_engine::{Attempt, Engine};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let engine: PgEngine = Engine::<String>::builder()
///     .with_workers(16)
///     .with_max_retries(3)
///     .build_postgres(PgQueueConfig::new("postgres://app@db/app").with_queue("mail"))
///     .await?;
/// let handle = engine.handle();
/// handle.add_payload("user-42", b"welcome", Default::default()).await?;
/// engine
///     .run(|attempt: Attempt<String>| async move {
///         let body = attempt.payload().unwrap_or_default();
///         println!("mail {} ({} bytes)", attempt.key, body.len());
///         Ok::<(), std::io::Error>(())
///     })
///     .await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgEngine {
    inner: Arc<Durable>,
}

impl fmt::Debug for PgEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgEngine")
            .field("name", &self.inner.name)
            .field("queue", &self.inner.queue)
            .field("workers", &self.inner.workers)
            .field("traced", &self.inner.tracing.is_some())
            .finish_non_exhaustive()
    }
}

impl PgEngine {
    /// A cheap, clonable handle for producers, for reading the queue and for shutting down.
    pub fn handle(&self) -> PgEngineHandle {
        PgEngineHandle {
            inner: Arc::clone(&self.inner),
        }
    }

    /// The queue underneath, for what the handle does not offer (dead letters, lengths,
    /// counters). Its adds skip the engine's tracing.
    pub fn queue(&self) -> &PgQueue {
        &self.inner.queue
    }

    /// Runs the workers until the queue is shut down, then returns once every worker has
    /// settled its current attempt. Must be called inside a tokio runtime.
    pub async fn run<H: Handler<String>>(&self, handler: H) {
        let handler = Arc::new(handler);
        let mut tasks = tokio::task::JoinSet::new();
        for slot in 0..self.inner.workers {
            tasks.spawn(worker(Arc::clone(&self.inner), Arc::clone(&handler), slot));
        }
        while tasks.join_next().await.is_some() {}
        let hook_panics = self.inner.hook_panics.load(Ordering::Relaxed);
        if hook_panics > 0 {
            eprintln!(
                "traceq: engine {}: outcome hook panicked {hook_panics} times in total",
                self.inner.name
            );
        }
    }
}

/// A producer's handle on a [`PgEngine`]: adds work (with the key's trace identity when the
/// engine traces), reads the queue, and shuts this process's engine down.
#[derive(Clone)]
pub struct PgEngineHandle {
    inner: Arc<Durable>,
}

impl fmt::Debug for PgEngineHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PgEngineHandle")
            .field(&self.inner.name)
            .finish()
    }
}

impl PgEngineHandle {
    /// See [`PgQueue::add`].
    ///
    /// # Errors
    /// As [`PgQueue::add`].
    pub async fn add(&self, key: &str) -> Result<(), PgError> {
        self.add_many(&[(key, None)], None, AddOptions::new()).await
    }

    /// As [`add`](Self::add), continuing a producer's trace: the item's root becomes a child of
    /// `cx`'s span and `cx`'s baggage travels on (only if the key has no trace yet).
    ///
    /// # Errors
    /// As [`PgQueue::add`].
    pub async fn add_with_context(&self, key: &str, cx: &Context) -> Result<(), PgError> {
        self.add_many(&[(key, None)], Some(cx), AddOptions::new())
            .await
    }

    /// See [`PgQueue::add_with`].
    ///
    /// # Errors
    /// As [`PgQueue::add`].
    pub async fn add_with(&self, key: &str, options: AddOptions) -> Result<(), PgError> {
        self.add_many(&[(key, None)], None, options).await
    }

    /// See [`PgQueue::add_after`].
    ///
    /// # Errors
    /// As [`PgQueue::add`].
    pub async fn add_after(&self, key: &str, delay: Duration) -> Result<(), PgError> {
        self.add_with(key, AddOptions::new().with_delay(delay))
            .await
    }

    /// See [`PgQueue::add_rate_limited`].
    ///
    /// # Errors
    /// As [`PgQueue::add`].
    pub async fn add_rate_limited(&self, key: &str) -> Result<(), PgError> {
        self.add_with(key, AddOptions::new().with_rate_limited(true))
            .await
    }

    /// See [`PgQueue::add_payload`].
    ///
    /// # Errors
    /// As [`PgQueue::add`].
    pub async fn add_payload(
        &self,
        key: &str,
        payload: &[u8],
        options: AddOptions,
    ) -> Result<(), PgError> {
        self.add_many(&[(key, Some(payload))], None, options).await
    }

    /// Many keys in one statement (see [`PgQueue::add_many`]), each with its own trace
    /// identity, all children of `cx`'s span when given.
    ///
    /// # Errors
    /// As [`PgQueue::add_many`].
    pub async fn add_many(
        &self,
        items: &[(&str, Option<&[u8]>)],
        cx: Option<&Context>,
        options: AddOptions,
    ) -> Result<(), PgError> {
        let traces: Vec<Option<Vec<u8>>> = match &self.inner.tracing {
            Some(t) => items
                .iter()
                .map(|(key, _)| t.identity(key, cx).map(|s| s.encode()))
                .collect(),
            None => Vec::new(),
        };
        let result = self.inner.queue.add_traced(items, &traces, options).await;
        self.inner.metrics.count_adds(&result, items.len(), options);
        result
    }

    /// As [`PgQueue::add_in`]: the add (and the key's trace identity) is seen only if the
    /// caller's transaction commits.
    ///
    /// # Errors
    /// As [`PgQueue::add_in`].
    pub async fn add_in<C: GenericClient + Sync>(
        &self,
        client: &C,
        key: &str,
        payload: Option<&[u8]>,
        cx: Option<&Context>,
        options: AddOptions,
    ) -> Result<(), PgError> {
        let trace = self
            .inner
            .tracing
            .as_ref()
            .and_then(|t| t.identity(key, cx))
            .map(|s| s.encode());
        let result = self
            .inner
            .queue
            .add_in_traced(client, key, payload, trace.as_deref(), options)
            .await;
        self.inner.metrics.count_adds(&result, 1, options);
        result
    }

    /// The queue underneath (lengths, stats, dead letters, counters).
    pub fn queue(&self) -> &PgQueue {
        &self.inner.queue
    }

    /// The client-go metrics: the queue's depth, waiting and processing counts (read from the
    /// database, so the whole queue's), this process's counters and histograms.
    ///
    /// # Errors
    /// As [`PgQueue::stats`].
    pub async fn metrics(&self) -> Result<QueueMetrics, PgError> {
        let stats = self.inner.queue.stats().await?;
        Ok(self.inner.metrics.snapshot(&self.inner.name, &stats))
    }

    /// Stops claiming and adding; gives the keys in flight back at once (see
    /// [`PgQueue::shutdown`]); workers exit once their handlers return.
    ///
    /// # Errors
    /// As [`PgQueue::shutdown`].
    pub async fn shutdown(&self) -> Result<(), PgError> {
        self.inner.queue.shutdown().await
    }

    /// Stops claiming and adding, lets the attempts in flight finish and settle, then stops.
    /// Keys still queued stay for the other processes.
    ///
    /// # Errors
    /// As [`PgQueue::shutdown_with_drain`].
    pub async fn shutdown_with_drain(&self) -> Result<(), PgError> {
        self.inner.queue.shutdown_with_drain().await
    }

    /// Waits until the queue (every process's share) has nothing ready, waiting or in process,
    /// looking every `poll`.
    ///
    /// # Errors
    /// As [`PgQueue::stats`].
    pub async fn wait_idle(&self, poll: Duration) -> Result<(), PgError> {
        loop {
            let s = self.inner.queue.stats().await?;
            if s.ready + s.waiting + s.processing == 0 {
                return Ok(());
            }
            tokio::time::sleep(poll).await;
        }
    }
}

async fn worker<H: Handler<String>>(inner: Arc<Durable>, handler: Arc<H>, slot: usize) {
    let mut requeue = RequeueCell::new();
    while let Some(mut claim) = inner.queue.claim().await {
        let started = Instant::now();
        inner.metrics.started(slot, started, claim.waited);
        let traced = match &inner.tracing {
            Some(t) => t.begin(&claim),
            None => Ok(None),
        };
        let ticket = requeue.next();
        let payload = claim.payload.take();
        let (result, mut traced) = match traced {
            // Formatting the key for its new trace panicked: the attempt fails unrun.
            Err(error) => (Err(error), None),
            Ok(traced) => {
                let job = traced
                    .as_ref()
                    .map_or_else(JobContext::default, |t| JobContext::attempt(t.cx.clone()));
                let attempt = Attempt::new(
                    claim.key.clone(),
                    claim.attempt,
                    claim.priority,
                    None,
                    job,
                    ticket,
                )
                .with_payload(payload);
                (
                    run_attempt(&*handler, attempt, inner.attempt_timeout).await,
                    traced,
                )
            }
        };
        let kind = settle(&inner, &claim, result, traced.as_mut()).await;
        inner.metrics.finished(slot, started, &kind);
        if let (Some(t), Some(traced)) = (&inner.tracing, traced) {
            t.end(traced, &kind, claim.attempt);
        }
        if let Some(hook) = &inner.outcome_hook {
            let outcome = Outcome {
                key: claim.key.clone(),
                attempt: claim.attempt,
                priority: claim.priority,
                group: None,
                duration: started.elapsed(),
                kind,
            };
            call_hook(hook, &outcome, &inner.hook_panics, &inner.name);
        }
    }
}

/// Records the attempt's result in the queue and says what became of the key.
async fn settle(
    inner: &Durable,
    claim: &PgClaim,
    result: Result<(), AttemptError>,
    traced: Option<&mut Traced>,
) -> OutcomeKind {
    let min_delay = match (&result, &inner.limiter) {
        (Err(_), Some(limiter)) => limiter.when(&claim.key),
        (Ok(()), Some(limiter)) => {
            limiter.forget(&claim.key);
            Duration::ZERO
        }
        _ => Duration::ZERO,
    };
    // The identity goes back only when this attempt began or cut the key's trace.
    let trace = traced.and_then(|t| t.changed.then(|| t.stored.encode()));
    let error_text = result.as_ref().err().map(ToString::to_string);
    let settled = inner
        .queue
        .settle_attempt(claim, error_text, trace, min_delay)
        .await;
    let kind = match (result, settled) {
        (Ok(()), Ok(Settled::Stale)) => OutcomeKind::Unsettled {
            error: None,
            cause: STALE.to_owned(),
        },
        (Ok(()), Ok(_)) => OutcomeKind::Succeeded,
        (
            Err(error),
            Ok(Settled::Requeued {
                exhausted: false,
                delay,
            }),
        ) => OutcomeKind::Requeued { delay, error },
        (
            Err(error),
            Ok(
                Settled::Requeued {
                    exhausted: true, ..
                }
                | Settled::DeadLettered,
            ),
        ) => OutcomeKind::Exhausted { error },
        (Err(error), Ok(Settled::Stale)) => OutcomeKind::Unsettled {
            error: Some(error),
            cause: STALE.to_owned(),
        },
        (Err(error), Ok(other)) => OutcomeKind::Unsettled {
            error: Some(error),
            cause: format!("unexpected settlement {other:?}"),
        },
        (result, Err(e)) => OutcomeKind::Unsettled {
            error: result.err(),
            cause: e.to_string(),
        },
    };
    if matches!(kind, OutcomeKind::Exhausted { .. }) {
        if let Some(limiter) = &inner.limiter {
            limiter.forget(&claim.key);
        }
    }
    kind
}

const STALE: &str = "the key's lease was lost and another attempt claimed it";

/// Tracing settings and state of a durable engine.
struct DurableTracing {
    cfg: TraceConfig,
    key_format: KeyFormat<String>,
    job_id_of: Option<JobIdOf<String>>,
    /// Set once the tracer proved a no-op: from then on no tracing work.
    noop: AtomicBool,
    warned_ids: AtomicBool,
    warned_decode: AtomicBool,
}

/// A running attempt's trace.
struct Traced {
    stored: StoredTrace,
    /// Whether `stored` is new (begun or cut in this attempt) and must be written back.
    changed: bool,
    /// The attempt span's context.
    cx: Context,
}

impl DurableTracing {
    /// A new identity for `key`: `None` if the key formatter or job id closure panicked (the
    /// key is then added untraced and its first attempt tries again) or the tracer is a no-op.
    fn identity(&self, key: &str, parent: Option<&Context>) -> Option<StoredTrace> {
        if self.noop.load(Ordering::Relaxed) {
            return None;
        }
        self.fresh(key, parent).ok()
    }

    fn fresh(&self, key: &str, parent: Option<&Context>) -> Result<StoredTrace, AttemptError> {
        let owned = key.to_owned();
        let texts = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let job_id = self.job_id_of.as_ref().and_then(|f| f(&owned));
            ((self.key_format)(&owned), job_id)
        }));
        let (key_text, job_id) =
            texts.map_err(|panic| AttemptError::KeyFormatPanicked(panic_message(&*panic)))?;
        Ok(StoredTrace::begin(&key_text, job_id.as_deref(), parent))
    }

    /// The attempt's trace: the stored identity (or a new one), cut into a new segment if it is
    /// too old, and the attempt span started under its root. `Ok(None)` for a no-op tracer.
    fn begin(&self, claim: &PgClaim) -> Result<Option<Traced>, AttemptError> {
        if self.noop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let decoded = claim.trace.as_deref().map(StoredTrace::decode);
        let (mut stored, mut changed) = match decoded {
            Some(Ok(stored)) => (stored, false),
            Some(Err(error)) => {
                if !self.warned_decode.swap(true, Ordering::Relaxed) {
                    tracing::warn!(key = %claim.key, %error,
                        "a stored trace identity could not be read; the key starts a new trace");
                }
                (self.fresh(&claim.key, None)?, true)
            }
            None => (self.fresh(&claim.key, None)?, true),
        };
        let mut previous = None;
        let age = SystemTime::now()
            .duration_since(stored.start)
            .unwrap_or_default();
        if age >= self.cfg.max_age {
            let next = self.cut(&stored, claim.attempt.saturating_sub(1));
            previous = Some(root_context(&stored));
            stored = next;
            changed = true;
        }
        let parent = stored.parent_context();
        let ranking = Ranking {
            priority: claim.priority,
            group: None,
        };
        let mut builder = attempt_builder(
            &self.cfg,
            claim.attempt,
            &ranking,
            claim.waited,
            stored.segment,
            parent.baggage(),
        );
        if let Some(previous) = previous {
            builder = builder.with_links(vec![link_to(previous, "previous_segment")]);
        }
        let cx = self.cfg.tracer.start_in(builder, &parent, &parent);
        let span_id = cx.span().span_context().span_id();
        // A no-op tracer hands the parent's context back: nothing is recorded, ever.
        if !cx.span().span_context().is_valid() || span_id == stored.root_span_id {
            self.noop.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        Ok(Some(Traced {
            stored,
            changed,
            cx,
        }))
    }

    /// Ends `stored`'s segment and returns the next one, which shares its job id (the first
    /// segment's trace id, if the item had none).
    fn cut(&self, stored: &StoredTrace, attempts: u32) -> StoredTrace {
        let mut next = stored.next_segment();
        if !next.baggage.iter().any(|(k, _)| k == attr::JOB_ID) {
            next.baggage
                .push((attr::JOB_ID.to_owned(), stored.trace_id.to_string()));
        }
        let mut builder = item_builder(&self.cfg, stored.segment, &Baggage::new())
            .with_links(vec![link_to(root_context(&next), "next_segment")]);
        let attributes = builder.attributes.get_or_insert_with(Vec::new);
        attributes.push(KeyValue::new(attr::SEGMENT_CONTINUED, true));
        attributes.push(KeyValue::new(attr::ATTEMPTS_TOTAL, i64::from(attempts)));
        self.end_root(stored, builder, None);
        next
    }

    /// Ends the attempt span with what became of the key; ends the item (its root) if the key
    /// was forgotten.
    fn end(&self, traced: Traced, kind: &OutcomeKind, attempts: u32) {
        end_attempt_span(&traced.cx.span(), kind);
        let Some(item_outcome) = item_outcome(kind) else {
            return;
        };
        let mut builder = item_builder(&self.cfg, traced.stored.segment, &Baggage::new());
        let attributes = builder.attributes.get_or_insert_with(Vec::new);
        attributes.push(KeyValue::new(attr::ATTEMPTS_TOTAL, i64::from(attempts)));
        attributes.push(KeyValue::new(attr::OUTCOME, item_outcome));
        let mut status = None;
        if let OutcomeKind::Exhausted { error } = kind {
            builder.events = Some(vec![Event::new(
                attr::EVENT_FORGET,
                SystemTime::now(),
                vec![KeyValue::new(attr::REASON, "max retries reached")],
                0,
            )]);
            status = Some(Status::error(error.to_string()));
        }
        self.end_root(&traced.stored, builder, status);
    }

    fn end_root(
        &self,
        stored: &StoredTrace,
        builder: opentelemetry::trace::SpanBuilder,
        status: Option<Status>,
    ) {
        let honoured = stored.end_root_in(&*self.cfg.tracer, builder, status);
        if !honoured && !self.warned_ids.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the tracer provider did not give an item's root span its stored ids: install \
                 traceq_engine::trace::stored::StoredIdGenerator in every worker's provider \
                 (with_id_generator), or the item spans will not be the roots of their traces"
            );
        }
    }
}

/// `stored`'s root as a span context, for links.
fn root_context(stored: &StoredTrace) -> SpanContext {
    let flags = if stored.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        stored.trace_id,
        stored.root_span_id,
        flags,
        false,
        TraceState::default(),
    )
}

/// This process's counters and histograms.
struct DurableMetrics {
    on: bool,
    adds: AtomicU64,
    retries: AtomicU64,
    exhausted: AtomicU64,
    refused_adds: AtomicU64,
    durations: Mutex<(Histogram, Histogram)>,
    /// When each worker's attempt in flight started.
    running: Box<[Mutex<Option<Instant>>]>,
}

impl DurableMetrics {
    fn new(on: bool, workers: usize) -> Self {
        Self {
            on,
            adds: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
            refused_adds: AtomicU64::new(0),
            durations: Mutex::default(),
            running: (0..if on { workers } else { 0 })
                .map(|_| Mutex::new(None))
                .collect(),
        }
    }

    fn count_adds(&self, result: &Result<(), PgError>, n: usize, options: AddOptions) {
        match result {
            Ok(()) => {
                self.adds.fetch_add(n as u64, Ordering::Relaxed);
                if options.rate_limited {
                    self.retries.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Err(PgError::ShutDown) => {
                self.refused_adds.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }

    fn started(&self, slot: usize, at: Instant, waited: Duration) {
        if !self.on {
            return;
        }
        self.durations.lock().0.observe(waited);
        if let Some(s) = self.running.get(slot) {
            *s.lock() = Some(at);
        }
    }

    fn finished(&self, slot: usize, started: Instant, kind: &OutcomeKind) {
        match kind {
            OutcomeKind::Requeued { .. } => {
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
            OutcomeKind::Exhausted { .. } => {
                self.exhausted.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if !self.on {
            return;
        }
        self.durations.lock().1.observe(started.elapsed());
        if let Some(s) = self.running.get(slot) {
            *s.lock() = None;
        }
    }

    fn snapshot(&self, name: &str, stats: &crate::postgres::PgStats) -> QueueMetrics {
        let (queue_duration, work_duration) = self.durations.lock().clone();
        let now = Instant::now();
        let running: Vec<f64> = self
            .running
            .iter()
            .filter_map(|s| s.lock().map(|at| now.duration_since(at).as_secs_f64()))
            .collect();
        QueueMetrics {
            name: name.to_owned(),
            depth: stats.ready,
            waiting: stats.waiting,
            processing: stats.processing,
            adds_total: self.adds.load(Ordering::Relaxed),
            retries_total: self.retries.load(Ordering::Relaxed),
            queue_duration,
            work_duration,
            unfinished_work_seconds: running.iter().sum(),
            longest_running_processor_seconds: running.iter().copied().fold(0.0, f64::max),
            dropped_adds_total: self.refused_adds.load(Ordering::Relaxed),
            exhausted_total: self.exhausted.load(Ordering::Relaxed),
            ..QueueMetrics::default()
        }
    }
}
