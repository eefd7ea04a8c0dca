//! Tests of decision rounds: no shard lock is held while a trace is decided, spans that arrive
//! meanwhile follow the decision, and shared bytes count towards the buffer's bound.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::TraceId;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanData;

use crate::decision::POLICY_ATTRIBUTE;
use crate::span::{AttrValue, SpanView, StatusKind};
use crate::testing::TestSpan;
use crate::{KeptDecision, ManualClock, SamplerConfig, TailSampler};

/// How long a blocked decision waits for the other thread before giving up: the bound on
/// every test here, reached only when the decision does hold the lock.
const PATIENCE: Duration = Duration::from_secs(5);

/// Blocks the first policy lookup of an armed span until the test lets it go.
struct Gate {
    armed: AtomicBool,
    entered: Mutex<Sender<()>>,
    entered_rx: Mutex<Receiver<()>>,
    release: Mutex<Sender<()>>,
    release_rx: Mutex<Receiver<()>>,
    /// Set when the lookup gave up waiting: the other thread could not get in meanwhile.
    timed_out: AtomicBool,
}

impl Gate {
    fn new() -> Arc<Self> {
        let (entered, entered_rx) = channel();
        let (release, release_rx) = channel();
        Arc::new(Self {
            armed: AtomicBool::new(true),
            entered: Mutex::new(entered),
            entered_rx: Mutex::new(entered_rx),
            release: Mutex::new(release),
            release_rx: Mutex::new(release_rx),
            timed_out: AtomicBool::new(false),
        })
    }

    /// Called from inside the decision.
    fn pass(&self) {
        if !self.armed.swap(false, SeqCst) {
            return;
        }
        let _ = self.entered.lock().unwrap().send(());
        match self.release_rx.lock().unwrap().recv_timeout(PATIENCE) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
            Err(RecvTimeoutError::Timeout) => self.timed_out.store(true, SeqCst),
        }
    }

    /// Waits until a decision is blocked in the gate.
    fn wait_entered(&self) {
        self.entered_rx
            .lock()
            .unwrap()
            .recv_timeout(2 * PATIENCE)
            .expect("the decision never reached the policy");
    }

    fn open(&self) {
        let _ = self.release.lock().unwrap().send(());
    }
}

/// A span whose `tier` attribute lookup passes through a gate, and which may share a block.
struct GatedSpan {
    inner: SpanData,
    gate: Option<Arc<Gate>>,
    shared: Option<(usize, usize)>,
}

fn span(trace: u128, id: u64) -> GatedSpan {
    let b = TestSpan::new(trace, id);
    let b = if id == 1 { b } else { b.child_of(1) };
    GatedSpan {
        inner: b.build(),
        gate: None,
        shared: None,
    }
}

impl GatedSpan {
    fn tier(mut self, tier: &str) -> Self {
        self.inner
            .attributes
            .push(KeyValue::new("tier", tier.to_owned()));
        self
    }

    fn gated(mut self, gate: &Arc<Gate>) -> Self {
        self.gate = Some(gate.clone());
        self
    }

    fn sharing(mut self, id: usize, bytes: usize) -> Self {
        self.shared = Some((id, bytes));
        self
    }
}

impl SpanView for GatedSpan {
    fn trace_id(&self) -> TraceId {
        self.inner.trace_id()
    }
    fn is_local_root(&self) -> bool {
        self.inner.is_local_root()
    }
    fn status(&self) -> StatusKind {
        self.inner.status()
    }
    fn start_time(&self) -> SystemTime {
        self.inner.start_time
    }
    fn end_time(&self) -> SystemTime {
        self.inner.end_time
    }
    fn attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        if key == "tier" {
            if let Some(gate) = &self.gate {
                gate.pass();
            }
        }
        self.inner.attribute(key)
    }
    fn trace_state(&self, key: &str) -> Option<&str> {
        self.inner.trace_state(key)
    }
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.inner.size_bytes() - std::mem::size_of::<SpanData>()
    }
    fn shared_bytes(&self) -> Option<(usize, usize)> {
        self.shared
    }
    fn annotate(&mut self, decision: &KeptDecision) {
        self.inner.annotate(decision);
    }
}

type Sampler = Arc<TailSampler<GatedSpan>>;

/// One shard, so every span lands in the shard being decided whatever the hash; traces with
/// `tier: gold` are kept.
fn gold_sampler(max_spans: usize) -> (Sampler, ManualClock) {
    let cfg = SamplerConfig::from_yaml(
        "policies: [{name: gold, type: string_attribute, \
         string_attribute: {key: tier, values: [gold]}}]",
    )
    .unwrap()
    .with_num_shards(1)
    .with_max_spans_per_trace(max_spans);
    let clock = ManualClock::new();
    let s = TailSampler::with_clock(cfg, Arc::new(clock.clone())).unwrap();
    (Arc::new(s), clock)
}

fn ids(spans: &[GatedSpan]) -> Vec<(u128, u64)> {
    let mut out: Vec<_> = spans
        .iter()
        .map(|s| {
            let cx = &s.inner.span_context;
            (
                u128::from_be_bytes(cx.trace_id().to_bytes()),
                u64::from_be_bytes(cx.span_id().to_bytes()),
            )
        })
        .collect();
    out.sort_unstable();
    out
}

/// While a decision of trace 1 is blocked in its policy on another thread, this thread ingests
/// into the same shard (a new trace 2, and a late span of trace 1): that only returns at once
/// if the decision holds no shard lock.
fn ingest_while_blocked(s: &Sampler, gate: &Arc<Gate>, late: GatedSpan) -> Vec<GatedSpan> {
    gate.wait_entered();
    let mut kept = Vec::new();
    s.ingest(span(2, 1), &mut kept);
    s.ingest(late, &mut kept);
    gate.open();
    assert!(kept.is_empty(), "nothing here is decided on this thread");
    kept
}

#[test]
fn a_flush_blocked_in_a_policy_should_not_hold_the_shard_lock() {
    let (s, _clock) = gold_sampler(1000);
    let gate = Gate::new();
    let mut kept = Vec::new();
    s.ingest(span(1, 1).tier("gold").gated(&gate), &mut kept);
    let flusher = {
        let s = s.clone();
        thread::spawn(move || {
            let mut kept = Vec::new();
            s.flush(&mut kept);
            kept
        })
    };
    ingest_while_blocked(&s, &gate, span(1, 2));
    let kept = flusher.join().unwrap();
    assert!(
        !gate.timed_out.load(SeqCst),
        "the flush held the shard lock"
    );
    // The span that came while trace 1 was decided follows its decision, annotated.
    assert_eq!(ids(&kept), vec![(1, 1), (1, 2)]);
    assert!(kept
        .iter()
        .all(|k| k.attribute(POLICY_ATTRIBUTE) == Some(AttrValue::Str("gold"))));
    let m = s.metrics();
    assert_eq!(m.late_spans_sampled, 1);
    assert_eq!(m.global_count_traces_sampled, 1);
    // Trace 2 came after the flush took its traces out: still pending.
    assert_eq!((m.sampling_traces_on_memory, m.spans_buffered), (1, 1));
    assert_eq!(m.spans_received, 3);
}

#[test]
fn a_poll_blocked_in_a_policy_should_not_hold_the_shard_lock_and_late_spans_should_be_dropped_with_the_trace(
) {
    let (s, clock) = gold_sampler(1000);
    let gate = Gate::new();
    let mut kept = Vec::new();
    s.ingest(span(1, 1).tier("silver").gated(&gate), &mut kept);
    clock.advance(Duration::from_secs(2));
    let poller = {
        let s = s.clone();
        thread::spawn(move || {
            let mut kept = Vec::new();
            let decided = s.poll(&mut kept);
            (decided, kept)
        })
    };
    ingest_while_blocked(&s, &gate, span(1, 2).tier("gold"));
    let (decided, kept) = poller.join().unwrap();
    assert!(!gate.timed_out.load(SeqCst), "the poll held the shard lock");
    assert_eq!(decided, 1);
    assert!(kept.is_empty());
    let m = s.metrics();
    assert_eq!(m.late_spans_not_sampled, 1);
    assert_eq!(
        (m.global_count_traces_not_sampled, m.spans_buffered),
        (1, 1)
    );
    // After the decision is recorded, spans of trace 1 find it in the cache.
    let mut kept = Vec::new();
    s.ingest(span(1, 3).tier("gold"), &mut kept);
    assert!(kept.is_empty());
    assert_eq!(s.metrics().late_spans_not_sampled, 2);
}

#[test]
fn a_trace_decided_on_a_receivers_thread_should_not_hold_the_shard_lock() {
    let (s, _clock) = gold_sampler(2);
    let gate = Gate::new();
    let mut kept = Vec::new();
    s.ingest(span(1, 2).tier("gold").gated(&gate), &mut kept);
    let receiver = {
        let s = s.clone();
        thread::spawn(move || {
            let mut kept = Vec::new();
            // The trace's second span reaches max_spans_per_trace: decided on this thread.
            s.ingest(span(1, 3), &mut kept);
            kept
        })
    };
    ingest_while_blocked(&s, &gate, span(1, 1));
    let kept = receiver.join().unwrap();
    assert!(
        !gate.timed_out.load(SeqCst),
        "the decision held the shard lock"
    );
    assert_eq!(ids(&kept), vec![(1, 1), (1, 2), (1, 3)]);
    let m = s.metrics();
    assert_eq!(m.traces_decided_on_max_spans, 1);
    assert_eq!((m.count_spans_sampled, m.late_spans_sampled), (2, 1));
}

#[test]
fn shared_bytes_should_be_charged_once_per_run_and_count_towards_the_byte_bound() {
    const SHARED: usize = 4 * 1024;
    const BOUND: usize = 64 * 1024;
    let new = || -> TailSampler<GatedSpan> {
        let cfg = SamplerConfig::default()
            .with_num_shards(1)
            .with_max_buffer_bytes(BOUND);
        TailSampler::with_clock(cfg, Arc::new(ManualClock::new())).unwrap()
    };
    let (plain, sharing) = (new(), new());
    let mut kept = Vec::new();
    // Each trace: three spans sharing one block, then one sharing another: two runs.
    for t in 1..=4u128 {
        for id in 1..=4u64 {
            let block = 2 * t as usize + usize::from(id == 4);
            plain.ingest(span(t, id), &mut kept);
            sharing.ingest(span(t, id).sharing(block, SHARED), &mut kept);
        }
    }
    let ((traces, base), (_, bytes)) = (plain.occupancy(), sharing.occupancy());
    assert_eq!(traces, 4);
    assert_eq!(bytes, base + 4 * 2 * SHARED);
    // Traces holding larger blocks push the buffer past its bound: the oldest go early.
    for t in 5..=8u128 {
        sharing.ingest(span(t, 1).sharing(100 + t as usize, 2 * SHARED), &mut kept);
        assert!(sharing.occupancy().1 <= BOUND);
    }
    assert!(sharing.metrics().traces_decided_early > 0);
    assert_eq!(plain.metrics().traces_decided_early, 0);
    // Released with the traces.
    sharing.flush(&mut kept);
    assert_eq!(sharing.occupancy(), (0, 0));
}
