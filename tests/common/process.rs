//! The real `traceq collector` as a child process, for hostile-input, fault and soak tests: start
//! it on a configuration, read the addresses it bound, measure its peak resident memory and CPU
//! time from `/proc`, signal it and wait for it to exit within a bound.
//!
//! Included by tests with `#[path = "common/process.rs"] mod process;`.

#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `traceq collector` child; killed when dropped.
pub(crate) struct CollectorProcess {
    child: Option<Child>,
    /// The OTLP/gRPC address it bound, if the receiver is on.
    pub(crate) grpc: Option<SocketAddr>,
    /// The OTLP/HTTP address it bound, if the receiver is on.
    pub(crate) http: Option<SocketAddr>,
    /// The admin (`/metrics`, `/healthz`) address, if on.
    pub(crate) admin: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How a collector ended.
#[derive(Debug)]
pub(crate) struct Exit {
    /// Its exit status.
    pub(crate) status: ExitStatus,
    /// Everything it wrote to stderr.
    pub(crate) stderr: String,
    /// From the call that waited to the exit.
    pub(crate) took: Duration,
}

/// A collector configuration that receives OTLP/HTTP on a free loopback port, keeps the traces
/// with an error (decided 500 ms after their root ends) and writes them to the JSON-lines file
/// `file`, flushed every 10 ms.
pub(crate) fn errors_to_file_config(file: &Path) -> String {
    format!(
        "receivers: {{otlp: {{protocols: {{http: {{endpoint: '127.0.0.1:0'}}}}}}}}\n\
         processors:\n  tail_sampling:\n    decision_wait: 30s\n    \
         decision_wait_after_root: 500ms\n    policies: [{{name: errors, type: status_code, \
         status_code: {{status_codes: [ERROR]}}}}]\n\
         exporters: {{file: {{path: '{}', fsync_interval: 10ms}}}}\n\
         service: {{telemetry: {{metrics: {{address: none}}}}}}\n",
        file.display()
    )
}

fn addr_of(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|a| a.parse().ok())
}

impl CollectorProcess {
    /// Writes `yaml` to `dir/collector.yaml` and starts `traceq collector --config` on it, with
    /// `extra` arguments; returns once the collector says where it listens.
    ///
    /// # Panics
    ///
    /// When it cannot start or exits before listening (with its stderr in the message).
    pub(crate) fn start(dir: &Path, yaml: &str, extra: &[&str]) -> Self {
        let config = dir.join("collector.yaml");
        std::fs::write(&config, yaml).expect("write the configuration");
        Self::start_with(&config, extra)
    }

    /// Starts `traceq collector --config <config> <extra...>`.
    pub(crate) fn start_with(config: &PathBuf, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_traceq"))
            .args(["collector", "--progress=false", "--config"])
            .arg(config)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn traceq collector");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut first = String::new();
        loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                let mut rest = String::new();
                let _ = stderr.read_to_string(&mut rest);
                let _ = child.kill();
                panic!("the collector exited before listening: {first}{rest}");
            }
            first.push_str(&line);
            if line.contains("listening") {
                break;
            }
        }
        let text = Arc::new(Mutex::new(first.clone()));
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = String::new();
            while stderr.read_line(&mut buf).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&buf);
                buf.clear();
            }
        });
        Self {
            child: Some(child),
            grpc: addr_of(&first, "grpc="),
            http: addr_of(&first, "http="),
            admin: addr_of(&first, "metrics="),
            stderr: text,
            reader: Some(reader),
        }
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn proc_status(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Peak resident memory so far (`VmHWM`), in bytes.
    pub(crate) fn peak_rss(&self) -> u64 {
        self.proc_status("VmHWM:")
            .expect("VmHWM of a running collector")
    }

    /// Resident memory now (`VmRSS`), in bytes.
    pub(crate) fn rss(&self) -> u64 {
        self.proc_status("VmRSS:")
            .expect("VmRSS of a running collector")
    }

    /// User plus system CPU time used so far.
    pub(crate) fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("/proc stat of a running collector");
        // The command name (field 2) may hold spaces; fields after its closing parenthesis.
        let after = &stat[stat.rfind(')').expect("comm field") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15, so 11 and 12 after the state (field 3).
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
    }

    /// What the collector wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends a signal (`TERM`, `INT`, `HUP`, `KILL`).
    pub(crate) fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits at most `limit` for the collector to exit; kills it and panics past that.
    pub(crate) fn wait_exit(mut self, limit: Duration) -> Exit {
        let started = Instant::now();
        let mut child = self.child.take().expect("running");
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the collector") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the collector did not exit within {limit:?}:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = started.elapsed();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Exit {
            status,
            stderr: self.stderr(),
            took,
        }
    }

    /// `SIGTERM`, then [`wait_exit`](Self::wait_exit).
    pub(crate) fn stop(self, limit: Duration) -> Exit {
        self.signal("TERM");
        self.wait_exit(limit)
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// A metric's value in Prometheus text, summed over its label sets (0 when absent).
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `/metrics` text of the collector whose admin endpoint is `admin`.
pub(crate) async fn scrape(admin: SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .expect("read /metrics")
}
