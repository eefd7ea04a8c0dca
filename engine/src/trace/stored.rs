//! An item's trace when its key lives in a database and its attempts run on many machines: what
//! is stored beside the key, and how any process joins that one trace and ends it.
//!
//! # The design, and why
//!
//! In memory, the item span is the trace's root: started at the key's first add, ended when the
//! key is forgotten, so the root ends last and a tail sampler decides the trace when the item is
//! done. A durable key outlives processes: its first add, its attempts and its end may each
//! happen on another machine. `opentelemetry` 0.33's `SpanBuilder` cannot set a span id, so a
//! process cannot end a span another one started, nor start one with an id chosen in advance.
//!
//! So the item span is started *at the end*, with the identity chosen at the start:
//!
//! ```text
//!  first add (any process)        attempts (any process)            done (any process)
//!  draw trace id + root span id   span `attempt` whose parent is    span `item` built with the
//!  store them, the start time,    the stored root (a remote         stored ids and start time,
//!  baggage, job id, segment  ───▶ parent): it joins the trace  ───▶ ended now: the root ends
//!  beside the key                 before its root exists            last, as in memory
//! ```
//!
//! The ids reach the SDK through [`StoredIdGenerator`], which each worker installs in its
//! tracer provider (`SdkTracerProvider::builder().with_id_generator(StoredIdGenerator::default())`):
//! it hands out fresh random ids, except for the one span the engine builds inside
//! [`StoredTrace::end_root`], which gets the stored ones. Rejected alternative: a short
//! producer span as the root at the first add plus a completion marker the sampler waits for.
//! It works with any id generator, but the root would end first, so every sampler (the
//! OpenTelemetry Collector's too) would need to learn the marker, and the trace's shape would
//! differ from the in-memory one.
//!
//! Without [`StoredIdGenerator`] the root gets ids of its own: [`StoredTrace::end_root`] says
//! so (it returns `false`), so the engine can warn; the attempts still share one trace id.
//!
//! Every worker exports its spans to `traceq collector` (OTLP), which tail-samples: the
//! attempts wait in its buffer, and the trace is decided once the root arrives and the
//! quiet period after it passes (within `decision_wait`, as for any trace).

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::baggage::{Baggage, BaggageExt as _};
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use super::attributes as attr;

/// Version of [`StoredTrace::encode`]'s layout.
const VERSION: u8 = 1;
/// Most baggage entries kept (the W3C baggage limit is 180).
pub const MAX_BAGGAGE_ENTRIES: usize = 180;
/// Largest encoded identity accepted by [`StoredTrace::decode`] (the W3C baggage limit is
/// 8,192 bytes, plus room for the rest).
pub const MAX_ENCODED_BYTES: usize = 16 << 10;

thread_local! {
    /// Ids [`StoredIdGenerator`] hands to the next span built on this thread, set only around
    /// that one build.
    static NEXT_IDS: Cell<(Option<TraceId>, Option<SpanId>)> = const { Cell::new((None, None)) };
}

/// The id generator of a durable worker's tracer provider: random ids (the SDK's own
/// generator), except for an item's root span, which gets the ids stored with its key.
#[derive(Debug, Default)]
pub struct StoredIdGenerator {
    random: RandomIdGenerator,
}

impl IdGenerator for StoredIdGenerator {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS
            .with(|next| {
                let (trace, span) = next.get();
                next.set((None, span));
                trace
            })
            .unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_IDS
            .with(|next| {
                let (trace, span) = next.get();
                next.set((trace, None));
                span
            })
            .unwrap_or_else(|| self.random.new_span_id())
    }
}

/// Runs `build` with `trace_id` and `span_id` offered to [`StoredIdGenerator`] on this thread;
/// whatever `build` did not take is withdrawn after it, so no later span gets them.
fn with_ids<R>(trace_id: TraceId, span_id: SpanId, build: impl FnOnce() -> R) -> R {
    struct Withdraw;
    impl Drop for Withdraw {
        fn drop(&mut self) {
            NEXT_IDS.with(|next| next.set((None, None)));
        }
    }
    NEXT_IDS.with(|next| next.set((Some(trace_id), Some(span_id))));
    let _withdraw = Withdraw;
    build()
}

/// Why a stored identity could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoredTraceError {
    /// The bytes end before the identity does, or carry more than it.
    #[error("stored trace identity: {0}")]
    Malformed(&'static str),
    /// Written by a newer version of traceq.
    #[error("stored trace identity: layout version {0} is not known (this is version 1)")]
    Version(u8),
}

/// The identity of one item's trace (of its current segment), stored beside its key: enough
/// for any process to add the item's attempts to the trace and to end it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredTrace {
    /// The trace.
    pub trace_id: TraceId,
    /// The id the root (item) span will have.
    pub root_span_id: SpanId,
    /// The producer's span the root is a child of (an add made with a producer's context), if
    /// any.
    pub parent_span_id: Option<SpanId>,
    /// Whether the trace is sampled (head sampling: the producer's flag, else sampled).
    pub sampled: bool,
    /// When the item span starts: the key's first add.
    pub start: SystemTime,
    /// Baggage copied onto every span of the item, in order (the item key and job id
    /// included).
    pub baggage: Vec<(String, String)>,
    /// The segment number of a long job's trace, 1 for the first.
    pub segment: i64,
}

impl fmt::Debug for StoredTrace {
    // Baggage values may be personal data: the keys only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self.baggage.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("StoredTrace")
            .field("trace_id", &self.trace_id)
            .field("root_span_id", &self.root_span_id)
            .field("parent_span_id", &self.parent_span_id)
            .field("sampled", &self.sampled)
            .field("segment", &self.segment)
            .field("baggage", &keys)
            .finish_non_exhaustive()
    }
}

impl StoredTrace {
    /// A new item's identity at its first add, now: fresh ids, or the trace of `parent`'s
    /// span (whose baggage is kept) when it has one; `key` and `job_id` join the baggage as
    /// `traceq.item.key` and `traceq.job.id` (without `job_id`, a job id in the producer's
    /// baggage is kept).
    #[must_use]
    pub fn begin(key: &str, job_id: Option<&str>, parent: Option<&Context>) -> Self {
        let random = RandomIdGenerator::default();
        let mut baggage: Vec<(String, String)> = parent
            .map(|p| {
                p.baggage()
                    .iter()
                    // A job id given here replaces the producer's; without one, the producer's
                    // stands, as in memory.
                    .filter(|(k, _)| {
                        k.as_str() != attr::ITEM_KEY
                            && (job_id.is_none() || k.as_str() != attr::JOB_ID)
                    })
                    .map(|(k, (v, _))| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        baggage.truncate(MAX_BAGGAGE_ENTRIES - 2);
        baggage.push((attr::ITEM_KEY.to_owned(), key.to_owned()));
        if let Some(job) = job_id {
            baggage.push((attr::JOB_ID.to_owned(), job.to_owned()));
        }
        let producer = parent
            .map(|p| p.span().span_context().clone())
            .filter(SpanContext::is_valid);
        Self {
            trace_id: producer
                .as_ref()
                .map_or_else(|| random.new_trace_id(), SpanContext::trace_id),
            root_span_id: random.new_span_id(),
            parent_span_id: producer.as_ref().map(SpanContext::span_id),
            sampled: producer.as_ref().is_none_or(SpanContext::is_sampled),
            start: SystemTime::now(),
            baggage,
            segment: 1,
        }
    }

    /// The next segment of a long job: a new trace starting now, with the same baggage (and
    /// job id); the caller ends this one's root first.
    #[must_use]
    pub fn next_segment(&self) -> Self {
        let random = RandomIdGenerator::default();
        Self {
            trace_id: random.new_trace_id(),
            root_span_id: random.new_span_id(),
            parent_span_id: None,
            sampled: self.sampled,
            start: SystemTime::now(),
            baggage: self.baggage.clone(),
            segment: self.segment + 1,
        }
    }

    fn flags(&self) -> TraceFlags {
        if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        }
    }

    /// The context an attempt span starts under, on any process: the stored root as a remote
    /// parent, with the item's baggage.
    #[must_use]
    pub fn parent_context(&self) -> Context {
        let root = SpanContext::new(
            self.trace_id,
            self.root_span_id,
            self.flags(),
            true,
            TraceState::default(),
        );
        self.baggage_context().with_remote_span_context(root)
    }

    fn baggage_context(&self) -> Context {
        let baggage: Baggage = self
            .baggage
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        Context::new().with_baggage(baggage)
    }

    /// Ends the item: builds its root span with `tracer` (whose provider should use
    /// [`StoredIdGenerator`]), with the stored ids, parent and start time, `builder`'s name, kind
    /// and attributes (the baggage is added to them), and ends it now. Returns whether the span
    /// got the stored ids (`false`: the provider has another id generator, or the tracer does
    /// not record).
    pub fn end_root<T: Tracer>(&self, tracer: &T, builder: SpanBuilder) -> bool {
        use opentelemetry::trace::Span as _;
        let (builder, parent) = self.root_builder(builder);
        let mut span = with_ids(self.trace_id, self.root_span_id, || {
            tracer.build_with_context(builder, &parent)
        });
        let honoured = span.span_context().trace_id() == self.trace_id
            && span.span_context().span_id() == self.root_span_id;
        span.end();
        honoured
    }

    /// [`end_root`](Self::end_root) with the engine's type-erased tracer, and the root's
    /// status (a span builder has none).
    #[cfg(feature = "postgres")]
    pub(crate) fn end_root_in(
        &self,
        tracer: &dyn super::ErasedTracer,
        builder: SpanBuilder,
        status: Option<opentelemetry::trace::Status>,
    ) -> bool {
        let (builder, parent) = self.root_builder(builder);
        let cx = with_ids(self.trace_id, self.root_span_id, || {
            tracer.start_in(builder, &parent, &parent)
        });
        let span = cx.span();
        if let Some(status) = status {
            span.set_status(status);
        }
        let honoured = span.span_context().trace_id() == self.trace_id
            && span.span_context().span_id() == self.root_span_id;
        span.end();
        honoured
    }

    /// The root's builder (stored start time, baggage as attributes) and its parent context.
    fn root_builder(&self, mut builder: SpanBuilder) -> (SpanBuilder, Context) {
        builder.start_time = Some(self.start);
        if builder.span_kind.is_none() {
            builder.span_kind = Some(SpanKind::Internal);
        }
        let attributes = builder.attributes.get_or_insert_with(Vec::new);
        attributes.extend(
            self.baggage
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), Value::from(v.clone()))),
        );
        let parent = match self.parent_span_id {
            Some(span_id) => self
                .baggage_context()
                .with_remote_span_context(SpanContext::new(
                    self.trace_id,
                    span_id,
                    self.flags(),
                    true,
                    TraceState::default(),
                )),
            None => Context::new(),
        };
        (builder, parent)
    }

    /// The identity as bytes, for one `bytea` column (see [`decode`](Self::decode)).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.baggage.len() * 16);
        out.push(VERSION);
        out.extend_from_slice(&self.trace_id.to_bytes());
        out.extend_from_slice(&self.root_span_id.to_bytes());
        match self.parent_span_id {
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&id.to_bytes());
            }
            None => out.push(0),
        }
        out.push(u8::from(self.sampled));
        out.extend_from_slice(&unix_nanos(self.start).to_be_bytes());
        out.extend_from_slice(&self.segment.to_be_bytes());
        let entries = self.baggage.len().min(MAX_BAGGAGE_ENTRIES);
        out.extend_from_slice(&(entries as u16).to_be_bytes());
        for (k, v) in self.baggage.iter().take(entries) {
            for s in [k, v] {
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }

    /// Reads back what [`encode`](Self::encode) wrote.
    ///
    /// # Errors
    ///
    /// [`StoredTraceError`] when `bytes` are not such an identity; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoredTraceError> {
        if bytes.len() > MAX_ENCODED_BYTES {
            return Err(StoredTraceError::Malformed("larger than the bound"));
        }
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(StoredTraceError::Version(version));
        }
        let trace_id = TraceId::from_bytes(r.array()?);
        let root_span_id = SpanId::from_bytes(r.array()?);
        let parent_span_id = match r.u8()? {
            0 => None,
            1 => Some(SpanId::from_bytes(r.array()?)),
            _ => return Err(StoredTraceError::Malformed("bad parent flag")),
        };
        let sampled = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(StoredTraceError::Malformed("bad sampled flag")),
        };
        let start = from_unix_nanos(i64::from_be_bytes(r.array()?));
        let segment = i64::from_be_bytes(r.array()?);
        let entries = usize::from(u16::from_be_bytes(r.array()?));
        if entries > MAX_BAGGAGE_ENTRIES {
            return Err(StoredTraceError::Malformed("too many baggage entries"));
        }
        let mut baggage = Vec::with_capacity(entries);
        for _ in 0..entries {
            baggage.push((r.string()?, r.string()?));
        }
        if !r.0.is_empty() {
            return Err(StoredTraceError::Malformed("bytes after the end"));
        }
        if trace_id == TraceId::INVALID || root_span_id == SpanId::INVALID {
            return Err(StoredTraceError::Malformed("an id is all zeros"));
        }
        Ok(Self {
            trace_id,
            root_span_id,
            parent_span_id,
            sampled,
            start,
            baggage,
            segment,
        })
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn from_unix_nanos(n: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(n.unsigned_abs());
    if n >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], StoredTraceError> {
        if self.0.len() < n {
            return Err(StoredTraceError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StoredTraceError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoredTraceError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn string(&mut self) -> Result<String, StoredTraceError> {
        let len = u32::from_be_bytes(self.array()?) as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| StoredTraceError::Malformed("baggage is not UTF-8"))
    }
}

#[cfg(test)]
mod tests;
