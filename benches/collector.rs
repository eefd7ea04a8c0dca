//! Headline claim under test: `traceq collector` tail-samples OTLP at ≥ 250,000 spans per CPU
//! second of the collector process, and holds a buffered span of ~300 encoded bytes in ≤ 1 KiB of
//! resident memory.
//!
//! Setup: the `traceq` binary runs as a separate process (so its CPU time and memory are its
//! own), receiving OTLP/gRPC on loopback and exporting over OTLP/gRPC to a sink in this process
//! that counts spans. The load: 10-span traces, 1% of them with an error span, requests of 510
//! spans (whole traces, the loadgen's batching of 512), pre-encoded, sent by 4 concurrent tasks.
//!
//! Group `collector_otlp_grpc_10_span_traces_1pct_errors`: spans/s through the collector,
//! `tail_sampling` (default policies: every error trace + 10% of the rest, decided 100 ms after
//! a trace's root ends) beside `pass_through` (the same binary with `service.sampling: false`,
//! exporting every span) as the baseline in the same run. After the group, the bench prints for
//! both: spans per CPU-second of the collector process (utime + stime from /proc, over a fixed
//! load of 204,000 spans, including the decisions and exports that follow), and the resident
//! memory per buffered span of a collector told to wait 10 minutes before deciding.
//!
//! In the same group: `tail_sampling_storage_fsync_interval` (the same policies with
//! `--storage`, the write-ahead log synced every 100 ms; target ≥ 70% of `tail_sampling`), and
//! `router_loadbalancing` (sampling off, the `loadbalancing` exporter routing to the sink; its
//! spans per CPU-second are printed beside the pass-through's, target: at least as many).
//! Group `collector_storage_replay`: a collector holding 204,000 spans (nothing decided) is
//! killed with SIGKILL; each iteration starts a fresh process on a copy of its log and takes the
//! replay time it reports (`traceq_storage_replay_seconds`); target ≥ 1 M spans/s.
//!
//! Last measured: see README's performance table (filled from this bench's output).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use traceq::exporter::loadgen::{LoadgenConfig, TraceGenerator, TraceSender};

const REQUESTS_PER_ITER: usize = 40;
const SENDERS: usize = 4;
const CPU_RUN_REQUESTS: usize = 400;
/// The default policies: every error trace, 10% of the rest.
const SAMPLING: &str = "processors: {tail_sampling: {decision_wait_after_root: 100ms, policies: [{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}, {name: p10, type: probabilistic, probabilistic: {sampling_percentage: 10}}]}}\nservice: {telemetry: {metrics: {address: none}}}\n";
/// Nothing decided for 10 minutes: every span stays buffered (and, with storage, in the log).
const HOLDING: &str = "processors: {tail_sampling: {decision_wait: 10m, decision_wait_after_root: 10m, policies: [{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]}}\nservice: {telemetry: {metrics: {address: '127.0.0.1:0'}}}\n";

/// The downstream: counts spans, answers OK.
#[derive(Debug, Default, Clone)]
struct Sink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

struct CollectorProcess {
    child: Child,
    grpc: SocketAddr,
    admin: Option<SocketAddr>,
    _dir: tempfile::TempDir,
    _wal: Option<tempfile::TempDir>,
}

impl CollectorProcess {
    fn start(extra: &str, sink: SocketAddr) -> Self {
        Self::start_with(extra, sink, &[])
    }

    /// With storage in `dir/wal` (a temporary directory of its own when `dir` is `None`).
    fn start_stored(extra: &str, sink: SocketAddr, dir: Option<&std::path::Path>) -> Self {
        let own = tempfile::tempdir().unwrap();
        let wal = dir.unwrap_or(own.path()).join("wal");
        let mut me = Self::start_with(extra, sink, &["--storage", wal.to_str().unwrap()]);
        me._wal = Some(own);
        me
    }

    fn start_with(extra: &str, sink: SocketAddr, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("collector.yaml");
        // The sink is the exporter, unless `extra` names its own.
        let exporter = if extra.contains("exporters:") {
            String::new()
        } else {
            format!("exporters: {{otlp: {{endpoint: '{sink}', compression: none}}}}\n")
        };
        std::fs::write(
            &config,
            format!(
                "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
                 {exporter}{extra}"
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_traceq"))
            .args(["collector", "--progress", "false", "--config"])
            .arg(&config)
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A replay line may come first.
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("listening") {
            line.clear();
            if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
                break;
            }
        }
        let find = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.parse().ok())
        };
        Self {
            grpc: find("grpc=").unwrap_or_else(|| panic!("collector did not start: {line}")),
            admin: find("metrics="),
            child,
            _dir: dir,
            _wal: None,
        }
    }

    /// A metric's value from `/metrics`.
    fn metric(&self, rt: &tokio::runtime::Runtime, name: &str) -> Option<f64> {
        let admin = self.admin?;
        rt.block_on(async {
            let text = reqwest::get(format!("http://{admin}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.parse::<f64>().ok())
        })
    }

    /// CPU seconds (user + system) the process used so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // After the command name: state is field 3, utime 14 and stime 15 (1-based, man proc).
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / clock_ticks()
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn requests(count: usize, seed: u64) -> Vec<(Bytes, usize)> {
    let config = LoadgenConfig::default().with_seed(seed);
    let mut generator = TraceGenerator::new(&config, 0);
    let per = config.traces_per_request();
    (0..count)
        .map(|i| {
            let g = generator.generate_request((i * per) as u64, per);
            (TraceSender::encode(&g.request), g.spans)
        })
        .collect()
}

async fn send_all(sender: &Arc<TraceSender>, bodies: &Arc<Vec<(Bytes, usize)>>) -> usize {
    let mut tasks = Vec::new();
    for w in 0..SENDERS {
        let sender = sender.clone();
        let bodies = bodies.clone();
        tasks.push(tokio::spawn(async move {
            let mut spans = 0;
            for (body, n) in bodies.iter().skip(w).step_by(SENDERS) {
                let outcome = sender.send(body.clone(), None).await;
                outcome.result.expect("the collector accepted the request");
                spans += n;
            }
            spans
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

async fn wait_quiet(sink: &Sink) {
    // Decisions come 100 ms after a trace's root ended; wait until the sink stops growing.
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let now = sink.spans.load(Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sink = Sink::default();
    let sink_addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(sink.clone()))
            .serve_with_incoming(tokio_stream_from(listener));
        tokio::spawn(server);
        addr
    });
    let sampling = CollectorProcess::start(SAMPLING, sink_addr);
    let passing = CollectorProcess::start(
        "service: {sampling: false, telemetry: {metrics: {address: none}}}\n",
        sink_addr,
    );
    let stored = CollectorProcess::start_stored(SAMPLING, sink_addr, None);
    // A router: sampling off, the loadbalancing exporter (one backend: the sink) instead.
    let routing = CollectorProcess::start_with(
        &format!(
            "service: {{sampling: false, telemetry: {{metrics: {{address: none}}}}}}\n\
             exporters: {{loadbalancing: {{protocol: {{otlp: {{compression: none}}}}, \
             resolver: {{static: {{hostnames: ['{sink_addr}']}}}}}}}}\n"
        ),
        sink_addr,
        &[],
    );
    let bodies = Arc::new(requests(REQUESTS_PER_ITER, 1));
    let spans_per_iter: usize = bodies.iter().map(|(_, n)| n).sum();
    let sender_for = |addr: SocketAddr| {
        let _guard = rt.enter();
        Arc::new(
            TraceSender::new(
                &LoadgenConfig::default()
                    .with_endpoint(addr.to_string())
                    .with_traces(1),
            )
            .unwrap(),
        )
    };
    let to_sampling = sender_for(sampling.grpc);
    let to_passing = sender_for(passing.grpc);
    let to_stored = sender_for(stored.grpc);
    let to_routing = sender_for(routing.grpc);

    let mut group = c.benchmark_group("collector_otlp_grpc_10_span_traces_1pct_errors");
    group.throughput(Throughput::Elements(spans_per_iter as u64));
    group.sample_size(20);
    group.bench_function("tail_sampling", |b| {
        b.to_async(&rt).iter(|| send_all(&to_sampling, &bodies));
    });
    group.bench_function("pass_through", |b| {
        b.to_async(&rt).iter(|| send_all(&to_passing, &bodies));
    });
    group.bench_function("tail_sampling_storage_fsync_interval", |b| {
        b.to_async(&rt).iter(|| send_all(&to_stored, &bodies));
    });
    group.bench_function("router_loadbalancing", |b| {
        b.to_async(&rt).iter(|| send_all(&to_routing, &bodies));
    });
    group.finish();

    // CPU per span, over a fixed load, decisions and exports included.
    let cpu_bodies = Arc::new(requests(CPU_RUN_REQUESTS, 2));
    for (name, process, sender) in [
        ("tail_sampling", &sampling, &to_sampling),
        ("pass_through", &passing, &to_passing),
        ("tail_storage", &stored, &to_stored),
        ("router", &routing, &to_routing),
    ] {
        rt.block_on(wait_quiet(&sink));
        let cpu0 = process.cpu_seconds();
        let t0 = Instant::now();
        let spans = rt.block_on(send_all(sender, &cpu_bodies));
        let wall = t0.elapsed().as_secs_f64();
        rt.block_on(wait_quiet(&sink));
        let cpu = process.cpu_seconds() - cpu0;
        println!(
            "collector cpu: {name:<14} {spans} spans in {wall:.2} s wall ({:.0} spans/s), {cpu:.2} CPU-s in the collector: {:.0} spans per CPU-second",
            spans as f64 / wall,
            spans as f64 / cpu.max(1e-9)
        );
    }
    drop(sampling);
    drop(passing);
    drop(stored);
    drop(routing);

    // Resident memory per buffered span: nothing is decided for 10 minutes.
    let holding = CollectorProcess::start(HOLDING, sink_addr);
    let to_holding = sender_for(holding.grpc);
    let warm = Arc::new(requests(8, 3));
    rt.block_on(send_all(&to_holding, &warm));
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = holding.rss_bytes();
    let mem_bodies = Arc::new(requests(CPU_RUN_REQUESTS, 4));
    let encoded: usize = mem_bodies.iter().map(|(b, _)| b.len()).sum();
    let spans = rt.block_on(send_all(&to_holding, &mem_bodies));
    std::thread::sleep(Duration::from_millis(300));
    let rss = holding.rss_bytes() - rss0;
    let accounted = holding
        .metric(&rt, "traceq_bytes_buffered")
        .map(|v| v as u64);
    println!(
        "collector memory: {spans} buffered spans of {:.0} encoded bytes each: resident +{:.0} bytes per span (accounted {} bytes per span)",
        encoded as f64 / spans as f64,
        rss as f64 / spans as f64,
        accounted.map_or_else(|| "?".to_owned(), |a| format!("{:.0}", a as f64 / spans as f64)),
    );
    drop(holding);

    // Replay of a full log: a collector holding 204,000 spans is killed (SIGKILL); each
    // iteration starts a fresh process on a copy of its log and reads how long the replay
    // took (decoding, checksums and rebuilding every pending trace).
    let logs = tempfile::tempdir().unwrap();
    let logging = CollectorProcess::start_stored(HOLDING, sink_addr, Some(logs.path()));
    let to_logging = sender_for(logging.grpc);
    let logged = rt.block_on(send_all(&to_logging, &mem_bodies));
    drop(logging); // SIGKILL
    let mut group = c.benchmark_group("collector_storage_replay");
    group.throughput(Throughput::Elements(logged as u64));
    group.sample_size(10);
    group.bench_function("replay_204000_pending_spans", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let copy = tempfile::tempdir().unwrap();
                std::fs::create_dir(copy.path().join("wal")).unwrap();
                for entry in std::fs::read_dir(logs.path().join("wal")).unwrap() {
                    let path = entry.unwrap().path();
                    if path.extension().is_some_and(|e| e == "log") {
                        std::fs::copy(
                            &path,
                            copy.path().join("wal").join(path.file_name().unwrap()),
                        )
                        .unwrap();
                    }
                }
                let replaying =
                    CollectorProcess::start_stored(HOLDING, sink_addr, Some(copy.path()));
                let replayed = replaying
                    .metric(&rt, "traceq_storage_replayed_spans_total")
                    .unwrap_or(0.0);
                assert_eq!(replayed as usize, logged, "a partial replay");
                let secs = replaying
                    .metric(&rt, "traceq_storage_replay_seconds")
                    .expect("replay time");
                total += Duration::from_secs_f64(secs);
            }
            total
        });
    });
    group.finish();
}

/// The listener as the stream of connections tonic's server takes.
fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    })
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
