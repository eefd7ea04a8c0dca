//! The producer's side of a running engine: [`EngineHandle`] adds work and shuts the engine down,
//! and [`QueueView`] reads the state of its queue.
//!
//! Why the handle does not hand out its [`Queue`]: with a tracer, every add must pass through the
//! item-trace table, which starts the key's trace or records the add on the trace it has. An add
//! straight onto the queue would skip that, and a `get` or `done` there would take keys from under
//! the workers. So the handle offers the adds and the shutdowns, and the view only reads.

use crate::metrics::QueueMetrics;
use crate::queue::{AddOptions, Queue};
use crate::trace::ItemTraces;
use opentelemetry::Context;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

/// A producer's handle on a running [`Engine`](crate::Engine): adds work and shuts the engine
/// down. Cheap to clone; give one to every producer.
///
/// With a tracer, the first add of a key starts its trace; later adds while the key is known
/// (queued, waiting or in process) become `coalesced_add` events on its item span.
#[derive(Debug)]
pub struct EngineHandle<K> {
    queue: Queue<K>,
    traces: Option<Arc<ItemTraces<K>>>,
}

impl<K> Clone for EngineHandle<K> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            traces: self.traces.clone(),
        }
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> EngineHandle<K> {
    pub(super) fn new(queue: Queue<K>, traces: Option<Arc<ItemTraces<K>>>) -> Self {
        Self { queue, traces }
    }

    /// See [`Queue::add`].
    pub fn add(&self, key: K) {
        match &self.traces {
            None => self.queue.add(key),
            Some(t) => t.add(&self.queue, key, None, |q, k| q.add(k)),
        }
    }

    /// As [`add`](Self::add), continuing a producer's trace: the key's item span becomes a
    /// child of `cx`'s span (for instance one extracted with
    /// [`propagation`](crate::trace::propagation) from another service's headers), and `cx`'s
    /// baggage travels on. If the key is already known, the add is recorded on its item span
    /// (an event, and a link to `cx`'s span). Without a tracer, a plain add.
    pub fn add_with_context(&self, key: K, cx: &Context) {
        match &self.traces {
            None => self.queue.add(key),
            Some(t) => t.add(&self.queue, key, Some(cx), |q, k| q.add(k)),
        }
    }

    /// See [`Queue::add_with`]: an add at a priority, after a delay, or rate limited.
    pub fn add_with(&self, key: K, options: AddOptions) {
        match &self.traces {
            None => self.queue.add_with(key, options),
            Some(t) => t.add(&self.queue, key, None, |q, k| q.add_with(k, options)),
        }
    }

    /// As [`add_with`](Self::add_with), continuing a producer's trace as
    /// [`add_with_context`](Self::add_with_context) does.
    pub fn add_with_context_and_options(&self, key: K, cx: &Context, options: AddOptions) {
        match &self.traces {
            None => self.queue.add_with(key, options),
            Some(t) => t.add(&self.queue, key, Some(cx), |q, k| q.add_with(k, options)),
        }
    }

    /// See [`Queue::add_after`].
    pub fn add_after(&self, key: K, delay: Duration) {
        match &self.traces {
            None => self.queue.add_after(key, delay),
            Some(t) => t.add(&self.queue, key, None, |q, k| q.add_after(k, delay)),
        }
    }

    /// See [`Queue::add_rate_limited`].
    pub fn add_rate_limited(&self, key: K) {
        match &self.traces {
            None => self.queue.add_rate_limited(key),
            Some(t) => t.add(&self.queue, key, None, |q, k| q.add_rate_limited(k)),
        }
    }

    /// A read-only view of the engine's queue: lengths, requeue counts, metrics, and
    /// [`wait_idle`](QueueView::wait_idle). Adds go through the handle's own methods.
    pub fn queue(&self) -> QueueView<'_, K> {
        QueueView { queue: &self.queue }
    }

    /// A snapshot of the queue's metrics; the same as `self.queue().metrics()`.
    pub fn metrics(&self) -> QueueMetrics {
        self.queue.metrics()
    }

    /// Stops handing out work; workers exit after their current attempt. See [`Queue::shutdown`].
    pub fn shutdown(&self) {
        self.queue.shutdown();
    }

    /// Stops handing out work and waits for attempts in flight. See
    /// [`Queue::shutdown_with_drain`].
    pub async fn shutdown_with_drain(&self) {
        self.queue.shutdown_with_drain().await;
    }

    /// Refuses new adds, lets workers finish every queued key, then stops. See
    /// [`Queue::shutdown_with_drain_queued`].
    pub async fn shutdown_with_drain_queued(&self) {
        self.queue.shutdown_with_drain_queued().await;
    }
}

/// A read-only view of an engine's queue, from [`EngineHandle::queue`]: what is queued, waiting
/// and in process, each key's requeue count, the metrics, and a wait for the queue to go idle.
/// It cannot add, take or settle keys: with a tracer every add must pass through the handle, which
/// starts the key's trace or records the add on it, and only the workers take and settle keys.
/// `Copy`: its methods take it by value, so `handle.queue().wait_idle()` can be awaited wherever
/// the handle lives.
///
/// # Examples
/// ```
/// use traceq_engine::{Attempt, Engine};
///
/// # tokio::runtime::Builder::new_multi_thread().enable_time().build().unwrap().block_on(async {
/// let engine = Engine::<u32>::builder().build().unwrap();
/// let handle = engine.handle();
/// handle.add(1);
/// handle.add(1); // coalesced
/// assert_eq!(handle.queue().len(), 1);
///
/// let run = tokio::spawn(async move {
///     engine
///         .run(|_: Attempt<u32>| async { Ok::<(), std::io::Error>(()) })
///         .await
/// });
/// handle.queue().wait_idle().await; // nothing queued, waiting or in process
/// assert_eq!(handle.queue().processing_len(), 0);
/// handle.shutdown_with_drain().await;
/// run.await.unwrap();
/// # });
/// ```
pub struct QueueView<'a, K> {
    queue: &'a Queue<K>,
}

impl<K> Clone for QueueView<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for QueueView<'_, K> {}

impl<K> fmt::Debug for QueueView<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("QueueView").field(self.queue).finish()
    }
}

impl<'a, K: Eq + Hash + Clone + Send + Sync + 'static> QueueView<'a, K> {
    /// The queue's name (the engine's). See [`Queue::name`].
    pub fn name(self) -> &'a str {
        self.queue.name()
    }

    /// Keys queued and ready to be handed out. See [`Queue::len`].
    pub fn len(self) -> usize {
        self.queue.len()
    }

    /// Whether no key is queued and ready. See [`Queue::is_empty`].
    pub fn is_empty(self) -> bool {
        self.queue.is_empty()
    }

    /// Keys waiting out a delay or backoff. See [`Queue::waiting_len`].
    pub fn waiting_len(self) -> usize {
        self.queue.waiting_len()
    }

    /// Keys a worker is processing. See [`Queue::processing_len`].
    pub fn processing_len(self) -> usize {
        self.queue.processing_len()
    }

    /// Requeues of `key` counted since it was last forgotten: its retried failures, and its
    /// rate-limited adds. See [`Queue::num_requeues`].
    pub fn num_requeues(self, key: &K) -> u32 {
        self.queue.num_requeues(key)
    }

    /// Whether a shutdown (or a drain) has begun. See [`Queue::is_shutting_down`].
    pub fn is_shutting_down(self) -> bool {
        self.queue.is_shutting_down()
    }

    /// A snapshot of the queue's metrics. See [`Queue::metrics`].
    pub fn metrics(self) -> QueueMetrics {
        self.queue.metrics()
    }

    /// Waits until nothing is queued, waiting out a delay, or in process. See
    /// [`Queue::wait_idle`].
    pub async fn wait_idle(self) {
        self.queue.wait_idle().await;
    }
}
