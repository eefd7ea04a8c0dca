//! Soak: the real `traceq collector` under the load generator at three times its capacity for
//! 60 s, beside 500 idle connections and 50 clients trickling request bodies. `/healthz` keeps
//! answering within a second, resident memory stays within the documented bound, every
//! accepted error trace is kept whole, and SIGTERM exits within `shutdown_timeout` + 5 s.

#[path = "common/process.rs"]
#[allow(unreachable_pub)]
mod process;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use process::CollectorProcess;

const MIB: u64 = 1 << 20;
const SPANS_PER_TRACE: usize = 10;
const BUFFER_BYTES: u64 = 64 * MIB;
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `traceq loadgen` against `grpc`; returns its JSON report.
fn loadgen(grpc: SocketAddr, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_traceq"))
        .args(["loadgen", "--json", "--gzip", "--endpoint"])
        .arg(grpc.to_string())
        .args(["--spans-per-trace", &SPANS_PER_TRACE.to_string()])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run traceq loadgen");
    // Under overload some requests fail after their last retry: the run then exits non-zero,
    // with its report still printed.
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON report ({e}): {out:?}"))
}

/// One plain HTTP/1.1 GET; the time it took, or `None` when it failed.
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(Duration, String)> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.starts_with("HTTP/1.1 200")
        .then(|| (started.elapsed(), text))
}

#[test]
fn collector_should_hold_its_bounds_under_overload_idle_and_trickling_clients() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kept.jsonl");
    let yaml = format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'}}, http: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
         processors: {{tail_sampling: {{decision_wait: 1s, max_buffer_bytes: {BUFFER_BYTES}, policies: [{{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}]}}}}\n\
         exporters: {{file: {{path: '{}'}}}}\n\
         service: {{shutdown_timeout: {}s, telemetry: {{metrics: {{address: '127.0.0.1:0'}}}}}}\n",
        out.display(),
        SHUTDOWN_TIMEOUT.as_secs()
    );
    let c = CollectorProcess::start(dir.path(), &yaml, &[]);
    let (grpc, http, admin) = (c.grpc.unwrap(), c.http.unwrap(), c.admin.unwrap());

    // Capacity: as fast as it answers, for a few seconds.
    let calibration = loadgen(grpc, &["--duration", "4s", "--workers", "4"]);
    let capacity = calibration["spans_per_second"]
        .as_f64()
        .unwrap()
        .max(1000.0);

    let stop = Arc::new(AtomicBool::new(false));
    // 500 idle connections, held open (the receivers close idle ones; reopened when they do).
    let idle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                held.retain(|s| {
                    let mut b = [0u8; 1];
                    s.set_nonblocking(true).ok();
                    !matches!((&*s).read(&mut b), Ok(0))
                });
                while held.len() < 500 {
                    match TcpStream::connect(http) {
                        Ok(s) => held.push(s),
                        Err(_) => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            held.len()
        })
    };
    // 50 clients trickling a request body, one byte every 100 ms.
    let tricklers: Vec<_> = (0..50)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(http) else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    let head = "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 100000\r\n\r\n";
                    if s.write_all(head.as_bytes()).is_err() {
                        continue;
                    }
                    while !stop.load(Ordering::Relaxed) && s.write_all(b"\x0a").is_ok() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        })
        .collect();
    // `/healthz` and resident memory, watched throughout.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let watching = watching.clone();
        let pid = c.pid();
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut failures = 0;
            let mut max_rss = 0u64;
            while watching.load(Ordering::Relaxed) {
                match get(admin, "/healthz", Duration::from_secs(5)) {
                    Some((took, _)) => slowest = slowest.max(took),
                    None => failures += 1,
                }
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let rss = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                        .unwrap_or(0);
                    max_rss = max_rss.max(rss * 1024);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            (slowest, failures, max_rss)
        })
    };

    // Three times capacity, for 60 s.
    let rate = (3.0 * capacity) as u64;
    let report = loadgen(
        grpc,
        &[
            "--duration",
            "60s",
            "--workers",
            "12",
            "--rate",
            &rate.to_string(),
        ],
    );
    let metrics = get(admin, "/metrics", Duration::from_secs(5)).map(|(_, t)| t);

    watching.store(false, Ordering::Relaxed);
    let (slowest, failures, max_rss) = watcher.join().unwrap();
    // SIGTERM with the idle and trickling clients still connected.
    let exit = c.stop(SHUTDOWN_TIMEOUT + Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let _ = idle.join();
    for t in tricklers {
        let _ = t.join();
    }
    assert!(exit.status.success(), "{}", exit.stderr);

    eprintln!(
        "capacity {capacity:.0} spans/s; offered {rate} spans/s; sent {} spans, {} error traces; healthz slowest {slowest:?}, {failures} failures; peak RSS {} MiB; exit after SIGTERM in {:?}",
        report["spans_sent"],
        report["error_traces_sent"],
        max_rss / MIB,
        exit.took
    );
    assert_eq!(failures, 0, "/healthz failed to answer");
    assert!(
        slowest < Duration::from_secs(1),
        "/healthz took {slowest:?}"
    );
    // The documented bound for this configuration: twice the buffer, plus what receivers may
    // hold while reading and decoding (see README, "Limits and hardening"), plus the runtime.
    let bound = 2 * BUFFER_BYTES + 256 * MIB;
    assert!(
        max_rss < bound,
        "peak RSS {} MiB over {} MiB",
        max_rss / MIB,
        bound / MIB
    );

    // Every accepted error trace is in the output, whole.
    let mut spans_of: HashMap<Vec<u8>, (usize, bool)> = HashMap::new();
    let text = std::fs::read_to_string(&out).unwrap();
    for line in text.lines() {
        let req: ExportTraceServiceRequest = serde_json::from_str(line).unwrap();
        for span in req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            let entry = spans_of.entry(span.trace_id.clone()).or_default();
            entry.0 += 1;
            entry.1 |= span.status.as_ref().is_some_and(|s| s.code == 2);
        }
    }
    let error_traces: Vec<_> = spans_of.values().filter(|(_, error)| *error).collect();
    let sent = report["error_traces_sent"].as_u64().unwrap() as usize
        + calibration["error_traces_sent"].as_u64().unwrap() as usize;
    assert!(
        error_traces.len() >= sent,
        "{} error traces kept of {sent} accepted; {metrics:?}",
        error_traces.len()
    );
    assert!(
        error_traces.iter().all(|(n, _)| *n >= SPANS_PER_TRACE),
        "an error trace was kept partly"
    );
}
