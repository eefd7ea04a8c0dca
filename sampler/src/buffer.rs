//! One shard of the trace buffer: pending traces, their deadlines, and the decision caches.
//!
//! Why shards: ingest runs on every thread that ends a span (or every receiver task in the
//! collector). The buffer is split into independent shards, each behind its own short-held lock,
//! chosen by a hash of the trace id; one trace always lives in one shard. Every bound (traces,
//! bytes, caches) is split evenly between shards, so each shard enforces its share without
//! looking at the others, and the sum never exceeds the configured bound.
//!
//! Deadlines are kept in two first-in-first-out queues instead of a timer per trace. Both are
//! sorted by construction because the clock never goes backwards and each queue uses one fixed
//! delay: `by_age` holds each trace's first-span time (for `decision_wait`, and to find the
//! oldest trace under pressure); `root_due` holds "root ended or a later span came, decide at
//! time T" items. A queue item carries the trace's generation, so items of a trace decided since
//! (or of an older incarnation of the same trace id) are recognised as stale and skipped.
//!
//! Why traces are decided outside the lock: a decision runs every policy over every span of the
//! trace, and a slow one (a regex over a long attribute, a large trace) would stall every span
//! of the shard behind it, on a receiver's thread too. So a due trace is taken out of the shard
//! under the lock ([`Shard::take`]), leaving an "in decision" marker, and decided with the lock
//! released; the decision is then recorded in the caches under the lock again
//! ([`Shard::settle`]). A span of that trace arriving in between is held by the marker and
//! settled with the decision, exactly like a late span that finds the decision cached.
//!
//! Why shared bytes are charged per run: spans of one request share their resource and scope
//! (one allocation kept alive by all of them). Charging that block once per run of consecutive
//! spans with the same identity counts it once for the common case (a trace's spans from one
//! service arrive together) and never misses it, at the cost of counting it again when spans
//! of two services alternate: an overestimate, the safe side for a memory bound.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::sync::Arc;

use opentelemetry::trace::TraceId;

use crate::cache::{fingerprint, BoundedMap, DropFilter};
use crate::decision::KeptDecision;
use crate::hash::{id_state, IdState};
use crate::metrics::{DecisionTally, PolicyNames, Trigger};
use crate::span::SpanView;

/// A pending trace.
#[derive(Debug)]
pub(crate) struct TraceEntry<S> {
    pub(crate) spans: Vec<S>,
    pub(crate) generation: u64,
    pub(crate) first_seen: u64,
    pub(crate) last_seen: u64,
    pub(crate) root_ended: bool,
    pub(crate) bytes: usize,
    /// Identity of the shared block (see [`SpanView::shared_bytes`]) charged last.
    shared: usize,
}

impl<S> TraceEntry<S> {
    fn new(spans: Vec<S>, generation: u64, now: u64, bytes: usize) -> Self {
        Self {
            spans,
            generation,
            first_seen: now,
            last_seen: now,
            root_ended: false,
            bytes,
            shared: 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct QueueItem {
    at: u64,
    trace_id: TraceId,
    generation: u64,
}

/// Bookkeeping bytes charged to each trace: the entry, its map slot and its queue items.
const TRACE_OVERHEAD: usize =
    size_of::<TraceEntry<()>>() + size_of::<TraceId>() + 8 + 2 * size_of::<QueueItem>();

/// Why a trace is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    Root,
    Wait,
}

/// Counters that change on every span, kept under the shard lock instead of in shared atomics.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ShardStats {
    pub(crate) spans_received: u64,
    pub(crate) traces_received: u64,
    pub(crate) late_sampled: u64,
    pub(crate) late_not_sampled: u64,
}

/// One shard: see the module docs.
#[derive(Debug)]
pub(crate) struct Shard<S> {
    pub(crate) traces: HashMap<TraceId, TraceEntry<S>, IdState>,
    /// Traces taken out to be decided, each holding the spans that arrived since (see the module
    /// docs); empty most of the time.
    deciding: HashMap<TraceId, TraceEntry<S>, IdState>,
    /// Spans held in `deciding`.
    held: usize,
    by_age: VecDeque<QueueItem>,
    root_due: VecDeque<QueueItem>,
    pub(crate) kept: BoundedMap<TraceId, Arc<KeptDecision>>,
    dropped: DropFilter,
    /// Seeds the fingerprints of the dropped-decision cache.
    drop_keys: IdState,
    pub(crate) bytes: usize,
    pub(crate) spans: usize,
    next_generation: u64,
    /// Span count of the last trace removed: new traces reserve this much room up front, since
    /// consecutive traces of one service tend to have one shape (no regrowth, little slack).
    size_hint: usize,
    pub(crate) stats: ShardStats,
    pub(crate) tally: DecisionTally,
}

/// What [`Shard::offer`] did with a span.
#[derive(Debug)]
pub(crate) enum Offer<S> {
    /// Buffered; its trace now holds this many spans and this many accounted bytes.
    Buffered(usize, usize),
    /// Its trace was kept already: the span is handed back to be kept the same way.
    Kept(S, Arc<KeptDecision>),
    /// Its trace was not kept: the span is handed back to be dropped.
    NotKept(S),
    /// Its trace is being decided: the span is handed back to be held with [`Shard::hold`]
    /// (kept out of this hot path, which is inlined into every ingest).
    Deciding(S),
}

/// A trace taken out of its shard to be decided.
#[derive(Debug)]
pub(crate) struct Taken<S> {
    pub(crate) trace_id: TraceId,
    pub(crate) entry: TraceEntry<S>,
    /// Why it is decided.
    pub(crate) trigger: Trigger,
}

/// How many of the oldest traces pressure looks at to find one whose root has ended.
pub(crate) const PRESSURE_LOOKAHEAD: usize = 16;

/// Most span slots reserved up front for a new trace.
const MAX_SIZE_HINT: usize = 64;

/// Appends `span` to `entry`; returns (bytes added, generation, span count, root ended, the
/// trace's bytes).
#[inline(always)]
fn push<S: SpanView>(
    entry: &mut TraceEntry<S>,
    span: S,
    now: u64,
) -> (usize, u64, usize, bool, usize) {
    let size = span.size_bytes();
    let is_root = span.is_local_root();
    let first = entry.spans.is_empty();
    // The shared block is charged again whenever it differs from the previous span's.
    let shared = match span.shared_bytes() {
        Some((id, bytes)) if first || id != entry.shared => {
            entry.shared = id;
            bytes
        }
        _ => 0,
    };
    // A new entry's reserved room is charged with its first span (old capacity counts as 0).
    let old_cap = if first { 0 } else { entry.spans.capacity() };
    entry.spans.push(span);
    // The vector's slots hold each span's inline part; `size` counts it too.
    let delta = size.saturating_sub(size_of::<S>())
        + (entry.spans.capacity() - old_cap) * size_of::<S>()
        + shared;
    entry.bytes += delta;
    entry.last_seen = now;
    entry.root_ended |= is_root;
    (
        delta,
        entry.generation,
        entry.spans.len(),
        entry.root_ended,
        entry.bytes,
    )
}

/// The key of `trace_id` in the dropped-decision cache.
fn drop_key(keys: &IdState, trace_id: TraceId) -> u64 {
    fingerprint(keys, &u128::from_be_bytes(trace_id.to_bytes()))
}

impl<S: SpanView> Shard<S> {
    pub(crate) fn new(
        kept_cache: usize,
        dropped_cache: usize,
        expected_traces: usize,
        policies: Arc<PolicyNames>,
    ) -> Self {
        Self {
            traces: HashMap::with_capacity_and_hasher(expected_traces, id_state()),
            deciding: HashMap::with_hasher(id_state()),
            held: 0,
            by_age: VecDeque::new(),
            root_due: VecDeque::new(),
            kept: BoundedMap::new(kept_cache),
            dropped: DropFilter::new(dropped_cache),
            drop_keys: id_state(),
            bytes: 0,
            spans: 0,
            next_generation: 0,
            size_hint: 0,
            stats: ShardStats::default(),
            tally: DecisionTally::new(policies),
        }
    }

    /// Buffers `span` in its trace, starting the trace if it is new, unless the decision caches
    /// say the trace was decided already: then the span is handed back to follow that decision;
    /// or unless the trace is being decided: then the span is held until the decision is
    /// settled. One map lookup per span; the span is moved once, into its trace.
    #[inline(always)]
    pub(crate) fn offer(&mut self, span: S, now: u64, after_root: u64) -> Offer<S> {
        let trace_id = span.trace_id();
        match self.traces.entry(trace_id) {
            Entry::Occupied(slot) => {
                let (delta, generation, len, root_ended, bytes) = push(slot.into_mut(), span, now);
                self.bytes += delta;
                self.spans += 1;
                if root_ended {
                    self.push_root_due(trace_id, generation, now, after_root);
                }
                Offer::Buffered(len, bytes)
            }
            Entry::Vacant(slot) => {
                // Only a trace's first span (or a late one) needs the decision caches.
                if let Some(decision) = self.kept.get(&trace_id) {
                    self.stats.late_sampled += 1;
                    return Offer::Kept(span, decision.clone());
                }
                if self.dropped.contains(drop_key(&self.drop_keys, trace_id)) {
                    self.stats.late_not_sampled += 1;
                    return Offer::NotKept(span);
                }
                if !self.deciding.is_empty() && self.deciding.contains_key(&trace_id) {
                    return Offer::Deciding(span);
                }
                let generation = self.next_generation;
                self.next_generation += 1;
                let entry = slot.insert(TraceEntry::new(
                    Vec::with_capacity(self.size_hint),
                    generation,
                    now,
                    TRACE_OVERHEAD,
                ));
                let (delta, _, len, root_ended, bytes) = push(entry, span, now);
                self.bytes += TRACE_OVERHEAD + delta;
                self.spans += 1;
                self.stats.traces_received += 1;
                self.by_age.push_back(QueueItem {
                    at: now,
                    trace_id,
                    generation,
                });
                if root_ended {
                    self.push_root_due(trace_id, generation, now, after_root);
                }
                Offer::Buffered(len, bytes)
            }
        }
    }

    /// Holds a span that [`Self::offer`] handed back as [`Offer::Deciding`] until its trace's
    /// decision is settled; charged to the shard meanwhile.
    #[inline(never)]
    pub(crate) fn hold(&mut self, span: S, now: u64) {
        let trace_id = span.trace_id();
        if let Some(held) = self.deciding.get_mut(&trace_id) {
            let (delta, ..) = push(held, span, now);
            self.bytes += delta;
            self.spans += 1;
            self.held += 1;
        }
    }

    fn push_root_due(&mut self, trace_id: TraceId, generation: u64, now: u64, after_root: u64) {
        self.root_due.push_back(QueueItem {
            at: now.saturating_add(after_root),
            trace_id,
            generation,
        });
    }

    /// Takes a trace out of the buffer.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, trace_id: TraceId) -> Option<TraceEntry<S>> {
        let entry = self.traces.remove(&trace_id)?;
        self.forget(&entry);
        Some(entry)
    }

    /// Takes a trace out of the buffer to be decided, leaving the "in decision" marker that
    /// holds its late spans until [`Self::settle`]. Its bytes are released now, so a caller
    /// relieving pressure sees them go.
    pub(crate) fn take(&mut self, trace_id: TraceId, trigger: Trigger) -> Option<Taken<S>> {
        let entry = self.traces.remove(&trace_id)?;
        self.forget(&entry);
        self.mark(trace_id);
        Some(Taken {
            trace_id,
            entry,
            trigger,
        })
    }

    fn mark(&mut self, trace_id: TraceId) {
        self.deciding
            .insert(trace_id, TraceEntry::new(Vec::new(), 0, 0, 0));
    }

    /// Takes every pending trace out to be decided (for flush), emptying the deadline queues.
    pub(crate) fn take_all(&mut self, trigger: Trigger, out: &mut Vec<Taken<S>>) {
        self.by_age.clear();
        self.root_due.clear();
        out.reserve(self.traces.len());
        if !self.deciding.is_empty() {
            // Another round is in progress: mark each trace beside its markers.
            let mut traces = std::mem::take(&mut self.traces);
            for (trace_id, entry) in traces.drain() {
                self.forget(&entry);
                self.mark(trace_id);
                out.push(Taken {
                    trace_id,
                    entry,
                    trigger,
                });
            }
            self.traces = traces;
            return;
        }
        // The usual case: each entry is emptied in place and stays as its trace's marker, and
        // the whole map becomes the marker map (no lookup per trace). The marker map, empty,
        // becomes the trace map, so both keep their room from flush to flush.
        let (mut bytes, mut spans, mut last) = (0, 0, None);
        for (&trace_id, slot) in self.traces.iter_mut() {
            let entry = std::mem::replace(slot, TraceEntry::new(Vec::new(), 0, 0, 0));
            bytes += entry.bytes;
            spans += entry.spans.len();
            last = Some(entry.spans.len());
            out.push(Taken {
                trace_id,
                entry,
                trigger,
            });
        }
        self.bytes -= bytes;
        self.spans -= spans;
        if let Some(last) = last {
            self.size_hint = last.min(MAX_SIZE_HINT);
        }
        std::mem::swap(&mut self.traces, &mut self.deciding);
    }

    /// Records the decisions of traces taken out by [`Self::take`] or [`Self::take_all`] in the
    /// decision caches, and hands the spans that arrived while each was decided to `late`, with
    /// its decision, to follow it (counted as late spans). After this, spans of those traces
    /// find their decision cached.
    pub(crate) fn settle(
        &mut self,
        verdicts: &mut Vec<(TraceId, Option<Arc<KeptDecision>>)>,
        late: &mut Vec<(Vec<S>, Option<Arc<KeptDecision>>)>,
    ) {
        // When the markers are exactly these traces' and hold no span (the usual case: all
        // are there until settled, so equal counts mean equal sets), they are cleared at once
        // instead of looked up one by one.
        let only_these = self.held == 0 && self.deciding.len() == verdicts.len();
        for (trace_id, decision) in verdicts.drain(..) {
            match &decision {
                Some(decision) => {
                    self.kept.insert(trace_id, decision.clone());
                }
                None => self.dropped.insert(drop_key(&self.drop_keys, trace_id)),
            }
            if only_these {
                continue;
            }
            let Some(held) = self.deciding.remove(&trace_id) else {
                continue;
            };
            if held.spans.is_empty() {
                continue;
            }
            self.bytes -= held.bytes;
            self.spans -= held.spans.len();
            self.held -= held.spans.len();
            let n = held.spans.len() as u64;
            match decision {
                Some(_) => self.stats.late_sampled += n,
                None => self.stats.late_not_sampled += n,
            }
            late.push((held.spans, decision));
        }
        if only_these {
            self.deciding.clear();
        }
    }

    /// Writes a decision made elsewhere (an earlier run of the process) into the decision
    /// caches, so late spans of that trace follow it.
    pub(crate) fn remember(&mut self, trace_id: TraceId, decision: Option<Arc<KeptDecision>>) {
        match decision {
            Some(decision) => {
                self.kept.insert(trace_id, decision);
            }
            None => self.dropped.insert(drop_key(&self.drop_keys, trace_id)),
        }
    }

    /// Traces taken out and not settled yet.
    #[cfg(test)]
    pub(crate) fn deciding(&self) -> usize {
        self.deciding.len()
    }

    /// Accounts for `entry` having left the buffer.
    fn forget(&mut self, entry: &TraceEntry<S>) {
        self.size_hint = entry.spans.len().min(MAX_SIZE_HINT);
        self.bytes -= entry.bytes;
        self.spans -= entry.spans.len();
    }

    /// Takes every pending trace out of the buffer undecided (for shutdown without flush),
    /// emptying the deadline queues; no marker is left, as nothing will be decided.
    pub(crate) fn drain_undecided(&mut self, out: &mut Vec<TraceEntry<S>>) {
        self.by_age.clear();
        self.root_due.clear();
        let mut traces = std::mem::take(&mut self.traces);
        for (_, entry) in traces.drain() {
            self.forget(&entry);
            out.push(entry);
        }
        self.traces = traces;
    }

    fn is_live(&self, item: &QueueItem) -> bool {
        self.traces
            .get(&item.trace_id)
            .is_some_and(|e| e.generation == item.generation)
    }

    /// The trace to decide early under pressure, removed from the age queue: among the
    /// [`PRESSURE_LOOKAHEAD`] oldest, the oldest whose local root has ended (it is most likely
    /// complete, so deciding it now loses nothing); failing that, the oldest.
    pub(crate) fn pop_for_pressure(&mut self) -> Option<TraceId> {
        while let Some(front) = self.by_age.front() {
            if self.is_live(front) {
                break;
            }
            self.by_age.pop_front();
        }
        let complete = self
            .by_age
            .iter()
            .take(PRESSURE_LOOKAHEAD)
            .position(|item| {
                self.traces
                    .get(&item.trace_id)
                    .is_some_and(|e| e.generation == item.generation && e.root_ended)
            })
            .unwrap_or(0);
        let item = self.by_age.remove(complete)?;
        Some(item.trace_id)
    }

    /// The next trace due at `now`, if any.
    pub(crate) fn pop_due(
        &mut self,
        now: u64,
        wait: u64,
        after_root: u64,
    ) -> Option<(TraceId, Due)> {
        while let Some(item) = self.root_due.front().copied() {
            if item.at > now {
                break;
            }
            self.root_due.pop_front();
            if let Some(e) = self.traces.get(&item.trace_id) {
                if e.generation == item.generation && e.last_seen.saturating_add(after_root) <= now
                {
                    return Some((item.trace_id, Due::Root));
                }
            }
        }
        while let Some(item) = self.by_age.front().copied() {
            if !self.is_live(&item) {
                self.by_age.pop_front();
                continue;
            }
            if item.at.saturating_add(wait) > now {
                break;
            }
            self.by_age.pop_front();
            return Some((item.trace_id, Due::Wait));
        }
        None
    }

    /// Drops stale queue items once they outnumber live traces, so queues stay bounded by the
    /// buffer's own bound even when most traces are decided before their deadlines.
    pub(crate) fn compact(&mut self) {
        let limit = 2 * self.traces.len() + 1024;
        if self.by_age.len() > limit {
            let traces = &self.traces;
            self.by_age.retain(|i| {
                traces
                    .get(&i.trace_id)
                    .is_some_and(|e| e.generation == i.generation)
            });
        }
        if self.root_due.len() > limit + self.spans {
            let traces = &self.traces;
            self.root_due.retain(|i| {
                traces
                    .get(&i.trace_id)
                    .is_some_and(|e| e.generation == i.generation)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestSpan;
    use opentelemetry_sdk::trace::SpanData;

    fn shard() -> Shard<SpanData> {
        Shard::new(10, 10, 0, Arc::default())
    }

    /// Buffers a span the caches know nothing about.
    fn add(s: &mut Shard<SpanData>, span: SpanData, now: u64, after_root: u64) -> usize {
        match s.offer(span, now, after_root) {
            Offer::Buffered(len, _) => len,
            other => panic!("not buffered: {other:?}"),
        }
    }

    #[test]
    fn bytes_should_return_to_zero_when_traces_are_removed() {
        let mut s = shard();
        add(&mut s, TestSpan::new(1, 2).child_of(1).build(), 0, 10);
        add(&mut s, TestSpan::new(1, 1).build(), 0, 10);
        add(&mut s, TestSpan::new(2, 1).build(), 0, 10);
        assert!(s.bytes > 2 * size_of::<SpanData>());
        assert_eq!(s.spans, 3);
        s.remove(TraceId::from(1)).unwrap();
        s.remove(TraceId::from(2)).unwrap();
        assert_eq!((s.bytes, s.spans), (0, 0));
    }

    #[test]
    fn root_due_should_wait_for_quiet_after_the_root_ended() {
        let mut s = shard();
        add(&mut s, TestSpan::new(1, 1).build(), 0, 10);
        assert_eq!(s.pop_due(9, 100, 10), None);
        add(&mut s, TestSpan::new(1, 2).child_of(1).build(), 5, 10);
        assert_eq!(s.pop_due(10, 100, 10), None);
        assert_eq!(s.pop_due(15, 100, 10), Some((TraceId::from(1), Due::Root)));
    }

    #[test]
    fn wait_due_should_fire_from_the_first_span_without_a_root() {
        let mut s = shard();
        add(&mut s, TestSpan::new(1, 2).child_of(1).build(), 0, 10);
        assert_eq!(s.pop_due(50, 100, 10), None);
        assert_eq!(s.pop_due(100, 100, 10), Some((TraceId::from(1), Due::Wait)));
    }

    #[test]
    fn pressure_should_prefer_an_old_trace_whose_root_ended_over_one_in_progress() {
        let mut s = shard();
        add(&mut s, TestSpan::new(1, 2).child_of(1).build(), 0, 10);
        add(&mut s, TestSpan::new(2, 1).build(), 1, 10);
        add(&mut s, TestSpan::new(3, 2).child_of(1).build(), 2, 10);
        assert_eq!(s.pop_for_pressure(), Some(TraceId::from(2)));
        assert_eq!(s.pop_for_pressure(), Some(TraceId::from(1)));
        s.remove(TraceId::from(2));
        s.remove(TraceId::from(1));
        assert_eq!(s.pop_for_pressure(), Some(TraceId::from(3)));
    }

    #[test]
    fn a_span_of_a_trace_in_decision_should_be_held_and_handed_back_on_settle() {
        let mut s = shard();
        add(&mut s, TestSpan::new(1, 1).build(), 0, 10);
        let taken = s.take(TraceId::from(1), Trigger::Flush).unwrap();
        assert_eq!((taken.entry.spans.len(), s.bytes, s.spans), (1, 0, 0));
        match s.offer(TestSpan::new(1, 2).child_of(1).build(), 1, 10) {
            Offer::Deciding(span) => s.hold(span, 1),
            other => panic!("not handed back to be held: {other:?}"),
        }
        assert!(s.bytes > 0 && s.spans == 1 && s.traces.is_empty());
        // Another trace is not held.
        add(&mut s, TestSpan::new(2, 1).build(), 1, 10);
        let mut late = Vec::new();
        s.settle(&mut vec![(TraceId::from(1), None)], &mut late);
        assert_eq!(late.len(), 1);
        assert_eq!((late[0].0.len(), late[0].1.is_none()), (1, true));
        assert_eq!((s.deciding(), s.spans, s.stats.late_not_sampled), (0, 1, 1));
        // From now on the cache answers.
        assert!(matches!(
            s.offer(TestSpan::new(1, 3).child_of(1).build(), 2, 10),
            Offer::NotKept(_)
        ));
        s.remove(TraceId::from(2)).unwrap();
        assert_eq!((s.bytes, s.spans), (0, 0));
    }

    #[test]
    fn settling_a_trace_without_late_spans_should_record_the_decision_only() {
        let mut s = shard();
        add(&mut s, TestSpan::new(1, 1).build(), 0, 10);
        let mut out = Vec::new();
        s.take_all(Trigger::Flush, &mut out);
        assert_eq!((out.len(), s.deciding()), (1, 1));
        let decision = Arc::new(KeptDecision::new("p".into(), 1.0));
        let mut late = Vec::new();
        s.settle(&mut vec![(TraceId::from(1), Some(decision))], &mut late);
        assert!(late.is_empty());
        assert_eq!((s.deciding(), s.stats.late_sampled), (0, 0));
        assert!(matches!(
            s.offer(TestSpan::new(1, 2).child_of(1).build(), 1, 10),
            Offer::Kept(..)
        ));
        // The flushed map became the marker map and back: new traces are buffered as before.
        add(&mut s, TestSpan::new(2, 1).build(), 1, 10);
        assert_eq!(s.traces.len(), 1);
    }

    #[test]
    fn settling_one_round_should_leave_the_markers_of_another() {
        let mut s = shard();
        add(&mut s, TestSpan::new(1, 1).build(), 0, 10);
        add(&mut s, TestSpan::new(2, 1).build(), 0, 10);
        let mut other = Vec::new();
        s.take_all(Trigger::Flush, &mut other);
        add(&mut s, TestSpan::new(3, 1).build(), 0, 10);
        s.take(TraceId::from(3), Trigger::Root).unwrap();
        assert_eq!(s.deciding(), 3);
        let mut late = Vec::new();
        s.settle(&mut vec![(TraceId::from(3), None)], &mut late);
        assert_eq!(s.deciding(), 2);
        // Trace 2 is still in decision: its late span is held.
        match s.offer(TestSpan::new(2, 2).child_of(1).build(), 1, 10) {
            Offer::Deciding(span) => s.hold(span, 1),
            other => panic!("not handed back to be held: {other:?}"),
        }
        let mut ids: Vec<_> = other.iter().map(|t| (t.trace_id, None)).collect();
        s.settle(&mut ids, &mut late);
        assert_eq!((s.deciding(), late.len(), s.spans, s.bytes), (0, 1, 0, 0));
    }

    /// A span sharing a block of `bytes` with identity `id`.
    #[derive(Debug)]
    struct Sharing(SpanData, Option<(usize, usize)>);

    impl SpanView for Sharing {
        fn trace_id(&self) -> TraceId {
            self.0.trace_id()
        }
        fn is_local_root(&self) -> bool {
            self.0.is_local_root()
        }
        fn status(&self) -> crate::span::StatusKind {
            self.0.status()
        }
        fn start_time(&self) -> std::time::SystemTime {
            self.0.start_time
        }
        fn end_time(&self) -> std::time::SystemTime {
            self.0.end_time
        }
        fn attribute(&self, key: &str) -> Option<crate::span::AttrValue<'_>> {
            self.0.attribute(key)
        }
        fn trace_state(&self, key: &str) -> Option<&str> {
            self.0.trace_state(key)
        }
        fn size_bytes(&self) -> usize {
            100
        }
        fn shared_bytes(&self) -> Option<(usize, usize)> {
            self.1
        }
        fn annotate(&mut self, decision: &KeptDecision) {
            self.0.annotate(decision);
        }
    }

    #[test]
    fn shared_bytes_should_be_charged_once_per_run_of_one_identity() {
        type S = Box<Sharing>;
        let mut s: Shard<S> = Shard::new(10, 10, 0, Arc::default());
        // The block of identity 7 is paid by the first span; the rest of its run does not pay,
        // nor does a span sharing nothing; a new identity, and the old one again, start runs.
        let spans = [
            (Some((7, 1000)), 1000),
            (Some((7, 1000)), 0),
            (None, 0),
            (Some((7, 1000)), 0),
            (Some((8, 500)), 500),
            (Some((7, 1000)), 1000),
        ];
        let mut shared = 0;
        for (i, (block, charged)) in spans.into_iter().enumerate() {
            let data = TestSpan::new(1, i as u64 + 2).child_of(1).build();
            assert!(matches!(
                s.offer(Box::new(Sharing(data, block)), 0, 10),
                Offer::Buffered(..)
            ));
            shared += charged;
            // Each span: its 100 bytes beyond the slot; the slots: the vector's capacity.
            let slots = s.traces[&TraceId::from(1)].spans.capacity() * size_of::<S>();
            assert_eq!(s.bytes, TRACE_OVERHEAD + 100 * (i + 1) + slots + shared);
        }
        s.remove(TraceId::from(1)).unwrap();
        assert_eq!(s.bytes, 0);
    }

    #[test]
    fn stale_queue_items_should_be_skipped_and_compacted() {
        let mut s = shard();
        for t in 1..=3000u128 {
            add(&mut s, TestSpan::new(t, 1).build(), 0, 10);
            s.remove(TraceId::from(t));
        }
        s.compact();
        assert_eq!(s.pop_for_pressure(), None);
        assert_eq!(s.pop_due(1000, 10, 10), None);
    }
}
