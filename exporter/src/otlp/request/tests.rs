use super::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use std::sync::Arc;
use traceq_sampler::{
    AttrValue, KeptDecision, SpanView, StatusKind, ADJUSTED_COUNT_ATTRIBUTE, POLICY_ATTRIBUTE,
};

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn span(trace: u8, id: u8, parent: u8, error: bool) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
        name: format!("span-{id}"),
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 5_000,
        trace_state: "vendor=x".into(),
        attributes: vec![
            kv("http.route", any_value::Value::StringValue("/items".into())),
            kv("retries", any_value::Value::IntValue(-3)),
            kv("ratio", any_value::Value::DoubleValue(0.25)),
            kv("cached", any_value::Value::BoolValue(true)),
        ],
        status: error.then(|| Status {
            code: status::StatusCode::Error as i32,
            message: "boom".into(),
        }),
        ..Default::default()
    }
}

fn request() -> ExportTraceServiceRequest {
    let resource = |name: &str| Resource {
        attributes: vec![kv(
            "service.name",
            any_value::Value::StringValue(name.into()),
        )],
        ..Default::default()
    };
    let scope = |name: &str| InstrumentationScope {
        name: name.into(),
        version: "1.0".into(),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(resource("checkout")),
                scope_spans: vec![
                    ScopeSpans {
                        scope: Some(scope("a")),
                        spans: vec![span(1, 1, 0, false), span(1, 2, 1, true)],
                        schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
                    },
                    ScopeSpans {
                        scope: Some(scope("b")),
                        spans: vec![span(2, 3, 0, false)],
                        schema_url: String::new(),
                    },
                ],
                schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
            },
            ResourceSpans {
                resource: Some(resource("billing")),
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans: vec![span(1, 4, 2, false)],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            },
        ],
    }
}

#[test]
fn decode_should_read_what_policies_need() {
    let spans = decode_request(&request().encode_to_vec()).unwrap();
    assert_eq!(spans.len(), 4);
    let s = &spans[1];
    assert_eq!(s.trace_id().to_bytes(), [1; 16]);
    assert!(!s.is_local_root());
    assert!(spans[0].is_local_root());
    assert_eq!(s.status(), StatusKind::Error);
    assert_eq!(spans[0].status(), StatusKind::Unset);
    assert_eq!(
        s.end_time()
            .duration_since(s.start_time())
            .unwrap()
            .as_nanos(),
        4_000
    );
    assert_eq!(s.attribute("http.route"), Some(AttrValue::Str("/items")));
    assert_eq!(s.attribute("retries"), Some(AttrValue::I64(-3)));
    assert_eq!(s.attribute("ratio"), Some(AttrValue::F64(0.25)));
    assert_eq!(s.attribute("cached"), Some(AttrValue::Bool(true)));
    assert_eq!(s.attribute("missing"), None);
    // resource attributes are visible to policies too
    assert_eq!(
        s.attribute("service.name"),
        Some(AttrValue::Str("checkout"))
    );
    assert_eq!(
        spans[3].attribute("service.name"),
        Some(AttrValue::Str("billing"))
    );
    assert_eq!(s.trace_state("vendor"), Some("x"));
    assert!(s.size_bytes() > s.received_len());
}

#[test]
fn encode_should_restore_the_request_as_received() {
    let original = request();
    let spans = decode_request(&original.encode_to_vec()).unwrap();
    let back = ExportTraceServiceRequest::decode(&encode_request(&spans)[..]).unwrap();
    assert_eq!(back, original);
}

#[test]
fn encode_should_group_spans_of_equal_origins_from_different_requests() {
    let mut spans = decode_request(&request().encode_to_vec()).unwrap();
    spans.extend(decode_request(&request().encode_to_vec()).unwrap());
    let back = ExportTraceServiceRequest::decode(&encode_request(&spans)[..]).unwrap();
    assert_eq!(back.resource_spans.len(), 2);
    assert_eq!(back.resource_spans[0].scope_spans.len(), 2);
    assert_eq!(back.resource_spans[0].scope_spans[0].spans.len(), 4);
}

#[test]
fn annotate_should_add_attributes_and_tracestate_that_survive_encoding() {
    let mut spans = decode_request(&request().encode_to_vec()).unwrap();
    spans[0].annotate(&KeptDecision::new(Arc::from("p10"), 0.5));
    assert_eq!(spans[0].trace_state("ot"), Some("th:8"));
    assert_eq!(spans[0].trace_state("vendor"), Some("x"));
    let back = ExportTraceServiceRequest::decode(&encode_request(&spans[..1])[..]).unwrap();
    let span = &back.resource_spans[0].scope_spans[0].spans[0];
    let names: Vec<_> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        names,
        [
            "http.route",
            "retries",
            "ratio",
            "cached",
            POLICY_ATTRIBUTE,
            ADJUSTED_COUNT_ATTRIBUTE
        ]
    );
    assert_eq!(
        span.attributes[5].value.as_ref().unwrap().value,
        Some(any_value::Value::DoubleValue(2.0))
    );
    assert!(span.trace_state.contains("ot=th:8"), "{}", span.trace_state);
    assert!(
        span.trace_state.contains("vendor=x"),
        "{}",
        span.trace_state
    );
}

#[test]
fn json_should_decode_like_protobuf() {
    let json = serde_json::to_vec(&request()).unwrap();
    let from_json = decode_json_request(&json).unwrap();
    let from_proto = decode_request(&request().encode_to_vec()).unwrap();
    assert_eq!(encode_request(&from_json), encode_request(&from_proto));
    assert!(decode_json_request(b"{\"resourceSpans\": 5}").is_err());
    assert!(decode_json_request(b"not json").is_err());
}

#[test]
fn spans_without_a_valid_trace_id_should_reject_the_request() {
    for bad_id in [vec![], vec![1; 8], vec![0; 16]] {
        let mut req = request();
        req.resource_spans[0].scope_spans[0].spans[1].trace_id = bad_id.clone();
        assert!(decode_request(&req.encode_to_vec()).is_err(), "{bad_id:?}");
    }
}

#[test]
fn truncated_requests_should_be_errors() {
    let bytes = request().encode_to_vec();
    for cut in [1, 7, bytes.len() / 2, bytes.len() - 1] {
        assert!(decode_request(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// A valid request with random byte edits: flips, truncation, insertions. Arbitrary bytes
    /// alone rarely get past the first field; edits of a real request reach every level.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        let base = request().encode_to_vec();
        let len = base.len();
        (
            proptest::collection::vec((0..len, any::<u8>()), 0..6),
            0..=len,
            proptest::collection::vec(any::<u8>(), 0..4),
        )
            .prop_map(move |(flips, cut, insert)| {
                let mut bytes = base.clone();
                for (at, b) in flips {
                    bytes[at] = b;
                }
                bytes.truncate(cut.max(1));
                let at = cut / 2;
                for (i, b) in insert.into_iter().enumerate() {
                    bytes.insert((at + i).min(bytes.len()), b);
                }
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn decoding_mutated_requests_should_never_panic_and_round_trip_when_accepted(
            bytes in mutated()
        ) {
            if let Ok(spans) = decode_request(&bytes) {
                for s in &spans {
                    // Every lookup on accepted spans must be safe too.
                    let _ = (s.attribute("http.route"), s.attribute("service.name"));
                    let _ = (s.trace_state("vendor"), s.status(), s.is_local_root());
                }
                let again = encode_request(&spans);
                let back = decode_request(&again).expect("our own encoding decodes");
                prop_assert_eq!(back.len(), spans.len());
                prop_assert_eq!(encode_request(&back), again);
            }
        }

        #[test]
        fn decoding_arbitrary_json_should_never_panic(
            text in "\\PC{0,200}"
        ) {
            let _ = decode_json_request(text.as_bytes());
        }
    }
}

/// `n` single-span `ScopeSpans` under one resource, scope `i % scopes` each, so scopes
/// interleave.
fn interleaved_scopes(n: usize, scopes: usize) -> ExportTraceServiceRequest {
    let scope_spans = (0..n)
        .map(|i| ScopeSpans {
            scope: Some(InstrumentationScope {
                name: format!("scope-{}", i % scopes),
                ..Default::default()
            }),
            spans: vec![Span {
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                ..span(1, 1, 0, false)
            }],
            schema_url: String::new(),
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: None,
            scope_spans,
            schema_url: String::new(),
        }],
    }
}

#[test]
fn encode_should_group_interleaved_scopes_in_first_seen_order() {
    let spans = decode_request(&interleaved_scopes(30, 3).encode_to_vec()).unwrap();
    let back = ExportTraceServiceRequest::decode(&encode_request(&spans)[..]).unwrap();
    assert_eq!(back.resource_spans.len(), 1);
    let scopes = &back.resource_spans[0].scope_spans;
    let names: Vec<_> = scopes
        .iter()
        .map(|s| s.scope.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["scope-0", "scope-1", "scope-2"]);
    for (k, s) in scopes.iter().enumerate() {
        assert_eq!(s.spans.len(), 10);
        // spans keep their order within a scope
        let ids: Vec<u64> = s
            .spans
            .iter()
            .map(|sp| u64::from_be_bytes(sp.span_id[..].try_into().unwrap()))
            .collect();
        let expected: Vec<u64> = (0..10).map(|j| (j * 3 + k) as u64 + 1).collect();
        assert_eq!(ids, expected);
    }
}

#[test]
fn encode_should_stay_linear_in_distinct_scopes() {
    // 100,000 distinct scopes: a scan per span would compare ~5e9 scope pairs (well over a
    // minute); a map takes a fraction of a second even on a busy machine.
    let n = 100_000;
    let spans = decode_request(&interleaved_scopes(n, n).encode_to_vec()).unwrap();
    let started = std::time::Instant::now();
    let body = encode_request(&spans);
    let took = started.elapsed();
    let back = ExportTraceServiceRequest::decode(&body[..]).unwrap();
    assert_eq!(back.resource_spans[0].scope_spans.len(), n);
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
}
