//! The engine under hostile user code: a panic in the handler (before or inside its future), in
//! the error's `Display`, in the key's formatting for its trace or in the outcome hook fails the
//! attempt (or, for the hook, is reported) without killing the worker, so the key is retried or
//! forgotten and `shutdown_with_drain` returns. Every wait is bounded, so a regression fails
//! instead of hanging.

use opentelemetry::trace::TracerProvider;
use parking_lot::Mutex;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;
use traceq_engine::trace::attributes as attr;
use traceq_engine::{rate_limit, Attempt, AttemptError, Engine, EngineBuilder, Handler, Outcome};
use traceq_engine::{OutcomeKind, QueueView};

mod common;

use common::{attr_of, provider};

/// Long enough for any of these runs; a hang fails the test after it.
const BOUND: Duration = Duration::from_secs(10);

type Log = Arc<Mutex<Vec<Outcome<String>>>>;

/// One worker, no retry delay, one retry: a failing key runs twice, then is forgotten.
fn builder() -> (EngineBuilder<String>, Log) {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let builder = Engine::<String>::builder()
        .with_workers(1)
        .with_max_retries(1)
        .with_rate_limiter(rate_limit::none())
        .with_outcome_hook(move |o: &Outcome<String>| sink.lock().push(o.clone()));
    (builder, log)
}

/// Adds `keys`, runs the engine until it is idle, then shuts it down with a drain; every wait
/// bounded.
async fn run_bounded<H: Handler<String>>(engine: Engine<String>, keys: &[&str], handler: H) {
    let handle = engine.handle();
    for key in keys {
        handle.add((*key).to_owned());
    }
    let run = tokio::spawn(async move { engine.run(handler).await });
    let idle = timeout(BOUND, handle.queue().wait_idle()).await;
    assert!(
        idle.is_ok(),
        "queue never went idle: {}",
        state(handle.queue())
    );
    let drained = timeout(BOUND, handle.shutdown_with_drain()).await;
    assert!(drained.is_ok(), "drain hung: {}", state(handle.queue()));
    timeout(BOUND, run).await.expect("run hung").unwrap();
}

fn state(q: QueueView<'_, String>) -> String {
    format!(
        "{} queued, {} waiting, {} processing",
        q.len(),
        q.waiting_len(),
        q.processing_len()
    )
}

/// The errors of `key`'s outcomes, in order, and whether its last outcome forgot it.
fn errors_of(log: &Log, key: &str) -> (Vec<AttemptError>, bool) {
    let log = log.lock();
    let outcomes: Vec<&Outcome<String>> = log.iter().filter(|o| o.key == key).collect();
    let errors = outcomes
        .iter()
        .filter_map(|o| o.kind.error().cloned())
        .collect();
    let forgotten = outcomes
        .last()
        .is_some_and(|o| matches!(o.kind, OutcomeKind::Exhausted { .. }));
    (errors, forgotten)
}

fn succeeded(log: &Log, key: &str) -> bool {
    log.lock()
        .iter()
        .any(|o| o.key == key && o.kind == OutcomeKind::Succeeded)
}

/// The handler of these tests: fails `bad` by calling `fail`, succeeds for any other key.
fn handler_failing_bad<F, Fut>(fail: F) -> impl Handler<String>
where
    F: Fn(Attempt<String>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BadDisplay>> + Send + 'static,
{
    move |attempt: Attempt<String>| {
        let fut: std::pin::Pin<Box<dyn Future<Output = Result<(), BadDisplay>> + Send>> =
            if attempt.key == "bad" {
                Box::pin(fail(attempt))
            } else {
                Box::pin(async { Ok(()) })
            };
        fut
    }
}

/// An error whose `Display` panics.
#[derive(Debug)]
struct BadDisplay;

impl fmt::Display for BadDisplay {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("display boom")
    }
}

#[tokio::test]
async fn a_panic_before_the_handler_future_should_fail_the_attempt_not_the_worker() {
    let (builder, log) = builder();
    let handler = |attempt: Attempt<String>| {
        if attempt.key == "bad" {
            panic!("sync boom");
        }
        async { Ok::<(), std::io::Error>(()) }
    };
    run_bounded(builder.build().unwrap(), &["bad", "good"], handler).await;
    let (errors, forgotten) = errors_of(&log, "bad");
    assert_eq!(errors, vec![AttemptError::Panicked("sync boom".into()); 2]);
    assert_eq!(errors[0].to_string(), "handler panicked: sync boom");
    assert!(forgotten, "retried once, then forgotten");
    assert!(succeeded(&log, "good"), "the worker kept serving");
}

#[tokio::test]
async fn a_panic_inside_the_handler_future_should_fail_the_attempt_not_the_worker() {
    let (builder, log) = builder();
    let handler = handler_failing_bad(|_| async { panic!("async boom") });
    run_bounded(builder.build().unwrap(), &["bad", "good"], handler).await;
    let (errors, forgotten) = errors_of(&log, "bad");
    assert_eq!(errors, vec![AttemptError::Panicked("async boom".into()); 2]);
    assert!(forgotten);
    assert!(succeeded(&log, "good"));
}

#[tokio::test]
async fn a_panic_in_the_error_display_should_fail_the_attempt_with_that_reason() {
    let (builder, log) = builder();
    let handler = handler_failing_bad(|_| async { Err(BadDisplay) });
    run_bounded(builder.build().unwrap(), &["bad", "good"], handler).await;
    let (errors, forgotten) = errors_of(&log, "bad");
    assert_eq!(
        errors,
        vec![AttemptError::DisplayPanicked("display boom".into()); 2]
    );
    assert_eq!(
        errors[0].to_string(),
        "error Display panicked: display boom"
    );
    assert!(forgotten);
    assert!(succeeded(&log, "good"));
}

#[tokio::test]
async fn a_panic_in_key_formatting_should_fail_the_attempt_and_keep_the_worker() {
    let (provider, exporter) = provider();
    let (builder, log) = builder();
    let engine = builder
        .with_tracer_and_key_format(provider.tracer("traceq"), |key: &String| {
            if key == "bad" {
                panic!("format boom");
            }
            key.clone()
        })
        .build()
        .unwrap();
    let ran = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&ran);
    let handler = move |attempt: Attempt<String>| {
        counter.fetch_add(1, Ordering::Relaxed);
        assert_ne!(
            attempt.key, "bad",
            "the handler of an unformattable key ran"
        );
        async { Ok::<(), std::io::Error>(()) }
    };
    // The add of "bad" must not panic in the producer either.
    run_bounded(engine, &["bad", "good"], handler).await;
    let (errors, forgotten) = errors_of(&log, "bad");
    assert_eq!(
        errors,
        vec![AttemptError::KeyFormatPanicked("format boom".into()); 2]
    );
    assert_eq!(
        errors[0].to_string(),
        "key formatting panicked: format boom"
    );
    assert!(forgotten);
    assert!(succeeded(&log, "good"));
    assert_eq!(ran.load(Ordering::Relaxed), 1, "only the good key ran");
    // The good key is traced as usual.
    let spans = exporter.get_finished_spans().unwrap();
    let item = spans
        .iter()
        .find(|s| s.name.starts_with("item "))
        .expect("the good key's item span");
    assert_eq!(
        attr_of(item, attr::ITEM_KEY).map(|v| v.to_string()),
        Some("good".to_owned())
    );
}

#[tokio::test]
async fn a_panicking_outcome_hook_should_leave_the_outcome_and_the_worker_alone() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let engine = Engine::<String>::builder()
        .with_workers(1)
        .with_outcome_hook(move |_: &Outcome<String>| {
            counter.fetch_add(1, Ordering::Relaxed);
            panic!("hook boom");
        })
        .build()
        .unwrap();
    let handle = engine.handle();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&handled);
    let handler = move |attempt: Attempt<String>| {
        seen.lock().push(attempt.key);
        async { Ok::<(), std::io::Error>(()) }
    };
    run_bounded(engine, &["a", "b", "c"], handler).await;
    assert_eq!(
        *handled.lock(),
        ["a", "b", "c"],
        "one worker served every key"
    );
    assert_eq!(calls.load(Ordering::Relaxed), 3, "the hook ran for each");
    assert_eq!(handle.metrics().processing, 0);
    assert_eq!(handle.queue().num_requeues(&"a".to_owned()), 0, "succeeded");
}

/// A handler that signals each attempt it starts and never finishes one.
fn hang_on_first_attempt(
    started: Arc<tokio::sync::Notify>,
) -> impl Handler<String, Error = std::io::Error> {
    move |_: Attempt<String>| {
        let started = Arc::clone(&started);
        async move {
            started.notify_one();
            std::future::pending::<()>().await;
            Ok(())
        }
    }
}

/// Runs `engine` until its handler has started, then drops the `run` future mid-attempt.
async fn drop_run_mid_attempt(engine: &Engine<String>) {
    let started = Arc::new(tokio::sync::Notify::new());
    let run = engine.run(hang_on_first_attempt(Arc::clone(&started)));
    tokio::select! {
        () = run => panic!("run returned while its handler hangs"),
        r = timeout(BOUND, started.notified()) => r.expect("the handler never started"),
    }
}

#[tokio::test]
async fn dropping_run_mid_attempt_should_let_the_drain_return() {
    let (provider, exporter) = provider();
    let engine = Engine::<String>::builder()
        .with_workers(1)
        .with_tracer(provider.tracer("traceq"))
        .build()
        .unwrap();
    let handle = engine.handle();
    handle.add("k".to_owned());
    drop_run_mid_attempt(&engine).await;
    let drained = timeout(BOUND, handle.shutdown_with_drain()).await;
    assert!(drained.is_ok(), "drain hung: {}", state(handle.queue()));
    assert_eq!(handle.queue().processing_len(), 0);
    // The attempt span ends as cancelled; the key was not queued again during the shutdown, so
    // its trace ends too.
    let spans = exporter.get_finished_spans().unwrap();
    let outcome = |prefix: &str| {
        spans
            .iter()
            .find(|s| s.name.starts_with(prefix))
            .and_then(|s| attr_of(s, attr::OUTCOME))
            .map(|v| v.to_string())
    };
    assert_eq!(
        outcome("process "),
        Some(attr::OUTCOME_CANCELLED.to_owned())
    );
    assert_eq!(outcome("item "), Some(attr::OUTCOME_DROPPED.to_owned()));
}

#[tokio::test]
async fn a_key_cut_short_by_a_dropped_run_should_be_handed_out_again() {
    let (builder, log) = builder();
    let engine = builder.build().unwrap();
    let handle = engine.handle();
    handle.add("k".to_owned());
    drop_run_mid_attempt(&engine).await;
    let requeued = timeout(BOUND, async {
        while handle.queue().processing_len() != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(requeued.is_ok(), "key stuck: {}", state(handle.queue()));
    assert_eq!(
        handle.queue().len(),
        1,
        "the interrupted key is queued again"
    );
    // A second run hands it out and finishes it.
    let second = engine.run(|_: Attempt<String>| async { Ok::<(), std::io::Error>(()) });
    let stop = async {
        handle.queue().wait_idle().await;
        handle.shutdown_with_drain().await;
    };
    let both = timeout(BOUND, async { tokio::join!(second, stop) }).await;
    assert!(both.is_ok(), "second run hung: {}", state(handle.queue()));
    assert!(succeeded(&log, "k"));
}
