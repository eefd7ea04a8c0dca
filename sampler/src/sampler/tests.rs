//! Tests of the core: decision triggers, caches, job linkage, bounds, counters.

// These tests run the core on boxed spans (the `Box<S>` span view), so kept spans come back boxed.
#![allow(clippy::vec_box)]

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanData;

use crate::decision::{JOB_LINKAGE_POLICY, POLICY_ATTRIBUTE};
use crate::span::{AttrValue, SpanView};
use crate::testing::TestSpan;
use crate::{ManualClock, PolicyConfig, SamplerConfig, TailSampler};

type Sampler = TailSampler<Box<SpanData>>;

fn sampler(cfg: SamplerConfig) -> (Sampler, ManualClock) {
    let clock = ManualClock::new();
    (
        TailSampler::with_clock(cfg, Arc::new(clock.clone())).unwrap(),
        clock,
    )
}

fn errors_only() -> SamplerConfig {
    SamplerConfig::default().with_policies(vec![PolicyConfig::status_code("errors", &["ERROR"])])
}

fn ingest(s: &Sampler, span: SpanData, kept: &mut Vec<Box<SpanData>>) {
    s.ingest(Box::new(span), kept);
}

#[test]
fn a_trace_should_be_decided_after_its_root_ended_and_the_quiet_period_passed() {
    let (s, clock) = sampler(errors_only());
    let mut kept = Vec::new();
    ingest(
        &s,
        TestSpan::new(1, 2).child_of(1).error().build(),
        &mut kept,
    );
    ingest(&s, TestSpan::new(1, 1).build(), &mut kept);
    clock.advance(Duration::from_millis(1999));
    assert_eq!(s.poll(&mut kept), 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(s.poll(&mut kept), 1);
    assert_eq!(kept.len(), 2);
    let m = s.metrics();
    assert_eq!(m.traces_decided_after_root, 1);
    assert_eq!(m.decision_latency_max_nanos, 2_000_000_000);
}

#[test]
fn a_span_after_the_root_should_restart_the_quiet_period() {
    let (s, clock) = sampler(errors_only());
    let mut kept = Vec::new();
    ingest(&s, TestSpan::new(1, 1).build(), &mut kept);
    clock.advance(Duration::from_millis(1500));
    ingest(
        &s,
        TestSpan::new(1, 2).child_of(1).error().build(),
        &mut kept,
    );
    clock.advance(Duration::from_millis(1500));
    assert_eq!(s.poll(&mut kept), 0);
    clock.advance(Duration::from_millis(500));
    assert_eq!(s.poll(&mut kept), 1);
    assert_eq!(kept.len(), 2);
}

#[test]
fn a_span_with_a_remote_parent_should_count_as_the_root() {
    let (s, clock) = sampler(errors_only());
    let mut kept = Vec::new();
    ingest(
        &s,
        TestSpan::new(1, 1).remote_parent(99).error().build(),
        &mut kept,
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(s.poll(&mut kept), 1);
}

#[test]
fn a_trace_without_a_local_root_should_be_decided_after_decision_wait() {
    let (s, clock) = sampler(errors_only());
    let mut kept = Vec::new();
    ingest(
        &s,
        TestSpan::new(1, 2).child_of(1).error().build(),
        &mut kept,
    );
    clock.advance(Duration::from_secs(29));
    assert_eq!(s.poll(&mut kept), 0);
    clock.advance(Duration::from_secs(1));
    assert_eq!(s.poll(&mut kept), 1);
    assert_eq!(s.metrics().traces_decided_on_wait, 1);
}

#[test]
fn a_trace_reaching_max_spans_should_be_decided_at_once() {
    let (s, _clock) = sampler(errors_only().with_max_spans_per_trace(3));
    let mut kept = Vec::new();
    ingest(
        &s,
        TestSpan::new(1, 2).child_of(1).error().build(),
        &mut kept,
    );
    ingest(&s, TestSpan::new(1, 3).child_of(1).build(), &mut kept);
    assert!(kept.is_empty());
    ingest(&s, TestSpan::new(1, 4).child_of(1).build(), &mut kept);
    assert_eq!(kept.len(), 3);
    // The rest of the trace follows the cached decision.
    ingest(&s, TestSpan::new(1, 1).build(), &mut kept);
    assert_eq!(kept.len(), 4);
    let m = s.metrics();
    assert_eq!(m.traces_decided_on_max_spans, 1);
    assert_eq!(m.late_spans_sampled, 1);
}

#[test]
fn late_spans_should_follow_the_cached_decision_both_ways() {
    let (s, _clock) = sampler(errors_only());
    let mut kept = Vec::new();
    ingest(&s, TestSpan::new(1, 1).error().build(), &mut kept);
    ingest(&s, TestSpan::new(2, 1).build(), &mut kept);
    s.flush(&mut kept);
    assert_eq!(kept.len(), 1);
    // A late error span of the dropped trace stays dropped; a late ok span of the kept one is kept.
    ingest(
        &s,
        TestSpan::new(2, 2).child_of(1).error().build(),
        &mut kept,
    );
    ingest(&s, TestSpan::new(1, 2).child_of(1).build(), &mut kept);
    assert_eq!(kept.len(), 2);
    assert_eq!(
        kept[1].attribute(POLICY_ATTRIBUTE),
        Some(AttrValue::Str("errors"))
    );
    let m = s.metrics();
    assert_eq!((m.late_spans_sampled, m.late_spans_not_sampled), (1, 1));
    assert_eq!(m.sampling_traces_on_memory, 0);
}

#[test]
fn without_caches_a_late_span_should_start_a_new_trace() {
    let (s, _clock) = sampler(errors_only().with_decision_cache(0, 0));
    let mut kept = Vec::new();
    ingest(&s, TestSpan::new(1, 1).error().build(), &mut kept);
    s.flush(&mut kept);
    ingest(&s, TestSpan::new(1, 2).child_of(1).build(), &mut kept);
    assert_eq!(s.metrics().sampling_traces_on_memory, 1);
}

#[test]
fn later_segments_of_a_job_kept_for_an_error_should_be_kept() {
    let (s, _clock) = sampler(errors_only());
    let job = || KeyValue::new("traceq.job.id", "job-7");
    let mut kept = Vec::new();
    ingest(
        &s,
        TestSpan::new(1, 1).attr(job()).error().build(),
        &mut kept,
    );
    s.flush(&mut kept);
    ingest(&s, TestSpan::new(2, 1).attr(job()).build(), &mut kept);
    ingest(
        &s,
        TestSpan::new(3, 1)
            .attr(KeyValue::new("traceq.job.id", "job-8"))
            .build(),
        &mut kept,
    );
    s.flush(&mut kept);
    assert_eq!(kept.len(), 2);
    assert_eq!(
        kept[1].attribute(POLICY_ATTRIBUTE),
        Some(AttrValue::Str(JOB_LINKAGE_POLICY))
    );
    assert_eq!(s.metrics().traces_kept_by_job_linkage, 1);
}

#[test]
fn only_segments_at_or_after_the_error_segment_should_be_linked() {
    let (s, _clock) = sampler(errors_only());
    let span = |trace: u128, segment: i64| {
        TestSpan::new(trace, 1)
            .attr(KeyValue::new("traceq.job.id", "job-9"))
            .attr(KeyValue::new("traceq.segment", segment))
    };
    let mut kept = Vec::new();
    ingest(&s, span(6, 6).error().build(), &mut kept);
    s.flush(&mut kept);
    // Segment 5 is decided after segment 6 failed, but comes before it: not linked.
    ingest(&s, span(5, 5).build(), &mut kept);
    ingest(&s, span(7, 7).build(), &mut kept);
    s.flush(&mut kept);
    let kept_segments: Vec<_> = kept.iter().map(|k| k.attribute("traceq.segment")).collect();
    assert_eq!(
        kept_segments,
        vec![Some(AttrValue::I64(6)), Some(AttrValue::I64(7))]
    );
    assert_eq!(s.metrics().traces_kept_by_job_linkage, 1);
}

#[test]
fn a_job_kept_without_an_error_should_not_link_its_segments() {
    let cfg = SamplerConfig::default().with_policies(vec![PolicyConfig::span_count_for_test(2)]);
    let (s, _clock) = sampler(cfg);
    let job = || KeyValue::new("traceq.job.id", "job-1");
    let mut kept = Vec::new();
    ingest(&s, TestSpan::new(1, 1).attr(job()).build(), &mut kept);
    ingest(&s, TestSpan::new(1, 2).child_of(1).build(), &mut kept);
    s.flush(&mut kept);
    ingest(&s, TestSpan::new(2, 1).attr(job()).build(), &mut kept);
    s.flush(&mut kept);
    assert_eq!(kept.len(), 2);
}

#[test]
fn pressure_should_decide_the_oldest_traces_early_and_keep_their_errors() {
    let cfg = errors_only().with_num_traces(16).with_num_shards(1);
    let (s, _clock) = sampler(cfg);
    let mut kept = Vec::new();
    for t in 1..=20u128 {
        let span = TestSpan::new(t, 1);
        let span = if t <= 2 { span.error() } else { span };
        ingest(&s, span.build(), &mut kept);
    }
    let m = s.metrics();
    assert_eq!(m.traces_decided_early, 4);
    assert_eq!(m.early_traces_sampled, 2);
    assert_eq!(m.sampling_traces_on_memory, 16);
    assert_eq!(kept.len(), 2);
}

#[test]
fn buffered_bytes_should_stay_within_the_byte_bound() {
    let cfg = errors_only()
        .with_max_buffer_bytes(64 * 1024)
        .with_num_shards(4);
    let (s, _clock) = sampler(cfg);
    let mut kept = Vec::new();
    for t in 1..=2000u128 {
        ingest(
            &s,
            TestSpan::new(t, 1)
                .attr(KeyValue::new("k", "v".repeat(100)))
                .build(),
            &mut kept,
        );
        assert!(s.metrics().bytes_buffered <= 64 * 1024);
    }
    assert!(s.metrics().traces_decided_early > 1000);
    assert!(s.byte_capacity() <= 64 * 1024);
}

#[test]
fn shutdown_should_drop_pending_traces_when_configured() {
    let mut cfg = errors_only();
    cfg.drop_pending_traces_on_shutdown = true;
    let (s, _clock) = sampler(cfg);
    let mut kept = Vec::new();
    ingest(&s, TestSpan::new(1, 1).error().build(), &mut kept);
    assert_eq!(s.shutdown(&mut kept), 1);
    assert!(kept.is_empty());
    let m = s.metrics();
    assert_eq!(
        (m.traces_dropped_on_shutdown, m.spans_dropped_on_shutdown),
        (1, 1)
    );
}

#[test]
fn counters_should_add_up_and_credit_policies() {
    let (s, clock) = sampler(SamplerConfig::default());
    let mut kept = Vec::new();
    for t in 1..=500u128 {
        ingest(&s, TestSpan::new(t, 2).child_of(1).build(), &mut kept);
        let root = TestSpan::new(t, 1);
        let root = if t % 10 == 0 { root.error() } else { root };
        ingest(&s, root.build(), &mut kept);
    }
    clock.advance(Duration::from_secs(3));
    s.poll(&mut kept);
    let m = s.metrics();
    assert_eq!(m.new_trace_id_received, 500);
    assert_eq!(
        m.global_count_traces_sampled + m.global_count_traces_not_sampled,
        500
    );
    assert_eq!(m.count_spans_sampled, kept.len() as u64);
    assert_eq!(m.policies[0].traces_kept, 50);
    let share = m.policies[1].traces_kept as f64 / 450.0;
    assert!((0.04..0.18).contains(&share), "{share}");
    assert_eq!(m.spans_buffered + m.bytes_buffered, 0);
}

#[test]
fn kept_spans_of_probabilistic_traces_should_carry_count_and_threshold() {
    let cfg =
        SamplerConfig::default().with_policies(vec![PolicyConfig::probabilistic("half", 50.0)]);
    let (s, _clock) = sampler(cfg);
    let mut kept = Vec::new();
    for t in 1..=100u128 {
        ingest(&s, TestSpan::new(t, 1).build(), &mut kept);
    }
    s.flush(&mut kept);
    assert!(!kept.is_empty());
    for span in &kept {
        assert_eq!(
            span.attribute(crate::ADJUSTED_COUNT_ATTRIBUTE),
            Some(AttrValue::F64(2.0))
        );
        assert_eq!(span.trace_state("ot"), Some("th:8"));
    }
}

#[test]
fn public_types_should_be_send_and_sync() {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Sampler>();
    is_send_sync::<crate::TailSamplingProcessor>();
    is_send_sync::<crate::SamplerMetricsHandle>();
    is_send_sync::<crate::DurationError>();
    is_send_sync::<SamplerConfig>();
    is_send_sync::<crate::SamplerMetrics>();
    is_send_sync::<crate::ConfigError>();
    is_send_sync::<crate::SystemClock>();
    is_send_sync::<ManualClock>();
    is_send_sync::<crate::KeptDecision>();
}

#[test]
fn occupancy_should_count_buffered_traces_and_bytes_until_they_are_decided() {
    let (s, _clock) = sampler(errors_only().with_num_traces(1000));
    assert_eq!(s.occupancy(), (0, 0));
    assert!(s.trace_capacity() <= 1000 && s.trace_capacity() > 0);
    let mut kept = Vec::new();
    ingest(&s, TestSpan::new(1, 1).build(), &mut kept);
    ingest(&s, TestSpan::new(1, 2).child_of(1).build(), &mut kept);
    ingest(&s, TestSpan::new(2, 3).build(), &mut kept);
    let (traces, bytes) = s.occupancy();
    assert_eq!(traces, 2);
    assert_eq!(bytes as u64, s.metrics().bytes_buffered);
    s.flush(&mut kept);
    assert_eq!(s.occupancy(), (0, 0));
}

#[test]
fn spans_ingested_with_an_age_should_resume_their_timers_not_restart_them() {
    let (s, clock) = sampler(errors_only());
    let mut kept = Vec::new();
    // A root that ended 1.5 s ago (before this sampler existed): due 0.5 s from now.
    s.ingest_batch_aged(
        [Box::new(TestSpan::new(1, 1).error().build())],
        Duration::from_millis(1500),
        &mut kept,
    );
    clock.advance(Duration::from_millis(499));
    assert_eq!(s.poll(&mut kept), 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(s.poll(&mut kept), 1);
    assert_eq!(kept.len(), 1);
    // Its latency counts from its arrival, before the restart.
    assert_eq!(s.metrics().decision_latency_max_nanos, 2_000_000_000);
}

#[test]
fn restored_decisions_should_be_followed_by_late_spans() {
    let (s, _clock) = sampler(errors_only());
    let mut kept = Vec::new();
    let decision = Arc::new(crate::KeptDecision::new(Arc::from("errors"), 1.0));
    s.restore_decision(
        TestSpan::new(7, 1).build().span_context.trace_id(),
        Some(decision),
    );
    s.restore_decision(TestSpan::new(8, 1).build().span_context.trace_id(), None);
    ingest(&s, TestSpan::new(7, 2).child_of(1).build(), &mut kept);
    ingest(
        &s,
        TestSpan::new(8, 2).child_of(1).error().build(),
        &mut kept,
    );
    assert_eq!(kept.len(), 1, "the kept trace's late span is kept at once");
    assert_eq!(
        kept[0].attribute(POLICY_ATTRIBUTE),
        Some(AttrValue::Str("errors"))
    );
    let m = s.metrics();
    assert_eq!((m.late_spans_sampled, m.late_spans_not_sampled), (1, 1));
    assert_eq!(m.sampling_traces_on_memory, 0);
}

#[test]
fn the_decision_hook_should_see_every_decision_of_a_round() {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = seen.clone();
    let clock = ManualClock::new();
    let s: Sampler = TailSampler::with_clock(errors_only(), Arc::new(clock.clone()))
        .unwrap()
        .with_decision_hook(Box::new(move |verdicts| {
            log.lock().extend(
                verdicts
                    .iter()
                    .map(|(t, d)| (*t, d.as_ref().map(|d| d.policy.clone()))),
            );
        }));
    let mut kept = Vec::new();
    ingest(&s, TestSpan::new(1, 1).error().build(), &mut kept);
    ingest(&s, TestSpan::new(2, 1).build(), &mut kept);
    s.flush(&mut kept);
    let mut seen = seen.lock().clone();
    seen.sort_by_key(|(t, _)| t.to_bytes());
    let id = |n| TestSpan::new(n, 1).build().span_context.trace_id();
    assert_eq!(
        seen,
        vec![(id(1), Some(Arc::from("errors"))), (id(2), None)]
    );
}

#[test]
fn replaced_policies_should_decide_buffered_traces_and_keep_counters_by_name() {
    let (s, clock) = sampler(errors_only());
    let mut kept = Vec::new();
    // decided by the first set: an error trace, kept
    ingest(&s, TestSpan::new(1, 1).error().build(), &mut kept);
    clock.advance(Duration::from_secs(3));
    assert_eq!(s.poll(&mut kept), 1);
    assert_eq!(kept.len(), 1);
    // buffered before the swap, decided after: an ok trace, which only the new set keeps
    ingest(&s, TestSpan::new(2, 1).build(), &mut kept);
    let both = SamplerConfig::default().with_policies(vec![
        PolicyConfig::status_code("errors", &["ERROR"]),
        PolicyConfig::always_sample("everything"),
    ]);
    assert_eq!(s.set_policies(&both).unwrap(), 2);
    clock.advance(Duration::from_secs(3));
    assert_eq!(s.poll(&mut kept), 1);
    assert_eq!(kept.len(), 2);
    let m = s.metrics();
    let names: Vec<_> = m.policies.iter().map(|p| p.policy.as_str()).collect();
    assert_eq!(names, ["errors", "everything"]);
    // `errors` voted twice across the two sets; `everything` once, since it came
    assert_eq!(m.policies[0].traces_sampled, 1);
    assert_eq!(m.policies[0].traces_not_sampled, 1);
    assert_eq!(m.policies[0].traces_kept, 1);
    assert_eq!(m.policies[1].traces_sampled, 1);
    assert_eq!(m.global_count_traces_sampled, 2);

    // an invalid set is refused and the running one stays
    let invalid = SamplerConfig::default().with_policies(Vec::new());
    assert!(s.set_policies(&invalid).is_err());
    ingest(&s, TestSpan::new(3, 1).build(), &mut kept);
    clock.advance(Duration::from_secs(3));
    assert_eq!(s.poll(&mut kept), 1);
    assert_eq!(kept.len(), 3, "kept by `everything`, still running");
}

#[test]
fn a_round_on_the_old_policies_should_add_its_counts_by_name_after_a_swap() {
    use crate::metrics::{DecisionTally, PolicyNames};
    let old = Arc::new(PolicyNames::new(
        vec![Arc::from("a"), Arc::from("b")].into(),
    ));
    let new = Arc::new(PolicyNames::new(
        vec![Arc::from("b"), Arc::from("c")].into(),
    ));
    let mut shard = DecisionTally::new(Arc::clone(&new));
    let mut round = DecisionTally::new(Arc::clone(&old));
    round.policies[0].sampled = 5; // `a`: gone
    round.policies[1].sampled = 7; // `b`: index 0 now
    round.drain_into(&mut shard);
    assert_eq!(shard.policies[0].sampled, 7);
    assert_eq!(shard.policies[1].sampled, 0);
    // and a shard still on the old set follows a round on the new one
    let mut shard = DecisionTally::new(Arc::clone(&old));
    shard.policies[1].sampled = 2;
    let mut round = DecisionTally::new(new);
    round.policies[1].sampled = 1;
    round.drain_into(&mut shard);
    assert_eq!(shard.names.names.len(), 2);
    assert_eq!(&*shard.names.names[1], "c");
    assert_eq!(
        (shard.policies[0].sampled, shard.policies[1].sampled),
        (2, 1)
    );
}
