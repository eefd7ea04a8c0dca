use super::*;
use opentelemetry::KeyValue;
use std::collections::HashMap;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn carrier(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn span_cx(sampled: bool) -> Context {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let sc = SpanContext::new(
        TraceId::from_hex(TRACE).unwrap(),
        SpanId::from_hex(SPAN).unwrap(),
        flags,
        false,
        TraceState::from_key_value([("vendor", "v1")]).unwrap(),
    );
    Context::new().with_remote_span_context(sc)
}

fn sc_of(cx: &Context) -> SpanContext {
    cx.span().span_context().clone()
}

#[test]
fn w3c_should_round_trip_span_context_and_trace_state() {
    let mut headers = HashMap::new();
    inject_w3c(&span_cx(true), &mut headers);
    assert_eq!(headers[TRACEPARENT], format!("00-{TRACE}-{SPAN}-01"));
    assert_eq!(headers[TRACESTATE], "vendor=v1");
    let sc = sc_of(&extract_w3c(&headers));
    assert_eq!(sc.trace_id().to_string(), TRACE);
    assert_eq!(sc.span_id().to_string(), SPAN);
    assert!(sc.is_sampled());
    assert!(sc.is_remote());
    assert_eq!(sc.trace_state().get("vendor"), Some("v1"));
}

#[test]
fn w3c_should_carry_the_unsampled_flag() {
    let mut headers = HashMap::new();
    inject_w3c(&span_cx(false), &mut headers);
    assert_eq!(headers[TRACEPARENT], format!("00-{TRACE}-{SPAN}-00"));
    assert!(!sc_of(&extract_w3c(&headers)).is_sampled());
}

#[test]
fn w3c_should_refuse_malformed_traceparents() {
    let bad = [
        format!("ff-{TRACE}-{SPAN}-01"),
        format!("00-{}-{SPAN}-01", "0".repeat(32)),
        format!("00-{TRACE}-{}-01", "0".repeat(16)),
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        format!("00-{}-{SPAN}-01", &TRACE[..30]),
        format!("00-{TRACE}-{SPAN}-01-extra"),
        format!("00-{TRACE}-{SPAN}"),
        format!("0x-{TRACE}-{SPAN}-01"),
        "00-é".to_owned(),
        String::new(),
    ];
    for header in bad {
        let cx = extract_w3c(&carrier(&[(TRACEPARENT, &header)]));
        assert!(!sc_of(&cx).is_valid(), "accepted {header:?}");
    }
}

#[test]
fn w3c_should_accept_a_future_version_with_more_fields() {
    let header = format!("01-{TRACE}-{SPAN}-01-future");
    assert!(sc_of(&extract_w3c(&carrier(&[(TRACEPARENT, &header)]))).is_valid());
}

#[test]
fn w3c_should_inject_nothing_without_a_valid_span() {
    let mut headers = HashMap::new();
    inject_w3c(&Context::new(), &mut headers);
    assert!(headers.is_empty());
}

#[test]
fn baggage_should_round_trip_with_escaping_and_metadata() {
    let cx = Context::new().with_baggage([
        KeyValueMetadata::new("tenant", "acme corp, inc; ü=1", "ttl=60"),
        KeyValueMetadata::from(KeyValue::new("traceq.job.id", "job-42")),
    ]);
    let mut headers = HashMap::new();
    inject_w3c(&cx, &mut headers);
    assert!(!headers[BAGGAGE].contains(' '));
    let back = extract_w3c(&headers);
    let bag = back.baggage();
    let (value, metadata) = bag.get_with_metadata("tenant").unwrap();
    assert_eq!(value.as_str(), "acme corp, inc; ü=1");
    assert_eq!(metadata.as_str(), "ttl=60");
    assert_eq!(bag.get("traceq.job.id").unwrap().as_str(), "job-42");
}

#[test]
fn baggage_should_read_spaces_and_skip_malformed_members() {
    let headers = carrier(&[(BAGGAGE, " a = 1 , novalue, =x, b=%41%zz%4 ;p")]);
    let cx = extract_w3c(&headers);
    let bag = cx.baggage();
    assert_eq!(bag.get("a").unwrap().as_str(), "1");
    assert_eq!(bag.get("b").unwrap().as_str(), "A%zz%4");
    assert_eq!(bag.len(), 2);
}

#[test]
fn b3_single_should_round_trip() {
    let mut headers = HashMap::new();
    inject_b3(&span_cx(true), &mut headers, B3Encoding::SingleHeader);
    assert_eq!(headers[B3_SINGLE], format!("{TRACE}-{SPAN}-1"));
    assert_eq!(headers.len(), 1);
    let sc = sc_of(&extract_b3(&headers));
    assert_eq!(sc.trace_id().to_string(), TRACE);
    assert_eq!(sc.span_id().to_string(), SPAN);
    assert!(sc.is_sampled() && sc.is_remote());
}

#[test]
fn b3_single_should_read_short_ids_debug_parent_and_deferred_sampling() {
    let cases = [
        (format!("a3ce929d0e0e4736-{SPAN}-d"), true),
        (format!("{TRACE}-{SPAN}-0-05e3ac9a4f6e3b90"), false),
        (format!("{TRACE}-{SPAN}"), false),
        (format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90"), true),
    ];
    for (header, sampled) in cases {
        let sc = sc_of(&extract_b3(&carrier(&[(B3_SINGLE, &header)])));
        assert!(sc.is_valid(), "{header}");
        assert_eq!(sc.is_sampled(), sampled, "{header}");
    }
    let short = format!("a3ce929d0e0e4736-{SPAN}-1");
    let sc = sc_of(&extract_b3(&carrier(&[(B3_SINGLE, &short)])));
    assert_eq!(
        sc.trace_id().to_string(),
        "0000000000000000a3ce929d0e0e4736"
    );
}

#[test]
fn b3_should_ignore_a_bare_sampling_decision_and_malformed_headers() {
    for header in [
        "0".to_owned(),
        "1".to_owned(),
        format!("{TRACE}-{SPAN}-x"),
        format!("{TRACE}-{}-1", "0".repeat(16)),
        format!("{TRACE}-{SPAN}-1-zz"),
        format!("{}-{SPAN}-1", &TRACE[..20]),
    ] {
        let cx = extract_b3(&carrier(&[(B3_SINGLE, &header)]));
        assert!(!sc_of(&cx).is_valid(), "accepted {header:?}");
    }
}

#[test]
fn b3_multi_should_round_trip_and_honour_debug_flags() {
    let mut headers = HashMap::new();
    inject_b3(&span_cx(false), &mut headers, B3Encoding::MultipleHeader);
    assert_eq!(headers[B3_TRACE_ID], TRACE);
    assert_eq!(headers[B3_SPAN_ID], SPAN);
    assert_eq!(headers[B3_SAMPLED], "0");
    assert!(!headers.contains_key(B3_SINGLE));
    let sc = sc_of(&extract_b3(&headers));
    assert!(sc.is_valid() && !sc.is_sampled());

    headers.insert(B3_FLAGS.to_owned(), "1".to_owned());
    assert!(sc_of(&extract_b3(&headers)).is_sampled());

    // `true` for sampled, as some senders write it.
    let spelled = carrier(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "true"),
    ]);
    assert!(sc_of(&extract_b3(&spelled)).is_sampled());
}

#[test]
fn b3_both_encodings_should_write_both_forms() {
    let mut headers = HashMap::new();
    inject_b3(
        &span_cx(true),
        &mut headers,
        B3Encoding::SingleAndMultiHeader,
    );
    assert_eq!(headers.len(), 4);
}

#[test]
fn extract_should_prefer_w3c_then_b3_single_then_multi_and_always_read_baggage() {
    let other_span = "1111111111111111";
    let w3c = format!("00-{TRACE}-{SPAN}-01");
    let single = format!("{TRACE}-{other_span}-1");
    let headers = carrier(&[(TRACEPARENT, &w3c), (B3_SINGLE, &single), (BAGGAGE, "k=v")]);
    let cx = extract(&headers);
    assert_eq!(sc_of(&cx).span_id().to_string(), SPAN);
    assert_eq!(cx.baggage().get("k").unwrap().as_str(), "v");

    let headers = carrier(&[(B3_SINGLE, &single), (BAGGAGE, "k=v")]);
    let cx = extract(&headers);
    assert_eq!(sc_of(&cx).span_id().to_string(), other_span);
    assert_eq!(cx.baggage().get("k").unwrap().as_str(), "v");

    let headers = carrier(&[(B3_TRACE_ID, TRACE), (B3_SPAN_ID, other_span)]);
    assert_eq!(sc_of(&extract(&headers)).span_id().to_string(), other_span);

    assert!(!sc_of(&extract(&HashMap::<String, String>::new())).is_valid());
}

#[test]
fn propagators_should_list_their_fields() {
    assert_eq!(
        W3cTraceContext.fields().collect::<Vec<_>>(),
        [TRACEPARENT, TRACESTATE]
    );
    assert_eq!(W3cBaggage.fields().collect::<Vec<_>>(), [BAGGAGE]);
    assert_eq!(B3::default().fields().count(), 5);
}
