use std::collections::HashMap;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use proptest::prelude::*;
use prost::Message as _;

use super::*;

fn generator(seed: u64, spans_per_trace: usize, error_ratio: f64) -> TraceGenerator {
    let config = LoadgenConfig::default()
        .with_seed(seed)
        .with_spans_per_trace(spans_per_trace)
        .with_error_ratio(error_ratio);
    TraceGenerator::new(&config, 0)
}

fn spans(generated: &GeneratedRequest) -> &[Span] {
    &generated.request.resource_spans[0].scope_spans[0].spans
}

/// The spans of each trace, in generation order.
fn by_trace(spans: &[Span]) -> HashMap<Vec<u8>, Vec<&Span>> {
    let mut traces: HashMap<Vec<u8>, Vec<&Span>> = HashMap::new();
    for span in spans {
        traces.entry(span.trace_id.clone()).or_default().push(span);
    }
    traces
}

/// Checks one trace's tree: one server root, every parent present, children inside parents,
/// depth bounded. Returns the trace's depth.
fn check_tree(trace: &[&Span]) -> Result<usize, String> {
    let by_id: HashMap<&[u8], &Span> = trace.iter().map(|s| (&s.span_id[..], *s)).collect();
    if by_id.len() != trace.len() {
        return Err("duplicate span ids".into());
    }
    let roots: Vec<_> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    if roots.len() != 1 || roots[0].kind != SpanKind::Server as i32 {
        return Err(format!("{} roots, want one server span", roots.len()));
    }
    let mut max_depth = 0;
    for span in trace {
        if span.start_time_unix_nano > span.end_time_unix_nano {
            return Err(format!("{} ends before it starts", span.name));
        }
        let mut depth = 0;
        let mut child = *span;
        while !child.parent_span_id.is_empty() {
            let parent = by_id
                .get(&child.parent_span_id[..])
                .ok_or_else(|| format!("{}: parent not in the trace", child.name))?;
            if child.start_time_unix_nano < parent.start_time_unix_nano
                || child.end_time_unix_nano > parent.end_time_unix_nano
            {
                return Err(format!("{} outside its parent {}", child.name, parent.name));
            }
            if parent.kind == SpanKind::Client as i32 {
                return Err(format!("client span {} has a child", parent.name));
            }
            depth += 1;
            child = parent;
        }
        max_depth = max_depth.max(depth);
    }
    if max_depth > MAX_DEPTH {
        return Err(format!("depth {max_depth}"));
    }
    Ok(max_depth)
}

#[test]
fn generated_request_should_hold_whole_traces_of_spans_per_trace_spans() {
    let generated = generator(1, 10, 0.01).generate_request(0, 51);
    assert_eq!((generated.traces, generated.spans), (51, 510));
    assert_eq!(spans(&generated).len(), 510);
    let traces = by_trace(spans(&generated));
    assert_eq!(traces.len(), 51);
    assert!(traces.values().all(|t| t.len() == 10));
    let resource = generated.request.resource_spans[0]
        .resource
        .as_ref()
        .unwrap();
    assert!(resource.attributes.iter().any(|kv| kv.key == "service.name"
        && kv.value.as_ref().and_then(|v| v.value.as_ref())
            == Some(&any_value::Value::StringValue("loadgen".into()))));
}

#[test]
fn every_trace_should_be_a_valid_tree_nested_a_level_or_two() {
    let generated = generator(2, 10, 0.0).generate_request(0, 200);
    let mut depths = Vec::new();
    for trace in by_trace(spans(&generated)).values() {
        depths.push(check_tree(trace).unwrap());
    }
    assert!(depths.iter().all(|&d| d >= 1));
    assert!(
        depths.iter().any(|&d| d >= 2),
        "no nesting below the root's children"
    );
}

#[test]
fn error_traces_should_be_exactly_floor_of_n_times_the_ratio() {
    for (ratio, n, want) in [
        (0.01, 1000, 10),
        (0.37, 1000, 370),
        (0.0, 500, 0),
        (1.0, 50, 50),
    ] {
        let mut g = generator(3, 4, ratio);
        // Generated in uneven requests, as workers would: the count depends on indices only.
        let mut errors = 0;
        let mut first = 0;
        for size in [7, 1, 300, 92].iter().cycle() {
            let size = (*size).min(n - first as usize);
            let generated = g.generate_request(first, size);
            let failing: Vec<_> = by_trace(spans(&generated))
                .into_values()
                .filter(|t| {
                    t.iter().any(|s| {
                        s.status.as_ref().map(|s| s.code) == Some(StatusCode::Error as i32)
                    })
                })
                .collect();
            assert_eq!(failing.len(), generated.error_traces);
            errors += generated.error_traces;
            first += size as u64;
            if first as usize == n {
                break;
            }
        }
        assert_eq!(errors, want, "ratio {ratio}");
    }
}

#[test]
fn an_error_trace_should_have_exactly_one_error_span() {
    let generated = generator(4, 10, 1.0).generate_request(0, 100);
    for trace in by_trace(spans(&generated)).values() {
        let errors = trace.iter().filter(|s| s.status.is_some()).count();
        assert_eq!(errors, 1);
    }
}

#[test]
fn the_same_seed_should_generate_the_same_ids_and_shapes() {
    let ids = |seed, stream| {
        let config = LoadgenConfig::default().with_seed(seed);
        let generated = TraceGenerator::new(&config, stream).generate_request(0, 20);
        spans(&generated)
            .iter()
            .map(|s| (s.span_id.clone(), s.parent_span_id.clone(), s.name.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(9, 0), ids(9, 0));
    assert_ne!(ids(9, 0), ids(9, 1), "each worker's stream differs");
    assert_ne!(ids(9, 0), ids(10, 0));
}

/// Measured: 299.7 bytes per span in a 510-span request of 10-span traces (resource, scope and
/// framing included), 296.4 for the `Span` message alone.
#[test]
fn an_encoded_span_should_take_about_300_bytes() {
    let generated = generator(5, 10, 0.01).generate_request(0, 51);
    let per_span = generated.request.encoded_len() as f64 / generated.spans as f64;
    let span_only: usize = spans(&generated).iter().map(|s| s.encoded_len()).sum();
    let span_only = span_only as f64 / generated.spans as f64;
    println!("encoded bytes per span: {per_span:.1} in the request, {span_only:.1} alone");
    assert!((250.0..=350.0).contains(&per_span), "{per_span}");
}

proptest! {
    #[test]
    fn any_seed_and_size_should_give_valid_trees(seed: u64, spans_per_trace in 1usize..60) {
        let generated = generator(seed, spans_per_trace, 0.5).generate_request(0, 5);
        prop_assert_eq!(generated.spans, 5 * spans_per_trace);
        for trace in by_trace(spans(&generated)).values() {
            prop_assert_eq!(trace.len(), spans_per_trace);
            check_tree(trace).map_err(TestCaseError::fail)?;
        }
    }
}
