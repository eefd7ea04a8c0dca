//! Looking inside a queue: [`PgQueue::list`] shows keys with their state, history and lease, and
//! [`PgQueue::requeue_all_failed`] empties the dead letters into the queue, for operators (the
//! `traceq queue` command) and dashboards.
//!
//! Why one statement per filter rather than one statement with the state as a parameter: each
//! state has a partial index (`items_ready`, `items_leases`, `items_failed`), and only a
//! predicate written out in the statement lets the planner use it, so a list of the ten newest
//! dead letters reads ten rows of the index rather than the whole queue. Every time is measured
//! against the database's `now()`, as the rest of the queue does, so a listing means the same on
//! any machine.

use super::error::PgError;
use super::queue::PgQueue;
use std::fmt;
use std::time::{Duration, SystemTime};

/// Which keys [`PgQueue::list`] shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ListFilter {
    /// Queued and ready: by priority (higher first), then ready time and add order, as claims
    /// take them.
    Ready,
    /// Queued, waiting out a delay or backoff: the soonest ready first.
    Waiting,
    /// Claimed by a worker: the soonest lease expiry first.
    Processing,
    /// In the dead letters: the most recent first.
    Failed,
    /// No work left, only a failure history kept until `forget`: by key.
    Idle,
    /// Every key: ready, waiting, processing, failed, then idle, each in its own order.
    All,
}

/// The state of a listed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyState {
    /// Queued and ready to be claimed.
    Ready,
    /// Queued, ready at a later time.
    Waiting,
    /// Claimed by a worker (its lease may have expired, awaiting reclaim).
    Processing,
    /// In the dead letters.
    Failed,
    /// No work left; kept for its failure history.
    Idle,
}

impl KeyState {
    /// The state's name: `ready`, `waiting`, `processing`, `failed` or `idle`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Waiting => "waiting",
            Self::Processing => "processing",
            Self::Failed => "failed",
            Self::Idle => "idle",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "ready" => Self::Ready,
            "waiting" => Self::Waiting,
            "processing" => Self::Processing,
            "failed" => Self::Failed,
            // The table's check constraint leaves only 'idle'.
            _ => Self::Idle,
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key of a queue, as [`PgQueue::list`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListedKey {
    /// The key.
    pub key: String,
    /// Its state.
    pub state: KeyState,
    /// The priority it is queued at.
    pub priority: i32,
    /// Claims of the key since it was last finished or forgotten (counting claims whose worker
    /// died); for a processing key, the attempt running.
    pub attempt: u32,
    /// Failures counted (the exponent of its backoff).
    pub failures: u32,
    /// When it is (or was) ready, database time.
    pub ready_at: SystemTime,
    /// How long until it is ready: zero once it is.
    pub ready_in: Duration,
    /// How long it has been ready: zero while it waits. For a ready key, its wait so far.
    pub ready_for: Duration,
    /// The worker holding its lease (a processing key).
    pub lease_owner: Option<String>,
    /// How long its lease still runs (a processing key): zero when it expired and the key
    /// awaits a reclaim.
    pub lease_expires_in: Option<Duration>,
    /// Whether it was added again while being processed, so it runs once more after `done`.
    pub dirty: bool,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// Why it was dead-lettered (a failed key).
    pub fail_reason: Option<String>,
    /// How long ago it was dead-lettered (a failed key).
    pub failed_for: Option<Duration>,
    /// When its row was first added, database time.
    pub added_at: SystemTime,
    /// The payload's size in bytes, if it has one (the payload itself is not read).
    pub payload_len: Option<usize>,
}

/// The key's state, as [`KeyState`] names it, from the row's columns.
const STATE_EXPR: &str = "CASE WHEN state = 'queued' AND ready_at <= now() THEN 'ready' \
     WHEN state = 'queued' THEN 'waiting' ELSE state END";

/// The list statement for `filter`: `$1` queue, `$2` most rows.
pub(super) fn list_sql(s: &str, filter: ListFilter) -> String {
    let (predicate, order) = match filter {
        ListFilter::Ready => (
            " AND state = 'queued' AND ready_at <= now()",
            "priority DESC, ready_at, seq".to_owned(),
        ),
        ListFilter::Waiting => (
            " AND state = 'queued' AND ready_at > now()",
            "ready_at, priority DESC, seq".to_owned(),
        ),
        ListFilter::Processing => (" AND state = 'processing'", "lease_expires_at, key".to_owned()),
        ListFilter::Failed => (" AND state = 'failed'", "failed_at DESC, key".to_owned()),
        ListFilter::Idle => (" AND state = 'idle'", "key".to_owned()),
        ListFilter::All => (
            "",
            format!(
                "CASE {STATE_EXPR} WHEN 'ready' THEN 0 WHEN 'waiting' THEN 1 WHEN 'processing' THEN 2
                   WHEN 'failed' THEN 3 ELSE 4 END,
                 CASE WHEN state = 'queued' AND ready_at <= now() THEN priority END DESC,
                 CASE WHEN state = 'queued' THEN ready_at WHEN state = 'processing' THEN lease_expires_at END,
                 CASE WHEN state = 'failed' THEN failed_at END DESC,
                 seq, key"
            ),
        ),
    };
    format!(
        "SELECT key, {STATE_EXPR}, priority, attempt, failures, ready_at,
       extract(epoch FROM ready_at - now())::float8,
       lease_owner, extract(epoch FROM lease_expires_at - now())::float8,
       dirty_ready_at IS NOT NULL, last_error, fail_reason,
       extract(epoch FROM now() - failed_at)::float8, added_at, octet_length(payload)
FROM {s}.items WHERE queue = $1{predicate}
ORDER BY {order} LIMIT $2"
    )
}

/// Requeues every dead letter of `$1` at once, notifying `$2`: the keys requeued (and one row
/// with a NULL key when a notification was sent).
pub(super) fn requeue_all_failed_sql(s: &str) -> String {
    // The same update as `requeue_failed`, for every dead letter of the queue.
    // Locked in key order first, as every other writer locks them (see `add`).
    let scale = super::add::SEQ_SCALE;
    format!(
        "WITH l AS (
  SELECT key FROM {s}.items WHERE queue = $1 AND state = 'failed' ORDER BY key FOR UPDATE
), r AS (
  UPDATE {s}.items i SET state = 'queued', ready_at = now(), seq = nextval('{s}.seq') * {scale},
    failures = 0, requeues = 0, attempt = 0, fail_reason = NULL, failed_at = NULL
  FROM l
  WHERE i.queue = $1 AND i.key = l.key AND i.state = 'failed'
  RETURNING i.key
)
SELECT key FROM r
UNION ALL SELECT NULL FROM (SELECT pg_notify($2, $1) FROM r LIMIT 1) AS n"
    )
}

fn statement_name(filter: ListFilter) -> &'static str {
    match filter {
        ListFilter::Ready => "list_ready",
        ListFilter::Waiting => "list_waiting",
        ListFilter::Processing => "list_processing",
        ListFilter::Failed => "list_failed",
        ListFilter::Idle => "list_idle",
        ListFilter::All => "list_all",
    }
}

/// Seconds (a database interval) as a duration, negative ones as zero.
fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

impl PgQueue {
    /// Up to `limit` keys of the queue that `filter` selects, each with its state, history and
    /// lease, in the order the filter documents. Reads only: no key is claimed or changed.
    ///
    /// # Errors
    /// [`PgError::Connect`] / [`PgError::Query`] when the database cannot answer.
    pub async fn list(&self, filter: ListFilter, limit: usize) -> Result<Vec<ListedKey>, PgError> {
        let conn = self.inner.shared.get().await?;
        // Formatted per call (cheap next to the round trip); prepared once per connection.
        let sql = list_sql(&self.inner.config.schema, filter);
        let st = conn.statement(statement_name(filter), &sql).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = conn
            .client
            .query(&st, &[&self.inner.config.queue, &limit])
            .await
            .map_err(PgError::query("key list"))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let state = KeyState::parse(r.get::<_, &str>(1));
                let ready_in: f64 = r.get(6);
                ListedKey {
                    key: r.get(0),
                    state,
                    priority: r.get(2),
                    attempt: r.get::<_, i32>(3).max(0) as u32,
                    failures: r.get::<_, i32>(4).max(0) as u32,
                    ready_at: r.get(5),
                    ready_in: secs(ready_in),
                    ready_for: secs(-ready_in),
                    lease_owner: r.get(7),
                    lease_expires_in: r.get::<_, Option<f64>>(8).map(secs),
                    dirty: r.get(9),
                    last_error: r.get(10),
                    fail_reason: r.get(11),
                    failed_for: r.get::<_, Option<f64>>(12).map(secs),
                    added_at: r.get(13),
                    payload_len: r
                        .get::<_, Option<i32>>(14)
                        .map(|n| usize::try_from(n).unwrap_or(0)),
                }
            })
            .collect())
    }

    /// Takes every key out of the dead letters and queues it now with a fresh history, in one
    /// statement (as [`requeue_failed`](Self::requeue_failed) for each); the keys requeued.
    ///
    /// # Errors
    /// As [`list`](Self::list).
    pub async fn requeue_all_failed(&self) -> Result<Vec<String>, PgError> {
        let conn = self.inner.shared.get().await?;
        let sql = requeue_all_failed_sql(&self.inner.config.schema);
        let st = conn.statement("requeue_all_failed", &sql).await?;
        let rows = conn
            .client
            .query(&st, &[&self.inner.config.queue, &self.inner.config.schema])
            .await
            .map_err(PgError::query("dead-letter requeue"))?;
        let keys: Vec<String> = rows
            .into_iter()
            .filter_map(|r| r.get::<_, Option<String>>(0))
            .collect();
        if !keys.is_empty() {
            self.inner.wake.notify_one();
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestSchema;
    use super::*;
    use crate::AddOptions;

    const FILTERS: [ListFilter; 6] = [
        ListFilter::Ready,
        ListFilter::Waiting,
        ListFilter::Processing,
        ListFilter::Failed,
        ListFilter::Idle,
        ListFilter::All,
    ];

    #[test]
    fn list_sql_should_write_each_state_predicate_out_for_its_partial_index() {
        for filter in FILTERS {
            let sql = list_sql("jobs", filter);
            assert!(sql.contains("FROM jobs.items WHERE queue = $1"), "{sql}");
            assert!(sql.trim_end().ends_with("LIMIT $2"), "{sql}");
        }
        let ready = list_sql("jobs", ListFilter::Ready);
        // The predicate of `items_ready` and of the claim statement, so the index serves it.
        assert!(ready.contains("AND state = 'queued' AND ready_at <= now()"));
        assert!(ready.contains("ORDER BY priority DESC, ready_at, seq"));
        assert!(list_sql("jobs", ListFilter::Failed).contains("ORDER BY failed_at DESC"));
        assert!(!list_sql("jobs", ListFilter::All).contains("AND state ="));
    }

    #[test]
    fn list_statements_should_have_one_name_per_text() {
        let names: std::collections::HashSet<_> =
            FILTERS.iter().map(|f| statement_name(*f)).collect();
        let texts: std::collections::HashSet<_> =
            FILTERS.iter().map(|f| list_sql("s", *f)).collect();
        assert_eq!((names.len(), texts.len()), (FILTERS.len(), FILTERS.len()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_should_show_each_state_in_its_order() {
        let Some(db) = TestSchema::new("list_should_show_each_state_in_its_order") else {
            return;
        };
        let q = db.queue(db.config("q").with_max_retries(0)).await.unwrap();
        q.add("ready-low").await.unwrap();
        q.add_with("ready-high", AddOptions::new().with_priority(5))
            .await
            .unwrap();
        q.add_after("wait-late", Duration::from_secs(200))
            .await
            .unwrap();
        q.add_after("wait-soon", Duration::from_secs(100))
            .await
            .unwrap();
        q.add("run").await.unwrap();
        q.add("dead").await.unwrap();
        // Claims by priority: ready-high first; take keys until `run` and `dead` are held.
        let mut held = Vec::new();
        while held.len() < 4 {
            held.push(q.try_claim().await.unwrap().expect("a ready key"));
        }
        let mut by_key = std::collections::HashMap::new();
        for c in held {
            by_key.insert(c.key.clone(), c);
        }
        for key in ["ready-high", "ready-low"] {
            q.release(&by_key[key]).await.unwrap();
        }
        q.fail(&by_key["dead"], "boom\nsecond line").await.unwrap();

        let keys = |v: Vec<ListedKey>| v.into_iter().map(|k| k.key).collect::<Vec<_>>();
        assert_eq!(
            keys(q.list(ListFilter::Ready, 10).await.unwrap()),
            ["ready-high", "ready-low"]
        );
        assert_eq!(
            keys(q.list(ListFilter::Waiting, 10).await.unwrap()),
            ["wait-soon", "wait-late"]
        );
        let processing = q.list(ListFilter::Processing, 10).await.unwrap();
        assert_eq!(processing.len(), 1);
        let run = &processing[0];
        assert_eq!(
            (run.key.as_str(), run.state, run.attempt),
            ("run", KeyState::Processing, 1)
        );
        assert!(run.lease_owner.is_some());
        assert!(run.lease_expires_in.is_some_and(|d| d > Duration::ZERO));
        let failed = q.list(ListFilter::Failed, 10).await.unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].state, KeyState::Failed);
        assert_eq!(failed[0].last_error.as_deref(), Some("boom\nsecond line"));
        assert_eq!(failed[0].fail_reason.as_deref(), Some("retries exhausted"));
        assert!(failed[0].failed_for.is_some());
        let waiting = &q.list(ListFilter::Waiting, 1).await.unwrap()[0];
        assert!(waiting.ready_in > Duration::from_secs(90), "{waiting:?}");
        assert_eq!(
            keys(q.list(ListFilter::All, 10).await.unwrap()),
            [
                "ready-high",
                "ready-low",
                "wait-soon",
                "wait-late",
                "run",
                "dead"
            ]
        );
        assert_eq!(
            q.list(ListFilter::All, 2).await.unwrap().len(),
            2,
            "the limit holds"
        );
        // Listing claimed nothing.
        let stats = q.stats().await.unwrap();
        assert_eq!(
            (stats.ready, stats.waiting, stats.processing, stats.failed),
            (2, 2, 1, 1)
        );

        assert_eq!(q.requeue_all_failed().await.unwrap(), ["dead"]);
        assert!(q.requeue_all_failed().await.unwrap().is_empty());
        assert!(q.list(ListFilter::Failed, 10).await.unwrap().is_empty());
        q.shutdown().await.unwrap();
    }
}
