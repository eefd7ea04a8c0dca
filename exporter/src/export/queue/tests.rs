use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::export::test_support::{batch, closed_port, eventually, fast_retry, get, grpc_config};

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn public_types_should_be_send_and_sync() {
    assert_send_sync::<ExporterQueue>();
    assert_send_sync::<ExportBatch>();
    assert_send_sync::<ExportSetupError>();
}

#[test]
fn starting_outside_a_runtime_should_be_an_error_not_a_panic() {
    let err = ExporterQueue::start(&grpc_config(closed_port(), fast_retry(10)), Arc::default())
        .unwrap_err();
    assert!(matches!(err, ExportSetupError::NoRuntime { .. }), "{err}");
    assert!(err.to_string().contains("otlp/test"), "{err}");
}

fn sized(spans: usize, bytes: usize) -> ExportBatch {
    ExportBatch {
        body: bytes::Bytes::from(vec![0u8; bytes]),
        spans,
    }
}

proptest! {
    #[test]
    fn admission_should_match_a_running_total_model(
        capacity in 0usize..50,
        capacity_bytes in 0usize..500,
        sizes in proptest::collection::vec((0usize..20, 0usize..100), 0..40),
    ) {
        let mut state = State::default();
        let (mut model_spans, mut model_bytes) = (0usize, 0usize);
        let mut model_kept = Vec::new();
        for (spans, bytes) in sizes {
            let admitted = state.admit((sized(spans, bytes), None), capacity, capacity_bytes);
            if model_spans + spans <= capacity && model_bytes + bytes <= capacity_bytes {
                model_spans += spans;
                model_bytes += bytes;
                model_kept.push(spans);
                prop_assert!(admitted.is_ok());
            } else {
                prop_assert_eq!(admitted.map_err(|b| b.0.spans), Err(spans));
            }
        }
        prop_assert_eq!(state.outstanding, model_spans);
        prop_assert_eq!(state.outstanding_bytes, model_bytes);
        let kept: Vec<_> = state.batches.iter().map(|b| b.0.spans).collect();
        prop_assert_eq!(kept, model_kept);
    }
}

#[test]
fn admission_should_not_overflow_on_huge_span_counts() {
    let mut state = State::default();
    assert!(state.admit((sized(5, 3), None), 10, 10).is_ok());
    let huge = ExportBatch {
        body: bytes::Bytes::new(),
        spans: usize::MAX,
    };
    assert!(state.admit((huge, None), usize::MAX, usize::MAX).is_err());
    assert_eq!(state.outstanding, 5);
    assert_eq!(state.outstanding_bytes, 3);
}

#[tokio::test]
async fn the_byte_bound_should_refuse_batches_and_count_them() {
    let metrics = Arc::new(ExporterMetrics::default());
    let config = grpc_config(closed_port(), fast_retry(10))
        .with_queue_size(1_000_000)
        .with_max_export_bytes(100)
        .with_queue_bytes(250);
    let queue = ExporterQueue::start(&config, metrics.clone()).unwrap();
    // Bodies of 100 bytes (not requests, but the queue only counts): two fit, the third not.
    queue.push(sized(1, 100));
    queue.push(sized(1, 100));
    queue.push(sized(1, 100));
    assert_eq!(get(&metrics.queue_bytes), 200);
    assert_eq!(get(&metrics.queue_spans), 2);
    assert_eq!(get(&metrics.spans_dropped), 1);
    drop(queue);
    assert!(eventually(|| get(&metrics.spans_dropped) == 3).await);
    assert_eq!(get(&metrics.queue_bytes), 0);
}

#[tokio::test]
async fn unusable_bounds_should_fail_start_naming_the_exporter() {
    for config in [
        grpc_config(closed_port(), fast_retry(10)).with_max_export_bytes(0),
        grpc_config(closed_port(), fast_retry(10)).with_queue_size(0),
        grpc_config(closed_port(), fast_retry(10))
            .with_max_export_bytes(1000)
            .with_queue_bytes(999),
    ] {
        let err = ExporterQueue::start(&config, Arc::default()).unwrap_err();
        assert!(
            matches!(err, ExportSetupError::InvalidLimit { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("otlp/test"), "{err}");
    }
}

#[tokio::test]
async fn shutdown_should_be_idempotent_and_refuse_later_batches() {
    let metrics = Arc::new(ExporterMetrics::default());
    let queue =
        ExporterQueue::start(&grpc_config(closed_port(), fast_retry(10)), metrics.clone()).unwrap();
    assert_eq!(queue.name(), "otlp/test");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    queue.shutdown(deadline).await;
    let started = std::time::Instant::now();
    queue.shutdown(deadline).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    queue.push(batch(3));
    assert_eq!(get(&metrics.spans_dropped), 3);
    assert_eq!(get(&metrics.queue_spans), 0);
    assert!(format!("{queue:?}").contains("closed: true"));
}

#[tokio::test]
async fn dropping_the_queue_should_count_what_was_left_as_dropped() {
    let metrics = Arc::new(ExporterMetrics::default());
    let queue =
        ExporterQueue::start(&grpc_config(closed_port(), fast_retry(10)), metrics.clone()).unwrap();
    queue.push(batch(2));
    queue.push(batch(5));
    assert_eq!(get(&metrics.queue_spans), 7);
    drop(queue);
    assert!(eventually(|| get(&metrics.spans_dropped) == 7).await);
    assert_eq!(get(&metrics.spans_sent), 0);
}

#[tokio::test]
async fn empty_batches_should_be_ignored() {
    let metrics = Arc::new(ExporterMetrics::default());
    let queue =
        ExporterQueue::start(&grpc_config(closed_port(), fast_retry(10)), metrics.clone()).unwrap();
    queue.push(batch(0));
    assert_eq!(get(&metrics.queue_spans), 0);
    queue.shutdown(tokio::time::Instant::now()).await;
    assert_eq!(get(&metrics.spans_dropped), 0);
}

/// A receipt that counts into `settled` when settled.
fn counting_receipt(settled: &Arc<std::sync::atomic::AtomicUsize>) -> Receipt {
    let settled = settled.clone();
    Receipt::new(move || {
        settled.fetch_add(1, Relaxed);
    })
}

#[tokio::test]
async fn receipts_should_be_settled_when_a_batch_is_given_up_or_refused_by_a_full_queue() {
    let settled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let metrics = Arc::new(ExporterMetrics::default());
    // Nothing listens and retries are off: the first batch is given up after one attempt.
    let no_retry = crate::client::RetryConfig {
        enabled: false,
        ..fast_retry(10)
    };
    let config = grpc_config(closed_port(), no_retry).with_queue_size(5);
    let queue = ExporterQueue::start(&config, metrics.clone()).unwrap();
    queue.push_with_receipt(batch(3), counting_receipt(&settled));
    // Past `queue_size`: dropped for good, settled at once.
    queue.push_with_receipt(batch(3), counting_receipt(&settled));
    assert_eq!(settled.load(Relaxed), 1);
    assert!(eventually(|| settled.load(Relaxed) == 2).await);
    assert_eq!(get(&metrics.spans_dropped), 6);
    // An empty batch is settled at once too.
    queue.push_with_receipt(batch(0), counting_receipt(&settled));
    assert_eq!(settled.load(Relaxed), 3);
}

#[tokio::test]
async fn receipts_should_stay_unsettled_for_batches_left_at_the_shutdown_deadline() {
    let settled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let metrics = Arc::new(ExporterMetrics::default());
    // Retries for ever: the batches are still owed when shutdown gives up on them.
    let config = grpc_config(closed_port(), fast_retry(10));
    let queue = ExporterQueue::start(&config, metrics.clone()).unwrap();
    for _ in 0..6 {
        queue.push_with_receipt(batch(1), counting_receipt(&settled));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
    queue.shutdown(deadline).await;
    // Counted as dropped, as without receipts, but owed: whoever queued them keeps the data.
    assert_eq!(get(&metrics.spans_dropped), 6);
    // And after shutdown began, still owed.
    queue.push_with_receipt(batch(1), counting_receipt(&settled));
    assert_eq!(settled.load(Relaxed), 0);
}
