//! One item's trace: its spans, baggage and segments, shared by the worker running an attempt and
//! the handler's [`JobContext`].

use super::attributes as attr;
use super::ErasedTracer;
use crate::clock::Clock;
use crate::engine::OutcomeKind;
use opentelemetry::baggage::{Baggage, BaggageExt, KeyValueMetadata};
use opentelemetry::trace::{
    Link, SpanBuilder, SpanContext, SpanKind, SpanRef, Status, TraceContextExt, TraceId,
};
use opentelemetry::{Context, KeyValue, StringValue, Value};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Default maximum age of one trace segment before a long job continues in a linked trace.
pub const DEFAULT_MAX_TRACE_AGE: Duration = Duration::from_secs(60 * 60);
/// Default span budget of one trace segment.
pub const DEFAULT_MAX_SPANS_PER_SEGMENT: u32 = 10_000;

/// Engine-wide tracing settings, fixed at build.
pub(crate) struct TraceConfig {
    pub(crate) tracer: Box<dyn ErasedTracer>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) max_age: Duration,
    pub(crate) max_spans: u32,
    /// Interned (see [`interned`]), as the span names: copying it onto a span is a plain copy,
    /// not a reference count.
    pub(crate) queue_name: StringValue,
    /// Interned (see [`interned`]): a span name costs no allocation per span.
    pub(crate) item_span_name: &'static str,
    pub(crate) attempt_span_name: &'static str,
}

/// Interns a queue name or a span name. Span names derive from queue names, so the set is small
/// and bounded by the number of distinct queue names a process uses; each is kept for the
/// process's life.
pub(crate) fn interned(name: String) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Mutex::default).lock();
    if let Some(known) = names.get(name.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    leaked
}

impl fmt::Debug for TraceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceConfig")
            .field("queue_name", &self.queue_name)
            .field("max_age", &self.max_age)
            .field("max_spans", &self.max_spans)
            .finish_non_exhaustive()
    }
}

/// The trace of one key, from its first add until it is forgotten.
#[derive(Debug)]
pub(crate) struct Item {
    state: Mutex<State>,
}

/// The attempt span of a running attempt.
#[derive(Debug)]
pub(crate) struct Running {
    cx: Context,
    number: u32,
    ranking: Ranking,
}

/// A key's priority and group, recorded on its attempt spans.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ranking {
    pub(crate) priority: i32,
    pub(crate) group: Option<Arc<str>>,
}

/// What a finished attempt's span is closed with.
pub(crate) type AttemptEnd = Option<Running>;

#[derive(Debug)]
struct State {
    /// Baggage only, no span: the parent of every new segment's root. Every baggage entry is
    /// copied onto each span the engine starts.
    base: Context,
    /// The current segment's item span.
    item_cx: Context,
    attempt: Option<Running>,
    segment: i64,
    /// When the current segment reaches the maximum age; `None` if that is past the clock's
    /// range. A comparison per check, not a subtraction.
    segment_due: Option<Instant>,
    /// Spans counted against the current segment's budget.
    spans: u32,
    attempts_total: i64,
    queued_at: Instant,
    first_trace_id: TraceId,
    has_job_id: bool,
    ended: bool,
}

/// `Baggage` is not `Clone`: copies its entries, metadata included.
fn copy_baggage(baggage: &Baggage) -> Baggage {
    baggage
        .iter()
        .map(|(k, (v, m))| KeyValueMetadata::new(k.clone(), v.clone(), m.as_str().to_owned()))
        .collect()
}

/// Copies every baggage entry onto `attrs`, straight from the baggage: no vector in between.
fn push_baggage(attrs: &mut Vec<KeyValue>, baggage: &Baggage) {
    attrs.extend(
        baggage
            .iter()
            .map(|(k, (v, _))| KeyValue::new(k.clone(), Value::String(v.clone()))),
    );
}

/// Room for the attributes set after a span started (outcome, attempts, segment flags, job id),
/// so the SDK's attribute vector is not reallocated then.
const LATE_ATTRIBUTES: usize = 4;

pub(crate) fn item_builder(cfg: &TraceConfig, segment: i64, baggage: &Baggage) -> SpanBuilder {
    let mut all = Vec::with_capacity(3 + baggage.len() + LATE_ATTRIBUTES);
    all.push(KeyValue::new(attr::MESSAGING_SYSTEM, attr::SYSTEM));
    all.push(KeyValue::new(
        attr::MESSAGING_DESTINATION_NAME,
        Value::String(cfg.queue_name.clone()),
    ));
    all.push(KeyValue::new(attr::SEGMENT, segment));
    push_baggage(&mut all, baggage);
    let mut builder = SpanBuilder::from_name(cfg.item_span_name).with_kind(SpanKind::Internal);
    builder.attributes = Some(all); // as is: `with_attributes` would not keep the spare room
    builder
}

pub(crate) fn attempt_builder(
    cfg: &TraceConfig,
    number: u32,
    ranking: &Ranking,
    wait: Duration,
    segment: i64,
    baggage: &Baggage,
) -> SpanBuilder {
    let mut all = Vec::with_capacity(9 + baggage.len() + LATE_ATTRIBUTES);
    all.push(KeyValue::new(attr::MESSAGING_SYSTEM, attr::SYSTEM));
    all.push(KeyValue::new(
        attr::MESSAGING_DESTINATION_NAME,
        Value::String(cfg.queue_name.clone()),
    ));
    all.push(KeyValue::new(attr::MESSAGING_OPERATION_TYPE, "process"));
    all.push(KeyValue::new(attr::ATTEMPT, i64::from(number)));
    all.push(KeyValue::new(attr::RETRY, number > 1));
    all.push(KeyValue::new(attr::PRIORITY, i64::from(ranking.priority)));
    if let Some(group) = &ranking.group {
        all.push(KeyValue::new(attr::GROUP, Arc::clone(group)));
    }
    all.push(KeyValue::new(attr::QUEUE_WAIT_MS, wait.as_secs_f64() * 1e3));
    all.push(KeyValue::new(attr::SEGMENT, segment));
    push_baggage(&mut all, baggage);
    let mut builder = SpanBuilder::from_name(cfg.attempt_span_name).with_kind(SpanKind::Consumer);
    builder.attributes = Some(all);
    builder
}

pub(crate) fn link_to(span_context: SpanContext, kind: &'static str) -> Link {
    Link::new(span_context, vec![KeyValue::new(attr::LINK_KIND, kind)], 0)
}

/// Why the key was forgotten after an attempt that ended so, if it was.
pub(crate) fn forget_reason(kind: &OutcomeKind) -> Option<&'static str> {
    match kind {
        OutcomeKind::Exhausted { .. } => Some("max retries reached"),
        OutcomeKind::DroppedAtShutdown { .. } => Some("engine shutting down"),
        _ => None,
    }
}

/// The item's outcome when an attempt that ended so forgot its key; `None` if the key lives on.
pub(crate) fn item_outcome(kind: &OutcomeKind) -> Option<&'static str> {
    match kind {
        OutcomeKind::Succeeded => Some(attr::OUTCOME_SUCCEEDED),
        OutcomeKind::Exhausted { .. } => Some(attr::OUTCOME_EXHAUSTED),
        OutcomeKind::DroppedAtShutdown { .. } => Some(attr::OUTCOME_DROPPED),
        _ => None,
    }
}

/// Ends an attempt's span with what became of its key: the outcome attribute, the requeue,
/// forget or unsettled event, and the error status of a failed attempt. Shared by the in-memory
/// and the durable engine.
pub(crate) fn end_attempt_span(span: &SpanRef<'_>, kind: &OutcomeKind) {
    let outcome = match kind {
        OutcomeKind::Succeeded => attr::OUTCOME_SUCCEEDED,
        OutcomeKind::Requeued { .. } => attr::OUTCOME_REQUEUED,
        OutcomeKind::Exhausted { .. } => attr::OUTCOME_EXHAUSTED,
        OutcomeKind::DroppedAtShutdown { .. } => attr::OUTCOME_DROPPED,
        // Durable attempts only; an in-memory attempt never ends so.
        OutcomeKind::Unsettled { .. } => attr::OUTCOME_UNSETTLED,
    };
    span.set_attribute(KeyValue::new(attr::OUTCOME, outcome));
    match kind {
        OutcomeKind::Requeued { delay, .. } => span.add_event(
            attr::EVENT_REQUEUE,
            vec![KeyValue::new(attr::BACKOFF_MS, delay.as_secs_f64() * 1e3)],
        ),
        OutcomeKind::Unsettled { cause, .. } => span.add_event(
            attr::OUTCOME_UNSETTLED,
            vec![KeyValue::new(attr::REASON, cause.clone())],
        ),
        _ => {}
    }
    if let Some(reason) = forget_reason(kind) {
        span.add_event(
            attr::EVENT_FORGET,
            vec![KeyValue::new(attr::REASON, reason)],
        );
    }
    if let Some(error) = kind.error() {
        span.set_status(Status::error(error.to_string()));
    }
    span.end();
}

impl Item {
    /// Starts the key's trace: a new root, or a child of `parent`'s span when it has one. The
    /// parent's baggage is kept; the item key and job id are added to it.
    ///
    /// `None` when the tracer gave a root span no valid span context: it is a no-op tracer (the
    /// API's, or `global::tracer` with no provider installed), and tracing is pointless.
    pub(crate) fn start(
        cfg: &TraceConfig,
        key: Arc<str>,
        job_id: Option<String>,
        parent: Option<&Context>,
    ) -> Option<Self> {
        let now = cfg.clock.now();
        let mut baggage = parent.map_or_else(Baggage::new, |p| copy_baggage(p.baggage()));
        // Without a job id or a parent's baggage there is no job id entry: no lookup needed.
        let may_have_job_id = job_id.is_some() || parent.is_some();
        // Shared strings: every copy onto a span is a reference count, not an allocation.
        baggage.insert(attr::ITEM_KEY, key);
        if let Some(id) = job_id {
            baggage.insert(attr::JOB_ID, Arc::<str>::from(id));
        }
        let has_job_id = may_have_job_id && baggage.get(attr::JOB_ID).is_some();
        let builder = item_builder(cfg, 1, &baggage);
        let base = Context::new().with_baggage(baggage);
        let item_cx = match parent {
            Some(p) if p.span().span_context().is_valid() => cfg.tracer.start_in(builder, p, &base),
            _ => {
                let item_cx = cfg.tracer.start_in(builder, &base, &base);
                if !item_cx.span().span_context().is_valid() {
                    return None;
                }
                item_cx
            }
        };
        let first_trace_id = item_cx.span().span_context().trace_id();
        Some(Self {
            state: Mutex::new(State {
                base,
                item_cx,
                attempt: None,
                segment: 1,
                segment_due: now.checked_add(cfg.max_age),
                spans: 1,
                attempts_total: 0,
                queued_at: now,
                first_trace_id,
                has_job_id,
                ended: false,
            }),
        })
    }

    /// Records an add that found the key already known (queued, waiting or in process).
    pub(crate) fn coalesced(&self, parent: Option<&Context>) {
        let st = self.state.lock();
        if st.ended {
            return;
        }
        let span = st.item_cx.span();
        span.add_event(attr::EVENT_COALESCED_ADD, Vec::new());
        if let Some(p) = parent {
            let sc = p.span().span_context().clone();
            if sc.is_valid() {
                span.add_link(sc, vec![KeyValue::new(attr::LINK_KIND, "coalesced_add")]);
            }
        }
    }

    /// Starts attempt `number`'s span, first cutting the segment if it is due.
    pub(crate) fn begin_attempt(&self, cfg: &TraceConfig, number: u32, ranking: Ranking) {
        let mut st = self.state.lock();
        let now = cfg.clock.now();
        st.cut_if_due(cfg, now, 1);
        st.spans += 1;
        st.attempts_total += 1;
        let wait = now.saturating_duration_since(st.queued_at);
        let builder = attempt_builder(cfg, number, &ranking, wait, st.segment, st.base.baggage());
        let cx = cfg.tracer.start_in(builder, &st.item_cx, &st.item_cx);
        st.attempt = Some(Running {
            cx,
            number,
            ranking,
        });
    }

    /// Takes the running attempt's span once its key is settled in the queue; for a re-queued
    /// key, it counts as queued from now on. Called under the trace table's lock, so a worker
    /// that picks the re-queued key up at once cannot mix the two attempts up.
    pub(crate) fn take_running(&self, cfg: &TraceConfig, requeued: bool) -> AttemptEnd {
        let mut st = self.state.lock();
        if requeued {
            st.queued_at = cfg.clock.now();
        }
        st.attempt.take()
    }

    /// Ends the attempt's span with what became of the key; ends the item span if the key was
    /// forgotten.
    pub(crate) fn close(&self, running: AttemptEnd, kind: &OutcomeKind) {
        let (reason, item_outcome) = (forget_reason(kind), item_outcome(kind));
        if let Some(running) = running {
            end_attempt_span(&running.cx.span(), kind);
        }
        if let Some(item_outcome) = item_outcome {
            let error = match kind {
                OutcomeKind::Exhausted { error } => Some(error.to_string()),
                _ => None,
            };
            self.state.lock().end_item(item_outcome, reason, error);
        }
    }

    /// Ends the span of an attempt cut short by a dropped `run` future; ends the item span too
    /// if the key was not queued again (the engine was shutting down).
    pub(crate) fn cancel(&self, running: AttemptEnd, forgotten: bool) {
        if let Some(running) = running {
            let span = running.cx.span();
            span.set_attribute(KeyValue::new(attr::OUTCOME, attr::OUTCOME_CANCELLED));
            span.end();
        }
        if forgotten {
            self.state
                .lock()
                .end_item(attr::OUTCOME_DROPPED, Some("engine shut down"), None);
        }
    }

    /// Ends the trace of a key the engine never got to (or could not retry) before it stopped.
    pub(crate) fn drop_at_shutdown(&self) {
        let mut st = self.state.lock();
        if let Some(running) = st.attempt.take() {
            running.cx.span().end();
        }
        st.end_item(attr::OUTCOME_DROPPED, Some("engine shut down"), None);
    }

    /// The context a handler's span should start under: the running attempt's, in the current
    /// segment. Counts one span against the segment's budget and cuts the segment first if it
    /// is due.
    pub(crate) fn context(&self, cfg: &TraceConfig) -> Context {
        let mut st = self.state.lock();
        if st.ended {
            return st.item_cx.clone();
        }
        st.cut_if_due(cfg, cfg.clock.now(), 1);
        st.spans += 1;
        match &st.attempt {
            Some(running) => running.cx.clone(),
            None => st.item_cx.clone(),
        }
    }
}

impl State {
    fn cut_if_due(&mut self, cfg: &TraceConfig, now: Instant, incoming: u32) {
        if self.ended {
            return;
        }
        let too_old = self.segment_due.is_some_and(|due| now >= due);
        let too_big = self.spans.saturating_add(incoming) > cfg.max_spans;
        if too_old || too_big {
            self.cut(cfg, now);
        }
    }

    /// Ends the current segment and starts the next, linked both ways, in a new trace.
    fn cut(&mut self, cfg: &TraceConfig, now: Instant) {
        if !self.has_job_id {
            // The segments of a split job must share an id: the first segment's trace id.
            let id: Arc<str> = self.first_trace_id.to_string().into();
            let mut baggage = copy_baggage(self.base.baggage());
            baggage.insert(attr::JOB_ID, Arc::clone(&id));
            self.base = Context::new().with_baggage(baggage);
            self.item_cx
                .span()
                .set_attribute(KeyValue::new(attr::JOB_ID, Arc::clone(&id)));
            if let Some(running) = &self.attempt {
                running
                    .cx
                    .span()
                    .set_attribute(KeyValue::new(attr::JOB_ID, id));
            }
            self.has_job_id = true;
        }
        self.segment += 1;
        let previous = self.item_cx.span().span_context().clone();
        let builder = item_builder(cfg, self.segment, self.base.baggage())
            .with_links(vec![link_to(previous, "previous_segment")]);
        let next_cx = cfg.tracer.start_in(builder, &self.base, &self.base);
        let next_sc = next_cx.span().span_context().clone();
        self.spans = 1;
        if let Some(running) = self.attempt.take() {
            let span = running.cx.span();
            span.set_attribute(KeyValue::new(attr::SEGMENT_CONTINUED, true));
            span.set_attribute(KeyValue::new(attr::OUTCOME, attr::OUTCOME_CONTINUED));
            span.add_link(
                next_sc.clone(),
                vec![KeyValue::new(attr::LINK_KIND, "next_segment")],
            );
            span.end();
            let previous = span.span_context().clone();
            let builder = attempt_builder(
                cfg,
                running.number,
                &running.ranking,
                Duration::ZERO,
                self.segment,
                self.base.baggage(),
            )
            .with_links(vec![link_to(previous, "previous_segment")]);
            self.attempt = Some(Running {
                cx: cfg.tracer.start_in(builder, &next_cx, &next_cx),
                number: running.number,
                ranking: running.ranking,
            });
            self.spans += 1;
        }
        let old = self.item_cx.span();
        old.set_attribute(KeyValue::new(attr::SEGMENT_CONTINUED, true));
        old.set_attribute(KeyValue::new(attr::ATTEMPTS_TOTAL, self.attempts_total));
        old.add_link(
            next_sc,
            vec![KeyValue::new(attr::LINK_KIND, "next_segment")],
        );
        old.end();
        self.item_cx = next_cx;
        self.segment_due = now.checked_add(cfg.max_age);
    }

    fn end_item(
        &mut self,
        outcome: &'static str,
        reason: Option<&'static str>,
        error: Option<String>,
    ) {
        if self.ended {
            return;
        }
        self.ended = true;
        let span = self.item_cx.span();
        span.set_attributes([
            KeyValue::new(attr::ATTEMPTS_TOTAL, self.attempts_total),
            KeyValue::new(attr::OUTCOME, outcome),
        ]);
        if let Some(reason) = reason {
            span.add_event(
                attr::EVENT_FORGET,
                vec![KeyValue::new(attr::REASON, reason)],
            );
        }
        if let Some(error) = error {
            span.set_status(Status::error(error));
        }
        span.end();
    }
}

/// The handler's handle on its item's trace. Cheap to clone; obtained from
/// [`Attempt::job`](crate::Attempt::job).
///
/// [`context`](Self::context) returns the context a span should start under: the running
/// attempt's. It re-checks the segment's age and span budget on every call, so in a long-running
/// attempt the spans started after a cut land in the new segment's trace. Each call counts as one
/// span against the segment's budget. Without a tracer it returns `Context::current()` and costs
/// nothing.
///
/// # Examples
/// ```
/// use opentelemetry::trace::Tracer;
/// use traceq_engine::Attempt;
///
/// async fn handle(attempt: Attempt<String>) -> Result<(), std::io::Error> {
///     let tracer = opentelemetry::global::tracer("my-handler");
///     let job = attempt.job().clone();
///     let _step = tracer.start_with_context("step one", &job.context());
///     // ... a long step; a later step may land in the next segment:
///     let _next = tracer.start_with_context("step two", &job.context());
///     Ok(())
/// }
/// ```
#[derive(Clone, Default)]
pub struct JobContext {
    bound: Bound,
}

/// What a [`JobContext`] hands out.
#[derive(Clone, Default)]
enum Bound {
    /// No tracer: `Context::current()`.
    #[default]
    Untraced,
    /// An in-memory item: its running attempt, in its current segment.
    Item(Arc<TraceConfig>, Arc<Item>),
    /// A durable item's attempt: its span, fixed for the attempt (the segment is chosen when
    /// the attempt starts).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Attempt(Context),
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("traced", &self.is_traced())
            .finish()
    }
}

impl JobContext {
    pub(crate) fn bound(cfg: Arc<TraceConfig>, item: Arc<Item>) -> Self {
        Self {
            bound: Bound::Item(cfg, item),
        }
    }

    /// A durable attempt's: `attempt` holds its span.
    #[cfg(feature = "postgres")]
    pub(crate) fn attempt(attempt: Context) -> Self {
        Self {
            bound: Bound::Attempt(attempt),
        }
    }

    /// The context to start a span under: the running attempt's span in the current segment,
    /// with the item's baggage. `Context::current()` when the engine has no tracer.
    pub fn context(&self) -> Context {
        match &self.bound {
            Bound::Item(cfg, item) => item.context(cfg),
            Bound::Attempt(cx) => cx.clone(),
            Bound::Untraced => Context::current(),
        }
    }

    /// Whether the engine traces this item.
    pub fn is_traced(&self) -> bool {
        !matches!(self.bound, Bound::Untraced)
    }
}
