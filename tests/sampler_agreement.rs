//! Sampling instances agree: two samplers with the same policies, fed the same traces in
//! different orders and at different times (as two collectors behind a router, or one before
//! and one after a restart, would be), keep exactly the same traces. The probabilistic policy
//! hashes the trace id (with the Collector's salt), not a random draw; status and latency
//! policies read only the trace. Rate-limiting policies depend on what else an instance saw
//! and are the exception (documented in the README).

#![allow(clippy::vec_box)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::trace::SpanData;
use proptest::prelude::*;
use traceq::sampler::testing::TestSpan;
use traceq::sampler::{ManualClock, PolicyConfig, SamplerConfig, SpanView, TailSampler};

fn config() -> SamplerConfig {
    SamplerConfig::default().with_policies(vec![
        PolicyConfig::status_code("errors", &["ERROR"]),
        PolicyConfig::probabilistic("some", 30.0),
    ])
}

/// Traces `ids`, three spans each (the root last), every seventh with an error.
fn spans(ids: &[u128]) -> Vec<SpanData> {
    ids.iter()
        .flat_map(|&t| {
            let child = TestSpan::new(t, 2).child_of(1);
            let child = if t % 7 == 0 { child.error() } else { child };
            [
                child.build(),
                TestSpan::new(t, 3).child_of(1).build(),
                TestSpan::new(t, 1).build(),
            ]
        })
        .collect()
}

/// The trace ids one sampler keeps of `input`, fed in that order in runs of `run`, the clock
/// advancing `step` between runs.
fn kept(input: Vec<SpanData>, run: usize, step: Duration) -> BTreeSet<[u8; 16]> {
    let clock = ManualClock::new();
    let sampler = TailSampler::with_clock(config(), Arc::new(clock.clone())).unwrap();
    let mut out: Vec<Box<SpanData>> = Vec::new();
    let mut input = input.into_iter().map(Box::new).peekable();
    while input.peek().is_some() {
        sampler.ingest_batch(input.by_ref().take(run), &mut out);
        clock.advance(step);
        sampler.poll(&mut out);
    }
    sampler.flush(&mut out);
    out.iter().map(|s| s.trace_id().to_bytes()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn two_instances_should_keep_the_same_traces(
        ids in proptest::collection::btree_set(1u128..u128::MAX, 1..300),
        seed in any::<u64>(),
        run_a in 1usize..50,
        run_b in 1usize..50,
    ) {
        let ids: Vec<u128> = ids.into_iter().collect();
        let a = spans(&ids);
        // The other instance sees the spans in another order.
        let mut b = a.clone();
        let mut state = seed | 1;
        for i in (1..b.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b.swap(i, (state % (i as u64 + 1)) as usize);
        }
        // Whole traces before any decision (the quiet period after a root is 2 s).
        let kept_a = kept(a, run_a, Duration::from_millis(1));
        let kept_b = kept(b, run_b, Duration::from_millis(3));
        prop_assert_eq!(&kept_a, &kept_b);
        // Every error trace is among them.
        for &t in ids.iter().filter(|t| *t % 7 == 0) {
            prop_assert!(kept_a.contains(&t.to_be_bytes()));
        }
    }
}
