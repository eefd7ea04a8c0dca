use super::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

type Log<K> = Arc<Mutex<Vec<Outcome<K>>>>;

/// Records every outcome, per key.
fn recorder<K: Clone + Eq + Hash + Send + 'static>(
) -> (Log<K>, impl Fn(&Outcome<K>) + Send + Sync + 'static) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    (log, move |o: &Outcome<K>| sink.lock().push(o.clone()))
}

async fn run_until_drained<K, H>(engine: Engine<K>, handler: H)
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    H: Handler<K>,
{
    let handle = engine.handle();
    let run = tokio::spawn(async move { engine.run(handler).await });
    // Wait until nothing is queued, waiting or in process, then stop.
    handle.queue().wait_idle().await;
    handle.shutdown_with_drain().await;
    run.await.unwrap();
}

#[test]
fn build_should_reject_bad_input_with_a_clear_error() {
    let e = Engine::<u8>::builder().with_workers(0).build().unwrap_err();
    assert_eq!(e, BuildError::ZeroWorkers);
    assert_eq!(e.to_string(), "workers must be at least 1");
    let e = Engine::<u8>::builder()
        .with_backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(e, BuildError::ZeroBackoff);
    let e = Engine::<u8>::builder()
        .with_backoff(Duration::from_secs(2), Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert!(matches!(
        e,
        BuildError::RateLimit(RateLimitError::InvertedBounds { .. })
    ));
    let e = Engine::<u8>::builder()
        .with_token_bucket(10.0, 0)
        .build()
        .unwrap_err();
    assert_eq!(e, BuildError::RateLimit(RateLimitError::ZeroBurst));
    let e = Engine::<u8>::builder()
        .with_token_bucket(0.0, 1)
        .build()
        .unwrap_err();
    assert!(matches!(
        e,
        BuildError::RateLimit(RateLimitError::InvalidRate(_))
    ));
    let e = Engine::<u8>::builder()
        .with_attempt_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(e, BuildError::ZeroTimeout);
    assert!(Engine::<u8>::builder()
        .with_backoff(Duration::from_millis(1), Duration::from_secs(1))
        .with_token_bucket(5.0, 10)
        .build()
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn engine_should_retry_with_backoff_then_succeed_and_forget() {
    let (log, hook) = recorder();
    let engine = Engine::<&str>::builder()
        .with_backoff(Duration::from_millis(10), Duration::from_secs(1))
        .with_outcome_hook(hook)
        .build()
        .unwrap();
    engine.handle().add("k");
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    run_until_drained(engine, move |a: Attempt<&'static str>| {
        let c = Arc::clone(&c);
        async move {
            assert_eq!(a.is_retry(), a.number > 1);
            if c.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(format!("boom {}", a.number))
            } else {
                Ok(())
            }
        }
    })
    .await;
    let log = log.lock();
    let kinds: Vec<_> = log.iter().map(|o| (o.attempt, o.kind.clone())).collect();
    assert_eq!(
        kinds,
        vec![
            (
                1,
                OutcomeKind::Requeued {
                    delay: Duration::from_millis(10),
                    error: AttemptError::Failed("boom 1".into())
                }
            ),
            (
                2,
                OutcomeKind::Requeued {
                    delay: Duration::from_millis(20),
                    error: AttemptError::Failed("boom 2".into())
                }
            ),
            (3, OutcomeKind::Succeeded),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn engine_should_forget_a_key_after_max_retries_and_say_why() {
    let (log, hook) = recorder();
    let engine = Engine::<u8>::builder()
        .with_max_retries(2)
        .with_rate_limiter(rate_limit::none())
        .with_outcome_hook(hook)
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add(1);
    run_until_drained(engine, |_a: Attempt<u8>| async {
        Err::<(), _>("always fails")
    })
    .await;
    let log = log.lock();
    assert_eq!(log.len(), 3, "one attempt and two retries");
    assert_eq!(
        log[2].kind,
        OutcomeKind::Exhausted {
            error: AttemptError::Failed("always fails".into())
        }
    );
    assert_eq!(handle.queue().num_requeues(&1), 0, "forgotten");
    assert_eq!(handle.metrics().exhausted_total, 1);
}

#[tokio::test(start_paused = true)]
async fn engine_should_survive_a_panicking_handler_and_record_the_message() {
    let (log, hook) = recorder();
    let engine = Engine::<u8>::builder()
        .with_workers(1)
        .with_max_retries(0)
        .with_outcome_hook(hook)
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add(1);
    handle.add(2);
    run_until_drained(engine, |a: Attempt<u8>| async move {
        if a.key == 1 {
            panic!("bad object {}", a.key);
        }
        Ok::<(), String>(())
    })
    .await;
    let log = log.lock();
    let by_key: HashMap<_, _> = log.iter().map(|o| (o.key, o.kind.clone())).collect();
    assert_eq!(
        by_key[&1],
        OutcomeKind::Exhausted {
            error: AttemptError::Panicked("bad object 1".into())
        }
    );
    assert_eq!(
        by_key[&2],
        OutcomeKind::Succeeded,
        "the one worker lived on"
    );
}

#[tokio::test(start_paused = true)]
async fn engine_should_fail_an_attempt_that_times_out() {
    let (log, hook) = recorder();
    let engine = Engine::<u8>::builder()
        .with_attempt_timeout(Duration::from_secs(1))
        .with_rate_limiter(rate_limit::none())
        .with_max_retries(1)
        .with_outcome_hook(hook)
        .build()
        .unwrap();
    engine.handle().add(1);
    run_until_drained(engine, |a: Attempt<u8>| async move {
        if a.number == 1 {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Ok::<(), String>(())
    })
    .await;
    let log = log.lock();
    assert_eq!(
        log[0].kind,
        OutcomeKind::Requeued {
            delay: Duration::ZERO,
            error: AttemptError::TimedOut(Duration::from_secs(1))
        }
    );
    assert_eq!(log[1].kind, OutcomeKind::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn engine_should_drop_retries_of_attempts_failing_during_shutdown() {
    let (log, hook) = recorder();
    let engine = Engine::<u8>::builder()
        .with_outcome_hook(hook)
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add(1);
    let h = handle.clone();
    let run = tokio::spawn(async move {
        engine
            .run(move |_a: Attempt<u8>| {
                let h = h.clone();
                async move {
                    // Shut down while this attempt runs, then fail it.
                    h.shutdown();
                    Err::<(), _>("late failure")
                }
            })
            .await
    });
    run.await.unwrap();
    assert!(matches!(
        log.lock()[0].kind,
        OutcomeKind::DroppedAtShutdown { .. }
    ));
    assert_eq!(handle.queue().waiting_len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_should_never_run_one_key_on_two_workers() {
    let engine = Engine::<u32>::builder()
        .with_workers(8)
        .with_rate_limiter(rate_limit::none())
        .build()
        .unwrap();
    let handle = engine.handle();
    let in_flight: Arc<Vec<AtomicU32>> = Arc::new((0..16).map(|_| AtomicU32::new(0)).collect());
    let flags = Arc::clone(&in_flight);
    let producer = {
        let handle = handle.clone();
        tokio::spawn(async move {
            for i in 0..20_000u32 {
                handle.add(i % 16);
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let run = tokio::spawn(async move {
        engine
            .run(move |a: Attempt<u32>| {
                let flags = Arc::clone(&flags);
                async move {
                    let slot = &flags[a.key as usize];
                    assert_eq!(
                        slot.fetch_add(1, Ordering::SeqCst),
                        0,
                        "key ran twice at once"
                    );
                    tokio::task::yield_now().await;
                    slot.fetch_sub(1, Ordering::SeqCst);
                    Ok::<(), String>(())
                }
            })
            .await
    });
    producer.await.unwrap();
    handle.shutdown_with_drain_queued().await;
    run.await.unwrap();
    let m = handle.metrics();
    assert_eq!(m.depth + m.processing, 0);
}

/// The order keys are handed to a one-worker engine's handler, with each attempt's priority;
/// the handler fails `key`'s first attempt, asking for `requeue_at` if given.
async fn order_with_one_failure(key: u32, requeue_at: Option<i32>) -> Vec<(u32, u32, i32)> {
    let engine = Engine::<u32>::builder()
        .with_workers(1)
        .with_rate_limiter(rate_limit::none())
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add_with(key, crate::AddOptions::new().with_priority(5));
    handle.add_with(2, crate::AddOptions::new().with_priority(3));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    run_until_drained(engine, move |a: Attempt<u32>| {
        let log = Arc::clone(&log);
        async move {
            log.lock().push((a.key, a.number, a.priority));
            if a.key == key && a.number == 1 {
                if let Some(p) = requeue_at {
                    a.set_requeue_priority(p);
                }
                return Err("first attempt fails");
            }
            Ok(())
        }
    })
    .await;
    let seen = seen.lock().clone();
    seen
}

#[tokio::test(start_paused = true)]
async fn engine_should_requeue_a_failed_key_at_the_priority_it_was_handed_out_with() {
    // Key 1 (priority 5) fails and is requeued at 5: still ahead of key 2 (priority 3).
    assert_eq!(
        order_with_one_failure(1, None).await,
        [(1, 1, 5), (1, 2, 5), (2, 1, 3)]
    );
}

#[tokio::test(start_paused = true)]
async fn engine_should_requeue_a_failed_key_at_the_priority_its_handler_asks_for() {
    assert_eq!(
        order_with_one_failure(1, Some(crate::LOW_PRIORITY)).await,
        [(1, 1, 5), (2, 1, 3), (1, 2, crate::LOW_PRIORITY)]
    );
}

/// Each recorded span's name and attributes.
type Spans = Arc<Mutex<Vec<(String, Vec<opentelemetry::KeyValue>)>>>;

/// A tracer that records each span's name and attributes (given at start and set later).
#[derive(Clone, Default)]
struct Recorder {
    spans: Spans,
}

struct RecordedSpan {
    cx: opentelemetry::trace::SpanContext,
    at: usize,
    spans: Spans,
}

impl Tracer for Recorder {
    type Span = RecordedSpan;

    fn build_with_context(
        &self,
        builder: opentelemetry::trace::SpanBuilder,
        _parent: &opentelemetry::Context,
    ) -> RecordedSpan {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let mut spans = self.spans.lock();
        let at = spans.len();
        spans.push((
            builder.name.to_string(),
            builder.attributes.unwrap_or_default(),
        ));
        let id = at as u64 + 1;
        // A valid context: the engine takes a tracer whose spans have none for a no-op one.
        let cx = SpanContext::new(
            TraceId::from(u128::from(id)),
            SpanId::from(id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        RecordedSpan {
            cx,
            at,
            spans: Arc::clone(&self.spans),
        }
    }
}

impl opentelemetry::trace::Span for RecordedSpan {
    fn add_event_with_timestamp<T>(
        &mut self,
        _name: T,
        _timestamp: std::time::SystemTime,
        _attributes: Vec<opentelemetry::KeyValue>,
    ) where
        T: Into<std::borrow::Cow<'static, str>>,
    {
    }

    fn span_context(&self) -> &opentelemetry::trace::SpanContext {
        &self.cx
    }

    fn is_recording(&self) -> bool {
        true
    }

    fn set_attribute(&mut self, attribute: opentelemetry::KeyValue) {
        self.spans.lock()[self.at].1.push(attribute);
    }

    fn set_status(&mut self, _status: opentelemetry::trace::Status) {}

    fn update_name<T>(&mut self, _new_name: T)
    where
        T: Into<std::borrow::Cow<'static, str>>,
    {
    }

    fn add_link(
        &mut self,
        _span_context: opentelemetry::trace::SpanContext,
        _attributes: Vec<opentelemetry::KeyValue>,
    ) {
    }

    fn end_with_timestamp(&mut self, _timestamp: std::time::SystemTime) {}
}

#[tokio::test(start_paused = true)]
async fn engine_should_record_priority_and_group_on_attempt_spans() {
    let recorder = Recorder::default();
    let engine = Engine::<u32>::builder()
        .with_name("fair")
        .with_tracer(recorder.clone())
        .with_fairness(|key: &u32| key % 2)
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add_with(3, crate::AddOptions::new().with_priority(7));
    handle.add(4);
    let groups = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&groups);
    run_until_drained(engine, move |a: Attempt<u32>| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock()
                .push((a.key, a.group.as_deref().map(str::to_owned)));
            Ok::<(), std::io::Error>(())
        }
    })
    .await;
    assert_eq!(
        *groups.lock(),
        [(3, Some("1".to_owned())), (4, Some("0".to_owned()))]
    );
    let spans = recorder.spans.lock();
    let attempts: Vec<_> = spans
        .iter()
        .filter(|(name, _)| name == "process fair")
        .map(|(_, attrs)| {
            let get = |key: &str| {
                attrs
                    .iter()
                    .find(|kv| kv.key.as_str() == key)
                    .map(|kv| kv.value.to_string())
            };
            (
                get("traceq.item.key"),
                get("traceq.priority"),
                get("traceq.group"),
            )
        })
        .collect();
    let text = |s: &str| Some(s.to_owned());
    assert_eq!(
        attempts,
        [
            (text("3"), text("7"), text("1")),
            (text("4"), text("0"), text("0"))
        ]
    );
}
