//! Crash tests of `traceq collector --storage` as a real process: killed with SIGKILL at random
//! moments (before and after decisions, while its downstream is down) and restarted on the
//! same directory, it delivers every error trace whose request it acknowledged, whole;
//! duplicates only as counted. Also: a torn last segment, and a tiny `max_storage_bytes`.

#[path = "common/process.rs"]
mod process;

use std::collections::{HashMap, HashSet};
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use process::{metric, CollectorProcess};
use rand::{Rng, SeedableRng};
use traceq::exporter::loadgen::{LoadgenConfig, TraceGenerator};

const LIMIT: Duration = Duration::from_secs(30);

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A pass-through collector on `addr` writing what it receives to `file`.
fn downstream(dir: &Path, addr: SocketAddr, file: &Path) -> CollectorProcess {
    let yaml = format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '{addr}'}}}}}}}}\n\
         exporters: {{file: {{path: '{}', fsync_interval: 10ms}}}}\n\
         processors: {{batch: {{timeout: 10ms}}}}\n\
         service: {{sampling: false, telemetry: {{metrics: {{address: none}}}}}}\n",
        file.display()
    );
    let sub = dir.join("downstream");
    std::fs::create_dir_all(&sub).unwrap();
    CollectorProcess::start(&sub, &yaml, &[])
}

/// The collector under test: tail sampling (errors only) on `addr`, exporting to `next`, with
/// its log in `storage`.
fn sampler_yaml(addr: SocketAddr, next: SocketAddr, extra: &str) -> String {
    format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '{addr}'}}}}}}}}\n\
         processors:\n  batch: {{send_batch_size: 500, timeout: 50ms}}\n  tail_sampling:\n    \
         decision_wait: 4s\n    decision_wait_after_root: 500ms\n    policies: [{{name: errors, \
         type: status_code, status_code: {{status_codes: [ERROR]}}}}]\n\
         exporters: {{otlp/down: {{endpoint: '{next}', compression: none, timeout: 1s, \
         retry_on_failure: {{initial_interval: 50ms, max_interval: 200ms, max_elapsed_time: 0s}}}}}}\n\
         service: {{shutdown_timeout: 15s, telemetry: {{metrics: {{address: '127.0.0.1:0'}}}}}}\n\
         {extra}"
    )
}

/// Span ids per trace id in a file exporter's output, with how often each span came.
fn output(file: &Path) -> HashMap<Vec<u8>, HashMap<Vec<u8>, usize>> {
    let mut traces: HashMap<Vec<u8>, HashMap<Vec<u8>, usize>> = HashMap::new();
    let Ok(f) = std::fs::File::open(file) else {
        return traces;
    };
    for line in std::io::BufReader::new(f).lines() {
        let line = line.unwrap();
        let req: ExportTraceServiceRequest = serde_json::from_str(&line).unwrap();
        for s in req
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
        {
            *traces
                .entry(s.trace_id)
                .or_default()
                .entry(s.span_id)
                .or_default() += 1;
        }
    }
    traces
}

/// What the sender had acknowledged: span ids of each error trace in acknowledged requests.
#[derive(Default)]
struct Acked {
    errors: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    requests: u64,
    failed: u64,
}

/// Sends generated traces (5 spans, 1% errors, 100 per request) to `addr` every 50 ms until
/// `stop`; requests that fail (the collector is down) are not retried: only acknowledged ones
/// count.
async fn send(
    addr: SocketAddr,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let config = LoadgenConfig::default()
        .with_seed(7)
        .with_spans_per_trace(5)
        .with_error_ratio(0.01);
    let mut generator = TraceGenerator::new(&config, 0);
    let mut next = 0u64;
    let mut client = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let generated = generator.generate_request(next, 100);
        next += 100;
        let mut errors: HashMap<Vec<u8>, HashSet<Vec<u8>>> = HashMap::new();
        let spans = generated
            .request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans);
        let error_traces: HashSet<&Vec<u8>> = spans
            .clone()
            .filter(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.code == StatusCode::Error as i32)
            })
            .map(|s| &s.trace_id)
            .collect();
        for s in spans.filter(|s| error_traces.contains(&s.trace_id)) {
            errors
                .entry(s.trace_id.clone())
                .or_default()
                .insert(s.span_id.clone());
        }
        if client.is_none() {
            client = tokio::time::timeout(
                Duration::from_secs(1),
                TraceServiceClient::connect(format!("http://{addr}")),
            )
            .await
            .ok()
            .and_then(Result::ok);
        }
        let ok = match client.as_mut() {
            Some(c) => matches!(
                tokio::time::timeout(Duration::from_secs(2), c.export(generated.request)).await,
                Ok(Ok(_))
            ),
            None => false,
        };
        {
            let mut a = acked.lock().unwrap();
            if ok {
                a.requests += 1;
                a.errors.extend(errors);
            } else {
                a.failed += 1;
            }
        }
        if !ok {
            client = None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Spans replayed, as the collector reported at start (0 when nothing was replayed).
fn replayed_spans(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| {
            l.split_once("requests (")?
                .1
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn start_sampler(dir: &Path, config: &Path, storage: &Path) -> CollectorProcess {
    let storage = storage.to_str().unwrap().to_owned();
    let _ = dir;
    CollectorProcess::start_with(&config.to_path_buf(), &["--storage", &storage])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_error_traces_should_survive_five_kills_whole() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("wal");
    let out = dir.path().join("out.jsonl");
    let (addr, next) = (free_port(), free_port());
    let config: PathBuf = dir.path().join("sampler.yaml");
    std::fs::write(&config, sampler_yaml(addr, next, "")).unwrap();
    let seed: u64 = rand::rng().random();
    println!("kill schedule seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut jitter = |ms: u64| Duration::from_millis(rng.random_range(0..ms));

    let mut down = Some(downstream(dir.path(), next, &out));
    let mut sampler = start_sampler(dir.path(), &config, &storage);
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = tokio::spawn(send(addr, acked.clone(), stop.clone()));
    let mut replayed = 0;
    let mut kill = |sampler: CollectorProcess| {
        let stderr = sampler.stderr();
        replayed += replayed_spans(&stderr);
        sampler.signal("KILL");
        sampler.wait_exit(LIMIT);
    };
    let pause = |d: Duration| tokio::time::sleep(d);

    // 1: before any decision (the quiet period after a root is 500 ms).
    pause(Duration::from_millis(200) + jitter(300)).await;
    kill(sampler);
    sampler = start_sampler(dir.path(), &config, &storage);
    // 2: after decisions and exports.
    pause(Duration::from_millis(2000) + jitter(1500)).await;
    kill(sampler);
    sampler = start_sampler(dir.path(), &config, &storage);
    // 3 and 4: while the downstream is down, kept spans waiting in the exporter's retries.
    pause(Duration::from_millis(500) + jitter(500)).await;
    down.take().unwrap().stop(LIMIT);
    pause(Duration::from_millis(1500) + jitter(1000)).await;
    kill(sampler);
    sampler = start_sampler(dir.path(), &config, &storage);
    pause(Duration::from_millis(1000) + jitter(1500)).await;
    kill(sampler);
    sampler = start_sampler(dir.path(), &config, &storage);
    pause(Duration::from_millis(500) + jitter(500)).await;
    down = Some(downstream(dir.path(), next, &out));
    // 5: anywhere, once the downstream is back.
    pause(Duration::from_millis(300) + jitter(2500)).await;
    kill(sampler);
    sampler = start_sampler(dir.path(), &config, &storage);
    pause(Duration::from_millis(1500)).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.await.unwrap();
    replayed += replayed_spans(&sampler.stderr());
    let admin = sampler.admin.expect("metrics on");
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&text, "traceq_storage_write_errors_total"), 0.0);
    let exit = sampler.stop(LIMIT);
    assert!(exit.status.success(), "{}", exit.stderr);
    down.take().unwrap().stop(LIMIT);

    let acked = acked.lock().unwrap();
    let output = output(&out);
    assert!(
        acked.requests > 50,
        "only {} requests acknowledged",
        acked.requests
    );
    assert!(acked.failed > 0, "no request failed: the kills missed");
    assert!(
        acked.errors.len() > 20,
        "only {} error traces",
        acked.errors.len()
    );
    let mut missing = Vec::new();
    for (trace, spans) in &acked.errors {
        let got = output.get(trace);
        let whole = got.is_some_and(|g| spans.iter().all(|s| g.contains_key(s)));
        if !whole {
            missing.push((trace.clone(), got.map_or(0, HashMap::len), spans.len()));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged error traces missing or partial (trace, got, sent): {:?}",
        missing.len(),
        acked.errors.len(),
        &missing[..missing.len().min(5)]
    );
    let duplicates: u64 = output
        .values()
        .flat_map(HashMap::values)
        .map(|&n| n as u64 - 1)
        .sum();
    println!(
        "{} requests acknowledged, {} failed, {} error traces; {duplicates} duplicate spans, \
         {replayed} spans replayed",
        acked.requests,
        acked.failed,
        acked.errors.len()
    );
    assert!(
        duplicates <= replayed,
        "{duplicates} duplicate spans but only {replayed} replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_segment_should_be_skipped_counted_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("wal");
    let out = dir.path().join("out.jsonl");
    let (addr, next) = (free_port(), free_port());
    let config: PathBuf = dir.path().join("sampler.yaml");
    // Decisions wait long: everything is still pending when the process is killed.
    let yaml = sampler_yaml(addr, next, "")
        .replace(
            "decision_wait_after_root: 500ms",
            "decision_wait_after_root: 30s",
        )
        .replace("decision_wait: 4s", "decision_wait: 60s");
    std::fs::write(&config, yaml).unwrap();
    let sampler = start_sampler(dir.path(), &config, &storage);
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = tokio::spawn(send(addr, acked.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.await.unwrap();
    sampler.signal("KILL");
    sampler.wait_exit(LIMIT);
    // Cut the newest segment in the middle of its last record.
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&storage)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    let last = segments.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    assert!(len > 1000, "{len}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 100)
        .unwrap();

    let down = downstream(dir.path(), next, &out);
    let sampler = start_sampler(dir.path(), &config, &storage);
    let stderr = sampler.stderr();
    assert!(stderr.contains("damaged"), "{stderr}");
    let admin = sampler.admin.unwrap();
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&text, "traceq_storage_corrupt_records_total"),
        1.0,
        "{text}"
    );
    let pending = metric(&text, "traceq_storage_replayed_traces_total");
    assert!(pending > 100.0, "{pending} traces rebuilt");
    // SIGTERM decides what was rebuilt: every error trace but the torn request's is delivered.
    let exit = sampler.stop(LIMIT);
    assert!(exit.status.success(), "{}", exit.stderr);
    down.stop(LIMIT);
    let acked = acked.lock().unwrap();
    let output = output(&out);
    let delivered = acked
        .errors
        .iter()
        .filter(|(t, spans)| {
            output
                .get(*t)
                .is_some_and(|g| spans.iter().all(|s| g.contains_key(s)))
        })
        .count();
    // One request of 100 traces (one error trace) was torn off, at most.
    assert!(
        delivered + 1 >= acked.errors.len(),
        "{delivered} of {} error traces delivered",
        acked.errors.len()
    );
    assert!(delivered > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_storage_bound_should_refuse_then_take_requests_once_exports_drain() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("wal");
    let out = dir.path().join("out.jsonl");
    let (addr, next) = (free_port(), free_port());
    let config: PathBuf = dir.path().join("sampler.yaml");
    let extra = format!(
        "extensions: {{file_storage: {{directory: '{}', max_storage_bytes: 1048576}}}}\n",
        storage.display()
    );
    // No sampling: every span is kept and owed to the downstream, which is down at first.
    let yaml = sampler_yaml(addr, next, &extra)
        .replace("service: {", "service: {sampling: false, ")
        .replace(
            "timeout: 1s, ",
            "timeout: 1s, sending_queue: {storage: file_storage}, ",
        );
    std::fs::write(&config, yaml).unwrap();
    let sampler = start_sampler(dir.path(), &config, &storage);
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = tokio::spawn(send(addr, acked.clone(), stop.clone()));
    let admin = sampler.admin.unwrap();
    let scrape = || process::scrape(admin);
    let started = Instant::now();
    loop {
        let text = scrape().await;
        if metric(&text, "traceq_storage_refused_requests_total") > 0.0 {
            assert!(metric(&text, "traceq_storage_bytes") <= 1048576.0, "{text}");
            break;
        }
        assert!(started.elapsed() < LIMIT, "never refused: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused_before = acked.lock().unwrap().failed;
    assert!(refused_before > 0);
    let down = downstream(dir.path(), next, &out);
    // Once the downstream takes the backlog, segments go and requests are taken again.
    let (requests_then, started) = (acked.lock().unwrap().requests, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = acked.lock().unwrap().requests;
        if now >= requests_then + 10 {
            break;
        }
        assert!(started.elapsed() < LIMIT, "requests still refused");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.await.unwrap();
    let exit = sampler.stop(LIMIT);
    assert!(exit.status.success(), "{}", exit.stderr);
    down.stop(LIMIT);
    let output = output(&out);
    let acked = acked.lock().unwrap();
    for (trace, spans) in &acked.errors {
        let got = output.get(trace).map_or(0, HashMap::len);
        assert_eq!(got, spans.len(), "error trace {trace:?}");
    }
}
