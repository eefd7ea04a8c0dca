//! Hostile request bodies against the real `traceq collector`: each test sends what broke an
//! earlier build and asserts the collector's peak resident memory (`VmHWM`) or CPU time against
//! a bound stated in the test. Listener and shutdown attacks are in `collector_hostile.rs`.

#[path = "common/process.rs"]
mod process;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use process::CollectorProcess;
use prost::Message;

const MIB: u64 = 1 << 20;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn yaml(out: &std::path::Path, tail_sampling: &str) -> String {
    format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}, http: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
         processors: {{tail_sampling: {{{tail_sampling}, policies: [{{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}]}}}}\n\
         exporters: {{file: {{path: '{}'}}}}\n\
         service: {{telemetry: {{metrics: {{address: none}}}}}}\n",
        out.display()
    )
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn span(trace: u32, error: bool) -> Span {
    let mut trace_id = vec![0xab; 16];
    trace_id[12..].copy_from_slice(&trace.to_be_bytes());
    Span {
        trace_id,
        span_id: vec![1; 8],
        name: "op".into(),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        status: Some(Status {
            code: if error {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Unset as i32
            },
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

/// Posts an OTLP/HTTP body; returns the status code.
async fn post(
    client: &reqwest::Client,
    http: SocketAddr,
    content_type: &str,
    gzip: bool,
    body: Vec<u8>,
) -> u16 {
    let mut req = client
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", content_type)
        .body(body);
    if gzip {
        req = req.header("content-encoding", "gzip");
    }
    req.send()
        .await
        .expect("the collector answers")
        .status()
        .as_u16()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---- JSON that inflates: small gzip bodies of empty spans ----

#[test]
fn gzip_json_of_empty_spans_should_be_refused_within_a_small_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let c = CollectorProcess::start(
        dir.path(),
        &yaml(&dir.path().join("out.jsonl"), "decision_wait: 1s"),
        &[],
    );
    // ~15 MB of `{},` (just under the 16 MiB HTTP limit) gzips to about 15 KB. Decoded whole
    // into structs, each such body took about 1.5 GB.
    let spans = vec!["{}"; 5_000_000].join(",");
    let json = format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{spans}]}}]}}]}}"#);
    let body = gzip(json.as_bytes());
    assert!(body.len() < 64 << 10, "{} bytes", body.len());
    let http = c.http.unwrap();
    let statuses = runtime().block_on(async {
        let client = reqwest::Client::new();
        let sends = (0..8).map(|_| post(&client, http, "application/json", true, body.clone()));
        futures::future::join_all(sends).await
    });
    // Each is a span without a trace id: refused as malformed, not retryable.
    assert_eq!(statuses, vec![400; 8]);
    let peak = c.peak_rss();
    let bound = 250 * MIB;
    assert!(peak < bound, "peak resident {} MiB", peak / MIB);
    eprintln!(
        "peak resident {} MiB (bound {} MiB)",
        peak / MIB,
        bound / MIB
    );
    let exit = c.stop(Duration::from_secs(20));
    assert!(exit.status.success(), "{}", exit.stderr);
}

// ---- Large resources, few spans: charged to the buffer ----

#[test]
fn huge_resources_should_be_charged_to_the_buffer_and_held_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let c = CollectorProcess::start(
        dir.path(),
        &yaml(
            &dir.path().join("out.jsonl"),
            "decision_wait: 10m, decision_wait_after_root: 10m, max_buffer_bytes: 67108864",
        ),
        &[],
    );
    // 1 MiB of resource attributes (gzip: about 1 KB) and one span per request: 400 of them
    // held 400 MiB when the sampler charged a span's own bytes only.
    let resource = vec![kv("big", &"x".repeat(1 << 20))];
    let http = c.http.unwrap();
    let statuses = runtime().block_on(async {
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        for t in 0..400 {
            let body = request(resource.clone(), vec![span(t, false)]).encode_to_vec();
            let body = gzip(&body);
            statuses.push(post(&client, http, "application/x-protobuf", true, body).await);
        }
        statuses
    });
    let accepted = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!(accepted + refused, 400, "{statuses:?}");
    // Held within the buffer's bound: the rest refused, or decided early under pressure.
    let peak = c.peak_rss();
    let bound = 200 * MIB;
    eprintln!(
        "accepted {accepted}, refused {refused}, peak resident {} MiB (bound {} MiB)",
        peak / MIB,
        bound / MIB
    );
    assert!(peak < bound, "peak resident {} MiB", peak / MIB);
    let exit = c.stop(Duration::from_secs(20));
    assert!(exit.status.success(), "{}", exit.stderr);
}

// ---- Attribute lookups against large resources: CPU linear in the request ----

#[test]
fn attribute_lookups_should_not_walk_the_resource_for_every_span() {
    let dir = tempfile::tempdir().unwrap();
    // A policy on an attribute no span has: before, each of the 5,000 spans of a request walked
    // all 10,000 resource attributes, several times per decision.
    let c = CollectorProcess::start(
        dir.path(),
        &format!(
            "receivers: {{otlp: {{protocols: {{http: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
             processors: {{tail_sampling: {{decision_wait: 200ms, policies: [{{name: tenant, type: string_attribute, string_attribute: {{key: tenant, values: [gold]}}}}]}}}}\n\
             exporters: {{file: {{path: '{}'}}}}\n\
             service: {{telemetry: {{metrics: {{address: none}}}}}}\n",
            dir.path().join("out.jsonl").display()
        ),
        &[],
    );
    let resource: Vec<KeyValue> = (0..10_000)
        .map(|i| kv(&format!("attr.{i:05}"), "v"))
        .collect();
    let before = c.cpu_time();
    let http = c.http.unwrap();
    runtime().block_on(async {
        let client = reqwest::Client::new();
        for r in 0..20u32 {
            // 50 traces of 100 spans: each trace is charged the resource once.
            let spans = (0..5_000).map(|t| span(r * 50 + t / 100, false)).collect();
            let body = request(resource.clone(), spans).encode_to_vec();
            assert_eq!(
                post(&client, http, "application/x-protobuf", false, body).await,
                200
            );
        }
        // Every trace decided (decision_wait 200 ms; polled every few ms).
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let used = c.cpu_time() - before;
    eprintln!("CPU for 100,000 spans against a 10,000-attribute resource: {used:?}");
    assert!(used < Duration::from_secs(4), "CPU {used:?}");
    let exit = c.stop(Duration::from_secs(20));
    assert!(exit.status.success(), "{}", exit.stderr);
}

/// Sends an encoded request as is over OTLP/gRPC.
async fn grpc_raw(grpc: SocketAddr, body: Vec<u8>) -> Result<(), tonic::Status> {
    use traceq::exporter::otlp::grpc::{EncodedRequestCodec, EXPORT_PATH};
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
    client
        .unary(
            tonic::Request::new(bytes::Bytes::from(body)),
            path,
            EncodedRequestCodec,
        )
        .await
        .map(drop)
}

// ---- Spans a strict decoder refuses ----

#[test]
fn spans_a_strict_decoder_refuses_should_be_rejected_and_others_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let c = CollectorProcess::start(
        dir.path(),
        &yaml(&out, "decision_wait: 10m, decision_wait_after_root: 10m"),
        &[],
    );
    // A span whose name is not UTF-8, and one whose name (a string) is sent as a varint.
    let good = request(vec![kv("service.name", "a")], vec![span(1, true)]).encode_to_vec();
    let mut bad_span = span(2, true).encode_to_vec();
    bad_span.extend_from_slice(&[5 << 3 | 2, 2, 0xff, 0xfe]);
    let mut varint_span = span(3, true).encode_to_vec();
    varint_span.extend_from_slice(&[5 << 3, 7]);
    let wrap = |s: &[u8]| {
        let mut ss = Vec::new();
        prost::encoding::bytes::encode(2, &s.to_vec(), &mut ss);
        let mut rs = Vec::new();
        prost::encoding::bytes::encode(2, &ss, &mut rs);
        let mut req = Vec::new();
        prost::encoding::bytes::encode(1, &rs, &mut req);
        req
    };
    let http = c.http.unwrap();
    let grpc = c.grpc.unwrap();
    let cpu_before = c.cpu_time();
    runtime().block_on(async {
        let client = reqwest::Client::new();
        for bad in [&bad_span, &varint_span] {
            let body = wrap(bad);
            assert!(ExportTraceServiceRequest::decode(&body[..]).is_err());
            assert_eq!(
                post(&client, http, "application/x-protobuf", false, body.clone()).await,
                400
            );
            let status = grpc_raw(grpc, body).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
        // Still serving both protocols.
        grpc_raw(grpc, good.clone()).await.unwrap();
        // Many bad requests cost little: each is refused on its first bad field.
        for _ in 0..2_000 {
            assert_eq!(
                post(
                    &client,
                    http,
                    "application/x-protobuf",
                    false,
                    wrap(&bad_span)
                )
                .await,
                400
            );
        }
        assert_eq!(
            post(&client, http, "application/x-protobuf", false, good.clone()).await,
            200
        );
    });
    let cpu = c.cpu_time() - cpu_before;
    let peak = c.peak_rss();
    eprintln!(
        "2,007 requests, 2,004 refused: CPU {cpu:?}, peak resident {} MiB",
        peak / MIB
    );
    assert!(cpu < Duration::from_secs(2), "CPU {cpu:?}");
    assert!(peak < 64 * MIB, "peak resident {} MiB", peak / MIB);
    let exit = c.stop(Duration::from_secs(20));
    assert!(exit.status.success(), "{}", exit.stderr);
    // The kept error trace is in the output, and the output decodes.
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty(), "{}", exit.stderr);
    for line in lines {
        let req: ExportTraceServiceRequest = serde_json::from_str(line).unwrap();
        for rs in &req.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    assert_eq!(s.trace_id[12..], 1u32.to_be_bytes());
                }
            }
        }
    }
}
