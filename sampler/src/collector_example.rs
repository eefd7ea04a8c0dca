//! The OpenTelemetry Collector `tail_sampling` README's example configuration, parsed and
//! applied. The policies and values are the README's; the layout is block YAML. The README's
//! `ottl_condition` and `composite` policies are applied too (the end-to-end corpus in the
//! workspace's `tests/tail_sampling_parity.rs` checks each policy's decisions).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanData;

use crate::testing::TestSpan;
use crate::{ManualClock, SamplerConfig, TailSampler};

const SUPPORTED_POLICIES: &str = r"
processors:
  tail_sampling:
    decision_wait: 10s
    num_traces: 100
    expected_new_traces_per_sec: 10
    decision_cache:
      sampled_cache_size: 100_000
      non_sampled_cache_size: 100_000
    policies:
      - name: test-policy-1
        type: always_sample
      - name: test-policy-2
        type: latency
        latency: {threshold_ms: 5000, upper_threshold_ms: 10000}
      - name: test-policy-3
        type: numeric_attribute
        numeric_attribute: {key: key1, min_value: 50, max_value: 100}
      - name: test-policy-4
        type: probabilistic
        probabilistic: {sampling_percentage: 10}
      - name: test-policy-5
        type: status_code
        status_code: {status_codes: [ERROR, UNSET]}
      - name: test-policy-6
        type: string_attribute
        string_attribute: {key: key2, values: [value1, value2]}
      - name: test-policy-7
        type: string_attribute
        string_attribute: {key: key2, values: [value1, val*], enabled_regex_matching: true, cache_max_size: 10}
      - name: test-policy-8
        type: rate_limiting
        rate_limiting: {spans_per_second: 35}
      - name: test-policy-9
        type: bytes_limiting
        bytes_limiting: {bytes_per_second: 1024000, burst_capacity: 2048000}
      - name: test-policy-10
        type: span_count
        span_count: {min_spans: 2, max_spans: 20}
      - name: test-policy-11
        type: trace_state
        trace_state: {key: key3, values: [value1, value2]}
      - name: test-policy-12
        type: boolean_attribute
        boolean_attribute: {key: key4, value: true}
      - name: and-policy-1
        type: and
        and:
          and_sub_policy:
            - name: test-and-policy-1
              type: numeric_attribute
              numeric_attribute: {key: key1, min_value: 50, max_value: 100}
            - name: test-and-policy-2
              type: string_attribute
              string_attribute: {key: key2, values: [value1, value2]}
      - name: drop-policy-1
        type: drop
        drop:
          drop_sub_policy:
            - name: test-drop-policy-1
              type: string_attribute
              string_attribute: {key: url.path, values: [\/health, \/metrics], enabled_regex_matching: true}
";

const OTTL_AND_COMPOSITE_POLICIES: &str = r#"
      - name: test-policy-13
        type: ottl_condition
        ottl_condition:
          error_mode: ignore
          span: ['attributes["test_attr_key_1"] == "test_attr_val_1"']
      - name: composite-policy-1
        type: composite
        composite:
          max_total_spans_per_second: 1000
          policy_order: [test-composite-policy-1]
          composite_sub_policy:
            - name: test-composite-policy-1
              type: always_sample
"#;

fn index(name: &str) -> usize {
    let cfg = SamplerConfig::from_yaml(SUPPORTED_POLICIES).unwrap();
    cfg.policies.iter().position(|p| p.name == name).unwrap()
}

#[test]
fn the_collector_example_should_parse_with_its_settings() {
    let cfg = SamplerConfig::from_yaml(SUPPORTED_POLICIES).unwrap();
    assert_eq!(cfg.decision_wait, Duration::from_secs(10));
    assert_eq!(cfg.num_traces, 100);
    assert_eq!(cfg.decision_cache.sampled_cache_size, 100_000);
    assert_eq!(cfg.policies.len(), 14);
}

#[test]
fn the_whole_collector_example_should_be_accepted_with_ottl_and_composite() {
    let full = format!("{SUPPORTED_POLICIES}{OTTL_AND_COMPOSITE_POLICIES}");
    let cfg = SamplerConfig::from_yaml(&full).unwrap();
    assert_eq!(cfg.policies.len(), 16);
    let composite = cfg.policies[15].composite.as_ref().unwrap();
    assert_eq!(composite.max_total_spans_per_second, 1000);
    assert_eq!(composite.composite_sub_policy.len(), 1);
}

#[test]
fn the_collector_example_should_keep_all_but_health_checks_and_count_each_vote() {
    let cfg = SamplerConfig::from_yaml(SUPPORTED_POLICIES).unwrap();
    let s: TailSampler<Box<SpanData>> =
        TailSampler::with_clock(cfg, Arc::new(ManualClock::new())).unwrap();
    let mut kept = Vec::new();
    let mut offer = |span: SpanData| s.ingest(Box::new(span), &mut kept);
    // Trace 1: a health check, dropped although always_sample matches.
    offer(
        TestSpan::new(1, 1)
            .attr(KeyValue::new("url.path", "/health"))
            .build(),
    );
    // Trace 2: matches key1 in range and key2=value1 (so the `and` policy too), 2 spans.
    offer(TestSpan::new(2, 1).attr(KeyValue::new("key1", 75)).build());
    offer(
        TestSpan::new(2, 2)
            .child_of(1)
            .attr(KeyValue::new("key2", "value1"))
            .build(),
    );
    // Trace 3: a 6 s error trace with key4=true and a tracestate match.
    offer(
        TestSpan::new(3, 1)
            .error()
            .duration_ms(6000)
            .trace_state("key3", "value2")
            .build(),
    );
    offer(
        TestSpan::new(3, 2)
            .child_of(1)
            .attr(KeyValue::new("key4", true))
            .build(),
    );
    s.flush(&mut kept);
    let traces: std::collections::BTreeSet<u128> = kept
        .iter()
        .map(|sp| u128::from_be_bytes(sp.span_context.trace_id().to_bytes()))
        .collect();
    assert_eq!(traces.into_iter().collect::<Vec<_>>(), vec![2, 3]);

    let m = s.metrics();
    let sampled = |name: &str| m.policies[index(name)].traces_sampled;
    assert_eq!(m.policies[index("drop-policy-1")].traces_dropped, 1);
    assert_eq!(sampled("test-policy-1"), 2);
    assert_eq!(sampled("test-policy-2"), 1); // trace 3 lasts 6 s
    assert_eq!(sampled("test-policy-3"), 1);
    assert_eq!(sampled("test-policy-5"), 2); // ERROR or UNSET
    assert_eq!(sampled("test-policy-6"), 1);
    assert_eq!(sampled("test-policy-7"), 1);
    assert_eq!(sampled("test-policy-8"), 2); // 4 spans within 35/s
    assert_eq!(sampled("test-policy-10"), 2);
    assert_eq!(sampled("test-policy-11"), 1);
    assert_eq!(sampled("test-policy-12"), 1);
    assert_eq!(sampled("and-policy-1"), 1);
    assert_eq!(m.policies[index("test-policy-1")].traces_kept, 2);
}
