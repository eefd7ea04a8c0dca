//! Names of the attributes and events the engine puts on its spans. Messaging attributes follow
//! the OpenTelemetry messaging semantic conventions; the rest are `traceq.*`.

/// `messaging.system`: always [`SYSTEM`].
pub const MESSAGING_SYSTEM: &str = "messaging.system";
/// The value of `messaging.system`.
pub const SYSTEM: &str = "traceq";
/// `messaging.destination.name`: the engine's queue name.
pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
/// `messaging.operation.type`: `process` on attempt spans.
pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
/// The item key (also a baggage entry).
pub const ITEM_KEY: &str = "traceq.item.key";
/// The job id (also a baggage entry); shared by every segment of one job.
pub const JOB_ID: &str = "traceq.job.id";
/// The attempt number, 1 for the first.
pub const ATTEMPT: &str = "traceq.attempt";
/// Whether the attempt retries an earlier failure.
pub const RETRY: &str = "traceq.retry";
/// The priority the key was handed out with (on attempt spans).
pub const PRIORITY: &str = "traceq.priority";
/// The key's group, for a fair engine (on attempt spans).
pub const GROUP: &str = "traceq.group";
/// Milliseconds the key waited (queued or backing off) before this attempt.
pub const QUEUE_WAIT_MS: &str = "traceq.queue_wait_ms";
/// What became of the attempt or the item.
pub const OUTCOME: &str = "traceq.outcome";
/// Attempts made in the item's life (on the item span of the last segment).
pub const ATTEMPTS_TOTAL: &str = "traceq.attempts_total";
/// The segment number of a long job's trace, 1 for the first.
pub const SEGMENT: &str = "traceq.segment";
/// `true` on the spans of a segment that was cut and continues in a linked trace.
pub const SEGMENT_CONTINUED: &str = "traceq.segment.continued";
/// On a span link between segments: `previous_segment` or `next_segment`.
pub const LINK_KIND: &str = "traceq.link.kind";
/// On the `requeue` event: the backoff chosen, in milliseconds.
pub const BACKOFF_MS: &str = "traceq.backoff_ms";
/// On the `forget` event: why the key was forgotten.
pub const REASON: &str = "traceq.reason";

/// Event on an attempt span: the key was re-queued after a backoff.
pub const EVENT_REQUEUE: &str = "requeue";
/// Event on the last attempt span and the item span: the key was forgotten.
pub const EVENT_FORGET: &str = "forget";
/// Event on the item span: an add coalesced into the already-known key.
pub const EVENT_COALESCED_ADD: &str = "coalesced_add";

/// Item outcome: the handler succeeded.
pub const OUTCOME_SUCCEEDED: &str = "succeeded";
/// Item outcome: the key failed `max_retries + 1` times and was forgotten.
pub const OUTCOME_EXHAUSTED: &str = "exhausted_retries";
/// Item outcome: the engine shut down before the key could be retried or run.
pub const OUTCOME_DROPPED: &str = "dropped_at_shutdown";
/// Attempt outcome: the attempt failed and the key was re-queued.
pub const OUTCOME_REQUEUED: &str = "requeued";
/// Attempt outcome: the attempt was cut by a segment split and continues in the next segment.
pub const OUTCOME_CONTINUED: &str = "continued";
/// Attempt outcome: the attempt was cut short because the engine's `run` future was dropped;
/// the key was queued again (or, while shutting down, dropped).
pub const OUTCOME_CANCELLED: &str = "cancelled";
/// Attempt outcome, durable backend: the queue did not take the attempt's result (its lease was
/// lost and the key claimed again, or the database refused the completion); the item's trace
/// goes on with the key's next attempt.
pub const OUTCOME_UNSETTLED: &str = "unsettled";
