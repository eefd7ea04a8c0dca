//! Synthetic traces shaped like a small web service's: a server root, client calls and internal
//! steps under it, nested a level or two.
//!
//! Why exact error traces instead of a coin flip per trace: a run's report says how many error
//! traces were sent, and a tail sampler's test wants to compare that with how many it kept. Trace
//! `i` of a run (counted from 0 across all workers) is an error trace when
//! `floor((i + 1) * ratio) > floor(i * ratio)`, so any `n` consecutive traces from the start hold
//! exactly `floor(n * ratio)` of them, spread evenly, whatever the seed or the number of workers.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use rand::distr::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::LoadgenConfig;

/// Instrumentation scope name of the generated spans.
pub const SCOPE_NAME: &str = "traceq-loadgen";
/// Deepest level of a span below the root (the root is level 0).
const MAX_DEPTH: usize = 3;
/// Length of each span's random `loadgen.payload` string attribute.
const PAYLOAD_LEN: usize = 20;
/// Status message of the one failing span of an error trace.
const ERROR_MESSAGE: &str = "loadgen: injected error";

/// Routes of the root server spans: (route, path prefix).
const ROUTES: [(&str, &str); 4] = [
    ("/api/orders/{id}", "/api/orders/"),
    ("/api/users/{id}", "/api/users/"),
    ("/api/carts/{id}", "/api/carts/"),
    ("/api/stock/{sku}", "/api/stock/"),
];
/// Database tables the client spans query.
const TABLES: [&str; 4] = ["orders", "users", "carts", "inventory"];
/// Downstream hosts the client spans call.
const PEERS: [&str; 3] = ["inventory.internal", "pricing.internal", "users.internal"];
/// Internal steps.
const STEPS: [&str; 5] = [
    "validate",
    "authorize",
    "render",
    "compute price",
    "serialize",
];

/// Whether trace `index` of a run (from 0) is one of the `error_ratio` share with an ERROR span.
///
/// Of any first `n` traces, exactly `floor(n * error_ratio)` are.
pub fn is_error_trace(index: u64, error_ratio: f64) -> bool {
    let marks = |k: u64| (k as f64 * error_ratio).floor();
    marks(index.saturating_add(1)) > marks(index)
}

/// One generated export request and what it holds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GeneratedRequest {
    /// The request: one resource, one scope, the spans of whole traces.
    pub request: ExportTraceServiceRequest,
    /// Traces in it.
    pub traces: usize,
    /// Spans in it.
    pub spans: usize,
    /// Traces in it with an ERROR span.
    pub error_traces: usize,
}

/// Builds export requests of synthetic traces.
///
/// Ids, tree shapes and attributes come from a seeded generator, so a seed reproduces them;
/// timestamps are taken from the clock when a request is generated.
///
/// # Examples
///
/// ```
/// use traceq_exporter::loadgen::{LoadgenConfig, TraceGenerator};
///
/// let config = LoadgenConfig::default().with_seed(7).with_spans_per_trace(5);
/// let mut generator = TraceGenerator::new(&config, 0);
/// // Traces 0..100 of the run: with the default 1% error ratio, trace 99 is the error trace.
/// let generated = generator.generate_request(0, 100);
/// assert_eq!((generated.traces, generated.spans, generated.error_traces), (100, 500, 1));
/// ```
#[derive(Debug, Clone)]
pub struct TraceGenerator {
    rng: StdRng,
    spans_per_trace: usize,
    error_ratio: f64,
    resource: Resource,
    scope: InstrumentationScope,
}

/// A span's place in its trace while the trace is built.
#[derive(Clone, Copy)]
struct Node {
    depth: usize,
    kind: SpanKind,
    start: u64,
    end: u64,
}

impl TraceGenerator {
    /// A generator for `config`'s spans per trace, error ratio, service name and seed. Generators
    /// of different `stream`s (one per worker) with the same seed produce different ids.
    pub fn new(config: &LoadgenConfig, stream: u64) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            None => StdRng::from_os_rng(),
        };
        Self {
            rng,
            spans_per_trace: config.spans_per_trace.max(1),
            error_ratio: config.error_ratio.clamp(0.0, 1.0),
            resource: Resource {
                attributes: vec![
                    string_attr("service.name", &config.service_name),
                    string_attr("service.instance.id", &format!("loadgen-{stream}")),
                    string_attr("telemetry.sdk.name", SCOPE_NAME),
                ],
                ..Default::default()
            },
            scope: InstrumentationScope {
                name: SCOPE_NAME.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            },
        }
    }

    /// A request holding traces `first_trace .. first_trace + traces` of the run (the indices
    /// decide which are error traces, see [`is_error_trace`]), ending up to a second before now.
    pub fn generate_request(&mut self, first_trace: u64, traces: usize) -> GeneratedRequest {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut spans = Vec::with_capacity(traces * self.spans_per_trace);
        let mut error_traces = 0;
        for index in (first_trace..).take(traces) {
            let error = is_error_trace(index, self.error_ratio);
            error_traces += usize::from(error);
            let end = now.saturating_sub(self.rng.random_range(0..1_000_000_000));
            self.trace(end, error, &mut spans);
        }
        GeneratedRequest {
            traces,
            spans: spans.len(),
            error_traces,
            request: ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(self.resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(self.scope.clone()),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            },
        }
    }

    /// Appends one trace whose root ends at `end` (Unix nanoseconds).
    fn trace(&mut self, end: u64, error: bool, out: &mut Vec<Span>) {
        let first = out.len();
        let trace_id: [u8; 16] = self.rng.random();
        let root_len = self.rng.random_range(20_000_000..400_000_000);
        let root = Node {
            depth: 0,
            kind: SpanKind::Server,
            start: end.saturating_sub(root_len),
            end,
        };
        let mut nodes = vec![root];
        // Spans that may have children: servers and internal steps above the deepest level.
        let mut open = vec![0];
        out.push(self.span(&trace_id, None, root));
        for _ in 1..self.spans_per_trace {
            // Half the children hang off the root; the rest off any span that can have children.
            let parent = if self.rng.random_bool(0.5) {
                0
            } else {
                open[self.rng.random_range(0..open.len())]
            };
            let p = nodes[parent];
            let depth = p.depth + 1;
            let kind = if depth == MAX_DEPTH || self.rng.random_bool(0.6) {
                SpanKind::Client
            } else {
                SpanKind::Internal
            };
            let start = p.start + self.rng.random_range(0..=(p.end - p.start) / 2);
            let end = start + self.rng.random_range((p.end - start) / 10..=p.end - start);
            let node = Node {
                depth,
                kind,
                start,
                end,
            };
            if kind != SpanKind::Client && depth < MAX_DEPTH {
                open.push(nodes.len());
            }
            nodes.push(node);
            let parent_id = out[first + parent].span_id.clone();
            out.push(self.span(&trace_id, Some(parent_id), node));
        }
        if error {
            let failing = first + self.rng.random_range(0..self.spans_per_trace);
            out[failing].status = Some(Status {
                message: ERROR_MESSAGE.to_owned(),
                code: StatusCode::Error as i32,
            });
        }
    }

    /// A span with its kind's name and attributes, about 300 bytes encoded.
    fn span(&mut self, trace_id: &[u8; 16], parent_span_id: Option<Vec<u8>>, node: Node) -> Span {
        let span_id: [u8; 8] = self.rng.random();
        let id = self.rng.random_range(1000..100_000);
        let payload: String = (&mut self.rng)
            .sample_iter(Alphanumeric)
            .take(PAYLOAD_LEN)
            .map(char::from)
            .collect();
        let (name, mut attributes) = match node.kind {
            SpanKind::Server => {
                let (route, prefix) = ROUTES[self.rng.random_range(0..ROUTES.len())];
                (
                    format!("GET {route}"),
                    vec![
                        string_attr("http.request.method", "GET"),
                        string_attr("http.route", route),
                        string_attr("url.path", &format!("{prefix}{id}")),
                        int_attr("http.response.status_code", 200),
                        string_attr("server.address", "shop.example.com"),
                        string_attr("network.protocol.version", "1.1"),
                    ],
                )
            }
            SpanKind::Client if self.rng.random_bool(0.5) => {
                let table = TABLES[self.rng.random_range(0..TABLES.len())];
                (
                    format!("SELECT {table}"),
                    vec![
                        string_attr("db.system.name", "postgresql"),
                        string_attr("db.operation.name", "SELECT"),
                        string_attr("db.collection.name", table),
                        string_attr("server.address", "db-1.internal"),
                        int_attr("db.response.returned_rows", id % 50),
                        string_attr("db.query.summary", &format!("SELECT {table}")),
                    ],
                )
            }
            SpanKind::Client => {
                let peer = PEERS[self.rng.random_range(0..PEERS.len())];
                (
                    "GET".to_owned(),
                    vec![
                        string_attr("http.request.method", "GET"),
                        string_attr("url.full", &format!("http://{peer}/v1/items/{id}")),
                        string_attr("server.address", peer),
                        int_attr("http.response.status_code", 200),
                        string_attr("network.protocol.version", "1.1"),
                    ],
                )
            }
            _ => {
                let step = STEPS[self.rng.random_range(0..STEPS.len())];
                let function = step.replace(' ', "_");
                (
                    step.to_owned(),
                    vec![
                        string_attr("code.function.name", &format!("shop::{function}")),
                        string_attr("code.file.path", &format!("src/shop/{function}.rs")),
                        string_attr("thread.name", "tokio-runtime-worker"),
                        int_attr("loadgen.items", id % 20),
                    ],
                )
            }
        };
        attributes.push(string_attr("loadgen.payload", &payload));
        Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: parent_span_id.unwrap_or_default(),
            // Sampled (0x01), and the parent is known not to be remote (0x100 set, 0x200 clear).
            flags: 0x101,
            name,
            kind: node.kind as i32,
            start_time_unix_nano: node.start,
            end_time_unix_nano: node.end,
            attributes,
            ..Default::default()
        }
    }
}

fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn int_attr(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
