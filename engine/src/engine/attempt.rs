//! One attempt at a key: what the handler gets, how it is run, and what became of the key.
//!
//! Why the requeue priority travels through a shared cell: a failed attempt's key is requeued at
//! the priority it was handed out with (controller-runtime keeps it too), unless the handler says
//! otherwise with [`Attempt::set_requeue_priority`]. The handler owns its `Attempt` (and may clone
//! it into tasks that outlive the attempt), so the worker cannot read the choice back from it;
//! instead each worker holds one cell while it runs, and an attempt writes to it only while the
//! cell still carries that attempt's number, so a stale clone cannot change a later attempt.
//!
//! Why the cells are `'static`, from a pool: an `Arc` per worker would cost every attempt an
//! increment and a decrement of its count (the attempt's copy), a tenth of the engine's own cost
//! per key with a no-op handler. A worker takes a cell from the pool when it starts and gives it
//! back when it stops, so the pool holds as many cells as workers ever ran at once (8 bytes each),
//! and a cell's attempt number goes on rising from owner to owner.

use crate::trace::JobContext;
use futures::FutureExt;
use opentelemetry::Context;
use parking_lot::Mutex;
use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a handler receives for one attempt at a key.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Attempt<K> {
    /// The key to process.
    pub key: K,
    /// 1 for the first attempt since the key was last forgotten, 2 for the first retry, ...
    pub number: u32,
    /// The priority the key was handed out with; a failure requeues it at this priority unless
    /// the handler calls [`set_requeue_priority`](Self::set_requeue_priority).
    pub priority: i32,
    /// The key's group, for an engine built
    /// [`with_fairness`](crate::EngineBuilder::with_fairness); `None` otherwise.
    pub group: Option<Arc<str>>,
    job: JobContext,
    requeue: RequeueTicket,
    /// The payload stored with a durable key; always `None` in memory.
    payload: Option<Arc<Vec<u8>>>,
}

impl<K> Attempt<K> {
    pub(crate) fn new(
        key: K,
        number: u32,
        priority: i32,
        group: Option<Arc<str>>,
        job: JobContext,
        requeue: RequeueTicket,
    ) -> Self {
        Self {
            key,
            number,
            priority,
            group,
            job,
            requeue,
            payload: None,
        }
    }

    /// The same attempt carrying the payload of a durable key.
    #[cfg(feature = "postgres")]
    pub(crate) fn with_payload(mut self, payload: Option<Vec<u8>>) -> Self {
        self.payload = payload.map(Arc::new);
        self
    }

    /// The payload stored with the key, on the durable backend (the last one an add gave it);
    /// `None` without one, and always in memory.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref().map(Vec::as_slice)
    }

    /// Whether this attempt retries an earlier failure.
    pub fn is_retry(&self) -> bool {
        self.number > 1
    }

    /// If this attempt fails and its key is requeued, requeue it at `priority` instead of the
    /// one it was handed out with (for instance [`LOW_PRIORITY`](crate::LOW_PRIORITY) for a
    /// failure that is not urgent). As any add, the requeue takes the higher of this and a
    /// priority the key was given meanwhile. The last call wins; a call after the attempt
    /// ended (from a clone kept by a task) does nothing.
    pub fn set_requeue_priority(&self, priority: i32) {
        self.requeue.set(priority);
    }

    /// The attempt's context: start the handler's spans under it (OpenTelemetry API:
    /// `tracer.start_with_context(name, &attempt.context())`; `tracing` with
    /// tracing-opentelemetry: `span.set_parent(attempt.context())`). It carries the item key and
    /// job id as baggage. Same as `self.job().context()`; `Context::current()` when the engine
    /// has no tracer.
    pub fn context(&self) -> Context {
        self.job.context()
    }

    /// The handle on the item's trace, to keep for the whole attempt: in a long attempt its
    /// [`context`](JobContext::context) follows the trace into its next segment.
    pub fn job(&self) -> &JobContext {
        &self.job
    }
}

/// Processes keys. Implemented for every `Fn(Attempt<K>) -> impl Future<Output = Result<(), E>>`
/// where `E: Display`, so a closure is a handler.
pub trait Handler<K>: Send + Sync + 'static {
    /// The handler's error; its `Display` text is recorded as the failure.
    type Error: fmt::Display + Send;

    /// Processes one attempt.
    fn handle(&self, attempt: Attempt<K>) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

impl<K, F, Fut, E> Handler<K> for F
where
    F: Fn(Attempt<K>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: fmt::Display + Send,
{
    type Error = E;

    fn handle(&self, attempt: Attempt<K>) -> impl Future<Output = Result<(), E>> + Send {
        self(attempt)
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttemptError {
    /// The handler returned an error; its message.
    #[error("{0}")]
    Failed(String),
    /// The attempt ran past the per-attempt timeout.
    #[error("attempt timed out after {0:?}")]
    TimedOut(Duration),
    /// The handler panicked, in its synchronous part (before it returned its future) or while
    /// its future ran; the panic message.
    #[error("handler panicked: {0}")]
    Panicked(String),
    /// The handler returned an error whose `Display` panicked; the panic message.
    #[error("error Display panicked: {0}")]
    DisplayPanicked(String),
    /// Formatting the key for its trace panicked (the key's `Display` under
    /// [`with_tracer`](crate::EngineBuilder::with_tracer), the closure of
    /// [`with_tracer_and_key_format`](crate::EngineBuilder::with_tracer_and_key_format), or that
    /// of [`with_job_id_of`](crate::EngineBuilder::with_job_id_of)); the panic message. The
    /// handler did not run.
    #[error("key formatting panicked: {0}")]
    KeyFormatPanicked(String),
}

/// What became of a key after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutcomeKind {
    /// The handler succeeded; the key's history is forgotten.
    Succeeded,
    /// The attempt failed and the key was re-queued after `delay`.
    Requeued {
        /// The backoff chosen by the rate limiter.
        delay: Duration,
        /// Why the attempt failed.
        error: AttemptError,
    },
    /// The attempt failed after `max_retries` requeues: the key is forgotten.
    Exhausted {
        /// Why the last attempt failed.
        error: AttemptError,
    },
    /// The attempt failed while the queue was shutting down, so no retry was scheduled.
    DroppedAtShutdown {
        /// Why the attempt failed.
        error: AttemptError,
    },
    /// Durable backend only: the queue did not take this attempt's result, so the key is
    /// unchanged by it. Either the key's lease was lost (this worker stalled past the lease
    /// timeout and another claimed the key: the newer attempt stands), or the database refused
    /// the completion or went away at shutdown (the key is claimed again once its lease
    /// expires).
    Unsettled {
        /// Why the attempt failed, if it did.
        error: Option<AttemptError>,
        /// Why the result was not taken.
        cause: String,
    },
}

impl OutcomeKind {
    /// The failure, unless the attempt succeeded.
    pub fn error(&self) -> Option<&AttemptError> {
        match self {
            Self::Succeeded => None,
            Self::Requeued { error, .. }
            | Self::Exhausted { error }
            | Self::DroppedAtShutdown { error } => Some(error),
            Self::Unsettled { error, .. } => error.as_ref(),
        }
    }
}

/// One attempt's result, given to the hook set with
/// [`EngineBuilder::with_outcome_hook`](crate::EngineBuilder::with_outcome_hook).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Outcome<K> {
    /// The key.
    pub key: K,
    /// The attempt's number (1 for the first).
    pub attempt: u32,
    /// The priority the key was handed out with.
    pub priority: i32,
    /// The key's group, for a fair engine.
    pub group: Option<Arc<str>>,
    /// How long the handler ran.
    pub duration: Duration,
    /// What became of the key.
    pub kind: OutcomeKind,
}

/// Bits of a requeue cell: the attempt's number (31 bits) above a "set" flag above the priority.
const EPOCH_SHIFT: u32 = 33;
const EPOCH_MASK: u32 = (1 << 31) - 1;
const SET: u64 = 1 << 32;

/// Cells not held by a running worker (see the module docs).
static POOL: Mutex<Vec<&'static AtomicU64>> = Mutex::new(Vec::new());

/// A worker's requeue cell (see the module docs); back to the pool when dropped.
#[derive(Debug)]
pub(crate) struct RequeueCell {
    cell: &'static AtomicU64,
    epoch: u32,
}

impl RequeueCell {
    pub(crate) fn new() -> Self {
        let cell = POOL
            .lock()
            .pop()
            .unwrap_or_else(|| Box::leak(Box::new(AtomicU64::new(0))));
        Self::owning(cell)
    }

    /// Takes `cell` over, its attempt numbers going on from where they are.
    fn owning(cell: &'static AtomicU64) -> Self {
        let epoch = (cell.load(Ordering::Acquire) >> EPOCH_SHIFT) as u32;
        Self { cell, epoch }
    }

    /// A ticket for the next attempt; earlier tickets stop working.
    #[inline]
    pub(crate) fn next(&mut self) -> RequeueTicket {
        self.epoch = self.epoch.wrapping_add(1) & EPOCH_MASK;
        self.cell
            .store(u64::from(self.epoch) << EPOCH_SHIFT, Ordering::Release);
        RequeueTicket {
            cell: self.cell,
            epoch: self.epoch,
        }
    }

    /// The priority the current attempt's handler asked for, if it asked.
    #[inline]
    pub(crate) fn asked(&self) -> Option<i32> {
        let v = self.cell.load(Ordering::Acquire);
        let ours = (v >> EPOCH_SHIFT) as u32 == self.epoch;
        (ours && v & SET != 0).then_some(v as u32 as i32)
    }
}

impl Drop for RequeueCell {
    fn drop(&mut self) {
        POOL.lock().push(self.cell);
    }
}

/// An attempt's handle on its worker's requeue cell.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequeueTicket {
    cell: &'static AtomicU64,
    epoch: u32,
}

impl RequeueTicket {
    fn set(&self, priority: i32) {
        let tag = u64::from(self.epoch) << EPOCH_SHIFT;
        let want = tag | SET | u64::from(priority as u32);
        let mut current = self.cell.load(Ordering::Relaxed);
        while current >> EPOCH_SHIFT == u64::from(self.epoch) {
            match self.cell.compare_exchange_weak(
                current,
                want,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }
}

/// Runs the handler once, turning an error, a timeout or a panic into an [`AttemptError`].
///
/// Every call into user code is inside one `catch_unwind`: the handler's synchronous part (run
/// on the first poll of the block below), the polling of its future, the drop of a future cut by
/// the timeout, and the error's `Display` (caught on its own, to say so). Catching costs nothing
/// while nothing panics.
pub(crate) async fn run_attempt<K, H: Handler<K>>(
    handler: &H,
    attempt: Attempt<K>,
    timeout: Option<Duration>,
) -> Result<(), AttemptError> {
    let run = async move {
        let fut = handler.handle(attempt);
        let result = match timeout {
            None => fut.await,
            Some(limit) => match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => return Err(AttemptError::TimedOut(limit)),
            },
        };
        result.map_err(describe)
    };
    AssertUnwindSafe(run)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(AttemptError::Panicked(panic_message(&*panic))))
}

/// The handler's error as an [`AttemptError`]: its `Display` text, or why there is none.
fn describe<E: fmt::Display>(error: E) -> AttemptError {
    match std::panic::catch_unwind(AssertUnwindSafe(|| error.to_string())) {
        Ok(text) => AttemptError::Failed(text),
        Err(panic) => AttemptError::DisplayPanicked(panic_message(&*panic)),
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_ticket_should_set_only_its_own_attempt() {
        let mut cell = RequeueCell::new();
        let first = cell.next();
        assert_eq!(cell.asked(), None);
        first.set(-100);
        first.set(7);
        assert_eq!(cell.asked(), Some(7), "the last call wins");
        let second = cell.next();
        assert_eq!(cell.asked(), None, "a new attempt starts unset");
        first.set(3);
        assert_eq!(cell.asked(), None, "a stale ticket changes nothing");
        second.set(i32::MIN);
        assert_eq!(cell.asked(), Some(i32::MIN));
    }

    #[test]
    fn requeue_cell_should_reject_tickets_of_its_previous_owner() {
        let raw: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        let mut first = RequeueCell::owning(raw);
        let stale = first.next();
        drop(first);
        // The next worker to take this cell from the pool: the old ticket stays stale.
        let mut second = RequeueCell::owning(raw);
        let _ticket = second.next();
        stale.set(9);
        assert_eq!(second.asked(), None);
    }
}
