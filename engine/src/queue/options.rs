//! What goes into the queue with a key ([`AddOptions`]) and what comes out with it ([`Claim`]).
//!
//! Why one options type rather than more `add_*` methods: a priority combines with every kind of
//! add (now, after a delay, after the rate limiter's delay), as in controller-runtime's
//! `AddWithOpts`; `add`, `add_after` and `add_rate_limited` stay as the short forms of the default
//! priority.

use super::ranked::DEFAULT_PRIORITY;
use std::sync::Arc;
use std::time::Duration;

/// How [`Queue::add_with`](crate::Queue::add_with) adds a key: its priority, a delay, and
/// whether the rate limiter sets the delay. The default is a plain [`add`](crate::Queue::add).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use traceq_engine::{AddOptions, Queue, LOW_PRIORITY};
///
/// let queue = Queue::<&str>::new();
/// // After a restart, the initial list goes in at low priority...
/// queue.add_with("unchanged", AddOptions::new().with_priority(LOW_PRIORITY));
/// // ...and a change that arrives meanwhile is handed out first.
/// queue.add("changed");
/// assert_eq!(queue.try_get(), Some("changed"));
///
/// // A retry later, at the priority it had.
/// let claim = queue.try_claim().unwrap();
/// let retry = AddOptions::new()
///     .with_priority(claim.priority)
///     .with_delay(Duration::from_secs(1));
/// queue.done(&claim.key);
/// queue.add_with(claim.key, retry);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AddOptions {
    /// Higher is handed out first; FIFO among keys of one priority. Default
    /// [`DEFAULT_PRIORITY`] (0); [`LOW_PRIORITY`](crate::LOW_PRIORITY) for initial lists and
    /// resyncs.
    pub priority: i32,
    /// Queue the key after this delay (clamped to [`MAX_DELAY`](crate::MAX_DELAY)); zero queues it
    /// now. Default zero.
    pub delay: Duration,
    /// Queue the key after the rate limiter's delay, counting a requeue, as
    /// [`add_rate_limited`](crate::Queue::add_rate_limited) does. With a `delay` too, the earlier
    /// of the two (as controller-runtime does). Default off.
    pub rate_limited: bool,
}

impl Default for AddOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl AddOptions {
    /// A plain add: the default priority, no delay, not rate limited.
    pub const fn new() -> Self {
        Self {
            priority: DEFAULT_PRIORITY,
            delay: Duration::ZERO,
            rate_limited: false,
        }
    }

    /// The key's priority; see [`priority`](Self::priority).
    #[must_use]
    pub const fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Queue the key after `delay`; see [`delay`](Self::delay).
    #[must_use]
    pub const fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Queue the key after the rate limiter's delay; see [`rate_limited`](Self::rate_limited).
    #[must_use]
    pub const fn with_rate_limited(mut self, on: bool) -> Self {
        self.rate_limited = on;
        self
    }
}

/// A key handed out by [`Queue::claim`](crate::Queue::claim), with what the worker needs to know
/// about it. The worker must call [`Queue::done`](crate::Queue::done) with the key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claim<K> {
    /// The key.
    pub key: K,
    /// The priority it was queued at: keep it for a retry (controller-runtime's
    /// `GetWithPriority`).
    pub priority: i32,
    /// The name of its group (the `Display` text of what the fairness function returned), for a
    /// fair queue; `None` otherwise.
    pub group: Option<Arc<str>>,
}
