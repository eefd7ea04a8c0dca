//! Properties of the tail sampler that users rely on, checked on random traces delivered in
//! random orders: error traces are exported whole, the decision does not depend on arrival
//! order, probabilistic decisions depend on the trace id and salt only, and no span is exported
//! twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData, SpanProcessor};
use proptest::prelude::*;
use traceq_sampler::testing::TestSpan;
use traceq_sampler::{
    AttrValue, ManualClock, PolicyConfig, ProbabilisticConfig, ProcessorConfig, SamplerConfig,
    SpanView, TailSampler, TailSamplingProcessor, POLICY_ATTRIBUTE,
};

/// One generated span: its id, its parent (0 = none), whether the parent is remote, and status.
#[derive(Debug, Clone)]
struct GenSpan {
    id: u64,
    parent: u64,
    remote_parent: bool,
    error: bool,
}

#[derive(Debug, Clone)]
struct GenTrace {
    trace_id: u128,
    spans: Vec<GenSpan>,
}

impl GenTrace {
    fn has_error(&self) -> bool {
        self.spans.iter().any(|s| s.error)
    }
}

/// A trace of 1..12 spans in a random tree; the root may be missing, local, or remote-parented.
fn trace_strategy() -> impl Strategy<Value = GenTrace> {
    (
        any::<u128>().prop_filter("valid trace id", |t| *t != 0),
        prop::collection::vec(
            (any::<prop::sample::Index>(), prop::bool::weighted(0.08)),
            1..12,
        ),
        0..3u8,
    )
        .prop_map(|(trace_id, shape, root_kind)| {
            let spans = shape
                .iter()
                .enumerate()
                .map(|(i, (parent, error))| {
                    let id = i as u64 + 1;
                    let (parent, remote_parent) = match (i, root_kind) {
                        (0, 0) => (0, false),
                        (0, 1) => (999, true),
                        (0, _) => (1000, false), // parent never seen: no local root
                        _ => (parent.index(i) as u64 + 1, false),
                    };
                    GenSpan {
                        id,
                        parent,
                        remote_parent,
                        error: *error,
                    }
                })
                .collect();
            GenTrace { trace_id, spans }
        })
}

fn traces_strategy() -> impl Strategy<Value = Vec<GenTrace>> {
    prop::collection::vec(trace_strategy(), 1..16).prop_map(|mut traces| {
        // Distinct trace ids.
        let mut seen = BTreeSet::new();
        traces.retain(|t| seen.insert(t.trace_id));
        traces
    })
}

fn build(trace: &GenTrace, span: &GenSpan) -> SpanData {
    let mut b = TestSpan::new(trace.trace_id, span.id);
    if span.remote_parent {
        b = b.remote_parent(span.parent);
    } else if span.parent != 0 {
        b = b.child_of(span.parent);
    }
    if span.error {
        b = b.error();
    }
    b.build()
}

/// Every (trace index, span index) pair, as a delivery order to be shuffled.
fn slots(traces: &[GenTrace]) -> Vec<(usize, usize)> {
    traces
        .iter()
        .enumerate()
        .flat_map(|(t, tr)| (0..tr.spans.len()).map(move |s| (t, s)))
        .collect()
}

fn config(salt: &str) -> SamplerConfig {
    let mut probabilistic = PolicyConfig::probabilistic("some", 30.0);
    probabilistic.probabilistic = Some(ProbabilisticConfig {
        sampling_percentage: 30.0,
        hash_salt: Some(salt.to_owned()),
    });
    SamplerConfig::default().with_policies(vec![
        PolicyConfig::status_code("errors", &["ERROR"]),
        probabilistic,
    ])
}

/// Delivers the spans in `order` to a fresh sampler, flushes, and returns the exported spans as
/// (trace id, span id) -> deciding policy.
fn run(
    traces: &[GenTrace],
    order: &[(usize, usize)],
    cfg: SamplerConfig,
) -> BTreeMap<(u128, u64), String> {
    let sampler: TailSampler<SpanData> =
        TailSampler::with_clock(cfg, Arc::new(ManualClock::new())).unwrap();
    let mut kept = Vec::new();
    for &(t, s) in order {
        sampler.ingest(build(&traces[t], &traces[t].spans[s]), &mut kept);
    }
    sampler.flush(&mut kept);
    collect(kept)
}

fn collect(kept: Vec<SpanData>) -> BTreeMap<(u128, u64), String> {
    let mut out = BTreeMap::new();
    for span in kept {
        let key = (
            u128::from_be_bytes(span.span_context.trace_id().to_bytes()),
            u64::from_be_bytes(span.span_context.span_id().to_bytes()),
        );
        let policy = match span.attribute(POLICY_ATTRIBUTE) {
            Some(AttrValue::Str(p)) => p.to_owned(),
            other => panic!("kept span without a policy attribute: {other:?}"),
        };
        assert!(
            out.insert(key, policy).is_none(),
            "span {key:?} exported twice"
        );
    }
    out
}

fn kept_traces(out: &BTreeMap<(u128, u64), String>) -> BTreeSet<u128> {
    out.keys().map(|(t, _)| *t).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn error_traces_should_be_exported_whole_and_no_span_twice(
        (traces, order) in traces_strategy().prop_flat_map(|t| {
            let s = slots(&t);
            (Just(t), Just(s).prop_shuffle())
        })
    ) {
        let out = run(&traces, &order, config("salt"));
        for trace in traces.iter().filter(|t| t.has_error()) {
            for span in &trace.spans {
                prop_assert!(out.contains_key(&(trace.trace_id, span.id)));
            }
            prop_assert_eq!(&out[&(trace.trace_id, trace.spans[0].id)], "errors");
        }
        // Kept traces are kept whole, whoever kept them.
        for trace in &traces {
            let n = out.keys().filter(|(t, _)| *t == trace.trace_id).count();
            prop_assert!(n == 0 || n == trace.spans.len());
        }
    }

    #[test]
    fn the_decision_should_not_depend_on_arrival_order(
        (traces, first, second) in traces_strategy().prop_flat_map(|t| {
            let s = slots(&t);
            (Just(t), Just(s.clone()).prop_shuffle(), Just(s).prop_shuffle())
        })
    ) {
        let a = run(&traces, &first, config("salt"));
        let b = run(&traces, &second, config("salt").with_num_shards(1));
        prop_assert_eq!(a, b);
    }

    #[test]
    fn probabilistic_decisions_should_depend_only_on_trace_id_and_salt(
        ids in prop::collection::btree_set(1..u128::MAX, 1..64),
    ) {
        let ids: Vec<u128> = ids.into_iter().collect();
        let decide = |order: &[u128], salt: &str, shards: usize| {
            let sampler: TailSampler<SpanData> = TailSampler::with_clock(
                config(salt).with_num_shards(shards),
                Arc::new(ManualClock::new()),
            )
            .unwrap();
            let mut kept = Vec::new();
            for id in order {
                sampler.ingest(TestSpan::new(*id, 1).build(), &mut kept);
            }
            sampler.flush(&mut kept);
            kept_traces(&collect(kept))
        };
        let reversed: Vec<u128> = ids.iter().rev().copied().collect();
        let one = decide(&ids, "salt", 64);
        prop_assert_eq!(&one, &decide(&reversed, "salt", 1));
        prop_assert_eq!(&one, &decide(&ids, "salt", 8));
        // Each id on its own: a pure function, not a function of the batch it came in.
        for id in &ids {
            prop_assert_eq!(one.contains(id), decide(&[*id], "salt", 64).contains(id));
        }
        if ids.len() >= 32 {
            prop_assert_ne!(one, decide(&ids, "other salt", 64));
        }
    }

    #[test]
    fn decisions_made_while_spans_arrive_should_never_export_a_span_twice(
        (traces, order, steps) in traces_strategy().prop_flat_map(|t| {
            let s = slots(&t);
            let n = s.len();
            (Just(t), Just(s).prop_shuffle(), prop::collection::vec(0..1500u64, n))
        })
    ) {
        let clock = ManualClock::new();
        let sampler: TailSampler<SpanData> =
            TailSampler::with_clock(config("salt"), Arc::new(clock.clone())).unwrap();
        let mut kept = Vec::new();
        for (&(t, s), step) in order.iter().zip(&steps) {
            sampler.ingest(build(&traces[t], &traces[t].spans[s]), &mut kept);
            clock.advance(Duration::from_millis(*step));
            sampler.poll(&mut kept);
        }
        sampler.flush(&mut kept);
        let out = collect(kept);
        // Every exported span of a trace carries the same decision.
        let mut by_trace: BTreeMap<u128, BTreeSet<&String>> = BTreeMap::new();
        for ((t, _), p) in &out {
            by_trace.entry(*t).or_default().insert(p);
        }
        prop_assert!(by_trace.values().all(|p| p.len() == 1));
        let m = sampler.metrics();
        prop_assert_eq!(m.spans_received, order.len() as u64);
        prop_assert_eq!(
            m.spans_received,
            m.count_spans_sampled + m.count_spans_not_sampled + m.late_spans_sampled
                + m.late_spans_not_sampled + m.spans_buffered
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_processor_should_export_error_traces_whole_exactly_once(
        (traces, order) in traces_strategy().prop_flat_map(|t| {
            let s = slots(&t);
            (Just(t), Just(s).prop_shuffle())
        })
    ) {
        let exporter = InMemorySpanExporter::default();
        let processor = TailSamplingProcessor::with_parts(
            exporter.clone(),
            config("salt"),
            ProcessorConfig::default(),
            Arc::new(ManualClock::new()),
        )
        .unwrap();
        for &(t, s) in &order {
            processor.on_end(build(&traces[t], &traces[t].spans[s]));
        }
        processor.force_flush().unwrap();
        let exported = exporter.get_finished_spans().unwrap();
        let out = collect(exported);
        for trace in traces.iter().filter(|t| t.has_error()) {
            prop_assert!(trace.spans.iter().all(|s| out.contains_key(&(trace.trace_id, s.id))));
        }
        prop_assert_eq!(out, run(&traces, &order, config("salt")));
        processor.shutdown().unwrap();
    }
}
