//! Hostile clients against the real `traceq collector` process: each test attacks one class of
//! bound from outside, over loopback, and checks both the behaviour and what it cost the
//! collector (peak resident memory from `VmHWM`, or CPU time), against a bound stated in the
//! test.
//!
//! One section per class; a new class gets its own section (and helpers shared by several go
//! in the first one).

// The harness's items are `pub` for the files that include it; here they are a private module.
#[allow(unreachable_pub)]
#[path = "common/process.rs"]
mod process;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use process::{metric, CollectorProcess};
use prost::Message as _;

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Shared helpers: configurations, raw HTTP/1 requests, OTLP bodies
// ---------------------------------------------------------------------------------------------

/// A collector configuration on loopback ports chosen by the OS: both receivers (with
/// `http_extra` and `grpc_extra` inside their blocks), the admin endpoint (with
/// `metrics_extra`), the `tail_sampling` block `sampling`, the exporters `exporters`, and
/// `service_extra` under `service`.
struct Yaml<'a> {
    grpc_extra: &'a str,
    http_extra: &'a str,
    metrics_extra: &'a str,
    sampling: &'a str,
    exporters: String,
    service_extra: &'a str,
}

impl Yaml<'_> {
    fn with_file_exporter(dir: &Path) -> Self {
        Self {
            grpc_extra: "",
            http_extra: "",
            metrics_extra: "",
            sampling: "{decision_wait: 1s, policies: [{name: all, type: always_sample}]}",
            exporters: format!("{{file: {{path: '{}'}}}}", dir.join("kept.jsonl").display()),
            service_extra: "",
        }
    }

    fn render(&self) -> String {
        format!(
            "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:0'{}}}, http: {{endpoint: '127.0.0.1:0'{}}}}}}}}}\n\
             processors: {{tail_sampling: {}}}\n\
             exporters: {}\n\
             service: {{telemetry: {{metrics: {{address: '127.0.0.1:0'{}}}}}{}}}\n",
            self.grpc_extra,
            self.http_extra,
            self.sampling,
            self.exporters,
            self.metrics_extra,
            self.service_extra,
        )
    }
}

/// `traces` traces of 3 spans each, trace ids from `first`, protobuf-encoded.
fn otlp_body(first: u32, traces: u32) -> Vec<u8> {
    let mut spans = Vec::new();
    for t in first..first + traces {
        let mut trace_id = vec![0x5a; 16];
        trace_id[12..].copy_from_slice(&t.to_be_bytes());
        for s in 0..3u8 {
            spans.push(Span {
                trace_id: trace_id.clone(),
                span_id: vec![s + 1, 0, 0, 0, 0, 0, 0, 2],
                parent_span_id: if s == 0 {
                    vec![]
                } else {
                    vec![1, 0, 0, 0, 0, 0, 0, 2]
                },
                name: format!("hostile-{s}"),
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_001_000_000,
                ..Default::default()
            });
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the collector");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one HTTP/1 response with a `content-length` body: (status, head, body).
fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).expect("read a response");
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        if body.len() >= length {
            let status = head[9..12].parse().expect("a status code");
            return (status, head.to_owned(), body.to_owned());
        }
    }
}

/// `GET path` with extra header lines, on a keep-alive connection.
fn get_on(stream: &mut TcpStream, path: &str, headers: &str) -> (u16, String, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nhost: test\r\n{headers}\r\n").unwrap();
    read_response(stream)
}

/// `GET path` on a new connection.
fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
    get_on(&mut connect(addr), path, headers)
}

/// `POST /v1/traces` of `body` on a keep-alive connection; the status.
fn post_traces_on(stream: &mut TcpStream, body: &[u8]) -> u16 {
    write!(
        stream,
        "POST /v1/traces HTTP/1.1\r\nhost: test\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    read_response(stream).0
}

/// Reads until the collector closes the connection; how long that took, `None` when it did not
/// within `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut chunk = [0u8; 1024];
    while started.elapsed() < limit {
        match stream.read(&mut chunk) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// The HTTP/2 client preface and an empty SETTINGS frame: an HTTP/2 connection with no stream.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

fn metrics_text(admin: SocketAddr) -> String {
    let (status, _, body) = get(admin, "/metrics", "");
    assert_eq!(status, 200, "{body}");
    body
}

// ---------------------------------------------------------------------------------------------
// (a) Shutdown: idle and half-sent connections do not hold it up
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_should_exit_within_shutdown_timeout_plus_grace_despite_idle_and_half_sent_clients() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown_timeout = Duration::from_secs(2);
    let yaml = Yaml {
        service_extra: ", shutdown_timeout: 2s",
        ..Yaml::with_file_exporter(dir.path())
    };
    let c = CollectorProcess::start(dir.path(), &yaml.render(), &[]);
    let (grpc, http, admin) = (c.grpc.unwrap(), c.http.unwrap(), c.admin.unwrap());

    let mut hostile = Vec::new();
    // Half-sent request heads, on the admin endpoint and on the OTLP/HTTP receiver.
    let mut half_metrics = connect(admin);
    half_metrics
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: t")
        .unwrap();
    hostile.push(half_metrics);
    let mut half_otlp = connect(http);
    half_otlp
        .write_all(b"POST /v1/traces HTTP/1.1\r\nhost: t\r\ncontent-le")
        .unwrap();
    hostile.push(half_otlp);
    // A request whose body never finishes: in flight until the receivers' grace ends.
    let mut half_body = connect(http);
    half_body
        .write_all(b"POST /v1/traces HTTP/1.1\r\nhost: t\r\ncontent-type: application/x-protobuf\r\ncontent-length: 1000\r\n\r\n0123456789")
        .unwrap();
    hostile.push(half_body);
    // A dozen idle connections: keep-alive after a request, silent TCP, HTTP/2 with no stream.
    for i in 0..4u32 {
        let mut keep_alive = connect(http);
        assert_eq!(post_traces_on(&mut keep_alive, &otlp_body(i, 1)), 200);
        hostile.push(keep_alive);
        hostile.push(connect(grpc));
        let mut h2 = connect(grpc);
        h2.write_all(H2_HELLO).unwrap();
        hostile.push(h2);
    }
    std::thread::sleep(Duration::from_millis(300));
    let text = metrics_text(admin);
    // 6 on OTLP/HTTP, 8 on OTLP/gRPC (the half-sent /metrics is on the admin endpoint).
    assert_eq!(
        metric(&text, "traceq_receiver_connections_open"),
        14.0,
        "{text}"
    );
    let peak = c.peak_rss();
    eprintln!("VmHWM before SIGTERM: {} KiB", peak / 1024);

    let limit = shutdown_timeout + Duration::from_secs(5);
    let exit = c.stop(limit + Duration::from_secs(5));
    assert!(exit.status.success(), "{exit:?}");
    assert!(
        exit.took < limit,
        "exit took {:?}, over shutdown_timeout + 5 s:\n{}",
        exit.took,
        exit.stderr
    );
    assert!(exit.stderr.contains("received 12 spans"), "{}", exit.stderr);
    eprintln!("exit {:?} after SIGTERM", exit.took);
    // Bound: a collector holding 15 connections stays under 32 MiB resident (about 10 MiB measured).
    assert!(peak < 32 * MIB, "VmHWM {} MiB", peak / MIB);
    drop(hostile);
}

// ---------------------------------------------------------------------------------------------
// (b) Connection limit: connections over it are refused, admitted clients are served
// ---------------------------------------------------------------------------------------------

#[test]
fn connections_over_the_limit_should_be_refused_while_an_admitted_client_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = Yaml {
        http_extra: ", max_connections: 8, read_header_timeout: 30s",
        ..Yaml::with_file_exporter(dir.path())
    };
    let c = CollectorProcess::start(dir.path(), &yaml.render(), &[]);
    let (http, admin) = (c.http.unwrap(), c.admin.unwrap());
    let cpu_before = c.cpu_time();

    let mut admitted = connect(http);
    assert_eq!(post_traces_on(&mut admitted, &otlp_body(0, 1)), 200);
    let silent: Vec<TcpStream> = (0..7).map(|_| connect(http)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let refused_connections = 200;
    for _ in 0..refused_connections {
        let mut over = connect(http);
        let took = closed_within(&mut over, Duration::from_secs(2));
        assert!(took.is_some(), "a connection over the limit was kept open");
    }
    // The admitted client, on its keep-alive connection, is still served; /healthz answers.
    assert_eq!(post_traces_on(&mut admitted, &otlp_body(1, 1)), 200);
    assert_eq!(get(admin, "/healthz", "").0, 200);
    let text = metrics_text(admin);
    let open = text
        .lines()
        .find(|l| l.starts_with("traceq_receiver_connections_open{") && l.contains("\"http\""))
        .unwrap_or_else(|| panic!("no open gauge for http in\n{text}"));
    assert!(open.ends_with(" 8"), "{open}");
    assert_eq!(
        metric(&text, "traceq_receiver_connections_refused_total"),
        f64::from(refused_connections),
        "{text}"
    );
    let cpu = c.cpu_time() - cpu_before;
    let peak = c.peak_rss();
    eprintln!("CPU {cpu:?}, VmHWM {} KiB", peak / 1024);
    drop(silent);
    let exit = c.stop(Duration::from_secs(20));
    assert!(exit.status.success(), "{exit:?}");
    // Bounds: refusing 200 connections is cheap (under 10 ms CPU, about 10 MiB measured).
    assert!(cpu < Duration::from_secs(1), "CPU time {cpu:?}");
    assert!(peak < 32 * MIB, "VmHWM {} MiB", peak / MIB);
}

// ---------------------------------------------------------------------------------------------
// (c) Slow request heads (slowloris): disconnected after read_header_timeout
// ---------------------------------------------------------------------------------------------

#[test]
fn slowloris_clients_should_be_disconnected_after_read_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_secs(1);
    let yaml = Yaml {
        http_extra: ", read_header_timeout: 1s",
        ..Yaml::with_file_exporter(dir.path())
    };
    let c = CollectorProcess::start(dir.path(), &yaml.render(), &[]);
    let (http, admin) = (c.http.unwrap(), c.admin.unwrap());
    let cpu_before = c.cpu_time();

    let clients = 20;
    // Before connecting: each head's deadline runs from its connection's accept.
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..clients).map(|_| connect(http)).collect();
    for s in &mut slow {
        s.write_all(b"POST /v1/traces HTTP/1.1\r\nhost: t\r\n")
            .unwrap();
    }
    // A header byte per client every 100 ms, until each is cut off or 5 s pass.
    let mut closed_at: Vec<Option<Duration>> = vec![None; clients];
    while started.elapsed() < Duration::from_secs(5) && closed_at.iter().any(Option::is_none) {
        std::thread::sleep(Duration::from_millis(100));
        for (s, closed) in slow.iter_mut().zip(&mut closed_at) {
            if closed.is_none() && s.write_all(b"x").is_err() {
                *closed = Some(started.elapsed());
            }
        }
    }
    // Meanwhile a well-behaved client is served.
    let mut good = connect(http);
    assert_eq!(post_traces_on(&mut good, &otlp_body(0, 1)), 200);
    for at in &closed_at {
        let at = at.expect("a slowloris client was never disconnected");
        // Writes fail one round trip after the close: allow for it and a busy machine.
        assert!(at >= timeout, "disconnected early, after {at:?}");
        assert!(
            at < timeout + Duration::from_secs(2),
            "disconnected after {at:?}"
        );
    }
    let text = metrics_text(admin);
    assert_eq!(
        metric(&text, "traceq_receiver_connections_timed_out_total"),
        clients as f64,
        "{text}"
    );
    let cpu = c.cpu_time() - cpu_before;
    eprintln!("CPU {cpu:?}, disconnected at {closed_at:?}");
    let exit = c.stop(Duration::from_secs(20));
    assert!(exit.status.success(), "{exit:?}");
    // Bound: twenty slowloris clients for a second cost the collector next to no CPU (10 ms
    // measured).
    assert!(cpu < Duration::from_millis(500), "CPU time {cpu:?}");
}

// ---------------------------------------------------------------------------------------------
// (d) A second signal: exit at once, saying what is left undelivered
// ---------------------------------------------------------------------------------------------

#[test]
fn a_second_sigterm_should_exit_at_once_and_say_what_is_left_undelivered() {
    let dir = tempfile::tempdir().unwrap();
    // A downstream that refuses every connection: the exporter retries until the deadline.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let yaml = Yaml {
        sampling: "{decision_wait: 10m, decision_wait_after_root: 10m, policies: [{name: all, type: always_sample}]}",
        exporters: format!(
            "{{otlp/dead: {{endpoint: 'http://{dead}', retry_on_failure: {{initial_interval: 100ms, max_interval: 200ms, max_elapsed_time: 10m}}}}}}"
        ),
        service_extra: ", shutdown_timeout: 60s",
        ..Yaml::with_file_exporter(dir.path())
    };
    let c = CollectorProcess::start(dir.path(), &yaml.render(), &[]);
    let http = c.http.unwrap();
    let mut client = connect(http);
    assert_eq!(post_traces_on(&mut client, &otlp_body(0, 20)), 200);
    drop(client);

    c.signal("TERM");
    let started = Instant::now();
    while !c.stderr().contains("deciding pending traces") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            c.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The pending traces are decided at once; the exporter then retries the dead downstream.
    std::thread::sleep(Duration::from_secs(1));
    let peak = c.peak_rss();
    c.signal("TERM");
    let exit = c.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.status.code(), Some(143), "{exit:?}");
    eprintln!(
        "VmHWM {} KiB, exit {:?} after the second SIGTERM",
        peak / 1024,
        exit.took
    );
    assert!(
        exit.took < Duration::from_secs(1),
        "the second SIGTERM took {:?} to exit",
        exit.took
    );
    let line = exit
        .stderr
        .lines()
        .find(|l| l.contains("second SIGTERM"))
        .unwrap_or_else(|| panic!("no line for the second signal in\n{}", exit.stderr));
    assert!(
        line.contains("0 traces (0 spans) undecided in the buffer, 60 kept spans not exported"),
        "{line}"
    );
    assert!(peak < 32 * MIB, "VmHWM {} MiB", peak / MIB);
}

// ---------------------------------------------------------------------------------------------
// (e) /metrics behind a bearer token
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_should_require_the_bearer_token_and_healthz_should_not() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = Yaml {
        metrics_extra: ", bearer_token: s3cret-Token",
        ..Yaml::with_file_exporter(dir.path())
    };
    let c = CollectorProcess::start(dir.path(), &yaml.render(), &[]);
    let admin = c.admin.unwrap();
    for headers in [
        "",
        "authorization: Bearer wrong\r\n",
        "authorization: Bearer s3cret-Toke\r\n",
        "authorization: s3cret-Token\r\n",
    ] {
        let (status, head, _) = get(admin, "/metrics", headers);
        assert_eq!(status, 401, "{headers:?}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
    }
    let (status, _, body) = get(admin, "/metrics", "authorization: Bearer s3cret-Token\r\n");
    assert_eq!(status, 200);
    assert!(body.contains("traceq_admin_connections_open"), "{body}");
    assert_eq!(get(admin, "/healthz", "").0, 200);
    let peak = c.peak_rss();
    let exit = c.stop(Duration::from_secs(20));
    assert!(exit.status.success(), "{exit:?}");
    assert!(peak < 32 * MIB, "VmHWM {} MiB", peak / MIB);
}
