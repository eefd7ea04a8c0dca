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
            let admitted = state.admit(sized(spans, bytes), capacity, capacity_bytes);
            if model_spans + spans <= capacity && model_bytes + bytes <= capacity_bytes {
                model_spans += spans;
                model_bytes += bytes;
                model_kept.push(spans);
                prop_assert!(admitted.is_ok());
            } else {
                prop_assert_eq!(admitted.map_err(|b| b.spans), Err(spans));
            }
        }
        prop_assert_eq!(state.outstanding, model_spans);
        prop_assert_eq!(state.outstanding_bytes, model_bytes);
        let kept: Vec<_> = state.batches.iter().map(|b| b.spans).collect();
        prop_assert_eq!(kept, model_kept);
    }
}

#[test]
fn admission_should_not_overflow_on_huge_span_counts() {
    let mut state = State::default();
    assert!(state.admit(sized(5, 3), 10, 10).is_ok());
    let huge = ExportBatch {
        body: bytes::Bytes::new(),
        spans: usize::MAX,
    };
    assert!(state.admit(huge, usize::MAX, usize::MAX).is_err());
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
