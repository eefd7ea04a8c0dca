//! Collector parity: configurations written in the OpenTelemetry Collector's `tail_sampling`
//! syntax (`tests/fixtures/tail_sampling/`) are accepted by the collector's configuration
//! reader and by the sampler, and for each policy a set of traces with known decisions is
//! decided twice: as the collector's encoded OTLP spans, and as the SDK's spans (when the
//! traces share one resource, which is how the SDK gives it).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::SpanKind as SdkKind;
use opentelemetry::KeyValue as SdkKeyValue;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{
    status, ResourceSpans, ScopeSpans, Span as ProtoSpan, Status,
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use prost::Message;
use traceq_collector::{CollectorConfig, OnBufferFull};
use traceq_exporter::otlp::{decode_request, OtlpSpan};
use traceq_sampler::testing::TestSpan;
use traceq_sampler::{
    AttrValue, ManualClock, PolicyConfig, PolicyMetrics, SamplerConfig, SamplerMetrics, SpanView,
    TailSampler, TailSamplingProcessor, ADJUSTED_COUNT_ATTRIBUTE,
};

// ---- the traces ---------------------------------------------------------------------------

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
enum V {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}

impl From<&str> for V {
    fn from(s: &str) -> Self {
        V::S(s.to_owned())
    }
}
impl From<String> for V {
    fn from(s: String) -> Self {
        V::S(s)
    }
}
impl From<i64> for V {
    fn from(i: i64) -> Self {
        V::I(i)
    }
}
impl From<f64> for V {
    fn from(f: f64) -> Self {
        V::F(f)
    }
}
impl From<bool> for V {
    fn from(b: bool) -> Self {
        V::B(b)
    }
}

type Attrs = Vec<(String, V)>;

fn attrs(list: &[(&str, V)]) -> Attrs {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// One span, described once and built as OTLP protobuf or as an SDK span.
#[derive(Debug, Clone)]
struct S {
    trace: u128,
    id: u64,
    parent: u64,
    name: String,
    kind: SdkKind,
    status: Option<bool>,
    start_ms: u64,
    duration_ms: u64,
    attributes: Attrs,
    events: Vec<(String, Attrs)>,
    state: Option<(String, String)>,
    sampled: bool,
    scope: String,
}

/// A root span of `trace`, 10 ms long, status unset, sampled.
fn span(trace: u128, id: u64) -> S {
    S {
        trace,
        id,
        parent: 0,
        name: "op".into(),
        kind: SdkKind::Internal,
        status: None,
        start_ms: 1_000,
        duration_ms: 10,
        attributes: Vec::new(),
        events: Vec::new(),
        state: None,
        sampled: true,
        scope: "lib".into(),
    }
}

impl S {
    fn child_of(mut self, parent: u64) -> Self {
        self.parent = parent;
        self
    }
    fn attr(mut self, key: &str, value: impl Into<V>) -> Self {
        self.attributes.push((key.to_owned(), value.into()));
        self
    }
    fn error(mut self) -> Self {
        self.status = Some(false);
        self
    }
    fn ok(mut self) -> Self {
        self.status = Some(true);
        self
    }
    fn kind(mut self, kind: SdkKind) -> Self {
        self.kind = kind;
        self
    }
    fn lasting(mut self, ms: u64) -> Self {
        self.duration_ms = ms;
        self
    }
    fn event(mut self, name: &str, list: &[(&str, V)]) -> Self {
        self.events.push((name.to_owned(), attrs(list)));
        self
    }
    fn state(mut self, key: &str, value: &str) -> Self {
        self.state = Some((key.to_owned(), value.to_owned()));
        self
    }
    fn unsampled(mut self) -> Self {
        self.sampled = false;
        self
    }
    fn scope(mut self, name: &str) -> Self {
        self.scope = name.to_owned();
        self
    }

    fn proto(&self) -> ProtoSpan {
        let kind = match self.kind {
            SdkKind::Internal => 1,
            SdkKind::Server => 2,
            SdkKind::Client => 3,
            SdkKind::Producer => 4,
            SdkKind::Consumer => 5,
        };
        let start = self.start_ms * 1_000_000;
        ProtoSpan {
            trace_id: self.trace.to_be_bytes().to_vec(),
            span_id: self.id.to_be_bytes().to_vec(),
            parent_span_id: if self.parent == 0 {
                Vec::new()
            } else {
                self.parent.to_be_bytes().to_vec()
            },
            trace_state: self
                .state
                .as_ref()
                .map(|(k, v)| format!("{k}={v}"))
                .unwrap_or_default(),
            flags: u32::from(self.sampled),
            name: self.name.clone(),
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: start + self.duration_ms * 1_000_000,
            attributes: proto_attrs(&self.attributes),
            events: self
                .events
                .iter()
                .map(|(name, a)| Event {
                    time_unix_nano: start,
                    name: name.clone(),
                    attributes: proto_attrs(a),
                    ..Default::default()
                })
                .collect(),
            status: self.status.map(|ok| Status {
                code: if ok {
                    status::StatusCode::Ok
                } else {
                    status::StatusCode::Error
                } as i32,
                message: if ok { String::new() } else { "failed".into() },
            }),
            ..Default::default()
        }
    }

    fn sdk(&self) -> SpanData {
        let mut b = TestSpan::new(self.trace, self.id)
            .name(&self.name)
            .kind(self.kind.clone())
            .start_ms(self.start_ms)
            .duration_ms(self.duration_ms)
            .scope(&self.scope, "");
        if self.parent != 0 {
            b = b.child_of(self.parent);
        }
        b = match self.status {
            Some(true) => b.ok(),
            Some(false) => b.error(),
            None => b,
        };
        for (k, v) in &self.attributes {
            b = b.attr(sdk_kv(k, v));
        }
        for (name, a) in &self.events {
            b = b.event(name, a.iter().map(|(k, v)| sdk_kv(k, v)).collect());
        }
        if let Some((k, v)) = &self.state {
            b = b.trace_state(k, v);
        }
        if !self.sampled {
            b = b.unsampled();
        }
        b.build()
    }
}

fn proto_attrs(list: &Attrs) -> Vec<KeyValue> {
    list.iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(AnyValue {
                value: Some(match v {
                    V::S(s) => any_value::Value::StringValue(s.clone()),
                    V::I(i) => any_value::Value::IntValue(*i),
                    V::F(f) => any_value::Value::DoubleValue(*f),
                    V::B(b) => any_value::Value::BoolValue(*b),
                }),
            }),
            ..Default::default()
        })
        .collect()
}

fn sdk_kv(k: &str, v: &V) -> SdkKeyValue {
    match v {
        V::S(s) => SdkKeyValue::new(k.to_owned(), s.clone()),
        V::I(i) => SdkKeyValue::new(k.to_owned(), *i),
        V::F(f) => SdkKeyValue::new(k.to_owned(), *f),
        V::B(b) => SdkKeyValue::new(k.to_owned(), *b),
    }
}

/// A trace: its spans and the resource they came with.
#[derive(Debug, Clone)]
struct Trace {
    resource: Attrs,
    spans: Vec<S>,
}

fn trace(spans: Vec<S>) -> Trace {
    Trace {
        resource: Vec::new(),
        spans,
    }
}

impl Trace {
    fn resource(mut self, key: &str, value: impl Into<V>) -> Self {
        self.resource.push((key.to_owned(), value.into()));
        self
    }

    /// The trace as the collector holds it: decoded from one OTLP request.
    fn otlp(&self) -> Vec<OtlpSpan> {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: proto_attrs(&self.resource),
                    ..Default::default()
                }),
                scope_spans: self
                    .spans
                    .iter()
                    .map(|s| ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: s.scope.clone(),
                            ..Default::default()
                        }),
                        spans: vec![s.proto()],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
        };
        decode_request(&request.encode_to_vec()).expect("a valid request")
    }
}

// ---- the sampler --------------------------------------------------------------------------

/// A fixture's text, checked: the collector's reader and the sampler's both accept it and read
/// the same sampler configuration.
fn fixture(name: &str) -> (String, SamplerConfig) {
    let path = format!(
        "{}/tests/fixtures/tail_sampling/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let sampler = SamplerConfig::from_yaml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let collector = CollectorConfig::from_yaml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        collector.sampler, sampler,
        "{name}: the collector reads the same"
    );
    (text, sampler)
}

/// What a sampler decided.
#[derive(Debug)]
struct Run {
    kept: BTreeSet<u128>,
    metrics: SamplerMetrics,
}

impl Run {
    fn policy(&self, name: &str) -> &PolicyMetrics {
        self.metrics
            .policies
            .iter()
            .find(|p| p.policy == name)
            .unwrap_or_else(|| panic!("no policy `{name}`"))
    }

    /// `(sampled, not_sampled, dropped)` votes of a policy.
    fn votes(&self, name: &str) -> (u64, u64, u64) {
        let p = self.policy(name);
        (p.traces_sampled, p.traces_not_sampled, p.traces_dropped)
    }
}

/// How the traces are decided.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// All offered, then flushed: one decision round, at one instant.
    Flush,
    /// Each trace offered at its second (`seconds[i]`) and decided at once, in order (the
    /// root wait is made 0 for it): for the policies whose budgets depend on order.
    OneByOne(&'static [u64]),
}

fn decide<T: SpanView>(
    cfg: &SamplerConfig,
    resource: Vec<SdkKeyValue>,
    traces: Vec<Vec<T>>,
    order: Order,
) -> Run {
    let clock = ManualClock::new();
    let mut cfg = cfg.clone();
    if let Order::OneByOne(_) = order {
        cfg = cfg.with_decision_wait_after_root(Duration::ZERO);
    }
    let sampler = TailSampler::with_clock(cfg, Arc::new(clock.clone())).expect("valid");
    sampler.set_resource_attributes(resource);
    let mut kept = Vec::new();
    match order {
        Order::Flush => {
            for spans in traces {
                sampler.ingest_batch(spans, &mut kept);
            }
            sampler.flush(&mut kept);
        }
        Order::OneByOne(seconds) => {
            assert_eq!(seconds.len(), traces.len());
            let mut now = 0;
            for (spans, &second) in traces.into_iter().zip(seconds) {
                clock.advance(Duration::from_secs(second - now));
                now = second;
                sampler.ingest_batch(spans, &mut kept);
                sampler.poll(&mut kept);
            }
            sampler.flush(&mut kept);
        }
    }
    Run {
        kept: kept
            .iter()
            .map(|s| u128::from_be_bytes(s.trace_id().to_bytes()))
            .collect(),
        metrics: sampler.metrics(),
    }
}

/// Decides `traces` as OTLP spans and, when they share one resource, as SDK spans; checks both
/// keep exactly `want` and vote alike. Returns the OTLP run.
fn check(cfg: &SamplerConfig, traces: &[Trace], order: Order, want: &[u128]) -> Run {
    let want: BTreeSet<u128> = want.iter().copied().collect();
    let otlp = decide(
        cfg,
        Vec::new(),
        traces.iter().map(Trace::otlp).collect(),
        order,
    );
    assert_eq!(otlp.kept, want, "kept, as OTLP spans");
    let shared = traces.iter().all(|t| t.resource == traces[0].resource);
    if shared {
        let resource = traces[0]
            .resource
            .iter()
            .map(|(k, v)| sdk_kv(k, v))
            .collect();
        let sdk = decide(
            cfg,
            resource,
            traces
                .iter()
                .map(|t| t.spans.iter().map(S::sdk).collect::<Vec<_>>())
                .collect(),
            order,
        );
        assert_eq!(sdk.kept, want, "kept, as SDK spans");
        assert_eq!(
            sdk.metrics.policies, otlp.metrics.policies,
            "votes, SDK spans against OTLP spans"
        );
    }
    otlp
}

// ---- acceptance ---------------------------------------------------------------------------

/// Every policy type the corpus uses, sub-policies included.
fn kinds(policies: &[PolicyConfig], out: &mut BTreeSet<&'static str>) {
    for p in policies {
        out.insert(p.kind.as_str());
        if let Some(and) = &p.and {
            kinds(&and.and_sub_policy, out);
        }
        if let Some(drop) = &p.drop {
            kinds(&drop.drop_sub_policy, out);
        }
        if let Some(not) = &p.not {
            kinds(std::slice::from_ref(not.not_sub_policy.as_ref()), out);
        }
        if let Some(c) = &p.composite {
            kinds(&c.composite_sub_policy, out);
        }
    }
}

#[test]
fn every_fixture_should_be_accepted_by_the_collector_and_the_sampler() {
    let dir = format!(
        "{}/tests/fixtures/tail_sampling",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    let mut used = BTreeSet::new();
    for name in &names {
        let (_, cfg) = fixture(name);
        TailSampler::<OtlpSpan>::new(cfg.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        kinds(&cfg.policies, &mut used);
    }
    let every = [
        "always_sample",
        "latency",
        "numeric_attribute",
        "probabilistic",
        "status_code",
        "string_attribute",
        "rate_limiting",
        "bytes_limiting",
        "span_count",
        "trace_state",
        "trace_flags",
        "boolean_attribute",
        "ottl_condition",
        "and",
        "not",
        "drop",
        "composite",
    ];
    assert_eq!(
        used,
        every.into_iter().collect(),
        "the corpus covers every type"
    );
}

// ---- each policy --------------------------------------------------------------------------

#[test]
fn the_collector_example_should_apply_every_policy() {
    let (_, cfg) = fixture("collector_example.yaml");
    let traces = [
        // 1: a health check, dropped although always_sample matches.
        trace(vec![span(1, 1).attr("url.path", "/health")]),
        // 2: key1 in range and key2=value1 (so the `and` too), 2 spans.
        trace(vec![
            span(2, 1).attr("key1", 75_i64),
            span(2, 2).child_of(1).attr("key2", "value1"),
        ]),
        // 3: a 6 s error trace with key4=true and a tracestate match, 2 spans.
        trace(vec![
            span(3, 1).error().lasting(6_000).state("key3", "value2"),
            span(3, 2).child_of(1).attr("key4", true),
        ]),
        // 4: an OK span, not sampled upstream.
        trace(vec![span(4, 1).ok().unsampled()]),
        // 5: key2 matching only the regular expression.
        trace(vec![span(5, 1).attr("key2", "val9")]),
    ];
    let run = check(&cfg, &traces, Order::Flush, &[2, 3, 4, 5]);
    // Votes of the four decided traces (the health check stopped at the drop).
    let votes = |n: &str| run.votes(n).0;
    assert_eq!(run.votes("drop-policy-1"), (0, 4, 1));
    assert_eq!(votes("test-policy-1"), 4);
    assert_eq!(votes("test-policy-2"), 1, "only trace 3 lasts 5-10 s");
    assert_eq!(votes("test-policy-3"), 1);
    assert_eq!(votes("test-policy-5"), 3, "ERROR or UNSET, not OK");
    assert_eq!(votes("test-policy-6"), 1);
    assert_eq!(votes("test-policy-7"), 2, "value1 and val9");
    assert_eq!(votes("test-policy-8"), 4, "6 spans within 35/s");
    assert_eq!(votes("test-policy-9"), 4);
    assert_eq!(votes("test-policy-10"), 2, "traces 2 and 3 have 2 spans");
    assert_eq!(votes("test-policy-11"), 1);
    assert_eq!(votes("test-policy-12"), 1);
    assert_eq!(
        votes("test-policy-13"),
        4,
        "test_attr_key_2 is absent, so != holds"
    );
    assert_eq!(
        votes("test-policy-14"),
        3,
        "trace 4 was not sampled upstream"
    );
    assert_eq!(votes("and-policy-1"), 1);
    assert_eq!(votes("not-policy-1"), 3, "all but the error trace");
    assert_eq!(votes("composite-policy-1"), 4, "within 1000 spans/s");
    assert_eq!(
        run.policy("test-policy-1").traces_kept,
        4,
        "credited: certain"
    );
}

#[test]
fn attribute_policies_should_match_span_and_resource_attributes() {
    let (_, cfg) = fixture("attributes.yaml");
    let team_a = |s: S| s.attr("team", "team_a");
    let traces = [
        trace(vec![team_a(span(1, 1)).attr("http.route", "/checkout")]),
        trace(vec![team_a(span(2, 1)).attr("http.route", "/v1/name/42")]),
        // `.+` needs a character after the slash; the status code is in range.
        trace(vec![team_a(span(3, 1))
            .attr("http.route", "/v1/name/")
            .attr("http.status_code", 503_i64)]),
        trace(vec![team_a(span(4, 1)).attr("app.force_sample", true)]),
        trace(vec![team_a(span(5, 1))
            .attr("http.status_code", 404_i64)
            .attr("app.force_sample", false)]),
        // Not team_a: the inverted policy samples it.
        trace(vec![span(6, 1).attr("team", "team_b")]),
        // A double in range counts as a number.
        trace(vec![team_a(span(7, 1)).attr("http.status_code", 500.5)]),
    ];
    let run = check(&cfg, &traces, Order::Flush, &[1, 2, 3, 4, 6, 7]);
    assert_eq!(run.votes("exact-route").0, 1);
    assert_eq!(run.votes("regex-route").0, 1);
    assert_eq!(run.votes("not-team-a").0, 1);
    assert_eq!(run.votes("server-errors").0, 2);
    assert_eq!(run.votes("force").0, 1);
    // Resource attributes match too (as the collector receives them; OTLP only).
    let by_resource = [
        trace(vec![span(8, 1)])
            .resource("team", "team_a")
            .resource("http.route", "/cart"),
        trace(vec![span(9, 1)]).resource("team", "team_a"),
    ];
    check(&cfg, &by_resource, Order::Flush, &[8]);
}

#[test]
fn status_latency_and_span_count_should_decide_as_in_the_collector() {
    let (_, cfg) = fixture("status_latency_count.yaml");
    let many = |t: u128, n: u64| {
        let mut spans = vec![span(t, 1)];
        spans.extend((2..=n).map(|i| span(t, i).child_of(1)));
        trace(spans)
    };
    let traces = [
        trace(vec![span(1, 1), span(1, 2).child_of(1).error()]),
        trace(vec![span(2, 1).lasting(2_000)]),
        // Over the upper bound, and exactly the lower bound (excluded when an upper is set).
        trace(vec![span(3, 1).lasting(6_000)]),
        trace(vec![span(4, 1).lasting(1_000)]),
        many(5, 5),
        many(6, 11),
        trace(vec![span(7, 1).ok()]),
    ];
    let run = check(&cfg, &traces, Order::Flush, &[1, 2, 5]);
    assert_eq!(run.votes("errors").0, 1);
    assert_eq!(run.votes("slow").0, 1);
    assert_eq!(run.votes("big").0, 1);
}

#[test]
fn probabilistic_should_keep_its_share_and_agree_across_instances() {
    let (text, cfg) = fixture("probabilistic.yaml");
    let traces: Vec<Trace> = (1..=2000u128)
        .map(|i| trace(vec![span(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), 1)]))
        .collect();
    let decide_all = |cfg: &SamplerConfig| {
        decide(
            cfg,
            Vec::new(),
            traces.iter().map(Trace::otlp).collect(),
            Order::Flush,
        )
        .kept
    };
    let first = decide_all(&cfg);
    let share = first.len() as f64 / traces.len() as f64;
    assert!((0.08..0.12).contains(&share), "share {share}");
    assert_eq!(decide_all(&cfg), first, "another instance decides alike");
    let sdk = decide(
        &cfg,
        Vec::new(),
        traces
            .iter()
            .map(|t| t.spans.iter().map(S::sdk).collect::<Vec<_>>())
            .collect(),
        Order::Flush,
    );
    assert_eq!(sdk.kept, first, "SDK spans decide alike");
    let other = SamplerConfig::from_yaml(&text.replace("custom-salt", "other-salt")).unwrap();
    let salted = decide_all(&other);
    assert!(
        salted.symmetric_difference(&first).count() > 100,
        "the salt matters"
    );
}

#[test]
fn rate_limiting_should_keep_up_to_its_spans_per_second() {
    let (_, cfg) = fixture("rate_limits.yaml");
    let sized = |t: u128, n: u64| trace((1..=n).map(|i| span(t, i)).collect());
    let traces = [
        sized(1, 4),
        sized(2, 4),
        sized(3, 4),
        sized(4, 3),
        sized(5, 10),
        sized(6, 11),
    ];
    // Seconds 0, 0, 0, 0: 4 + 4 fit in 10, then neither 4 nor 3 more; a new second, a new
    // budget; 11 never fits.
    check(
        &cfg,
        &traces,
        Order::OneByOne(&[0, 0, 0, 0, 1, 2]),
        &[1, 2, 5],
    );
}

#[test]
fn bytes_limiting_should_keep_what_fits_in_its_bucket() {
    let (_, cfg) = fixture("bytes_limiting.yaml");
    let traces = [
        trace(vec![span(1, 1)]),
        trace(vec![span(2, 1).attr("payload", "x".repeat(20_000))]),
        trace(vec![span(3, 1)]),
    ];
    // The 20 kB trace never fits in the 8 kB bucket; the small ones do, whatever the order.
    check(&cfg, &traces, Order::Flush, &[1, 3]);
}

#[test]
fn trace_state_and_trace_flags_should_decide_as_in_the_collector() {
    let (_, cfg) = fixture("trace_state_flags.yaml");
    let traces = [
        trace(vec![span(1, 1).state("tenant", "gold").unsampled()]),
        trace(vec![span(2, 1).state("tenant", "tin").unsampled()]),
        trace(vec![span(3, 1).unsampled(), span(3, 2).child_of(1)]),
        trace(vec![span(4, 1).state("tenant", "platinum")]),
    ];
    let run = check(&cfg, &traces, Order::Flush, &[1, 3, 4]);
    assert_eq!(run.votes("gold-tenants").0, 2);
    assert_eq!(run.votes("sampled-upstream").0, 2);
}

#[test]
fn ottl_conditions_should_decide_on_spans_events_and_error_mode() {
    let (_, cfg) = fixture("ottl_condition.yaml");
    let checkout = |t: Trace| t.resource("service.name", "checkout");
    let traces = [
        checkout(trace(vec![span(1, 1).kind(SdkKind::Server).lasting(600)])),
        checkout(trace(vec![
            span(2, 1).kind(SdkKind::Server),
            span(2, 2)
                .child_of(1)
                .kind(SdkKind::Client)
                .attr("db.statement", "DELETE FROM carts"),
        ])),
        checkout(trace(vec![
            span(3, 1).event("exception", &[("exception.type", "Timeout".into())])
        ])),
        checkout(trace(vec![
            span(4, 1).event("exception", &[("exception.type", "Cancelled".into())])
        ])),
        checkout(trace(vec![span(5, 1).scope("payments").error()])),
        checkout(trace(vec![span(6, 1).attr("user.id", "123456789")])),
        checkout(trace(vec![span(7, 1)])),
        checkout(trace(vec![
            span(8, 1),
            span(8, 2).child_of(1).attr("user.id", "abcdefghij"),
        ])),
    ];
    let run = check(&cfg, &traces, Order::Flush, &[1, 2, 3, 5, 6, 8]);
    assert_eq!(run.votes("slow-checkout").0, 2);
    assert_eq!(run.votes("exceptions").0, 1);
    assert_eq!(run.votes("scope-and-status").0, 1);
    // `Len` of a missing attribute fails. propagate: the policy fails for every trace whose
    // first span lacks user.id (all but 6), so trace 8 is not sampled by it; ignore: each
    // failing span is counted and trace 8's second span matches; silent: nothing counted.
    let errors = |n: &str| (run.votes(n).0, run.policy(n).evaluation_errors);
    assert_eq!(errors("long-ids-propagate"), (1, 7));
    assert_eq!(errors("long-ids-ignore"), (2, 8));
    assert_eq!(errors("long-ids-silent"), (2, 0));
}

#[test]
fn and_not_and_drop_should_combine_as_in_the_collector() {
    let (_, cfg) = fixture("and_not_drop.yaml");
    let traces = [
        trace(vec![span(1, 1).attr("service.name", "checkout").error()]),
        trace(vec![span(2, 1).attr("service.name", "cart").error()]),
        trace(vec![span(3, 1).attr("service.name", "checkout").ok()]),
        trace(vec![span(4, 1)
            .attr("service.name", "checkout")
            .attr("url.path", "/health")
            .error()]),
    ];
    let run = check(&cfg, &traces, Order::Flush, &[1, 2]);
    assert_eq!(run.votes("checkout-errors").0, 1);
    assert_eq!(run.votes("not-ok").0, 2, "trace 3 is OK");
    assert_eq!(run.votes("no-health-checks"), (0, 3, 1));
}

#[test]
fn composite_should_share_its_budget_in_policy_order() {
    let (_, cfg) = fixture("composite.yaml");
    // Shares of 20 spans/s: errors 10, vip 5, rest (an equal share) 20 / 3 = 6.
    let sized = |t: u128, n: u64, f: fn(S) -> S| trace((1..=n).map(|i| f(span(t, i))).collect());
    let error = |s: S| s.error();
    let vip = |s: S| s.attr("vip", true);
    let plain = |s: S| s;
    let traces = [
        sized(1, 6, error), // errors: 6 of 10
        // Kept by `rest` only because policy_order puts `errors` first (the Collector, in
        // list order, would give trace 1 to `rest` and have no room for this one).
        sized(2, 6, plain), // rest: 6 of 6
        sized(3, 6, error), // errors has 4 left, vip does not match, rest is full
        sized(4, 5, vip),   // vip: 5 of 5
        sized(5, 3, error), // errors: 9 of 10; total 20 of 20
        sized(6, 1, error), // errors has room; the total has not (the Collector keeps it)
        // A new second: errors fills, then falls through to rest (the Collector refuses).
        sized(7, 6, error),
        sized(8, 6, error),
    ];
    let run = check(
        &cfg,
        &traces,
        Order::OneByOne(&[0, 0, 0, 0, 0, 0, 1, 1]),
        &[1, 2, 4, 5, 7, 8],
    );
    assert_eq!(run.votes("budget"), (6, 2, 0));
    assert_eq!(run.policy("budget").traces_kept, 6);
}

// ---- options ------------------------------------------------------------------------------

#[test]
fn every_option_should_be_read_under_the_collectors_name() {
    let (text, cfg) = fixture("options.yaml");
    assert_eq!(cfg.decision_wait, Duration::from_secs(30));
    assert_eq!(cfg.decision_wait_after_root, Duration::from_secs(1));
    assert_eq!(cfg.num_traces, 50_000);
    assert_eq!(cfg.expected_new_traces_per_sec, 100);
    assert_eq!(cfg.num_shards, 4);
    assert_eq!(cfg.maximum_trace_size_bytes, 1 << 20);
    assert_eq!(cfg.block_on_overflow, Some(true));
    assert!(cfg.sample_on_first_match);
    assert!(cfg.drop_pending_traces_on_shutdown);
    assert_eq!(cfg.decision_cache.sampled_cache_size, 10_000);
    assert_eq!(cfg.decision_cache.non_sampled_cache_size, 100_000);
    // block_on_overflow: the collector makes senders wait (a retryable refusal) or decides
    // early; an explicit on_buffer_full must agree with it.
    let collector = CollectorConfig::from_yaml(&text).unwrap();
    assert!(matches!(
        collector.on_buffer_full,
        OnBufferFull::Refuse { .. }
    ));
    let evict = text.replace("block_on_overflow: true", "block_on_overflow: false");
    assert_eq!(
        CollectorConfig::from_yaml(&evict).unwrap().on_buffer_full,
        OnBufferFull::DecideEarly
    );
    let with_service = format!("{evict}service:\n  retry_after: 2s\n");
    assert_eq!(
        CollectorConfig::from_yaml(&with_service)
            .unwrap()
            .on_buffer_full,
        OnBufferFull::DecideEarly
    );
    let contradiction = format!("{evict}service:\n  on_buffer_full: refuse\n");
    assert_eq!(
        CollectorConfig::from_yaml(&contradiction)
            .unwrap_err()
            .to_string(),
        "field `service.on_buffer_full`: `refuse` contradicts \
         processors.tail_sampling.block_on_overflow: false"
    );
    // The in-process processor never blocks `on_end`.
    let err = TailSamplingProcessor::new(InMemorySpanExporter::default(), cfg).unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `block_on_overflow`: `true` is not supported by the in-process processor, \
         which never blocks `on_end`; leave it unset or `false` (a full buffer then decides \
         its oldest traces early)"
    );
}

/// A sampler of OTLP spans on a manual clock.
fn collector_sampler(cfg: SamplerConfig) -> (TailSampler<OtlpSpan>, ManualClock) {
    let clock = ManualClock::new();
    let sampler = TailSampler::with_clock(cfg, Arc::new(clock.clone())).unwrap();
    (sampler, clock)
}

#[test]
fn decision_wait_after_root_received_should_decide_after_the_root_or_be_off_at_0s() {
    let (text, cfg) = fixture("options.yaml");
    let error_trace = || trace(vec![span(1, 2).child_of(1).error(), span(1, 1)]).otlp();
    let (sampler, clock) = collector_sampler(cfg);
    let mut kept = Vec::new();
    sampler.ingest_batch(error_trace(), &mut kept);
    clock.advance(Duration::from_millis(900));
    assert_eq!(sampler.poll(&mut kept), 0);
    clock.advance(Duration::from_millis(200));
    assert_eq!(sampler.poll(&mut kept), 1, "decided 1 s after the root");
    assert_eq!(kept.len(), 2);

    let off = SamplerConfig::from_yaml(&text.replace(
        "decision_wait_after_root_received: 1s",
        "decision_wait_after_root_received: 0s",
    ))
    .unwrap();
    let (sampler, clock) = collector_sampler(off);
    let mut kept = Vec::new();
    sampler.ingest_batch(error_trace(), &mut kept);
    clock.advance(Duration::from_secs(29));
    assert_eq!(sampler.poll(&mut kept), 0, "0s: the root does not decide");
    clock.advance(Duration::from_secs(2));
    assert_eq!(sampler.poll(&mut kept), 1, "decision_wait does");
    assert_eq!(sampler.metrics().traces_decided_on_wait, 1);
}

#[test]
fn maximum_trace_size_bytes_should_decide_a_growing_trace_at_once() {
    let (_, cfg) = fixture("options.yaml");
    let (sampler, _clock) = collector_sampler(cfg);
    let mut kept = Vec::new();
    sampler.ingest_batch(
        trace(vec![span(1, 2).child_of(1).error()]).otlp(),
        &mut kept,
    );
    let big = "x".repeat(300_000);
    for i in 3..=6 {
        let s = span(1, i).child_of(1).attr("payload", big.clone());
        sampler.ingest_batch(trace(vec![s]).otlp(), &mut kept);
    }
    // Past 1 MiB with the fourth big span: decided there, with what it had, and kept for its
    // error (the Collector drops such a trace undecided). A later span follows the decision.
    let m = sampler.metrics();
    assert_eq!(m.traces_decided_on_max_bytes, 1);
    assert_eq!(m.sampling_traces_on_memory, 0);
    assert_eq!(kept.len(), 5);
    sampler.ingest_batch(trace(vec![span(1, 1)]).otlp(), &mut kept);
    assert_eq!((kept.len(), sampler.metrics().late_spans_sampled), (6, 1));
}

#[test]
fn drop_pending_traces_on_shutdown_should_drop_instead_of_deciding() {
    let (text, cfg) = fixture("options.yaml");
    let pending = || trace(vec![span(1, 1).error()]).otlp();
    let (sampler, _clock) = collector_sampler(cfg);
    let mut kept = Vec::new();
    sampler.ingest_batch(pending(), &mut kept);
    assert_eq!(sampler.shutdown(&mut kept), 1);
    assert!(kept.is_empty());
    assert_eq!(sampler.metrics().traces_dropped_on_shutdown, 1);

    let decide = SamplerConfig::from_yaml(&text.replace(
        "drop_pending_traces_on_shutdown: true",
        "drop_pending_traces_on_shutdown: false",
    ))
    .unwrap();
    let (sampler, _clock) = collector_sampler(decide);
    sampler.ingest_batch(pending(), &mut kept);
    sampler.shutdown(&mut kept);
    assert_eq!(kept.len(), 1, "decided at shutdown and kept for its error");
}

#[test]
fn sample_on_first_match_should_credit_the_first_match_and_its_adjusted_count() {
    // A 50% policy listed before the errors policy: with sample_on_first_match, an error trace
    // it also picks is credited to it, adjusted count 2 (the skew the Collector warns of);
    // without, to the errors policy, adjusted count 1.
    let yaml = |first: bool| {
        format!(
            "tail_sampling:\n  sample_on_first_match: {first}\n  policies:\n    \
             - {{name: half, type: probabilistic, probabilistic: {{sampling_percentage: 50}}}}\n    \
             - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}\n"
        )
    };
    let cfg = SamplerConfig::from_yaml(&yaml(true)).unwrap();
    // A trace id the 50% policy keeps.
    let picked = (1..100u128)
        .find(|&t| {
            decide(
                &cfg,
                Vec::new(),
                vec![trace(vec![span(t, 1)]).otlp()],
                Order::Flush,
            )
            .kept
            .contains(&t)
        })
        .unwrap();
    for (first, credited, count) in [(true, "half", 2.0), (false, "errors", 1.0)] {
        let cfg = SamplerConfig::from_yaml(&yaml(first)).unwrap();
        let run = check(
            &cfg,
            &[trace(vec![span(picked, 1).error()])],
            Order::Flush,
            &[picked],
        );
        assert_eq!(run.policy(credited).traces_kept, 1, "first match {first}");
        let mut kept = Vec::new();
        let sampler: TailSampler<SpanData> =
            TailSampler::with_clock(cfg, Arc::new(ManualClock::new())).unwrap();
        sampler.ingest(span(picked, 1).error().sdk(), &mut kept);
        sampler.flush(&mut kept);
        assert_eq!(
            kept[0].attribute(ADJUSTED_COUNT_ATTRIBUTE),
            Some(AttrValue::F64(count))
        );
    }
}

#[test]
fn decision_cache_sizes_should_decide_late_spans_or_be_off_at_0() {
    let (_, cfg) = fixture("options.yaml");
    let late = |cfg: SamplerConfig| {
        let (sampler, _clock) = collector_sampler(cfg);
        let mut kept = Vec::new();
        sampler.ingest_batch(trace(vec![span(1, 1).error()]).otlp(), &mut kept);
        sampler.flush(&mut kept);
        sampler.ingest_batch(trace(vec![span(1, 2).child_of(1)]).otlp(), &mut kept);
        let m = sampler.metrics();
        (kept.len(), m.late_spans_sampled, m.new_trace_id_received)
    };
    assert_eq!(
        late(cfg.clone()),
        (2, 1, 1),
        "the late span follows the kept decision"
    );
    let off = cfg.with_decision_cache(0, 0);
    assert_eq!(
        late(off),
        (1, 0, 2),
        "no cache: the late span starts a new trace"
    );
}
