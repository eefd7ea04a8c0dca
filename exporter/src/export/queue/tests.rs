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

proptest! {
    #[test]
    fn admission_should_match_a_running_total_model(
        capacity in 0usize..50,
        sizes in proptest::collection::vec(0usize..20, 0..40),
    ) {
        let mut state = State::default();
        let mut model_total = 0usize;
        let mut model_kept = Vec::new();
        for spans in sizes {
            let b = ExportBatch { body: bytes::Bytes::new(), spans };
            let admitted = state.admit(b, capacity);
            if model_total + spans <= capacity {
                model_total += spans;
                model_kept.push(spans);
                prop_assert!(admitted.is_ok());
            } else {
                prop_assert_eq!(admitted.map_err(|b| b.spans), Err(spans));
            }
        }
        prop_assert_eq!(state.outstanding, model_total);
        let kept: Vec<_> = state.batches.iter().map(|b| b.spans).collect();
        prop_assert_eq!(kept, model_kept);
    }
}

#[test]
fn admission_should_not_overflow_on_huge_span_counts() {
    let mut state = State::default();
    assert!(state
        .admit(
            ExportBatch {
                body: bytes::Bytes::new(),
                spans: 5
            },
            10
        )
        .is_ok());
    let huge = ExportBatch {
        body: bytes::Bytes::new(),
        spans: usize::MAX,
    };
    assert!(state.admit(huge, usize::MAX).is_err());
    assert_eq!(state.outstanding, 5);
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
