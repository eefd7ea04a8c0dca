//! The per-key trace table kept beside the queue: an entry is created by a key's first add and
//! removed when the key is forgotten.
//!
//! Lock order: this table's lock, then the queue's. Adds and the settling of an attempt both run
//! their queue operation under this lock, so a key's entry never outlives it in the queue, nor an
//! add between "forgotten" and "entry removed" lands in the ended trace.

use super::item::{AttemptEnd, Item, Ranking, TraceConfig};
use super::JobContext;
use crate::engine::{panic_message, AttemptError, OutcomeKind};
use crate::queue::Queue;
use foldhash::fast::RandomState;
use hashbrown::hash_table::{Entry, HashTable};
use opentelemetry::Context;
use parking_lot::Mutex;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Turns a key into the text of its `traceq.item.key` baggage entry and attribute.
pub(crate) type KeyFormat<K> = Arc<dyn Fn(&K) -> Arc<str> + Send + Sync>;
/// Gives a key's job id, if it has one.
pub(crate) type JobIdOf<K> = Arc<dyn Fn(&K) -> Option<String> + Send + Sync>;

pub(crate) struct ItemTraces<K> {
    cfg: Arc<TraceConfig>,
    key_format: KeyFormat<K>,
    job_id_of: Option<JobIdOf<K>>,
    /// Each key's trace. A table hashed by hand, so an operation hashes the key once, outside
    /// the lock, and finds its entry with one probe.
    items: Mutex<HashTable<(K, Arc<Item>)>>,
    hasher: RandomState,
    /// Set once the tracer proved a no-op (see [`Item::start`]): from then on no tracing work.
    noop: AtomicBool,
}

impl<K> fmt::Debug for ItemTraces<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemTraces")
            .field("cfg", &self.cfg)
            .field("items", &self.items.lock().len())
            .finish_non_exhaustive()
    }
}

impl<K> Drop for ItemTraces<K> {
    /// An engine dropped without running to its end still ends its items' traces, so each
    /// carries an outcome.
    fn drop(&mut self) {
        for (_, item) in std::mem::take(self.items.get_mut()) {
            item.drop_at_shutdown();
        }
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> ItemTraces<K> {
    pub(crate) fn new(
        cfg: TraceConfig,
        key_format: KeyFormat<K>,
        job_id_of: Option<JobIdOf<K>>,
    ) -> Self {
        Self {
            cfg: Arc::new(cfg),
            key_format,
            job_id_of,
            items: Mutex::new(HashTable::new()),
            hasher: RandomState::default(),
            noop: AtomicBool::new(false),
        }
    }

    /// Starts `key`'s trace. `Ok(None)` for a no-op tracer; an error when the key formatter or
    /// the job id closure, user code, panicked.
    fn start(&self, key: &K, parent: Option<&Context>) -> Result<Option<Arc<Item>>, AttemptError> {
        let texts = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let job_id = self.job_id_of.as_ref().and_then(|f| f(key));
            ((self.key_format)(key), job_id)
        }));
        let (key_text, job_id) =
            texts.map_err(|panic| AttemptError::KeyFormatPanicked(panic_message(&*panic)))?;
        let item = Item::start(&self.cfg, key_text, job_id, parent);
        if item.is_none() {
            self.noop.store(true, Ordering::Relaxed);
        }
        Ok(item.map(Arc::new))
    }

    fn is_noop(&self) -> bool {
        self.noop.load(Ordering::Relaxed)
    }

    /// Runs one add of `key` (`add` performs it on the queue), starting the key's trace if it has
    /// none, else recording the add as an event on it.
    pub(crate) fn add(
        &self,
        queue: &Queue<K>,
        key: K,
        parent: Option<&Context>,
        add: impl FnOnce(&Queue<K>, K),
    ) {
        if self.is_noop() || queue.is_shutting_down() {
            // No-op tracer; or refused (and counted) by the queue: no trace for a key that
            // will not run.
            return add(queue, key);
        }
        let hash = self.hasher.hash_one(&key);
        let mut items = self.items.lock();
        match items.entry(hash, |(k, _)| *k == key, |(k, _)| self.hasher.hash_one(k)) {
            Entry::Occupied(entry) => entry.get().1.coalesced(parent),
            Entry::Vacant(entry) => {
                // A key whose formatting panicked is queued untraced; its attempt fails with
                // the reason when `begin` tries again.
                if let Ok(Some(item)) = self.start(&key, parent) {
                    entry.insert((key.clone(), item));
                }
            }
        }
        add(queue, key);
    }

    /// The key's trace for the attempt a worker is about to run, with the attempt span started.
    /// `Ok(None)` for a no-op tracer: the attempt runs untraced. An error when the key's trace
    /// could not be started because formatting the key panicked: the attempt fails with it.
    ///
    /// Every add goes through [`add`](Self::add), so a key normally arrives here with its trace.
    /// One does not: a key added while a worker processes it (dirty; the add is recorded on the
    /// running trace) whose attempt then forgets it (success, retries exhausted, or a failure
    /// during shutdown). `done` queues it again, but its entry went with the forgotten trace, so
    /// the key's new life starts its trace here.
    pub(crate) fn begin(
        &self,
        key: &K,
        number: u32,
        ranking: Ranking,
    ) -> Result<Option<(Arc<Item>, JobContext)>, AttemptError> {
        if self.is_noop() {
            return Ok(None);
        }
        let hash = self.hasher.hash_one(key);
        let item = {
            let mut items = self.items.lock();
            match items.entry(hash, |(k, _)| k == key, |(k, _)| self.hasher.hash_one(k)) {
                Entry::Occupied(entry) => Arc::clone(&entry.get().1),
                Entry::Vacant(entry) => {
                    let Some(item) = self.start(key, None)? else {
                        return Ok(None);
                    };
                    entry.insert((key.clone(), Arc::clone(&item)));
                    item
                }
            }
        };
        item.begin_attempt(&self.cfg, number, ranking);
        let job = JobContext::bound(Arc::clone(&self.cfg), Arc::clone(&item));
        Ok(Some((item, job)))
    }

    /// Settles a finished attempt: `settle` runs the queue operation; the entry is removed if the
    /// key was forgotten, then the attempt span (and the item span, if forgotten) ends.
    pub(crate) fn settle(
        &self,
        key: &K,
        item: &Arc<Item>,
        settle: impl FnOnce() -> OutcomeKind,
    ) -> OutcomeKind {
        let hash = self.hasher.hash_one(key);
        let (kind, running) = {
            let mut items = self.items.lock();
            let kind = settle();
            let requeued = matches!(kind, OutcomeKind::Requeued { .. });
            let running: AttemptEnd = item.take_running(&self.cfg, requeued);
            if !requeued {
                // Only if the entry is still the trace this attempt ran in.
                let ours = |(k, i): &(K, Arc<Item>)| k == key && Arc::ptr_eq(i, item);
                if let Ok(entry) = items.find_entry(hash, ours) {
                    entry.remove();
                }
            }
            (kind, running)
        };
        item.close(running, &kind);
        kind
    }

    /// Settles an attempt cut short by a dropped `run` future: `abandon` runs the queue operation
    /// and says whether the key was queued again; if not, its entry is removed and its trace
    /// ends. The attempt span ends with outcome `cancelled`.
    pub(crate) fn abandon(&self, key: &K, item: &Arc<Item>, abandon: impl FnOnce() -> bool) {
        let hash = self.hasher.hash_one(key);
        let (running, requeued) = {
            let mut items = self.items.lock();
            let requeued = abandon();
            let running = item.take_running(&self.cfg, requeued);
            if !requeued {
                let ours = |(k, i): &(K, Arc<Item>)| k == key && Arc::ptr_eq(i, item);
                if let Ok(entry) = items.find_entry(hash, ours) {
                    entry.remove();
                }
            }
            (running, requeued)
        };
        item.cancel(running, !requeued);
    }

    /// Ends the traces of every key left when the engine stopped, as dropped at shutdown.
    pub(crate) fn drop_all(&self) {
        let items = std::mem::take(&mut *self.items.lock());
        for (_, item) in items {
            item.drop_at_shutdown();
        }
    }
}
