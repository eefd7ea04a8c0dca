use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::otlp::{decode_request, encode_request};

/// One request per entry of `spans`: (resource index, scope index, name length), each in its
/// own `ResourceSpans`, so equal origins come from different buffers (as from many senders).
fn spans_of(shape: &[(u8, u8, usize)]) -> Vec<OtlpSpan> {
    let mut out = Vec::new();
    for (i, &(r, s, name_len)) in shape.iter().enumerate() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: (r > 0).then(|| Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(format!("svc-{r}"))),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: (s > 0).then(|| InstrumentationScope {
                        name: format!("scope-{s}"),
                        ..Default::default()
                    }),
                    spans: vec![Span {
                        trace_id: vec![3; 16],
                        span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                        name: "x".repeat(name_len),
                        ..Span::default()
                    }],
                    schema_url: if s % 2 == 1 {
                        "https://opentelemetry.io/schemas/1.21.0".into()
                    } else {
                        String::new()
                    },
                }],
                schema_url: String::new(),
            }],
        };
        out.extend(decode_request(&request.encode_to_vec()).unwrap());
    }
    out
}

#[test]
fn varint_widths_should_match_protobuf() {
    for (v, len) in [
        (0u64, 1),
        (127, 1),
        (128, 2),
        (16_383, 2),
        (16_384, 3),
        (4 << 20, 4),
        (u64::MAX, 10),
    ] {
        assert_eq!(varint_len(v), len, "{v}");
    }
}

#[test]
fn a_span_larger_than_the_limit_should_be_refused_by_an_empty_request() {
    let spans = spans_of(&[(1, 1, 500)]);
    let mut size = RequestSize::new(200);
    assert!(!size.try_add(&spans[0]));
    assert!(size.is_empty());
    assert_eq!(size.limit(), 200);
}

#[test]
fn clear_should_start_a_new_request() {
    let spans = spans_of(&[(1, 1, 10), (1, 1, 10)]);
    let mut size = RequestSize::new(1 << 20);
    assert!(size.try_add(&spans[0]));
    let one = size.bound();
    assert!(size.try_add(&spans[1]));
    assert!(size.bound() < 2 * one, "the group overhead is counted once");
    size.clear();
    assert!(size.is_empty());
    assert!(size.try_add(&spans[1]));
    assert_eq!(size.bound(), one);
}

proptest! {
    #[test]
    fn cut_requests_should_encode_under_the_limit_and_close_to_the_bound(
        shape in proptest::collection::vec((0u8..4, 0u8..4, 0usize..300), 1..200),
        limit in 100usize..20_000,
    ) {
        let spans = spans_of(&shape);
        let mut size = RequestSize::new(limit);
        let mut start = 0;
        for i in 0..=spans.len() {
            let fits = i < spans.len() && size.try_add(&spans[i]);
            if fits {
                continue;
            }
            // Cut [start, i): the encoded request is within the bound, which is within the limit.
            if i > start {
                let encoded = encode_request(&spans[start..i]).len();
                prop_assert!(encoded <= size.bound(), "{encoded} > {}", size.bound());
                prop_assert!(size.bound() <= limit);
                let back = ExportTraceServiceRequest::decode(&encode_request(&spans[start..i])[..])
                    .unwrap();
                let groups: usize = back.resource_spans.len()
                    + back.resource_spans.iter().map(|r| r.scope_spans.len()).sum::<usize>();
                // Over-counted by at most the widest prefix per group.
                prop_assert!(size.bound() - encoded <= groups * size.prefix);
            }
            if i == spans.len() {
                break;
            }
            size.clear();
            start = i;
            if !size.try_add(&spans[i]) {
                // Alone too large: its own request is over the limit.
                prop_assert!(encode_request(&spans[i..=i]).len() > limit - 2 * size.prefix);
                start = i + 1;
            }
        }
    }
}
