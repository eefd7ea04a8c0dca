//! Table-driven tests of every path, operator and function, and of the error messages.

use opentelemetry::trace::{SpanKind, TraceState};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanData;

use super::{Condition, Context};
use crate::testing::TestSpan;

const TRACE: u128 = 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10;

/// A span with every field OTTL reads set, and its resource.
fn span() -> SpanData {
    TestSpan::new(TRACE, 0xaabb)
        .child_of(0x11)
        .name("GET /orders")
        .kind(SpanKind::Server)
        .error_message("timed out")
        .scope("orders-lib", "1.2.0")
        .start_ms(1500)
        .duration_ms(250)
        .trace_state("vendor", "gold")
        .attr(KeyValue::new("http.route", "/orders/{id}"))
        .attr(KeyValue::new("http.status_code", 503))
        .attr(KeyValue::new("ratio", 0.25))
        .attr(KeyValue::new("retry", true))
        .event(
            "exception",
            vec![KeyValue::new("exception.type", "Timeout")],
        )
        .event("retry", vec![KeyValue::new("attempt", 2)])
        .build()
}

fn resource() -> Vec<KeyValue> {
    vec![KeyValue::new("service.name", "checkout")]
}

fn on_span(text: &str) -> Result<bool, String> {
    let c = Condition::compile(text, Context::Span).map_err(|e| e.to_string())?;
    c.on_span(&span(), &resource()).map_err(|e| e.0)
}

/// The condition on each event of the span: which events it is true for.
fn on_events(text: &str) -> Result<Vec<bool>, String> {
    let c = Condition::compile(text, Context::SpanEvent).map_err(|e| e.to_string())?;
    let span = span();
    let resource = resource();
    span.events
        .events
        .iter()
        .map(|e| c.on_event(&span, e, &resource).map_err(|e| e.0))
        .collect()
}

fn check(table: &[(&str, bool)]) {
    for (text, want) in table {
        assert_eq!(on_span(text), Ok(*want), "{text}");
    }
}

#[test]
fn every_span_path_should_read_its_field() {
    check(&[
        (r#"name == "GET /orders""#, true),
        (r#"span.name == "GET /orders""#, true),
        ("kind == SPAN_KIND_SERVER", true),
        ("kind == 2", true),
        (r#"kind.string == "Server""#, true),
        ("status.code == STATUS_CODE_ERROR", true),
        (r#"status.message == "timed out""#, true),
        (r#"attributes["http.route"] == "/orders/{id}""#, true),
        (r#"attributes["http.status_code"] == 503"#, true),
        (r#"attributes["ratio"] == 0.25"#, true),
        (r#"attributes["retry"] == true"#, true),
        (r#"attributes["missing"] == nil"#, true),
        (r#"attributes["service.name"] == nil"#, true),
        (r#"resource.attributes["service.name"] == "checkout""#, true),
        (r#"instrumentation_scope.name == "orders-lib""#, true),
        (r#"instrumentation_scope.version == "1.2.0""#, true),
        (
            "trace_id == TraceID(0x0102030405060708090a0b0c0d0e0f10)",
            true,
        ),
        ("trace_id == 0x0102030405060708090a0b0c0d0e0f10", true),
        (
            r#"trace_id.string == "0102030405060708090a0b0c0d0e0f10""#,
            true,
        ),
        ("span_id == SpanID(0x000000000000aabb)", true),
        (r#"span_id.string == "000000000000aabb""#, true),
        ("parent_span_id == SpanID(0x0000000000000011)", true),
        (r#"parent_span_id.string == "0000000000000011""#, true),
        ("start_time_unix_nano == 1500000000", true),
        ("end_time_unix_nano == 1750000000", true),
        (
            "end_time_unix_nano - start_time_unix_nano >= 250000000",
            true,
        ),
        (r#"trace_state["vendor"] == "gold""#, true),
        (r#"trace_state["other"] == nil"#, true),
    ]);
}

#[test]
fn every_event_path_should_read_the_event_or_its_span() {
    let cases: &[(&str, [bool; 2])] = &[
        (r#"name == "exception""#, [true, false]),
        (r#"spanevent.name == "retry""#, [false, true]),
        (
            r#"attributes["exception.type"] == "Timeout""#,
            [true, false],
        ),
        (r#"attributes["attempt"] >= 2"#, [false, true]),
        ("time_unix_nano == 1500000000", [true, true]),
        (r#"span.name == "GET /orders""#, [true, true]),
        (
            r#"span.attributes["http.status_code"] == 503"#,
            [true, true],
        ),
        (
            r#"resource.attributes["service.name"] == "checkout""#,
            [true, true],
        ),
        (
            r#"instrumentation_scope.name == "orders-lib""#,
            [true, true],
        ),
        // The README's example: both events are named otherwise than this.
        (r#"name != "test_span_event_name""#, [true, true]),
    ];
    for (text, want) in cases {
        assert_eq!(on_events(text), Ok(want.to_vec()), "{text}");
    }
}

#[test]
fn comparisons_should_follow_the_ottl_rules() {
    check(&[
        // Numbers compare across int and double.
        ("1 == 1.0", true),
        ("2 > 1.5", true),
        ("1.5 <= 1", false),
        ("3 != 4", true),
        ("-3 < 0", true),
        // Strings and byte slices in byte order.
        (r#""abc" < "abd""#, true),
        (r#""b" >= "a""#, true),
        ("0x01 < 0x02", true),
        // Booleans and nil only for equality.
        ("true == true", true),
        ("true > false", false),
        ("nil == nil", true),
        ("nil != nil", false),
        ("nil < nil", false),
        // Different types are never equal and never ordered.
        (r#"1 == "1""#, false),
        (r#"1 != "1""#, true),
        (r#"1 < "2""#, false),
        (r#"attributes["missing"] != "x""#, true),
        (r#"attributes["missing"] > 1"#, false),
        ("trace_id == SpanID(0x0000000000000011)", false),
    ]);
}

#[test]
fn logic_math_and_parentheses_should_combine_as_ottl_does() {
    check(&[
        ("true and false", false),
        ("true or false", true),
        ("not false", true),
        ("not not true", true),
        // `and` binds tighter than `or`.
        ("true or true and false", true),
        ("(true or true) and false", false),
        ("not true or true", true),
        ("not (true or true)", false),
        // Math: `*` and `/` before `+` and `-`, ints with ints, doubles with doubles.
        ("1 + 2 * 3 == 7", true),
        ("(1 + 2) * 3 == 9", true),
        ("7 / 2 == 3", true),
        ("1.5 * 2.0 == 3.0", true),
        ("10 - 2 - 3 == 5", true),
        (
            r#"name == "GET /orders" and (kind == SPAN_KIND_CLIENT or attributes["retry"] == true)"#,
            true,
        ),
    ]);
}

#[test]
fn converters_should_behave_as_in_the_collector() {
    check(&[
        (r#"IsMatch(name, "^GET ")"#, true),
        (
            r#"IsMatch(attributes["http.route"], "orders/\\{id\\}$")"#,
            true,
        ),
        (r#"IsMatch(attributes["http.status_code"], "^5")"#, true),
        (r#"IsMatch(attributes["missing"], ".*")"#, false),
        (r#"IsMatch(trace_id, "^0102")"#, true),
        (r#"IsMatch(name, "POST") == false"#, true),
        (r#"IsString(attributes["http.route"])"#, true),
        (r#"IsString(attributes["http.status_code"])"#, false),
        ("IsString(trace_id.string)", true),
        (r#"IsInt(attributes["http.status_code"])"#, true),
        (r#"IsInt(attributes["ratio"])"#, false),
        (r#"IsBool(attributes["retry"])"#, true),
        (r#"IsDouble(attributes["ratio"])"#, true),
        ("IsRootSpan()", false),
        ("Len(name) == 11", true),
        (r#"Len("ü") == 2"#, true),
        (
            r#"Concat([name, attributes["http.status_code"]], " ") == "GET /orders 503""#,
            true,
        ),
        (
            r#"Concat(["a", 1.5, true, attributes["missing"]], "-") == "a-1.5-true-<nil>""#,
            true,
        ),
        (r#"Concat([span_id], "") == "000000000000aabb""#, true),
        (r#"Len(Concat(["ab", "cd"], "")) == 4"#, true),
    ]);
    let root = Condition::compile("IsRootSpan()", Context::Span).unwrap();
    assert_eq!(root.on_span(&TestSpan::new(1, 1).build(), &[]), Ok(true));
}

#[test]
fn strings_should_unescape_as_go_does() {
    check(&[
        (r#"Len("a\"b") == 3"#, true),
        (r#"Len("\\") == 1"#, true),
        (r#"Len("\n\t") == 2"#, true),
        (r#""\u00fc" == "ü""#, true),
        (r#""\x41" == "A""#, true),
    ]);
}

#[test]
fn runtime_errors_should_be_reported_not_hidden() {
    for (text, want) in [
        (
            r#"Len(attributes["missing"]) > 0"#,
            "`Len` takes a string, got nil",
        ),
        ("Len(kind) > 0", "`Len` takes a string, got an int"),
        (
            r#"attributes["ratio"] + 1 > 0"#,
            "cannot compute a double + an int: both sides must be ints or both doubles",
        ),
        ("1 / 0 == 1", "division by zero"),
        (
            r#"Concat(["a"], attributes["missing"]) == "a""#,
            "`Concat` takes a string delimiter, got nil",
        ),
    ] {
        assert_eq!(on_span(text), Err(want.to_owned()), "{text}");
    }
}

#[test]
fn bad_conditions_should_be_refused_with_a_message_naming_the_fault() {
    let cases: &[(&str, Context, &str)] = &[
        ("", Context::Span, "the condition is empty"),
        (
            "name",
            Context::Span,
            "the condition is a value, not a condition: compare it (`== true`, `!= nil`) or call a converter that tests it",
        ),
        (
            r#"links == nil"#,
            Context::Span,
            "at character 1: path `links` is not supported in span conditions (supported: name, kind, kind.string, status.code, status.message, attributes[\"key\"], resource.attributes[\"key\"], instrumentation_scope.name, instrumentation_scope.version, trace_id, trace_id.string, span_id, span_id.string, parent_span_id, parent_span_id.string, start_time_unix_nano, end_time_unix_nano, trace_state[\"key\"])",
        ),
        (
            r#"attributes["a"]["b"] == 1"#,
            Context::Span,
            "at character 1: path `attributes[\"a\"][\"b\"]` is not supported",
        ),
        (
            "time_unix_nano > 0",
            Context::Span,
            "at character 1: path `time_unix_nano` is not supported in span conditions",
        ),
        (
            "kind == 1",
            Context::SpanEvent,
            "at character 1: path `kind` is not supported in span event conditions (supported: name, time_unix_nano, attributes[\"key\"], span.<any span path>",
        ),
        (
            r#"Substring(name, 0, 3) == "GET""#,
            Context::Span,
            "at character 1: function `Substring` is not supported (supported: IsMatch, IsString, IsInt, IsBool, IsDouble, IsRootSpan, Len, Concat, TraceID, SpanID)",
        ),
        (
            r#"set(attributes["x"], 1)"#,
            Context::Span,
            "at character 1: `set` is an editor; a condition can only call converters",
        ),
        ("IsMatch(name)", Context::Span, "at character 1: `IsMatch` takes 2 arguments, got 1"),
        (
            r#"IsMatch(name, "(")"#,
            Context::Span,
            "at character 15: `IsMatch` pattern is not a valid regular expression",
        ),
        (
            "IsMatch(name, attributes[\"p\"])",
            Context::Span,
            "at character 15: `IsMatch` takes its pattern as a string literal",
        ),
        ("IsRootSpan()", Context::SpanEvent, "`IsRootSpan` is only available in span conditions"),
        ("TraceID(0x01) == trace_id", Context::Span, "`TraceID` takes a 16-byte literal"),
        ("Concat(name, \"\") == \"x\"", Context::Span, "`Concat` takes a list literal first"),
        ("kind == SPAN_KIND_SERVERS", Context::Span, "at character 9: unknown enum `SPAN_KIND_SERVERS`"),
        (r#"name = "x""#, Context::Span, "at character 6: unexpected `=` (compare with `==`)"),
        (r#"name == "x" ==  "y""#, Context::Span, "comparisons do not chain"),
        (r#"name == "x" and"#, Context::Span, "at character 16: expected a value, found the end of the condition"),
        (r#"(name == "x""#, Context::Span, "expected `)`, found the end of the condition"),
        (r#"name == "x")"#, Context::Span, "at character 12: unexpected `)` after a complete condition"),
        (r#"name == "x"#, Context::Span, "at character 9: unterminated string"),
        (r#"name == "\d""#, Context::Span, "at character 10: unknown escape `\\d` in a string"),
        (r#"name ! "x""#, Context::Span, "unexpected `!` (write `not` or `!=`)"),
        ("name == 0x123", Context::Span, "a byte literal needs an even number of hex digits"),
        ("1 == 99999999999999999999", Context::Span, "does not fit in 64 bits"),
        (r#"not name"#, Context::Span, "`not` applies to a condition, not a value"),
        (r#"name and true"#, Context::Span, "`and` joins conditions; one side is a value"),
        (r#"(1 == 1) == true"#, Context::Span, "a condition cannot be compared"),
        (r#"-name == 1"#, Context::Span, "a sign applies only to a number literal"),
        (r#"[1] == 1"#, Context::Span, "a list literal is only accepted as the first argument of `Concat`"),
        (r#"Concat(values=[name], delimiter="") == "x""#, Context::Span, "named arguments are not supported"),
        (r#"attributes[key] == 1"#, Context::Span, "a path's key must be a string literal"),
        ("name == #", Context::Span, "at character 9: unexpected character `#`"),
    ];
    for (text, context, want) in cases {
        let err = Condition::compile(text, *context).unwrap_err().to_string();
        assert!(err.contains(want), "{text}: got {err:?}, want {want:?}");
    }
}

#[test]
fn deep_nesting_should_be_refused_not_overflow_the_stack() {
    let deep = format!("{}true{}", "(".repeat(10_000), ")".repeat(10_000));
    let err = Condition::compile(&deep, Context::Span)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nests more than 64 levels deep"), "{err}");
    let nots = format!("{}true", "not ".repeat(10_000));
    assert!(Condition::compile(&nots, Context::Span).is_err());
    let ok = format!("{}true{}", "(".repeat(60), ")".repeat(60));
    assert!(Condition::compile(&ok, Context::Span).is_ok());
}

#[test]
fn a_span_without_a_tracestate_entry_reads_nil() {
    let c = Condition::compile(r#"trace_state["vendor"] == nil"#, Context::Span).unwrap();
    let mut plain = TestSpan::new(1, 1).build();
    assert_eq!(c.on_span(&plain, &[]), Ok(true));
    plain.span_context = opentelemetry::trace::SpanContext::new(
        plain.span_context.trace_id(),
        plain.span_context.span_id(),
        plain.span_context.trace_flags(),
        false,
        TraceState::from_key_value([("vendor", "tin")]).unwrap(),
    );
    assert_eq!(c.on_span(&plain, &[]), Ok(false));
}

#[test]
fn short_byte_equality_should_agree_with_slices() {
    let text = b"abcdefghijklmnopqrstuvwxyz";
    for n in 0..text.len() {
        let a = &text[..n];
        assert!(super::eval::bytes_eq(a, a), "{n}");
        for i in 0..n {
            let mut b = a.to_vec();
            b[i] ^= 1;
            assert!(!super::eval::bytes_eq(a, &b), "{n} {i}");
        }
        assert!(!super::eval::bytes_eq(a, &text[..n + 1]));
    }
}
