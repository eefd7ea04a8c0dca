//! Replay: rebuilding the pipeline's state from the log a previous run left.
//!
//! Two passes over the segments, oldest first. The first checks every record and collects which
//! requests were settled and the last decision logged for each trace. The second takes every
//! request not settled, decoded on one thread per core (decoding costs four times what handing
//! the spans on does), and hands each of its spans where it was when the process stopped:
//!
//! - its trace was decided and kept: the span is annotated with that decision and queued for
//!   export again (it may have been delivered before the stop: such spans are counted in
//!   `traceq_storage_replayed_spans_total`, the bound on duplicates);
//! - its trace was decided and dropped: the span is dropped again;
//! - its trace is undecided: the span goes back into the sampler stamped with its original
//!   arrival, so the trace's decision timers (`decision_wait`, the quiet period after its root)
//!   resume where they were.
//!
//! Then every logged decision is written into the sampler's decision caches, so late spans
//! follow their trace's decision after the restart too. A record that fails its checks ends
//! the reading of its segment (see [`super::record`]): counted, never fatal.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::TraceId;
use traceq_exporter::otlp::{decode_request, OtlpSpan, Retained};
use traceq_sampler::{KeptDecision, SpanView, TailSampler};

use super::log::{unix_nanos, Log};
use super::record::{read_segment, Kind};

/// Most segment bytes the first pass keeps in memory for the second (beyond it, segments are
/// read again).
const KEEP_READ_BYTES: usize = 512 << 20;

/// The hasher of replay's maps, looked up once per span.
type Fast = foldhash::fast::RandomState;

/// A request of the second pass, decoded.
struct Decoded {
    segment: u64,
    seq: u64,
    arrival_nanos: u64,
    spans: Result<Vec<OtlpSpan>, String>,
}

/// What a replay found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReplayReport {
    /// Requests replayed (not settled before the stop).
    pub(crate) requests: u64,
    /// Spans in them.
    pub(crate) spans: u64,
    /// Undecided traces rebuilt in the sampler.
    pub(crate) traces: u64,
    /// Spans of kept traces queued for export again.
    pub(crate) requeued: u64,
    /// Decisions restored into the caches.
    pub(crate) decisions: u64,
    /// Records that failed their checks (each ends its segment's reading).
    pub(crate) corrupt: u64,
    /// Bytes skipped after them.
    pub(crate) skipped_bytes: u64,
    /// Segments read.
    pub(crate) segments: u64,
}

/// A decision as logged: `None` dropped, else the policy's name and probability.
type Logged = Option<(f64, Arc<str>)>;

/// Replays `segments` (oldest first) of `log` into `sampler` (`None`: sampling is off, every
/// span is queued for export) and `keep` (kept spans, annotated).
pub(crate) fn replay(
    log: &Log,
    segments: &[u64],
    sampler: Option<&TailSampler<OtlpSpan>>,
    keep: &mut dyn FnMut(&mut Vec<OtlpSpan>),
) -> ReplayReport {
    let started = Instant::now();
    let mut report = ReplayReport::default();
    let mut settled: HashSet<u64, Fast> = HashSet::with_hasher(Fast::default());
    let mut decided: HashMap<[u8; 16], Logged, Fast> = HashMap::with_hasher(Fast::default());
    // Log order, for restoring the caches oldest first (the newest survive eviction).
    let mut order: Vec<[u8; 16]> = Vec::new();
    let mut next_seq = 0u64;
    let mut names: HashMap<Box<str>, Arc<str>> = HashMap::new();
    // First pass: settled requests and decisions. Segments are kept in memory for the second
    // pass while they fit in `KEEP_READ_BYTES`.
    let mut readable = Vec::with_capacity(segments.len());
    let mut kept_bytes: Vec<Option<Vec<u8>>> = Vec::with_capacity(segments.len());
    let mut kept_total = 0usize;
    for &id in segments {
        let bytes = match std::fs::read(log.segment_path(id)) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!(
                    "traceq: storage: cannot read {}: {e}; skipping it",
                    log.segment_path(id).display()
                );
                report.corrupt += 1;
                continue;
            }
        };
        report.segments += 1;
        let (records, tail) = read_segment(&bytes, id);
        if tail.corrupt {
            report.corrupt += 1;
            report.skipped_bytes += tail.skipped_bytes;
            eprintln!(
                "traceq: storage: {} is damaged after {} records ({} bytes skipped, counted in \
                 traceq_storage_corrupt_records_total); replaying what precedes it",
                log.segment_path(id).display(),
                records.len(),
                tail.skipped_bytes
            );
        }
        for r in &records {
            match r.kind {
                Kind::Request => {
                    if let Some(req) = r.request() {
                        next_seq = next_seq.max(req.seq + 1);
                    }
                }
                Kind::Settled => settled.extend(r.settled()),
                Kind::Decided => {
                    for (trace, decision) in r.decisions() {
                        let logged = decision.map(|(p, name)| {
                            let name = names
                                .entry(name.into())
                                .or_insert_with(|| Arc::from(name))
                                .clone();
                            (p, name)
                        });
                        if decided.insert(trace, logged).is_none() {
                            order.push(trace);
                        }
                    }
                }
            }
        }
        readable.push(id);
        kept_total += bytes.len();
        kept_bytes.push((kept_total <= KEEP_READ_BYTES).then_some(bytes));
    }
    // Second pass: requests not settled, decoded on a thread of their own while this one
    // hands their spans on (decoding is about as costly as re-buffering).
    let mut kept_decisions: HashMap<(u64, Arc<str>), Arc<KeptDecision>> = HashMap::new();
    let mut decision_of = |logged: &(f64, Arc<str>)| {
        kept_decisions
            .entry((logged.0.to_bits(), logged.1.clone()))
            .or_insert_with(|| Arc::new(KeptDecision::new(logged.1.clone(), logged.0)))
            .clone()
    };
    let mut unsettled: BTreeMap<u64, u64> = BTreeMap::new();
    let mut rebuilt: HashSet<[u8; 16], Fast> = HashSet::with_hasher(Fast::default());
    let now = unix_nanos();
    let mut pending = Vec::new();
    let mut out = Vec::new();
    // Records are dealt to the decoders in turn and taken back in the same turn: in log order.
    let decoders = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..decoders)
        .map(|_| std::sync::mpsc::sync_channel::<Decoded>(32))
        .unzip();
    std::thread::scope(|scope| {
        let settled = &settled;
        let readable = &readable;
        let kept_bytes = &kept_bytes;
        for (turn, tx) in txs.into_iter().enumerate() {
            scope.spawn(move || {
                let mut n = 0usize;
                for (i, &id) in readable.iter().enumerate() {
                    let read;
                    let bytes = match kept_bytes.get(i).and_then(Option::as_ref) {
                        Some(bytes) => bytes,
                        None => match std::fs::read(log.segment_path(id)) {
                            Ok(b) => {
                                read = b;
                                &read
                            }
                            Err(_) => continue,
                        },
                    };
                    let (records, _) = read_segment(bytes, id);
                    for r in records {
                        let Some(req) = r.request().filter(|_| r.kind == Kind::Request) else {
                            continue;
                        };
                        if settled.contains(&req.seq) {
                            continue;
                        }
                        n += 1;
                        if (n - 1) % decoders != turn {
                            continue;
                        }
                        let item = Decoded {
                            segment: id,
                            seq: req.seq,
                            arrival_nanos: req.arrival_nanos,
                            spans: decode_request(req.body).map_err(|e| e.to_string()),
                        };
                        if tx.send(item).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        let mut turns = rxs.iter().cycle();
        let items = std::iter::from_fn(|| turns.next()?.recv().ok());
        for item in items {
            let spans = match item.spans {
                Ok(spans) => spans,
                Err(e) => {
                    // Its checksum held, so it was written so: nothing to replay.
                    eprintln!("traceq: storage: skipping an unreadable logged request: {e}");
                    report.corrupt += 1;
                    continue;
                }
            };
            report.requests += 1;
            report.spans += spans.len() as u64;
            *unsettled.entry(item.segment).or_default() += 1;
            let token: Retained = log.token(item.seq, item.segment);
            for span in spans {
                span.retain(&token);
                let trace = span.trace_id_bytes();
                match (sampler, decided.get(&trace)) {
                    (_, Some(Some(logged))) => {
                        let mut span = span;
                        span.annotate(&decision_of(logged));
                        out.push(span);
                    }
                    (_, Some(None)) => {}
                    (Some(_), None) => {
                        rebuilt.insert(trace);
                        pending.push(span);
                    }
                    (None, None) => out.push(span),
                }
            }
            report.requeued += out.len() as u64;
            if let Some(sampler) = sampler {
                if !pending.is_empty() {
                    let age = Duration::from_nanos(now.saturating_sub(item.arrival_nanos));
                    sampler.ingest_batch_aged(pending.drain(..), age, &mut out);
                }
            }
            keep(&mut out);
            out.clear();
        }
    });
    report.traces = rebuilt.len() as u64;
    if let Some(sampler) = sampler {
        for trace in &order {
            let Some(logged) = decided.get(trace) else {
                continue;
            };
            let decision = logged.as_ref().map(&mut decision_of);
            sampler.restore_decision(TraceId::from_bytes(*trace), decision);
            report.decisions += 1;
        }
    }
    log.replayed(next_seq, &unsettled);
    let m = log.metrics();
    m.replayed_requests.fetch_add(report.requests, Relaxed);
    m.replayed_spans.fetch_add(report.spans, Relaxed);
    m.replayed_traces.fetch_add(report.traces, Relaxed);
    m.requeued_spans.fetch_add(report.requeued, Relaxed);
    m.corrupt_records.fetch_add(report.corrupt, Relaxed);
    m.skipped_bytes.fetch_add(report.skipped_bytes, Relaxed);
    m.replay_nanos.store(
        u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        Relaxed,
    );
    report
}
