//! Fair scheduling across groups of keys: the configuration ([`Fairness`]) and the table that
//! maps a key to its group.
//!
//! Why groups: one tenant's or namespace's burst must not starve another's single key
//! (kubernetes#25744). A FIFO hands out a burst of 100,000 keys before the key queued just after
//! it; a fair queue takes turns between the groups that have keys queued, so that with F groups
//! waiting a group waits at most F - 1 hand-outs (with weights, at most the sum of the other
//! groups' weights), whatever the others queued. Within a group keys stay FIFO, and priorities
//! stay strict: turns are taken within the highest priority that has keys ready.
//!
//! Why a key's group is computed once, when the key enters the queue: the group function is user
//! code, and it runs under the queue's lock. Calling it once per key held (not per coalesced add,
//! not on a dirty requeue) keeps that cost off the paths that do not need it. A panic in it is
//! caught: the key joins a group of its own, named [`PANICKED_GROUP`], so that it is not lost.
//!
//! Why the group table is type-erased: [`Queue`](crate::Queue) has one type parameter, the key;
//! the group type is the user's (a namespace `String`, a tenant id), hidden behind
//! `GroupTable<K>`.

use foldhash::fast::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

/// The shortest turn a fair queue that shares handler time gives a group of weight 1; a shorter
/// quantum is raised to it.
pub const MIN_QUANTUM: Duration = Duration::from_micros(1);
/// The longest turn a fair queue that shares handler time gives a group of weight 1; a longer
/// quantum is lowered to it.
pub const MAX_QUANTUM: Duration = Duration::from_secs(60 * 60);
/// The name of the group a key joins when the group function panicked for it.
pub const PANICKED_GROUP: &str = "?";

type GroupOf<K, G> = Box<dyn Fn(&K) -> G + Send + Sync>;
type WeightOf<G> = Box<dyn Fn(&G) -> u32 + Send + Sync>;

/// How a fair queue shares its hand-outs among groups of keys; given to
/// [`QueueConfig::with_fairness`](crate::QueueConfig::with_fairness) or
/// [`EngineBuilder::with_fairness`](crate::EngineBuilder::with_fairness).
///
/// Ready keys are handed out round-robin across the groups that have keys ready, FIFO within a
/// group. Priorities stay strict: a key of a higher priority is handed out before any key of a
/// lower one, and the groups take turns within each priority. Options:
/// - [`with_weight`](Self::with_weight): a group of weight w gets w hand-outs per turn, so with
///   several groups waiting, a group waits at most the sum of the other groups' weights.
/// - [`with_max_in_process`](Self::with_max_in_process): at most n keys of one group in process
///   at once; the group's other keys wait (they still count in [`len`](crate::Queue::len)) while
///   other groups' keys are handed out.
/// - [`with_handler_time_quantum`](Self::with_handler_time_quantum): share handler time rather
///   than hand-outs (deficit round robin on the measured time from hand-out to `done`).
///
/// # Examples
/// ```
/// use std::num::NonZeroUsize;
/// use traceq_engine::{Fairness, Queue, QueueConfig};
///
/// // Keys are "namespace/name"; the namespace is the group.
/// fn namespace(key: &String) -> String {
///     key.split('/').next().unwrap_or_default().to_owned()
/// }
/// let queue = Queue::with_config(
///     QueueConfig::default().with_fairness(
///         Fairness::by(namespace)
///             .with_weight(|ns: &String| if ns == "kube-system" { 4 } else { 1 })
///             .with_max_in_process(NonZeroUsize::new(8).unwrap()),
///     ),
/// );
/// for i in 0..1_000 {
///     queue.add(format!("batch/job-{i}"));
/// }
/// queue.add("web/frontend".to_owned());
/// assert_eq!(queue.try_get().as_deref(), Some("batch/job-0"));
/// // The single key of `web` is next, not behind the 999 others of `batch`.
/// assert_eq!(queue.try_get().as_deref(), Some("web/frontend"));
/// ```
pub struct Fairness<K, G> {
    group_of: GroupOf<K, G>,
    weight_of: Option<WeightOf<G>>,
    max_in_process: Option<NonZeroUsize>,
    quantum: Option<Duration>,
}

impl<K, G> fmt::Debug for Fairness<K, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fairness")
            .field("weighted", &self.weight_of.is_some())
            .field("max_in_process", &self.max_in_process)
            .field("quantum", &self.quantum)
            .finish_non_exhaustive()
    }
}

impl<K, G, F> From<F> for Fairness<K, G>
where
    F: Fn(&K) -> G + Send + Sync + 'static,
{
    /// `Fairness::by(group_of)`, so that `with_fairness(|key| group)` reads as it should.
    fn from(group_of: F) -> Self {
        Self::by(group_of)
    }
}

impl<K, G> Fairness<K, G> {
    /// Fair across the groups `group_of` puts keys in (a namespace, a tenant), every group of
    /// weight 1, no cap on keys in process, sharing hand-outs.
    ///
    /// `group_of` is called once each time a key enters the queue (not for an add that
    /// coalesces, nor when a dirty key is queued again), under the queue's lock: keep it cheap,
    /// and never call the queue from it. Return a cheap value: an integer, a `&'static str`, an
    /// `Arc<str>` the key holds; a `String` costs an allocation per key. The group's `Display`
    /// text names it to handlers and on attempt spans (`traceq.group`). A panic in it is caught:
    /// the key joins the group [`PANICKED_GROUP`], and the first panic is reported on stderr.
    pub fn by(group_of: impl Fn(&K) -> G + Send + Sync + 'static) -> Self {
        Self {
            group_of: Box::new(group_of),
            weight_of: None,
            max_in_process: None,
            quantum: None,
        }
    }

    /// Each group's weight: a group of weight w is handed out up to w keys per turn (or, with
    /// [`with_handler_time_quantum`](Self::with_handler_time_quantum), w quanta of handler time).
    /// Asked once when a group first has a key in the queue, and kept while it has any. A weight
    /// of 0 counts as 1: every group with keys ready is served. Default: 1 for every group.
    #[must_use]
    pub fn with_weight(mut self, weight_of: impl Fn(&G) -> u32 + Send + Sync + 'static) -> Self {
        self.weight_of = Some(Box::new(weight_of));
        self
    }

    /// At most `n` keys of one group in process at once. A group at its cap is skipped until one
    /// of its keys is done; its queued keys still count in [`len`](crate::Queue::len), so `get`
    /// can wait while `len` is not zero. Default: no cap.
    #[must_use]
    pub fn with_max_in_process(mut self, n: NonZeroUsize) -> Self {
        self.max_in_process = Some(n);
        self
    }

    /// Share handler time rather than hand-outs: deficit round robin in which each turn credits a
    /// group `quantum × weight` of time, each hand-out charges the group's recent mean time from
    /// hand-out to `done` (an estimate corrected at `done` with the time measured), and a group in
    /// debt sits out turns until its credit is positive again. So a tenant whose keys take 10 s
    /// each gets about as much worker time as one whose keys take 10 ms, not a thousand times
    /// more. The quantum is clamped to [`MIN_QUANTUM`]..=[`MAX_QUANTUM`]. This turns on the
    /// queue's time metrics, which measure the same time. Default: off (each hand-out costs 1).
    #[must_use]
    pub fn with_handler_time_quantum(mut self, quantum: Duration) -> Self {
        self.quantum = Some(quantum.clamp(MIN_QUANTUM, MAX_QUANTUM));
        self
    }
}

impl<K, G> Fairness<K, G>
where
    K: 'static,
    G: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
{
    /// Erases the group type.
    pub(crate) fn plan(self) -> FairPlan<K> {
        FairPlan {
            table: Box::new(Table {
                group_of: self.group_of,
                weight_of: self.weight_of,
                index: HashMap::default(),
                by_index: Vec::new(),
                made: None,
            }),
            max_in_process: self
                .max_in_process
                .map_or(u32::MAX, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            cost: match self.quantum {
                None => Cost::HandOuts,
                Some(q) => Cost::HandlerTime {
                    quantum_ns: i64::try_from(q.as_nanos()).unwrap_or(i64::MAX),
                },
            },
        }
    }
}

/// What a hand-out costs a group's credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cost {
    /// 1 per hand-out; a turn credits the group its weight.
    HandOuts,
    /// The group's estimated handler time, in nanoseconds; a turn credits `quantum_ns × weight`.
    HandlerTime { quantum_ns: i64 },
}

/// A [`Fairness`] with its group type erased, as the queue keeps it.
pub(crate) struct FairPlan<K> {
    pub(super) table: Box<dyn GroupTable<K>>,
    /// `u32::MAX` for no cap.
    pub(super) max_in_process: u32,
    pub(super) cost: Cost,
}

impl<K> fmt::Debug for FairPlan<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FairPlan")
            .field("max_in_process", &self.max_in_process)
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

/// What [`GroupTable::intern`] found, packed in a `u64` so that it comes back out of
/// `catch_unwind` in a register: the group's index, and [`NEW`] when it is new.
pub(super) const NEW: u64 = 1 << 32;

/// Maps keys to group indexes, hiding the group type.
pub(super) trait GroupTable<K>: Send + Sync {
    /// The group of `key`: its index, or, when no key of its group is held, a new entry at index
    /// `next` (with [`NEW`] set; its name and weight are then in [`take_new`](Self::take_new)).
    /// May panic (user code); the table is left as it was then.
    fn intern(&mut self, key: &K, next: u32) -> u64;
    /// The name and weight of the group `intern` just made.
    fn take_new(&mut self) -> (Arc<str>, u32);
    /// Forgets the group at `index`: its last key left.
    fn remove(&mut self, index: u32);
}

struct Table<K, G> {
    group_of: GroupOf<K, G>,
    weight_of: Option<WeightOf<G>>,
    index: HashMap<G, u32, RandomState>,
    /// The group at each index, to remove it by index.
    by_index: Vec<Option<G>>,
    /// The name and weight of the group `intern` made last.
    made: Option<(Arc<str>, u32)>,
}

impl<K, G> GroupTable<K> for Table<K, G>
where
    K: 'static,
    G: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
{
    #[inline]
    fn intern(&mut self, key: &K, next: u32) -> u64 {
        let group = (self.group_of)(key);
        if let Some(&at) = self.index.get(&group) {
            return u64::from(at);
        }
        self.insert(group, next)
    }

    fn take_new(&mut self) -> (Arc<str>, u32) {
        self.made
            .take()
            .unwrap_or_else(|| (PANICKED_GROUP.into(), 1))
    }

    fn remove(&mut self, index: u32) {
        if let Some(group) = self.by_index.get_mut(index as usize).and_then(Option::take) {
            self.index.remove(&group);
        }
    }
}

impl<K, G> Table<K, G>
where
    G: Hash + Eq + Clone + fmt::Display,
{
    /// Records a new group at index `next`.
    #[inline(never)]
    fn insert(&mut self, group: G, next: u32) -> u64 {
        let weight = self.weight_of.as_ref().map_or(1, |w| w(&group)).max(1);
        let name: Arc<str> = group.to_string().into();
        let at = next as usize;
        if self.by_index.len() <= at {
            self.by_index.resize_with(at + 1, || None);
        }
        self.by_index[at] = Some(group.clone());
        self.index.insert(group, next);
        self.made = Some((name, weight));
        u64::from(next) | NEW
    }
}

/// Runs `intern`, catching a panic of the user's code in it: the packed result, or the panic's
/// message.
#[inline]
pub(super) fn intern_caught<K>(
    table: &mut dyn GroupTable<K>,
    key: &K,
    next: u32,
) -> Result<u64, String> {
    let mut found = 0;
    match std::panic::catch_unwind(AssertUnwindSafe(|| found = table.intern(key, next))) {
        Ok(()) => Ok(found),
        Err(panic) => Err(crate::engine::panic_message(&*panic)),
    }
}
