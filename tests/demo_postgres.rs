//! `traceq demo --postgres` end to end (`DATABASE_URL`): two demo processes on one database
//! share the work and export to one real `traceq collector`, which tail-samples. Both must
//! finish with their summaries, both must have run keys, together every object, the queue must
//! be left empty, and every trace the collector kept must be whole: one root, every other span
//! under a span of its trace.

#[path = "common/process.rs"]
mod process;

use process::CollectorProcess;
use std::collections::{HashMap, HashSet};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use traceq::exporter::{read_otlp_json_lines, traces};
use traceq_engine::postgres::testing::TestSchema;
use traceq_engine::postgres::PgQueue;

const OBJECTS: u64 = 300;

fn summary_value(stdout: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` row in:\n{stdout}"));
    line.split_whitespace().last().unwrap().parse().unwrap()
}

fn demo(db: &TestSchema, endpoint: &str, seed: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_traceq"))
        .args(["demo", "--duration", "2", "--workers", "4", "--seed", seed])
        .args(["--objects", &OBJECTS.to_string()])
        .args(["--postgres", db.url(), "--schema", db.schema()])
        .args(["--otlp-endpoint", endpoint])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running traceq demo")
}

fn finished(child: std::process::Child) -> (String, Output) {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, out)
}

#[test]
fn demo_postgres_should_share_the_work_and_keep_whole_traces() {
    let Some(db) = TestSchema::new("demo_postgres_should_share_the_work") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kept.jsonl");
    let yaml = process::errors_to_file_config(&file);
    let collector = CollectorProcess::start(dir.path(), &yaml, &[]);
    let endpoint = format!("http://{}", collector.http.expect("the http receiver"));
    // Different seeds: the two add their watch events in different orders, as two replicas of
    // a controller would.
    let (one, two) = (demo(&db, &endpoint, "1"), demo(&db, &endpoint, "2"));
    let (out_one, _) = finished(one);
    let (out_two, _) = finished(two);
    let claimed: Vec<u64> = [&out_one, &out_two]
        .iter()
        .map(|out| summary_value(out, "keys claimed by this process"))
        .collect();
    assert!(
        claimed.iter().all(|&n| n > 0),
        "both processes ran keys: {claimed:?}\n{out_one}\n{out_two}"
    );
    assert!(
        claimed.iter().sum::<u64>() > OBJECTS,
        "every object (and the long job) ran: {claimed:?}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats = runtime.block_on(async {
        let q = PgQueue::connect(db.config("demo-controller"))
            .await
            .unwrap();
        let stats = q.stats().await.unwrap();
        q.shutdown().await.unwrap();
        stats
    });
    assert_eq!(
        (stats.ready, stats.waiting, stats.processing),
        (0, 0, 0),
        "nothing left: {stats:?}"
    );
    // The collector decides each trace after its root's quiet period: wait for it to settle.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = 0;
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let len = std::fs::metadata(&file).map_or(0, |m| m.len());
        if len > 0 && len == last {
            break;
        }
        last = len;
        assert!(Instant::now() < deadline, "the collector kept nothing");
    }
    let read =
        read_otlp_json_lines(std::io::BufReader::new(std::fs::File::open(&file).unwrap())).unwrap();
    assert!(read.errors.is_empty(), "{:?}", read.errors);
    let kept = traces(read.spans);
    assert!(!kept.is_empty());
    let job_of = |t: &traceq::exporter::TraceRecord| {
        t.spans
            .iter()
            .find_map(|s| s.attribute("traceq.job.id").map(str::to_owned))
    };
    // A kept trace has an error, or is a segment of a job with a kept error trace (the
    // collector keeps a job's segments together).
    let error_jobs: HashSet<String> = kept
        .iter()
        .filter(|t| t.has_error())
        .filter_map(job_of)
        .collect();
    let mut by_kind: HashMap<&str, usize> = HashMap::new();
    for t in &kept {
        assert!(
            t.has_error() || job_of(t).is_some_and(|j| error_jobs.contains(&j)),
            "only error traces (and their jobs' segments) are kept: {t:#?}"
        );
        let roots: Vec<_> = t.roots().collect();
        assert_eq!(roots.len(), 1, "one root per kept trace: {t:?}");
        assert!(roots[0].name.starts_with("item "), "{:?}", roots[0].name);
        let ids: HashSet<&str> = t.spans.iter().map(|s| s.span_id.as_str()).collect();
        for s in &t.spans {
            if let Some(parent) = &s.parent_span_id {
                assert!(
                    ids.contains(parent.as_str()),
                    "{} is under a span of its trace",
                    s.name
                );
            }
            *by_kind
                .entry(s.name.split(' ').next().unwrap())
                .or_default() += 1;
        }
    }
    assert!(by_kind.get("process").copied().unwrap_or(0) >= kept.len());
    let _ = collector.stop(Duration::from_secs(10));
}
