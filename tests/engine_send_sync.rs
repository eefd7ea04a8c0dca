//! The public types can be shared across threads and tasks.

use traceq_engine::rate_limit::{ExponentialBackoff, FastSlow, MaxOf, NoDelay, TokenBucket};
use traceq_engine::{
    Engine, EngineBuilder, EngineHandle, Outcome, Queue, QueueConfig, QueueMetrics, QueueView,
};

fn is_send_sync<T: Send + Sync>() {}

#[test]
fn engine_types_should_be_send_and_sync() {
    is_send_sync::<Queue<String>>();
    is_send_sync::<QueueConfig<String>>();
    is_send_sync::<QueueMetrics>();
    is_send_sync::<Engine<String>>();
    is_send_sync::<EngineBuilder<String>>();
    is_send_sync::<EngineHandle<String>>();
    is_send_sync::<QueueView<'static, String>>();
    is_send_sync::<Outcome<String>>();
    is_send_sync::<ExponentialBackoff<String>>();
    is_send_sync::<FastSlow<String>>();
    is_send_sync::<MaxOf<String>>();
    is_send_sync::<TokenBucket>();
    is_send_sync::<NoDelay>();
}

#[test]
fn queue_get_future_should_be_send() {
    fn is_send<T: Send>(_: &T) {}
    let q = Queue::<String>::new();
    is_send(&q.get());
    is_send(&q.shutdown_with_drain());
    is_send(&q.shutdown_with_drain_queued());
}

#[test]
fn engine_handle_futures_should_be_send() {
    fn is_send<T: Send>(_: &T) {}
    let engine = Engine::<String>::builder().build().unwrap();
    let handle = engine.handle();
    is_send(&handle.queue().wait_idle());
    is_send(&handle.shutdown_with_drain());
    is_send(&handle.shutdown_with_drain_queued());
}
