//! Pressure: the sampler is offered three times its configured capacity. Memory stays within the
//! byte bound at every step, every error trace is still kept in full, and the counters add up:
//!
//! ```text
//! offered traces = kept on time + dropped on time + decided early (kept or dropped)
//! offered spans  = spans of kept traces + spans of dropped traces + late spans (kept or dropped)
//! ```
//!
//! Traces arrive eight at a time, interleaved. The first half arrives at one instant, so only
//! pressure (oldest first) can decide, and every shard is offered more than its share whatever
//! the hash assigns it; then the clock moves on, so decisions happen by the root's quiet period
//! too, and by the final flush.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData, SpanProcessor};
use traceq_sampler::testing::TestSpan;
use traceq_sampler::{
    ManualClock, ProcessorConfig, SamplerConfig, SpanView, TailSampler, TailSamplingProcessor,
};

const NUM_TRACES: usize = 200;
const MAX_BYTES: usize = 512 * 1024;
const SPANS_PER_TRACE: u64 = 10;
const WINDOW: usize = 8;

/// Trace `t`: 10 spans with a 100-byte attribute, children first; every 7th trace has an error
/// in a random-looking position.
fn trace(t: u128) -> Vec<SpanData> {
    let error_at = t
        .is_multiple_of(7)
        .then_some((t % SPANS_PER_TRACE as u128) as u64 + 1);
    (1..=SPANS_PER_TRACE)
        .rev()
        .map(|id| {
            let mut b = TestSpan::new(t, id).attr(KeyValue::new("payload", "x".repeat(100)));
            if id != 1 {
                b = b.child_of(1);
            }
            if error_at == Some(id) {
                b = b.error();
            }
            b.build()
        })
        .collect()
}

fn config() -> SamplerConfig {
    SamplerConfig::default()
        .with_num_traces(NUM_TRACES)
        .with_max_buffer_bytes(MAX_BYTES)
        .with_num_shards(4)
}

/// Enough traces that both the trace bound and the byte bound are offered three times over.
fn offered_traces() -> u128 {
    let bytes_per_trace: usize = trace(1).iter().map(SpanView::size_bytes).sum();
    (3 * NUM_TRACES).max(3 * MAX_BYTES / bytes_per_trace + 1) as u128
}

/// Interleaves traces `WINDOW` at a time, span by span.
fn delivery() -> Vec<SpanData> {
    let n = offered_traces();
    let mut out = Vec::new();
    let mut start = 1;
    while start <= n {
        let end = (start + WINDOW as u128).min(n + 1);
        let mut window: Vec<std::vec::IntoIter<SpanData>> =
            (start..end).map(|t| trace(t).into_iter()).collect();
        loop {
            let before = out.len();
            for spans in &mut window {
                out.extend(spans.next());
            }
            if out.len() == before {
                break;
            }
        }
        start = end;
    }
    out
}

fn error_traces() -> BTreeMap<u128, usize> {
    (1..=offered_traces())
        .filter(|t| t % 7 == 0)
        .map(|t| (t, SPANS_PER_TRACE as usize))
        .collect()
}

fn by_trace(spans: &[SpanData]) -> BTreeMap<u128, usize> {
    let mut out = BTreeMap::new();
    for s in spans {
        *out.entry(u128::from_be_bytes(s.span_context.trace_id().to_bytes()))
            .or_default() += 1;
    }
    out
}

#[test]
fn under_three_times_capacity_the_core_should_stay_bounded_and_keep_every_error_trace() {
    let clock = ManualClock::new();
    let sampler: TailSampler<SpanData> =
        TailSampler::with_clock(config(), Arc::new(clock.clone())).unwrap();
    let spans = delivery();
    let offered_spans = spans.len() as u64;
    let half = spans.len() / 2;
    let mut kept = Vec::new();
    for (i, span) in spans.into_iter().enumerate() {
        sampler.ingest(span, &mut kept);
        let m = sampler.metrics();
        assert!(
            m.bytes_buffered <= MAX_BYTES as u64,
            "{} bytes buffered",
            m.bytes_buffered
        );
        assert!(m.sampling_traces_on_memory <= NUM_TRACES as u64);
        if i >= half && i % 50 == 0 {
            clock.advance(Duration::from_millis(300));
            sampler.poll(&mut kept);
        }
    }
    sampler.flush(&mut kept);

    let exported = by_trace(&kept);
    for (t, n) in error_traces() {
        assert_eq!(
            exported.get(&t),
            Some(&n),
            "error trace {t} not kept in full"
        );
    }
    let m = sampler.metrics();
    let offered = offered_traces() as u64;
    assert!(
        m.traces_decided_early > 0,
        "no pressure: the test does not test anything"
    );
    assert!(m.traces_decided_after_root > 0);
    assert_eq!(m.new_trace_id_received, offered);
    let early_dropped = m.traces_decided_early - m.early_traces_sampled;
    let on_time_kept = m.global_count_traces_sampled - m.early_traces_sampled;
    let on_time_dropped = m.global_count_traces_not_sampled - early_dropped;
    assert_eq!(
        offered,
        on_time_kept + on_time_dropped + m.traces_decided_early
    );
    assert_eq!(
        offered_spans,
        m.count_spans_sampled
            + m.count_spans_not_sampled
            + m.late_spans_sampled
            + m.late_spans_not_sampled
    );
    assert_eq!(
        m.count_spans_sampled + m.late_spans_sampled,
        kept.len() as u64
    );
    assert_eq!((m.sampling_traces_on_memory, m.bytes_buffered), (0, 0));
}

#[test]
fn under_three_times_capacity_the_processor_should_export_every_error_trace_in_full() {
    let exporter = InMemorySpanExporter::default();
    let processor = TailSamplingProcessor::with_parts(
        exporter.clone(),
        config(),
        ProcessorConfig::default(),
        Arc::new(ManualClock::new()),
    )
    .unwrap();
    let spans = delivery();
    let offered_spans = spans.len() as u64;
    for span in spans {
        processor.on_end(span);
    }
    processor.force_flush().unwrap();
    let exported = exporter.get_finished_spans().unwrap();
    let by = by_trace(&exported);
    for (t, n) in error_traces() {
        assert_eq!(by.get(&t), Some(&n), "error trace {t} not exported in full");
    }
    let m = processor.metrics();
    assert_eq!(m.spans_dropped_queue_full, 0);
    assert_eq!(m.spans_exported, exported.len() as u64);
    assert!(m.traces_decided_early > 0);
    assert_eq!(
        offered_spans,
        m.count_spans_sampled
            + m.count_spans_not_sampled
            + m.late_spans_sampled
            + m.late_spans_not_sampled
    );
    processor.shutdown().unwrap();
}

#[test]
fn bytes_per_buffered_span_should_be_at_most_twice_the_span_size() {
    let sampler: TailSampler<SpanData> =
        TailSampler::with_clock(SamplerConfig::default(), Arc::new(ManualClock::new())).unwrap();
    let mut own = 0;
    let mut kept = Vec::new();
    for t in 1..=1000u128 {
        for span in trace(t) {
            own += span.size_bytes();
            sampler.ingest(span, &mut kept);
        }
    }
    let m = sampler.metrics();
    assert_eq!(m.spans_buffered, 10_000);
    let ratio = m.bytes_buffered as f64 / own as f64;
    assert!(ratio <= 2.0, "buffer uses {ratio:.2}x the spans' own size");
}

/// Four threads at once, within capacity: nothing is lost or counted twice. (Under pressure a
/// trace still being written by a descheduled thread can become the oldest and be decided early,
/// before its error span arrives; the single-threaded tests above cover pressure.)
#[test]
fn spans_ingested_from_many_threads_should_all_be_accounted_for() {
    let sampler: Arc<TailSampler<SpanData>> = Arc::new(
        TailSampler::with_clock(
            SamplerConfig::default().with_num_shards(4),
            Arc::new(ManualClock::new()),
        )
        .unwrap(),
    );
    let threads: Vec<_> = (0..4u128)
        .map(|worker| {
            let sampler = sampler.clone();
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                for t in 0..200u128 {
                    for span in trace(1 + worker * 1000 + t) {
                        sampler.ingest(span, &mut kept);
                    }
                }
                kept
            })
        })
        .collect();
    let mut kept: Vec<SpanData> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    sampler.flush(&mut kept);
    let m = sampler.metrics();
    assert_eq!(m.traces_decided_early, 0);
    assert_eq!(m.spans_received, 4 * 200 * SPANS_PER_TRACE);
    assert_eq!(m.new_trace_id_received, 800);
    assert!(m.bytes_buffered == 0 && m.sampling_traces_on_memory == 0);
    let exported = by_trace(&kept);
    for t in (0..4u128).flat_map(|w| (0..200u128).map(move |t| 1 + w * 1000 + t)) {
        if t % 7 == 0 {
            assert_eq!(
                exported.get(&t),
                Some(&(SPANS_PER_TRACE as usize)),
                "trace {t}"
            );
        }
    }
    assert_eq!(
        m.count_spans_sampled + m.late_spans_sampled,
        kept.len() as u64
    );
}
