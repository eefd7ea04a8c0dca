//! Structure-aware fuzzing of the collector's OTLP decoder: arbitrary
//! `ExportTraceServiceRequest`s, encoded, then mutated byte by byte. Whatever the input, the
//! decoder must not panic, and every request it accepts must decode with prost (so a strict
//! downstream accepts what we forward) and must come back out of `encode_request` meaning the
//! same spans under the same resources and scopes.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use proptest::prelude::*;
use prost::Message;
use traceq::exporter::otlp::{decode_json_request, decode_request, encode_request};

fn any_value() -> impl Strategy<Value = AnyValue> {
    let leaf = prop_oneof![
        ".{0,8}".prop_map(any_value::Value::StringValue),
        any::<bool>().prop_map(any_value::Value::BoolValue),
        any::<i64>().prop_map(any_value::Value::IntValue),
        any::<f64>()
            .prop_filter("finite: JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(any_value::Value::DoubleValue),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(any_value::Value::BytesValue),
    ];
    let leaf = leaf.prop_map(|v| AnyValue { value: Some(v) });
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|values| AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values })),
            }),
            prop::collection::vec(("[a-z]{1,4}", inner), 0..3).prop_map(|kvs| AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList {
                    values: kvs
                        .into_iter()
                        .map(|(key, value)| KeyValue {
                            key,
                            value: Some(value),
                            ..Default::default()
                        })
                        .collect(),
                })),
            }),
        ]
    })
}

fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    prop::collection::vec(("[a-z.]{1,6}", any_value()), 0..4).prop_map(|kvs| {
        kvs.into_iter()
            .map(|(key, value)| KeyValue {
                key,
                value: Some(value),
                ..Default::default()
            })
            .collect()
    })
}

fn otlp_span() -> impl Strategy<Value = Span> {
    (
        prop::array::uniform16(any::<u8>()).prop_filter("a valid trace id", |id| id != &[0; 16]),
        prop::array::uniform8(any::<u8>()),
        prop::option::of(prop::array::uniform8(any::<u8>())),
        ".{0,12}",
        (0i32..6, any::<u64>(), any::<u64>(), 0i32..3),
        attributes(),
        prop::collection::vec((any::<u64>(), "[a-z]{0,6}", attributes()), 0..2),
    )
        .prop_map(
            |(trace_id, span_id, parent, name, (kind, start, end, code), attributes, events)| {
                Span {
                    trace_id: trace_id.to_vec(),
                    span_id: span_id.to_vec(),
                    parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
                    name,
                    kind,
                    start_time_unix_nano: start,
                    end_time_unix_nano: end,
                    attributes,
                    events: events
                        .into_iter()
                        .map(|(time_unix_nano, name, attributes)| span::Event {
                            time_unix_nano,
                            name,
                            attributes,
                            dropped_attributes_count: 0,
                        })
                        .collect(),
                    status: Some(Status {
                        message: String::new(),
                        code,
                    }),
                    ..Default::default()
                }
            },
        )
}

fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let scope = (
        prop::option::of(("[a-z]{0,6}", "[0-9.]{0,4}", attributes())),
        prop::collection::vec(otlp_span(), 0..4),
        "[a-z:/]{0,6}",
    )
        .prop_map(|(scope, spans, schema_url)| ScopeSpans {
            scope: scope.map(|(name, version, attributes)| InstrumentationScope {
                name,
                version,
                attributes,
                dropped_attributes_count: 0,
            }),
            spans,
            schema_url,
        });
    let resource = (
        prop::option::of(attributes()),
        prop::collection::vec(scope, 0..3),
        "[a-z:/]{0,6}",
    )
        .prop_map(|(resource, scope_spans, schema_url)| ResourceSpans {
            resource: resource.map(|attributes| Resource {
                attributes,
                ..Default::default()
            }),
            scope_spans,
            schema_url,
        });
    prop::collection::vec(resource, 0..3)
        .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

/// One byte-level mutation of an encoded request.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..6))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..6).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        if let Mutation::Insert { bytes: b, .. } = m {
            bytes.extend_from_slice(b);
        }
        return;
    }
    let n = bytes.len();
    match m {
        Mutation::Flip { at, bits } => bytes[at % n] ^= bits,
        Mutation::Set { at, byte } => bytes[at % n] = *byte,
        Mutation::Insert { at, bytes: b } => {
            let at = at % (n + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Delete { at, len } => {
            let at = at % n;
            bytes.drain(at..(at + len).min(n));
        }
        Mutation::Truncate { at } => bytes.truncate(at % n),
    }
}

/// Every span of a request with its resource and scope, each encoded, sorted: what the request
/// means, whatever its grouping.
fn meaning(request: &ExportTraceServiceRequest) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                let mut one = ExportTraceServiceRequest {
                    resource_spans: vec![ResourceSpans {
                        resource: rs.resource.clone(),
                        schema_url: rs.schema_url.clone(),
                        scope_spans: vec![ScopeSpans {
                            scope: ss.scope.clone(),
                            schema_url: ss.schema_url.clone(),
                            spans: vec![span.clone()],
                        }],
                    }],
                };
                // Canonical form: decode(encode) of the struct.
                one = ExportTraceServiceRequest::decode(&one.encode_to_vec()[..]).unwrap();
                out.push(one.encode_to_vec());
            }
        }
    }
    out.sort();
    out
}

/// The property: what we accept, prost accepts, and we forward the same meaning.
fn check_accepted(input: &[u8]) -> Result<(), TestCaseError> {
    let Ok(spans) = decode_request(input) else {
        return Ok(()); // refusing is always allowed
    };
    let strict = ExportTraceServiceRequest::decode(input);
    prop_assert!(strict.is_ok(), "accepted but prost refuses: {strict:?}");
    let forwarded = encode_request(&spans);
    let back = ExportTraceServiceRequest::decode(&forwarded[..]);
    prop_assert!(back.is_ok(), "forwarded request does not decode: {back:?}");
    prop_assert_eq!(meaning(&back.unwrap()), meaning(&strict.unwrap()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn valid_requests_should_be_accepted_and_round_trip(req in request()) {
        let input = req.encode_to_vec();
        prop_assert!(decode_request(&input).is_ok());
        check_accepted(&input)?;
    }

    #[test]
    fn mutated_requests_should_never_panic_and_accepted_ones_should_round_trip(
        req in request(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut input = req.encode_to_vec();
        for m in &mutations {
            apply(&mut input, m);
        }
        check_accepted(&input)?;
    }

    #[test]
    fn json_requests_should_decode_to_the_same_spans_as_protobuf(req in request()) {
        let json = serde_json::to_vec(&req).unwrap();
        let from_json = decode_json_request(&json).unwrap();
        let from_proto = decode_request(&req.encode_to_vec()).unwrap();
        prop_assert_eq!(encode_request(&from_json), encode_request(&from_proto));
    }
}

#[test]
fn bytes_prost_refuses_should_be_refused() {
    // A span whose name (a string) is sent as a varint, and one whose name is not UTF-8.
    let ok = Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "n".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let wrap = |span: &[u8]| {
        let mut ss = vec![0x12];
        ss.push(span.len() as u8);
        ss.extend_from_slice(span);
        let mut rs = vec![0x12, ss.len() as u8];
        rs.extend_from_slice(&ss);
        let mut req = vec![0x0a, rs.len() as u8];
        req.extend_from_slice(&rs);
        req
    };
    assert!(decode_request(&wrap(&ok)).is_ok());
    let mut as_varint = ok.clone();
    as_varint.extend_from_slice(&[5 << 3, 7]);
    let mut bad_utf8 = ok.clone();
    bad_utf8.extend_from_slice(&[5 << 3 | 2, 2, 0xff, 0xfe]);
    for bad in [as_varint, bad_utf8] {
        let input = wrap(&bad);
        assert!(ExportTraceServiceRequest::decode(&input[..]).is_err());
        assert!(decode_request(&input).is_err());
    }
}

#[test]
fn status_codes_survive_the_round_trip() {
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![3; 16],
                    status: Some(Status {
                        code: status::StatusCode::Error as i32,
                        message: "boom".into(),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let spans = decode_request(&req.encode_to_vec()).unwrap();
    let back = ExportTraceServiceRequest::decode(&encode_request(&spans)[..]).unwrap();
    assert_eq!(back, req);
}
