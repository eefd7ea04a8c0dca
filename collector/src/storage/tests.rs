//! Tests of the log on a real directory: append, settle, prune, bound, replay, damage.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TraceId;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::trace::v1::{
    status::StatusCode, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use traceq_exporter::otlp::{decode_request, encode_request, OtlpSpan, Retained};
use traceq_sampler::{KeptDecision, SamplerConfig, TailSampler};

use super::*;

/// A request of `n` root spans, span `i` in trace `[first + i; 16]`, with names of `len` bytes.
fn spans(first: u8, n: u8, len: usize) -> Vec<OtlpSpan> {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "test".into(),
                    ..Default::default()
                }),
                spans: (0..n)
                    .map(|i| Span {
                        trace_id: vec![first + i; 16],
                        span_id: vec![i + 1; 8],
                        name: "n".repeat(len),
                        status: (first + i == 1).then(|| Status {
                            code: StatusCode::Error as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                schema_url: String::new(),
            }],
            ..Default::default()
        }],
    };
    decode_request(&request.encode_to_vec()).unwrap()
}

fn config(dir: &std::path::Path) -> StorageConfig {
    let mut c = StorageConfig::new(dir);
    c.fsync = FsyncMode::Never;
    c
}

/// Appends `spans` and keeps them retaining their record, as the pipeline does; waits for
/// the write when the writer runs (`started`).
fn append_to(log: &Log, spans: &[OtlpSpan], started: bool) -> Result<(), AppendError> {
    let appended = log.append_request(spans, unix_nanos())?;
    let token: Retained = appended.token;
    retain_all(spans, &token);
    if started {
        assert_eq!(futures::executor::block_on(appended.written), Ok(true));
    }
    Ok(())
}

fn append(log: &Log, spans: &[OtlpSpan]) -> Result<(), AppendError> {
    append_to(log, spans, false)
}

fn append_written(log: &Log, spans: &[OtlpSpan]) -> Result<(), AppendError> {
    append_to(log, spans, true)
}

fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .is_some_and(|n| record::segment_id(n).is_some())
        })
        .count()
}

#[test]
fn unsettled_requests_should_be_replayed_and_settled_ones_not() {
    let dir = tempfile::tempdir().unwrap();
    let held = spans(1, 3, 10);
    {
        let (log, found) = Log::open(&config(dir.path())).unwrap();
        assert!(found.is_empty());
        log.start().unwrap();
        append(&log, &held).unwrap();
        let settled = spans(10, 2, 10);
        append(&log, &settled).unwrap();
        drop(settled); // every span decided and gone: settled
        log.close();
    }
    drop(held); // after the close: too late to settle, as after a crash
    let (log, found) = Log::open(&config(dir.path())).unwrap();
    assert_eq!(found.len(), 1);
    let mut out = Vec::new();
    let report = replay(&log, &found, None, &mut |kept| out.append(kept));
    assert_eq!((report.requests, report.spans, report.corrupt), (1, 3, 0));
    let ids: Vec<u8> = out.iter().map(|s| s.trace_id_bytes()[0]).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    // New requests continue the sequence after the replayed ones.
    assert!(log.next_seq() >= 2);
}

#[test]
fn replay_should_follow_logged_decisions_and_rebuild_undecided_traces() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = Log::open(&config(dir.path())).unwrap();
        let all = spans(1, 3, 10);
        append(&log, &all).unwrap();
        let kept = Arc::new(KeptDecision::new(Arc::from("errors"), 1.0));
        log.append_decisions(&[
            (TraceId::from_bytes([1; 16]), Some(kept)),
            (TraceId::from_bytes([2; 16]), None),
        ]);
        log.close();
        std::mem::forget(all); // the process died holding them
    }
    let (log, found) = Log::open(&config(dir.path())).unwrap();
    let sampler = TailSampler::new(SamplerConfig::default()).unwrap();
    let mut out = Vec::new();
    let report = replay(&log, &found, Some(&sampler), &mut |kept| out.append(kept));
    assert_eq!(report.requeued, 1, "{report:?}");
    assert_eq!(report.traces, 1);
    assert_eq!(report.decisions, 2);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].trace_id_bytes(), [1; 16]);
    // Annotated as kept by the logged policy.
    let sent = ExportTraceServiceRequest::decode(&encode_request(&out)[..]).unwrap();
    let attributes = &sent.resource_spans[0].scope_spans[0].spans[0].attributes;
    assert!(
        attributes
            .iter()
            .any(|kv| kv.key == traceq_sampler::POLICY_ATTRIBUTE),
        "{attributes:?}"
    );
    // Trace 3 waits in the buffer; late spans of 1 and 2 follow their restored decisions.
    assert_eq!(sampler.metrics().sampling_traces_on_memory, 1);
    let mut late = Vec::new();
    sampler.ingest_batch(spans(1, 2, 5), &mut late);
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].trace_id_bytes(), [1; 16]);
}

#[test]
fn segments_should_be_deleted_oldest_first_once_settled() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.segment_bytes = 1; // a segment per record (at least the 64 KiB floor: large records)
    let (log, _) = Log::open(&c).unwrap();
    log.start().unwrap();
    let big = |first| spans(first, 1, 70_000);
    let (a, b, c2) = (big(1), big(2), big(3));
    append_written(&log, &a).unwrap();
    append_written(&log, &b).unwrap();
    append_written(&log, &c2).unwrap();
    let settle_and_wait = || std::thread::sleep(Duration::from_millis(200));
    assert_eq!(segment_files(dir.path()), 4);
    // The second settles first: kept, the first still holds it.
    drop(b);
    settle_and_wait();
    assert_eq!(segment_files(dir.path()), 4);
    drop(a);
    settle_and_wait();
    assert_eq!(segment_files(dir.path()), 2);
    drop(c2);
    settle_and_wait();
    assert_eq!(segment_files(dir.path()), 1, "the active segment stays");
    let stored = log.metrics().bytes.load(Relaxed);
    assert!(stored < 1000, "{stored} bytes left");
}

#[test]
fn a_full_log_should_refuse_requests_until_settled_segments_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_storage_bytes = 1 << 20;
    let (log, _) = Log::open(&c).unwrap();
    log.start().unwrap();
    let mut held = Vec::new();
    let refused = loop {
        let s = spans(1, 10, 10_000);
        match append_written(&log, &s) {
            Ok(()) => held.push(s),
            Err(e) => break e,
        }
        assert!(held.len() < 200, "never refused");
    };
    assert_eq!(refused, AppendError::Full);
    assert!(log.metrics().bytes.load(Relaxed) <= 1 << 20);
    assert_eq!(log.metrics().refused_requests.load(Relaxed), 1);
    held.clear();
    let mut taken = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        if append_written(&log, &spans(1, 10, 10_000)).is_ok() {
            taken = true;
            break;
        }
    }
    assert!(taken, "still refused after the held spans settled");
}

#[test]
fn a_torn_tail_should_be_skipped_and_counted_and_what_precedes_replayed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = Log::open(&config(dir.path())).unwrap();
        for first in [1, 5] {
            let s = spans(first, 2, 100);
            append(&log, &s).unwrap();
            std::mem::forget(s);
        }
        log.close();
    }
    let path = dir.path().join(record::segment_name(0));
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 30)
        .unwrap();
    let (log, found) = Log::open(&config(dir.path())).unwrap();
    let mut out = Vec::new();
    let report = replay(&log, &found, None, &mut |kept| out.append(kept));
    assert_eq!((report.requests, report.corrupt), (1, 1), "{report:?}");
    assert!(report.skipped_bytes > 0);
    assert_eq!(out.len(), 2);
    assert_eq!(log.metrics().corrupt_records.load(Relaxed), 1);
}

#[test]
fn a_second_collector_should_not_open_a_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, _) = Log::open(&config(dir.path())).unwrap();
    let err = Log::open(&config(dir.path())).unwrap_err();
    assert!(matches!(err, StorageError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fsync_always_a_request_should_wait_for_its_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.fsync = FsyncMode::Always;
    let (log, _) = Log::open(&c).unwrap();
    log.start().unwrap();
    let s = spans(1, 3, 10);
    let appended = log.append_request(&s, unix_nanos()).unwrap();
    assert_eq!(appended.written.await, Ok(true));
    tokio::time::timeout(Duration::from_secs(5), log.synced(appended.end))
        .await
        .expect("synced");
    assert!(log.synced_to() >= appended.end);
    assert!(log.metrics().fsyncs.load(Relaxed) >= 1);
}

#[test]
fn unsettled_counts_should_be_restored_so_replayed_segments_are_pruned_when_settled() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = Log::open(&config(dir.path())).unwrap();
        let s = spans(1, 1, 10);
        append(&log, &s).unwrap();
        log.close();
        std::mem::forget(s);
    }
    let (log, found) = Log::open(&config(dir.path())).unwrap();
    let mut out = Vec::new();
    replay(&log, &found, None, &mut |kept| out.append(kept));
    log.start().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(segment_files(dir.path()), 2, "the replayed segment is held");
    out.clear();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(segment_files(dir.path()), 1);
    let unsettled: BTreeMap<u64, u64> = BTreeMap::new();
    log.replayed(5, &unsettled); // harmless after the fact
}
