//! Dead letters: keys whose retries ran out (or that a worker dead-lettered) stay in the
//! `failed` state with the reason, the last error and the attempt count, until re-queued,
//! added again, or purged once older than the retention.

use super::error::PgError;
use super::queue::{Inner, PgQueue};
use std::time::{Duration, SystemTime};

/// A key in the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailedKey {
    /// The key.
    pub key: String,
    /// Why it was dead-lettered ("retries exhausted", or the reason a worker gave).
    pub reason: String,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// Attempts made (claims, counting those whose worker died).
    pub attempts: u32,
    /// Failures counted before it was dead-lettered.
    pub failures: u32,
    /// When it was dead-lettered (database time).
    pub failed_at: SystemTime,
    /// Its payload.
    pub payload: Option<Vec<u8>>,
}

pub(super) fn failed_sql(s: &str) -> String {
    format!(
        "SELECT key, fail_reason, last_error, attempt, failures, failed_at, payload FROM {s}.items
WHERE queue = $1 AND state = 'failed' ORDER BY failed_at DESC, key LIMIT $2"
    )
}

pub(super) fn requeue_failed_sql(s: &str) -> String {
    let scale = super::add::SEQ_SCALE;
    format!(
        "WITH r AS (
  UPDATE {s}.items SET state = 'queued', ready_at = now(), seq = nextval('{s}.seq') * {scale},
    failures = 0, requeues = 0, attempt = 0, fail_reason = NULL, failed_at = NULL
  WHERE queue = $1 AND key = $2 AND state = 'failed'
  RETURNING key
)
SELECT pg_notify($3, $1) FROM r"
    )
}

pub(super) fn purge_sql(s: &str) -> String {
    format!(
        "DELETE FROM {s}.items
WHERE queue = $1 AND state = 'failed' AND failed_at <= now() - $2::int8 * interval '1 microsecond'"
    )
}

impl PgQueue {
    /// Up to `limit` dead-lettered keys, the most recent first.
    ///
    /// # Errors
    /// [`PgError::Connect`] / [`PgError::Query`] when the database cannot answer.
    pub async fn failed(&self, limit: usize) -> Result<Vec<FailedKey>, PgError> {
        let conn = self.inner.shared.get().await?;
        let st = conn.statement("failed", &self.inner.sql.failed).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = conn
            .client
            .query(&st, &[&self.inner.config.queue, &limit])
            .await
            .map_err(PgError::query("dead-letter list"))?;
        Ok(rows
            .into_iter()
            .map(|r| FailedKey {
                key: r.get(0),
                reason: r.get::<_, Option<String>>(1).unwrap_or_default(),
                last_error: r.get(2),
                attempts: r.get::<_, i32>(3).max(0) as u32,
                failures: r.get::<_, i32>(4).max(0) as u32,
                failed_at: r
                    .get::<_, Option<SystemTime>>(5)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                payload: r.get(6),
            })
            .collect())
    }

    /// Takes `key` out of the dead letters and queues it now with a fresh history; whether it
    /// was there.
    ///
    /// # Errors
    /// As [`failed`](Self::failed).
    pub async fn requeue_failed(&self, key: &str) -> Result<bool, PgError> {
        let conn = self.inner.shared.get().await?;
        let st = conn
            .statement("requeue_failed", &self.inner.sql.requeue_failed)
            .await?;
        let rows = conn
            .client
            .query(
                &st,
                &[&self.inner.config.queue, &key, &self.inner.config.schema],
            )
            .await
            .map_err(PgError::query("dead-letter requeue"))?;
        if !rows.is_empty() {
            self.inner.wake.notify_one();
        }
        Ok(!rows.is_empty())
    }

    /// Deletes the dead letters older than `age` (zero: all of them); how many.
    ///
    /// # Errors
    /// As [`failed`](Self::failed).
    pub async fn purge_failed(&self, age: Duration) -> Result<u64, PgError> {
        self.inner.purge(age).await
    }
}

impl Inner {
    pub(super) async fn purge(&self, age: Duration) -> Result<u64, PgError> {
        let conn = self.shared.get().await?;
        let st = conn.statement("purge", &self.sql.purge).await?;
        let age = super::add::micros(age);
        conn.client
            .execute(&st, &[&self.config.queue, &age])
            .await
            .map_err(PgError::query("dead-letter purge"))
    }

    /// Purges the dead letters past the configured retention.
    pub(super) async fn purge_expired(&self) -> Result<u64, PgError> {
        self.purge(self.config.failed_retention).await
    }
}
