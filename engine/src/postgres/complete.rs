//! Completions: `done`, `succeed`, `fail`, `dead_letter` and `release`, coalesced by the
//! completer task into one statement per batch (the batch's keys, tokens and outcomes as
//! arrays, `unnest`ed), so throughput does not pay a round trip per key.
//!
//! Fencing: a completion applies only to a row still `processing` under the same owner and
//! lease token as the claim. A worker whose lease expired and whose key was claimed again (by
//! anyone, this process included) holds an old token: its completion matches no row, changes
//! nothing, and is answered [`Settled::Stale`], counted in
//! [`PgCounters::stale_completions`](super::PgCounters::stale_completions) and logged. A late
//! completion whose lease expired but was not yet reclaimed still applies: nobody else ran the
//! key.

use super::claim::PgClaim;
use super::conn::{error_chain, Conn};
use super::error::PgError;
use super::queue::{Inner, PgQueue};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What became of a claimed key when its worker finished it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Settled {
    /// The key is gone from the queue (no add arrived while it ran, no history kept).
    Finished,
    /// The key has no work left but keeps its failure history until [`PgQueue::forget`]
    /// (a plain [`done`](PgQueue::done) after failures).
    Kept,
    /// The key is queued again: it was added while it ran (dirty), or it failed and waits out
    /// its backoff.
    Requeued {
        /// Until it is ready (zero: ready now).
        delay: Duration,
        /// The failure exhausted its retries, but an add while it ran queued it afresh.
        exhausted: bool,
    },
    /// The key is in the dead letters (see [`PgQueue::failed`]).
    DeadLettered,
    /// The key was given back unrun, queued where it was.
    Released,
    /// Refused: the claim's lease was lost and the key claimed again; nothing was changed.
    Stale,
}

/// What a completion asks for; the statement's `kind` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Done = 0,
    Succeed = 1,
    Fail = 2,
    DeadLetter = 3,
    Release = 4,
}

/// A completion on its way to the completer.
pub(super) struct CompletionRequest {
    key: String,
    token: i64,
    kind: Kind,
    error: Option<String>,
    reason: Option<String>,
    /// A new trace identity for the key (the engine began or cut its trace), else `None`.
    trace: Option<Vec<u8>>,
    /// The least delay before a failed key's retry, in µs (a token bucket of the process).
    min_delay: i64,
    reply: oneshot::Sender<Result<Settled, PgError>>,
}

/// The completion statement: `$1` queue, `$2`..`$6` keys, tokens, kinds, errors, reasons,
/// `$7`/`$8` backoff base and max in µs, `$9` owner, `$10` max retries, `$11` channel, `$12`
/// new trace identities (null: keep the key's), `$13` least retry delays in µs.
///
/// A key that is forgotten (success, or retries exhausted) loses its trace identity, whose
/// root the engine ends: a later add, or the dirty add that requeues it now, starts a new one.
pub(super) fn complete_sql(s: &str) -> String {
    let backoff = super::add::backoff_sql("i.failures");
    let scale = super::add::SEQ_SCALE;
    format!(
        "WITH c AS (
  SELECT * FROM unnest($2::text[], $3::int8[], $4::int2[], $5::text[], $6::text[], $12::bytea[],
                       $13::int8[])
    AS c(key, token, kind, error, reason, trace, min_delay)
), m AS (
  SELECT i.key, c.token, c.kind, c.error, c.reason, c.trace, coalesce(c.min_delay, 0) AS min_delay,
         i.dirty_ready_at IS NOT NULL AS dirty,
         (c.kind = 3 OR (c.kind = 2 AND i.failures >= $10)) AS exhausted,
         (i.dirty_ready_at IS NULL
          AND (c.kind = 1 OR (c.kind = 0 AND i.failures = 0 AND i.requeues = 0))) AS finish
  FROM {s}.items i JOIN c ON i.key = c.key
  WHERE i.queue = $1 AND i.state = 'processing' AND i.lease_token = c.token AND i.lease_owner = $9
  -- locked in key order, as adds lock them: no deadlock with a concurrent add
  ORDER BY i.key
  FOR UPDATE OF i
), gone AS (
  DELETE FROM {s}.items i USING m
  WHERE i.queue = $1 AND i.key = m.key AND m.finish
  RETURNING m.token
), kept AS (
  UPDATE {s}.items i SET
    state = CASE WHEN m.dirty THEN 'queued'
                 WHEN m.exhausted THEN 'failed'
                 WHEN m.kind IN (2, 4) THEN 'queued'
                 ELSE 'idle' END,
    ready_at = CASE WHEN m.kind = 4 THEN least(i.ready_at, coalesce(i.dirty_ready_at, i.ready_at))
                    WHEN m.kind = 2 AND NOT m.exhausted
                      THEN least(coalesce(i.dirty_ready_at, 'infinity'),
                                 now() + greatest({backoff}, m.min_delay) * interval '1 microsecond')
                    ELSE coalesce(i.dirty_ready_at, now()) END,
    seq = CASE WHEN m.kind = 4 THEN i.seq ELSE nextval('{s}.seq') * {scale} END,
    attempt = CASE WHEN m.kind = 4 THEN greatest(i.attempt - 1, 0) ELSE i.attempt END,
    failures = CASE WHEN m.kind = 1 OR (m.exhausted AND m.dirty) THEN 0
                    WHEN m.kind = 2 AND NOT m.exhausted THEN i.failures + 1
                    ELSE i.failures END,
    requeues = CASE WHEN m.kind = 1 OR (m.exhausted AND m.dirty) THEN 0
                    WHEN m.kind = 2 AND NOT m.exhausted THEN i.requeues + 1
                    ELSE i.requeues END,
    last_error = CASE WHEN m.kind IN (2, 3) THEN m.error ELSE i.last_error END,
    fail_reason = CASE WHEN m.exhausted AND NOT m.dirty
                       THEN coalesce(m.reason, 'retries exhausted') END,
    failed_at = CASE WHEN m.exhausted AND NOT m.dirty THEN now() END,
    trace = CASE WHEN m.kind = 1 OR m.exhausted THEN NULL ELSE coalesce(m.trace, i.trace) END,
    dirty_ready_at = NULL,
    lease_owner = NULL,
    lease_token = NULL,
    lease_expires_at = NULL
  FROM m
  WHERE i.queue = $1 AND i.key = m.key AND NOT m.finish
  RETURNING m.token, i.state, greatest(extract(epoch FROM i.ready_at - now()), 0)::float8 AS delay,
            m.exhausted, m.kind
)
SELECT token, 'finished', 0::float8, false, 1::int2 FROM gone
UNION ALL SELECT token, state, delay, exhausted, kind FROM kept
UNION ALL SELECT NULL::int8, 'notified', 0::float8, false, 0::int2
  FROM (SELECT pg_notify($11, $1) FROM kept WHERE state = 'queued' AND delay <= 0 LIMIT 1) AS n"
    )
}

impl PgQueue {
    /// Marks the claimed key done, as [`Queue::done`](crate::Queue::done): queued again if it
    /// was added while it ran, else gone (or [`Settled::Kept`] with its failure history).
    ///
    /// # Errors
    /// [`PgError::ShutDown`] after shutdown; [`PgError::Query`] when the statement is refused.
    /// A lost connection is retried by the completer: an `Ok` means the database has it.
    pub async fn done(&self, claim: &PgClaim) -> Result<Settled, PgError> {
        self.complete(claim, Kind::Done, None, None, None, Duration::ZERO)
            .await
    }

    /// The key's attempt succeeded: forgets its failure history, then [`done`](Self::done).
    ///
    /// # Errors
    /// As [`done`](Self::done).
    pub async fn succeed(&self, claim: &PgClaim) -> Result<Settled, PgError> {
        self.complete(claim, Kind::Succeed, None, None, None, Duration::ZERO)
            .await
    }

    /// The key's attempt failed with `error`: requeued after its backoff (a failure counted),
    /// or, once it failed [`max_retries`](super::PgQueueConfig::max_retries) times already,
    /// moved to the dead letters with `error` and the reason "retries exhausted".
    ///
    /// # Errors
    /// As [`done`](Self::done).
    pub async fn fail(&self, claim: &PgClaim, error: &str) -> Result<Settled, PgError> {
        let error = Some(error.to_owned());
        self.complete(claim, Kind::Fail, error, None, None, Duration::ZERO)
            .await
    }

    /// Moves the key to the dead letters now, with `reason` and `error` (a permanent error
    /// that retrying cannot cure).
    ///
    /// # Errors
    /// As [`done`](Self::done).
    pub async fn dead_letter(
        &self,
        claim: &PgClaim,
        reason: &str,
        error: &str,
    ) -> Result<Settled, PgError> {
        let (reason, error) = (Some(reason.to_owned()), Some(error.to_owned()));
        self.complete(claim, Kind::DeadLetter, error, reason, None, Duration::ZERO)
            .await
    }

    /// Gives the key back unrun: queued where it was, the attempt not counted.
    ///
    /// # Errors
    /// As [`done`](Self::done).
    pub async fn release(&self, claim: &PgClaim) -> Result<Settled, PgError> {
        self.complete(claim, Kind::Release, None, None, None, Duration::ZERO)
            .await
    }

    /// The engine's completions: `ok` as [`succeed`](Self::succeed), else as
    /// [`fail`](Self::fail) with the retry no sooner than `min_delay`; `trace` is the key's new
    /// trace identity, if the engine began or cut its trace in this attempt.
    pub(crate) async fn settle_attempt(
        &self,
        claim: &PgClaim,
        error: Option<String>,
        trace: Option<Vec<u8>>,
        min_delay: Duration,
    ) -> Result<Settled, PgError> {
        let kind = if error.is_some() {
            Kind::Fail
        } else {
            Kind::Succeed
        };
        self.complete(claim, kind, error, None, trace, min_delay)
            .await
    }

    async fn complete(
        &self,
        claim: &PgClaim,
        kind: Kind,
        error: Option<String>,
        reason: Option<String>,
        trace: Option<Vec<u8>>,
        min_delay: Duration,
    ) -> Result<Settled, PgError> {
        if self.inner.is_stopped() {
            return Err(PgError::ShutDown);
        }
        let (reply, answer) = oneshot::channel();
        let request = CompletionRequest {
            key: claim.key.clone(),
            token: claim.token,
            kind,
            error,
            reason,
            trace,
            min_delay: super::add::micros(min_delay),
            reply,
        };
        self.inner
            .completions
            .send(request)
            .await
            .map_err(|_| PgError::ShutDown)?;
        let settled = answer.await.map_err(|_| PgError::ShutDown)??;
        self.inner.held.release(claim.token);
        match settled {
            Settled::Stale => {
                self.inner
                    .counters
                    .stale_completions
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(queue = %self.inner.config.queue, key = %claim.key, attempt = claim.attempt,
                    "stale completion refused: the key's lease was lost and it was claimed again");
            }
            Settled::Released | Settled::Requeued { .. } => self.inner.wake.notify_one(),
            _ => {}
        }
        Ok(settled)
    }
}

/// The completer: takes every completion waiting, applies them in one statement, answers each.
/// A lost connection is retried (the batch again, after reconnecting) until it commits or the
/// queue stops.
pub(super) async fn run_completer(
    inner: Arc<Inner>,
    mut requests: mpsc::Receiver<CompletionRequest>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut carry: VecDeque<CompletionRequest> = VecDeque::new();
    let mut conn: Option<Conn> = None;
    loop {
        if carry.is_empty() {
            tokio::select! {
                r = requests.recv() => match r {
                    Some(r) => carry.push_back(r),
                    None => return,
                },
                _ = stop.changed() => {}
            }
            // Let the workers that are finishing now send theirs: a bigger batch, same trip.
            tokio::task::yield_now().await;
        }
        while let Ok(r) = requests.try_recv() {
            carry.push_back(r);
        }
        if carry.is_empty() {
            return; // stopped, and nothing left to flush
        }
        // One completion per claim per statement: a repeated one waits for the next batch.
        let mut batch = Vec::new();
        let mut tokens = HashSet::new();
        let mut later = VecDeque::new();
        while let Some(r) = carry.pop_front() {
            if batch.len() < inner.config.completion_batch && tokens.insert(r.token) {
                batch.push(r);
            } else {
                later.push_back(r);
            }
        }
        carry = later;
        apply(&inner, &mut conn, &mut stop, batch).await;
    }
}

/// Applies `batch`, retrying through lost connections; answers every request.
async fn apply(
    inner: &Arc<Inner>,
    conn: &mut Option<Conn>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    batch: Vec<CompletionRequest>,
) {
    let mut backoff = inner.config.reconnect_base;
    loop {
        let c = match conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => match inner.db.connect_retrying("completer", None, stop).await {
                Some(c) => c,
                None => {
                    // Stopped while the database was away: say so rather than claim success.
                    for r in batch {
                        let _ = r.reply.send(Err(PgError::ShutDown));
                    }
                    return;
                }
            },
        };
        match run_batch(inner, &c, &batch).await {
            Ok(results) => {
                *conn = Some(c);
                for (r, settled) in batch.into_iter().zip(results) {
                    let _ = r.reply.send(Ok(settled));
                }
                return;
            }
            Err(error) if error.is_transient() => {
                tracing::warn!(queue = %inner.config.queue, error = %error_chain(&error), "completion batch lost its connection or was aborted; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(inner.config.reconnect_max);
            }
            Err(error) => {
                *conn = Some(c);
                tracing::warn!(queue = %inner.config.queue, error = %error_chain(&error), "completion batch refused");
                let text = error_chain(&error);
                for r in batch {
                    let _ = r.reply.send(Err(PgError::Completion(text.clone())));
                }
                return;
            }
        }
    }
}

/// One statement for the batch; the outcome of each request, in order.
async fn run_batch(
    inner: &Inner,
    conn: &Conn,
    batch: &[CompletionRequest],
) -> Result<Vec<Settled>, PgError> {
    let st = conn.statement("complete", &inner.sql.complete).await?;
    let keys: Vec<&str> = batch.iter().map(|r| r.key.as_str()).collect();
    let tokens: Vec<i64> = batch.iter().map(|r| r.token).collect();
    let kinds: Vec<i16> = batch.iter().map(|r| r.kind as i16).collect();
    let errors: Vec<Option<&str>> = batch.iter().map(|r| r.error.as_deref()).collect();
    let reasons: Vec<Option<&str>> = batch.iter().map(|r| r.reason.as_deref()).collect();
    let traces: Vec<Option<&[u8]>> = batch.iter().map(|r| r.trace.as_deref()).collect();
    let min_delays: Vec<i64> = batch.iter().map(|r| r.min_delay).collect();
    let max_retries = i32::try_from(inner.config.max_retries).unwrap_or(i32::MAX);
    let rows = conn
        .client
        .query(
            &st,
            &[
                &inner.config.queue,
                &keys,
                &tokens,
                &kinds,
                &errors,
                &reasons,
                &inner.backoff_us.0,
                &inner.backoff_us.1,
                &inner.owner,
                &max_retries,
                &inner.config.schema,
                &traces,
                &min_delays,
            ],
        )
        .await
        .map_err(PgError::query("completion"))?;
    inner
        .counters
        .completion_statements
        .fetch_add(1, Ordering::Relaxed);
    let mut by_token = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let Some(token) = row.get::<_, Option<i64>>(0) else {
            continue; // the notification's row
        };
        let state: &str = row.get(1);
        let delay = Duration::from_secs_f64(row.get::<_, f64>(2).max(0.0));
        let exhausted: bool = row.get(3);
        let kind: i16 = row.get(4);
        let settled = match state {
            "finished" => Settled::Finished,
            "idle" => Settled::Kept,
            "failed" => Settled::DeadLettered,
            _ if kind == Kind::Release as i16 => Settled::Released,
            _ => Settled::Requeued { delay, exhausted },
        };
        by_token.insert(token, settled);
    }
    Ok(batch
        .iter()
        .map(|r| by_token.remove(&r.token).unwrap_or(Settled::Stale))
        .collect())
}
