//! `traceq demo` end to end, shortened: it must finish, print its summary and a waterfall, and
//! write a file in which every trace with an error is present and whole and the long job's
//! segments are linked one to the next.

use std::collections::HashMap;
use std::process::Command;
use traceq::exporter::{read_otlp_json_lines, traces, TraceRecord};

/// The number on the summary row starting with `label`.
fn summary_value(stdout: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` row in:\n{stdout}"));
    line.split_whitespace().last().unwrap().parse().unwrap()
}

fn attr<'a>(trace: &'a TraceRecord, span_prefix: &str, key: &str) -> Option<&'a str> {
    trace
        .spans
        .iter()
        .filter(|s| s.name.starts_with(span_prefix))
        .find_map(|s| s.attribute(key))
}

#[test]
fn demo_should_keep_every_error_trace_whole_and_link_the_long_job() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traces.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_traceq"))
        .args(["demo", "--duration", "2", "--objects", "300", "--seed", "7"])
        .arg("--output")
        .arg(&file)
        .output()
        .expect("running traceq demo");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("a kept error trace"), "{stdout}");
    assert!(
        stdout.contains("  ERROR"),
        "the waterfall marks errors:\n{stdout}"
    );
    let failed_items = summary_value(&stdout, "items that failed at least once");
    assert!(failed_items > 0, "{stdout}");

    let read =
        read_otlp_json_lines(std::io::BufReader::new(std::fs::File::open(&file).unwrap())).unwrap();
    assert!(read.errors.is_empty(), "{:?}", read.errors);
    let kept = traces(read.spans);

    // Every item life with a failure has a trace with an error span (a split life may have more).
    let error_traces: Vec<&TraceRecord> = kept.iter().filter(|t| t.has_error()).collect();
    assert!(
        error_traces.len() as u64 >= failed_items,
        "{} error traces in the file for {failed_items} failed items",
        error_traces.len()
    );
    for t in &error_traces {
        let roots: Vec<_> = t.roots().collect();
        assert_eq!(roots.len(), 1, "trace {} has no single root", t.trace_id);
        assert!(roots[0].name.starts_with("item "), "{:?}", roots[0].name);
        assert!(roots[0].parent_span_id.is_none(), "root's parent missing");
        // A life in one segment: its attempt spans are all there.
        let unsplit = t.spans.iter().all(|s| s.links.is_empty());
        if let (true, Some(total)) = (unsplit, attr(t, "item ", "traceq.attempts_total")) {
            let attempts = t
                .spans
                .iter()
                .filter(|s| s.name.starts_with("process "))
                .count();
            assert_eq!(attempts.to_string(), total, "trace {}", t.trace_id);
        }
    }

    // The long job: two or more segments, each linked to the one before it.
    let mut segments: Vec<(i64, &TraceRecord)> = kept
        .iter()
        .filter(|t| attr(t, "item ", "traceq.job.id") == Some("reindex-all"))
        .map(|t| {
            (
                attr(t, "item ", "traceq.segment").unwrap().parse().unwrap(),
                t,
            )
        })
        .collect();
    segments.sort_by_key(|(n, _)| *n);
    assert!(segments.len() >= 2, "long job not split: {segments:?}");
    let numbers: Vec<i64> = segments.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=segments.len() as i64).collect::<Vec<_>>());
    let by_id: HashMap<&str, &TraceRecord> = segments
        .iter()
        .map(|(_, t)| (t.trace_id.as_str(), *t))
        .collect();
    for pair in segments.windows(2) {
        let (prev, next) = (pair[0].1, pair[1].1);
        let root = next.roots().next().unwrap();
        let link = root
            .links
            .iter()
            .find(|l| l.kind.as_deref() == Some("previous_segment"))
            .expect("a later segment links to the one before");
        assert_eq!(link.trace_id, prev.trace_id);
        assert!(by_id.contains_key(link.trace_id.as_str()));
        assert!(prev.spans.iter().any(|s| s.span_id == link.span_id));
    }

    // And `traceq show` renders the file.
    let show = Command::new(env!("CARGO_BIN_EXE_traceq"))
        .arg("show")
        .arg(&file)
        .arg("--errors")
        .output()
        .unwrap();
    assert!(show.status.success());
    let text = String::from_utf8(show.stdout).unwrap();
    assert_eq!(
        text.matches("\ntrace ").count() + 1,
        error_traces.len(),
        "one waterfall per error trace"
    );
}
