//! Two tiers on loopback, every process the real `traceq` binary: a router (`loadbalancing`
//! exporter, sampling off) in front of three sampling collectors. Three services send the spans
//! of each trace in separate requests with the SDK's own OTLP exporter. Checked: every kept
//! trace is whole and in exactly one sampler's output, every error trace is kept, 30,000
//! traces spread across the samplers within 10% of even, and a sampler that is down for a
//! while loses nothing (its spans wait at the router). Also: the static list re-read on SIGHUP.

#[path = "common/process.rs"]
mod process;

use std::collections::{HashMap, HashSet};
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use process::{metric, scrape, CollectorProcess};

const LIMIT: Duration = Duration::from_secs(60);
const SERVICES: [&str; 3] = ["frontend", "orders", "payments"];
/// One trace in this many has an error span (in the last service).
const ERROR_EVERY: usize = 100;

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn sampler_yaml(addr: SocketAddr, out: &Path) -> String {
    format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '{addr}'}}}}}}}}\n\
         processors:\n  batch: {{timeout: 20ms}}\n  tail_sampling:\n    \
         decision_wait_after_root: 300ms\n    policies:\n      - {{name: errors, type: \
         status_code, status_code: {{status_codes: [ERROR]}}}}\n      - {{name: some, type: \
         probabilistic, probabilistic: {{sampling_percentage: 20}}}}\n\
         exporters: {{file: {{path: '{}', fsync_interval: 10ms}}}}\n\
         service: {{shutdown_timeout: 20s, telemetry: {{metrics: {{address: '127.0.0.1:0'}}}}}}\n",
        out.display()
    )
}

fn router_yaml(backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("'{a}'")).collect();
    format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
         processors: {{batch: {{timeout: 20ms}}}}\n\
         exporters:\n  loadbalancing:\n    routing_key: traceID\n    protocol:\n      otlp: \
         {{timeout: 1s, compression: gzip, sending_queue: {{queue_size: 1000000}}, \
         retry_on_failure: {{initial_interval: 50ms, max_interval: 200ms, max_elapsed_time: 0s}}}}\n    \
         resolver:\n      static: {{hostnames: [{}]}}\n\
         service: {{sampling: false, shutdown_timeout: 20s, telemetry: {{metrics: {{address: \
         '127.0.0.1:0'}}}}}}\n",
        list.join(", ")
    )
}

/// Spans of `n` traces (starting at `first`), one span per service and trace: frontend the
/// root, orders its child, payments the grandchild, each service's spans apart; and the ids
/// of the error traces.
fn make_traces(first: usize, n: usize) -> ([Vec<SpanData>; 3], Vec<Vec<u8>>) {
    let mut errors = Vec::new();
    let memories: Vec<InMemorySpanExporter> =
        (0..3).map(|_| InMemorySpanExporter::default()).collect();
    let providers: Vec<SdkTracerProvider> = memories
        .iter()
        .map(|m| {
            SdkTracerProvider::builder()
                .with_simple_exporter(m.clone())
                .build()
        })
        .collect();
    let tracers: Vec<_> = providers.iter().map(|p| p.tracer("routing-test")).collect();
    for i in first..first + n {
        let root = tracers[0]
            .span_builder(format!("GET /order/{i}"))
            .with_kind(SpanKind::Server)
            .start(&tracers[0]);
        let cx = opentelemetry::Context::current_with_span(root);
        let remote = opentelemetry::Context::new()
            .with_remote_span_context(cx.span().span_context().clone());
        let orders = tracers[1]
            .span_builder("create order")
            .with_kind(SpanKind::Server)
            .start_with_context(&tracers[1], &remote);
        let remote =
            opentelemetry::Context::new().with_remote_span_context(orders.span_context().clone());
        let mut payments = tracers[2]
            .span_builder("charge")
            .with_kind(SpanKind::Server)
            .start_with_context(&tracers[2], &remote);
        if i % ERROR_EVERY == 0 {
            payments.set_status(Status::error("card declined"));
            errors.push(payments.span_context().trace_id().to_bytes().to_vec());
        }
        payments.end();
        let mut orders = orders;
        orders.end();
        cx.span().end();
    }
    let spans: Vec<Vec<SpanData>> = memories
        .iter()
        .map(|m| m.get_finished_spans().unwrap())
        .collect();
    for p in providers {
        p.shutdown().unwrap();
    }
    (spans.try_into().unwrap(), errors)
}

/// Each service sends its spans with the SDK's OTLP/gRPC exporter, in requests of 500.
async fn send(router: SocketAddr, spans: [Vec<SpanData>; 3]) {
    let mut tasks = Vec::new();
    for (service, spans) in SERVICES.iter().zip(spans) {
        tasks.push(tokio::spawn(async move {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(format!("http://{router}"))
                .with_timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            exporter.set_resource(
                &Resource::builder_empty()
                    .with_attributes([KeyValue::new("service.name", *service)])
                    .build(),
            );
            for chunk in spans.chunks(500) {
                exporter.export(chunk.to_vec()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A metric's value for one label value.
fn metric_with(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the router has delivered `spans` spans in all and holds none.
async fn drained(router: SocketAddr, spans: f64) {
    let started = Instant::now();
    loop {
        let text = scrape(router).await;
        let sent = metric(&text, "traceq_loadbalancer_backend_sent_spans_total");
        let queued = metric(&text, "traceq_loadbalancer_backend_queue_spans");
        if sent >= spans && queued == 0.0 {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "router not drained: {sent} sent, {queued} queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Trace id -> span ids, per output file.
fn output(file: &Path) -> HashMap<Vec<u8>, HashSet<Vec<u8>>> {
    let mut traces: HashMap<Vec<u8>, HashSet<Vec<u8>>> = HashMap::new();
    let Ok(f) = std::fs::File::open(file) else {
        return traces;
    };
    for line in std::io::BufReader::new(f).lines() {
        let req: ExportTraceServiceRequest = serde_json::from_str(&line.unwrap()).unwrap();
        for s in req
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
        {
            assert!(
                traces.entry(s.trace_id).or_default().insert(s.span_id),
                "a span delivered twice"
            );
        }
    }
    traces
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_should_keep_every_trace_whole_on_one_sampler() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = [free_port(), free_port(), free_port()];
    let outs: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("kept-{i}.jsonl")))
        .collect();
    let mut samplers: Vec<Option<CollectorProcess>> = Vec::new();
    for (i, (addr, out)) in addrs.iter().zip(&outs).enumerate() {
        let sub = dir.path().join(format!("sampler-{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        samplers.push(Some(CollectorProcess::start(
            &sub,
            &sampler_yaml(*addr, out),
            &[],
        )));
    }
    let router = CollectorProcess::start(dir.path(), &router_yaml(&addrs), &[]);
    let (grpc, admin) = (router.grpc.unwrap(), router.admin.unwrap());

    let mut errors = Vec::new();
    let mut traces = |first| {
        let (spans, e) = make_traces(first, 10_000);
        errors.extend(e);
        spans
    };
    // 10,000 traces with all samplers up.
    send(grpc, traces(0)).await;
    drained(admin, 30_000.0).await;
    // The second sampler goes down (deciding what it holds); 10,000 more traces meanwhile.
    samplers[1].take().unwrap().stop(LIMIT);
    send(grpc, traces(10_000)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = scrape(admin).await;
    let waiting = metric_with(
        &text,
        "traceq_loadbalancer_backend_queue_spans",
        &format!("backend=\"{}\"", addrs[1]),
    );
    assert!(
        waiting > 5_000.0,
        "only {waiting} spans wait for the stopped sampler"
    );
    println!("{waiting} spans wait at the router for the stopped sampler");
    assert_eq!(
        metric(&text, "traceq_loadbalancer_backend_dropped_spans_total"),
        0.0
    );
    // It comes back (a new output file), and takes what waited; 10,000 more traces.
    let restarted_out = dir.path().join("kept-1-again.jsonl");
    let sub = dir.path().join("sampler-1-again");
    std::fs::create_dir_all(&sub).unwrap();
    samplers[1] = Some(CollectorProcess::start(
        &sub,
        &sampler_yaml(addrs[1], &restarted_out),
        &[],
    ));
    send(grpc, traces(20_000)).await;
    drained(admin, 90_000.0).await;

    let text = scrape(admin).await;
    for addr in addrs {
        let spans = metric_with(
            &text,
            "traceq_loadbalancer_backend_sent_spans_total",
            &format!("backend=\"{addr}\""),
        );
        let off = (spans - 30_000.0).abs() / 30_000.0;
        assert!(
            off < 0.10,
            "{addr} got {spans} of 90,000 spans ({off:.3} off even)"
        );
    }
    assert_eq!(
        metric(&text, "traceq_loadbalancer_backend_dropped_spans_total"),
        0.0
    );
    for s in samplers.iter_mut() {
        let exit = s.take().unwrap().stop(LIMIT);
        assert!(exit.status.success(), "{}", exit.stderr);
    }
    router.stop(LIMIT);

    let per_sampler = [
        output(&outs[0]),
        {
            let mut both = output(&outs[1]);
            for (t, spans) in output(&restarted_out) {
                let seen = both.entry(t).or_default();
                for s in spans {
                    assert!(seen.insert(s), "a span delivered twice");
                }
            }
            both
        },
        output(&outs[2]),
    ];
    let mut kept = 0;
    let mut owner: HashMap<&Vec<u8>, usize> = HashMap::new();
    for (i, traces) in per_sampler.iter().enumerate() {
        for (trace, spans) in traces {
            assert_eq!(spans.len(), 3, "a kept trace is not whole on sampler {i}");
            assert!(
                owner.insert(trace, i).is_none(),
                "a trace kept by two samplers"
            );
            kept += 1;
        }
    }
    println!(
        "kept {kept} traces: {:?} per sampler; {} error traces",
        per_sampler.iter().map(HashMap::len).collect::<Vec<_>>(),
        errors.len()
    );
    // Every error trace is kept (whole, checked above).
    let error_traces = errors.len();
    assert_eq!(error_traces, 300);
    for e in &errors {
        assert!(owner.contains_key(e), "an error trace was not kept");
    }
    // About 20% of the rest, and every error trace on top.
    let expected = error_traces as f64 + 0.2 * (30_000 - error_traces) as f64;
    assert!(
        (kept as f64 - expected).abs() < expected * 0.1,
        "{kept} kept, expected about {expected:.0}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_should_reread_the_static_backends_and_refuse_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let four = [free_port(), free_port(), free_port(), free_port()];
    let router = CollectorProcess::start(dir.path(), &router_yaml(&four), &[]);
    let admin = router.admin.unwrap();
    let backends = |text: &str| metric(text, "traceq_loadbalancer_backends");
    assert_eq!(backends(&scrape(admin).await), 4.0);
    // Four to three.
    std::fs::write(dir.path().join("collector.yaml"), router_yaml(&four[..3])).unwrap();
    router.signal("HUP");
    let started = Instant::now();
    // The line is printed just after the change: wait for both.
    while backends(&scrape(admin).await) != 3.0
        || !router.stderr().contains("loadbalancing backends now")
    {
        assert!(started.elapsed() < LIMIT, "{}", router.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file changes nothing and says why.
    std::fs::write(
        dir.path().join("collector.yaml"),
        "exporters: {loadbalancing: {}}",
    )
    .unwrap();
    router.signal("HUP");
    let started = Instant::now();
    while !router
        .stderr()
        .contains("keeping the running configuration")
    {
        assert!(started.elapsed() < LIMIT, "{}", router.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backends(&scrape(admin).await), 3.0);
    let exit = router.stop(LIMIT);
    assert!(exit.status.success(), "{}", exit.stderr);
}
